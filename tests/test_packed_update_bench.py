"A small CPU run of benchmarks/packed_update.py: its JSON has every field, and the packed update equals the full one."

import json, math, os, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "packed_update.py"


def test_packed_update_benchmark_runs_and_agrees(tmp_path):
    out = tmp_path / "packed.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(SCRIPT), "--grid", "8", "--codebook", "64", "--group", "2", "--repeats", "1"]
    r = subprocess.run([*cmd, "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    res = json.loads(out.read_text())
    rows = res["mask_counts"]
    assert [r["after_step"] for r in rows] == [1, 7, 13] and res["grid"] == [8, 8] and res["threads"] == 1
    fractions = [r["scored_fraction"] for r in rows]
    assert fractions == sorted(fractions, reverse=True) and 0 < fractions[-1] < fractions[0] <= 1
    for row in rows:
        assert row["grad_max_rel_diff"] < 1e-4 and row["logp_max_abs_diff"] < 1e-4, row
        assert all(math.isfinite(v) and v > 0 for v in row["seconds_median"].values())
        assert set(row["cpu_seconds_median"]) == {"full", "packed"}
        assert all(v > 0 for v in row["peak_bytes"].values())
    assert "packed/full" in r.stdout
