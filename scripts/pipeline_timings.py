"""Per-stage wall times of a `make repro` run, read from its timestamped log (so no time is typed in by hand).

Record the log with a timestamp (epoch seconds) in front of every line:

    make repro 2>&1 | while IFS= read -r l; do printf '%s %s\\n' "$(date +%s)" "$l"; done > repro.log

then `python scripts/pipeline_timings.py repro.log [more.log ...] --out results/pipeline_timings.json`.
A `dvc repro` stage runs from its "Running stage 'X':" line to the next line of DVC's or of the Makefile's
(lock update, next stage, skipped stage, error, next command); an RL stage run
by scripts/repro_parallel.py reports its own time ("done rl@... in N s"). Several logs (e.g. a run finished by a
second command) add up: the top-level fields merge them (`total_s` the sum of the spans), `logs` keeps each.
Only the numbers in the logs are used.

An RL stage trains and then evaluates on the test split. With `--lock dvc.lock` (the run's lock file), each such
stage's evaluation time (the `wall_s` of every setting in the `eval.json` among its outputs, which the evaluator
measures itself) is subtracted from the stage's time: `train_s` is the training run's wall time from start-up to
the last checkpoint, plus the evaluator's start-up (a few seconds of model loading).
"""

from __future__ import annotations
import argparse, json, re, sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from maskfocus.core import write_json_atomic  # noqa: E402

LINE = re.compile(r"^(\d+) (.*)$")
RUNNING = re.compile(r"Running stage '([^']+)'")
DONE = re.compile(r"done (\S+) in ([\d.]+) s")
STARTED = re.compile(r"started (\S+)")
ENDS = re.compile(r"Updating lock file|didn't change, skipping|^ERROR|EXIT=|started \S+|^PATH=")


def parse(path: Path) -> dict:
    "Stage times and the log's span (seconds) of one timestamped log."
    events = [(int(m[1]), m[2]) for l in path.read_text(errors="replace").splitlines() if (m := LINE.match(l))]
    if not events:
        raise SystemExit(f"{path}: no timestamped lines (see this script's docstring)")
    stages, parallel, open_stage, first_parallel, last_parallel = {}, {}, None, None, None
    setup = None
    for t, text in events:
        if open_stage and (
            ENDS.search(text) or RUNNING.search(text)
        ):  # a stage whose outputs did not change updates no lock
            stages[open_stage[0]] = t - open_stage[1]
            open_stage = None
        if m := RUNNING.search(text):
            open_stage = (m[1], t)
        elif m := DONE.search(text):
            parallel[m[1]] = float(m[2])
            last_parallel = t
        elif STARTED.search(text) and first_parallel is None:
            first_parallel = t
        elif "touch .venv/.installed" in text:
            setup = t - events[0][0]
    out = {"log": str(path), "span_s": events[-1][0] - events[0][0], "dvc_stages_s": stages}
    if setup is not None:
        out["venv_setup_s"] = setup
    if parallel:
        out |= {"parallel_stages_s": parallel, "parallel_span_s": last_parallel - first_parallel}
    if open_stage:
        out["unfinished_stage"] = open_stage[0]
    return out


def eval_seconds(lock: Path) -> dict[str, float]:
    "Per stage of a dvc.lock: the summed `wall_s` of the eval.json in its outputs (stages without one are left out)."
    import yaml

    stages = yaml.safe_load(lock.read_text())["stages"]
    out = {}
    for name, st in stages.items():
        for o in st.get("outs", []):
            f = lock.parent / o["path"] / "eval.json"
            if f.is_file():
                out[name] = sum(
                    float(v["wall_s"])
                    for v in json.loads(f.read_text()).values()
                    if isinstance(v, dict) and "wall_s" in v
                )
    return out


def merged(parts: list[dict]) -> dict:
    "The logs of one run (e.g. one finished by a second command) together: stage times merged, spans added."
    out = {"dvc_stages_s": {}, "parallel_stages_s": {}, "parallel_span_s": 0, "rl_split_s": {}}
    for x in parts:
        for k in ("dvc_stages_s", "parallel_stages_s", "rl_split_s"):
            out[k] |= x.get(k, {})
        out["parallel_span_s"] += x.get("parallel_span_s", 0)
        if "venv_setup_s" in x:
            out["venv_setup_s"] = x["venv_setup_s"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("logs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--note", default="", help="free text stored with the numbers (how the run was made)")
    p.add_argument(
        "--lock",
        type=Path,
        default=None,
        help="the run's dvc.lock: split the RL stages' time into training and evaluation",
    )
    a = p.parse_args(argv)
    parts = [parse(l) for l in a.logs]
    if a.lock:
        ev = eval_seconds(a.lock)
        for x in parts:
            if "parallel_stages_s" in x:
                x["rl_split_s"] = {
                    n: {"eval_s": ev[n], "train_s": round(t - ev[n], 1)}
                    for n, t in x["parallel_stages_s"].items()
                    if n in ev
                }
    res = {"note": a.note, "total_s": sum(x["span_s"] for x in parts), **merged(parts), "logs": parts}
    write_json_atomic(a.out, res)
    print(json.dumps({"total_s": res["total_s"], **{x["log"]: x["dvc_stages_s"] for x in parts}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
