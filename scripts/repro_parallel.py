"""Run independent DVC stages side by side, then record them in dvc.lock exactly as `dvc repro` would.

`dvc repro` runs one stage at a time. The RL runs of this pipeline (`rl@*`, `rl_variant@*`, `rl_sweep@*`) are
independent of one another and each is fastest with one torch thread, so on the 2-core toy machine two at a time
take about half the wall time. For every target stage that is out of date (`dvc status`; with `--force`, every
target, frozen ones included) this script runs the stage's own command (as DVC resolves it from dvc.yaml and
params.yaml) with `OMP_NUM_THREADS=--threads`, `--jobs` at a time, and after a command succeeds records the stage
with `dvc commit --force STAGE` (outputs hashed, dvc.lock updated) — what `dvc repro` does after running a command.
Stages start in the order given. A target that depends on other targets (a table on its RL runs) waits until
they are done and recorded, then runs if `dvc status` still reports it changed, so the report stages can fill the
cores the last RL runs leave idle. Upstream stages that are not targets must already be up to date (the script
checks this and stops otherwise). A failed command stops new launches; the others finish; the exit status is 1.

`--project DIR` works on the DVC project in DIR: a nested project such as the frozen sweep (`sweep/`, its own
dvc.yaml and dvc.lock). Without it, the project is the one holding the current directory, as for `dvc` itself (run
from sweep/, the sweep). Every `dvc` call and every stage command runs in the project's folder, so the paths of its
dvc.yaml are read as DVC reads them there.

Each stage's output goes to work/logs/<stage>.log; wall times are added to work/logs/timings.json (a nested project:
work/logs/<DIR>/, under the repository root's ignored work/, whichever project runs).

    .venv/bin/python scripts/repro_parallel.py --jobs 2 'rl@*' 'rl_variant@*'
    .venv/bin/python scripts/repro_parallel.py --project sweep --jobs 2 --force 'rl_sweep@*'   # the frozen sweep
"""

from __future__ import annotations
import argparse, fnmatch, json, os, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PROJECT = ROOT  # the DVC project worked on (--project); every dvc call and stage command runs here


def project_dir(arg: str) -> Path:
    """The DVC project folder named by --project (relative to the current directory); empty: the project holding the
    current directory, as `dvc` finds it (the nearest folder upwards with a .dvc/), else the repository root."""
    here = Path.cwd().resolve()
    found = next((d for d in [here, *here.parents] if (d / ".dvc").is_dir()), None)
    p = Path(arg).resolve() if arg else (found if found is not None and found.is_relative_to(ROOT) else ROOT)
    if not (p / "dvc.yaml").is_file() or not (p / ".dvc").is_dir():
        raise SystemExit(f"error: --project {arg}: {p} is not a DVC project (needs dvc.yaml and .dvc/)")
    return p


def logs_dir(project: Path) -> Path:
    "Where the stage logs and timings go: work/logs of the repository root, a sub-folder per nested project."
    rel = project.relative_to(ROOT) if project.is_relative_to(ROOT) else Path(project.name)
    return ROOT / "work" / "logs" / rel


def dvc(*args: str, tries: int = 30) -> str:
    """Run the project's dvc in PROJECT; return stdout. Waits while another dvc holds the repo lock; raises with its
    stderr on failure."""
    for _ in range(tries):
        r = subprocess.run(
            [str(BIN / "dvc"), *args], cwd=PROJECT, capture_output=True, text=True, stdin=subprocess.DEVNULL
        )
        if r.returncode == 0:
            return r.stdout
        if "lock" not in (r.stderr + r.stdout).lower():
            break
        time.sleep(5)
    raise SystemExit(f"error: dvc {' '.join(args)} failed:\n{r.stderr.strip()}")


def stage_names(patterns: list[str]) -> list[str]:
    "Stages of dvc.yaml matching the patterns (fnmatch), in the order of the patterns, each once."
    names = dvc("stage", "list", "--name-only").split()
    out = []
    for p in patterns:
        hit = [n for n in names if fnmatch.fnmatchcase(n, p)]
        if not hit:
            raise SystemExit(f"error: no stage matches {p!r}")
        out += [n for n in hit if n not in out]
    return out


def address(stage) -> str:
    "How `dvc` run in PROJECT names a stage: its name in the project's dvc.yaml, else path[:name] from PROJECT."
    rel = os.path.relpath(stage.path, PROJECT)
    if rel == "dvc.yaml":
        return stage.name
    return rel if rel.endswith(".dvc") else f"{rel}:{stage.name}"


def resolved(names: list[str]) -> dict[str, dict]:
    """Per stage: its resolved command, whether it is frozen, and its upstream stages (DVC's own view). The index is
    built once (collecting the stages one by one re-reads dvc.yaml each time: 85 s for the toy pipeline's 43)."""
    from dvc.repo import Repo

    with Repo(str(PROJECT)) as repo:
        graph = repo.index.graph
        by_name = {address(st): st for st in repo.index.stages}
        out = {}
        for n in names:
            st = by_name[n]
            up = [address(s) for s in graph.successors(st)] if st in graph else []
            out[n] = {"cmd": st.cmd, "frozen": bool(st.frozen), "upstream": up}
    return out


def out_of_date(names: list[str]) -> list[str]:
    """The stages `dvc status` reports as changed: one call for the whole dvc.yaml (naming 43 stages takes 76 s, the
    file 7 s), plus the names of other files (a .dvc file, another dvc.yaml's stage)."""
    files = sorted(n for n in names if n.endswith(".dvc") or ":" in n)
    st = json.loads(dvc("status", "--json", "dvc.yaml", *files) or "{}")
    return [n for n in names if n in st]


def waits_for(todo: list[str], names: list[str], info: dict[str, dict]) -> dict[str, set[str]]:
    "Per target to consider: the targets upstream of it (transitively, through targets) that run first."
    up = {n: {u for u in info[n]["upstream"] if u in names} for n in names}
    run = set(todo)
    changed = True
    while changed:  # a target downstream of one that runs may change too: it is considered after it
        changed = False
        for n in names:
            if n not in run and up[n] & run:
                run.add(n)
                changed = True
    return {n: up[n] & run for n in names if n in run}


def next_ready(queue: list[str], waits: dict[str, set[str]], done: set[str], todo: list[str]) -> str | None:
    """The first queued stage whose upstream targets are done, taken off the queue; one that only might have changed
    (not in `todo`) is checked with `dvc status` now and dropped if it has not. None: nothing is ready."""
    while ready := [n for n in queue if waits[n] <= done]:
        n = ready[0]
        queue.remove(n)
        if n in todo or out_of_date([n]):
            return n
        done.add(n)
        print(f"unchanged {n} (up to date after its upstream ran)", flush=True)
    return None


def launch(n: str, cmd: str, env: dict, logs: Path) -> tuple:
    "Start stage n's command in PROJECT, its output to logs/<stage>.log: (process, start time, log file)."
    log = open(logs / f"{n.replace('@', '_')}.log", "w")
    p = subprocess.Popen(
        cmd, shell=True, cwd=PROJECT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    print(f"started {n}", flush=True)
    return p, time.time(), log


def record(n: str, wall: float, timings: dict, path: Path, **how) -> None:
    "`dvc commit` stage n (what `dvc repro` does after a command) and add its wall time to the timings file."
    dvc("commit", "--force", n)
    timings[n] = {"wall_s": round(wall, 1), **how}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(timings, indent=1))
    tmp.replace(path)
    print(f"done {n} in {wall:.0f} s (committed)", flush=True)


def run_stages(todo: list[str], waits: dict[str, set[str]], info: dict, jobs: int, threads: int, logs: Path):
    """Run the stages' commands in PROJECT, `jobs` at a time, each after its upstream; commit each (after the freed
    slot has its next stage: a commit takes seconds of DVC). The failed stages."""
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    timings_path = logs / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    queue, running, failed, done, finished = list(waits), {}, [], set(), []
    while queue or running or finished:
        while len(running) < jobs and not failed and (n := next_ready(queue, waits, done, todo)):
            running[n] = launch(n, info[n]["cmd"], env, logs)
        for n, wall in finished:  # their dependents start at the next pass, once they are recorded
            record(n, wall, timings, timings_path, jobs=jobs, threads=threads)
            done.add(n)
        finished = []
        if queue or running:
            time.sleep(2)
        for n, (p, t0, log) in list(running.items()):
            if p.poll() is None:
                continue
            log.close()
            del running[n]
            wall = time.time() - t0
            if p.returncode == 0:
                finished.append((n, wall))
                continue
            failed.append(n)
            print(
                f"FAILED {n} (exit {p.returncode}, {wall:.0f} s): see {logs / (n.replace('@', '_') + '.log')}",
                flush=True,
            )
        if failed:
            queue.clear()
    return failed


def main(argv=None) -> int:
    global PROJECT
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("targets", nargs="+", help="stage names or fnmatch patterns, e.g. 'rl@*'")
    ap.add_argument("--jobs", type=int, default=2, help="stages run at once (default: 2)")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each stage command (default: 1)")
    ap.add_argument("--force", action="store_true", help="run every target, even up-to-date or frozen ones")
    ap.add_argument("--dry", action="store_true", help="print what would run")
    ap.add_argument(
        "--project",
        default="",
        help="folder of the DVC project to run, e.g. sweep (a nested project; relative to the current directory; "
        "default: the project holding the current directory, as dvc finds it)",
    )
    a = ap.parse_args(argv)
    if a.jobs < 1 or a.threads < 1:
        raise SystemExit("error: --jobs and --threads must be >= 1")
    PROJECT = project_dir(a.project)
    names = stage_names(a.targets)
    info = resolved(names)
    upstream = sorted({u for n in names for u in info[n]["upstream"] if u not in names})
    stale = out_of_date(upstream) if upstream else []
    if stale:
        raise SystemExit(
            f"error: upstream stages are out of date: {', '.join(stale)} (run `dvc repro {' '.join(stale)}` first)"
        )
    todo = names if a.force else out_of_date(names)
    waits = waits_for(todo, names, info)
    where = "" if PROJECT == ROOT else f" in {PROJECT.relative_to(ROOT) if PROJECT.is_relative_to(ROOT) else PROJECT}"
    print(
        f"{len(todo)} of {len(names)} stage(s) to run{where}, {a.jobs} at a time, OMP_NUM_THREADS={a.threads}"
        + (f"; {len(waits) - len(todo)} more if their upstream changes them" if len(waits) > len(todo) else ""),
        flush=True,
    )
    if a.dry:
        for n in waits:
            after = f" (after {', '.join(sorted(waits[n]))})" if waits[n] else ""
            print(f"{n}{after}: {info[n]['cmd']}")
        return 0
    return 1 if run_stages(todo, waits, info, a.jobs, a.threads, logs_dir(PROJECT)) else 0


if __name__ == "__main__":
    sys.exit(main())
