"scripts/pipeline_timings.py: stage times come from the timestamped log, not from hand."

import json, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LOG = """100 test -x .venv/bin/python || python3 -m venv .venv
160 touch .venv/.installed
161 Running stage 'train_clip':
171 Updating lock file 'dvc.lock'
172 Running stage 'judge_groundtruth':
175 Stage 'eval_base' didn't change, skipping
176 started rl@a-0
177 started rl@b-0
300 done rl@a-0 in 124.0 s (committed)
310 done rl@b-0 in 133.5 s (committed)
311 Running stage 'fig2a':
340 ERROR: failed to reproduce 'x'
"""


def test_stage_times_from_a_log(tmp_path):
    (tmp_path / "r.log").write_text(LOG + "no timestamp here\n")
    out = tmp_path / "t.json"
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "pipeline_timings.py"), str(tmp_path / "r.log"), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    d = json.loads(out.read_text())["logs"][0]
    assert d["dvc_stages_s"] == {
        "train_clip": 10,
        "judge_groundtruth": 3,
        "fig2a": 29,
    }  # judge: no lock update, ends at the next line
    assert d["parallel_stages_s"] == {"rl@a-0": 124.0, "rl@b-0": 133.5} and d["parallel_span_s"] == 310 - 176
    assert d["venv_setup_s"] == 60 and d["span_s"] == 240


def test_untimestamped_log_is_refused(tmp_path):
    (tmp_path / "r.log").write_text("Running stage 'x':\n")
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "pipeline_timings.py"),
            str(tmp_path / "r.log"),
            "--out",
            str(tmp_path / "t.json"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and "no timestamped lines" in r.stderr and not (tmp_path / "t.json").exists()


def test_rl_stage_time_split_by_the_lock(tmp_path):
    "--lock: an RL stage's time minus the wall_s of the eval.json in its outputs is its training time."
    (tmp_path / "r.log").write_text(LOG)
    (tmp_path / "results" / "a").mkdir(parents=True)
    (tmp_path / "results" / "a" / "eval.json").write_text(
        json.dumps({"N=16,cfg=3": {"overall": 0.5, "wall_s": 20.5}, "N=8,cfg=3": {"wall_s": 3.5}})
    )
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  rl@a-0:\n    outs:\n    - path: work/a\n    - path: results/a\n"
        "  rl@b-0:\n    outs:\n    - path: results/b\n"
    )
    out = tmp_path / "t.json"
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "pipeline_timings.py"),
            str(tmp_path / "r.log"),
            "--out",
            str(out),
            "--lock",
            str(tmp_path / "dvc.lock"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text())["logs"][0]["rl_split_s"] == {
        "rl@a-0": {"eval_s": 24.0, "train_s": 100.0}
    }  # b has no eval.json


def test_a_run_finished_by_a_second_command_adds_up(tmp_path):
    "Two logs of one run: the top-level fields merge the stages of both and add their spans."
    (tmp_path / "1.log").write_text(LOG)
    (tmp_path / "2.log").write_text("500 started rl@c-0\n600 done rl@c-0 in 99.0 s (committed)\n601 EXIT=0\n")
    out = tmp_path / "t.json"
    script = str(ROOT / "scripts" / "pipeline_timings.py")
    r = subprocess.run(
        [sys.executable, script, str(tmp_path / "1.log"), str(tmp_path / "2.log"), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    d = json.loads(out.read_text())
    assert d["total_s"] == 240 + 101 and d["venv_setup_s"] == 60 and len(d["logs"]) == 2
    assert d["parallel_stages_s"] == {"rl@a-0": 124.0, "rl@b-0": 133.5, "rl@c-0": 99.0}
    assert d["parallel_span_s"] == (310 - 176) + (600 - 500) and set(d["dvc_stages_s"]) == {
        "train_clip",
        "judge_groundtruth",
        "fig2a",
    }
