"""The RL trainer's bars (issue 6): exact resume, a SIGKILL in the middle of a checkpoint, every trainable
parameter moves, the KL reference exists only when beta > 0, and 2 processes (gloo, CPU) give the gradients of 1.

All runs use a tiny random toy pipeline and a pixel reward (`tests/_launch_train.py`): a random model draws no
objects, so the judge would give every sample 0 and every advantage would be 0."""

import json, os, random, signal, socket, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from _launch_train import Redness, run
from maskfocus.runs import list_checkpoints, load_checkpoint
from maskfocus.rl.config import make_config
from maskfocus.models.pipeline import MaskedPipeline
import maskfocus.rl.trainer as trainer
import maskfocus.rl.command as command
import maskfocus.rl.state as state

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LAUNCH = ROOT / "tests" / "_launch_train.py"
TINY = {"prompts_per_iter": 2, "group_size": 2, "steps": 4, "K": 2, "lr": 1e-3, "log_images_every": 0}
WEIGHTS = Path("final") / "transformer" / "diffusion_pytorch_model.safetensors"


def params_yaml(tmp_path, preset="maskfocus", **over):
    "A params file with section `t` = preset + TINY + overrides (what the subprocess runs read)."
    import yaml

    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"t": {"preset": preset, **TINY, **over}}))
    return p


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "MASKFOCUS_TEST_REWARD": "redness"}


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_file(a), load_file(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_exact_resume(base, metas, tmp_path):
    "4 iterations == 2 iterations + resume (from a fresh process state) + 2 iterations, bit for bit, on CPU."
    cfg = make_config("maskfocus", {**TINY, "iterations": 4, "checkpoint_every": 2})
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    straight = run(cfg, base, tmp_path / "a", metas)
    torch.manual_seed(2)
    np.random.seed(2)
    random.seed(2)  # two processes start from different global states
    first = run(cfg, base, tmp_path / "b", metas, max_iterations=2)
    assert first["end"] == 2 and first["final"] is None and not (tmp_path / "b" / "final").exists()
    torch.manual_seed(123)
    np.random.seed(5)
    random.seed(7)  # a new process would start from other global states
    second = run(cfg, base, tmp_path / "b", metas)
    assert second["start"] == 2 and second["end"] == 4
    assert same_weights(tmp_path / "a" / WEIGHTS, tmp_path / "b" / WEIGHTS), "resume must be exact"
    ca, cb = list_checkpoints(tmp_path / "a" / "run")[-1], list_checkpoints(tmp_path / "b" / "run")[-1]
    assert ca.name == cb.name == "step_0000004"
    oa, ob = load_file(ca / "optimizer.safetensors"), load_file(cb / "optimizer.safetensors")
    assert all(torch.equal(oa[k], ob[k]) for k in oa if k.startswith("state.")), "optimizer moments too"
    assert all(torch.equal(oa[k], ob[k]) for k in oa if k.startswith("rng.")), (
        "the saved RNG states too (globals seeded by train)"
    )
    ja, jb = (json.loads((c / "state.json").read_text())["rng"] for c in (ca, cb))
    assert ja == jb, "python and numpy states too"
    assert [h["reward/mean"] for h in straight["history"][2:]] == [h["reward/mean"] for h in second["history"]]
    assert any(
        not torch.equal(a, b)
        for a, b in zip(
            load_file(base / "transformer" / "diffusion_pytorch_model.safetensors").values(),
            load_file(tmp_path / "a" / WEIGHTS).values(),
        )
    ), "training moved the weights"


def test_sigkill_mid_checkpoint(base, metas, tmp_path):
    "A process killed while writing checkpoint 4 leaves checkpoint 2 loadable; resuming ends where a straight run ends."
    p = params_yaml(tmp_path, iterations=6, checkpoint_every=2)
    out = tmp_path / "killed"
    r = subprocess.run(
        [
            sys.executable,
            str(LAUNCH),
            "--base",
            str(base),
            "--out",
            str(out),
            "--params",
            str(p),
            "--section",
            "t",
            "--no-progress",
            "--cpu",
        ],
        cwd=ROOT,
        env={**env(), "MASKFOCUS_TEST_KILL_AT": "4"},
        capture_output=True,
        text=True,
    )
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    ck = out / "run" / "checkpoints"
    assert [c.name for c in list_checkpoints(out / "run")] == ["step_0000002"]
    assert any(c.name.startswith(".step_0000004.") for c in ck.iterdir()), "the kill hit the write of checkpoint 4"
    model = MaskedPipeline.load(base).transformer
    st = load_checkpoint(out / "run", {"transformer": model})
    assert st["step"] == 2 and st["extra"]["iteration"] == 2
    cfg = make_config("maskfocus", {**TINY, "iterations": 6, "checkpoint_every": 2})
    resumed = run(cfg, base, out, metas)
    assert resumed["start"] == 2 and resumed["end"] == 6
    assert sorted(c.name for c in ck.iterdir()) == ["step_0000004", "step_0000006"], (
        "stale temporary folder removed, rotation kept 2"
    )
    rows = [
        r_.split("\t")
        for r_ in (out / "run" / "dvclive" / "plots" / "metrics" / "reward" / "mean.tsv").read_text().splitlines()
    ]
    steps = [int(r_[rows[0].index("step")]) for r_ in rows[1:]]
    assert steps == [1, 2, 3, 4, 5, 6], "metrics of the killed iterations 3-4 were dropped, then re-logged once"
    run(cfg, base, tmp_path / "straight", metas)
    assert same_weights(out / WEIGHTS, tmp_path / "straight" / WEIGHTS)


def test_update_moves_every_parameter_and_reference(base, metas, tmp_path):
    "One update changes every trainable parameter; KL > 0 after it; beta = 0 builds no reference model."
    cfg = make_config(
        "maskfocus", {**TINY, "iterations": 2, "checkpoint_every": 1, "keep_checkpoints": 0, "weight_decay": 0.0}
    )
    n0 = state.REFERENCE_COPIES
    s = run(cfg, base, tmp_path / "kl", metas)
    assert state.REFERENCE_COPIES == n0 + 1 and s["has_reference"]
    assert s["params_without_grad"] == [], f"parameters without gradient: {s['params_without_grad']}"
    w0 = load_file(base / "transformer" / "diffusion_pytorch_model.safetensors")
    w1 = load_file(list_checkpoints(tmp_path / "kl" / "run")[0] / "weights.safetensors")
    w1 = {k[len("transformer.") :]: v for k, v in w1.items()}
    trainable = [n for n, p in MaskedPipeline.load(base).transformer.named_parameters() if p.requires_grad]
    unchanged = [n for n in trainable if torch.equal(w0[n], w1[n])]
    assert not unchanged, f"unchanged after one update: {unchanged}"
    h = s["history"]
    assert h[0]["update/kl"] == 0.0 and h[1]["update/kl"] > 0
    cfg0 = make_config("maskfocus", {**TINY, "iterations": 1, "beta": 0.0})
    s0 = run(cfg0, base, tmp_path / "nokl", metas)
    assert state.REFERENCE_COPIES == n0 + 1 and not s0["has_reference"], "beta = 0: no reference model"
    assert s0["history"][0]["update/kl"] == 0.0
    sm = run(make_config("mask_grpo", {**TINY, "iterations": 1}), base, tmp_path / "mg", metas)
    assert not sm["has_reference"] and state.REFERENCE_COPIES == n0 + 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("preset", ["maskfocus", "maskgrpo"])
def test_two_processes_same_gradients(base, metas, tmp_path, preset):
    "accelerate launch, 2 CPU processes (gloo) vs 1 process, same global batch: the synced gradients agree to 1e-6."
    over = (
        {"iterations": 1, "mu": 2} if preset == "maskgrpo" else {"iterations": 1}
    )  # maskgrpo: token_mean batch, per-group masks
    cfg = make_config(preset, {**TINY, **over})
    g1 = tmp_path / "g1.safetensors"
    s1 = run(cfg, base, tmp_path / "one", metas, debug_grads_path=g1)
    assert s1["world_size"] == 1
    p = params_yaml(tmp_path, preset, **over)
    g2 = tmp_path / "g2.safetensors"
    cmd = [
        str(BIN / "accelerate"),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        str(LAUNCH),
        "--base",
        str(base),
        "--out",
        str(tmp_path / "two"),
        "--params",
        str(p),
        "--section",
        "t",
        "--no-progress",
        "--cpu",
        "--debug-grads",
        str(g2),
    ]
    r = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["world_size"] == 2, "the launch must really start 2 processes"
    a, b = load_file(g1), load_file(g2)
    from safetensors import safe_open

    with safe_open(str(g2), "pt") as f:
        assert f.metadata()["world_size"] == "2"
    assert a.keys() == b.keys()
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    scale = max(float(a[k].abs().max()) for k in a)
    print(f"{preset}: max |g1 - g2| = {diff:.2e}, max |g| = {scale:.2e}")
    assert scale > 1e-4, "gradients must not be trivially zero"
    assert diff <= 1e-6
    assert same_weights(tmp_path / "one" / WEIGHTS, tmp_path / "two" / WEIGHTS) or all(
        torch.allclose(x, y, atol=1e-5)
        for x, y in zip(load_file(tmp_path / "one" / WEIGHTS).values(), load_file(tmp_path / "two" / WEIGHTS).values())
    )


def test_cli_errors_name_the_source(base, tmp_path):
    "Unknown keys name the params file or --set; exit status 2, nothing written."
    p = tmp_path / "params.yaml"
    p.write_text("t:\n  preset: maskfocus\n  learning_rate: 0.1\n")
    r = subprocess.run(
        [
            sys.executable,
            str(LAUNCH),
            "--base",
            str(base),
            "--out",
            str(tmp_path / "o"),
            "--params",
            str(p),
            "--section",
            "t",
        ],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and f"error: {p}, field 'learning_rate'" in r.stderr
    assert command.train_main(["--base", str(base), "--out", str(tmp_path / "o"), "--set", "dr.temp=1"]) == 2
    assert not (tmp_path / "o").exists()


def test_pipeline_stage_flags(base, tmp_path):
    """What a DVC stage runs: --report keeps metrics apart; --restart-on-change resumes an interrupted run and
    restarts a changed one."""
    p = params_yaml(tmp_path, iterations=2, checkpoint_every=1)

    def launch(*extra, section="t"):
        return subprocess.run(
            [
                sys.executable,
                str(LAUNCH),
                "--base",
                str(base),
                "--out",
                str(tmp_path / "o"),
                "--params",
                str(p),
                "--section",
                section,
                "--report",
                str(tmp_path / "r"),
                "--no-progress",
                *extra,
            ],
            cwd=ROOT,
            env=env(),
            capture_output=True,
            text=True,
        )

    r = launch("--max-iterations", "1", "--restart-on-change")  # interrupted after iteration 1
    assert r.returncode == 0, r.stderr
    r = launch("--restart-on-change")  # resumes: iteration 2 only
    assert r.returncode == 0, r.stderr
    steps = [
        int(l.split("\t")[0])
        for l in (tmp_path / "r" / "dvclive" / "plots" / "metrics" / "reward" / "mean.tsv").read_text().splitlines()[1:]
    ]
    assert steps == [1, 2]
    summary = json.loads((tmp_path / "r" / "train_summary.json").read_text())
    assert summary["iterations"] == 2 and summary["config"]["lr"] == TINY["lr"]
    p.write_text(p.read_text().replace("lr: 0.001", "lr: 0.002"))
    r = launch()  # another config, no flag: refused, nothing changed
    assert r.returncode == 2 and "another configuration" in r.stderr and "lr" in r.stderr
    r = launch("--restart-on-change")  # another config with the flag: starts over
    assert r.returncode == 0 and "starting over" in r.stdout, r.stderr
    assert json.loads((tmp_path / "r" / "train_summary.json").read_text())["config"]["lr"] == 0.002
    ck = list_checkpoints(tmp_path / "o" / "run")
    assert [c.name for c in ck][-1] == "step_0000002" and json.loads((ck[-1] / "state.json").read_text())["extra"][
        "config"
    ]["lr"] == 0.002


def test_reward_from_a_server(base, metas, tmp_path):
    """Paper-scale rewards run as services: `reward_servers` names a URL that `reward` then weights; reward_monitor none
    skips the toy judge."""
    from maskfocus.rl.reward_server import RewardServerError, serve_reward

    server, url = serve_reward(Redness())
    try:
        cfg = make_config(
            "maskfocus",
            {**TINY, "iterations": 1, "reward": {"red": 1.0}, "reward_servers.red": url, "reward_monitor": "none"},
        )
        s = trainer.train(cfg, base, tmp_path / "o", prompts=metas, progress=False)
    finally:
        server.shutdown()
        server.server_close()
    h = s["history"][-1]
    assert "reward/red/mean" in h and 0 <= h["reward/red/mean"] <= 1
    assert not any(k.startswith("judge/") for k in h), "no toy-judge monitor at reward_monitor none"
    stopped = make_config(
        "maskfocus", {**TINY, "iterations": 1, "reward": {"red": 1.0}, "reward_servers.red": url, "reward_timeout": 5}
    )
    with pytest.raises(RewardServerError, match=url.rstrip("/")):  # the server is gone: the error names it
        trainer.train(stopped, base, tmp_path / "p", prompts=metas, progress=False)


def test_reward_without_mean_constant_warning_and_progress_lines(base, metas, tmp_path, capsys):
    """A reward whose info lacks mean/std still logs reward/mean (of its scores); an all-constant reward is warned
    once per call on stderr; without a bar the main process prints a line every checkpoint_every iterations."""
    flat = lambda images, prompts, metadata=None: (np.full(len(images), 0.25, np.float32), {})
    cfg = make_config("maskfocus", {**TINY, "iterations": 3, "checkpoint_every": 2})
    s = trainer.train(cfg, base, tmp_path / "o", prompts=metas, reward_fn=flat, progress=False)
    assert [h["reward/mean"] for h in s["history"]] == [0.25] * 3 and s["history"][0]["reward/std"] == 0.0
    mean_tsv = tmp_path / "o" / "run" / "dvclive" / "plots" / "metrics" / "reward" / "mean.tsv"
    assert len(mean_tsv.read_text().splitlines()) == 1 + 3, "a reward curve in dvclive"
    out, err = capsys.readouterr()
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "iteration 1" in warnings[0] and "advantage is 0" in warnings[0], err
    lines = [line for line in out.splitlines() if line.startswith("train: iteration")]
    assert [line.split(", KL ")[0] for line in lines] == [
        "train: iteration 2/3, reward mean 0.2500",  # every checkpoint_every = 2 iterations
        "train: iteration 3/3, reward mean 0.2500",  # and after the last one
    ], out
    trainer.train(cfg, base, tmp_path / "p", prompts=metas, reward_fn=Redness(), progress=False, max_iterations=1)
    assert "warning:" not in capsys.readouterr().err, "a reward that varies is not warned"


def test_group_size_one_is_refused(base, tmp_path, capsys):
    "G = 1: every group advantage is 0, no learning signal; refused with a clear error before anything is written."
    argv = ["--base", str(base), "--out", str(tmp_path / "o"), "--set", "group_size=1", "--no-progress"]
    assert command.train_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: field 'group_size': group_size must be >= 2") and "no learning signal" in err, err
    assert not (tmp_path / "o").exists()


def test_encode_prompts_of_a_frozen_text_tower_keeps_no_graph(base):
    "A frozen text tower runs under no_grad (no graph kept), with the same outputs; a trainable one keeps its graph."
    pipe = MaskedPipeline.load(base)
    prompts = ["a photo of a red cube", "two blue balls"]
    trainable = any(p.requires_grad for p in pipe.text_encoder.parameters())
    if trainable:
        h, pooled = pipe.encode_prompts(prompts)
        assert h.requires_grad and h.grad_fn is not None, "a trainable tower keeps its graph"
    pipe.text_encoder.requires_grad_(False)
    h0, p0 = pipe.text_encoder(prompts)  # the frozen tower called directly, autograd on
    h1, p1 = pipe.encode_prompts(prompts)
    assert h1.grad_fn is None and p1.grad_fn is None and not h1.requires_grad
    assert torch.equal(h0, h1) and torch.equal(p0, p1)
