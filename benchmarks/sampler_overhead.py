"""How much does `maskfocus.models.sampler.sample` add on top of the model's own forward passes, and how does it
compare with diffusers' `AmusedPipeline` doing the same work?

Two measurements at toy scale (8x8 token map, V = 73, batch 32, N = 16 steps, classifier-free guidance 3,
so every step is one forward pass on 64 rows):

1. `toy`: a small random transformer-like stand-in (~1M parameters) sampled by `sample(...)`, against the
   same number of forward passes of that model on the same batch alone. Goal: ratio <= 1.10.
2. `vs_diffusers`: a tiny random diffusers `UVit2DModel` (built locally, no hub), sampled by our `sample`
   through a small adapter and by `AmusedPipeline(output_type="latent")` with the same settings and seed.
   Goal: ratio ours / diffusers <= 1.0. The two must also return identical tokens (recorded).

Repeats are interleaved (A, B, A, B, ...) so that load from other processes hits both sides alike; the
medians are compared. Not a test: it only writes numbers.

    .venv/bin/python benchmarks/sampler_overhead.py [--out results/benchmarks/sampler_overhead.json]
"""

from __future__ import annotations
import argparse, math, os, platform, statistics, sys, time
from pathlib import Path

import torch
from torch import nn

from maskfocus.core import write_json_atomic
from maskfocus.models.sampler import sample

ROOT = Path(__file__).resolve().parents[1]


class ToyTransformer(nn.Module):
    "A random transformer-like stand-in with the project's model interface: text tokens prepended, adaLN-free."

    def __init__(self, V=73, H=8, W=8, d=128, layers=5, heads=4, text_dim=32, pooled_dim=32, micro=5):
        super().__init__()
        self.codebook_size, self.mask_token_id = V, V
        self.embed = nn.Embedding(V + 1, d)
        self.pos = nn.Parameter(torch.randn(H * W, d) * 0.02)
        self.text = nn.Linear(text_dim, d)
        self.cond = nn.Linear(pooled_dim + micro + 1, d)
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, V)

    def forward(self, tokens, text_hidden, pooled, timestep, micro_conds):
        B, H, W = tokens.shape
        t = torch.as_tensor(timestep, device=tokens.device).float().expand(B)[:, None]
        c = self.cond(torch.cat([pooled, micro_conds / 1000, t], dim=1))[:, None]
        x = self.embed(tokens.flatten(1)) + self.pos + c
        L = text_hidden.shape[1]
        x = self.blocks(torch.cat([self.text(text_hidden), x], dim=1))[:, L:]
        return self.head(x).permute(0, 2, 1).reshape(B, -1, H, W)


class UVitAdapter(nn.Module):
    "diffusers' UVit2DModel behind the project's call signature (aMUSEd's transformer takes no timestep)."

    def __init__(self, uvit, mask_id):
        super().__init__()
        self.uvit, self.codebook_size, self.mask_token_id = uvit, uvit.config.codebook_size, mask_id

    def forward(self, tokens, text_hidden, pooled, timestep, micro_conds):
        return self.uvit(tokens, micro_conds=micro_conds, pooled_text_emb=pooled, encoder_hidden_states=text_hidden)


def interleaved(fns: dict, repeats: int) -> dict:
    "Time each callable `repeats` times, alternating between them; one warm-up call each first."
    for f in fns.values():
        f()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return times


def summary(times: dict, num: str, den: str, goal: float) -> dict:
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med[num] / med[den]
    return {
        **{f"{k}_s": [round(x, 5) for x in v] for k, v in times.items()},
        **{f"{k}_median_s": round(m, 5) for k, m in med.items()},
        "ratio": round(ratio, 4),
        "goal": goal,
        "meets_goal": ratio <= goal,
    }


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default=str(ROOT / "results/benchmarks/sampler_overhead.json"), help="JSON file to write")
    p.add_argument("--repeats", type=int, default=7, help="timed repeats per side (median reported)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own choice)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--cfg", type=float, default=3.0)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    B, N, cfg, H, W, V, Dt, L = a.batch, a.steps, a.cfg, 8, 8, 73, 32, 8
    g = torch.Generator().manual_seed(0)
    text, pooled = torch.randn(B, L, Dt, generator=g).to(dev), torch.randn(B, Dt, generator=g).to(dev)
    neg_text, neg_pooled = torch.randn(1, L, Dt, generator=g).to(dev), torch.randn(1, Dt, generator=g).to(dev)
    micro = torch.tensor([[W * 8.0, H * 8.0, 0, 0, 6]], device=dev)
    gen = lambda seed: torch.Generator(device=dev).manual_seed(seed)

    # ---- 1. sample(...) against the bare forward passes
    torch.manual_seed(0)
    toy = ToyTransformer(V, H, W, text_dim=Dt, pooled_dim=Dt).to(dev).eval()
    n_params = sum(q.numel() for q in toy.parameters())
    rows = 2 * B if cfg not in (0, 1) else B
    f_tokens = torch.randint(0, V + 1, (rows, H, W), generator=g).to(dev)
    f_text, f_pooled = torch.cat([neg_text.expand(B, -1, -1), text]), torch.cat([neg_pooled.expand(B, -1), pooled])
    f_micro = micro.expand(rows, -1)

    def run_sample():
        sample(toy, text, pooled, neg_text, neg_pooled, micro, N=N, cfg=cfg, generator=gen(1), grid=(H, W))
        sync()

    @torch.no_grad()
    def run_forwards():
        for s in range(N):
            toy(f_tokens, f_text, f_pooled, torch.tensor(N - 1 - s, device=dev).expand(rows), f_micro)
        sync()

    t_toy = interleaved({"sample": run_sample, "forwards": run_forwards}, a.repeats)

    # ---- 2. ours against diffusers' AmusedPipeline on the same tiny UVit2DModel
    from diffusers import AmusedPipeline, AmusedScheduler, UVit2DModel
    from diffusers.utils import logging as dlogging
    import diffusers

    dlogging.set_verbosity_error()
    torch.manual_seed(0)
    uvit = (
        UVit2DModel(
            hidden_size=32,
            use_bias=False,
            cond_embed_dim=Dt,
            micro_cond_encode_dim=16,
            micro_cond_embed_dim=80,
            encoder_hidden_size=Dt,
            vocab_size=V + 1,
            codebook_size=V,
            in_channels=32,
            block_out_channels=32,
            num_res_blocks=1,
            downsample=False,
            upsample=False,
            block_num_heads=2,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            sample_size=H,
        )
        .to(dev)
        .eval()
    )
    pipe = AmusedPipeline(
        vqvae=None, tokenizer=None, text_encoder=None, transformer=uvit, scheduler=AmusedScheduler(mask_token_id=V)
    )
    pipe.set_progress_bar_config(disable=True)
    adapter = UVitAdapter(uvit, V)
    neg_text_b, neg_pooled_b = neg_text.expand(B, -1, -1).contiguous(), neg_pooled.expand(B, -1).contiguous()
    out = {}

    def run_ours():
        out["ours"] = sample(
            adapter, text, pooled, neg_text_b, neg_pooled_b, micro, N=N, cfg=cfg, generator=gen(2), grid=(H, W)
        )
        sync()

    def run_diffusers():
        out["diffusers"] = pipe(
            prompt_embeds=pooled,
            encoder_hidden_states=text,
            negative_prompt_embeds=neg_pooled_b,
            negative_encoder_hidden_states=neg_text_b,
            height=H * 8,
            width=W * 8,
            num_inference_steps=N,
            guidance_scale=cfg,
            output_type="latent",
            generator=gen(2),
        ).images
        sync()

    t_vs = interleaved({"ours": run_ours, "diffusers": run_diffusers}, a.repeats)

    res = {
        "what": "maskfocus.models.sampler.sample overhead at toy scale (see the script's docstring)",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": dict(
            batch=B,
            steps=N,
            cfg=cfg,
            grid=[H, W],
            codebook_size=V,
            text_tokens=L,
            repeats=a.repeats,
            device=str(dev),
            model_rows_per_step=rows,
        ),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "versions": dict(python=platform.python_version(), torch=torch.__version__, diffusers=diffusers.__version__),
        "toy": {
            "model": "ToyTransformer (d=128, 5 pre-norm encoder layers, text tokens prepended)",
            "params": n_params,
            **summary(t_toy, "sample", "forwards", 1.10),
        },
        "vs_diffusers": {
            "model": "UVit2DModel (hidden 32, 2 layers), random init",
            "params": sum(q.numel() for q in uvit.parameters()),
            "identical_tokens": bool(torch.equal(out["ours"].cpu(), out["diffusers"].cpu())),
            **summary(t_vs, "ours", "diffusers", 1.0),
        },
    }
    write_json_atomic(a.out, res)
    print(
        f"threads={res['torch_threads']}  toy: sample {res['toy']['sample_median_s']:.4f}s / forwards "
        f"{res['toy']['forwards_median_s']:.4f}s = {res['toy']['ratio']:.3f} (goal <= 1.10, params {n_params:,})"
    )
    print(
        f"vs diffusers: ours {res['vs_diffusers']['ours_median_s']:.4f}s / AmusedPipeline "
        f"{res['vs_diffusers']['diffusers_median_s']:.4f}s"
        f" = {res['vs_diffusers']['ratio']:.3f} (goal <= 1.0), identical tokens: "
        f"{res['vs_diffusers']['identical_tokens']}"
    )
    print(f"wrote {a.out}")
    return res


if __name__ == "__main__":
    main()
