"""`--device` on every command that runs a model (issue 17): on the CPU the outputs are byte-identical to a command
without the option; a GPU that is not there is one `error:` line and exit status 2; `maskfocus train` takes its GPUs
from CUDA_VISIBLE_DEVICES. Small and fast: a tiny random model, a few images, one thread."""

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from maskfocus.cli import main

ROOT = Path(__file__).resolve().parents[1]
TEST_SPLIT = ROOT / "data" / "prompts" / "test_metadata.jsonl"
TRAIN_SPLIT = ROOT / "data" / "prompts" / "train_metadata.jsonl"
CUDA = torch.cuda.is_available()


@pytest.fixture
def meta(tmp_path):
    "Three prompts of the test split."
    p = tmp_path / "meta.jsonl"
    p.write_text("\n".join(TEST_SPLIT.read_text().splitlines()[:3]) + "\n")
    return p


def files(folder: Path) -> dict:
    "Every file under `folder`: relative path -> bytes."
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def sample_args(base, meta, out, *extra):
    return ["sample", "--model", str(base), "--metadata", str(meta), "--out", str(out), "--per-prompt", "2"] + [
        "--steps",
        "4",
        "--batch",
        "4",
        *extra,
    ]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# ---- on the CPU: --device cpu (and auto, which is the CPU here) change nothing ----


def test_sample_on_the_cpu_is_byte_identical(base, meta, tmp_path, capsys):
    devices = ["cpu"] + ([] if CUDA else ["auto"])  # auto is CUDA on a GPU machine: another random stream
    assert main(sample_args(base, meta, tmp_path / "none")) == 0
    ref = files(tmp_path / "none")
    assert len([k for k in ref if k.endswith(".png")]) == 6
    for d in devices:
        assert main(sample_args(base, meta, tmp_path / d, "--device", d)) == 0
        assert files(tmp_path / d) == ref, f"--device {d} changed the images"


def test_evaluate_on_the_cpu_is_byte_identical(base, meta, tmp_path):
    args = ["evaluate", "--model", str(base), "--metadata", str(meta), "--steps", "4", "--cfg", "1", "3"]
    args += ["--per-prompt", "1", "--batch", "2"]
    assert main(args + ["--out", str(tmp_path / "none")]) == 0
    assert main(args + ["--out", str(tmp_path / "cpu"), "--device", "cpu"]) == 0
    a, b = (
        json.loads((tmp_path / "none" / "eval.json").read_text()),
        json.loads((tmp_path / "cpu" / "eval.json").read_text()),
    )
    for s in (a, b):  # wall times differ from run to run
        for row in s.values():
            row.pop("wall_s")
    assert a == b
    assert files(tmp_path / "none" / "results") == files(tmp_path / "cpu" / "results")


def test_pretrain_on_the_cpu_is_byte_identical(tmp_path):
    from maskfocus.toy.pretrain import PretrainConfig

    cfg = PretrainConfig(dim=32, heads=2, layers=1, single_layers=1, text_dim=32, text_layers=1, steps=2, batch=4)
    params = tmp_path / "p.yaml"
    d = {**asdict(cfg), "step_choices": list(cfg.step_choices), "warmup": 1, "checkpoint_every": 2, "log_every": 1}
    params.write_text(json.dumps({"pretrain": d}))  # JSON is YAML
    for name, extra in (("none", []), ("cpu", ["--device", "cpu"])):
        args = [
            "pretrain",
            "--params",
            str(params),
            "--train",
            str(TRAIN_SPLIT),
            "--run",
            str(tmp_path / f"run_{name}"),
        ]
        assert main(args + ["--out", str(tmp_path / name), *extra]) == 0
    assert files(tmp_path / "none") == files(tmp_path / "cpu")
    ck = "checkpoints/step_0000002/weights.safetensors"
    assert files(tmp_path / "run_none")[ck] == files(tmp_path / "run_cpu")[ck]


def test_train_clip_on_the_cpu_is_byte_identical(tmp_path):
    from maskfocus.toy.clip_config import ClipConfig

    params = tmp_path / "p.yaml"
    cfg = asdict(ClipConfig.tiny(steps=2, warmup_steps=1, ckpt_every=2, eval_every=0))
    params.write_text(json.dumps({"train_clip": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}}))
    metrics = {}
    for name, extra in (("none", []), ("cpu", ["--device", "cpu"])):
        args = ["train-clip", "--params", str(params), "--train", str(TRAIN_SPLIT), "--test", str(TEST_SPLIT)]
        args += ["--run", str(tmp_path / f"run_{name}"), "--out", str(tmp_path / name)]
        assert main(args + ["--metrics", str(tmp_path / f"{name}.json"), *extra]) == 0
        metrics[name] = {
            k: v for k, v in json.loads((tmp_path / f"{name}.json").read_text()).items() if "seconds" not in k
        }
    assert files(tmp_path / "none") == files(tmp_path / "cpu") and metrics["none"] == metrics["cpu"]


# ---- a GPU that is not there: one line, exit status 2 ----


@pytest.mark.parametrize("device", ["gpu", "tpu:0"] + ([] if CUDA else ["cuda", "cuda:0"]))
def test_a_missing_device_is_one_line(device, base, meta, tmp_path, capsys):
    assert main(sample_args(base, meta, tmp_path / "out", "--device", device)) == 2
    line = one_error_line(capsys)
    assert "field 'device'" in line and repr(device) in line
    assert not (tmp_path / "out").exists(), "nothing written"


@pytest.mark.skipif(CUDA, reason="a GPU is visible")
@pytest.mark.parametrize("command", ["evaluate", "pretrain", "train-clip", "serve-reward"])
def test_every_command_refuses_a_missing_gpu(command, base, meta, tmp_path, capsys):
    args = {
        "evaluate": ["--model", str(base), "--metadata", str(meta), "--out", str(tmp_path / "o")],
        "pretrain": ["--run", str(tmp_path / "r"), "--out", str(tmp_path / "o")],
        "train-clip": ["--run", str(tmp_path / "r"), "--out", str(tmp_path / "o"), "--metrics", str(tmp_path / "m")],
        "serve-reward": ["--reward", "judge", "--port", "0"],
    }[command]
    assert main([command, *args, "--device", "cuda"]) == 2
    assert "no CUDA GPU is visible" in one_error_line(capsys)
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(CUDA, reason="a GPU is visible")
def test_the_installed_command_refuses_a_missing_gpu(base, meta, tmp_path, run_cli):
    r = run_cli(*sample_args(base, meta, tmp_path / "out", "--device", "cuda"))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: field 'device': device 'cuda': no CUDA GPU is visible (use --device cpu or auto)"
    ], r.stderr


# ---- maskfocus train: --device, the deprecated --cpu, GPUs from CUDA_VISIBLE_DEVICES ----


def test_train_passes_the_device_and_cpu_is_its_alias(base, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr("maskfocus.rl.trainer.train", lambda *a, **kw: seen.append(kw) or {"rank": 1})
    args = ["train", "--base", str(base), "--out", str(tmp_path / "o"), "--no-progress"]
    assert main(args) == 0 and main(args + ["--cpu"]) == 0 and main(args + ["--device", "cuda"]) == 0
    assert [kw["device"] for kw in seen] == ["auto", "cpu", "cuda"] and all("cpu" not in kw for kw in seen)


@pytest.mark.skipif(CUDA, reason="a GPU is visible")
def test_train_refuses_a_missing_gpu(base, tmp_path, capsys):
    assert (
        main(["train", "--base", str(base), "--out", str(tmp_path / "o"), "--device", "cuda:1", "--no-progress"]) == 2
    )
    assert "no CUDA GPU is visible" in one_error_line(capsys)


def test_train_takes_gpus_from_cuda_visible_devices(base, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as if two GPUs were visible
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert (
        main(["train", "--base", str(base), "--out", str(tmp_path / "o"), "--device", "cuda:1", "--no-progress"]) == 2
    )
    line = one_error_line(capsys)
    assert "CUDA_VISIBLE_DEVICES" in line and "field 'device'" in line
    assert not (tmp_path / "o").exists()


# ---- on a GPU ----


@pytest.mark.skipif(not CUDA, reason="no CUDA GPU")
def test_sample_on_cuda(base, meta, tmp_path):
    from maskfocus.toy.evaluate import generate_for_metadata
    from maskfocus.models.pipeline import MaskedPipeline
    from maskfocus import geneval

    assert main(sample_args(base, meta, tmp_path / "cuda", "--device", "cuda")) == 0
    assert len(list((tmp_path / "cuda").glob("*/samples/*.png"))) == 6
    assert main(sample_args(base, meta, tmp_path / "cuda2", "--device", "cuda:0")) == 0
    assert files(tmp_path / "cuda") == files(tmp_path / "cuda2"), "CUDA sampling is reproducible"
    pipe = MaskedPipeline.load(base, device="cuda")
    ims = generate_for_metadata(pipe, geneval.read_metadata(meta), 2, 0, 4, None, 4)
    assert all(im.shape == (64, 64, 3) for per in ims for im in per)
