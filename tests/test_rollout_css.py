"""Cross-module tests of `maskfocus.rl.rollout` and `maskfocus.rl.css` on a tiny random toy pipeline: shapes and dtypes,
determinism, equivalence with `MaskedPipeline.generate` when Dynamic Routing is off, the exploration fraction
with it on, and every step-selection strategy on a real rollout."""

import math

import pytest
import torch
import torch.nn.functional as F

from maskfocus.core import InputError
from maskfocus.rl.css import (
    STRATEGIES,
    num_eligible,
    select_steps,
    step_similarity,
    train_mask,
    train_mask_count,
    train_timestep,
)
from maskfocus.toy.pipeline import toy_pipeline
from maskfocus.rl.rollout import DRConfig, Trajectory, rollout, route
from maskfocus.models.sampler import mask_schedule

G, N, HW = 4, 8, 64
PROMPTS = ["a photo of a red circle", "two blue squares"]


@pytest.fixture(scope="module")
def pipe():
    return toy_pipeline(dim=32, heads=2, layers=1, single_layers=1, text_dim=32, text_layers=1)


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def traj(pipe):
    return rollout(pipe, PROMPTS, group_size=G, N=N, generator=gen(0))


def test_shapes_and_dtypes(traj):
    B = len(PROMPTS) * G
    assert traj.tokens.shape == (B, HW) and traj.tokens.dtype == torch.int64
    assert traj.x0.shape == (N, B, HW) and traj.x0.dtype == torch.int16
    assert traj.commit_step.shape == (B, HW) and traj.commit_step.dtype == torch.int16
    assert traj.timesteps.tolist() == list(range(N - 1, -1, -1)) and traj.timesteps.dtype == torch.int64
    assert traj.entropy.shape == (N, B) and traj.entropy.dtype == torch.float32
    assert traj.explore.shape == (N, B) and traj.explore.dtype == torch.bool
    assert traj.min_kept_conf.shape == (N, B) and traj.min_kept_conf.dtype == torch.float32
    assert traj.grid == (8, 8) and traj.group_size == G and traj.num_steps == N and traj.batch_size == B
    assert ((traj.tokens >= 0) & (traj.tokens < 73)).all()
    assert torch.isfinite(traj.min_kept_conf).all() and ((traj.min_kept_conf > 0) & (traj.min_kept_conf <= 1)).all()
    assert traj.nbytes() == sum(
        t.nbytes
        for t in (
            traj.tokens,
            traj.x0,
            traj.commit_step,
            traj.timesteps,
            traj.entropy,
            traj.explore,
            traj.min_kept_conf,
        )
    )


def test_commit_order_matches_schedule(traj):
    counts = mask_schedule(N, HW)
    for s in range(N):
        assert (traj.n_masked_after(s) == counts[s]).all()
        frozen = traj.commit_step.long() <= s
        assert torch.equal(traj.x0[s].long()[frozen], traj.tokens[frozen])
    assert torch.equal(traj.x0[-1].long(), traj.tokens)


def test_deterministic_given_generator(pipe, traj):
    again = rollout(pipe, PROMPTS, group_size=G, N=N, generator=gen(0))
    for name in ("tokens", "x0", "commit_step", "entropy", "explore", "min_kept_conf"):
        assert torch.equal(getattr(again, name), getattr(traj, name)), name
    other = rollout(pipe, PROMPTS, group_size=G, N=N, generator=gen(1))
    assert not torch.equal(other.tokens, traj.tokens)


@pytest.mark.parametrize("prompts", [PROMPTS[:1], PROMPTS])
def test_dr_off_equals_generate(pipe, prompts):
    g1, g2 = gen(7), gen(7)
    tr = rollout(pipe, prompts, group_size=G, N=N, generator=g1, dr=DRConfig(enabled=False))
    ref = pipe.generate([p for p in prompts for _ in range(G)], generator=g2, steps=N)
    assert torch.equal(tr.tokens, ref.reshape(len(prompts) * G, HW))
    assert torch.equal(g1.get_state(), g2.get_state()), "same random-number consumption"
    assert not tr.explore.any()


def test_dr_on_changes_the_samples(pipe):
    on = rollout(pipe, PROMPTS, group_size=G, N=N, generator=gen(3))
    off = rollout(pipe, PROMPTS, group_size=G, N=N, generator=gen(3), dr=DRConfig(enabled=False))
    assert on.explore.any() and not torch.equal(on.tokens, off.tokens)
    assert torch.equal(on.explore[0], off.explore[0]) and torch.equal(on.x0[0], off.x0[0]), (
        "step 0: tied entropies, all standard"
    )


@pytest.mark.parametrize("group_size", [2, 3, 4])
def test_explore_fraction(pipe, group_size):
    tr = rollout(pipe, PROMPTS, group_size=group_size, N=N, generator=gen(11))
    n_explore = group_size - max(1, group_size // 2)  # = ceil(G/2) for G >= 2
    Hg = tr.entropy.view(N, len(PROMPTS), group_size)
    ex = tr.explore.view(N, len(PROMPTS), group_size).sum(-1)
    distinct = torch.stack([torch.tensor([len(set(row.tolist())) == group_size for row in step]) for step in Hg])
    assert distinct[1:].all(), "after step 0 the samples of a group differ"
    assert (ex[distinct] == n_explore).all()
    assert (ex[~distinct] <= n_explore).all()
    assert tr.explore[1:].float().mean().item() == pytest.approx(n_explore / group_size)
    for s in range(N):  # the record is consistent with the routing rule applied to the recorded entropies
        assert torch.equal(route(tr.entropy[s], group_size, DRConfig()), tr.explore[s])


def test_apply_to_all_and_lone_sample(pipe):
    tr = rollout(pipe, PROMPTS[:1], group_size=2, N=4, generator=gen(2), dr=DRConfig(apply_to_all=True))
    assert tr.explore.all()
    tr = rollout(pipe, PROMPTS, group_size=1, N=4, generator=gen(2))
    assert not tr.explore.any(), "G = 1: always standard"


def test_record_replays_the_sampled_distribution(pipe, traj):
    """Rebuilding each step's input from the record (final tokens where commit_step < s, masks elsewhere) and calling
    the model as `sample` does reproduces the recorded entropy and min_kept_conf (what a replay estimator relies on)."""
    from maskfocus.rl.rollout import explore_temperature, token_entropy

    B, V, mask_id = traj.batch_size, pipe.transformer.codebook_size, pipe.transformer.mask_token_id
    h, p = pipe.encode_prompts([q for q in PROMPTS for _ in range(G)])
    nh, np_ = pipe.encode_prompts([""])
    th, pooled = torch.cat([nh.expand(B, -1, -1), h]), torch.cat([np_.expand(B, -1), p])
    mc = pipe.micro_conds(1).expand(2 * B, -1)
    cfg = pipe.sampling.cfg
    with torch.no_grad():
        for s in range(N):
            inp = torch.where(traj.masked_before(s), mask_id, traj.tokens).view(B, 8, 8)
            out = pipe.transformer(torch.cat([inp, inp]), th, pooled, traj.timesteps[s].expand(2 * B), mc)
            lu, lc = out.chunk(2)
            l = (lu + cfg * (lc - lu)).reshape(B, V, HW).permute(0, 2, 1)
            Ht = token_entropy(l)
            assert torch.allclose((Ht * traj.masked_before(s)).sum(-1), traj.entropy[s], rtol=1e-5)
            T = torch.where(traj.explore[s][:, None], explore_temperature(Ht), torch.ones_like(Ht))
            probs = (l.float() / T[..., None]).softmax(-1)
            pd = probs.gather(-1, traj.x0[s].long()[..., None])[..., 0]
            want = torch.where(traj.commit_step == s, pd, torch.inf).amin(-1)
            assert torch.allclose(traj.min_kept_conf[s], want, rtol=1e-4), s


def test_bad_inputs(pipe):
    with pytest.raises(InputError):
        rollout(pipe, "a prompt", group_size=2, N=4)
    with pytest.raises(InputError):
        rollout(pipe, PROMPTS, group_size=0, N=4)
    with pytest.raises(InputError):
        DRConfig(alpha=-1)


def test_similarity_on_rollout_is_the_direct_cosine(pipe, traj):
    S = step_similarity(traj, pipe.tokenizer)
    cb = pipe.tokenizer.codebook
    ef = cb[traj.tokens].flatten(1)
    direct = torch.stack([F.cosine_similarity(cb[traj.x0[s].long()].flatten(1), ef, dim=1) for s in range(N)])
    assert torch.allclose(S, direct, atol=1e-6) and torch.allclose(S[-1], torch.ones(traj.batch_size))


ALL = [s for s in STRATEGIES] + ["random_early(0.5)", "early_window(0.5)"]


@pytest.mark.parametrize("strategy", ALL)
@pytest.mark.parametrize("per", ["group", "sample"])
@pytest.mark.parametrize("alignment", ["paper_code", "consistent"])
def test_css_every_strategy(pipe, traj, strategy, per, alignment):
    E = num_eligible(N, alignment)
    K = 2
    sel = select_steps(traj, pipe.tokenizer, K, strategy, per=per, generator=gen(5), alignment=alignment)
    B = traj.batch_size
    st = sel.steps
    width = E if strategy == "all" else K
    assert st.shape == (B, width) and st.dtype == torch.int64
    hi = {
        "random_early": math.ceil(0.4 * N),
        "early_window": math.ceil(0.2 * N),
        "random_early(0.5)": N // 2,
        "early_window(0.5)": N // 2,
    }.get(strategy, E)
    assert (st >= 0).all() and (st < min(hi, E)).all()
    assert (st[:, 1:] > st[:, :-1]).all(), "distinct and sorted ascending"
    if per == "group" or strategy in ("uniform", "all", "early_window", "early_window(0.5)"):
        assert (st.view(len(PROMPTS), G, -1) == st.view(len(PROMPTS), G, -1)[:, :1]).all()
    if strategy == "critical":
        assert sel.S.shape == (N, B) and sel.V.shape == (E, B)
        for b in range(B):  # the chosen steps carry the K largest gains of their row
            assert sel.V[st[b], b].min() >= sel.V[:, b].topk(K).values.min() - 1e-7
    else:
        assert sel.S is None and sel.V is None
    # the alignment helpers map every chosen step to a valid training input
    cnt, ts = train_mask_count(traj, st, alignment), train_timestep(traj, st, alignment)
    assert cnt.shape == ts.shape == st.shape
    assert ((cnt >= 1) & (cnt < HW)).all() and ((ts >= 0) & (ts <= N - 1)).all()
    shift = 0 if alignment == "paper_code" else 1
    assert torch.equal(ts, N - 1 - st - shift)
    assert torch.equal(train_mask(traj, st[:, 0], alignment).sum(-1), cnt[:, 0])


def test_trajectory_to_keeps_everything(traj):
    moved = traj.to("cpu")
    assert isinstance(moved, Trajectory) and torch.equal(moved.x0, traj.x0) and moved.grid == traj.grid
