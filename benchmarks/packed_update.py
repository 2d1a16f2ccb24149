"""What does the packed output head save in the RL update? One selected step's update (forward, log-probs, GRPO
loss, backward) with the head at every position (`step_logps`) against the head at the scored positions only
(`step_logps(..., packed=True)`, the engine knob `packed_update`), in one run.

Setting: the reduced Meissonic-like transformer of `masked_head.py` (width 256, 2 dual + 4 single blocks, codebook
2048 so that codebook / width = 8 as in Meissonic, 32 x 32 tokens), a group of G samples, MaskFocus's estimator
(`remask_random`, one random set of positions shared by the group) at three mask counts: the masks after steps 1/8,
1/2 and 7/8 of an N = 16 cosine schedule (many, half, few scored positions). Per mask count and variant:

- wall and CPU time of one update (medians of interleaved repeats) and the ratio packed / full of the wall times;
- peak memory of the tensors the update creates (weights excluded), from the torch profiler's memory timeline;
- the largest relative difference of the parameter gradients and of the log-probs at the scored positions (the two
  paths agree to float rounding).

One torch thread. Not a test: it only writes numbers (atomically).

    .venv/bin/python benchmarks/packed_update.py [--out results/benchmarks/packed_update_cpu.json] [--repeats 3]
"""

from __future__ import annotations
import argparse, os, platform, statistics, sys, time
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from masked_head import peak_bytes, reduced_config  # noqa: E402  (the same reduced model)

from maskfocus.core import write_json_atomic  # noqa: E402
from maskfocus.models.sampler import mask_schedule  # noqa: E402
from maskfocus.models.transformer import MeissonicTransformer  # noqa: E402
from maskfocus.rl.estimator import StepBatch, step_logps  # noqa: E402
from maskfocus.rl.grpo import grpo_loss  # noqa: E402
from maskfocus.rl.logprob import RemaskRandom, random_subsets  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def step_batch(model, G: int, grid: int, count: int, seed: int) -> StepBatch:
    "A MaskFocus step: random final tokens, one random set of `count` positions masked and scored for the group."
    g = torch.Generator().manual_seed(seed)
    HW = grid * grid
    tok = torch.randint(0, model.codebook_size, (G, HW), generator=g)
    m = random_subsets(torch.tensor([count]), HW, g, "cpu").expand(G, HW).contiguous()
    inp = tok.masked_fill(m, model.mask_token_id).view(G, grid, grid)
    return StepBatch(inp, torch.full((G,), 8), tok, m)


def update(model, batch, conds, packed: bool) -> torch.Tensor:
    "One update of one selected step; returns the log-probs (detached)."
    est = RemaskRandom(model.mask_token_id)
    model.zero_grad(set_to_none=True)
    lp, logits = step_logps(model, batch, *conds, est, return_logits=True, packed=packed)
    adv = torch.linspace(-1, 1, batch.inputs.shape[0])
    loss, _ = grpo_loss(lp, lp.detach(), adv, batch.score_mask, lp.detach() - 0.01, logits=logits)
    loss.backward()
    return lp.detach()


def compare(model, batch, conds) -> dict:
    "Relative differences of the gradients and log-probs, packed against full."
    out = {}
    for packed in (False, True):
        lp = update(model, batch, conds, packed)
        out[packed] = (lp, [p.grad.clone() for p in model.parameters() if p.grad is not None])
    (lf, gf), (lq, gq) = out[False], out[True]
    sm = batch.score_mask
    return {
        "grad_max_rel_diff": max(float((a - b).norm() / b.norm().clamp(min=1e-30)) for a, b in zip(gq, gf)),
        "logp_max_abs_diff": float((lq[sm] - lf[sm]).abs().max()),
    }


def run(args) -> dict:
    torch.set_num_threads(1)
    config = reduced_config(codebook=args.codebook)
    torch.manual_seed(0)
    model = MeissonicTransformer(config).train()
    g = torch.Generator().manual_seed(1)
    G, HW = args.group, args.grid * args.grid
    conds = (
        torch.randn(G, 77, config.joint_attention_dim, generator=g),
        torch.randn(G, config.pooled_projection_dim, generator=g),
        torch.tensor([[16.0 * args.grid] * 2 + [0, 0, 6]]),
    )
    masks = mask_schedule(args.steps, HW)  # masked positions left after each step
    rows = []
    for s in (args.steps // 8, args.steps // 2, 7 * args.steps // 8):
        batch = step_batch(model, G, args.grid, masks[s - 1], seed=s)
        fns = {k: (lambda p=(k == "packed"): update(model, batch, conds, p)) for k in ("full", "packed")}
        times, cpu = {k: [] for k in fns}, {k: [] for k in fns}
        for _ in range(args.repeats):
            for k, f in fns.items():
                t0, c0 = time.perf_counter(), time.process_time()
                f()
                times[k].append(time.perf_counter() - t0)
                cpu[k].append(time.process_time() - c0)
        med = {k: statistics.median(v) for k, v in times.items()}
        peak = {k: peak_bytes(f) for k, f in fns.items()}
        rows.append(
            {
                "after_step": s - 1,
                "scored_fraction": masks[s - 1] / HW,
                "seconds": times,
                "seconds_median": med,
                "cpu_seconds_median": {k: statistics.median(v) for k, v in cpu.items()},
                "time_ratio_packed_over_full": med["packed"] / med["full"],
                "peak_bytes": peak,
                "peak_ratio_packed_over_full": peak["packed"] / peak["full"],
                **compare(model, batch, conds),
            }
        )
    return {
        "what": "one selected step's RL update: output head at the scored positions only (packed) vs everywhere (full)",
        "config": {**asdict(config), "axes_dims_rope": list(config.axes_dims_rope)},
        "grid": [args.grid, args.grid],
        "group": G,
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0],  # other work on the machine while it ran
        "memory_method": "torch.profiler memory timeline: peak of the tensors created during one update",
        "mask_counts": rows,
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__},
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "results/benchmarks/packed_update_cpu.json"))
    ap.add_argument("--repeats", type=int, default=3, help="timed updates per variant and mask count (interleaved)")
    ap.add_argument("--steps", type=int, default=16, help="sampling steps N of the cosine schedule")
    ap.add_argument("--grid", type=int, default=32, help="token map side")
    ap.add_argument("--group", type=int, default=4, help="samples of the group (rows of the update)")
    ap.add_argument("--codebook", type=int, default=2048, help="codebook size of the reduced model")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    res = run(args)
    write_json_atomic(Path(args.out), res)
    for r in res["mask_counts"]:
        print(
            f"scored {r['scored_fraction']:.2f}: time packed/full {r['time_ratio_packed_over_full']:.3f}, "
            f"peak memory packed/full {r['peak_ratio_packed_over_full']:.3f}, "
            f"gradient rel. diff {r['grad_max_rel_diff']:.1e}, log-prob diff {r['logp_max_abs_diff']:.1e}"
        )
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
