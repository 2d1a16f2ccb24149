"""Batched vs per-group rollouts, and the sampling step at masked positions only vs everywhere, in one run.

- Work: one RL iteration's rollouts at toy scale: 4 prompts x G = 8, N = 16, CFG 3, Dynamic Routing on (T 1.5), the
  toy base model (`--base`, default models/base; a random-weights pipeline of the same architecture when absent).
  "per-group" is the trainer's way (one `rollout` call per group, each with its own generator), "batched" is
  `maskfocus.rl.batched.rollout_groups` (one model call per step for all groups, the same generators): their
  trajectories are checked token for token equal. "masked-only" runs the batched rollout with `masked_only=True`.
- The sampling step alone (`maskgit_step` plus the recorder's entropy hook) is timed inside the rollouts, and once more
  on one step at a larger size (`--step-size`: V = 8192 codes, HW = 32 x 32, B = 8) at three masked fractions.
- Time: process CPU time (`time.process_time`, robust when other processes load the machine) and wall time; the
  variants alternate for `--rounds` rounds and medians are reported, with ratios to the per-group path.

One torch thread by default (`--threads`). Not a test: it only writes numbers (atomically).

    .venv/bin/python benchmarks/rollout_batching.py [--out /tmp/rollout_batching.json] [--rounds 5]
"""

from __future__ import annotations
import argparse, json, platform, statistics, sys, time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a photo of a red cube", "two blue spheres", "a green cylinder left of a yellow cone", "three purple cubes"]


class _Clock:
    "Accumulated process and wall seconds of the wrapped calls."

    def __init__(self):
        self.cpu = self.wall = 0.0

    def wrap(self, fn):
        def timed(*a, **k):
            c, w = time.process_time(), time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.cpu += time.process_time() - c
                self.wall += time.perf_counter() - w

        return timed


def load_pipe(base: Path):
    "The toy base pipeline, or a random one of its architecture."
    from maskfocus.models.pipeline import MaskedPipeline

    if (base / "transformer" / "config.json").is_file():
        return MaskedPipeline.load(base), str(base)
    from maskfocus.toy.pipeline import toy_pipeline
    from maskfocus.toy.pretrain import PretrainConfig

    c = PretrainConfig()
    pipe = toy_pipeline(c.dim, c.heads, c.layers, c.single_layers, c.text_dim, c.text_layers, c.max_length, 0)
    pipe.sampling.steps, pipe.sampling.cfg = 16, 3.0
    return pipe, "random toy base (PretrainConfig defaults)"


def variants(pipe, G: int, N: int, cfg: float, dr) -> dict:
    "name -> a function running one iteration's rollouts (fresh generators each time) and returning the trajectories."
    from maskfocus.rl.batched import rollout_groups
    from maskfocus.rl.rollout import rollout

    gens = lambda: [torch.Generator().manual_seed(1000 + g) for g in range(len(PROMPTS))]  # noqa: E731
    return {
        "per_group": lambda: [rollout(pipe, [q], G, N=N, cfg=cfg, generator=g, dr=dr) for q, g in zip(PROMPTS, gens())],
        "batched": lambda: rollout_groups(pipe, PROMPTS, G, gens(), N=N, cfg=cfg, dr=dr),
        "batched_masked_only": lambda: rollout_groups(pipe, PROMPTS, G, gens(), N=N, cfg=cfg, dr=dr, masked_only=True),
        "per_group_masked_only": lambda: [
            rollout(pipe, [q], G, N=N, cfg=cfg, generator=g, dr=dr, masked_only=True) for q, g in zip(PROMPTS, gens())
        ],
    }


def time_rollouts(pipe, rounds: int, G: int, N: int, cfg: float, dr) -> tuple[dict, bool]:
    "Median CPU/wall seconds of each variant, of its sampling step, and whether batched == per-group exactly."
    import maskfocus.models.sampler as sampler_mod
    import maskfocus.rl.batched as batched_mod
    from maskfocus.rl.rollout import TrajectoryRecorder

    runs, step = variants(pipe, G, N, cfg, dr), _Clock()
    orig = (sampler_mod.maskgit_step, batched_mod.maskgit_step, TrajectoryRecorder.temperature_fn)
    sampler_mod.maskgit_step, batched_mod.maskgit_step = step.wrap(orig[0]), step.wrap(orig[1])
    TrajectoryRecorder.temperature_fn = step.wrap(orig[2])
    samples = {k: {"cpu": [], "wall": [], "step_cpu": [], "step_wall": []} for k in runs}
    try:
        a, b = runs["per_group"](), runs["batched"]()  # warm-up, and the exactness check
        fields = ("tokens", "x0", "commit_step", "entropy", "explore", "min_kept_conf")
        exact = all(torch.equal(getattr(x, f), getattr(y, f)) for x, y in zip(a, b) for f in fields)
        for _ in range(rounds):
            for k, fn in runs.items():
                step.cpu = step.wall = 0.0
                c, w = time.process_time(), time.perf_counter()
                fn()
                s = samples[k]
                s["cpu"].append(time.process_time() - c)
                s["wall"].append(time.perf_counter() - w)
                s["step_cpu"].append(step.cpu)
                s["step_wall"].append(step.wall)
    finally:
        sampler_mod.maskgit_step, batched_mod.maskgit_step, TrajectoryRecorder.temperature_fn = orig
    return {k: {m: statistics.median(v) for m, v in s.items()} for k, s in samples.items()}, exact


def time_one_step(rounds: int, V: int = 8192, side: int = 32, B: int = 8) -> dict:
    "CPU seconds of one `maskgit_step` (full vs masked-only) at V codes, side x side positions, B maps."
    from maskfocus.models.sampler import maskgit_step

    g = torch.Generator().manual_seed(0)
    logits, HW, out = torch.randn(B, V, side, side, generator=g), side * side, {}
    for frac in (1.0, 0.5, 0.1):
        tok = torch.randint(0, V, (B, HW), generator=g)
        tok[torch.rand(B, HW, generator=g) < frac] = V  # mask id V
        t = {}
        for masked_only in (False, True):
            ts = []
            for _ in range(rounds):
                c = time.process_time()
                maskgit_step(logits, tok, 1, 16, V, torch.Generator().manual_seed(1), 1.0, masked_only=masked_only)
                ts.append(time.process_time() - c)
            t["masked_only" if masked_only else "full"] = statistics.median(ts)
        out[f"masked_{frac:g}"] = t | {"ratio": t["masked_only"] / t["full"], "masked": int((tok == V).sum())}
    return {"V": V, "HW": HW, "B": B} | out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="/tmp/rollout_batching.json", help="JSON file to write")
    p.add_argument("--base", default=str(ROOT / "models" / "base"), help="toy base pipeline folder")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds (medians are reported)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--no-step-size", action="store_true", help="skip the one-step timing at V = 8192, 32 x 32")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from maskfocus.core import write_json_atomic
    from maskfocus.rl.rollout import DRConfig

    pipe, base = load_pipe(Path(a.base))
    G, N, cfg = 8, 16, 3.0
    med, exact = time_rollouts(pipe, a.rounds, G, N, cfg, DRConfig(T=1.5))
    ref = med["per_group"]
    ratios = {k: {m: v[m] / ref[m] for m in ("cpu", "wall")} for k, v in med.items()}
    step_share = {k: v["step_cpu"] / v["cpu"] for k, v in med.items()}
    res = {
        "what": "one iteration's rollouts: 4 prompts x G=8, N=16, CFG 3, DR on (T 1.5)",
        "base": base,
        "threads": a.threads,
        "rounds": a.rounds,
        "batched_equals_per_group": exact,
        "seconds": med,
        "ratio_to_per_group": ratios,
        "sampling_step_share_of_cpu": step_share,
        "sampling_step_cpu_ratio_masked_only": med["batched_masked_only"]["step_cpu"] / med["batched"]["step_cpu"],
        "one_step": None if a.no_step_size else time_one_step(max(3, a.rounds)),
        "machine": {"python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform()},
    }
    write_json_atomic(a.out, res)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
