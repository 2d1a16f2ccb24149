"""Cross-module tests of `maskfocus.rl.logprob` and `maskfocus.rl.grpo` on a tiny random toy pipeline: every estimator's
plan + conditional forward pass on a real trajectory, the step alignment against `maskfocus.rl.css`, trajectory replay
reproducing the rollout's own confidences, and one AdamW step on the GRPO loss that moves every transformer weight."""

import copy
import math
from types import SimpleNamespace

import pytest
import torch

from maskfocus.rl.grpo import group_advantages, grpo_loss, k3_kl
from maskfocus.rl.logprob import (
    ESTIMATORS,
    RemaskRandom,
    RemaskSchedule,
    StepBatch,
    TrajectoryMask,
    TrajectoryReplay,
    aligned_counts_timesteps,
    make_estimator,
    step_logps,
)
from maskfocus.toy.pipeline import toy_pipeline

try:  # written by another worker; the hand-made trajectory below stands in when it is absent
    from maskfocus.rl.rollout import DRConfig, record_trajectory, rollout
except ImportError:  # pragma: no cover
    rollout = record_trajectory = DRConfig = None

G, N = 4, 8
PROMPTS = ["a photo of a red circle", "two blue squares"]


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def pipe():
    return toy_pipeline(dim=32, heads=2, layers=1, single_layers=1, text_dim=32, text_layers=1)


def hand_trajectory(B, N, grid, V, seed=0):
    "A Trajectory-like record: random final tokens and a random commit order with HW/N commits per step."
    g = gen(seed)
    HW = grid[0] * grid[1]
    cs = torch.rand(B, HW, generator=g).argsort(1).argsort(1) * N // HW
    return SimpleNamespace(
        tokens=torch.randint(0, V, (B, HW), generator=g),
        commit_step=cs.short(),
        timesteps=torch.arange(N).flip(0),
        min_kept_conf=torch.rand(N, B, generator=g) * 0.05 + 0.005,
        grid=tuple(grid),
        group_size=G,
        x0=None,
    )


@pytest.fixture(scope="module")
def traj(pipe):
    if rollout is None:
        return hand_trajectory(len(PROMPTS) * G, N, pipe.grid, pipe.transformer.codebook_size)
    return rollout(pipe, PROMPTS, group_size=G, N=N, generator=gen(0))


@pytest.fixture(scope="module")
def cond(pipe):
    with torch.no_grad():
        h, p = pipe.encode_prompts([q for q in PROMPTS for _ in range(G)])
    return h, p, pipe.micro_conds(1)


def selection(B):
    "Hand-made per-group selection (the paper-code eligible range 0..N-3)."
    return SimpleNamespace(steps=torch.tensor([[0, 2, 4]] * G + [[1, 3, 5]] * G), S=None, V=None)


def test_alignment_matches_css(traj):
    css = pytest.importorskip("maskfocus.rl.css")
    st = selection(traj.tokens.shape[0]).steps
    for al in ("paper_code", "consistent"):
        c, t = aligned_counts_timesteps(traj, st, al)
        assert torch.equal(c, css.train_mask_count(traj, st, al)) and torch.equal(t, css.train_timestep(traj, st, al))


@pytest.mark.parametrize(
    "name,knobs",
    [
        ("remask_random", {}),
        ("remask_random", {"shared_positions": False}),
        ("remask_random", {"alignment": "consistent"}),
        ("trajectory_mask", {}),
        ("remask_schedule", {"mu": 3, "min_mask_rate": 0.5}),
        ("trajectory_replay", {}),
        ("trajectory_replay", {"candidate": 2}),
    ],
)
def test_estimator_on_toy(pipe, traj, cond, name, knobs):
    m = pipe.transformer
    est = make_estimator(name, mask_id=m.mask_token_id, **knobs)
    B, HW = traj.tokens.shape
    sel = selection(B)
    plan = est.plan(traj, sel, gen(1), inner=0)
    expect = {"remask_schedule": 1}.get(name, sel.steps.shape[1])
    assert len(plan) == expect and all(isinstance(pb, StepBatch) for pb in plan)
    cs = traj.commit_step.long()
    for k, pb in enumerate(plan):
        assert pb.inputs.shape == (B, *traj.grid) and pb.inputs.dtype == torch.long
        masked = pb.inputs.reshape(B, HW) == m.mask_token_id
        assert torch.equal(pb.inputs.reshape(B, HW)[~masked], traj.tokens[~masked]), (
            "visible positions hold the final tokens"
        )
        if name != "remask_schedule":
            s = sel.steps[:, k : k + 1]
            after = cs > s
            if name == "trajectory_mask":
                assert torch.equal(pb.score_mask, after) and torch.equal(masked, after)
            if name == "remask_random":
                assert torch.equal(masked, pb.score_mask)
                n = after.sum(-1)
                assert (pb.n_tokens == (n[0] if est.shared_positions else n)).all()
                if est.shared_positions:
                    assert (pb.score_mask == pb.score_mask[:1]).all()
                assert torch.equal(pb.timestep, traj.timesteps[s[:, 0] + (est.alignment == "consistent")])
            if name == "trajectory_replay":
                assert torch.equal(masked, cs >= s) and torch.equal(pb.timestep, traj.timesteps[s[:, 0]])
                assert torch.equal(pb.score_mask, (cs >= s) if est.candidate == 1 else (cs == s))
        lp = step_logps(m, pb, *cond, est)
        assert lp.shape == (B, HW) and lp.dtype == torch.float32
        assert torch.isfinite(lp[pb.score_mask]).all() and (lp[pb.score_mask] <= 1e-6).all()
        assert pb.score_mask.any()


def test_remask_schedule_seed_gives_identical_passes(pipe, traj, cond):
    "Old, reference and current passes of an inner iteration see the same mask when they share the stored seed."
    m = pipe.transformer
    est = RemaskSchedule(m.mask_token_id, mu=4, min_mask_rate=0.6)
    for j in range(4):
        a = est.plan(traj, None, gen(j), inner=j)[0]
        b = est.plan(traj, None, gen(100 + j), inner=j, seed=a.extra["seed"])[0]
        assert (
            torch.equal(a.inputs, b.inputs)
            and torch.equal(a.score_mask, b.score_mask)
            and torch.equal(a.timestep, b.timestep)
        )
        with torch.no_grad():
            assert torch.equal(step_logps(m, a, *cond, est), step_logps(m, b, *cond, est))
        assert abs(a.score_mask.float().mean().item() - est.ratio(j)) < 0.15


@pytest.mark.skipif(record_trajectory is None, reason="maskfocus.rl.rollout not available")
def test_replay_reproduces_rollout_confidence(pipe, cond):
    """Without guidance, Dynamic Routing and Gumbel noise, the replay's conditional pass is the sampling distribution:
    the smallest replayed p(newly unmasked token) at each step is the stored min_kept_conf, and every re-masked
    position's drawn token lies below it, so candidate 1's mass is at least its probability."""
    m, (h, p, mc) = pipe.transformer, cond
    tr = record_trajectory(
        m,
        h,
        p,
        None,
        None,
        mc,
        N=N,
        cfg=None,
        generator=gen(5),
        grid=pipe.grid,
        group_size=G,
        dr=DRConfig(enabled=False),
        tau=(0.0, 0.0),
    )
    B, HW = tr.tokens.shape
    c1, c2 = TrajectoryReplay(m.mask_token_id), TrajectoryReplay(m.mask_token_id, candidate=2)
    with torch.no_grad():
        for s, (b1, b2) in enumerate(zip(c1.plan(tr, None), c2.plan(tr, None))):
            lp2, logits = step_logps(m, b2, h, p, mc, c2, return_logits=True)
            mins = torch.where(b2.score_mask, lp2.exp(), torch.inf).amin(-1)
            assert torch.allclose(mins, tr.min_kept_conf[s], rtol=1e-5), s
            lp1 = step_logps(m, b1, h, p, mc, c1)
            rem = b1.extra["remasked"]
            assert torch.equal(lp1[b1.extra["newly"]], lp2[b1.extra["newly"]])
            if rem.any():
                drawn = (
                    logits.float()
                    .reshape(B, logits.shape[1], HW)
                    .log_softmax(1)
                    .gather(1, tr.x0[s].long()[:, None])[:, 0]
                )
                assert (lp1[rem] >= drawn[rem] - 1e-5).all() and (lp1[rem] <= 0).all()


def test_estimators_registered():
    assert set(ESTIMATORS) == {"remask_random", "remask_schedule", "trajectory_replay", "trajectory_mask"}


def test_one_adamw_step_moves_every_parameter(pipe, traj, cond):
    """GRPO on RemaskRandom steps with non-zero advantages: every transformer parameter gets a non-zero gradient and
    changes under one AdamW step (weight decay 0, so only the gradient can move it); afterwards the k3 KL against a
    frozen copy is > 0 and the ratio to the rollout policy is no longer 1. Per-step backward = summed loss."""
    ref = pipe.transformer
    model = copy.deepcopy(ref).train()
    est = RemaskRandom(model.mask_token_id)
    plan = est.plan(traj, selection(traj.tokens.shape[0]), gen(2))
    adv, info = group_advantages(torch.tensor([1.0, 0, 0, 1, 0, 1, 1, 0]), G)
    assert (adv != 0).all() and info["zero_std_frac"] == 0
    with torch.no_grad():
        old = [step_logps(model, pb, *cond, est) for pb in plan]
        refl = [step_logps(ref, pb, *cond, est) for pb in plan]
    before = {n: q.detach().clone() for n, q in model.named_parameters()}
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-3, weight_decay=0.0)
    for pb, lo, lr in zip(plan, old, refl):  # each selected step back-propagated separately
        lp = step_logps(model, pb, *cond, est)
        loss, st = grpo_loss(lp, lo, adv, pb.score_mask, lr, beta=0.01, clip=None)
        assert st["ratio_mean"] == 1.0 and st["kl"] == 0.0  # on-policy, policy = reference before the update
        loss.backward()
    grads = {n: q.grad.clone() for n, q in model.named_parameters()}
    no_grad = [
        n for n, q in model.named_parameters() if q.requires_grad and (q.grad is None or not q.grad.abs().sum() > 0)
    ]
    assert not no_grad, f"parameters without gradient: {no_grad}"
    # the same gradients from one summed loss
    model.zero_grad()
    sum(
        grpo_loss(step_logps(model, pb, *cond, est), lo, adv, pb.score_mask, lr, clip=None)[0]
        for pb, lo, lr in zip(plan, old, refl)
    ).backward()
    for n, q in model.named_parameters():
        assert torch.allclose(q.grad, grads[n], rtol=1e-4, atol=1e-7), n
    model.zero_grad()
    for n, q in model.named_parameters():
        q.grad = grads[n]
    opt.step()
    unchanged = [n for n, q in model.named_parameters() if q.requires_grad and torch.equal(q.detach(), before[n])]
    assert not unchanged, f"parameters not moved by the update: {unchanged}"
    with torch.no_grad():
        for pb, lo, lr in zip(plan, old, refl):
            lp = step_logps(model, pb, *cond, est)
            _, st = grpo_loss(lp, lo, adv, pb.score_mask, lr, clip=None)
            kl = k3_kl(lp, lr)[pb.score_mask]
            assert st["kl"] > 0 and (kl >= 0).all() and kl.mean() > 0
            assert abs(st["ratio_mean"] - 1.0) > 1e-6 or st["ratio_max"] > 1.0 + 1e-6
