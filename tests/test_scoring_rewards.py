"""Tests of the reward models from local checkpoints (`maskfocus.scoring`: HPSv2.1, PickScore, CLIP score,
ImageReward) on tiny random models written in the real layouts, and their registration in `make_reward`."""

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from maskfocus.core import InputError
from maskfocus.geneval import read_metadata
from maskfocus.rl.rewards import CHECKPOINT_REWARDS, REWARDS, Reward, make_reward
from maskfocus.scoring import clip_score, hps, image_reward, images, pickscore

PROMPTS = ["a red circle", "two blue squares and a very long description of a scene", "a dog", "a cat", "x"]
METAS = [{"tag": "colors"}, {"tag": "counting"}, {"tag": "colors"}, {"tag": "position"}, {"tag": "position"}]


@pytest.fixture(scope="module")
def imgs():
    return np.random.default_rng(0).integers(0, 256, (5, 40, 48, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    "Tiny checkpoints of every reward model, in the real layouts."
    d = tmp_path_factory.mktemp("rewards")
    return {
        "hps": hps.write_tiny_hps(d / "hps" / "HPS_v2.1_compressed.pt"),
        "pickscore": pickscore.write_tiny_pickscore(d / "pickscore"),
        "clip_score": clip_score.write_tiny_clip_score(d / "clip"),
    }


@pytest.fixture(scope="module")
def built(ckpts):
    torch.set_num_threads(1)
    return {
        "hps": hps.hps_reward(ckpts["hps"], batch_size=2),
        "pickscore": pickscore.pickscore_reward(ckpts["pickscore"], batch_size=2),
        "clip_score": clip_score.clip_score_reward(ckpts["clip_score"], batch_size=2),
    }


def _cos(a, b):
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


def test_pixels_match_open_clip(imgs):
    import open_clip
    from PIL import Image

    ref = torch.stack([open_clip.image_transform(32, is_train=False)(Image.fromarray(x)) for x in imgs])
    assert torch.equal(images.clip_pixels(imgs, 32), ref)
    assert images.clip_pixels(imgs, 32, resize="torch").shape == ref.shape


@pytest.mark.parametrize("name", ["hps", "clip_score"])
def test_open_clip_score_is_the_cosine(name, built, imgs):
    r = built[name]
    s, info = r(imgs, PROMPTS, METAS)
    assert isinstance(r, Reward) and r.name == name and s.dtype == np.float32 and s.shape == (5,)
    with torch.no_grad():
        fi = r.model.encode_image(images.clip_pixels(imgs, r.size))
        ft = r.model.encode_text(r.tokenizer(PROMPTS))
    assert np.allclose(s, _cos(fi, ft).numpy(), atol=1e-5)
    assert np.isclose(info["mean"], s.mean()) and np.isclose(info["per_tag"]["colors"], (s[0] + s[2]) / 2)
    assert list(info["per_tag"]) == ["counting", "colors", "position"], "GenEval's tag order"


def test_pickscore_is_logit_scale_times_cosine(built, imgs):
    r = built["pickscore"]
    s, info = r(imgs, PROMPTS, METAS)
    with torch.no_grad():
        px = images.clip_pixels(imgs, 32)
        t = r.processor.tokenizer(PROMPTS, padding=True, truncation=True, max_length=77, return_tensors="pt")
        fi = pickscore._pooled(r.model.get_image_features(pixel_values=px))
        ft = pickscore._pooled(r.model.get_text_features(input_ids=t["input_ids"], attention_mask=t["attention_mask"]))
        direct = r.model.logit_scale.exp() * _cos(fi, ft)
    assert s.dtype == np.float32 and np.allclose(s, direct.numpy(), atol=1e-4)
    assert np.isclose(info["scale"], float(r.model.logit_scale.exp())) and "colors" in info["per_tag"]


@pytest.mark.parametrize("name", ["hps", "pickscore", "clip_score"])
def test_batched_equals_unbatched(name, built, imgs):
    r = built[name]
    s = r(imgs, PROMPTS)[0]
    one = np.concatenate([r(imgs[i : i + 1], PROMPTS[i : i + 1])[0] for i in range(len(PROMPTS))])
    assert np.allclose(s, one, atol=1e-5)
    assert r(imgs[:0], [])[0].shape == (0,)


@pytest.mark.parametrize("name", ["hps", "pickscore", "clip_score"])
def test_device_and_dtype(name, ckpts, imgs):
    load = {"hps": hps.hps_reward, "pickscore": pickscore.pickscore_reward, "clip_score": clip_score.clip_score_reward}
    ref = load[name](ckpts[name])
    assert ref.dtype == torch.float32 and ref.to("cpu") is ref
    bf = load[name](ckpts[name], dtype="bf16", device="cpu")
    assert bf.dtype == torch.bfloat16 and next(bf.model.parameters()).dtype == torch.bfloat16
    s, s16 = ref(imgs, PROMPTS)[0], bf(imgs, PROMPTS)[0]
    assert s16.dtype == np.float32 and np.allclose(s, s16, atol=0.05 * max(1.0, float(np.abs(s).max())))
    with pytest.raises(InputError, match="field 'dtype'"):
        load[name](ckpts[name], dtype="int4")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_by_default(ckpts, imgs):
    r = hps.hps_reward(ckpts["hps"], device="cuda")
    assert r.dtype == torch.bfloat16
    assert np.allclose(r(imgs, PROMPTS)[0], hps.hps_reward(ckpts["hps"])(imgs, PROMPTS)[0], atol=0.02)


@pytest.mark.parametrize("name", ["hps", "pickscore", "clip_score"])
def test_bad_batches_name_the_field(name, built, imgs):
    r = built[name]
    with pytest.raises(InputError, match="field 'prompts'"):
        r(imgs, PROMPTS[:2])
    with pytest.raises(InputError, match="field 'images'"):
        r(imgs.astype(np.float32), PROMPTS)
    with pytest.raises(InputError, match="field 'metadata\\[0\\]'"):
        r(imgs, PROMPTS, ["colors"] * 5)


def test_bad_files_name_the_file(ckpts, tmp_path):
    with pytest.raises(InputError, match="not found"):
        hps.hps_reward(tmp_path / "missing.pt")
    bad = tmp_path / "bad" / "HPS_v2.1_compressed.pt"
    bad.parent.mkdir()
    torch.save({"state_dict": {"w": torch.ones(1)}, "cls": re.Pattern}, bad)  # a pickled class: refused
    with pytest.raises(InputError, match=re.escape(str(bad))):
        hps.hps_reward(bad)
    torch.save({"state_dict": {"w": torch.ones(1)}}, bad)  # tensors, but not ViT-H-14's
    with pytest.raises(InputError, match="missing keys"):
        hps.hps_reward(bad)
    with pytest.raises(InputError, match="config.json"):
        pickscore.pickscore_reward(tmp_path)
    with pytest.raises(InputError, match="field 'arch'"):
        clip_score.clip_score_reward(ckpts["clip_score"] / "open_clip_model.safetensors", arch="no-such-arch")


def test_safetensors_state_dict_loads(ckpts, tmp_path, imgs):
    from safetensors.torch import save_file

    sd = torch.load(ckpts["hps"], weights_only=True)["state_dict"]
    f = tmp_path / "HPS_v2.1.safetensors"
    save_file(sd, str(f))
    (tmp_path / "open_clip_config.json").write_text((ckpts["hps"].parent / "open_clip_config.json").read_text())
    a, b = hps.hps_reward(f), hps.hps_reward(ckpts["hps"])
    assert np.array_equal(a(imgs, PROMPTS)[0], b(imgs, PROMPTS)[0])


def test_real_layouts_on_the_meta_device(ckpts):
    "ViT-H-14 (HPS, CLIP score) and CLIP-H (PickScore): ~986 M parameters, the tiny files' key names."
    import open_clip
    from transformers import CLIPModel

    big = clip_score._build_on_meta(open_clip.get_model_config(hps.HPS_ARCH))
    assert 980e6 < sum(p.numel() for p in big.parameters()) < 990e6
    blocks = re.compile(r"resblocks\.\d+\.")
    tiny = torch.load(ckpts["hps"], weights_only=True)["state_dict"]
    assert {blocks.sub("N.", k) for k in big.state_dict()} == {blocks.sub("N.", k) for k in tiny}
    assert tuple(big.state_dict()["visual.proj"].shape) == (1280, 1024)
    with torch.device("meta"):
        ps = CLIPModel(pickscore.pickscore_config())
    assert 980e6 < sum(p.numel() for p in ps.parameters()) < 990e6
    layers = re.compile(r"layers\.\d+\.")
    small = CLIPModel(pickscore.pickscore_config(tiny=True))
    assert {layers.sub("N.", k) for k in ps.state_dict()} == {layers.sub("N.", k) for k in small.state_dict()}


@pytest.mark.skipif(importlib.util.find_spec("ImageReward") is not None, reason="image-reward is installed")
def test_image_reward_without_the_package_names_the_extra():
    with pytest.raises(InputError, match=re.escape("pip install 'maskfocus[imagereward]'")):
        image_reward.image_reward_reward("ImageReward.pt")
    with pytest.raises(InputError, match="maskfocus\\[imagereward\\]"):
        make_reward({"image_reward": 1.0}, models={"image_reward": "ImageReward.pt"}, monitor=None)


def test_make_reward_loads_checkpoint_rewards(ckpts, imgs):
    assert set(CHECKPOINT_REWARDS) == {"hps", "pickscore", "clip_score", "image_reward", "geneval_hf"} <= set(REWARDS)
    models = {k: str(v) for k, v in ckpts.items()}
    r = make_reward({"hps": 1.0, "pickscore": 0.1, "clip_score": 0.5}, models=models, monitor=None)
    s, info = r(imgs, PROMPTS, METAS)
    exp = sum(w * info["per_reward"][k].astype(np.float64) for k, w in r.weights.items())
    assert s.dtype == np.float32 and np.allclose(s, exp, atol=1e-5)
    assert set(info["per_tag_reward"]) == {"hps", "pickscore", "clip_score"} and "colors" in info["per_tag"]
    opts = make_reward({"clip_score": 1.0}, models={"clip_score": {"path": models["clip_score"], "scale": 100.0}})
    assert opts.rewards["clip_score"].scale == 100.0


def test_make_reward_without_a_path_names_the_key():
    with pytest.raises(InputError, match=re.escape("set reward_models['pickscore']")):
        make_reward({"judge": 1.0, "pickscore": 1.0})
    with pytest.raises(InputError, match="field 'models.hsp'"):
        make_reward({"judge": 1.0}, models={"hsp": "x"})
    with pytest.raises(InputError, match="field 'models'"):
        make_reward({"judge": 1.0}, models=["hps"])
    with pytest.raises(InputError, match="field 'models.hps'"):
        make_reward({"hps": 1.0}, models={"hps": {"arch": "ViT-H-14"}})


def test_training_with_local_reward_models(base, metas, tmp_path):
    """An RL run scores with reward models read from local checkpoints (`reward_models`), here a tiny HPS and the
    GenEval-HF evaluator on a tiny Mask2Former; every reward is logged and the run saves its final model."""
    from maskfocus.rl import trainer
    from maskfocus.rl.config import make_config
    from maskfocus.scoring.geneval_hf_cli import write_tiny_color_clip, write_tiny_mask2former
    from maskfocus.scoring.hps import write_tiny_hps

    gen = {"path": str(write_tiny_mask2former(tmp_path / "det")), "clip": str(write_tiny_color_clip(tmp_path / "cc"))}
    models = {"hps": str(write_tiny_hps(tmp_path / "hps" / "HPS_v2.1_compressed.pt")), "geneval_hf": gen}
    models["geneval_hf"]["size"] = "processor"
    over = {"prompts_per_iter": 2, "group_size": 2, "steps": 4, "K": 2, "iterations": 1, "log_images_every": 0}
    cfg = make_config(
        "maskfocus",
        {**over, "reward": {"hps": 0.5, "geneval_hf": 0.5}, "reward_models": models, "reward_monitor": "none"},
    )
    with pytest.raises(InputError, match="unknown class"):  # toy prompts: refused before anything is written
        trainer.train(cfg, base, tmp_path / "toy", prompts=metas, progress=False)
    assert not (tmp_path / "toy").exists()
    coco = read_metadata(Path(__file__).parents[1] / "data/benchmarks/geneval/prompts/evaluation_metadata.jsonl")
    s = trainer.train(cfg, base, tmp_path / "run", prompts=coco[:8], progress=False)
    h = s["history"][-1]
    assert {"reward/hps/mean", "reward/geneval_hf/mean"} <= set(h) and np.isfinite(h["reward/hps/mean"])
    assert (tmp_path / "run" / "final" / "transformer" / "config.json").is_file()
    with pytest.raises(InputError) as e:  # a checkpoint reward without its path: refused with the config, key named
        make_config("maskfocus", {**over, "reward": {"hps": 1.0}, "reward_monitor": "none"})
    assert e.value.field == "reward_models.hps" and "reward_models['hps']" in e.value.msg


def test_reward_only_run_reads_plain_prompts(base, tmp_path):
    "A preference-reward run (Table 2's HPS) trains on plain prompts: a .txt file of one prompt per line."
    from maskfocus.rl import trainer
    from maskfocus.rl.config import make_config
    from maskfocus.scoring.hps import write_tiny_hps

    (tmp_path / "p.txt").write_text("a watercolor of a lighthouse\nan astronaut riding a horse\n")
    over = {"prompts_per_iter": 2, "group_size": 2, "steps": 4, "K": 2, "iterations": 1, "log_images_every": 0}
    hps_file = str(write_tiny_hps(tmp_path / "hps" / "HPS_v2.1_compressed.pt"))
    cfg = make_config(
        "maskfocus", {**over, "reward": {"hps": 1.0}, "reward_models": {"hps": hps_file}, "reward_monitor": "none"}
    )
    s = trainer.train(cfg, base, tmp_path / "run", prompts=str(tmp_path / "p.txt"), progress=False)
    assert np.isfinite(s["history"][-1]["reward/hps/mean"])
