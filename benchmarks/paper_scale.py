"""Paper-scale cost of MaskFocus on a GPU: rollout images/s, seconds per selected-step update, peak memory and model
FLOPs utilisation of a Meissonic-size transformer (random weights, 1024^2 = 64x64 tokens, N = 64, CFG 5, G = 8),
for fp32 / bf16 x without / with gradient checkpointing, MaskFocus (K = 6 selected steps) vs all steps (Mask-GRPO).

NOT RUN ON A GPU YET: no GPU machine has been available to this project so far. Only `--size tiny` has run, on
CPU (tests/test_paper_scale_bench.py); every CUDA path here (autocast, TF32, memory counters, out-of-memory records)
is untested on a GPU. On a GPU machine run `bash benchmarks/gpu_check.sh` (benchmarks/README.md) and commit its folder.

One process, one model built directly on the target device with random weights (no download); the text states are
random tensors of the released shapes (77 x 1024 hidden states, a 1024-d pooled vector; one prompt, G samples).
- rollout: `maskfocus.rl.rollout.record_trajectory`, MaskFocus's sampler (Dynamic Routing on, CFG, G samples of one
  prompt); images/s = G / seconds; per precision (checkpointing acts only where gradients are recorded);
- update: one selected step of G samples, forward + backward of its log-probs through
  `maskfocus.rl.estimator.step_logps` and `maskfocus.rl.grpo.grpo_loss` as the trainer does (MaskFocus:
  `remask_random`, beta 0.01, plus its no-grad reference forward, timed apart; Mask-GRPO: `trajectory_replay`,
  candidate 1, one ratio per step, beta 0), on a synthetic trajectory with the sampler's mask schedule; one step is
  timed and multiplied by K (MaskFocus) and by N (Mask-GRPO); `--loops` also times the whole K- and N-step loops
  (default at the tiny and small sizes) to check the multiplication;
- peak memory per phase: `torch.cuda.max_memory_allocated` on CUDA; on CPU the process's peak resident set size
  (Linux VmHWM, reset through /proc/self/clear_refs; else `resource.getrusage` ru_maxrss, never reset): the JSON's
  `memory_method` says which;
- model FLOPs: `torch.utils.flop_counter.FlopCounterMode` on one forward, and one forward + backward, of one sample
  on the meta device (exact for matmuls, convolutions and attention; elementwise work and sampling not counted),
  scaled by rows and steps. MFU = model FLOPs / seconds / `--peak-tflops` (default 989: H100/H200 SXM bf16 dense,
  for every precision; TF32 dense peaks at half that). Checkpointing's recomputation is not a model FLOP (listed
  apart);
- bf16 vs fp32 logits and log-probs of one step batch (same weights, same inputs).
Ratios are against the fp32 variant without checkpointing of the same run. The JSON is rewritten (atomically) after
every variant with "complete": false until the end, so a run cut short still leaves its numbers; a CUDA
out-of-memory error is recorded per variant ("status": "oom"), not raised.

    .venv/bin/python benchmarks/paper_scale.py --size paper --device cuda --out results/benchmarks/paper_scale.json
    .venv/bin/python benchmarks/paper_scale.py --size tiny --device cpu --out /tmp/paper_scale_tiny.json
    .venv/bin/python benchmarks/paper_scale.py --size paper --estimate-only  # FLOPs and a time estimate, no model
"""

from __future__ import annotations
import argparse, contextlib, dataclasses, gc, json, math, os, platform, resource, statistics, sys, time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PEAK_TFLOPS = 989.0  # H100 / H200 SXM, bf16 dense tensor cores (NVIDIA data sheets); TF32 dense: half of it
# sizes: transformer config overrides of MeissonicConfig() (the release), token grid side, text tokens, N, G, K
SIZES = {
    "paper": dict(config={}, grid=64, text_len=77, N=64, G=8, K=6, loops=False),
    "small": dict(
        config=dict(
            attention_head_dim=64,
            num_attention_heads=8,
            num_layers=4,
            num_single_layers=8,
            pooled_projection_dim=512,
            axes_dims_rope=(8, 28, 28),
        ),
        grid=32,
        text_len=77,
        N=32,
        G=8,
        K=3,
        loops=True,
    ),
    "tiny": dict(
        config=dict(
            attention_head_dim=32,
            num_attention_heads=4,
            num_layers=2,
            num_single_layers=4,
            joint_attention_dim=64,
            pooled_projection_dim=128,
            axes_dims_rope=(8, 12, 12),
            vocab_size=1088,
            codebook_size=1024,
        ),
        grid=8,
        text_len=16,
        N=8,
        G=2,
        K=2,
        loops=True,
    ),
}
# the update of each method as its preset in maskfocus.rl.presets configures it
METHODS = {
    "maskfocus": dict(loss=dict(beta=0.01, clip=None, ratio_level="token"), reference=True),
    "mask_grpo": dict(loss=dict(beta=0.0, clip=(0.1, 0.2), ratio_level="step"), reference=False),
}


@dataclasses.dataclass
class Setup:
    "What every measurement reads: the sizes, the device and the conditioning tensors."

    size: str
    config: object  # MeissonicConfig
    grid: tuple[int, int]
    text_len: int
    N: int
    G: int
    K: int
    cfg: float
    repeats: int
    device: torch.device
    cond: dict  # th, pooled, neg_th, neg_pooled, micro


def meissonic_config(size: str):
    "The transformer config of a size."
    from maskfocus.models.meissonic_config import MeissonicConfig

    return MeissonicConfig(**SIZES[size]["config"])


def conditioning(config, G: int, text_len: int, grid: tuple[int, int], device) -> dict:
    "Random text states of one prompt repeated G times, a random negative prompt, Meissonic's micro-conditions."
    g = torch.Generator().manual_seed(0)
    rnd = lambda *shape: torch.randn(*shape, generator=g).to(device)
    th, pooled = rnd(1, text_len, config.joint_attention_dim), rnd(1, config.pooled_projection_dim)
    side = float(grid[0] * 16)  # the VQ model maps 16x16 pixels to a token
    return dict(
        th=th.expand(G, -1, -1).contiguous(),
        pooled=pooled.expand(G, -1).contiguous(),
        neg_th=rnd(1, text_len, config.joint_attention_dim),
        neg_pooled=rnd(1, config.pooled_projection_dim),
        micro=torch.tensor([[side, side, 0.0, 0.0, 6.0]], device=device),
    )


def count_flops(config, grid: tuple[int, int], text_len: int) -> dict:
    "Parameters and FLOPs per sample (forward; forward + backward; with checkpointing) counted on the meta device."
    from torch.utils.flop_counter import FlopCounterMode
    from maskfocus.models.transformer import MeissonicTransformer

    with torch.device("meta"):
        m = MeissonicTransformer(config)
        args = (
            torch.zeros(1, *grid, dtype=torch.long),
            torch.zeros(1, text_len, config.joint_attention_dim),
            torch.zeros(1, config.pooled_projection_dim),
            torch.zeros(1, dtype=torch.long),
            torch.zeros(1, 5),
        )

    def count(backward: bool, ckpt: bool) -> int:
        m.gradient_checkpointing = ckpt
        with FlopCounterMode(display=False) as fc:
            out = m(*args)
            if backward:
                out.float().sum().backward()
        return int(fc.get_total_flops())

    with torch.no_grad():
        fwd = count(False, False)
    return {
        "params": sum(p.numel() for p in m.parameters()),
        "forward_per_sample": fwd,
        "forward_backward_per_sample": count(True, False),
        "forward_backward_checkpointed_per_sample": count(True, True),
        "method": "torch.utils.flop_counter.FlopCounterMode, one sample on the meta device",
    }


class PeakMemory:
    "Peak memory of a phase: the CUDA allocator's, else Linux VmHWM (resettable), else ru_maxrss (never reset)."

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device
        if self.cuda:
            self.method = "torch.cuda.max_memory_allocated (tensors of this process on the device)"
        elif self._can_reset_rss():
            self.method = "peak resident set size of the process (Linux VmHWM, reset via /proc/self/clear_refs)"
        else:
            self.method = "peak resident set size of the process (resource.getrusage ru_maxrss, since start)"

    @staticmethod
    def _can_reset_rss() -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            return Path("/proc/self/status").is_file()
        except OSError:
            return False

    @staticmethod
    def _status_kib(key: str) -> int:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(key + ":"))
        return int(line.split()[1])

    def reset(self):
        "Start a phase: the peak so far becomes the current use."
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        elif "VmHWM" in self.method:
            Path("/proc/self/clear_refs").write_text("5")

    def current(self) -> int:
        "Bytes in use now."
        if self.cuda:
            return int(torch.cuda.memory_allocated(self.device))
        return self._status_kib("VmRSS") * 1024 if "VmHWM" in self.method else self.peak()

    def peak(self) -> int:
        "Bytes at the peak since the last reset."
        if self.cuda:
            return int(torch.cuda.max_memory_allocated(self.device))
        if "VmHWM" in self.method:
            return self._status_kib("VmHWM") * 1024
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, repeats: int, device: torch.device, mem: PeakMemory, warmup=None) -> dict:
    "Median wall time of `repeats` calls after one warm-up call (`warmup` or fn), their CPU time and peak memory."
    (warmup or fn)()
    sync(device)
    mem.reset()
    before = mem.current()
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {
        "median_s": statistics.median(wall),
        "wall_s": wall,
        "process_cpu_s": cpu,
        "memory_before_bytes": before,
        "peak_memory_bytes": (peak := mem.peak()),
        "peak_over_before_bytes": peak - before,  # CUDA: activations and temporaries (weights, gradients before)
    }


def autocast(device: torch.device, precision: str):
    "bf16 autocast (fp32 weights) or nothing (fp32)."
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def rollout_once(model, s: Setup, N: int):
    "G rollouts of one prompt with Dynamic Routing and CFG, recorded (MaskFocus's sampler)."
    from maskfocus.rl.rollout import DRConfig, record_trajectory

    c = s.cond
    gen = torch.Generator(device=s.device).manual_seed(0)
    return record_trajectory(
        model,
        c["th"],
        c["pooled"],
        c["neg_th"],
        c["neg_pooled"],
        c["micro"],
        N=N,
        cfg=s.cfg,
        generator=gen,
        grid=s.grid,
        group_size=s.G,
        dr=DRConfig(),
    )


def measure_rollout(model, s: Setup, precision: str, flops: dict, mem: PeakMemory, peak_tflops: float) -> dict:
    "Images/s, peak memory and MFU of one G-sample rollout (warm-up: a 2-step rollout)."
    with autocast(s.device, precision):
        t = timed(lambda: rollout_once(model, s, s.N), s.repeats, s.device, mem, lambda: rollout_once(model, s, 2))
    rows = 2 * s.G if s.cfg not in (0, 1) else s.G
    model_flops = s.N * rows * flops["forward_per_sample"]
    tflops = model_flops / t["median_s"] / 1e12
    return {
        **t,
        "images_per_s": s.G / t["median_s"],
        "model_flops": model_flops,
        "achieved_tflops": tflops,
        "mfu": tflops / peak_tflops,
    }


def synthetic_trajectory(s: Setup, V: int):
    "A trajectory with the sampler's mask schedule, random commit order and tokens (what the update reads)."
    from maskfocus.models.sampler import mask_schedule, timesteps
    from maskfocus.rl.rollout import Trajectory

    B, N, HW = s.G, s.N, math.prod(s.grid)
    g = torch.Generator().manual_seed(1)
    left = torch.tensor(mask_schedule(N, HW))  # masks left after each step
    step_of_rank = torch.bucketize(torch.arange(HW), HW - left, right=True)  # rank r is committed at this step
    commit = step_of_rank[torch.rand(B, HW, generator=g).argsort(1)].to(torch.int16)
    return Trajectory(
        tokens=torch.randint(0, V, (B, HW), generator=g),
        x0=torch.randint(0, V, (N, B, HW), generator=g).to(torch.int16),
        commit_step=commit,
        timesteps=timesteps(N),
        entropy=torch.zeros(N, B),
        explore=torch.zeros(N, B, dtype=torch.bool),
        min_kept_conf=torch.rand(N, B, generator=g),
        grid=s.grid,
        group_size=s.G,
    ).to(s.device)


def plans(model, s: Setup) -> dict:
    "Per method: its estimator and planned steps (MaskFocus: K steps spread over the first half; Mask-GRPO: all N)."
    from maskfocus.rl.logprob import RemaskRandom, TrajectoryReplay

    traj = synthetic_trajectory(s, model.codebook_size)
    steps = torch.tensor([(k * s.N) // (2 * s.K) for k in range(s.K)]).expand(s.G, s.K).to(s.device)
    mf, mg = RemaskRandom(model.mask_token_id), TrajectoryReplay(model.mask_token_id, candidate=1)
    gen = torch.Generator(device=s.device).manual_seed(2)
    return {"maskfocus": (mf, mf.plan(traj, steps, gen)), "mask_grpo": (mg, mg.plan(traj, None))}


def step_fns(model, s: Setup, method: str, est, batch, precision: str):
    "(the no-grad reference forward, the forward + backward of the step's loss) of one planned step."
    from maskfocus.rl.estimator import step_logps
    from maskfocus.rl.grpo import grpo_loss

    c, m = s.cond, METHODS[method]
    adv = torch.linspace(-1.0, 1.0, s.G, device=s.device)
    ref = {}

    @torch.no_grad()
    def reference():
        with autocast(s.device, precision):
            ref["lp"] = step_logps(model, batch, c["th"], c["pooled"], c["micro"], est)

    def train():
        with autocast(s.device, precision):
            lp, logits = step_logps(model, batch, c["th"], c["pooled"], c["micro"], est, return_logits=True)
            loss, _ = grpo_loss(lp, lp.detach(), adv, batch.score_mask, ref.get("lp"), logits=logits, **m["loss"])
        loss.backward()

    if m["reference"]:
        reference()
    return reference, train


def measure_method(model, s: Setup, method: str, plan, precision: str, flops: dict, mem, loops: bool, peak) -> dict:
    "Seconds per selected step (forward + backward, and the reference forward), times K or N; the loop if asked."
    est, batches = plan
    reference, train = step_fns(model, s, method, est, batches[0], precision)
    out = {"step": timed(train, s.repeats, s.device, mem)}
    steps = s.K if method == "maskfocus" else s.N
    per_step = out["step"]["median_s"]
    if METHODS[method]["reference"]:
        out["reference_forward"] = timed(reference, s.repeats, s.device, mem)
        per_step += out["reference_forward"]["median_s"]
    step_flops = s.G * flops["forward_backward_per_sample"]
    out |= {
        "steps_trained": steps,
        "update_s": steps * per_step,
        "update_s_how": "steps_trained x (step + reference_forward) medians" if "reference_forward" in out else "",
        "model_flops_per_step": step_flops,
        "recomputed_flops_per_step": s.G * flops["forward_backward_checkpointed_per_sample"] - step_flops
        if model.gradient_checkpointing
        else 0,
        "achieved_tflops": step_flops / out["step"]["median_s"] / 1e12,
        "mfu": step_flops / out["step"]["median_s"] / 1e12 / peak,
    }
    if loops:
        fns = [step_fns(model, s, method, est, b, precision) for b in batches[:steps]]

        def loop():  # the trainer's way: each planned step's reference forward (MaskFocus), then its backward
            for ref_fn, train_fn in fns:
                if METHODS[method]["reference"]:
                    ref_fn()
                train_fn()

        out["loop"] = timed(loop, 1, s.device, mem, warmup=lambda: None)
        out["loop_over_multiplied"] = out["loop"]["median_s"] / out["update_s"]
    model.zero_grad(set_to_none=True)
    return out


def measure_update(model, s: Setup, precision: str, ckpt: bool, pl: dict, flops: dict, mem, loops, peak) -> dict:
    "Both methods' update cost in one precision, with or without gradient checkpointing."
    model.gradient_checkpointing = ckpt
    model.zero_grad(set_to_none=True)
    try:
        return {m: measure_method(model, s, m, pl[m], precision, flops, mem, loops, peak) for m in METHODS}
    finally:
        model.gradient_checkpointing = False
        model.zero_grad(set_to_none=True)


def guarded(fn, device: torch.device) -> dict:
    "{'status': 'ok', **fn()}, or the CUDA out-of-memory error recorded (memory freed) instead of raised."
    try:
        return {"status": "ok", **fn()}
    except torch.cuda.OutOfMemoryError as e:
        error = str(e).strip().splitlines()[0][:400]
    gc.collect()  # outside the except block: the traceback (and the tensors of its frames) is gone by now
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"status": "oom", "error": error}


@torch.no_grad()
def bf16_vs_fp32(model, s: Setup, plan) -> dict:
    "Logits and log-probs of one step batch in fp32 and under bf16 autocast: the differences."
    from maskfocus.rl.logprob import gather_logp

    _, batches = plan
    b, c = batches[0], s.cond
    call = lambda: model(b.inputs, c["th"], c["pooled"], b.timestep, c["micro"].expand(s.G, -1)).float()
    cuda, tf32 = s.device.type == "cuda", torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 reference is plain fp32, also where TF32 is on
    try:
        l32 = call()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    extra = {}
    if cuda and tf32:  # untested on a GPU
        extra["tf32_logits_rel_l2"] = float((call() - l32).norm() / l32.norm())
    with autocast(s.device, "bf16"):
        l16 = call()
    lp32, lp16 = gather_logp(l32, b.targets)[b.score_mask], gather_logp(l16, b.targets)[b.score_mask]
    d = (lp16 - lp32).abs()
    return extra | {
        "logits_max_abs_diff": float((l16 - l32).abs().max()),
        "logits_rel_l2": float((l16 - l32).norm() / l32.norm()),
        "logits_std_fp32": float(l32.std()),
        "logp_mean_abs_diff": float(d.mean()),
        "logp_max_abs_diff": float(d.max()),
        "argmax_agreement": float((l16.argmax(1) == l32.argmax(1)).float().mean()),
        "scored_tokens": int(b.score_mask.sum()),
        "what": "one MaskFocus step batch (G samples), same weights and inputs, fp32 without TF32 as the reference; "
        "log-probs at the scored positions",
    }


def ok(r) -> bool:
    return isinstance(r, dict) and r.get("status") == "ok"


def iteration(rollout: dict, update: dict) -> dict | None:
    "Seconds of one prompt group's iteration, rollout + update (no reward, no optimizer step), for both methods."
    if not (ok(rollout) and ok(update)):
        return None
    t = {m: rollout["median_s"] + update["update"][m]["update_s"] for m in METHODS}
    return {
        "maskfocus_s": t["maskfocus"],
        "mask_grpo_s": t["mask_grpo"],
        "ratio_maskfocus_over_mask_grpo": t["maskfocus"] / t["mask_grpo"],
        "what": "rollout of G (DR on, CFG) + update_s of each method; reward and optimizer step not included",
    }


def ratios(res: dict, base: str = "fp32") -> dict:
    "Each variant's numbers over the fp32, no-checkpointing variant's of the same run."
    b, rb = res["variants"].get(base), res["rollout"].get(base)
    if not ok(b):
        return {}
    bu = b["update"]
    step = lambda u, m: u[m]["step"]["median_s"]
    mem = lambda u: u["maskfocus"]["step"]["peak_memory_bytes"]
    out = {}
    for name, v in res["variants"].items():
        if not ok(v):
            continue
        u, r = v["update"], res["rollout"].get(v["precision"])
        both = ok(r) and ok(rb)
        out[name] = {
            "update_step_s_maskfocus": step(u, "maskfocus") / step(bu, "maskfocus"),
            "update_step_s_mask_grpo": step(u, "mask_grpo") / step(bu, "mask_grpo"),
            "update_peak_memory": mem(u) / mem(bu),
            "rollout_images_per_s": r["images_per_s"] / rb["images_per_s"] if both else None,
            "rollout_peak_memory": r["peak_memory_bytes"] / rb["peak_memory_bytes"] if both else None,
            "iteration_s_maskfocus": v["iteration"]["maskfocus_s"] / b["iteration"]["maskfocus_s"]
            if v.get("iteration") and b.get("iteration")
            else None,
        }
    return out


def estimate(s: Setup, flops: dict, a) -> dict:
    "Seconds the run should take: its model FLOPs at an assumed MFU of the peak (TF32: half; plain fp32: 67/989)."
    F, G, N, K, R = flops["forward_per_sample"], s.G, s.N, s.K, s.repeats
    rows = 2 * G if s.cfg not in (0, 1) else G
    fp32_factor = 0.5 if a.tf32 else 67.0 / PEAK_TFLOPS  # H100 SXM: TF32 dense 495, FP32 (no tensor cores) 67
    tflops = {"bf16": a.assume_mfu * a.peak_tflops, "fp32": a.assume_mfu * a.peak_tflops * fp32_factor}
    work = {}
    for p in a.precisions:
        work[f"rollout_{p}"] = (2 + R * N) * rows * F
        for ckpt in a.checkpointing:
            fb = G * flops["forward_backward_checkpointed_per_sample" if ckpt else "forward_backward_per_sample"]
            w = (1 + R) * fb * 2 + (2 + R) * G * F  # both methods' step, MaskFocus's reference forwards
            if a.loops:
                w += K * (fb + 2 * G * F) + N * fb
            work[f"update_{p}{'_ckpt' if ckpt else ''}"] = w
    work["bf16_vs_fp32"] = 2 * G * F
    secs = {k: w / tflops["bf16" if "bf16" in k and "vs" not in k else "fp32"] / 1e12 for k, w in work.items()}
    return {
        "seconds": sum(secs.values()) + a.assume_overhead_s,
        "seconds_by_phase": secs,
        "model_flops_by_phase": work,
        "assumed_mfu": a.assume_mfu,
        "assumed_tflops": tflops,
        "assumed_overhead_s": a.assume_overhead_s,
        "how": "model FLOPs (FlopCounterMode counts) of every measured call, warm-ups included, divided by an assumed "
        "throughput (assumed_mfu x peak; fp32 runs at half the bf16 peak with TF32, 67/989 of it without), plus a "
        "fixed overhead for imports, model init and the FLOP count; elementwise work of the sampler is not counted",
    }


def device_info(device: torch.device) -> dict:
    "Name and versions of the device the run used."
    info = {"type": device.type, "torch": torch.__version__, "python": platform.python_version()}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info |= {
            "name": p.name,
            "capability": f"{p.major}.{p.minor}",
            "total_memory_bytes": int(p.total_memory),
            "cuda": torch.version.cuda,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        }
    else:
        info |= {"name": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads()}
    info["cpus"] = os.cpu_count()
    return info


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=list(SIZES), default="paper", help="paper: the released Meissonic config")
    p.add_argument("--device", default=None, help="default: cuda when visible, else cpu")
    p.add_argument("--out", default=None, help="JSON file (default results/benchmarks/paper_scale_<size>_<dev>.json)")
    p.add_argument("--steps", type=int, default=None, help="N sampling steps (default per size: 64 at paper size)")
    p.add_argument("--group", type=int, default=None, help="G samples per prompt (default per size: 8 at paper size)")
    p.add_argument("--K", type=int, default=None, help="MaskFocus's selected steps (default per size: 6 at paper)")
    p.add_argument("--cfg", type=float, default=5.0, help="guidance weight of the rollout")
    p.add_argument("--repeats", type=int, default=2, help="timed calls per measurement after one warm-up (median)")
    p.add_argument("--precisions", default="fp32,bf16", help="comma-separated, from fp32 and bf16")
    p.add_argument("--checkpointing", default="off,on", help="comma-separated gradient checkpointing settings")
    p.add_argument("--loops", action=argparse.BooleanOptionalAction, default=None, help="time the whole K/N loops")
    p.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True, help="TF32 matmuls (CUDA only)")
    p.add_argument("--peak-tflops", type=float, default=PEAK_TFLOPS, help="peak of the MFU (H100/H200 bf16 dense)")
    p.add_argument("--estimate-only", action="store_true", help="count FLOPs, estimate the run's time, build nothing")
    p.add_argument("--assume-mfu", type=float, default=0.25, help="MFU assumed by the time estimate")
    p.add_argument("--assume-overhead-s", type=float, default=90.0, help="fixed seconds assumed by the estimate")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    a = p.parse_args(argv)
    a.device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    a.precisions = [x.strip() for x in a.precisions.split(",") if x.strip()]
    a.checkpointing = [{"off": False, "on": True}[x.strip()] for x in a.checkpointing.split(",") if x.strip()]
    if not set(a.precisions) <= {"fp32", "bf16"} or not a.precisions or not a.checkpointing:
        p.error("--precisions takes fp32 and/or bf16; --checkpointing off and/or on")
    a.loops = SIZES[a.size]["loops"] if a.loops is None else a.loops
    a.out = Path(a.out or ROOT / "results" / "benchmarks" / f"paper_scale_{a.size}_{a.device.type}.json")
    return a


def setup(a) -> Setup:
    "The sizes of the run (size defaults, then the options), with its conditioning tensors."
    d, config = SIZES[a.size], meissonic_config(a.size)
    N, G = a.steps or d["N"], a.group or d["G"]
    K = min(a.K or d["K"], N)
    grid = (d["grid"], d["grid"])
    cond = conditioning(config, G, d["text_len"], grid, a.device) if not a.estimate_only else {}
    return Setup(a.size, config, grid, d["text_len"], N, G, K, a.cfg, a.repeats, a.device, cond)


def header(a, s: Setup, flops: dict) -> dict:
    "The JSON's fields that do not depend on the measurements."
    return {
        "what": "paper-scale cost of MaskFocus vs Mask-GRPO: rollout images/s, seconds per selected-step update, peak "
        "memory, MFU; fp32/bf16 x gradient checkpointing off/on (see benchmarks/paper_scale.py)",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "ran_on_gpu": a.device.type == "cuda",
        "device": device_info(a.device),
        "torch": torch.__version__,
        "config": {
            "size": s.size,
            "transformer": {k: v for k, v in dataclasses.asdict(s.config).items()},
            "params": flops["params"],
            "grid": list(s.grid),
            "image_tokens": math.prod(s.grid),
            "text_tokens": s.text_len,
            "N": s.N,
            "G": s.G,
            "cfg": s.cfg,
            "K": {"maskfocus": s.K, "mask_grpo": s.N},
            "repeats": s.repeats,
            "tf32": bool(a.tf32 and a.device.type == "cuda"),
            "dynamic_routing": True,
            "weights": "random (torch.manual_seed(0)), fp32 master weights; bf16 = torch.autocast",
        },
        "peak_tflops": a.peak_tflops,
        "peak_tflops_note": "MFU denominator for every variant; default 989 = H100/H200 SXM bf16 dense (TF32 dense "
        "is half of it); meaningless on a CPU",
        "flops": flops,
        "estimate": estimate(s, flops, a),
        "complete": False,
    }


def build_model(config, device: torch.device):
    "The transformer with random weights, allocated and initialised on the device itself (fp32)."
    from maskfocus.models.transformer import MeissonicTransformer

    torch.manual_seed(0)
    with torch.device(device):
        model = MeissonicTransformer(config)
    return model.eval().requires_grad_(True)


def measure_all(a, s: Setup, res: dict, flops: dict):
    "Rollouts per precision, updates per variant, the bf16 check: into `res`, the JSON rewritten after each."
    mem = PeakMemory(s.device)
    res["memory_method"] = mem.method
    model = build_model(s.config, s.device)
    pl = plans(model, s)
    res["rollout"], res["variants"] = {}, {}
    for p in a.precisions:
        res["rollout"][p] = guarded(lambda: measure_rollout(model, s, p, flops, mem, a.peak_tflops), s.device)
        write_json(a.out, res)
        print(f"rollout {p}: {summarise(res['rollout'][p], 'images_per_s')} images/s", flush=True)
        for ckpt in a.checkpointing:
            name = p + ("_ckpt" if ckpt else "")
            v = {"precision": p, "grad_checkpointing": ckpt}
            v |= guarded(
                lambda: {"update": measure_update(model, s, p, ckpt, pl, flops, mem, a.loops, a.peak_tflops)}, s.device
            )
            v["iteration"] = iteration(res["rollout"][p], v)
            res["variants"][name] = v
            write_json(a.out, res)
            step = v["update"]["maskfocus"]["step"]["median_s"] if ok(v) else v["status"]
            print(f"update {name}: {step} s per selected step (MaskFocus)", flush=True)
    res["bf16_vs_fp32"] = guarded(lambda: bf16_vs_fp32(model, s, pl["maskfocus"]), s.device)
    res["ratios"] = ratios(res)


def summarise(r: dict, key: str):
    return round(r[key], 4) if ok(r) else r["status"]


def write_json(path: Path, obj: dict):
    from maskfocus.core import write_json_atomic

    write_json_atomic(path, obj)


def main(argv=None) -> int:
    a = parse(argv)
    t0, c0 = time.perf_counter(), time.process_time()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.device.type == "cuda":  # untested on a GPU
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(a.tf32)
    s = setup(a)
    flops = count_flops(s.config, s.grid, s.text_len)
    res = header(a, s, flops)
    est = res["estimate"]
    print(
        f"{s.size}: {flops['params']:,} parameters, {flops['forward_per_sample'] / 1e12:.4f} TFLOP per sample "
        f"forward; estimated {est['seconds']:.0f} s at MFU {a.assume_mfu}",
        flush=True,
    )
    if a.estimate_only:
        print(json.dumps({k: res[k] for k in ("config", "flops", "estimate")}, indent=2))
        return 0
    measure_all(a, s, res, flops)
    res |= {"wall_s": time.perf_counter() - t0, "process_cpu_s": time.process_time() - c0, "complete": True}
    write_json(a.out, res)
    print(f"wrote {a.out} ({res['wall_s']:.1f} s wall, {res['process_cpu_s']:.1f} s process CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
