"""Batched rollouts equal per-group ones; the masked-only sampling step; rewards in process see arrays, not PNGs."""

from pathlib import Path

import numpy as np
import pytest
import torch

from maskfocus.models.sampler import maskgit_step, num_masks_after
from maskfocus.rl.batched import rollout_groups
from maskfocus.rl.pieces import unit_generator
from maskfocus.rl.rollout import DRConfig, TrajectoryRecorder, rollout

ROOT = Path(__file__).resolve().parents[1]
EXACT = ("tokens", "x0", "commit_step", "timesteps", "explore")
ROUNDED = ("entropy", "min_kept_conf")  # sums and minima over positions: their last bits follow the GEMM kernel
PROMPTS = ["a photo of a red circle", "two blue squares", "a green triangle", "three yellow circles"]


@pytest.fixture(scope="module")
def pipe():
    from maskfocus.toy.pipeline import toy_pipeline

    return toy_pipeline(dim=32, heads=2, layers=1, single_layers=1, text_dim=32, text_layers=1, max_length=8)


def trainer_generators(sizes, G=8, seed=7, it=3):
    "The trainer's rollout generators: a whole group (part None) when its size is G, else a part at offset 1."
    return [unit_generator(seed, it, g, None if n == G else 1, "rollout") for g, n in enumerate(sizes)]


def same(a, b) -> bool:
    "Every token, prediction, commit step and branch equal; the float statistics equal up to rounding."
    return (
        all(torch.equal(getattr(a, f), getattr(b, f)) for f in EXACT)
        and all(torch.allclose(getattr(a, f), getattr(b, f), rtol=1e-5, atol=1e-6) for f in ROUNDED)
        and a.group_size == b.group_size
    )


@pytest.mark.parametrize(
    "cfg, dr, sizes",
    [
        (3.0, DRConfig(T=1.5), [8, 8, 8, 8]),  # the toy recipe's shape: whole groups, CFG, DR
        (3.0, DRConfig(), [8, 2, 5, 3]),  # parts of groups of different sizes (>= 4 model rows each with CFG)
        (None, DRConfig(), [8, 4, 6, 5]),  # no guidance: >= 4 rows per group
        (3.0, DRConfig(enabled=False), [8, 3, 8, 2]),
        (3.0, DRConfig(apply_to_all=True), [4, 8, 2, 8]),
    ],
)
def test_batched_equals_per_group(pipe, cfg, dr, sizes):
    per = [
        rollout(pipe, [q], n, N=6, cfg=cfg if cfg is not None else 1.0, generator=g, dr=dr)
        for q, n, g in zip(PROMPTS, sizes, trainer_generators(sizes))
    ]
    bat = rollout_groups(
        pipe, PROMPTS, sizes, trainer_generators(sizes), N=6, cfg=cfg if cfg is not None else 1.0, dr=dr
    )
    assert [t.batch_size for t in bat] == sizes
    assert all(same(a, b) for a, b in zip(per, bat))


def test_batched_masked_only_equals_per_group_masked_only(pipe):
    sizes = [8, 5, 2, 8]
    per = [
        rollout(pipe, [q], n, N=6, cfg=3.0, generator=g, masked_only=True)
        for q, n, g in zip(PROMPTS, sizes, trainer_generators(sizes))
    ]
    bat = rollout_groups(pipe, PROMPTS, sizes, trainer_generators(sizes), N=6, cfg=3.0, masked_only=True)
    assert all(same(a, b) for a, b in zip(per, bat))
    # a valid rollout: every position committed once, the schedule's counts
    assert all(int(t.commit_step.max()) == 5 and t.tokens.max() < pipe.transformer.codebook_size for t in bat)


class FullHead(torch.nn.Module):
    "The same transformer without `supports_positions`: the sampler runs its head at every position."

    def __init__(self, model):
        super().__init__()
        self.model, self.codebook_size, self.mask_token_id = model, model.codebook_size, model.mask_token_id
        self.micro_cond_dim = model.micro_cond_dim

    def forward(self, *a, **kw):
        return self.model(*a, **kw)


def test_masked_sampling_with_the_packed_head_equals_the_full_head(pipe):
    "With masked_only, rollouts (per group and batched, DR on) run the head at masked positions only: same draws."
    from maskfocus.models.pipeline import MaskedPipeline

    assert pipe.transformer.supports_positions
    full = MaskedPipeline(FullHead(pipe.transformer), pipe.text_encoder, pipe.tokenizer, pipe.sampling)
    sizes = [8, 5, 2, 8]
    packed = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda m, a, kw: packed.append(kw.get("positions") is not None), with_kwargs=True
    )
    for fn in ("rollout", "batched"):
        got = []
        for p in (pipe, full):
            gens = trainer_generators(sizes)
            if fn == "rollout":
                got.append([rollout(p, [q], n, N=6, cfg=3.0, generator=g, masked_only=True) for q, n, g in
                            zip(PROMPTS, sizes, gens)])  # fmt: skip
            else:
                got.append(rollout_groups(p, PROMPTS, sizes, gens, N=6, cfg=3.0, masked_only=True))
        for a, b in zip(*got):
            for f in ("tokens", "x0", "commit_step", "explore"):
                assert torch.equal(getattr(a, f), getattr(b, f)), (fn, f)
            assert torch.allclose(a.entropy, b.entropy, atol=1e-5) and torch.allclose(
                a.min_kept_conf, b.min_kept_conf, atol=1e-5
            )
    hook.remove()
    assert sum(packed) == len(packed) // 2 > 0  # the pipeline's calls took positions, the wrapper's did not


def old_maskgit_step(logits, tokens, step, N, mask_id, generator, gumbel_temp, temperature):
    "The sampling step as it was before `masked_only` (cosine schedule, exact ties), copied from the old code."
    B, V = tokens.shape[0], logits.shape[1]
    HW = tokens[0].numel()
    tok = tokens.reshape(B, HW)
    l = logits.reshape(B, V, HW).permute(0, 2, 1).float()
    l = l / temperature.reshape(B, HW, 1).to(l)
    probs = l.softmax(dim=-1)
    unknown = tok == mask_id
    drawn = torch.multinomial(probs.reshape(B * HW, V), 1, generator=generator).view(B, HW)
    x0 = torch.where(unknown, drawn, tok)
    logp = probs.gather(-1, x0.clamp(0, V - 1)[..., None])[..., 0].clamp(min=1e-20).log()
    u = torch.empty(B, HW, dtype=torch.float32).uniform_(0, 1, generator=generator)
    g = -(-u.clamp(min=1e-20).log()).clamp(min=1e-20).log()
    conf = torch.where(unknown, logp + torch.as_tensor(gumbel_temp, dtype=torch.float32) * g, torch.inf)
    n = num_masks_after(step, N, HW, unknown.sum(-1), "cosine")
    order = conf.argsort(dim=-1, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(HW).expand(B, HW))
    return torch.where(rank < n[:, None], torch.full_like(x0, mask_id), x0), x0, logp, conf


def test_default_step_is_the_old_step():
    gen = torch.Generator().manual_seed(0)
    B, V, H, W, M = 3, 11, 4, 5, 11
    for step in (0, 2):
        logits, T = torch.randn(B, V, H, W, generator=gen) * 2, torch.rand(B, H * W, generator=gen) + 0.5
        tok = torch.randint(0, V, (B, H * W), generator=gen)
        tok[torch.rand(B, H * W, generator=gen) < 0.7 if step else slice(None)] = M
        new = maskgit_step(logits, tok, step, 5, M, torch.Generator().manual_seed(step), 1.3, temperature=T)
        old = old_maskgit_step(logits, tok, step, 5, M, torch.Generator().manual_seed(step), 1.3, T)
        for a, b in zip((new.tokens, new.x0_hat, new.logp, new.confidence), old):
            assert torch.equal(a, b)


def test_masked_only_step():
    gen = torch.Generator().manual_seed(1)
    B, V, H, W, M = 2, 9, 4, 4, 9
    logits, T = torch.randn(B, V, H, W, generator=gen), torch.rand(B, H * W, generator=gen) + 0.5
    full = torch.full((B, H * W), M)
    run = lambda tok, mo: maskgit_step(logits, tok, 1, 4, M, torch.Generator().manual_seed(2), 1.0, T, masked_only=mo)
    a, b = run(full, False), run(full, True)  # all masked: the same draws, the same stream
    assert all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("tokens", "x0_hat", "logp", "confidence", "n_masks"))
    part = a.tokens  # some known positions: known tokens kept, log p 0 there, the same counts
    a, b = run(part, False), run(part, True)
    known = part != M
    assert torch.equal(b.x0_hat[known], part[known]) and bool((b.logp[known] == 0).all())
    assert torch.equal(a.n_masks, b.n_masks) and bool((b.confidence[known] == torch.inf).all())
    assert bool((b.x0_hat[~known] < V).all())


def test_recorder_masked_entropy_routes_the_same():
    gen = torch.Generator().manual_seed(3)
    B, HW, V, M = 8, 16, 7, 7
    logits = torch.randn(B, HW, V, generator=gen) * 3
    tok = torch.randint(0, V, (B, HW), generator=gen)
    tok[torch.rand(B, HW, generator=gen) < 0.6] = M
    recs = [TrajectoryRecorder(B, 4, (4, 4), V, M, 4, DRConfig(), masked_only=mo) for mo in (False, True)]
    Ts = [r.temperature_fn(logits, tok, 1) for r in recs]
    masked = tok == M
    assert torch.equal(recs[0].entropy, recs[1].entropy) and torch.equal(recs[0].explore, recs[1].explore)
    assert torch.equal(Ts[0][masked], Ts[1][masked])


def test_rewards_in_process_receive_arrays_not_pngs(monkeypatch):
    from PIL import Image

    from maskfocus.rl import reward_server
    from maskfocus.rl.rewards import WeightedReward, make_reward

    def no_png(*a, **k):
        raise AssertionError("an in-process reward encoded an image")

    monkeypatch.setattr(reward_server, "encode_images", no_png)
    monkeypatch.setattr(Image.Image, "save", no_png)
    images = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    prompts, metas = ["a photo of a red circle"] * 4, [{"tag": "single_object", "prompt": "x"}] * 4
    seen = []

    def spy(a, p, m=None):
        seen.append(a)
        return np.zeros(len(a), np.float32), {}

    WeightedReward({"spy": (spy, 1.0)})(images, prompts, metas)
    assert seen[0].dtype == np.uint8 and np.shares_memory(seen[0], images)  # the caller's array itself, no copy
    from maskfocus import geneval

    recs = geneval.read_metadata(ROOT / "data" / "prompts" / "train_metadata.jsonl")[:4]
    judge = make_reward({"judge": 1.0}, monitor=None)
    s1, _ = judge(images, [m["prompt"] for m in recs], recs)
    s2, _ = judge.submit(images, [m["prompt"] for m in recs], recs).result(timeout=60)
    assert s1.dtype == np.float32 and np.array_equal(s1, s2)


def test_remote_submit_equals_call():
    from maskfocus.rl.reward_server import RemoteReward, serve_reward
    from maskfocus.rl.rewards import WeightedReward

    def det(a, p, m=None):
        return a.reshape(len(a), -1).mean(1).astype(np.float32), {"n": len(a)}

    server, url = serve_reward(WeightedReward({"det": (det, 1.0)}))
    try:
        remote = RemoteReward(url, timeout=30)
        images = np.random.default_rng(1).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
        futs = [remote.submit(images[i : i + 1], ["p"]) for i in range(3)]  # answered in order
        got = np.concatenate([f.result(timeout=30)[0] for f in futs])
        assert np.array_equal(got, remote(images, ["p"] * 3)[0])
        assert np.array_equal(got, det(images, None)[0])
    finally:
        server.close()
