"""The engine knobs on the CPU: bf16 autocast trains and resumes exactly, bf16 agrees with fp32 within a stated
tolerance, gradient checkpointing acts in eval() mode and lowers the saved activations, the frozen parts are stored
in bf16, and what needs a GPU is refused with a clear error. (Micro-batches equal to the unsplit update:
nbs/rl/10a_update.ipynb.)"""

import hashlib
from pathlib import Path

import pytest
import torch

from maskfocus.core import InputError
from maskfocus.rl.config import RLConfig
from maskfocus.rl.presets import make_config

from _launch_train import Redness, run

TINY = {"prompts_per_iter": 2, "group_size": 2, "steps": 4, "K": 2, "iterations": 2, "lr": 1e-3}
TINY |= {"checkpoint_every": 1, "log_images_every": 0}


def _digest(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _cfg(**engine):
    return make_config("maskfocus", {**TINY, "engine": engine})


def test_bf16_run_trains_and_resumes_exactly(base, metas, tmp_path):
    "bf16: finite loss, moved parameters, and a run resumed after iteration 1 ends byte-identical to a straight one."
    cfg = _cfg(precision="bf16")
    straight = run(cfg, base, tmp_path / "straight", metas)
    h = straight["history"]
    assert len(h) == 2 and all(torch.isfinite(torch.tensor(x["update/loss"])) for x in h)
    assert all(x["update/grad_norm"] > 0 for x in h)
    run(cfg, base, tmp_path / "resumed", metas, max_iterations=1)
    run(cfg, base, tmp_path / "resumed", metas)
    a, b = tmp_path / "straight" / "final", tmp_path / "resumed" / "final"
    assert _digest(a) == _digest(b)
    from maskfocus.models.pipeline import MaskedPipeline

    before, after = MaskedPipeline.load(base), MaskedPipeline.load(a)
    moved = [not torch.equal(p, q) for p, q in zip(before.transformer.parameters(), after.transformer.parameters())]
    assert any(moved)
    # the final model is saved in fp32 with the base's own text encoder (the run held a bf16 copy)
    assert all(p.dtype == torch.float32 for p in after.transformer.parameters())
    assert _digest(Path(base) / "text_encoder") == _digest(a / "text_encoder")


def test_bf16_frozen_parts_are_stored_in_bf16(base, metas, tmp_path):
    "The KL reference and the text encoder are bf16; the trained transformer keeps fp32 master weights."
    from maskfocus.rl.state import setup

    s = setup(_cfg(precision="bf16"), base, tmp_path / "run", prompts=metas, reward_fn=Redness())
    assert {p.dtype for p in s.reference.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in s.pipe.text_encoder.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in s.params} == {torch.float32}
    assert s.acc.mixed_precision == "bf16"


BF16_LOGP_TOL = 0.1  # nats: bf16 keeps 8 mantissa bits, ~0.4 % relative error per op over a few layers


def test_bf16_logprobs_agree_with_fp32(base):
    "Per-token log-probs of a planned step under bf16 autocast vs fp32: max difference below BF16_LOGP_TOL."
    from maskfocus.models.pipeline import MaskedPipeline
    from maskfocus.rl.engine import autocast
    from maskfocus.rl.logprob import StepBatch, make_estimator, step_logps

    pipe = MaskedPipeline.load(base)
    torch.manual_seed(0)
    B, (H, W) = 4, pipe.grid
    mid = int(pipe.transformer.mask_token_id)
    toks = torch.randint(0, pipe.tokenizer.codebook_size, (B, H * W))
    inputs = torch.where(torch.rand(B, H * W) < 0.5, torch.full_like(toks, mid), toks).view(B, H, W)
    batch = StepBatch(inputs, torch.full((B,), 2), toks, inputs.view(B, -1) == mid)
    est = make_estimator("remask_random", mask_id=mid)
    th, pooled = pipe.encode_prompts(["a photo of a red cube"] * B)
    with torch.no_grad():
        lp32 = step_logps(pipe.transformer, batch, th, pooled, pipe.micro_conds(1), est)
        with autocast(torch.device("cpu"), "bf16"):
            lp16 = step_logps(pipe.transformer, batch, th, pooled, pipe.micro_conds(1), est)
    assert lp16.dtype == torch.float32, "log-probs are reduced in fp32"
    diff = (lp16 - lp32)[batch.score_mask].abs().max().item()
    print(f"max |log-prob bf16 - fp32| = {diff:.4f} nats")
    assert 0 < diff < BF16_LOGP_TOL


def _saved_bytes(model, args, checkpointing: bool) -> int:
    "Bytes of the tensors autograd saves for the backward pass of one forward."
    model.gradient_checkpointing = checkpointing
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(*args)
    out.float().square().mean().backward()
    return total


def test_gradient_checkpointing_acts_in_eval_mode():
    "In eval() mode (the RL update's), checkpointing cuts the saved activations and leaves the gradients equal."
    from maskfocus.models.meissonic_config import MeissonicConfig
    from maskfocus.models.transformer import MeissonicTransformer

    torch.manual_seed(0)
    net = MeissonicTransformer(MeissonicConfig.tiny()).eval()
    B = 4
    args = (
        torch.randint(0, 64, (B, 8, 8)),
        torch.randn(B, 7, 24),
        torch.randn(B, 32),
        torch.full((B,), 0.5),
        torch.tensor([[64.0, 64, 0, 0, 6]] * B),
    )
    plain = _saved_bytes(net, args, False)
    g_plain = [p.grad.clone() for p in net.parameters()]
    net.zero_grad(set_to_none=True)
    ckpt = _saved_bytes(net, args, True)
    g_ckpt = [p.grad.clone() for p in net.parameters()]
    print(f"saved activations: {plain} B without, {ckpt} B with checkpointing ({ckpt / plain:.2f}x)")
    assert ckpt < 0.7 * plain
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-5) for a, b in zip(g_plain, g_ckpt))


def test_engine_knobs_reach_the_run(base, metas, tmp_path):
    "grad_checkpointing sets the transformer's flag; micro_batch trains; scheduling knobs are not in the fingerprint."
    from maskfocus.rl.state import setup

    cfg = _cfg(grad_checkpointing=True, micro_batch=1)
    s = setup(cfg, base, tmp_path / "run", prompts=metas, reward_fn=Redness())
    assert s.pipe.transformer.gradient_checkpointing is True
    assert "engine" not in cfg.fingerprint()
    assert _cfg(precision="bf16").fingerprint()["engine"] == {"precision": "bf16"}
    out = run(
        make_config("maskfocus", {**TINY, "iterations": 1, "engine": {"micro_batch": 1}}), base, tmp_path / "mb", metas
    )
    assert out["history"][0]["update/grad_norm"] > 0


@pytest.mark.parametrize(
    "engine, msg",
    [
        ({"precision": "fp16"}, "fp16 needs a CUDA GPU"),
        ({"optimizer": "adamw_8bit"}, "adamw_8bit needs a CUDA GPU"),
    ],
)
def test_gpu_only_knobs_refused_on_cpu(base, metas, tmp_path, engine, msg):
    "What only a GPU can do is refused on the CPU with one clear error, before anything is written."
    from maskfocus.rl.state import setup

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(InputError, match=msg):
        setup(_cfg(**engine), base, tmp_path / "run", prompts=metas, reward_fn=Redness(), device="cpu")
    assert not (tmp_path / "run").exists()


def test_bad_engine_values_name_the_field():
    "A bad engine value is an InputError naming engine.<field>."
    for bad, field in (({"precision": "fp8"}, "engine.precision"), ({"micro": 2}, "engine.micro")):
        with pytest.raises(InputError) as e:
            RLConfig(engine=bad)
        assert e.value.field == field
    with pytest.raises(InputError, match="engine must be a mapping"):
        RLConfig(engine=[1])


def test_lora_and_ema_run_resumes_exactly(base, metas, tmp_path):
    "LoRA + EMA: no reference copy, adapter-only checkpoints with the EMA, a merged final model, exact resume."
    from safetensors import safe_open

    import maskfocus.rl.state as st
    from maskfocus.models.pipeline import MaskedPipeline
    from maskfocus.runs import list_checkpoints

    cfg = _cfg(lora_rank=2, ema_decay=0.5)
    copies = st.REFERENCE_COPIES
    straight = run(cfg, base, tmp_path / "straight", metas)
    assert st.REFERENCE_COPIES == copies and straight["has_reference"] and straight["params_without_grad"] == []
    ck = list_checkpoints(tmp_path / "straight" / "run")[-1]
    with safe_open(str(ck / "weights.safetensors"), "pt") as f:
        heads = {k.split(".")[0] for k in f.keys()}
    assert heads == {"lora", "ema"}, "the base weights stay out of LoRA checkpoints"
    run(cfg, base, tmp_path / "resumed", metas, max_iterations=1)
    run(cfg, base, tmp_path / "resumed", metas)
    a = tmp_path / "straight" / "final"
    assert _digest(a) == _digest(tmp_path / "resumed" / "final")
    keys = lambda d: sorted(safe_open(str(next((d / "transformer").glob("*.safetensors"))), "pt").keys())
    assert keys(a) == keys(Path(base)), "the final model is merged, in the released layout"
    MaskedPipeline.load(a)
    plain = run(_cfg(lora_rank=2), base, tmp_path / "no_ema", metas)
    assert plain["final"] and _digest(a / "transformer") != _digest(tmp_path / "no_ema" / "final" / "transformer")


def test_batched_rollouts_train_the_same_run(base, metas, tmp_path):
    "rollout_batch all (one sampler call per iteration) trains byte for byte the run of per-group calls."
    cfg = lambda batch: make_config("maskfocus", {**TINY, "group_size": 4, "engine": {"rollout_batch": batch}})
    run(cfg("group"), base, tmp_path / "group", metas)
    run(cfg("all"), base, tmp_path / "all", metas)
    assert _digest(tmp_path / "group" / "final") == _digest(tmp_path / "all" / "final")
    assert "engine" not in cfg("all").fingerprint(), "scheduling only: a run may resume with the other value"


def test_reward_overlap_scores_the_same(base, metas, tmp_path):
    "reward_overlap (each group scored in a worker thread while the next rolls out) trains the same run."
    from maskfocus.rl.rewards import WeightedReward
    from maskfocus.rl.trainer import train

    def go(overlap: bool, out: Path) -> dict:
        cfg = make_config("maskfocus", {**TINY, "engine": {"reward_overlap": overlap, "rollout_batch": "group"}})
        reward = WeightedReward({"redness": (Redness(), 1.0)})
        return train(cfg, base, out, prompts=metas, reward_fn=reward, progress=False)

    a, b = go(False, tmp_path / "plain"), go(True, tmp_path / "overlap")
    assert _digest(tmp_path / "plain" / "final") == _digest(tmp_path / "overlap" / "final")
    ra, rb = a["history"][-1]["reward/mean"], b["history"][-1]["reward/mean"]
    assert abs(ra - rb) < 1e-6, (ra, rb)
