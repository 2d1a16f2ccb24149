"""Tests of `maskfocus.models.sampler` beyond the notebook's examples: the diffusers `AmusedScheduler` oracle over a
parameter grid, end-to-end agreement with `AmusedPipeline`, the classifier-free-guidance arithmetic and call
pattern, determinism, the tie rule, and error messages that name the argument."""

import pytest
import torch

from maskfocus.core import InputError
from maskfocus.models.sampler import (
    StepOut,
    gumbel_temperatures,
    mask_schedule,
    maskgit_step,
    num_masks_after,
    sample,
    timesteps,
)

diffusers = pytest.importorskip("diffusers")
from diffusers import AmusedScheduler  # noqa: E402


# ---------------------------------------------------------------- the AmusedScheduler oracle


def run_oracle(B, V, H, W, N, seed, ties="exact", schedule="cosine", layout="bvhw", scale=4.0):
    "Run our step and diffusers' step side by side on the same random logits; return per-step equality."
    sched = AmusedScheduler(mask_token_id=V, masking_schedule=schedule)
    sched.set_timesteps(N, temperature=(2, 0))
    g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    lg = torch.Generator().manual_seed(1_000_003 + seed)
    ours = torch.full((B, H, W) if layout == "bvhw" else (B, H * W), V)
    theirs = torch.full((B, H, W) if layout == "bvhw" else (B, H * W), V)
    taus, same, expected = gumbel_temperatures(N), [], mask_schedule(N, H * W, schedule)
    for s, t in enumerate(sched.timesteps):
        logits = torch.randn(B, V, H, W, generator=lg) * scale
        if layout == "bhwv":
            logits = logits.reshape(B, V, H * W).permute(0, 2, 1).contiguous()
        out = maskgit_step(logits, ours, s, N, V, g1, taus[s], ties=ties, schedule=schedule)
        theirs = sched.step(logits, t, theirs, generator=g2).prev_sample
        ours = out.tokens
        assert ours.shape == theirs.shape
        same.append(torch.equal(ours, theirs))
        assert ((ours == V).sum(-1 if layout == "bhwv" else (1, 2)) == expected[s]).all()
    assert torch.equal(g1.get_state(), g2.get_state()), "both must consume the same random numbers"
    assert (ours != V).all() and (theirs != V).all(), "the last step unmasks everything"
    return same


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("H,W", [(4, 4), (8, 8), (5, 7), (16, 16)])
@pytest.mark.parametrize("N", [1, 2, 7, 16])
@pytest.mark.parametrize("seed", [0, 1])
def test_oracle_grid(B, H, W, N, seed):
    V = 9 + 8 * seed + H  # a few different codebook sizes
    assert all(run_oracle(B, V, H, W, N, seed))


@pytest.mark.parametrize("ties", ["exact", "threshold"])
@pytest.mark.parametrize("schedule", ["cosine", "linear"])
@pytest.mark.parametrize("layout", ["bvhw", "bhwv"])
def test_oracle_knobs(ties, schedule, layout):
    assert all(run_oracle(2, 33, 6, 6, 12, seed=5, ties=ties, schedule=schedule, layout=layout))


@pytest.mark.parametrize("N,HW", [(10, 4), (64, 16), (48, 64)])
def test_oracle_more_steps_than_the_cosine_allows(N, HW):
    # the clamps (at least one commit per step, one mask kept until the end) dominate
    assert all(run_oracle(2, 12, 1, HW, N, seed=N))


@pytest.mark.slow
def test_oracle_paper_shapes():
    # Meissonic's 64 steps on a 32x32 map (1024 tokens), near-flat and peaked logits
    assert all(run_oracle(2, 256, 32, 32, 64, seed=11, scale=0.5))
    assert all(run_oracle(1, 1024, 16, 16, 64, seed=12, scale=8.0))


def test_oracle_with_cpu_generator_on_other_device():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    B, V, H, W, N = 2, 64, 8, 8, 8
    g1, g2, lg = (torch.Generator().manual_seed(0), torch.Generator().manual_seed(0), torch.Generator().manual_seed(1))
    a, b, taus = torch.full((B, H, W), V).cuda(), torch.full((B, H, W), V), gumbel_temperatures(N)
    for s in range(N):
        logits = torch.randn(B, V, H, W, generator=lg)
        a = maskgit_step(logits.cuda(), a, s, N, V, g1, taus[s]).tokens
        b = maskgit_step(logits, b, s, N, V, g2, taus[s]).tokens
        assert a.is_cuda and torch.equal(a.cpu(), b)


# ---------------------------------------------------------------- step behaviour


def test_known_positions_never_remasked_even_with_hot_gumbel():
    # with tau0 = 50 diffusers' log(finfo.max) bound for known positions would be beaten; +inf is not
    B, V, H, W, N = 4, 6, 6, 6, 12
    g, lg = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    tok, taus, seen = torch.full((B, H, W), V), gumbel_temperatures(N, (50.0, 0.0)), []
    for s in range(N):
        tok = maskgit_step(torch.randn(B, V, H, W, generator=lg) * 5, tok, s, N, V, g, taus[s]).tokens
        seen.append(tok)
    for s, t in enumerate(seen):
        known = t != V
        for later in seen[s:]:
            assert torch.equal(later[known], t[known])


def test_ties_exact_vs_threshold():
    # flat logits and no Gumbel noise: every confidence ties
    B, V, HW, N = 2, 4, 16, 4
    logits, tok = torch.zeros(B, HW, V), torch.full((B, HW), V)
    ex = maskgit_step(logits, tok, 0, N, V, torch.Generator().manual_seed(0), 0.0, ties="exact")
    th = maskgit_step(logits, tok, 0, N, V, torch.Generator().manual_seed(0), 0.0, ties="threshold")
    assert ((ex.tokens == V).sum(-1) == 14).all() and ex.n_masks.tolist() == [14, 14]
    assert (ex.tokens[:, :14] == V).all(), "stable sort: ties re-mask the lowest positions first"
    assert ((th.tokens == V).sum(-1) == 0).all(), "diffusers' strict cut-off re-masks nothing on a full tie"
    sched = AmusedScheduler(mask_token_id=V)
    sched.set_timesteps(N, temperature=(0, 0))
    ref = sched.step(logits, sched.timesteps[0], tok, generator=torch.Generator().manual_seed(0)).prev_sample
    assert torch.equal(ref, th.tokens)


def test_partially_known_input_and_counts():
    B, V, HW, N = 3, 5, 10, 4
    tok = torch.full((B, HW), V)
    tok[1, :7] = 2
    tok[2] = 3  # sample 1: 3 masks, sample 2: none
    out = maskgit_step(torch.randn(B, HW, V), tok, 0, N, V, torch.Generator().manual_seed(0), 2.0)
    assert out.n_masks.tolist() == [9, 2, 0]
    assert torch.equal(out.tokens[1, :7], tok[1, :7]) and torch.equal(out.tokens[2], tok[2])
    assert torch.isinf(out.confidence[2]).all() and torch.isinf(out.confidence[1, :7]).all()
    assert num_masks_after(1, 4, 10, torch.tensor([10, 1])).tolist() == [7, 1]
    assert num_masks_after(3, 4, 10, torch.tensor([10, 1])).tolist() == [0, 0]


def test_stepout_fields_last_step():
    B, V, H, W = 2, 7, 3, 3
    tok = torch.full((B, H, W), V)
    tok[0, 0, 0] = 1
    out = maskgit_step(torch.randn(B, V, H, W), tok, 2, 3, V, torch.Generator().manual_seed(0), 0.0)
    assert isinstance(out, StepOut) and (out.tokens != V).all() and torch.equal(out.tokens, out.x0_hat)
    assert out.tokens[0, 0, 0] == 1 and out.n_masks.tolist() == [0, 0]
    assert out.logp.shape == (B, H, W) and (out.logp <= 0).all() and out.confidence[0, 0, 0] == float("inf")


def test_temperature_hook():
    B, V, H, W = 2, 9, 4, 4
    logits, tok = torch.randn(B, V, H, W) * 3, torch.full((B, H, W), V)
    step = lambda T, l=logits: maskgit_step(l, tok, 0, 4, V, torch.Generator().manual_seed(3), 2.0, temperature=T)
    assert torch.equal(step(None).tokens, step(torch.ones(B, H * W)).tokens)
    assert torch.equal(step(torch.full((B, H, W), 0.5)).tokens, step(None, logits * 2).tokens)
    # per-sample temperatures: sample 0 at 1.0 equals the untempered run of sample 0
    T = torch.ones(B, H * W)
    T[1] = 3.0
    a, b = step(T), step(None)
    assert torch.equal(a.tokens[0], b.tokens[0]) and torch.equal(a.logp[0], b.logp[0])


# ---------------------------------------------------------------- the loop: guidance, determinism


class DyadicModel(torch.nn.Module):
    "Logits that are small multiples of 1/8, so the guidance arithmetic is exact; records every call."

    def __init__(self, V=10, H=4, W=4, P=3, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.codebook_size, self.mask_token_id, self.calls = V, V, []
        self.base = torch.randint(-8, 9, (V, H, W), generator=g).float() / 8
        self.proj = torch.randint(-2, 3, (P, V), generator=g).float() / 8

    def logits(self, pooled, timestep):
        return self.base[None] + (pooled @ self.proj)[:, :, None, None] + timestep.float()[:, None, None, None] / 8

    def forward(self, tokens, text_hidden, pooled, timestep, micro_conds):
        self.calls.append(
            dict(tokens=tokens.clone(), pooled=pooled.clone(), timestep=timestep.clone(), micro=micro_conds.clone())
        )
        return self.logits(pooled, timestep)


def conds(B=3, P=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return dict(
        text_hidden=torch.zeros(B, 2, 4),
        pooled=torch.randint(-2, 3, (B, P), generator=g).float(),
        neg_text_hidden=torch.ones(1, 2, 4),
        neg_pooled=torch.zeros(1, P),
        micro_conds=torch.tensor([[64.0, 64, 0, 0, 6]]),
    )


def manual_loop(model, c, N, w, seed, H=4, W=4):
    "Reference loop: guidance done by hand from the model's exact logits."
    B, V = c["pooled"].shape[0], model.codebook_size
    g, tok, taus = torch.Generator().manual_seed(seed), torch.full((B, H, W), V), gumbel_temperatures(N)
    for s, t in enumerate(timesteps(N)):
        tt = t.expand(B)
        l_c = model.logits(c["pooled"], tt)
        l = (
            l_c
            if w is None
            else model.logits(c["neg_pooled"].expand(B, -1), tt)
            + w * (l_c - model.logits(c["neg_pooled"].expand(B, -1), tt))
        )
        tok = maskgit_step(l, tok, s, N, V, g, taus[s]).tokens
    return tok


@pytest.mark.parametrize("w", [3.0, 0.5, -1.0])
def test_cfg_math_and_single_call_per_step(w):
    m, c, N, B = DyadicModel(), conds(), 6, 3
    out = sample(m, **c, N=N, cfg=w, generator=torch.Generator().manual_seed(0), grid=(4, 4))
    assert torch.equal(out, manual_loop(m, c, N, w, seed=0))
    assert len(m.calls) == N, "one model call per step"
    for s, call in enumerate(m.calls):
        assert call["tokens"].shape == (2 * B, 4, 4) and torch.equal(call["tokens"][:B], call["tokens"][B:])
        assert torch.equal(call["pooled"][:B], c["neg_pooled"].expand(B, -1)), "negatives first"
        assert torch.equal(call["pooled"][B:], c["pooled"])
        assert call["timestep"].tolist() == [N - 1 - s] * (2 * B) and call["timestep"].dtype == torch.long
        assert call["micro"].shape == (2 * B, 5)


@pytest.mark.parametrize("cfg", [1.0, 1, None, 0])
def test_cfg_one_is_conditional_only(cfg):
    m, c, N, B = DyadicModel(), conds(), 5, 3
    out = sample(m, **c, N=N, cfg=cfg, generator=torch.Generator().manual_seed(2), grid=(4, 4))
    assert [k["tokens"].shape[0] for k in m.calls] == [B] * N
    assert torch.equal(out, manual_loop(m, c, N, None, seed=2))
    assert torch.equal(out, manual_loop(m, c, N, 1.0, seed=2)), "w = 1 guidance equals the conditional pass"


def test_no_negative_needed_without_guidance():
    m, c = DyadicModel(), conds()
    c.update(neg_text_hidden=None, neg_pooled=None)
    assert sample(m, **c, N=3, cfg=1.0, generator=None, grid=(4, 4)).shape == (3, 4, 4)


def test_determinism():
    m, c = DyadicModel(), conds()
    run = lambda seed, **kw: sample(
        m, **c, N=8, cfg=2.0, generator=torch.Generator().manual_seed(seed), grid=(4, 4), **kw
    )
    a, b, d = run(0), run(0), run(1)
    assert torch.equal(a, b) and not torch.equal(a, d)
    torch.manual_seed(5)
    e = sample(m, **c, N=8, cfg=2.0, generator=None, grid=(4, 4))
    torch.manual_seed(5)
    f = sample(m, **c, N=8, cfg=2.0, generator=None, grid=(4, 4))
    assert torch.equal(e, f)
    # hooks that do nothing change nothing
    seen = []
    g = run(0, temperature_fn=lambda l, t, s: None, on_step=lambda s, o: seen.append(int(o.n_masks[0])))
    assert torch.equal(a, g) and seen == mask_schedule(8, 16)


def test_temperature_fn_sees_guided_logits():
    m, c, B, V = DyadicModel(), conds(), 3, 10
    got = []

    def fn(logits, tokens, step):
        got.append((logits.clone(), tokens.clone(), step))
        return torch.ones(B, 16)

    a = sample(m, **c, N=3, cfg=2.0, generator=torch.Generator().manual_seed(0), grid=(4, 4), temperature_fn=fn)
    b = sample(m, **c, N=3, cfg=2.0, generator=torch.Generator().manual_seed(0), grid=(4, 4))
    assert torch.equal(a, b) and [s for *_, s in got] == [0, 1, 2]
    l0, t0, _ = got[0]
    t = torch.full((B,), 2)
    l_u, l_c = m.logits(c["neg_pooled"].expand(B, -1), t), m.logits(c["pooled"], t)
    assert l0.shape == (B, 16, V) and torch.equal(l0, (l_u + 2.0 * (l_c - l_u)).reshape(B, V, 16).permute(0, 2, 1))
    assert (t0 == V).all()


def test_return_x0_dtype():
    m, c = DyadicModel(), conds()
    tok, x0 = sample(m, **c, N=4, cfg=3.0, generator=None, grid=(4, 4), return_x0=True)
    assert x0.dtype == torch.int16 and x0.shape == (4, 3, 4, 4) and torch.equal(x0[-1].long(), tok)
    big = DyadicModel(V=40000, H=2, W=2)
    tok, x0 = sample(big, **conds(), N=2, cfg=None, generator=None, grid=(2, 2), return_x0=True)
    assert x0.dtype == torch.int32 and (tok < 40000).all()


# ---------------------------------------------------------------- end to end against AmusedPipeline


@pytest.mark.parametrize("N,cfg,B,seed", [(12, 3.0, 4, 0), (5, 1.0, 2, 1), (16, 9.0, 3, 2)])
def test_matches_amused_pipeline(N, cfg, B, seed):
    from diffusers import AmusedPipeline, UVit2DModel
    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()
    torch.manual_seed(seed)
    uvit = UVit2DModel(
        hidden_size=32,
        cond_embed_dim=32,
        micro_cond_encode_dim=16,
        micro_cond_embed_dim=80,
        encoder_hidden_size=32,
        vocab_size=74,
        codebook_size=73,
        in_channels=32,
        block_out_channels=32,
        num_res_blocks=1,
        block_num_heads=2,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        sample_size=8,
    ).eval()

    class Adapter(torch.nn.Module):
        codebook_size, mask_token_id = 73, 73

        def __init__(self):
            super().__init__()
            self.uvit = uvit

        def forward(self, tokens, text_hidden, pooled, timestep, micro_conds):
            return self.uvit(tokens, micro_conds=micro_conds, pooled_text_emb=pooled, encoder_hidden_states=text_hidden)

    pipe = AmusedPipeline(
        vqvae=None, tokenizer=None, text_encoder=None, transformer=uvit, scheduler=AmusedScheduler(mask_token_id=73)
    )
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(100 + seed)
    pe, eh, npe, neh = (
        torch.randn(B, 32, generator=g),
        torch.randn(B, 6, 32, generator=g),
        torch.randn(B, 32, generator=g),
        torch.randn(B, 6, 32, generator=g),
    )
    theirs = pipe(
        prompt_embeds=pe,
        encoder_hidden_states=eh,
        negative_prompt_embeds=npe,
        negative_encoder_hidden_states=neh,
        height=64,
        width=64,
        num_inference_steps=N,
        guidance_scale=cfg,
        output_type="latent",
        generator=torch.Generator().manual_seed(seed),
    ).images
    ours = sample(
        Adapter(),
        eh,
        pe,
        neh,
        npe,
        torch.tensor([[64.0, 64, 0, 0, 6]]),
        N=N,
        cfg=cfg,
        generator=torch.Generator().manual_seed(seed),
        grid=(8, 8),
    )
    assert torch.equal(ours, theirs)


# ---------------------------------------------------------------- errors name the argument


def field_of(fn):
    with pytest.raises(InputError) as info:
        fn()
    return info.value.field


def test_step_errors():
    V, tok = 5, torch.full((2, 4, 4), 5)
    ok = dict(step=0, N=4, mask_id=V, generator=None, gumbel_temp=1.0)
    assert field_of(lambda: maskgit_step(torch.randn(2, V, 4, 4), tok.float(), **ok)) == "tokens"
    assert field_of(lambda: maskgit_step(torch.randn(2, V, 4, 4), tok[0, 0], **ok)) == "tokens"
    assert field_of(lambda: maskgit_step(torch.randn(3, V, 4, 4), tok, **ok)) == "logits"
    assert field_of(lambda: maskgit_step(torch.randn(2, V, 4, 5), tok, **ok)) == "logits"
    assert field_of(lambda: maskgit_step(torch.randn(2, V, 2, 8), tok, **ok)) == "logits"  # same HW, other grid
    assert field_of(lambda: maskgit_step(torch.randn(2, 15, V), tok, **ok)) == "logits"
    assert field_of(lambda: maskgit_step(torch.randint(0, 3, (2, V, 4, 4)), tok, **ok)) == "logits"
    assert (
        field_of(lambda: maskgit_step(torch.randn(2, V, 4, 4), tok, temperature=torch.ones(2, 15), **ok))
        == "temperature"
    )
    assert field_of(lambda: maskgit_step(torch.randn(2, V, 4, 4), tok, **{**ok, "step": 4})) == "step"
    assert field_of(lambda: maskgit_step(torch.randn(2, V, 4, 4), tok, ties="first", **ok)) == "ties"
    assert field_of(lambda: maskgit_step(torch.randn(2, V, 4, 4), tok, schedule="square", **ok)) == "schedule"
    assert (
        field_of(lambda: maskgit_step(torch.randn(2, V, 4, 4), tok, schedule="square", **{**ok, "step": 3}))
        == "schedule"
    )
    # [B,HW] tokens with [B,V,H,W] logits are fine
    assert maskgit_step(torch.randn(2, V, 4, 4), tok.reshape(2, 16), **ok).tokens.shape == (2, 16)


def test_sample_errors():
    m, c = DyadicModel(), conds()
    kw = dict(N=3, cfg=3.0, generator=None, grid=(4, 4))
    bad = lambda **over: lambda: sample(m, **{**c, **over}, **{k: v for k, v in kw.items() if k not in over})
    assert field_of(bad(text_hidden=torch.zeros(3, 4))) == "text_hidden"
    assert field_of(bad(pooled=torch.zeros(2, 3))) == "pooled"
    assert field_of(bad(micro_conds=torch.zeros(2, 5))) == "micro_conds"
    assert field_of(bad(micro_conds=torch.zeros(5))) == "micro_conds"
    assert field_of(bad(neg_text_hidden=None)) == "neg_text_hidden"
    assert field_of(bad(neg_pooled=None)) == "neg_pooled"
    assert field_of(bad(neg_text_hidden=torch.zeros(2, 2, 4))) == "neg_text_hidden"
    assert field_of(bad(neg_text_hidden=torch.zeros(1, 3, 4))) == "neg_text_hidden"
    assert field_of(bad(neg_pooled=torch.zeros(1, 4))) == "neg_pooled"
    assert field_of(bad(N=0)) == "N"
    assert field_of(bad(N=2.0)) == "N"
    assert field_of(bad(grid=(4,))) == "grid"
    assert field_of(bad(grid=(4, 5))) == "model"  # the model returns 4x4 logits
    assert field_of(lambda: sample(object(), **c, **kw)) == "model"


# ---------------------------------------------------------------- masked_only with the packed head


def test_packed_step_equals_the_masked_only_step():
    "maskgit_step on packed [M,V] rows = the masked_only step on [B,V,H,W] (same values, same draws)."
    B, V, H, W = 3, 7, 4, 5
    g = torch.Generator().manual_seed(4)
    for s in (0, 2, 5):
        tok = torch.randint(0, V, (B, H, W), generator=g)
        tok[torch.rand(B, H, W, generator=g) < 0.6] = V
        tok[:, 0, 0] = V  # at least one mask per map
        logits = torch.randn(B, V, H, W, generator=g) * 3
        T = 0.5 + torch.rand(B, H * W, generator=g)
        packed = logits.permute(0, 2, 3, 1)[tok == V]
        for temp in (None, T):
            run = lambda lg: maskgit_step(
                lg, tok, s, 6, V, torch.Generator().manual_seed(s), 1.5, temp, masked_only=True
            )
            a, b = run(logits), run(packed)
            for f in ("tokens", "x0_hat", "logp", "confidence", "n_masks"):
                assert torch.equal(getattr(a, f), getattr(b, f)), f


def test_packed_step_errors():
    V, tok = 5, torch.full((2, 4, 4), 5)
    tok[0, 0, 0] = 1  # 31 masks
    ok = dict(step=0, N=4, mask_id=V, generator=None, gumbel_temp=1.0)
    assert field_of(lambda: maskgit_step(torch.randn(31, V), tok, **ok)) == "logits", "packed needs masked_only"
    assert field_of(lambda: maskgit_step(torch.randn(32, V), tok, masked_only=True, **ok)) == "logits"
    assert maskgit_step(torch.randn(31, V), tok, masked_only=True, **ok).tokens.shape == (2, 4, 4)


class FullHead(torch.nn.Module):
    "The same model without `supports_positions`: the sampler runs its head everywhere (the unpacked path)."

    def __init__(self, model):
        super().__init__()
        self.model, self.codebook_size, self.mask_token_id = model, model.codebook_size, model.mask_token_id

    def forward(self, *args):
        return self.model(*args)


class Spy(torch.nn.Module):
    "A packed-head model that records the positions it is asked for."

    supports_positions = True

    def __init__(self, model):
        super().__init__()
        self.model, self.codebook_size, self.mask_token_id = model, model.codebook_size, model.mask_token_id
        self.asked = []

    def forward(self, *args, positions=None):
        self.asked.append(None if positions is None else positions.clone())
        return self.model(*args, positions=positions)


def tiny_meissonic(seed, B=3):
    from maskfocus.models.meissonic_config import MeissonicConfig
    from maskfocus.models.transformer import MeissonicTransformer

    torch.manual_seed(seed)
    model = MeissonicTransformer(MeissonicConfig.tiny()).eval()
    g = torch.Generator().manual_seed(100 + seed)
    c = dict(
        text_hidden=torch.randn(B, 5, 24, generator=g),
        pooled=torch.randn(B, 32, generator=g),
        neg_text_hidden=torch.randn(1, 5, 24, generator=g),
        neg_pooled=torch.randn(1, 32, generator=g),
        micro_conds=torch.tensor([[1024.0, 1024, 0, 0, 6]]),
    )
    return model, c


def entropy_temperature(logits, tokens, step):
    "A Dynamic-Routing-like hook: per-token temperature from the entropy at the masked positions (packed or not)."
    masked = tokens == 71
    rows = logits if logits.ndim == 2 else logits[masked]
    H = torch.special.entr(rows.float().softmax(-1)).sum(-1)
    T = torch.ones(tokens.shape)
    T[masked] = 1.0 + H / 4
    return T


def packed_entropy_temperature(logits, tokens, step):
    return entropy_temperature(logits, tokens, step)


packed_entropy_temperature.packed_logits = True


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("cfg", [None, 3.0])
@pytest.mark.parametrize("hooked", [False, True])
def test_packed_head_sampling_equals_the_full_head(seed, cfg, hooked):
    "Tiny Meissonic, masked_only=True: the packed head gives the same tokens, x0_hat, logp and confidence."
    model, c = tiny_meissonic(seed)
    runs = []
    for m, fn in ((FullHead(model), entropy_temperature), (Spy(model), packed_entropy_temperature)):
        rec = []
        out = sample(
            m,
            **c,
            N=8,
            cfg=cfg,
            generator=torch.Generator().manual_seed(seed),
            grid=(8, 8),
            return_x0=True,
            masked_only=True,
            temperature_fn=fn if hooked else None,
            on_step=lambda s, o: rec.append(o),
        )
        runs.append((out, rec))
    (tok_a, x0_a), rec_a = runs[0]
    (tok_b, x0_b), rec_b = runs[1]
    assert torch.equal(tok_a, tok_b) and torch.equal(x0_a, x0_b)
    for a, b in zip(rec_a, rec_b):
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.n_masks, b.n_masks)
        assert torch.allclose(a.logp, b.logp, atol=1e-5, rtol=0) and bool((b.logp[a.logp == 0] == 0).all())
        assert torch.equal(a.confidence.isinf(), b.confidence.isinf())
        fin = a.confidence.isfinite()
        assert torch.allclose(a.confidence[fin], b.confidence[fin], atol=1e-5, rtol=0)
    # the head was asked for the masked positions of each step, the same in both guidance halves
    spy = m
    assert len(spy.asked) == 8
    for s, where in enumerate(spy.asked):
        before = ((rec_b[s - 1].tokens if s else torch.full_like(tok_b, 71)) == 71).reshape(tok_b.shape)
        assert torch.equal(where, torch.cat([before, before]) if cfg is not None else before)


def test_packed_head_only_where_it_applies():
    "Default masked_only=False, or a hook without packed_logits, never passes positions (the full head runs)."
    model, c = tiny_meissonic(0)
    kw = dict(N=4, cfg=3.0, grid=(8, 8))
    spy = Spy(model)
    a = sample(spy, **c, generator=torch.Generator().manual_seed(0), **kw)
    b = sample(FullHead(model), **c, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(a, b) and spy.asked == [None] * 4
    spy.asked.clear()
    sample(spy, **c, generator=None, masked_only=True, temperature_fn=entropy_temperature, **kw)
    assert spy.asked == [None] * 4


def test_packed_head_wrong_shape_names_the_model():
    model, c = tiny_meissonic(0)

    class Bad(Spy):
        def forward(self, *args, positions=None):
            return self.model(*args, positions=positions)[1:]

    err = field_of(lambda: sample(Bad(model), **c, N=3, cfg=3.0, generator=None, grid=(8, 8), masked_only=True))
    assert err == "model"
