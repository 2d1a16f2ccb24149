"""What does training only the critical steps save? Wall time of one RL iteration of `maskfocus` (K = 3 selected
steps of N = 32, K ~ N/10 as the paper's 6 of 64) against `mask_grpo` (Mask-GRPO: every one of the N steps) at the
same rollout (4 prompts x G = 8, N = 32, CFG 3, judge reward), and the peak memory of a `maskfocus` iteration
against K in {1, 2, 4, 8}, and the iteration time of `maskfocus` at each K in `--time-K` (default 1, 2, 4, 8).

- Model: a random-weights toy pipeline with the toy base model's architecture (`maskfocus.toy.pretrain.PretrainConfig`
  defaults: width 128, 2 + 2 blocks, 8x8 tokens, 73 codes), or `--base FOLDER`. Weights do not change the cost.
- Time: `maskfocus.rl.trainer.train` with 2 iterations per call; the second iteration's phase times (the trainer's own
  `time/*` metrics: rollout, reward, selection, update) are recorded; calls alternate between the two presets for
  `--rounds` rounds (so load from other processes hits both alike) and medians are compared.
  Goal: ratio maskfocus / mask_grpo <= 0.4 for the whole iteration. The rollout (identical work in both) dominates
  on this machine and is noisy under load, so a ratio with the rollout time pooled over both presets is reported too,
  with the update-phase ratio and a cost model (the 0.4 goal is at or below the cost model's floor).
- Memory: one fresh process per K runs one iteration; the number reported is the growth of the process's peak
  resident set size (Linux VmHWM, reset through /proc/self/clear_refs) above its RSS just before `train` (imports
  done): setup + rollout + update of one iteration. A probe (another fresh process per K) shows that the measure
  would see K graphs kept alive: K forward passes of the transformer on the 32-sample batch with one backward each
  (the trainer's way), then the same with one backward of their sum (growth beyond the first). Not used:
  tracemalloc (blind to torch's CPU allocations) and ru_maxrss (on Linux it carries the forking parent's peak across
  exec). Goal: flat in K (each selected step is back-propagated on its own).

One torch thread per process (`torch.set_num_threads(1)`, OMP_NUM_THREADS=1 in the children): the numbers are for
the shared 2-core CPU machine of this project. Not a test: it only writes numbers (atomically).

    .venv/bin/python benchmarks/rl_iteration.py [--out results/benchmarks/rl_iteration.json] [--rounds 3]
"""

from __future__ import annotations
import argparse, json, os, platform, statistics, subprocess, sys, tempfile, time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
COMMON = {
    "prompts_per_iter": 4,
    "group_size": 8,
    "steps": 32,
    "cfg": 3.0,
    "iterations": 2,
    "checkpoint_every": 0,
    "log_images_every": 0,
    "reward": {"judge": 1.0},
}
PHASES = ("rollout", "reward", "selection", "update", "iteration")


def make_base(folder: Path) -> Path:
    "A random toy pipeline with the toy base model's architecture."
    from maskfocus.toy.pipeline import toy_pipeline
    from maskfocus.toy.pretrain import PretrainConfig

    c = PretrainConfig()
    toy_pipeline(
        c.dim, c.heads, c.layers, c.single_layers, c.text_dim, c.text_layers, c.max_length, 0, c.downsample
    ).save(folder)
    return folder


def one_call(preset: str, base: Path, out: Path, K: int | None = None) -> dict:
    "Run 2 iterations of a preset; the phase times of the second."
    from maskfocus.rl.config import make_config
    from maskfocus.rl.trainer import train

    over = dict(COMMON)
    if K is not None:
        over["K"] = K
    s = train(
        make_config(preset, over),
        base,
        out,
        progress=False,
        prompts=str(ROOT / "data" / "prompts" / "train_metadata.jsonl"),
    )
    h = s["history"][-1]
    return {p: h[f"time/{p}"] for p in PHASES} | {"trained_steps": s["budgets"]["trained_steps_per_sample"]}


def _status(key: str) -> int:  # KiB
    import re

    return int(re.search(rf"{key}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def _reset_peak():
    "Reset this process's peak RSS (VmHWM) to its current RSS (Linux: write 5 to /proc/self/clear_refs)."
    Path("/proc/self/clear_refs").write_text("5")


def _peak_growth(fn) -> float:
    "MiB by which the peak resident set size rises above the current one while fn() runs."
    _reset_peak()
    r0 = _status("VmRSS")
    fn()
    return (_status("VmHWM") - r0) / 1024


def memory_child(K: int, base: Path, preset: str, probe: bool = False) -> dict:
    "In a fresh process: peak-RSS growth of one train() iteration with K steps, or (probe) of K graphs kept vs not."
    import accelerate, dvclive, tqdm.auto  # noqa: F401  imports are not what is measured
    from maskfocus.rl.config import make_config
    from maskfocus.models.pipeline import MaskedPipeline
    from maskfocus.rl.trainer import train

    out = {"K": K, "preset": preset}
    if not probe:
        with tempfile.TemporaryDirectory() as d:

            def run():
                s = train(
                    make_config(preset, {**COMMON, "iterations": 1, "K": K}),
                    base,
                    Path(d) / "out",
                    progress=False,
                    prompts=str(ROOT / "data" / "prompts" / "train_metadata.jsonl"),
                )
                out["trained_steps"] = s["budgets"]["trained_steps_per_sample"]

            out["train_iteration_mib"] = _peak_growth(run)
        return out
    # probe: K forward passes of the transformer on the local batch (32 samples), one backward each (the trainer's
    # way; measured first, on a fresh heap), then the same K passes with all graphs alive before one backward
    # (measured second: the growth beyond what the first already made resident)
    pipe = MaskedPipeline.load(base)
    m = pipe.transformer.train(False).requires_grad_(True)
    B = COMMON["prompts_per_iter"] * COMMON["group_size"]
    g = torch.Generator().manual_seed(0)
    tok = torch.randint(0, m.codebook_size, (B, *pipe.grid), generator=g)
    tok = torch.where(torch.rand(tok.shape, generator=g) < 0.5, m.mask_token_id, tok)
    with torch.no_grad():
        th, pooled = pipe.encode_prompts(["a photo of a red circle"] * B)
    ts, micro = torch.full((B,), 10), pipe.micro_conds(B)
    loss = lambda: m(tok, th, pooled, ts, micro).float().log_softmax(1).amax(1).mean()

    def per_step():
        for _ in range(K):
            loss().backward()

    def retained():
        sum(loss() for _ in range(K)).backward()

    out["probe_backward_per_step_mib"] = _peak_growth(per_step)
    out["probe_retained_graphs_extra_mib"] = _peak_growth(retained)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "rl_iteration.json"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--K", type=int, default=3, help="maskfocus's selected steps in the timing (N = 32)")
    p.add_argument("--time-K", default="1,2,4,8", help="also time maskfocus at these K (comma-separated; empty: skip)")
    p.add_argument(
        "--base", default=None, help="pipeline folder (default: a random toy pipeline of the toy base architecture)"
    )
    p.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--memory-preset", default="maskfocus", help=argparse.SUPPRESS)
    p.add_argument("--memory-probe", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.memory_child is not None:
        print(json.dumps(memory_child(args.memory_child, Path(args.base), args.memory_preset, args.memory_probe)))
        return 0
    from maskfocus.core import write_json_atomic

    t_all = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = Path(args.base) if args.base else make_base(tmp / "base")
        runs = {"maskfocus": [], "mask_grpo": []}
        for r in range(args.rounds):
            for preset in runs:
                runs[preset].append(
                    one_call(preset, base, tmp / f"{preset}_{r}", args.K if preset == "maskfocus" else None)
                )
                print(preset, r, {k: round(v, 3) for k, v in runs[preset][-1].items()}, flush=True)
        by_K = {int(k): [] for k in args.time_K.split(",") if k.strip()}
        for r in range(args.rounds if by_K else 0):  # time against K: the same rollout, K selected steps trained
            for K in by_K:
                by_K[K].append(one_call("maskfocus", base, tmp / f"K{K}_{r}", K))
                print("maskfocus K", K, r, {k: round(v, 3) for k, v in by_K[K][-1].items()}, flush=True)
        med = {
            pr: {ph: statistics.median(x[ph] for x in xs) for ph in PHASES} | {"trained_steps": xs[0]["trained_steps"]}
            for pr, xs in runs.items()
        }
        med_K = {K: {ph: statistics.median(x[ph] for x in xs) for ph in PHASES} for K, xs in by_K.items()}
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        mem = []
        points = (
            [(K, "maskfocus", False) for K in (1, 2, 4, 8)]
            + [(args.K, "mask_grpo", False)]
            + [(K, "maskfocus", True) for K in (1, 2, 4, 8)]
        )
        for K, preset, probe in points:
            r = subprocess.run(
                [sys.executable, __file__, "--memory-child", str(K), "--memory-preset", preset, "--base", str(base)]
                + (["--memory-probe"] if probe else []),
                capture_output=True,
                text=True,
                env=env,
                cwd=ROOT,
            )
            if r.returncode:
                raise SystemExit(r.stderr[-3000:])
            mem.append(json.loads(r.stdout.strip().splitlines()[-1]))
            print({k: (round(v, 1) if isinstance(v, float) else v) for k, v in mem[-1].items()}, flush=True)
    mf, mg = med["maskfocus"], med["mask_grpo"]
    pooled = statistics.median([x["rollout"] for xs in runs.values() for x in xs])
    ks = [m for m in mem if m["preset"] == "maskfocus" and "train_iteration_mib" in m]
    probes = [m for m in mem if "probe_backward_per_step_mib" in m]
    result = {
        "what": "wall time of one RL iteration, maskfocus (K selected steps) vs mask_grpo (all N steps), same rollout; "
        "peak memory vs K",
        "settings": {
            **COMMON,
            "K_maskfocus": args.K,
            "rounds": args.rounds,
            "base": args.base or "random toy pipeline, toy base architecture",
            "torch_threads": 1,
        },
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
        },
        "time_s_median": med,
        "time_s_all": runs,
        "ratio_iteration": mf["iteration"] / mg["iteration"],
        # the rollout is the same work in both (same prompts, N, CFG; maskfocus adds DR's entropy): pooling its timings
        # over both presets removes most of the load noise of a shared machine from the ratio
        "ratio_iteration_pooled_rollout": (pooled + mf["iteration"] - mf["rollout"])
        / (pooled + mg["iteration"] - mg["rollout"]),
        "cost_model": "per sample: rollout 2N forwards (CFG), update K x (forward + backward ~ 3 forwards) + K "
        "reference forwards for "
        "maskfocus, N x 3 for mask_grpo (beta = 0): ratio ~ (2N + 4K) / (5N); N = 32, K = 3 -> 0.475, and never below "
        "2/5 = 0.4 even as K -> 0 (paper scale N = 64, K = 6: 0.475)",
        "ratio_update": mf["update"] / mg["update"],
        "time_s_median_by_K": med_K,
        "ratio_iteration_by_K": {K: m["iteration"] / mg["iteration"] for K, m in med_K.items()},
        "ratio_update_by_K": {K: m["update"] / mg["update"] for K, m in med_K.items()},
        "goal_ratio_iteration": 0.4,
        "goal_met": mf["iteration"] / mg["iteration"] <= 0.4,
        "memory": {
            "method": "growth of the peak resident set size (VmHWM, reset through /proc/self/clear_refs) above the RSS "
            "before "
            "the call, in a fresh process per point; train_iteration_mib: one train() call of 1 iteration (setup "
            "included, "
            "imports excluded); probe_backward_per_step: K forward passes of the transformer on the 32-sample batch, "
            "one "
            "backward each (what the trainer does), on a fresh heap; probe_retained_graphs_extra: then the same K "
            "passes "
            "with all graphs alive before one backward, growth beyond what the first probe left resident",
            "points": mem,
            "maskfocus_train_iteration_mib_by_K": {m["K"]: round(m["train_iteration_mib"], 1) for m in ks},
            "mask_grpo_train_iteration_mib": round(
                next(m["train_iteration_mib"] for m in mem if m["preset"] == "mask_grpo"), 1
            ),
            "probe_backward_per_step_mib_by_K": {m["K"]: round(m["probe_backward_per_step_mib"], 1) for m in probes},
            "probe_retained_graphs_extra_mib_by_K": {
                m["K"]: round(m["probe_retained_graphs_extra_mib"], 1) for m in probes
            },
            "spread_train_iteration_mib": round(
                max(m["train_iteration_mib"] for m in ks) - min(m["train_iteration_mib"] for m in ks), 1
            ),
            "goal": "flat in K",
        },
        "wall_s": round(time.time() - t_all, 1),
    }
    write_json_atomic(args.out, result)
    print(
        json.dumps(
            {k: result[k] for k in ("ratio_iteration", "ratio_iteration_pooled_rollout", "ratio_update", "goal_met")}
        ),
        json.dumps(
            {
                k: result["memory"][k]
                for k in (
                    "maskfocus_train_iteration_mib_by_K",
                    "mask_grpo_train_iteration_mib",
                    "probe_backward_per_step_mib_by_K",
                    "probe_retained_graphs_extra_mib_by_K",
                )
            }
        ),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
