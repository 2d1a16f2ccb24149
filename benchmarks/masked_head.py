"""What does running the output head only at the still-masked positions save in a masked-only sampling run?

`sample(..., masked_only=True)` with a model that takes `positions=` (the Meissonic transformer) asks for logits at
the masked positions only (packed `[M, V]`); without that support the head runs at every position and the sampler
gathers the masked rows from `[B, V, H, W]`. Both draw the same tokens (recorded below). Measured here in one run,
on one CPU thread, at a reduced Meissonic-like size (width 256, 2 dual + 4 single blocks, codebook 2048 so that
codebook / width = 8 as in Meissonic, 32 x 32 tokens, 2 prompts with CFG 5, N = 16 steps):

- time of a full sampling run, packed vs full head (interleaved repeats, medians, their ratio);
- peak memory of the tensors a sampling run creates (weights excluded), from the torch profiler's memory timeline
  (the run's peak is at its first step, where every position is masked and both heads do the same work), and the
  same for one late step alone (three quarters through the trajectory, few positions masked);
- the head's share of one forward's FLOPs, at this size and at Meissonic's full size (1024², codebook 8192), counted
  with `torch.utils.flop_counter` on the meta device (`maskfocus.models.flops.forward_flops` for the forward), and
  the share of the head's FLOPs that a masked-only trajectory skips (the cosine schedule's known positions).

Not a test: it only writes numbers.

    .venv/bin/python benchmarks/masked_head.py [--out results/benchmarks/masked_head_cpu.json] [--repeats 3]
"""

from __future__ import annotations
import argparse, os, platform, statistics, sys, time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from maskfocus.core import write_json_atomic
from maskfocus.models.flops import forward_flops
from maskfocus.models.meissonic_config import MeissonicConfig
from maskfocus.models.sampler import gumbel_temperatures, mask_schedule, maskgit_step, sample
from maskfocus.models.transformer import ConvMlmHead, MeissonicTransformer

ROOT = Path(__file__).resolve().parents[1]


def reduced_config(heads: int = 4, layers: int = 2, single: int = 4, codebook: int = 2048) -> MeissonicConfig:
    "Meissonic's config at a smaller width and depth (head width 64, RoPE axes 16/24/24), text width kept."
    return replace(
        MeissonicConfig.meissonic(),
        num_attention_heads=heads,
        attention_head_dim=64,
        axes_dims_rope=(16, 24, 24),
        num_layers=layers,
        num_single_layers=single,
        codebook_size=codebook,
        vocab_size=codebook + 64,
        pooled_projection_dim=heads * 64,
    )


class FullHead(torch.nn.Module):
    "The same model without `supports_positions`: the sampler runs its head at every position."

    def __init__(self, model):
        super().__init__()
        self.model, self.codebook_size, self.mask_token_id = model, model.codebook_size, model.mask_token_id

    def forward(self, *args):
        return self.model(*args)


def head_flops(config: MeissonicConfig, grid) -> int:
    "FLOPs of the output head at every position of one sample's map (meta device)."
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        head, x = ConvMlmHead(config.inner_dim, config.codebook_size), torch.zeros(1, config.inner_dim, *grid)
    fc = FlopCounterMode(display=False)
    with torch.no_grad(), fc:
        head(x)
    return fc.get_total_flops()


def flop_shares(config: MeissonicConfig, grid, N: int) -> dict:
    "The head's share of a forward, and the share of the head's FLOPs over a trajectory at known positions."
    total, head = forward_flops(config, grid)["total"], head_flops(config, grid)
    HW = grid[0] * grid[1]
    masked = [HW] + mask_schedule(N, HW)[:-1]  # masks before each step
    kept = sum(masked) / (N * HW)  # the head's work left with the packed head
    return {
        "grid": list(grid),
        "steps": N,
        "forward_flops": total,
        "head_flops": head,
        "head_share_of_forward": head / total,
        "masked_fraction_mean": kept,
        "forward_flops_saved_share": head / total * (1 - kept),
    }


def peak_bytes(fn) -> int:
    "Peak bytes of the tensors `fn` creates (CPU), from the torch profiler's memory timeline."
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as p:
        fn()
    cur = peak = 0
    for _, action, _, size in p._memory_profile().timeline:
        cur += size if action == Action.CREATE else -size if action == Action.DESTROY else 0
        peak = max(peak, cur)
    return peak


def late_step(model, conds, tokens, s, N, cfg, packed: bool):
    "One guided model call and `maskgit_step` (masked_only) at step s from the map `tokens` [B,H,W]."
    th, pooled, nth, npool, mc = conds
    B, V, mask_id = tokens.shape[0], model.codebook_size, model.mask_token_id
    where = tokens == mask_id
    kw = {"positions": torch.cat([where, where])} if packed else {}
    t = torch.full((2 * B,), N - 1 - s)
    rows = (torch.cat([nth.expand(B, -1, -1), th]), torch.cat([npool.expand(B, -1), pooled]), t, mc.expand(2 * B, -1))
    with torch.no_grad():
        l_u, l_c = model(torch.cat([tokens, tokens]), *rows, **kw).chunk(2)
    logits = l_u + cfg * (l_c - l_u)
    g = torch.Generator().manual_seed(s)
    return maskgit_step(logits, tokens, s, N, mask_id, g, gumbel_temperatures(N)[s], masked_only=True)


def run(args) -> dict:
    torch.set_num_threads(1)
    config, grid = reduced_config(codebook=args.codebook), (args.grid, args.grid)
    torch.manual_seed(0)
    model = MeissonicTransformer(config).eval()
    g = torch.Generator().manual_seed(1)
    B, D, P = args.batch, config.joint_attention_dim, config.pooled_projection_dim
    conds = (
        torch.randn(B, 77, D, generator=g),
        torch.randn(B, P, generator=g),
        torch.randn(1, 77, D, generator=g),
        torch.randn(1, P, generator=g),
        torch.tensor([[16.0 * args.grid] * 2 + [0, 0, 6]]),
    )
    go = lambda m: sample(
        m, *conds, N=args.steps, cfg=args.cfg, generator=torch.Generator().manual_seed(0), grid=grid, masked_only=True
    )
    fns = {"packed": lambda: go(model), "full": lambda: go(FullHead(model))}
    same = torch.equal(fns["packed"](), fns["full"]())
    times = {k: [] for k in fns}
    for _ in range(args.repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    peak = {k: peak_bytes(f) for k, f in fns.items()}
    s_late, maps = 3 * args.steps // 4, []
    sample(
        model,
        *conds,
        N=args.steps,
        cfg=args.cfg,
        generator=None,
        grid=grid,
        masked_only=True,
        on_step=lambda s, o: maps.append(o.tokens.view(B, *grid)),
    )
    before = maps[s_late - 1]
    late = {
        k: peak_bytes(lambda: late_step(model, conds, before, s_late, args.steps, args.cfg, k == "packed")) for k in fns
    }
    return {
        "what": "masked_only sampling: output head at the masked positions only (packed) vs at every position (full)",
        "config": {**asdict(config), "axes_dims_rope": list(config.axes_dims_rope)},
        "grid": list(grid),
        "batch": B,
        "cfg": args.cfg,
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "tokens_equal": same,
        "seconds": times,
        "seconds_median": med,
        "time_ratio_packed_over_full": med["packed"] / med["full"],
        "peak_bytes": peak,
        "memory_method": "torch.profiler memory timeline: peak of the tensors created during one sampling run",
        "peak_ratio_packed_over_full": peak["packed"] / peak["full"],
        "late_step": {
            "step": s_late,
            "masked_fraction": float((before == model.mask_token_id).float().mean()),
            "peak_bytes": late,
            "peak_ratio_packed_over_full": late["packed"] / late["full"],
        },
        "flops_reduced": flop_shares(config, grid, args.steps),
        "flops_paper": flop_shares(MeissonicConfig.meissonic(), (64, 64), 64),
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__},
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "results/benchmarks/masked_head_cpu.json"))
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per variant (interleaved)")
    ap.add_argument("--steps", type=int, default=16, help="sampling steps N")
    ap.add_argument("--grid", type=int, default=32, help="token map side")
    ap.add_argument("--batch", type=int, default=2, help="prompts (rows per model call: twice that with CFG)")
    ap.add_argument("--cfg", type=float, default=5.0, help="guidance weight")
    ap.add_argument("--codebook", type=int, default=2048, help="codebook size of the reduced model")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    res = run(args)
    write_json_atomic(Path(args.out), res)
    fr, fp = res["flops_reduced"], res["flops_paper"]
    print(
        f"tokens equal: {res['tokens_equal']}; time packed/full {res['time_ratio_packed_over_full']:.3f} "
        f"({res['seconds_median']['packed']:.2f} s vs {res['seconds_median']['full']:.2f} s); "
        f"peak memory packed/full {res['peak_ratio_packed_over_full']:.3f} (run), "
        f"{res['late_step']['peak_ratio_packed_over_full']:.3f} (step {res['late_step']['step']} alone)\n"
        f"head share of a forward: {fr['head_share_of_forward']:.3f} here, {fp['head_share_of_forward']:.4f} at paper "
        f"size; forward FLOPs skipped over a trajectory: {fr['forward_flops_saved_share']:.3f} here, "
        f"{fp['forward_flops_saved_share']:.4f} at paper size (N=64)\n-> {args.out}"
    )


if __name__ == "__main__":
    main()
