"""The README's pipeline-time, compute, sweep and table numbers are the ones the committed results hold
(results/pipeline_timings.json, results/compute_table/compute.json, the runs' dvclive timers and eval.json, the sweep
report, Tables 1 and 3): a re-measurement that forgets the README fails here."""

import csv, json, re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
TIMINGS, COMPUTE = ROOT / "results" / "pipeline_timings.json", ROOT / "results" / "compute_table" / "compute.json"
pytestmark = pytest.mark.skipif(not (TIMINGS.is_file() and COMPUTE.is_file()), reason="no committed pipeline results")


def flat(text: str) -> str:
    "The README with line breaks folded into spaces, so a phrase split over two lines still matches."
    return re.sub(r"\s*\n\s*", " ", text)


def span(values) -> str:
    "`a–b` of whole seconds, as the README writes a range."
    values = list(values)
    return f"{min(values):.0f}–{max(values):.0f}"


def test_fresh_clone_times_match_the_timings_file():
    t = json.loads(TIMINGS.read_text())
    log = t["logs"][0]
    commit = re.search(r"commit (\w{7})", t["note"])[1]
    text = flat(README)
    rl = log["rl_split_s"]
    maskfocus_train = [v["train_s"] for k, v in rl.items() if re.fullmatch(r"rl@maskfocus-\d+", k)]
    for phrase in (
        f"at commit {commit}",
        f"**{t['total_s'] / 60:.1f} min ({t['total_s']} s)**",
        f"`.venv` setup {log['venv_setup_s']} s",
        f"`train_clip` {log['dvc_stages_s']['train_clip']} s",
        f"`pretrain` {log['dvc_stages_s']['pretrain']} s",
        f"`judge_groundtruth` {log['dvc_stages_s']['judge_groundtruth']} s",
        f"the 24 RL stages two at a time {log['parallel_span_s'] / 60:.1f} min",
        f"fig6 {log['dvc_stages_s']['fig6']} s",
        f"test evaluation is {span(v['eval_s'] for v in rl.values())} s of each",
        f"training a maskfocus run {span(maskfocus_train)} s",
        f"Each `maskfocus` run trains in {span(maskfocus_train)} s",
    ):
        assert phrase in text, f"README lacks {phrase!r} (from {TIMINGS.relative_to(ROOT)})"
    assert f"in {t['total_s'] / 60:.1f} min |" in README, "the status table's make-repro time"


def test_compute_paragraph_matches_the_compute_table():
    rows = json.loads(COMPUTE.read_text())["rows"]
    it = {
        m: rows[m]["iteration"] for m in ("maskfocus", "maskfocus_no_css", "maskfocus_no_dr", "maskgrpo", "mask_grpo")
    }
    text = flat(README)
    phrase = (
        f"seconds per iteration maskfocus {it['maskfocus']['mean']:.2f} ± {it['maskfocus']['std']:.2f}, "
        f"w/o CSS {it['maskfocus_no_css']['mean']:.2f}, w/o DR {it['maskfocus_no_dr']['mean']:.2f}, "
        f"maskgrpo {it['maskgrpo']['mean']:.2f}, mask_grpo {it['mask_grpo']['mean']:.2f}"
    )
    assert phrase in text, f"README lacks {phrase!r}"
    r = rows["maskfocus"]
    assert (
        f"maskfocus / mask_grpo is {r['iter_ratio']:.2f} for the whole iteration (update alone {r['update_ratio']:.2f}"
        in text
    )
    dr = f"{rows['maskfocus']['rollout']['mean']:.2f} vs {rows['maskfocus_no_dr']['rollout']['mean']:.2f} s"
    assert dr in text, f"README lacks the DR rollout comparison {dr!r}"


def test_iteration_time_sums_match_the_runs():
    """The README's '<a>–<b> s are the 60 iterations themselves' is the range of the maskfocus runs' summed
    time/iteration."""
    sums = []
    for f in sorted((ROOT / "results" / "rl").glob("maskfocus-s*/dvclive/plots/metrics/time/iteration.tsv")):
        rows = list(csv.DictReader(f.open(), delimiter="\t"))
        key = next(c for c in rows[0] if c not in ("step", "timestamp"))
        sums.append(sum(float(r[key]) for r in rows))
    if not sums:
        pytest.skip("no maskfocus run curves")
    assert f"of which {span(sums)} s are the 60 iterations themselves" in flat(README)


def signed(x: float) -> str:
    "`+0.094` / `−0.010` (the README's minus sign)."
    return f"{x:+.3f}".replace("-", "−")


def test_sweep_tables_match_the_sweep_report():
    """Every entry of the sweep report has its README row with the report's overall score and gain; every 3-seed row its
    seeds and mean ± std."""
    f = ROOT / "results" / "rl_sweep_report"
    if not (f / "sweep.json").is_file():
        pytest.skip("no sweep report")
    rows = json.loads((f / "sweep.json").read_text())["rows"]
    assert f"| base | — | {rows['base']['overall']:.3f} | — |" in README
    for k, r in rows.items():
        if k == "base":
            continue
        row = rf"^\| {re.escape(k)} \| [^|\n]+ \| {r['overall']:.3f} \| {re.escape(signed(r['delta']))} \|"
        assert re.search(row, README, re.M), (
            f"README's sweep table: no row {k} with {r['overall']:.3f} / {signed(r['delta'])}"
        )
    for k, r in json.loads((f / "sweep_seeds.json").read_text())["rows"].items():
        cells = (
            f"| {r['seed 0']:.3f} | {r['seed 1']:.3f} | {r['seed 2']:.3f} | {r['overall']['mean']:.3f} ± "
            f"{r['overall']['std']:.3f} |"
        )
        assert re.search(rf"^\| {re.escape(k)} \([^\n]*\) {re.escape(cells)}$", README, re.M), (
            f"README's 3-seed table: row {k} should end {cells}"
        )


def test_headline_gain_matches_table_numbers():
    "The status table's MaskFocus gain over the base, mean ± std over its seeds, is the compute table's."
    r = json.loads(COMPUTE.read_text())["rows"]["maskfocus"]
    phrase = f"MaskFocus +{r['gain']:.3f} ± {r['accuracy']['std']:.3f} on the test split ({r['n']} seeds)"
    assert phrase in flat(README), f"README lacks {phrase!r}"


TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


def cell(v: dict) -> str:
    "A table cell as the reports write it: `mean ± std` over seeds, the bare mean for one evaluation."
    return f"{v['mean']:.3f}" if v["n"] == 1 else f"{v['mean']:.3f} ± {v['std']:.3f}"


def test_table1_and_table3_rows_match_the_reports():
    """README's Table 1 rows (every tag and overall) and Table 3 rows (overall, position, color_attr) are the reports'
    numbers."""
    t1, t3 = (
        ROOT / "results" / d / f for d, f in (("table1_geneval", "table1.json"), ("table3_ablation", "table3.json"))
    )
    if not (t1.is_file() and t3.is_file()):
        pytest.skip("no table reports")
    rows = json.loads(t1.read_text())["rows"]
    for run in ("base", "mask_grpo", "maskgrpo", "maskfocus"):
        r = rows[f"{run} (toy)"]
        line = f"| {run} | " + " | ".join(cell(r[t]) for t in TAGS) + f" | {cell(r['overall'])} |"
        assert line in README, f"README's Table 1 lacks {line!r}"
    rows = json.loads(t3.read_text())["rows"]
    for run, label in (
        ("maskfocus", "maskfocus"),
        ("maskfocus_no_css", "w/o CSS (K steps at random in the first 40 %)"),
        ("maskfocus_no_dr", "w/o DR sampling"),
        ("base", "base"),
    ):
        r = rows[f"{run} (toy)"]
        line = f"| {label} | {cell(r['overall'])} | {cell(r['position'])} | {cell(r['color_attr'])} |"
        assert line in README, f"README's Table 3 lacks {line!r}"


def maskfocus_test_accuracies() -> list[float]:
    "Overall judge accuracy of each `maskfocus` seed on the test split (its eval.json, the rl_eval protocol), by seed."
    evals = sorted((ROOT / "results" / "rl").glob("maskfocus-s*/eval.json"))
    if not evals:
        pytest.skip("no maskfocus runs")
    return [json.loads(f.read_text())["N=16,cfg=3"]["overall"] for f in evals]


def test_maskfocus_seeds_match_their_evaluations():
    "The per-seed test accuracies the README quotes for `maskfocus` are the runs' own eval.json."
    seeds = " / ".join(f"{a:.3f}" for a in maskfocus_test_accuracies())
    assert f"`maskfocus` reaches {seeds} on the test split" in flat(README), f"README lacks the seeds {seeds}"


def test_clip_binding_counts_match_the_runs():
    """The README's count of updates whose pre-clip gradient norm exceeds params.yaml's rl.grad_clip is the runs'
    `update/grad_norm`."""
    clip = float(re.search(r"^  grad_clip: ([0-9.]+)", (ROOT / "params.yaml").read_text(), re.M)[1])
    counts = []
    for f in sorted((ROOT / "results" / "rl").glob("maskfocus-s*/dvclive/plots/metrics/update/grad_norm.tsv")):
        rows = list(csv.DictReader(f.open(), delimiter="\t"))
        counts.append(sum(float(r["grad_norm"]) > clip for r in rows))
    if not counts:
        pytest.skip("no maskfocus run curves")
    phrase = f"exceeds {clip:g} in {' / '.join(map(str, counts))} of the 60 updates"
    assert phrase in flat(README), f"README lacks {phrase!r}"


def test_table2_and_fig5_paragraphs_match_the_reports():
    """The Table 2 paragraph's CLIP score / judge accuracy pairs and the Fig. 5 paragraph's panel accuracies are the
    reports' numbers."""
    t2, f5 = ROOT / "results" / "table2_clip_reward" / "table2.json", ROOT / "results" / "fig5_variants" / "fig5.json"
    if not (t2.is_file() and f5.is_file()):
        pytest.skip("no Table 2 / Fig. 5 reports")
    text = flat(README)
    rows = json.loads(t2.read_text())["rows"]
    pair = lambda k: f"{rows[k]['clip_score']['mean']:.3f} / {rows[k]['overall']['mean']:.3f}"
    phrase = (
        f"base {pair('base (toy)')}, maskgrpo {pair('clip-maskgrpo (toy)')}, maskfocus {pair('clip-maskfocus (toy)')}, "
        f"mask_grpo {pair('clip-mask_grpo (toy)')}"
    )
    assert phrase in text, f"README's Table 2 paragraph lacks {phrase!r}"
    acc = {k: r["accuracy"] for k, r in json.loads(f5.read_text())["rows"].items()}
    mf, a = cell(acc["maskfocus"]), lambda k: f"{acc[k]['mean']:.3f}"
    for phrase in (
        f"critical (maskfocus) {mf}, random over all steps {a('fig5-random_steps')}, first-20 % window "
        f"{a('fig5-early_window')}, uniform {a('fig5-uniform')}",
        f"DR {acc['maskfocus']['mean']:.3f} vs plain {cell(acc['maskfocus_no_dr'])}",
        f"rollout CFG — 1: {a('fig5-cfg1')}, 3: {acc['maskfocus']['mean']:.3f}, 5: {a('fig5-cfg5')}",
        f"random re-masking (maskfocus) {acc['maskfocus']['mean']:.3f} vs the trajectory's own mask "
        f"{a('fig5-trajectory_mask')}",
    ):
        assert phrase in text, f"README's Fig. 5 paragraph lacks {phrase!r}"


def test_fig6_paragraph_matches_its_report():
    "The Fig. 6 paragraph's accuracies and fixed / broken pair counts are the trajectory report's."
    f = ROOT / "results" / "fig6" / "fig6_trajectories.json"
    if not f.is_file():
        pytest.skip("no Fig. 6 report")
    r = json.loads(f.read_text())
    seeds = maskfocus_test_accuracies()
    rank = "strongest" if seeds[0] == max(seeds) else "weakest" if seeds[0] == min(seeds) else "middle"
    phrase = (
        f"base {r['accuracy']['base']:.3f} vs `maskfocus` seed 0 (the {rank} seed on the test split) "
        f"{r['accuracy']['rl']:.3f} "
        f"({r['fixed_by_rl']} pairs fixed by RL, {r['broken_by_rl']} broken)"
    )
    assert phrase in flat(README), f"README's Fig. 6 paragraph lacks {phrase!r}"
