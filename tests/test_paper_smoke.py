"""The paper pipeline (paper/dvc.yaml) and its CPU smoke twin (paper/smoke/): one dvc.yaml for both, the same params
keys, the models check's errors, and the DAG shown in the docs. `make test` runs the twin itself
(`dvc repro paper/smoke/dvc.yaml`)."""

import shutil, subprocess
from pathlib import Path

import pytest
import yaml

from maskfocus.cli import main

ROOT = Path(__file__).resolve().parents[1]
PAPER, SMOKE = ROOT / "paper", ROOT / "paper" / "smoke"


def _params(folder: Path) -> dict:
    return yaml.safe_load((folder / "params.yaml").read_text())


def test_smoke_twin_runs_the_same_stages():
    "paper/smoke/dvc.yaml is paper/dvc.yaml byte for byte, and the two params files have the same keys."
    assert (SMOKE / "dvc.yaml").read_bytes() == (PAPER / "dvc.yaml").read_bytes()
    paper, smoke = _params(PAPER), _params(SMOKE)
    assert set(paper) == set(smoke) and paper["smoke"] is False and smoke["smoke"] is True
    for key in ("models", "data", "launch", "eval", "presets_geneval", "figures"):
        assert set(paper[key]) == set(smoke[key]), key
    assert smoke["drawbench_runs"].items() <= paper["drawbench_runs"].items()  # one DrawBench run of each kind
    for fig, knobs in paper["figures"].items():
        assert not isinstance(knobs, dict) or set(knobs) == set(smoke["figures"][fig]), fig
    assert set(smoke["variants"]) <= set(paper["variants"])  # the twin runs one of the Fig. 5 variants
    assert paper["presets_hps"] == smoke["presets_hps"] == ["maskfocus", "maskgrpo"]
    assert set(paper["presets_geneval"]) >= {"maskfocus", "maskgrpo", "mask_grpo", "udm_grpo"}


def test_figure_and_table_notebooks_are_paper_stages():
    "Every figure notebook that samples a model or reads RL runs, and every paper table, runs in the paper project."
    stages = yaml.safe_load((PAPER / "dvc.yaml").read_text())["stages"]
    cmds = " ".join(str(s.get("cmd", s.get("do", {}).get("cmd", ""))) for s in stages.values())
    tables = stages["tables"]["foreach"]
    figures = ("fig2a_early_predictions", "fig2b_step_similarity", "fig2c_entropy", "fig6_trajectories")
    for nb in (*figures, "fig5_variants"):
        assert f"nbs/experiments/{nb}.ipynb" in cmds, nb
    assert "nbs/experiments/training_curves.ipynb" in cmds and cmds.count("-p layout single") == 2
    assert stages["rl_variant"]["foreach"] == "${variants}"  # Fig. 5's runs, next to rl_geneval's
    panels = yaml.safe_load(_params(PAPER)["figures"]["fig5"]["panels"])
    runs = set(_params(PAPER)["variants"]) | set(_params(PAPER)["presets_geneval"])
    assert {v for vs in panels.values() for v in vs} <= runs  # every run a panel draws is trained
    assert tables == ["paper_table1", "paper_table2", "paper_table3"]
    assert cmds.count("-p evaluator geneval_hf") == 2  # the figures that judge images use GenEval's rules


def test_every_preset_keeps_its_own_knobs():
    "The shared paper section does not override a preset's method knobs (MaskGRPO's mu, Mask-GRPO's estimator, ...)."
    from maskfocus.rl.command import build_train_parser, config_from_args
    from maskfocus.rl.presets import make_config

    for preset, section in _params(PAPER)["presets_geneval"].items():
        args = ["--params", str(PAPER / "params.yaml"), "--section", section, "--preset", preset, "--base", "b"]
        cfg = config_from_args(build_train_parser().parse_args([*args, "--out", "o"]))
        ref = make_config(preset)
        for knob in ("estimator", "mu", "strategy", "clip", "beta", "step_loss", "cfg"):
            if knob != "cfg" or preset == "udm_grpo":
                assert getattr(cfg, knob) == getattr(ref, knob), (preset, knob)
        assert cfg.dr["enabled"] == ref.dr["enabled"] and cfg.steps == 64


def test_models_check_names_the_param(tmp_path, capsys):
    "At paper scale a missing checkpoint stops the first stage with one line naming the params key."
    params = _params(PAPER)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["paper-models", "--params", str(tmp_path / "params.yaml")]) == 2
    err = capsys.readouterr().err
    assert "models.base" in err and "not found" in err


@pytest.mark.skipif(shutil.which("dvc") is None, reason="dvc is not installed")
def test_docs_show_the_current_dag():
    "nbs/explanations/_paper_dag.md is `dvc dag --md paper/dvc.yaml` (regenerate it when the stages change)."
    out = subprocess.run(["dvc", "dag", "--md", "paper/dvc.yaml"], cwd=ROOT, capture_output=True, text=True, check=True)
    doc = (ROOT / "nbs" / "explanations" / "_paper_dag.md").read_text()
    assert doc.split("\n", 1)[1] == out.stdout
