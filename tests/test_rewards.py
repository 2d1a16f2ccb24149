"""Tests of `maskfocus.rl.rewards` (the weighted sum's info, `make_reward`), `maskfocus.toy.rewards` (judge reward
kinds) and `maskfocus.rl.reward_server` (the JSON reward server and its client)."""

import base64
import inspect
import json
import socket
import urllib.error
import urllib.request

import numpy as np
import pytest

from maskfocus.rl import reward_server, rewards
from maskfocus.toy import world
from maskfocus.core import InputError
from maskfocus.geneval import TAGS
from maskfocus.rl.reward_server import RemoteReward, RewardServerError, encode_images, jsonable, serve_reward
from maskfocus.rl.rewards import WeightedReward, make_reward, reward_metrics
from maskfocus.toy.rewards import JudgeReward

O = world.Obj
# (metadata, ground truth, counterfactual with one thing wrong); partial scores of the counterfactuals by hand
CASES = [
    (world.make_metadata("single_object", ["square"]), (O("square", "red", 1, 1),), (O("triangle", "red", 1, 1),), 0.0),
    (
        world.make_metadata("counting", ["circle"], count=2),
        (O("circle", "blue", 0, 0), O("circle", "blue", 5, 5)),
        (O("circle", "blue", 0, 0),),
        0.5,
    ),
    (
        world.make_metadata("colors", ["triangle"], colors=["green"]),
        (O("triangle", "green", 2, 2),),
        (O("triangle", "red", 2, 2),),
        0.5,
    ),
    (
        world.make_metadata("position", ["square", "circle"], relation="above"),
        (O("square", "red", 0, 3), O("circle", "blue", 5, 3)),
        (O("square", "red", 5, 3), O("circle", "blue", 0, 3)),
        2 / 3,
    ),
]


@pytest.fixture(scope="module")
def batch():
    "Ground truth then counterfactual renders, prompts and metadata."
    metas = [m for m, *_ in CASES] * 2
    images = np.stack([world.render(g) for _, g, _, _ in CASES] + [world.render(c) for _, _, c, _ in CASES])
    return images, [m["prompt"] for m in metas], metas


class Const:
    "A stub reward with fixed scores."

    def __init__(self, values):
        self.values = np.asarray(values, np.float32)

    def __call__(self, images, prompts, metadata=None):
        return self.values[: len(images)], {"mean": float(self.values.mean())}


@pytest.fixture(scope="module")
def served(batch):
    "A judge reward served on a real loopback port; yields (server, url)."
    server, url = serve_reward(make_reward({"judge_partial": 0.5, "judge": 0.5}))
    yield server, url
    server.close()


def post(url, body: bytes):
    "POST raw bytes; (status, JSON answer)."
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url, data=body, method="POST"), timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


# --- judge rewards


def test_judge_kinds(batch):
    images, prompts, metas = batch
    n = len(CASES)
    b, bi = JudgeReward("binary")(images, prompts, metas)
    p, pi = JudgeReward("partial")(images, prompts, metas)
    s, si = JudgeReward("strict")(images, prompts, metas)
    for x in (b, p, s):
        assert x.dtype == np.float32 and x.shape == (2 * n,) and (x[:n] == 1).all()
    assert (b[n:] == 0).all() and (s[n:] == 0).all()
    assert np.allclose(p[n:], [c[3] for c in CASES])
    assert bi["correct"] == si["strict_correct"] == n and bi["images"] == 2 * n and bi["accuracy"] == 0.5
    assert bi["per_tag_accuracy"] == {t: 0.5 for t in TAGS if t in {m["tag"] for m in metas}}
    assert list(pi["per_tag"]) == [t for t in TAGS if t in pi["per_tag"]], "GenEval's tag order"
    assert pi["per_tag"]["position"] == pytest.approx((1 + 2 / 3) / 2) and pi["kind"] == "partial"


def test_binary_is_not_strict():
    "Two circles for 'a circle and a square': GenEval-correct, not strictly, partial 0.5."
    m = world.make_metadata("two_object", ["circle", "square"])
    im = world.render((O("circle", "red", 0, 0), O("circle", "red", 0, 5), O("square", "blue", 5, 2)))[None]
    got = [JudgeReward(k)(im, [m["prompt"]], [m])[0][0] for k in ("binary", "partial", "strict")]
    assert got == [1.0, 0.5, 0.0]


def test_judge_bad_input(batch):
    images, prompts, metas = batch
    with pytest.raises(InputError, match="field 'metadata'"):
        JudgeReward()(images, prompts)
    with pytest.raises(InputError, match=r"field 'metadata\[0\]\.tag'"):
        JudgeReward()(images[:1], prompts[:1], [{**metas[0], "tag": "poses"}])
    with pytest.raises(InputError, match="field 'kind'"):
        JudgeReward("soft")
    with pytest.raises(InputError, match="field 'prompts'"):
        JudgeReward()(images, prompts[:1], metas)


# --- weighted sum


def test_weighted_arithmetic_and_info(batch):
    images, prompts, metas = batch
    w = WeightedReward({"a": (Const(np.arange(8)), 0.25), "judge": (JudgeReward(), 2.0)})
    s, info = w(images, prompts, metas)
    assert s.dtype == np.float32 and np.allclose(s, 0.25 * np.arange(8) + 2.0 * np.r_[np.ones(4), np.zeros(4)])
    assert {
        "mean",
        "std",
        "weights",
        "per_reward",
        "per_reward_mean",
        "per_tag",
        "per_tag_reward",
        "judge_accuracy",
        "components",
        "seconds",
    } <= set(info)
    assert set(info["per_reward"]) == set(info["per_tag_reward"]) == {"a", "judge"}
    assert info["per_reward"]["a"].tolist() == list(range(8))
    assert info["per_tag"]["counting"] == pytest.approx(np.mean([0.25 * 1 + 2, 0.25 * 5]))
    assert info["per_tag_reward"]["judge"]["colors"] == 0.5
    assert info["judge_accuracy"]["source"] == "judge" and info["judge_accuracy"]["overall"] == 0.5
    assert info["mean"] == pytest.approx(s.mean()) and info["std"] == pytest.approx(s.std())
    m = reward_metrics(info)
    assert m["judge/accuracy"] == 0.5 and "reward/a/tag/position" in m and "reward/tag/colors" in m


def test_monitor_reports_accuracy_without_judge(batch):
    "A run trained on another reward still logs the judge's binary accuracy per tag."
    images, prompts, metas = batch
    s, info = WeightedReward({"c": (Const(np.full(8, 0.3)), 1.0)}, monitor=JudgeReward("binary"))(
        images, prompts, metas
    )
    assert np.allclose(s, 0.3) and info["judge_accuracy"]["source"] == "monitor"
    assert set(info["judge_accuracy"]["per_tag"].values()) == {0.5}
    _, info = WeightedReward({"c": (Const(np.full(8, 0.3)), 1.0)}, monitor=Const(np.r_[np.ones(4), np.zeros(4)]))(
        images, prompts, metas
    )
    assert info["judge_accuracy"]["overall"] == 0.5, "a monitor without per_tag_accuracy: its scores are the verdicts"
    _, info = make_reward({"judge": 1.0})(images, prompts, metas)
    assert "monitor" not in info["components"], "the judge is not run twice"


def test_make_reward_clip(tmp_path, batch):
    "A CLIP-only spec: lazy loading, raw cosine, and judge accuracy from the monitor."
    from maskfocus.toy.clip import ClipConfig, build_clip, save_clip

    cfg = ClipConfig.tiny()
    folder = save_clip(build_clip(cfg), cfg, tmp_path / "clip")
    images, prompts, metas = batch
    r = make_reward({"clip": 1.0}, clip_model=folder)
    assert r.rewards["clip"]._scorer is None
    s, info = r(images, prompts, metas)
    assert s.dtype == np.float32 and np.all(np.abs(s) <= 1 + 1e-5) and info["judge_accuracy"]["overall"] == 0.5
    s2, _ = make_reward({"clip": 1.0}, clip_model=folder, clip_scale=100, monitor=None)(images, prompts)
    assert np.allclose(s2, 100 * s, atol=1e-3)


@pytest.mark.parametrize(
    "spec,field",
    [
        ({"judge": 1, "hps": 1}, "hps"),
        ({"judge": "1"}, "judge"),
        ({"clip": 1}, "clip"),
        ({}, "reward"),
        ({"judge": float("inf")}, "judge"),
        ({"judge": None}, "judge"),
    ],
)
def test_bad_spec(spec, field):
    with pytest.raises(InputError, match=f"field '{field}'"):
        make_reward(spec)


# --- server and client


def test_round_trip(served, batch):
    server, url = served
    images, prompts, metas = batch
    local = make_reward({"judge_partial": 0.5, "judge": 0.5})
    s_local, i_local = local(images, prompts, metas)
    s_remote, i_remote = RemoteReward(url, timeout=30)(images, prompts, metas)
    assert s_remote.dtype == np.float32 and np.array_equal(s_local, s_remote)
    drop = lambda d: {k: v for k, v in d.items() if k != "seconds"}
    assert drop(i_remote) == drop(jsonable(i_local))
    s_remote, _ = RemoteReward(url, timeout=30)(images[:0], [], [])
    assert s_remote.shape == (0,)


def test_round_trip_arbitrary_pixels():
    "Random pixels and float scores survive PNG + JSON exactly."
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 20, 24, 3), dtype=np.uint8)

    def mean_pixel(images, prompts, metadata=None):
        return (images.reshape(len(images), -1).mean(1) / 255 + np.float32(1e-7)).astype(np.float32), {
            "sum": images.sum(axis=(1, 2, 3))
        }

    server, url = serve_reward(mean_pixel)
    try:
        s, info = RemoteReward(url)(images, ["a", "b", "c"])
        assert np.array_equal(s, mean_pixel(images, None)[0]) and info["sum"] == images.sum(axis=(1, 2, 3)).tolist()
    finally:
        server.close()


def test_malformed_requests_get_400_and_server_stays_up(served, batch):
    server, url = served
    images, prompts, metas = batch
    one = encode_images(images[:1])
    bad = [
        b"{not json",
        b"\xff\xfe",
        b"[]",
        json.dumps({"prompts": ["x"]}).encode(),
        json.dumps({"images": one}).encode(),
        json.dumps({"images": ["***"], "prompts": ["x"]}).encode(),
        json.dumps({"images": [base64.b64encode(b"not an image").decode()], "prompts": ["x"]}).encode(),
        json.dumps({"images": one, "prompts": ["x", "y"]}).encode(),
        json.dumps({"images": one, "prompts": ["x"], "extra": 1}).encode(),
        json.dumps({"images": one, "prompts": prompts[:1]}).encode(),  # the judge needs metadata
        json.dumps({"images": one, "prompts": prompts[:1], "metadata": ["colors"]}).encode(),
    ]
    for body in bad:
        status, ans = post(url, body)
        assert status == 400 and isinstance(ans["error"], str) and ans["error"], body
    status, ans = post(url, json.dumps({"images": one, "prompts": prompts[:1], "metadata": metas[:1]}).encode())
    assert status == 200 and ans["scores"] == [1.0]
    assert post(url + "other", b"{}")[0] == 404
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url + "health", timeout=5) as r:
        assert json.loads(r.read())["status"] == "ok"


def test_reward_failure_is_500_naming_url(batch):
    def boom(images, prompts, metadata=None):
        raise RuntimeError("detector crashed")

    with serve_reward(boom)[0] as server:
        with pytest.raises(RewardServerError) as e:
            RemoteReward(server.url, timeout=10)(batch[0][:1], batch[1][:1])
        assert server.url in str(e.value) and "HTTP 500" in str(e.value) and "detector crashed" in str(e.value)


def test_too_large_is_413(batch):
    server, url = serve_reward(JudgeReward(), max_bytes=100)
    try:
        with pytest.raises(RewardServerError, match="HTTP 413"):
            RemoteReward(url)(batch[0][:1], batch[1][:1], batch[2][:1])
    finally:
        server.close()


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "10.0.0.1", "example.org", "::"])
def test_non_loopback_refused(host):
    with pytest.raises(InputError, match="field 'host'"):
        serve_reward(Const([1.0]), host=host)


def test_localhost_allowed():
    server, url = serve_reward(Const([0.25]), host="localhost")
    try:
        assert RemoteReward(url)(np.zeros((1, 4, 4, 3), np.uint8), ["x"])[0].tolist() == [0.25]
    finally:
        server.close()


def test_client_timeout_names_url(batch):
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts connections, never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        with pytest.raises(RewardServerError) as e:
            RemoteReward(url, timeout=0.3)(batch[0][:1], batch[1][:1])
    assert url in str(e.value) and "timeout" in str(e.value)


def test_unreachable_names_url(batch):
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]  # a port nobody listens on now
    url = f"http://127.0.0.1:{port}/"
    with pytest.raises(RewardServerError) as e:
        RemoteReward(url, timeout=5)(batch[0][:1], batch[1][:1])
    assert url in str(e.value)


def test_protocol_violation_names_url(batch):
    "A server that answers the wrong number of scores is caught by the client."

    def wrong(images, prompts, metadata=None):
        return np.zeros(len(images) + 1, np.float32), {}

    with serve_reward(wrong)[0] as server:  # the server itself refuses to send it: 500
        with pytest.raises(RewardServerError, match="HTTP 500"):
            RemoteReward(server.url)(batch[0][:1], batch[1][:1])
    with pytest.raises(InputError, match="field 'url'"):
        RemoteReward("127.0.0.1:80")


def test_no_pickle_in_protocol():
    src = inspect.getsource(rewards) + inspect.getsource(reward_server)
    assert "import pickle" not in src and "pickle.load" not in src and "torch.load" not in src


def test_registry_builds_the_toy_rewards():
    "make_reward reaches the toy rewards only through REWARDS' plugin strings, and builds the same objects."
    from maskfocus.rl.rewards import CHECKPOINT_REWARDS, REWARD_NAMES, REWARDS
    from maskfocus.toy.rewards import ClipReward

    toy = ("judge", "judge_binary", "judge_partial", "judge_strict", "clip")
    assert REWARD_NAMES == toy + ("hps", "pickscore", "clip_score", "image_reward", "geneval_hf")
    assert all(REWARDS[k].startswith("maskfocus.toy.rewards:") for k in toy)
    assert all(v.startswith("maskfocus.scoring.") for v in CHECKPOINT_REWARDS.values())
    assert "import maskfocus.toy" not in inspect.getsource(rewards) and "from maskfocus.toy" not in inspect.getsource(
        rewards
    )
    r = make_reward({"judge_strict": 1.0, "judge": 0.5})
    assert [(k, type(x).__name__, x.kind) for k, (x, _) in r.items()] == [
        ("judge_strict", "JudgeReward", "strict"),
        ("judge", "JudgeReward", "binary"),
    ]
    assert isinstance(r.monitor, JudgeReward) and r.monitor.kind == "binary"
    assert make_reward({"judge": 1.0}, monitor=None).monitor is None
    scorer = object()  # a ready ClipScorer stand-in: nothing is loaded before the first call
    c = make_reward({"clip": 1.0}, clip_model=scorer, clip_scale=100).rewards["clip"]
    assert isinstance(c, ClipReward) and c.scale == 100.0 and c._scorer is scorer
