"""Tests of `maskfocus.models.transformer` and `maskfocus.models.meissonic_io` that do not fit the notebooks: loader
round trip from the installed package, error messages, gradient checkpointing, per-sample timesteps. The golden forward
pass and the key manifests are checked in nbs/models/03_meissonic_io.ipynb."""

import json
from dataclasses import asdict, replace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from maskfocus.core import InputError
from maskfocus.models.interface import MaskedImageModel
from maskfocus.models.meissonic_config import MeissonicConfig
from maskfocus.models.meissonic_io import load_meissonic, save_meissonic
from maskfocus.models.transformer import MeissonicTransformer

TINY = MeissonicConfig.tiny()


def make_model(seed=0, config=TINY, dtype=torch.float32, **kw):
    torch.manual_seed(seed)
    return MeissonicTransformer(config, **kw).to(dtype)


def make_inputs(B=2, H=8, W=8, L=5, seed=1, dtype=torch.float32, timestep=(3,)):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, TINY.codebook_size, (B, H, W), generator=g)
    tokens[torch.rand(B, H, W, generator=g) < 0.4] = TINY.mask_token_id
    micro = torch.tensor([[1024.0, 1024, 0, 0, 6], [512, 768, 16, 32, 5], [256, 256, 8, 0, 4], [640, 480, 0, 2, 6.5]])
    return dict(
        tokens=tokens,
        text_hidden=torch.randn(B, L, TINY.joint_attention_dim, generator=g, dtype=torch.float64).to(dtype),
        pooled=torch.randn(B, TINY.pooled_projection_dim, generator=g, dtype=torch.float64).to(dtype),
        timestep=torch.tensor(timestep),
        micro_conds=micro[torch.arange(B) % 4].to(dtype),
    )


def error_of(fn):
    with pytest.raises(InputError) as info:
        fn()
    return str(info.value)


# ---------------------------------------------------------------- loading and saving


def test_package_is_importable_and_fits_the_interface():
    import maskfocus.models.transformer as mt

    assert mt.__file__.endswith("maskfocus/models/transformer.py")
    assert isinstance(make_model(), MaskedImageModel)


def test_round_trip(tmp_path):
    model = make_model(seed=3)
    model.mask_token_id = 70  # a non-default mask id travels through scheduler/scheduler_config.json
    folder = tmp_path / "ckpt"
    assert save_meissonic(model, folder) == folder
    assert sorted(p.name for p in (folder / "transformer").iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]
    cfg = json.loads((folder / "transformer" / "config.json").read_text())
    assert cfg["_class_name"] == "Transformer2DModel" and cfg["axes_dims_rope"] == [4, 6, 6]
    sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert sched["mask_token_id"] == 70 and sched["masking_schedule"] == "cosine"

    loaded = load_meissonic(folder)
    assert loaded.config == TINY and loaded.mask_token_id == 70 and not loaded.training
    assert isinstance(loaded, MaskedImageModel)
    want = model.state_dict()
    got = loaded.state_dict()
    assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert all(p.requires_grad for p in loaded.parameters()), "loaded weights must stay trainable"
    x = make_inputs()
    with torch.no_grad():
        assert torch.equal(loaded(**x), model.eval()(**x))
    assert load_meissonic(folder, dtype=torch.float64).dtype == torch.float64


def test_save_replaces_only_the_transformer_and_keeps_scheduler_keys(tmp_path):
    folder = tmp_path / "ckpt"
    (folder / "vqvae").mkdir(parents=True)
    (folder / "vqvae" / "config.json").write_text("{}")
    (folder / "transformer").mkdir()
    (folder / "transformer" / "stale.txt").write_text("old")
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(
        json.dumps(
            {
                "_class_name": "Scheduler",
                "_diffusers_version": "0.30.2",
                "mask_token_id": 71,
                "masking_schedule": "linear",
            }
        )
    )
    save_meissonic(make_model(), folder)
    assert (folder / "vqvae" / "config.json").read_text() == "{}"
    assert not (folder / "transformer" / "stale.txt").exists()
    sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert sched == {
        "_class_name": "Scheduler",
        "_diffusers_version": "0.30.2",
        "mask_token_id": 71,
        "masking_schedule": "linear",
    }
    assert sorted(p.name for p in folder.iterdir()) == ["scheduler", "transformer", "vqvae"], "no temporary folder left"


def test_fp16_variant(tmp_path):
    model = make_model()
    save_meissonic(model, tmp_path)
    t = tmp_path / "transformer"
    save_file(
        {k: v.half() for k, v in load_file(t / "diffusion_pytorch_model.safetensors").items()},
        t / "diffusion_pytorch_model.fp16.safetensors",
    )
    half = load_meissonic(tmp_path, variant="fp16")
    assert half.dtype == torch.float16
    assert torch.equal(half.embed.embeddings.weight, model.embed.embeddings.weight.half())


def test_mismatched_checkpoint_gives_one_error_listing_everything(tmp_path):
    # weights of a model with 1 dual block, 0 single blocks and a 48-code head, config of the tiny model
    other = replace(TINY, num_layers=1, num_single_layers=0, codebook_size=48)
    save_meissonic(make_model(config=other), tmp_path)
    TINY.to_json(tmp_path / "transformer" / "config.json")
    sd = load_file(tmp_path / "transformer" / "diffusion_pytorch_model.safetensors")
    sd["extra.weight"] = torch.zeros(3)
    save_file(sd, tmp_path / "transformer" / "diffusion_pytorch_model.safetensors")

    msg = error_of(lambda: load_meissonic(tmp_path))
    wfile = tmp_path / "transformer" / "diffusion_pytorch_model.safetensors"
    assert msg.startswith(f"{wfile}: checkpoint does not match {tmp_path / 'transformer' / 'config.json'}")
    assert "46 missing key(s), 1 unexpected key(s), 1 shape mismatch(es)" in msg  # 32 + 14 missing
    assert "  transformer_blocks.1.norm1.linear.weight" in msg and "... and 26 more" in msg
    assert "unexpected (in the checkpoint, not in the model):\n  extra.weight" in msg
    assert "mlm_layer.conv2.weight: model [64, 32, 1, 1], checkpoint [48, 32, 1, 1]" in msg


def test_bad_folders_name_the_file(tmp_path, monkeypatch):
    assert "transformer/config.json not found" in error_of(lambda: load_meissonic(tmp_path))
    t = tmp_path / "transformer"
    t.mkdir()
    (t / "config.json").write_text(json.dumps({**TINY.to_dict(), "sample_size": 64}, indent=2))
    msg = error_of(lambda: load_meissonic(tmp_path))
    assert str(t / "config.json") in msg and "'sample_size'" in msg

    # pickle weights only: refused without ever calling torch.load
    TINY.to_json(t / "config.json")
    (t / "diffusion_pytorch_model.bin").write_bytes(b"not read")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load must not be called"))
    msg = error_of(lambda: load_meissonic(tmp_path))
    assert "diffusion_pytorch_model.safetensors" in msg and "pickle" in msg and "diffusion_pytorch_model.bin" in msg

    # corrupt safetensors
    (t / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 7)
    assert "cannot read safetensors file" in error_of(lambda: load_meissonic(tmp_path))


def test_bad_scheduler_mask_id(tmp_path):
    save_meissonic(make_model(), tmp_path)
    s = tmp_path / "scheduler" / "scheduler_config.json"
    s.write_text(json.dumps({"mask_token_id": 5}))
    msg = error_of(lambda: load_meissonic(tmp_path))
    assert str(s) in msg and "field 'mask_token_id'" in msg and "[codebook_size=64, vocab_size=72)" in msg
    s.unlink()
    assert load_meissonic(tmp_path).mask_token_id == 71, "without a scheduler config the mask id is vocab_size - 1"


# ---------------------------------------------------------------- training-time behaviour


def _grads(model, x, target):
    model.zero_grad()
    logits = model(**x)
    F.cross_entropy(logits, target).backward()
    return logits.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


def test_gradient_checkpointing_gives_the_same_gradients():
    plain = make_model(seed=5, dtype=torch.float64).train()
    ckpt = make_model(seed=5, dtype=torch.float64, gradient_checkpointing=True).train()
    x = make_inputs(dtype=torch.float64, timestep=(7, 2))
    target = torch.randint(0, TINY.codebook_size, (2, 8, 8), generator=torch.Generator().manual_seed(9))

    calls = []
    hook = ckpt.transformer_blocks[0].register_forward_pre_hook(lambda *a: calls.append(1))
    l1, g1 = _grads(plain, x, target)
    l2, g2 = _grads(ckpt, x, target)
    hook.remove()
    assert len(calls) == 2, "with checkpointing the block runs again in the backward pass"
    assert torch.allclose(l1, l2, atol=1e-12, rtol=0)
    assert g1.keys() == g2.keys()
    worst = max((g1[k] - g2[k]).abs().max().item() for k in g1)
    assert worst < 1e-10, worst
    assert all(g.abs().sum() > 0 for g in g1.values()), "every parameter gets a gradient"

    # eval mode and no_grad never checkpoint
    calls.clear()
    hook = ckpt.transformer_blocks[0].register_forward_pre_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        ckpt.train()(**x)
    hook.remove()
    assert len(calls) == 1


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_per_sample_timesteps_equal_one_by_one(dtype, tol):
    model = make_model(seed=2, dtype=dtype).eval()
    steps = (0, 7, 63, 3)
    x = make_inputs(B=4, dtype=dtype, timestep=steps)
    with torch.no_grad():
        batch = model(**x)
        for b, t in enumerate(steps):
            one = {k: (v[b : b + 1] if k != "timestep" else torch.tensor(t)) for k, v in x.items()}
            assert (model(**one) - batch[b : b + 1]).abs().max().item() < tol
    assert (batch[0] - batch[1]).abs().max() > 1e-3, "different timesteps give different logits"


def test_timestep_forms_agree_and_wrong_shapes_are_refused():
    model = make_model().eval()
    x = make_inputs(B=3)
    with torch.no_grad():
        ref = model(**{**x, "timestep": torch.tensor([5])})
        for t in (torch.tensor(5), 5, torch.tensor([5, 5, 5])):
            assert torch.allclose(model(**{**x, "timestep": t}), ref, atol=1e-6)
        with pytest.raises(ValueError, match=r"timestep must have shape"):
            model(**{**x, "timestep": torch.tensor([5, 5])})
        with pytest.raises(ValueError, match="even"):
            model(**make_inputs(H=7))
        with pytest.raises(ValueError, match="micro_conds"):
            model(**{**x, "micro_conds": x["micro_conds"][:, :4]})
        with pytest.raises(ValueError, match="text_hidden"):
            model(**{**x, "text_hidden": x["text_hidden"][..., :8]})


def test_other_sizes_and_bfloat16():
    cfg = MeissonicConfig(
        **{
            **asdict(TINY),
            "num_attention_heads": 3,
            "pooled_projection_dim": 48,
            "num_layers": 1,
            "num_single_layers": 2,
            "downsample": False,
            "upsample": False,
        }
    )
    model = make_model(config=cfg).eval()
    x = make_inputs(H=6, W=10, L=7)
    x["pooled"] = torch.randn(2, 48)
    with torch.no_grad():
        out = model(**x)
        assert out.shape == (2, 64, 6, 10)
        half = model.to(torch.bfloat16)(**x)
    assert half.dtype == torch.bfloat16 and torch.isfinite(half).all()
    assert (half.float() - out).abs().max() < 0.25


# ---------------------------------------------------------------- the packed head (positions=)


def position_maps(tokens, seed=2):
    "Masked positions, a random map, everything, nothing, and one position: the head runs wherever it is asked."
    g = torch.Generator().manual_seed(seed)
    one = torch.zeros_like(tokens, dtype=torch.bool)
    one[-1, 0, -1] = True
    return [
        tokens == TINY.mask_token_id,
        torch.rand(tokens.shape, generator=g) < 0.3,
        torch.ones_like(tokens, dtype=torch.bool),
        torch.zeros_like(tokens, dtype=torch.bool),
        one,
    ]


@pytest.mark.parametrize("B,H,W", [(3, 8, 8), (2, 6, 10)])
def test_packed_logits_equal_the_full_logits_at_the_positions(B, H, W):
    model, inputs = make_model().eval(), make_inputs(B=B, H=H, W=W)
    assert model.supports_positions
    with torch.no_grad():
        full = model(**inputs)
        for where in position_maps(inputs["tokens"]):
            packed = model(**inputs, positions=where)
            assert packed.shape == (int(where.sum()), TINY.codebook_size) and packed.dtype == full.dtype
            assert torch.allclose(packed, full.permute(0, 2, 3, 1)[where], atol=1e-5, rtol=0)


def test_packed_logits_carry_the_same_gradients():
    "An RL loss on packed rows gives the gradients of the same loss on the full logits gathered there."
    inputs = make_inputs(B=2)
    where = inputs["tokens"] == TINY.mask_token_id
    grads = []
    for packed in (False, True):
        model = make_model()
        out = model(**inputs, positions=where) if packed else model(**inputs).permute(0, 2, 3, 1)[where]
        out.float().log_softmax(-1)[:, 0].sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-5, rtol=1e-4), n


def test_positions_must_be_a_bool_map_like_tokens():
    model, inputs = make_model().eval(), make_inputs(B=2)
    for bad in (
        (inputs["tokens"] == TINY.mask_token_id).long(),
        torch.ones(2, 8, 7, dtype=torch.bool),
        torch.ones(1, 8, 8, dtype=torch.bool),
        [[True]],
    ):
        with pytest.raises(ValueError, match="positions must be bool"):
            model(**inputs, positions=bad)
