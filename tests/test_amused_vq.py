"""Tests of `maskfocus.models.amused` (aMUSEd's UVit2DModel behind the MaskedImageModel contract) and of
`maskfocus.models.tokenizer.VQTokenizer` (diffusers VQModel behind the Tokenizer interface): tiny random models,
save/load round trips in the released folder layouts, errors naming the file, and the VQ key manifest."""

import json
import math

import pytest
import torch
from diffusers import UVit2DModel, VQModel

from maskfocus.models.amused import AmusedAdapter, tiny_uvit_config
from maskfocus.core import InputError, reference_path
from maskfocus.models.tokenizer import Tokenizer, VQTokenizer, meissonic_vqvae_config, tiny_vqvae_config
from maskfocus.models.interface import MaskedImageModel

WEIGHTS = "diffusion_pytorch_model.safetensors"


def error_of(fn):
    with pytest.raises(InputError) as info:
        fn()
    return str(info.value)


def inputs(adapter, B=2, H=8, W=8, L=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, adapter.codebook_size, (B, H, W), generator=g)
    tokens[torch.rand(B, H, W, generator=g) < 0.5] = adapter.mask_token_id
    micro = torch.tensor([[1024.0, 1024, 0, 0, 6], [512, 768, 16, 32, 5], [256, 256, 8, 0, 4]])[torch.arange(B) % 3]
    return dict(
        tokens=tokens,
        text_hidden=torch.randn(B, L, adapter.text_dim, generator=g),
        pooled=torch.randn(B, adapter.pooled_dim, generator=g),
        timestep=torch.tensor(3),
        micro_conds=micro,
    )


def direct(adapter, x):
    return adapter.model(
        input_ids=x["tokens"],
        encoder_hidden_states=x["text_hidden"],
        pooled_text_emb=x["pooled"],
        micro_conds=x["micro_conds"],
    )


@pytest.fixture(scope="module")
def adapter():
    return AmusedAdapter.tiny(seed=1)


@pytest.fixture(scope="module")
def vq():
    return VQTokenizer.tiny(seed=2)


# ---------------------------------------------------------------- aMUSEd adapter


def test_adapter_fits_the_contract(adapter):
    assert isinstance(adapter, MaskedImageModel) and isinstance(adapter, torch.nn.Module)
    assert (adapter.codebook_size, adapter.mask_token_id, adapter.micro_cond_dim) == (32, 32, 5)
    assert (adapter.text_dim, adapter.pooled_dim) == (32, 32)
    assert [n for n, _ in adapter.named_parameters()] == [f"model.{n}" for n, _ in adapter.model.named_parameters()]


@pytest.mark.parametrize("B,H,W", [(2, 8, 8), (2, 16, 16), (1, 4, 6), (3, 16, 8)])
def test_adapter_shapes_and_identity_with_direct_call(adapter, B, H, W):
    x = inputs(adapter, B, H, W)
    with torch.no_grad():
        logits = adapter(**x)
        assert logits.shape == (B, 32, H, W) and logits.dtype == torch.float32
        assert torch.equal(logits, direct(adapter, x))
        assert torch.equal(logits, adapter(**{**x, "timestep": torch.arange(B)})), "the timestep is ignored"
        assert torch.equal(logits, adapter(**{**x, "timestep": None}))


def test_adapter_mask_id_comes_from_the_config():
    a = AmusedAdapter.tiny(vocab_size=40)  # aMUSEd-style: vocab_size - 1 (8255 for the released models)
    assert (a.codebook_size, a.mask_token_id) == (32, 39)
    assert AmusedAdapter(a.model, mask_token_id=35).mask_token_id == 35
    assert "mask_token_id" in error_of(lambda: AmusedAdapter(a.model, mask_token_id=31))


def test_adapter_with_down_and_upsampling():
    a = AmusedAdapter.tiny(downsample=True, upsample=True)
    x = inputs(a, 2, 16, 16)
    with torch.no_grad():
        assert torch.equal(a(**x), direct(a, x)) and a(**x).shape == (2, 32, 16, 16)
    with pytest.raises(ValueError, match="even"):
        a(**inputs(a, 2, 7, 7))


def test_adapter_shape_errors(adapter):
    x = inputs(adapter)
    for bad, want in (
        (dict(tokens=x["tokens"].float()), "integer ids"),
        (dict(tokens=x["tokens"][0]), "integer ids"),
        (dict(text_hidden=torch.zeros(2, 5, 16)), "text_hidden must be [B=2, L, 32]"),
        (dict(pooled=torch.zeros(3, 32)), "pooled must be [2, 32]"),
        (dict(micro_conds=torch.zeros(2, 4)), "micro_conds must be [2, 5]"),
    ):
        with pytest.raises(ValueError) as info:
            adapter(**{**x, **bad})
        assert want in str(info.value)


def test_adapter_gradients_reach_the_wrapped_model():
    a = AmusedAdapter.tiny(seed=3).train()
    a(**inputs(a)).logsumexp(1).mean().backward()
    assert a.model.mlm_layer.conv2.weight.grad is not None and a.model.embed.embeddings.weight.grad.abs().sum() > 0


def test_adapter_round_trip_via_save_pretrained(adapter, tmp_path):
    adapter.model.save_pretrained(tmp_path / "transformer")  # diffusers' own writer, aMUSEd layout
    assert (tmp_path / "transformer" / WEIGHTS).is_file()
    loaded = AmusedAdapter.load(tmp_path)
    assert isinstance(loaded, AmusedAdapter) and isinstance(loaded, MaskedImageModel) and not loaded.training
    assert loaded.mask_token_id == 32 and loaded.model.config.codebook_size == 32
    want, got = adapter.state_dict(), loaded.state_dict()
    assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert all(p.requires_grad for p in loaded.parameters()), "loaded weights must stay trainable"
    x = inputs(adapter, 2, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(**x), adapter(**x))
    assert AmusedAdapter.load(tmp_path, dtype=torch.float64).dtype == torch.float64


def test_adapter_save_writes_scheduler_mask_id_and_keeps_other_folders(tmp_path):
    a = AmusedAdapter.tiny(vocab_size=36)
    (tmp_path / "vqvae").mkdir()
    (tmp_path / "vqvae" / "config.json").write_text("{}")
    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "stale.txt").write_text("old")
    assert AmusedAdapter(a.model, mask_token_id=33).save(tmp_path) == tmp_path
    sched = json.loads((tmp_path / "scheduler" / "scheduler_config.json").read_text())
    assert sched["_class_name"] == "AmusedScheduler" and sched["mask_token_id"] == 33
    assert (
        not (tmp_path / "transformer" / "stale.txt").exists()
        and (tmp_path / "vqvae" / "config.json").read_text() == "{}"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scheduler", "transformer", "vqvae"], (
        "no temporary folder left"
    )
    assert AmusedAdapter.load(tmp_path).mask_token_id == 33, "the scheduler config's mask id wins"
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps({**sched, "mask_token_id": 5}))
    msg = error_of(lambda: AmusedAdapter.load(tmp_path))
    assert "scheduler_config.json" in msg and "mask_token_id" in msg


def test_adapter_load_errors_name_the_file(adapter, tmp_path):
    assert "transformer/config.json" in error_of(lambda: AmusedAdapter.load(tmp_path))
    adapter.model.save_pretrained(tmp_path / "transformer")
    (tmp_path / "transformer" / WEIGHTS).rename(tmp_path / "transformer" / "diffusion_pytorch_model.bin")
    msg = error_of(lambda: AmusedAdapter.load(tmp_path))
    assert f"transformer/{WEIGHTS}" in msg and "pickle" in msg
    (tmp_path / "transformer" / "diffusion_pytorch_model.bin").unlink()
    msg = error_of(lambda: AmusedAdapter.load(tmp_path))
    assert WEIGHTS in msg and "pickle" not in msg
    cfg = tmp_path / "transformer" / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "_class_name": "VQModel"}))
    assert "UVit2DModel" in error_of(lambda: AmusedAdapter.load(tmp_path))
    cfg.write_text('{\n  "a": 1,\n}')
    msg = error_of(lambda: AmusedAdapter.load(tmp_path))
    assert "config.json:3" in msg and "not valid JSON" in msg


def test_adapter_fp16_variant(adapter, tmp_path):
    adapter.model.to(torch.float16).save_pretrained(tmp_path / "transformer", variant="fp16")
    adapter.model.to(torch.float32)
    half = AmusedAdapter.load(tmp_path, variant="fp16")
    assert half.dtype == torch.float16
    assert torch.equal(half.model.embed.embeddings.weight, adapter.model.embed.embeddings.weight.half())
    assert "fp32" in error_of(lambda: AmusedAdapter.load(tmp_path, variant="fp32"))


# ---------------------------------------------------------------- VQ tokenizer


def test_vq_interface(vq):
    assert isinstance(vq, Tokenizer)
    assert (vq.codebook_size, vq.embed_dim, vq.image_size, vq.grid) == (32, 8, 32, 16)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ids = vq.encode(x)
    assert ids.shape == (3, 16, 16) and ids.dtype == torch.int64 and 0 <= ids.min() and ids.max() < 32
    img = vq.decode(ids)
    assert img.shape == (3, 3, 32, 32) and img.dtype == torch.float32 and 0 <= img.min() and img.max() <= 1
    codes = torch.randint(0, 32, (2, 16, 16), generator=torch.Generator().manual_seed(1))
    made = vq.decode(codes)
    assert torch.equal(vq.encode(made), vq.encode(made)), "encoding decoded codebook vectors is deterministic"
    assert torch.equal(vq.embed(codes), vq.model.quantize.embedding.weight[codes].permute(0, 3, 1, 2))
    with torch.no_grad():  # the aMUSEd / Meissonic pipeline's decode call
        want = vq.model.decode(codes, force_not_quantize=True, shape=(2, 16, 16, 8)).sample.clip(0, 1)
    assert torch.equal(made, want)


def test_vq_mask_decodes_grey_and_bad_inputs(vq):
    ids = torch.zeros(1, 16, 16, dtype=torch.long)
    ids[0, 2:4, 5] = vq.codebook_size
    img = vq.decode(ids)
    assert (img[0, :, 4:8, 10:12] == 0.5).all()
    assert "no mask ids" in error_of(lambda: vq.embed(ids))
    assert "0..32" in error_of(lambda: vq.decode(ids + 1))
    assert "integer ids" in error_of(lambda: vq.decode(ids.float()))
    assert "[0, 1]" in error_of(lambda: vq.encode(torch.rand(1, 3, 32, 32) * 2 - 1))
    assert "multiples of 2" in error_of(lambda: vq.encode(torch.rand(1, 3, 31, 32)))
    assert "image_size" in error_of(lambda: VQTokenizer(vq.model, image_size=33))


def test_vq_works_with_the_adapter(vq, adapter):
    "End to end at toy size: adapter logits -> argmax ids -> VQ decode, and VQ ids -> adapter."
    x = inputs(adapter, 2, vq.grid, vq.grid)
    with torch.no_grad():
        ids = adapter(**x).argmax(1)
    assert vq.decode(ids).shape == (2, 3, vq.image_size, vq.image_size)
    with torch.no_grad():
        assert adapter(**{**x, "tokens": vq.encode(vq.decode(ids))}).shape == (2, 32, 16, 16)


def test_vq_round_trip(vq, tmp_path):
    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text("{}")
    assert vq.save(tmp_path) == tmp_path
    assert sorted(p.name for p in (tmp_path / "vqvae").iterdir()) == ["config.json", WEIGHTS, "image_size.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["transformer", "vqvae"], "no temporary folder left"
    assert VQTokenizer.load(tmp_path).image_size == vq.image_size, "the saved image side, not Meissonic's 1024"
    assert json.loads((tmp_path / "vqvae" / "config.json").read_text())["_class_name"] == "VQModel"
    loaded = VQTokenizer.load(tmp_path, image_size=32)
    want, got = vq.model.state_dict(), loaded.model.state_dict()
    assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert (loaded.codebook_size, loaded.embed_dim, loaded.grid) == (32, 8, 16)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    ids = vq.encode(x)
    assert torch.equal(loaded.encode(x), ids) and torch.equal(loaded.decode(ids), vq.decode(ids))
    assert VQTokenizer.load(tmp_path / "vqvae", image_size=32).grid == 16, "the vqvae/ folder itself also loads"
    assert VQTokenizer.load(tmp_path, image_size=64, dtype=torch.float64).model.dtype == torch.float64
    vq.save(tmp_path)  # overwriting an existing vqvae/ is atomic too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["transformer", "vqvae"]


def test_vq_load_errors_name_the_file(vq, tmp_path):
    msg = error_of(lambda: VQTokenizer.load(tmp_path))
    assert "vqvae/config.json" in msg
    vq.save(tmp_path)
    w = tmp_path / "vqvae" / WEIGHTS
    w.rename(tmp_path / "vqvae" / "diffusion_pytorch_model.bin")
    msg = error_of(lambda: VQTokenizer.load(tmp_path))
    assert f"vqvae/{WEIGHTS}" in msg and "pickle" in msg
    (tmp_path / "vqvae" / "diffusion_pytorch_model.bin").unlink()
    msg = error_of(lambda: VQTokenizer.load(tmp_path))
    assert f"vqvae/{WEIGHTS}" in msg and "pickle" not in msg
    cfg = tmp_path / "vqvae" / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "_class_name": "UVit2DModel"}))
    assert "VQModel" in error_of(lambda: VQTokenizer.load(tmp_path))
    cfg.write_text('{\n  "a": 1,\n}')
    msg = error_of(lambda: VQTokenizer.load(tmp_path))
    assert "config.json:3" in msg and "not valid JSON" in msg


def test_vq_fp16_variant_and_force_upcast(tmp_path):
    m = VQModel(**tiny_vqvae_config()).half()
    m.save_pretrained(tmp_path / "vqvae", variant="fp16")
    half = VQTokenizer.load(tmp_path, image_size=32, variant="fp16")
    assert half.model.dtype == torch.float16, "as stored"
    assert torch.equal(half.model.quantize.embedding.weight, m.quantize.embedding.weight)
    assert "fp16" in error_of(lambda: VQTokenizer.load(tmp_path, image_size=32))  # no plain weights file
    up = VQModel(**tiny_vqvae_config(), force_upcast=True).half()
    up.save_pretrained(tmp_path / "up" / "vqvae", variant="fp16")
    assert VQTokenizer.load(tmp_path / "up", image_size=32, variant="fp16").model.dtype == torch.float32, (
        "like the pipeline"
    )


def test_vq_corrupt_weights_name_the_file(vq, tmp_path):
    vq.save(tmp_path)
    (tmp_path / "vqvae" / WEIGHTS).write_bytes(b"not a safetensors file")
    msg = error_of(lambda: VQTokenizer.load(tmp_path))
    assert WEIGHTS in msg


def test_vq_config_helpers():
    with torch.device("meta"):
        m = VQModel(**tiny_vqvae_config())
    assert sum(p.numel() for p in m.parameters()) < 200_000
    cfg = meissonic_vqvae_config()
    assert cfg["num_vq_embeddings"] == 8192 and cfg["latent_channels"] == 64 and len(cfg["block_out_channels"]) == 5
    assert UVit2DModel(**tiny_uvit_config()).config.codebook_size == 32


def test_vq_manifest_matches_meissonic_release():
    path = reference_path("meissonic_vqvae_keys.json")  # committed in tests/reference/
    manifest = [(k, tuple(s)) for k, s in json.loads(path.read_text())]
    with torch.device("meta"):
        model = VQModel(**meissonic_vqvae_config())
    got = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert len(manifest) == 277 and dict(got) == dict(manifest), "same keys and shapes as the released vqvae"
    assert [k for k, _ in got] == [k for k, _ in manifest], "same registration order"
    assert sum(math.prod(s) for _, s in got) == 146_244_675
    tok = VQTokenizer(model)  # meta weights are enough for the attributes
    assert (tok.codebook_size, tok.embed_dim, tok.factor, tok.image_size, tok.grid) == (8192, 64, 16, 1024, 64)
