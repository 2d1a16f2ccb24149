"scripts/repro_parallel.py: independent stages run side by side and end up recorded in dvc.lock as `dvc repro` would."

import json, shutil, subprocess, sys, textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SCRIPT = ROOT / "scripts" / "repro_parallel.py"


def run(args, cwd, check=True):
    r = subprocess.run(args, cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if check and r.returncode != 0:
        raise AssertionError(f"{args} failed:\n{r.stdout}\n{r.stderr}")
    return r


@pytest.fixture
def project(tmp_path):
    "A tiny git + DVC project: `src` -> upstream stage `up` -> three independent stages `leaf@a|b|c` (one per item)."
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    (tmp_path / "scripts").mkdir()
    shutil.copy(SCRIPT, tmp_path / "scripts" / SCRIPT.name)
    run(["git", "init", "-q"], tmp_path)
    run([str(BIN / "dvc"), "init", "-q"], tmp_path)
    run([str(BIN / "dvc"), "config", "core.analytics", "false"], tmp_path)
    (tmp_path / "src.txt").write_text("hello\n")
    (tmp_path / "params.yaml").write_text("leaves: {a: 1, b: 2, c: 3}\n")
    (tmp_path / "dvc.yaml").write_text(
        textwrap.dedent("""\
        stages:
          up:
            cmd: cp src.txt up.txt
            deps: [src.txt]
            outs: [up.txt]
          leaf:
            foreach: ${leaves}
            do:
              cmd: sleep 1 && echo ${item} $OMP_NUM_THREADS > leaf_${key}.txt && cat up.txt >> leaf_${key}.txt
              deps:
                - up.txt
              outs:
                - leaf_${key}.txt
        """)
    )
    return tmp_path


def script(project, *args, check=True):
    return run([sys.executable, str(project / "scripts" / SCRIPT.name), *args], project, check=check)


def status(project) -> dict:
    return json.loads(run([str(BIN / "dvc"), "status", "--json"], project).stdout or "{}")


def test_refuses_when_upstream_is_stale(project):
    r = script(project, "leaf@*", check=False)
    assert r.returncode != 0 and "upstream stages are out of date: up" in r.stderr
    assert not list(project.glob("leaf_*.txt"))


def test_runs_side_by_side_and_records_the_lock(project):
    run([str(BIN / "dvc"), "repro", "up"], project)
    r = script(project, "--jobs", "2", "--threads", "1", "leaf@*")
    assert "3 of 3 stage(s) to run" in r.stdout
    for k, v in {"a": 1, "b": 2, "c": 3}.items():
        assert (
            project / f"leaf_{k}.txt"
        ).read_text() == f"{v} 1\nhello\n"  # the stage's own command, with OMP_NUM_THREADS=1
    assert status(project) == {}, "dvc sees every stage as up to date, as after `dvc repro`"
    lines = r.stdout.splitlines()
    first_done = next(i for i, l in enumerate(lines) if l.startswith("done "))
    assert lines.index("started leaf@c") < first_done, "a freed slot gets its next stage before the commit"
    lock = (project / "dvc.lock").read_text()
    assert all(f"leaf@{k}" in lock for k in "abc")
    timings = json.loads((project / "work" / "logs" / "timings.json").read_text())
    assert set(timings) == {"leaf@a", "leaf@b", "leaf@c"} and all(t["wall_s"] >= 1 for t in timings.values())
    again = script(project, "leaf@*")
    assert "0 of 3 stage(s) to run" in again.stdout, "a second run is a no-op"


def test_a_failing_stage_is_not_recorded(project):
    run([str(BIN / "dvc"), "repro", "up"], project)
    (project / "dvc.yaml").write_text((project / "dvc.yaml").read_text().replace("sleep 1 &&", "test ${key} != b &&"))
    r = script(project, "--jobs", "1", "leaf@*", check=False)
    assert r.returncode == 1 and "FAILED leaf@b" in r.stdout
    assert "leaf@b" in status(project) and "leaf@a" not in status(project)


def test_project_runs_a_nested_dvc_project(project):
    "--project DIR: stages of a nested DVC project (`dvc init --subdir`) run and are recorded in DIR's dvc.lock."
    sub = project / "sub"
    sub.mkdir()
    run([str(BIN / "dvc"), "init", "--subdir", "-q"], sub)
    (sub / "dvc.yaml").write_text(
        textwrap.dedent("""\
        stages:
          copy:
            foreach: [x, y]
            do:
              cmd: echo ${item} $OMP_NUM_THREADS > out_${item}.txt && cat ../src.txt >> out_${item}.txt
              deps:
                - ../src.txt
              outs:
                - out_${item}.txt
        """)
    )
    r = script(project, "--project", "sub", "--jobs", "2", "copy@*")
    assert "2 of 2 stage(s) to run in sub" in r.stdout, r.stdout
    assert (sub / "out_x.txt").read_text() == "x 1\nhello\n" and (sub / "out_y.txt").read_text() == "y 1\nhello\n"
    assert json.loads(run([str(BIN / "dvc"), "status", "--json"], sub).stdout or "{}") == {}
    assert "copy@x" in (sub / "dvc.lock").read_text() and not (project / "dvc.lock").exists()
    assert set(json.loads((project / "work" / "logs" / "sub" / "timings.json").read_text())) == {"copy@x", "copy@y"}
    assert "0 of 2 stage(s) to run" in script(project, "--project", "sub", "copy@*").stdout
    from_sub = run([sys.executable, str(project / "scripts" / SCRIPT.name), "--dry", "copy@*"], sub)
    assert "0 of 2 stage(s) to run in sub" in from_sub.stdout, "run from sub/, the project is sub/ (as for dvc)"
    bad = script(project, "--project", "nowhere", "copy@*", check=False)
    assert bad.returncode != 0 and "is not a DVC project" in bad.stderr


def test_a_target_downstream_of_targets_waits_for_them(project):
    "A target fed by other targets starts after they are recorded; one whose inputs came out the same is not re-run."
    run([str(BIN / "dvc"), "repro", "up"], project)
    total = "  total:\n    cmd: cat leaf_a.txt leaf_b.txt leaf_c.txt > total.txt\n"
    total += "    deps: [leaf_a.txt, leaf_b.txt, leaf_c.txt]\n    outs: [total.txt]\n"
    (project / "dvc.yaml").write_text((project / "dvc.yaml").read_text() + total)
    r = script(project, "--jobs", "2", "total", "leaf@*")  # named first, it still runs last
    assert "4 of 4 stage(s) to run" in r.stdout, r.stdout
    events = [l for l in r.stdout.splitlines() if l.startswith(("started", "done"))]
    start = events.index("started total")
    assert all(any(e.startswith(f"done leaf@{k} ") for e in events[:start]) for k in "abc"), events
    assert (project / "total.txt").read_text() == "1 1\nhello\n2 1\nhello\n3 1\nhello\n"
    assert status(project) == {}
    (project / "dvc.yaml").write_text((project / "dvc.yaml").read_text().replace("sleep 1 &&", "sleep 0 &&"))
    again = script(project, "--jobs", "2", "total", "leaf@*")  # new commands, the same outputs
    assert "3 of 4 stage(s) to run" in again.stdout and "; 1 more if their upstream changes them" in again.stdout
    assert "unchanged total (up to date after its upstream ran)" in again.stdout
    assert "started total" not in again.stdout and status(project) == {}
