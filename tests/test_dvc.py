"The DVC project: data.dvc matches the committed data/, and dvc.yaml reads only params that exist."
import json, os, subprocess, sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DVC = str(Path(sys.executable).parent/"dvc")


def test_data_dvc_is_clean():
    r = subprocess.run([DVC, "status", "data.dvc", "--json"], cwd=ROOT, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout or "{}") == {}, f"data/ differs from data.dvc: {r.stdout} (run `dvc commit data.dvc` after a deliberate change)"


def test_data_dvc_declares_data_without_cache():
    outs = yaml.safe_load((ROOT/"data.dvc").read_text())["outs"]
    assert [o["path"] for o in outs] == ["data"] and outs[0]["cache"] is False


def test_analytics_off():
    assert "analytics = false" in (ROOT/".dvc"/"config").read_text()


def test_stage_params_exist():
    stages = yaml.safe_load((ROOT/"dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((ROOT/"params.yaml").read_text())
    for name, st in stages.items():
        for p in st.get("params", []):
            key = p if isinstance(p, str) else next(iter(p))
            assert key.split(".")[0] in params, f"stage {name} reads params `{key}` missing from params.yaml"
