"""Record in dvc.lock a change of code dependencies that changes no output: `dvc commit` for stages whose outputs
are not in this clone.

`dvc commit` re-hashes a stage's outputs, so it refuses a stage whose outputs are missing (a clone has no DVC
cache of the RL runs). After a refactor whose outputs were shown to be byte-for-byte unchanged, this script
re-hashes each stage's *dependencies* with DVC's own code and keeps the outputs' recorded hashes. It refuses a
stage whose command or params changed (those are not refactors), and by default touches only stages whose
changed dependencies are all code (maskfocus/ modules, notebooks).

    python scripts/dvc_relock.py [STAGE ...] [--dry-run]
"""

from __future__ import annotations

import argparse
import sys


def code_only(stage) -> tuple[bool, list[str]]:
    """Whether every changed dependency of `stage` is code (a maskfocus/ module, a notebook), and the changed paths.

    A dependency that is absent here (an upstream output not in this clone) keeps its recorded hash."""
    changed = [str(d.def_path) for d in stage.deps if d.exists and d.changed()]
    code = [p for p in changed if (p.startswith("maskfocus/") and p.endswith(".py")) or p.endswith(".ipynb")]
    return len(code) == len(changed), changed


def relock(stage_names: list[str] | None = None, dry_run: bool = False) -> list[str]:
    "Re-record the dependency hashes of the stages (all with a command by default); returns the stages recorded."
    from dvc.repo import Repo

    repo = Repo(".")
    done = []
    with repo.lock:
        for stage in repo.index.stages:
            if not stage.cmd or (stage_names and stage.addressing not in stage_names):
                continue
            if stage.changed_stage():
                raise SystemExit(f"{stage.addressing}: its command or params changed; run it instead")
            ok, changed = code_only(stage)
            if not changed:
                continue
            if not ok:
                raise SystemExit(f"{stage.addressing}: changed dependencies that are not code: {changed}")
            if not dry_run:
                stage.save_deps(allow_missing=True)
                stage.md5 = stage.compute_md5()
                stage.dump(update_pipeline=False)
            done.append(stage.addressing)
    return done


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stages", nargs="*", help="stage names (default: every stage with a command)")
    p.add_argument("--dry-run", action="store_true", help="list the stages that would be recorded, record nothing")
    args = p.parse_args(argv)
    for name in relock(args.stages or None, args.dry_run):
        print(("would record " if args.dry_run else "recorded ") + name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
