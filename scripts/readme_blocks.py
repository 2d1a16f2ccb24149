"""Rewrite (or check) the generated blocks of README.md from the committed results.

Every number the README shows sits between a pair of markers

    <!-- generated:NAME (python scripts/readme_blocks.py) -->
    ...
    <!-- end:NAME -->

and is computed here from `results/` (the DVC stages' outputs). `--check` exits 1, naming the block, when the README
differs from what the results give (tests/test_readme.py runs it), so a re-run that changes a result cannot leave the
README behind: run `python scripts/readme_blocks.py` and commit.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MARK = re.compile(r"(<!-- generated:(\w+) \(python scripts/readme_blocks.py\) -->\n)(.*?)(<!-- end:\2 -->)", re.S)


def results_block(results: Path) -> str:
    "Table 1 (toy rows and the paper's) and its verdicts, as the table notebook wrote them."
    md = (results / "table1_geneval" / "table1.md").read_text().splitlines()
    start = next((i for i, line in enumerate(md) if line.startswith("|")), len(md))
    table = []
    for line in md[start:]:  # the first table only (the split table below it is in the report)
        if not line.startswith("|"):
            break
        table.append(line)
    claims = [line for line in md if line.startswith("- ")]
    if not table or not claims:
        raise SystemExit(f"{results / 'table1_geneval' / 'table1.md'}: no table or no verdicts in it")
    report = json.loads((results / "table1_geneval" / "table1.json").read_text())
    note = (
        f"Judge accuracy on the test split ({report['setting']}), mean ± std over seeds; the paper's rows are "
        "Meissonic at 1024². From `results/table1_geneval/table1.md`; every other result, and what does not "
        "reproduce, is in [the report](results/REPORT.md)."
    )
    recipe = json.loads((results / "reward_recipe" / "reward_recipe.json").read_text())
    note += (
        " The recipe's reward (judge + partial score, chosen on the training prompts with MaskFocus runs) against "
        f"the judge alone, paired over seeds on the test split: {recipe['summary']} Per method: "
        "`results/reward_recipe/reward_recipe.md`."
    )
    return "\n".join([*table, "", note, "", *claims]) + "\n"


RL_STAGES = ("rl@", "rl_udm@", "rl_variant@")  # the RL runs `make repro` trains (rl_judge_only is frozen)


def timings_block(results: Path) -> str:
    "The measured time of `make repro` from a fresh clone, and whether the pipeline has grown since."
    t = json.loads((results / "pipeline_timings.json").read_text())
    measured = sum(1 for n in t["parallel_stages_s"] if n.startswith(RL_STAGES))
    lock = yaml.safe_load((results.parent / "dvc.lock").read_text())["stages"]
    now = sum(1 for n in lock if n.startswith(RL_STAGES))
    grown = (
        f" The pipeline now has {now} RL runs (dvc.lock); its time from a fresh clone has not been measured since."
        if now != measured
        else ""
    )
    return (
        f"Measured from a fresh clone on 2 cores: {t['total_s'] / 60:.0f} min, of which the "
        f"{measured} RL runs and the stages run beside them take {t['parallel_span_s'] / 60:.0f} min "
        f"(`results/pipeline_timings.json`, which names the commit measured).{grown}\n"
    )


BLOCKS = {"results": results_block, "timings": timings_block}


def render(readme: str, results: Path) -> tuple[str, list[str]]:
    "The README with every generated block recomputed, and the names of the blocks that changed."
    changed, seen = [], []

    def fill(m: re.Match) -> str:
        name = m.group(2)
        if name not in BLOCKS:
            raise SystemExit(f"README.md: unknown generated block {name!r} (known: {', '.join(BLOCKS)})")
        seen.append(name)
        new = BLOCKS[name](results)
        if new != m.group(3):
            changed.append(name)
        return m.group(1) + new + m.group(4)

    out = MARK.sub(fill, readme)
    missing = sorted(set(BLOCKS) - set(seen))
    if missing:
        raise SystemExit(f"README.md: generated block(s) {missing} not found")
    return out, changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only check; exit 1 if a block is stale (default: rewrite)")
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md", help="the README (default: %(default)s)")
    ap.add_argument("--results", type=Path, default=ROOT / "results", help="results folder (default: %(default)s)")
    a = ap.parse_args(argv)
    text = a.readme.read_text()
    new, changed = render(text, a.results)
    if a.check:
        if changed:
            print(
                f"{a.readme}: stale generated block(s) {changed}; run python scripts/readme_blocks.py", file=sys.stderr
            )
            return 1
        print(f"{a.readme}: generated blocks up to date")
        return 0
    if new != text:
        a.readme.write_text(new)
    print(f"{a.readme}: rewrote {changed or 'nothing'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
