"""scripts/geneval_reward_server.py: the official GenEval evaluator's launcher, checked with the toy judge as its
evaluator against maskfocus's own `RemoteReward` client (scores equal the in-process toy judge's)."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from maskfocus.rl.reward_server import RemoteReward, RewardServerError
from maskfocus.toy import world
from maskfocus.toy.rewards import JudgeReward

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "geneval_reward_server.py"


def test_old_environment_syntax_and_imports():
    "Python 3.8 syntax; only the standard library, NumPy and Pillow (no maskfocus, no torch)."
    src = SCRIPT.read_text()
    tree = ast.parse(src, feature_version=(3, 8))
    mods = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    mods |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert mods - set(sys.stdlib_module_names) == {"numpy", "PIL"}, mods


@pytest.fixture(scope="module", params=["binary", "partial"])
def served(request):
    cmd = [sys.executable, str(SCRIPT), "--evaluator", "maskfocus.toy.judge:judge_image", "--kind", request.param]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        hello = json.loads(p.stdout.readline())
        yield request.param, hello
    finally:
        p.terminate()
        p.wait(10)


def batch(seed: int = 0):
    "Toy images and metadata: half the images show their prompt, half another prompt's scene."
    rng = np.random.default_rng(seed)
    pool = world.all_prompts()
    metas = [pool[int(i)] for i in rng.choice(len(pool), 8, replace=False)]
    ims = np.stack([world.render(world.sample_scene(m, rng)) for m in metas])
    return np.concatenate([ims, ims[::-1]]), metas + metas


def test_scores_equal_the_in_process_judge(served):
    kind, hello = served
    assert hello["reward"] == "geneval" and hello["kind"] == kind and hello["url"].startswith("http://127.0.0.1:")
    ims, metas = batch()
    remote, local = RemoteReward(hello["url"], timeout=60), JudgeReward(kind)
    (rs, rinfo), (ls, linfo) = remote(ims, [m["prompt"] for m in metas], metas), local(ims, [""] * len(ims), metas)
    assert rs.dtype == np.float32 and rs.tolist() == ls.tolist() and 0 < rs.mean() < 1
    assert rinfo["per_tag"] == pytest.approx(linfo["per_tag"]) and rinfo["mean"] == pytest.approx(linfo["mean"])
    assert rinfo["accuracy"] == pytest.approx(linfo["accuracy"])


def test_errors_are_answered_with_the_protocols_codes(served):
    _, hello = served
    ims, metas = batch()
    remote = RemoteReward(hello["url"], timeout=60)
    with pytest.raises(RewardServerError, match="HTTP 400: metadata: GenEval needs one metadata object per image"):
        remote(ims[:2], ["a", "b"])
    bad = [dict(metas[0], tag="nope"), metas[1]]
    with pytest.raises(RewardServerError, match=r"HTTP 400: metadata\[0\]: .*unknown tag"):
        remote(ims[:2], ["a", "b"], bad)
    with pytest.raises(RewardServerError, match="HTTP 413"):
        remote(np.zeros((65, 8, 8, 3), np.uint8), [""] * 65, [metas[0]] * 65)
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(hello["url"] + "health", timeout=10) as r:
        assert json.loads(r.read())["ok"] is True
