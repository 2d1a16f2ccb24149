"The DVC project: data.dvc matches the committed data/, and dvc.yaml reads only params that exist."

import json, os, subprocess, sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DVC = str(Path(sys.executable).parent / "dvc")


def test_data_dvc_is_clean():
    r = subprocess.run(
        [DVC, "status", "data.dvc", "--json"], cwd=ROOT, capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout or "{}") == {}, (
        f"data/ differs from data.dvc: {r.stdout} (run `dvc commit data.dvc` after a deliberate change)"
    )


def test_data_dvc_declares_data_without_cache():
    outs = yaml.safe_load((ROOT / "data.dvc").read_text())["outs"]
    assert [o["path"] for o in outs] == ["data"] and outs[0]["cache"] is False


def test_analytics_off():
    assert "analytics = false" in (ROOT / ".dvc" / "config").read_text()


def test_stage_params_exist():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, st in stages.items():
        for p in st.get("params", []):
            key = p if isinstance(p, str) else next(iter(p))
            assert key.split(".")[0] in params, f"stage {name} reads params `{key}` missing from params.yaml"


def _variant_config(args: str):
    "The RLConfig a params.yaml `rl_variants` entry's `args` describe (preset + --set overrides)."
    import shlex
    from maskfocus.rl.config import make_config
    from maskfocus.rl.command import parse_sets

    words, preset, sets = shlex.split(args), "maskfocus", []
    for flag, value in zip(words[::2], words[1::2]):
        assert flag in ("--preset", "--set"), f"unexpected argument {flag} in {args!r}"
        if flag == "--preset":
            preset = value
        else:
            sets.append(value)
    return make_config(preset, parse_sets(sets))


def test_tiny_variants_mirror_the_pipeline():
    "maskfocus.report.tiny.TINY_VARIANTS (the notebooks' tiny defaults) describe the same runs as params.yaml."
    from maskfocus.rl.config import make_config
    from maskfocus.report.tiny import TINY_VARIANTS

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    pipeline = {
        **{
            p: f"--preset {p}"
            for p in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["rl"]["matrix"]["preset"]
        },
        **{k: v["args"] for k, v in params["rl_variants"].items()},
        "udm_grpo": f"--preset udm_grpo --set cfg={params['udm_grpo']['cfg']} --set K={params['udm_grpo']['K']}",
    }  # the rl matrix, the rl_variants and the rl_udm stage
    assert set(TINY_VARIANTS) == set(pipeline)
    scale_only = {
        "clip_model",
        "frac",
    }  # tiny runs build their own CLIP; at N = 4 the tiny early window is 50 % (documented)
    for name, args in pipeline.items():
        want, got = _variant_config(args).to_dict(), make_config(*TINY_VARIANTS[name]).to_dict()
        # at N = 4 a window of 3 steps leaves room for K = 1 of the 3 eligible steps (documented in report.tiny)
        diff = {k for k in want if want[k] != got[k]} - scale_only - ({"K"} if name == "udm_grpo" else set())
        assert not diff, f"{name}: TINY_VARIANTS differs from params.yaml in {sorted(diff)}"


def test_sweep_seeds_repeat_their_entry():
    """Each rl_sweep entry names its seed once; `<entry>-s<n>` repeats `<entry>` (a seed-0 entry) at seed n and changes
    nothing else."""
    import re, shlex

    sweep = yaml.safe_load((ROOT / "params.yaml").read_text())["rl_sweep"]

    def seed_and_rest(key):
        words = shlex.split(sweep[key])
        assert words.count("--seed") == 1, f"rl_sweep.{key} must name its seed exactly once: {sweep[key]!r}"
        i = words.index("--seed")
        return int(words[i + 1]), words[:i] + words[i + 2 :]

    repeats = 0
    for key in sweep:
        seed, rest = seed_and_rest(key)
        if m := re.fullmatch(r"(.+)-s(\d+)", key):
            assert m[1] in sweep, f"rl_sweep.{key}: no entry {m[1]!r} to repeat"
            assert seed == int(m[2]) != 0, f"rl_sweep.{key}: the key says seed {m[2]}, the arguments {seed}"
            assert rest == seed_and_rest(m[1])[1], (
                f"rl_sweep.{key}: arguments differ from rl_sweep.{m[1]} beyond the seed"
            )
            repeats += 1
        else:
            assert seed == 0, f"rl_sweep.{key}: an entry without -s<n> runs seed 0"
    assert repeats, "no entry is repeated at another seed"


def test_sweep_report_reads_its_entries_and_scores_like_the_base():
    """rl_sweep_report takes its entries from params.yaml (and depends on them), and the sweep and its base share one
    evaluation protocol."""
    import re

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    sweep = yaml.safe_load((ROOT / "sweep" / "dvc.yaml").read_text())["stages"]
    report = sweep["rl_sweep_report"]
    assert (
        "-p sweep_params params.yaml" in report["cmd"]
        and "entries" not in report["cmd"]
        and report["params"] == [{"../params.yaml": ["rl_sweep"]}]
    )
    proto = lambda c: re.search(r"--steps \S+ --cfg \S+\s+--per-tag \S+ --seed \S+", c)[0].split()
    assert proto(sweep["rl_sweep"]["do"]["cmd"]) == proto(stages["eval_base_train"]["cmd"])
    assert "sweep_eval" in sweep["rl_sweep"]["do"]["params"][0]["../params.yaml"]
    assert "sweep_eval" in stages["eval_base_train"]["params"]


def test_frozen_sweep_is_a_project_of_its_own():
    """The frozen sweep lives in sweep/, a nested DVC project: the root's `dvc dag` / `dvc status` never see it (no
    frozen stage, no warning), and its lock records every entry with the committed results it points at."""
    assert (ROOT / "sweep" / ".dvc" / "config").is_file()
    root = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert not any(st.get("frozen") or st.get("do", {}).get("frozen") for st in root.values())
    entries = yaml.safe_load((ROOT / "params.yaml").read_text())["rl_sweep"]
    lock = yaml.safe_load((ROOT / "sweep" / "dvc.lock").read_text())["stages"]
    assert {f"rl_sweep@{k}" for k in entries} <= set(lock)
    for k in entries:
        outs = {o["path"]: o for o in lock[f"rl_sweep@{k}"]["outs"]}
        assert set(outs) == {f"work/{k}", f"runs/{k}"} and (ROOT / "sweep" / "runs" / k / "eval.json").is_file()


def test_metrics_files_hold_numbers_only():
    """`dvc metrics show` prints one table whose columns are the union of the metrics files' keys: each file is one
    flat {method: number} (text and nested tables go to plain outputs), so the table fits a terminal."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    files = [next(iter(m)) for st in stages.values() for m in st.get("do", st).get("metrics", [])]
    assert 1 <= len(files) <= 4, files
    keys = set()
    for f in files:
        m = json.loads((ROOT / f).read_text())
        assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in m.values()), f
        keys |= set(m)
    assert len(keys) <= 8, sorted(keys)


def test_judge_only_runs_are_recorded_in_the_sweep_project():
    """The frozen rl_judge_only runs (the recipe's reward before sweep round 13) sit in the sweep project, one lock
    entry per method and seed of params.yaml, each with its committed evaluation, and reward_recipe reads
    all of them."""
    p = yaml.safe_load((ROOT / "params.yaml").read_text())["rl_judge_only"]
    lock = yaml.safe_load((ROOT / "sweep" / "dvc.lock").read_text())["stages"]
    deps = {d if isinstance(d, str) else next(iter(d)) for d in _root_stage("reward_recipe")["deps"]}
    for m in p["presets"]:
        for s in p["seeds"]:
            assert f"rl_judge_only@{m}-{s}" in lock, (m, s)
            assert (ROOT / "sweep" / "judge_only" / f"{m}-s{s}" / "eval.json").is_file(), (m, s)
            assert f"sweep/judge_only/{m}-s{s}" in deps, (m, s)


def _root_stage(name: str) -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][name]


def test_every_stage_command_is_one_line_of_shell():
    """A stage's keys sit beside `cmd`, not inside it: a `deps:` indented one level too deep under `cmd: >-` folds
    into the command (the shell then runs the list) and leaves the stage without dependencies."""
    for f in ("dvc.yaml", "sweep/dvc.yaml", "paper/dvc.yaml", "paper/smoke/dvc.yaml"):
        for name, st in yaml.safe_load((ROOT / f).read_text())["stages"].items():
            body = st.get("do", st)
            cmd = body["cmd"] if isinstance(body["cmd"], str) else " ".join(body["cmd"])
            assert "\n" not in cmd and not any(f" {k}:" in cmd for k in ("deps", "outs", "params", "metrics")), (
                f,
                name,
            )
