"""`make demo` (scripts/demo.py) at a micro scale: every phase runs through the `maskfocus` commands and writes what the
demo promises (a trained model that loads, a before/after grid, a per-tag table, a README); a re-run skips done
phases; the knobs of an output folder cannot be mixed."""

import json, subprocess, sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("clip", "pretrain", "rl", "eval_base", "eval_rl", "grid")

MICRO = {  # every phase in seconds: tiny models, a few steps, one image per tag
    "threads": 1,
    "train_clip": {
        "steps": 3,
        "batch_size": 8,
        "embed_dim": 32,
        "vision_width": 32,
        "vision_layers": 1,
        "vision_head_width": 16,
        "text_width": 32,
        "text_layers": 1,
        "text_heads": 2,
        "warmup_steps": 1,
        "eval_every": 0,
        "eval_images": 1,
    },
    "pretrain": {"steps": 3, "batch": 4, "dim": 32, "heads": 2, "layers": 1, "single_layers": 1, "warmup": 1},
    "rl": {
        "preset": "maskfocus",
        "iterations": 2,
        "seed": 0,
        "set": {"prompts_per_iter": 1, "group_size": 2, "steps": 4, "checkpoint_every": 0, "log_images_every": 0},
    },
    "eval": {"prompts_per_tag": 1, "per_prompt": 1, "steps": 4, "cfg": 3.0, "seed": 0},
    "grid": {"prompts_per_tag": 1, "images": 2, "seed": 0},
}


def run_demo(*args):
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    "The micro demo, run once: (its config file, its output folder, the first run's stdout)."
    tmp = tmp_path_factory.mktemp("demo")
    config = tmp / "demo.yaml"
    config.write_text(yaml.safe_dump(MICRO))
    r = run_demo("--config", config, "--out", tmp / "out")
    assert r.returncode == 0, r.stdout + r.stderr
    return config, tmp / "out", r.stdout


def test_the_shipped_config_has_every_section_with_comments():
    text = (ROOT / "scripts" / "demo.yaml").read_text()
    assert set(yaml.safe_load(text)) == set(MICRO)
    knobs = [l for l in text.splitlines() if l.strip() and not l.lstrip().startswith("#")]
    assert all("#" in l for l in knobs), [l for l in knobs if "#" not in l]  # every knob says what it is


def test_demo_writes_models_grid_table_and_readme(demo):
    from PIL import Image
    from maskfocus.geneval import TAGS
    from maskfocus.models.pipeline import MaskedPipeline

    _, out, stdout = demo
    for name in PHASES:  # one line per phase with its wall time
        assert any(
            l.startswith(f"[demo] {name} ") and l.split()[2].replace(".", "").isdigit() for l in stdout.splitlines()
        )
    pipe = MaskedPipeline.load(out / "rl" / "final")  # the trained model loads
    assert pipe.transformer is not None
    with Image.open(out / "grid.png") as im:
        assert im.format == "PNG" and min(im.size) > 100
    table = (out / "table.md").read_text()
    header = next(l for l in table.splitlines() if l.startswith("| setting"))
    assert [c.strip() for c in header.strip("|").split("|")][1:7] == list(TAGS)
    rows = [l.split("|")[1].strip() for l in table.splitlines() if l.startswith("| ") and "setting" not in l]
    assert rows == ["base", "maskfocus, 2 iterations", "change"]
    readme = (out / "README.md").read_text()
    assert "grid.png" in readme and table.split("\n\n")[1].strip() in readme
    assert set(json.loads((out / "timings.json").read_text())) == set(PHASES)
    assert (out / "results" / "base" / "eval.json").is_file() and (out / "results" / "rl" / "eval.json").is_file()
    assert (out / "results" / "clip.json").is_file() and (out / "logs" / "rl.log").is_file()


def test_a_rerun_skips_done_phases(demo):
    config, out, _ = demo
    before = (out / "timings.json").read_text()
    r = run_demo("--config", config, "--out", out)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [l for l in r.stdout.splitlines() if l.startswith("[demo] ") and "done in" not in l]
    assert [l.split()[1] for l in lines] == list(PHASES) and all(" skipped: " in l for l in lines)
    assert (out / "timings.json").read_text() == before and (out / "table.md").is_file()


def test_other_knobs_need_fresh_and_fresh_never_deletes_a_foreign_folder(demo, tmp_path):
    config, out, _ = demo
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**MICRO, "rl": {**MICRO["rl"], "iterations": 3}}))
    r = run_demo("--config", other, "--out", out)
    assert r.returncode != 0 and "--fresh" in r.stderr
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    r = run_demo("--config", config, "--out", foreign, "--fresh")
    assert r.returncode != 0 and "not a demo folder" in r.stderr and (foreign / "keep.txt").is_file()
