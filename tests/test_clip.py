"""Tests of the toy CLIP (`maskfocus.toy.clip`, `clip_train`, `clip_eval`) that do not fit the notebooks: save/load
round trip, bit-exact resume, checkpoint writes that crash or are SIGKILLed half-way, and the scorer's input checks.
The tiny config keeps every training run to a few steps of a few-thousand-parameter ViT (plus the 49408-row token
embedding)."""

import json, os, subprocess, sys, textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from maskfocus.toy import world
from maskfocus.core import InputError
from maskfocus.runs import list_checkpoints, load_checkpoint
from maskfocus.toy.clip import ClipConfig, ClipScorer, build_clip, load_clip, save_clip
from maskfocus.toy.clip_eval import evaluate_clip
from maskfocus.toy.clip_train import make_optimizer, train_clip

CKPT_DIR = "checkpoints"

TRAIN = world.make_splits(0)["train"]
EVAL = TRAIN[::20]  # a few prompts for the end-of-run evaluation
CFG = ClipConfig.tiny(steps=6, batch_size=8, warmup_steps=2, ckpt_every=3, log_every=1, keep_checkpoints=5)


def error_of(fn):
    with pytest.raises(InputError) as info:
        fn()
    return str(info.value)


def checkpoint_tensors(path):
    "Everything of a checkpoint that depends on the run (not the process's global RNGs), as comparable objects."
    state = json.loads((path / "state.json").read_text())
    opt = load_file(str(path / "optimizer.safetensors"))
    return (
        load_file(str(path / "weights.safetensors")),
        {k: v for k, v in opt.items() if k.startswith("state.")},
        state["rng"]["named_numpy"],
        state["step"],
    )


def assert_same_checkpoint(a, b):
    ma, oa, ra, sa = checkpoint_tensors(a)
    mb, ob, rb, sb = checkpoint_tensors(b)
    assert sa == sb and ra == rb
    assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma), "weights differ"
    assert oa.keys() == ob.keys() and all(torch.equal(oa[k], ob[k]) for k in oa), "optimizer state differs"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    "An uninterrupted 6-step run: (its folder, its model)."
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("reference")
    return out, train_clip(CFG, TRAIN, out, eval_prompts=EVAL, progress=False)


def images_and_prompts(n=5, seed=0):
    rng = np.random.default_rng(seed)
    metas = [TRAIN[i] for i in rng.choice(len(TRAIN), n, replace=False)]
    return np.stack([world.render(world.sample_scene(m, rng)) for m in metas]), [m["prompt"] for m in metas]


# ---------------------------------------------------------------- save / load


def test_round_trip_gives_identical_scores(tmp_path, reference):
    _, model = reference
    save_clip(model, CFG, tmp_path / "clip")
    assert sorted(p.name for p in (tmp_path / "clip").iterdir()) == [
        "open_clip_config.json",
        "open_clip_model.safetensors",
        "text_encoder",
        "tokenizer",
    ]
    images, prompts = images_and_prompts()
    before = ClipScorer(model, CFG)(images, prompts)
    after = ClipScorer.load(tmp_path / "clip")(images, prompts)
    assert torch.equal(before, after)
    loaded, cfg = load_clip(tmp_path / "clip")
    assert cfg == CFG and not loaded.training


def test_load_errors_name_the_file(tmp_path):
    assert "open_clip_config.json not found" in error_of(lambda: load_clip(tmp_path / "nowhere"))
    save_clip(build_clip(CFG), CFG, tmp_path / "a")
    save_clip(
        build_clip(ClipConfig.tiny(text_width=48, text_heads=2)), CFG, tmp_path / "b"
    )  # weights of another config
    (tmp_path / "b" / "open_clip_config.json").write_text((tmp_path / "a" / "open_clip_config.json").read_text())
    msg = error_of(lambda: load_clip(tmp_path / "b"))
    assert (
        str(tmp_path / "b" / "open_clip_model.safetensors") in msg
        and "shape mismatch" in msg
        and "model [96, 32], checkpoint [144, 48]" in msg
    )
    (tmp_path / "a" / "open_clip_config.json").write_text('{\n  "model_cfg": \n')
    msg = error_of(lambda: load_clip(tmp_path / "a"))
    assert "not valid JSON" in msg and "open_clip_config.json:3" in msg


# ---------------------------------------------------------------- resume


def test_resume_is_bit_exact(tmp_path, reference):
    ref_dir, ref_model = reference
    out = tmp_path / "run"
    train_clip(CFG, TRAIN, out, eval_prompts=EVAL, stop_after=3, progress=False)
    assert [p.name for p in list_checkpoints(out)] == ["step_0000003"]
    resumed = train_clip(CFG, TRAIN, out, eval_prompts=EVAL, progress=False)
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in ref_model.state_dict().items())
    assert_same_checkpoint(ref_dir / CKPT_DIR / "step_0000006", out / CKPT_DIR / "step_0000006")
    # the metric rows are those of an uninterrupted run, each step once
    steps = [
        int(l.split("\t")[0])
        for l in (out / "dvclive" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()[1:]
    ]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_another_config(tmp_path):
    train_clip(CFG, TRAIN, tmp_path, eval_prompts=EVAL, stop_after=3, progress=False)
    msg = error_of(
        lambda: train_clip(ClipConfig.tiny(**{**CFG.__dict__, "batch_size": 4}), TRAIN, tmp_path, progress=False)
    )
    assert "field 'batch_size'" in msg and "state.json" in msg
    # fields that do not change the trajectory may differ
    train_clip(
        ClipConfig.tiny(**{**CFG.__dict__, "log_every": 2, "steps": 6}),
        TRAIN,
        tmp_path,
        eval_prompts=EVAL,
        progress=False,
    )


def test_crash_during_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch, reference):
    import maskfocus.runs as runs

    real = runs.save_file

    def flaky(tensors, filename):  # the second checkpoint: the weights are written, the optimizer file fails
        if Path(filename).parent.name.startswith(".step_0000006") and Path(filename).name == "optimizer.safetensors":
            Path(filename).write_bytes(b"half a file")
            raise OSError("disk full")
        return real(tensors, filename)

    monkeypatch.setattr(runs, "save_file", flaky)
    with pytest.raises(OSError, match="disk full"):
        train_clip(CFG, TRAIN, tmp_path, eval_prompts=EVAL, progress=False)
    monkeypatch.setattr(runs, "save_file", real)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000003"]
    assert sorted(p.name for p in (tmp_path / CKPT_DIR).iterdir()) == ["step_0000003"], "no half-written folder is left"
    model = build_clip(CFG)
    state = load_checkpoint(list_checkpoints(tmp_path)[-1], {"clip": model}, make_optimizer(model, CFG))
    assert state["step"] == 3
    resumed = train_clip(CFG, TRAIN, tmp_path, eval_prompts=EVAL, progress=False)
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in reference[1].state_dict().items())


KILLER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    import maskfocus.runs as runs
    from maskfocus.toy import world
    from maskfocus.toy.clip import ClipConfig
    from maskfocus.toy.clip_train import train_clip
    cfg = ClipConfig.tiny(**{CFG})
    real = runs.save_file
    def dying(tensors, filename):
        if Path(filename).parent.name.startswith(".step_0000006") and Path(filename).name == "optimizer.safetensors":
            Path(filename).write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGKILL)
        return real(tensors, filename)
    runs.save_file = dying
    train = world.make_splits(0)["train"]
    train_clip(cfg, train, sys.argv[1], eval_prompts=train[::20], progress=False)
""")


def test_sigkill_during_checkpoint_write(tmp_path, reference):
    script = tmp_path / "killer.py"
    script.write_text(KILLER.replace("{CFG}", repr(CFG.__dict__)))
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(script), str(out)], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    leftovers = [p.name for p in (out / CKPT_DIR).iterdir() if p.name.startswith(".")]
    assert len(leftovers) == 1 and leftovers[0].startswith(".step_0000006"), (
        "the killed write left its temporary folder"
    )
    assert [p.name for p in list_checkpoints(out)] == ["step_0000003"]
    resumed = train_clip(CFG, TRAIN, out, eval_prompts=EVAL, progress=False)
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in reference[1].state_dict().items())
    assert_same_checkpoint(reference[0] / CKPT_DIR / "step_0000006", out / CKPT_DIR / "step_0000006")
    assert not [p for p in (out / CKPT_DIR).iterdir() if p.name.startswith(".")], (
        "resume cleans the stale temporary folder"
    )


# ---------------------------------------------------------------- scorer


def test_scorer_shapes_and_errors(reference):
    _, model = reference
    scorer = ClipScorer(model, CFG)
    images, prompts = images_and_prompts(4)
    s = scorer(images, prompts)
    assert s.shape == (4,) and s.dtype == torch.float32 and s.abs().max() <= 1 + 1e-5
    assert torch.allclose(scorer(torch.from_numpy(images), prompts), s)  # uint8 torch
    assert torch.allclose(scorer(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255, prompts), s, atol=1e-6)
    assert scorer.similarity(images, prompts + ["a photo of a circle"]).shape == (4, 5)
    assert "field 'images'" in error_of(lambda: scorer(images[:, :48, :48], prompts))
    assert "[B,64,64,3]" in error_of(lambda: scorer(images[:, :48, :48], prompts))
    assert "field 'images'" in error_of(
        lambda: scorer(torch.zeros(4, 64, 64, 3), prompts)
    )  # float must be channels-first
    assert "field 'images'" in error_of(lambda: scorer(images.astype(np.float32), prompts))
    assert "field 'prompts'" in error_of(lambda: scorer(images, prompts[:3]))
    assert "field 'prompts'" in error_of(lambda: scorer(images, "a photo of a circle"))
    assert "field 'prompts[1]'" in error_of(lambda: scorer(images[:2], ["a photo of a circle", 3]))
    h, p = scorer.encode_text(prompts, layer="final")
    assert h.shape == (4, CFG.context_length, CFG.text_width) and p.shape == (4, CFG.embed_dim)
    with torch.no_grad():
        assert torch.allclose(torch.nn.functional.normalize(p, dim=-1), scorer.text_features(prompts))


def test_evaluate_clip_report(reference):
    ev = evaluate_clip(ClipScorer(reference[1], CFG), world.make_splits(0)["test"], images_per_prompt=1)
    assert set(ev) == {
        "prompts",
        "images_per_prompt",
        "i2t_top1",
        "i2t_chance",
        "t2i_top1",
        "t2i_chance",
        "binding",
        "score",
    }
    assert set(ev["binding"]) == {"color_attr", "position", "position_swap"}
    for k in ("i2t_top1", "i2t_chance", "t2i_top1", "t2i_chance"):
        assert set(ev[k]) == {*world.TAGS, "mean_over_tags", "all_prompts"} and all(0 <= v <= 1 for v in ev[k].values())
    assert ev["i2t_chance"]["single_object"] == pytest.approx(1 / 3)
    json.dumps(ev)
