"""Sharded training (issue 17, item 4): the accelerate configs of `configs/accelerate/`, FSDP on CPU, exact resume
with 2 DDP processes and across world sizes.

- Each config file parses through accelerate's own loader and `accelerate launch`'s own validation, and yields the
  environment the processes read (FSDP2 full shard wrapping the transformer's block classes; ZeRO-2 without deepspeed
  installed).
- accelerate 1.16 does not run FSDP on the CPU: `AcceleratorState` enables `DistributedType.FSDP` only in its branch
  for accelerator devices (MULTI_GPU, MULTI_NPU, MULTI_XPU, ...), so `Accelerator(cpu=True, fsdp_plugin=...)` under 2
  processes is MULTI_CPU and `prepare` wraps the model in DistributedDataParallel (asserted here, so that a newer
  accelerate that changes this is noticed). torch's FSDP2 (`fully_shard`) itself works on CPU with gloo: 2 sharded
  processes give the gradients and the AdamW step of 1 process, and the sharded model and optimizer state round-trip
  through a full (rank-0 gathered) state dict and through a sharded torch.distributed.checkpoint, which 1 process
  loads back (a checkpoint written by 2 processes resumes with 1).
- The RL trainer with 2 DDP processes (gloo): 4 iterations == 2 iterations + resume + 2, bit for bit; the
  2-process checkpoint resumed by 1 process ends where the 2-process run ends (within 1e-5).
- The trainer's own FSDP2 with 2 processes: `engine.sharding: fsdp` (full shard) equals 1 unsharded process (1e-6
  gradients, 1e-5 weights), resumes exactly, and its checkpoint resumes with 1 process; `zero2` (FSDP2 with
  reshard_after_forward=False, ZeRO stage 2), run as 2 iterations + resume + 2, ends bit for bit where the
  uninterrupted fsdp run ends (the same arithmetic: only when the gathered parameters are freed differs), and so
  within 1e-5 of 1 process.

The 2-process FSDP worker is this file run as a script under torchrun (`python -m torch.distributed.run
--nproc_per_node 2 tests/test_sharded.py fsdp <base> <out>`)."""

import copy, json, os, shutil, socket, subprocess, sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CONFIGS = ROOT / "configs" / "accelerate"
LAUNCH = ROOT / "tests" / "_launch_train.py"
WEIGHTS = Path("final") / "transformer" / "diffusion_pytorch_model.safetensors"
TINY = {"prompts_per_iter": 2, "group_size": 2, "steps": 4, "K": 2, "lr": 1e-3, "log_images_every": 0}
BLOCKS = ("DualStreamBlock", "SingleStreamBlock")  # the FSDP shard units (configs/accelerate/fsdp.yaml)
PROMPTS = ["a photo of a red cube", "two blue balls", "a green cone", "a yellow ball and a red cube"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MASKFOCUS_TEST_REWARD": "redness", "PYTHONPATH": str(ROOT)}


# --- the config files ----------------------------------------------------------------------------------------------


def launch_env(name: str) -> tuple[object, dict]:
    "The parsed config and the environment `accelerate launch --config_file` would give 2 processes."
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    path = CONFIGS / f"{name}.yaml"
    cfg = load_config_from_file(str(path))
    argv = ["--config_file", str(path), "--num_processes", "2", "--no_python", "maskfocus", "train"]
    args, defaults, _ = _validate_launch_command(launch_command_parser().parse_args(argv))
    if args.use_deepspeed:  # as launch_command does before the deepspeed launcher
        args.deepspeed_fields_from_accelerate_config = list(defaults.deepspeed_config)
        return cfg, prepare_deepspeed_cmd_env(args)[1]
    return cfg, prepare_multi_gpu_env(args)


def test_configs_parse_with_accelerate(monkeypatch):
    "Every config parses through accelerate's loader and launch validation, to the distributed setup it names."
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
    import maskfocus.models.transformer as tr

    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == ["ddp.yaml", "fsdp.yaml", "zero2.yaml"]
    for p in CONFIGS.glob("*.yaml"):
        assert p.read_text().startswith("# "), f"{p.name}: a header comment says what it is and how to launch it"
    want = {"ddp": DistributedType.MULTI_GPU, "fsdp": DistributedType.FSDP, "zero2": DistributedType.DEEPSPEED}
    for name, kind in want.items():
        cfg, e = launch_env(name)
        assert cfg.distributed_type == kind and cfg.mixed_precision == "bf16", name
        assert e["ACCELERATE_MIXED_PRECISION"] == "bf16", name
    _, e = launch_env("fsdp")
    assert e["ACCELERATE_USE_FSDP"] == "true" and e["FSDP_VERSION"] == "2" and e["FSDP_RESHARD_AFTER_FORWARD"] == "true"
    assert e["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP" and e["FSDP_STATE_DICT_TYPE"] == "FULL_STATE_DICT"
    assert tuple(e["FSDP_TRANSFORMER_CLS_TO_WRAP"].split(",")) == BLOCKS
    assert all(isinstance(getattr(tr, c), type) and issubclass(getattr(tr, c), torch.nn.Module) for c in BLOCKS)
    for k, v in e.items():  # the plugin the processes build from that environment
        monkeypatch.setenv(k, v)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.transformer_cls_names_to_wrap == list(BLOCKS)
    assert plugin.state_dict_type.name == "FULL_STATE_DICT"
    _, e = launch_env("zero2")  # deepspeed is not installed here: the config still parses and launches this far
    assert e["ACCELERATE_USE_DEEPSPEED"] == "true" and e["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "2"
    assert e["ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE"] == "none" and e["ACCELERATE_GRADIENT_CLIPPING"] == "1.0"


# --- FSDP on CPU (torch FSDP2, gloo) -------------------------------------------------------------------------------


def make_batch(pipe, n: int = 4) -> dict:
    "A fixed training batch: half the tokens masked, a masked-token cross-entropy target."
    g = torch.Generator().manual_seed(0)
    h, w = pipe.grid
    target = torch.randint(0, pipe.transformer.codebook_size, (n, h, w), generator=g)
    masked = torch.rand(n, h, w, generator=g) < 0.5
    th, pooled = pipe.encode_prompts(PROMPTS[:n])
    return {
        **{"tokens": torch.where(masked, pipe.transformer.mask_token_id, target), "target": target, "masked": masked},
        **{
            "th": th.detach(),
            "pooled": pooled.detach(),
            "t": torch.linspace(0.2, 0.8, n),
            "micro": pipe.micro_conds(n).clone(),
        },
    }


def batch_loss(model, b: dict, rows: slice) -> torch.Tensor:
    "Mean over the rows of each row's mean masked-token cross-entropy."
    logits = model(b["tokens"][rows], b["th"][rows], b["pooled"][rows], b["t"][rows], b["micro"][rows]).float()
    lp = logits.log_softmax(1).gather(1, b["target"][rows].unsqueeze(1)).squeeze(1)
    m = b["masked"][rows].float()
    return -((lp * m).sum((1, 2)) / m.sum((1, 2)).clamp(min=1)).mean()


def shard(model, mesh):
    "FSDP2 full shard: each block its own unit, then the rest (what fsdp.yaml asks accelerate for)."
    from torch.distributed.fsdp import fully_shard
    import maskfocus.models.transformer as tr

    blocks = tuple(getattr(tr, c) for c in BLOCKS)
    for m in model.modules():
        if isinstance(m, blocks):
            fully_shard(m, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def fsdp_worker(base: str, out: str):
    "One of 2 torchrun processes: accelerate's view of FSDP on CPU, then FSDP2 by hand, step, save, load, step."
    from accelerate import Accelerator
    from accelerate.utils import FullyShardedDataParallelPlugin
    from safetensors.torch import save_file
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from maskfocus.models.pipeline import MaskedPipeline

    torch.set_num_threads(1)
    out = Path(out)
    acc = Accelerator(cpu=True, fsdp_plugin=FullyShardedDataParallelPlugin(fsdp_version=2))  # inits gloo
    probe = acc.prepare_model(torch.nn.Linear(2, 2))
    seen = {"distributed_type": str(acc.distributed_type), "wrapped": type(probe).__name__}
    r, W = dist.get_rank(), dist.get_world_size()
    mesh, rows = init_device_mesh("cpu", (W,)), slice(r * 4 // W, (r + 1) * 4 // W)
    pipe = MaskedPipeline.load(base)
    b = make_batch(pipe)

    def fresh():
        model = shard(MaskedPipeline.load(base).transformer, mesh)
        return model, torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(model, opt):
        opt.zero_grad(set_to_none=True)
        batch_loss(model, b, rows).backward()
        opt.step()

    model, opt = fresh()
    local = sum(p.to_local().numel() for p in model.parameters())
    total = sum(p.numel() for p in model.parameters())
    batch_loss(model, b, rows).backward()
    grads = {n: p.grad.full_tensor() for n, p in model.named_parameters()}
    opt.step()
    full = StateDictOptions(full_state_dict=True)
    msd, osd = get_state_dict(model, opt, options=full)  # the full state on every rank (as if read from one file)
    saved = {k: v.detach().clone() for k, v in msd.items()}  # safetensors cannot read these storages directly
    saved_opt = {f"{k}.{n}": v.detach().clone() for n, st in osd.get("state", {}).items() for k, v in st.items()}
    dcp.save({"model": model.state_dict(), "optim": get_state_dict(model, opt)[1]}, checkpoint_id=str(out / "dcp"))
    m2, o2 = fresh()  # from the full state dict, every rank keeping its shard
    # set_state_dict replaces the values of the dicts it is given by the local shards: give it copies
    set_state_dict(m2, o2, model_state_dict=dict(saved), optim_state_dict=copy.deepcopy(osd), options=full)
    m3, o3 = fresh()  # from the sharded checkpoint
    sd = {"model": m3.state_dict(), "optim": get_state_dict(m3, o3)[1]}
    dcp.load(sd, checkpoint_id=str(out / "dcp"))
    set_state_dict(m3, o3, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
    for m, o in ((model, opt), (m2, o2), (m3, o3)):
        step(m, o)
    after = [{n: p.full_tensor() for n, p in m.named_parameters()} for m in (model, m2, m3)]
    if r == 0:
        save_file({k: v.contiguous() for k, v in grads.items()}, str(out / "grads.safetensors"))
        save_file(saved, str(out / "step1.safetensors"))
        save_file({k: v for k, v in saved_opt.items() if v.ndim > 0}, str(out / "optim1.safetensors"))
        save_file({k: v.contiguous() for k, v in after[0].items()}, str(out / "step2.safetensors"))
        same = [all(torch.equal(a[k], x[k]) for k in a) for a, x in ((after[0], after[1]), (after[0], after[2]))]
        res = {**seen, "world_size": W, "local_params": local, "total_params": total, "same_after_reload": same}
        (out / "result.json").write_text(json.dumps(res))
    dist.barrier()
    dist.destroy_process_group()


def test_fsdp_two_cpu_processes(base, tmp_path):
    """accelerate refuses FSDP on CPU (MULTI_CPU + DDP); FSDP2 by hand with 2 gloo processes: the gradients and the
    AdamW step of 1 process (1e-6), a half-size shard each, and exact state round trips (full and sharded); the
    sharded checkpoint of 2 processes loads into 1 unsharded model."""
    from safetensors.torch import load_file
    import torch.distributed.checkpoint as dcp
    from maskfocus.models.pipeline import MaskedPipeline

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    r = subprocess.run(
        [*cmd, __file__, "fsdp", str(base), str(tmp_path)],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "result.json").read_text())
    assert res["distributed_type"] == "DistributedType.MULTI_CPU" and res["wrapped"] == "DistributedDataParallel"
    assert res["world_size"] == 2 and res["local_params"] < 0.6 * res["total_params"], res  # sharded, not replicated
    assert res["same_after_reload"] == [True, True], "full and sharded state dicts must restore the exact state"
    pipe = MaskedPipeline.load(base)  # the same update in 1 process, the whole batch
    model, b = pipe.transformer, make_batch(pipe)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch_loss(model, b, slice(None)).backward()
    g2 = load_file(tmp_path / "grads.safetensors")
    g1 = {n: p.grad for n, p in model.named_parameters()}
    diff = max(float((g1[k] - g2[k]).abs().max()) for k in g1)
    scale = max(float(g.abs().max()) for g in g1.values())
    print(f"FSDP2 2 processes vs 1: max |g1 - g2| = {diff:.2e}, max |g| = {scale:.2e}")
    assert g1.keys() == g2.keys() and scale > 1e-4 and diff <= 1e-6
    opt.step()
    w2, m2 = load_file(tmp_path / "step1.safetensors"), model.state_dict()
    wdiff = max(float((m2[k] - w2[k]).abs().max()) for k in m2)
    print(f"FSDP2 2 processes vs 1: max |w1 - w2| after one AdamW step (lr 1e-3) = {wdiff:.2e}")
    # AdamW's first step is about lr * sign(g) where |g| is near eps: there 1e-8 of gradient moves 1e-6 of weight
    assert wdiff <= 1e-5, "the sharded AdamW step == the unsharded one, within 1 % of the learning rate"
    o2, names = load_file(tmp_path / "optim1.safetensors"), dict(map(reversed, model.named_parameters()))
    o1 = {f"{k}.{names[p]}": v for p, st in opt.state.items() for k, v in st.items() if v.ndim > 0}
    assert o1.keys() == o2.keys() and all(torch.allclose(o1[k], o2[k], atol=1e-6) for k in o1), "AdamW moments"
    ref = MaskedPipeline.load(base).transformer  # resharding: the 2-process sharded checkpoint into 1 process
    sd = ref.state_dict()
    dcp.load({"model": sd}, checkpoint_id=str(tmp_path / "dcp"))
    assert all(torch.equal(sd[k], w2[k]) for k in sd), "the sharded checkpoint holds the full state"


# --- DDP: exact resume with 2 processes, and across world sizes ----------------------------------------------------


def launch2(base, out, params, *extra, torchrun: bool = False) -> dict:
    "The RL trainer under `accelerate launch` (or torchrun: 5 s less to start), 2 CPU processes (gloo); its summary."
    if torchrun:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
        ]
        cmd += [str(LAUNCH)]
    else:
        cmd = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
        cmd += [
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(free_port()),
            str(LAUNCH),
        ]
    cmd += ["--base", str(base), "--out", str(out), "--params", str(params), "--section", "t", "--no-progress", "--cpu"]
    r = subprocess.run([*cmd, *extra], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return {**json.loads(r.stdout.strip().splitlines()[-1]), "stdout": r.stdout}


def same_tensors(a: Path, b: Path, atol: float = 0.0) -> bool:
    from safetensors.torch import load_file

    ta, tb = load_file(a), load_file(b)
    same = torch.equal if atol == 0 else lambda x, y: torch.allclose(x, y, atol=atol)
    return ta.keys() == tb.keys() and all(same(ta[k], tb[k]) for k in ta)


def test_ddp_exact_resume_and_across_world_sizes(base, metas, tmp_path):
    """2 processes: 4 iterations == 2 + resume + 2, bit for bit (weights, optimizer, summary); the checkpoint of 2
    processes resumed by 1 process ends within 1e-5 of the 2-process run (the same global batch)."""
    import yaml
    from _launch_train import run
    from maskfocus.rl.config import make_config

    over = {**TINY, "iterations": 4, "checkpoint_every": 2}
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"t": {"preset": "maskfocus", **over}}))
    a, b, c = tmp_path / "straight", tmp_path / "resumed", tmp_path / "one"
    assert launch2(base, a, p)["world_size"] == 2
    first = launch2(base, b, p, "--max-iterations", "2")
    assert first["iterations"] == 2 and first["final"] is None
    shutil.copytree(b, c)
    s = launch2(base, b, p)
    assert s["iterations"] == 4 and s["world_size"] == 2 and "iterations 2 -> 4 of 4" in s["stdout"]
    assert same_tensors(a / WEIGHTS, b / WEIGHTS), "2-process resume must be exact"
    assert_same_last_checkpoint(a, b)
    assert (a / "train_summary.json").read_bytes() == (b / "train_summary.json").read_bytes()
    one = run(make_config("maskfocus", over), base, c, metas)  # this process: world size 1
    assert one["start"] == 2 and one["end"] == 4 and one["world_size"] == 1
    from safetensors.torch import load_file

    wa, wc = load_file(a / WEIGHTS), load_file(c / WEIGHTS)
    diff = max(float((wa[k] - wc[k]).abs().max()) for k in wa)
    print(f"resume of a 2-process checkpoint with 1 process: max |w2 - w1| = {diff:.2e}")
    assert wa.keys() == wc.keys() and diff <= 1e-5


# --- the trainer's own FSDP2 (engine.sharding fsdp and zero2), 2 processes ------------------------------------------

FSDP = {**TINY, "iterations": 4, "checkpoint_every": 2, "eval_every": 4, "eval_prompts": 2, "eval_per_prompt": 1}


def fsdp_params(tmp: Path, sharding: str = "fsdp") -> Path:
    import yaml

    p = tmp / f"params_{sharding}.yaml"
    p.write_text(yaml.safe_dump({"t": {"preset": "maskfocus", **FSDP, "engine": {"sharding": sharding}}}))
    return p


def max_diff(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    ta, tb = load_file(a), load_file(b)
    assert ta.keys() == tb.keys()
    return max(float((ta[k].double() - tb[k].double()).abs().max()) for k in ta)


@pytest.fixture(scope="module")
def fsdp_run(base, tmp_path_factory) -> dict:
    "4 iterations of the RL trainer sharded over 2 processes (gloo), with the first update's gradients dumped."
    tmp = tmp_path_factory.mktemp("fsdp")
    out = tmp / "straight"
    s = launch2(base, out, fsdp_params(tmp), "--debug-grads", str(tmp / "grads2.safetensors"))
    return {**s, "out": out, "tmp": tmp}


@pytest.fixture(scope="module")
def one_run(base, metas, tmp_path_factory) -> Path:
    "The same run unsharded in this process (world size 1): folder `one`, the first update's gradients in g1.st."
    from _launch_train import run
    from maskfocus.rl.config import make_config

    tmp = tmp_path_factory.mktemp("one")
    one = run(make_config("maskfocus", FSDP), base, tmp / "one", metas, debug_grads_path=tmp / "g1.st")
    assert one["world_size"] == 1 and one["end"] == 4 and "eval/accuracy" in one["history"][-1]
    return tmp


def test_fsdp_trainer_matches_one_process(fsdp_run, one_run, base):
    """engine.sharding fsdp with 2 processes == sharding none with 1 process on the same global batch: the first
    update's gradients within 1e-6, the trained weights after 4 iterations (rollouts, evaluation at iteration 4,
    checkpoints, final save) within 1e-5."""
    s, a = fsdp_run, fsdp_run["out"]
    assert s["world_size"] == 2 and s["iterations"] == 4 and "train: 2 process(es), FSDP2 shards (fsdp)" in s["stdout"]
    g = max_diff(fsdp_run["tmp"] / "grads2.safetensors", one_run / "g1.st")
    w = max_diff(a / WEIGHTS, one_run / "one" / WEIGHTS)
    print(f"FSDP2 trainer, 2 processes vs 1 unsharded: max |g2 - g1| = {g:.2e} (first update), max |w2 - w1| = {w:.2e}")
    assert g <= 1e-6 and w <= 1e-5
    from safetensors.torch import load_file

    w0 = load_file(Path(base) / "transformer" / "diffusion_pytorch_model.safetensors")
    assert max(float((load_file(a / WEIGHTS)[k] - v).abs().max()) for k, v in w0.items()) > 1e-4, "it trained"


def assert_same_last_checkpoint(a, b):
    "The last checkpoints of runs `a` and `b` are both step 4 with equal weights and AdamW state, bit for bit."
    from maskfocus.runs import list_checkpoints

    ca, cb = list_checkpoints(a / "run")[-1], list_checkpoints(b / "run")[-1]
    assert ca.name == cb.name == "step_0000004"
    for f in ("weights.safetensors", "optimizer.safetensors"):
        assert same_tensors(ca / f, cb / f), f


def test_fsdp_exact_resume_and_one_process(fsdp_run, base, metas, tmp_path):
    """Sharded, 2 processes: 2 iterations + resume + 2 == 4 iterations bit for bit (final weights, the gathered
    checkpoint's weights and AdamW state, summary); the sharded checkpoint (full state, the unsharded layout) resumed
    by 1 unsharded process ends within 1e-5 of the sharded run."""
    from _launch_train import run
    from maskfocus.rl.config import make_config

    a, b, c = fsdp_run["out"], tmp_path / "resumed", tmp_path / "one"
    p = fsdp_params(tmp_path)
    first = launch2(base, b, p, "--max-iterations", "2")
    assert first["iterations"] == 2 and first["final"] is None
    shutil.copytree(b, c)
    s = launch2(base, b, p)
    assert s["iterations"] == 4 and "iterations 2 -> 4 of 4" in s["stdout"]
    assert same_tensors(a / WEIGHTS, b / WEIGHTS), "a sharded resume must be exact"
    assert_same_last_checkpoint(a, b)
    assert (a / "train_summary.json").read_bytes() == (b / "train_summary.json").read_bytes()
    one = run(make_config("maskfocus", FSDP), base, c, metas)  # sharding none, world size 1
    assert one["start"] == 2 and one["end"] == 4 and one["world_size"] == 1
    diff = max_diff(a / WEIGHTS, c / WEIGHTS)
    print(f"resume of a 2-process FSDP2 checkpoint with 1 unsharded process: max |w2 - w1| = {diff:.2e}")
    assert diff <= 1e-5


def test_zero2_matches_fsdp_and_resumes_exactly(fsdp_run, one_run, base, tmp_path):
    """engine.sharding zero2 (FSDP2, reshard_after_forward=False), 2 processes under torchrun, 2 iterations + resume
    + 2: its step-2 checkpoint, first-update gradients, final weights and step-4 checkpoint (weights, AdamW state)
    equal the uninterrupted fsdp run's bit for bit, so a zero2 checkpoint resumes exactly (and, being the fsdp
    layout, with 1 process); against 1 unsharded process: gradients within 1e-6, final weights within 1e-5."""
    from maskfocus.runs import list_checkpoints

    a, b = fsdp_run["out"], tmp_path / "zero2"
    p = fsdp_params(tmp_path, "zero2")
    first = launch2(base, b, p, "--max-iterations", "2", "--debug-grads", str(tmp_path / "g.st"), torchrun=True)
    assert first["iterations"] == 2 and first["final"] is None
    assert "train: 2 process(es), FSDP2 shards (zero2)" in first["stdout"]
    assert same_tensors(tmp_path / "g.st", fsdp_run["tmp"] / "grads2.safetensors"), "first-update gradients"
    ck2 = [c for c in list_checkpoints(b / "run") if c.name == "step_0000002"]
    for f in ("weights.safetensors", "optimizer.safetensors"):
        assert same_tensors(ck2[0] / f, a / "run" / "checkpoints" / "step_0000002" / f), f
    s = launch2(base, b, p, torchrun=True)
    assert s["iterations"] == 4 and "iterations 2 -> 4 of 4" in s["stdout"]
    assert same_tensors(a / WEIGHTS, b / WEIGHTS), "zero2 resumed == fsdp uninterrupted, bit for bit"
    assert_same_last_checkpoint(a, b)
    sa, sb = (json.loads((d / "train_summary.json").read_text()) for d in (a, b))
    assert sb["config"]["engine"].pop("sharding") == "zero2" and sa["config"]["engine"].pop("sharding") == "fsdp"
    assert sa == sb, "the summaries differ only in the sharding knob"
    g = max_diff(tmp_path / "g.st", one_run / "g1.st")
    w = max_diff(b / WEIGHTS, one_run / "one" / WEIGHTS)
    print(f"zero2 trainer, 2 processes vs 1 unsharded: max |g2 - g1| = {g:.2e} (first update), max |w2 - w1| = {w:.2e}")
    assert g <= 1e-6 and w <= 1e-5


if __name__ == "__main__" and sys.argv[1:2] == ["fsdp"]:
    sys.path.insert(0, str(ROOT))
    fsdp_worker(*sys.argv[2:4])
