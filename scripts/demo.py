"""`make demo`: a trained model within minutes of cloning, through the pipeline's own `maskfocus` commands.

From a fresh clone (no models/, no work/) it trains a small toy CLIP (`maskfocus train-clip`), a small base model on
its frozen text tower (`maskfocus pretrain`), runs a short MaskFocus RL run with the recipe (`maskfocus train --params
params.yaml --section rl`), evaluates the base and the trained model on the same test prompts and seeds (`maskfocus
evaluate`), and draws a before/after picture grid and a per-tag table. Everything goes to the output folder (default
demo/, git-ignored); demo/README.md lists what was made. The knobs are in scripts/demo.yaml.

    python scripts/demo.py                      # or `make demo`; a phase whose output exists is skipped
    python scripts/demo.py --fresh              # delete the output folder first
    python scripts/demo.py --config my.yaml --out /tmp/demo
"""

from __future__ import annotations

import argparse, contextlib, io, json, os, shutil, subprocess, sys, time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TEST = ROOT / "data" / "prompts" / "test_metadata.jsonl"
SECTIONS = ("threads", "train_clip", "pretrain", "rl", "eval", "grid")


def load_config(path: Path) -> dict:
    "The demo's knobs: every section of scripts/demo.yaml must be there (and nothing else)."
    cfg = yaml.safe_load(Path(path).read_text()) or {}
    missing, unknown = set(SECTIONS) - set(cfg), set(cfg) - set(SECTIONS)
    if missing or unknown:
        raise SystemExit(f"error: {path}: missing sections {sorted(missing)}, unknown sections {sorted(unknown)}")
    return cfg


def show(path: Path) -> str:
    "A path as a reader would type it: relative to the repository when inside it."
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


class Demo:
    "The output folder, the knobs, and the phases' wall times."

    def __init__(self, cfg: dict, out: Path):
        self.cfg, self.out = cfg, Path(out).resolve()
        self.timings_path = self.out / "timings.json"
        self.timings = json.loads(self.timings_path.read_text()) if self.timings_path.is_file() else {}
        self.env = dict(os.environ)
        if cfg["threads"]:
            self.env["OMP_NUM_THREADS"] = str(cfg["threads"])
        self.exe = shutil.which("maskfocus", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
        if not self.exe:
            raise SystemExit("error: the `maskfocus` command is not installed (run `make setup` first)")

    def p(self, *parts) -> Path:
        return self.out.joinpath(*parts)

    def phase(self, name: str, done: Path, what: str, fn) -> None:
        "Run `fn` unless `done` exists; print one line with the phase's wall time."
        if done.exists():
            print(f"[demo] {name:<10} skipped: {show(done)} exists", flush=True)
            return
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        self.timings[name] = round(dt, 1)
        self.timings_path.write_text(json.dumps(self.timings, indent=1) + "\n")
        print(f"[demo] {name:<10} {dt:6.1f} s  {what}", flush=True)

    def run(self, name: str, *args) -> None:
        "Run `maskfocus <args>` from the repository root, its output in logs/<name>.log; fail with the log's tail."
        log = self.p("logs", f"{name}.log")
        log.parent.mkdir(parents=True, exist_ok=True)
        argv = [self.exe, *map(str, args)]
        with open(log, "w") as f:
            f.write("$ maskfocus " + " ".join(argv[1:]) + "\n")
            f.flush()
            r = subprocess.run(
                argv, cwd=ROOT, env=self.env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        if r.returncode != 0:
            tail = "\n".join(log.read_text().splitlines()[-15:])
            raise SystemExit(f"{tail}\nerror: `maskfocus {args[0]}` failed (exit {r.returncode}); log: {show(log)}")


def write_inputs(d: Demo) -> None:
    "The params of the clip and pretrain commands (params.yaml's sections with the demo's knobs), the test subset."
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    mine = {
        "train_clip": {**params["train_clip"], **d.cfg["train_clip"]},
        "pretrain": {**params["pretrain"], **d.cfg["pretrain"], "text_encoder": str(d.p("models", "clip"))},
    }
    d.p("params.yaml").write_text(
        "# written by scripts/demo.py: params.yaml's sections with scripts/demo.yaml's knobs\n"
        + yaml.safe_dump(mine, sort_keys=False)
    )
    k, seen, rows = d.cfg["eval"]["prompts_per_tag"], {}, []
    for line in TEST.read_text().splitlines():
        tag = json.loads(line)["tag"]
        if seen.get(tag, 0) < k:
            seen[tag] = seen.get(tag, 0) + 1
            rows.append(line)
    d.p("data").mkdir(exist_ok=True)
    d.p("data", "test_subset.jsonl").write_text("\n".join(rows) + "\n")


def check_config(d: Demo) -> None:
    "Remember the knobs of this output folder; refuse to mix outputs of other knobs."
    path, now = d.p("config.json"), json.loads(json.dumps(d.cfg))
    if path.is_file() and json.loads(path.read_text()) != now:
        raise SystemExit(f"error: {show(d.out)} was made with other knobs: run `python scripts/demo.py --fresh`")
    d.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(now, indent=1) + "\n")


def train_phases(d: Demo) -> None:
    "The toy CLIP, the base model on its frozen text tower, the short RL run."
    clip, base, rl = d.cfg["train_clip"], d.cfg["pretrain"], d.cfg["rl"]
    d.phase(
        "clip",
        d.p("results", "clip.json"),
        f"maskfocus train-clip ({clip['steps']} steps) -> {show(d.p('models', 'clip'))}",
        lambda: d.run(
            "clip", "train-clip", "--params", d.p("params.yaml"), "--run", d.p("work", "train_clip"),
            "--out", d.p("models", "clip"), "--metrics", d.p("results", "clip.json"),
        ),
    )  # fmt: skip
    d.phase(
        "pretrain",
        d.p("models", "base", "model_index.json"),
        f"maskfocus pretrain ({base['steps']} steps) -> {show(d.p('models', 'base'))}",
        lambda: d.run(
            "pretrain", "pretrain", "--params", d.p("params.yaml"), "--run", d.p("work", "pretrain"),
            "--out", d.p("models", "base"),
        ),
    )  # fmt: skip
    sets = [a for k, v in rl["set"].items() for a in ("--set", f"{k}={json.dumps(v)}")]
    d.phase(
        "rl",
        d.p("rl", "final", "model_index.json"),
        f"maskfocus train --preset {rl['preset']} ({rl['iterations']} iterations) -> {show(d.p('rl', 'final'))}",
        lambda: d.run(
            "rl", "train", "--params", ROOT / "params.yaml", "--section", "rl", "--preset", rl["preset"],
            "--iterations", rl["iterations"], "--seed", rl["seed"], *sets, "--base", d.p("models", "base"),
            "--out", d.p("rl"), "--report", d.p("results", "rl"), "--restart-on-change", "--no-progress",
        ),
    )  # fmt: skip


def eval_phase(d: Demo, name: str, model: Path, result: str) -> None:
    "`maskfocus evaluate` of one model on the demo's test prompts."
    e = d.cfg["eval"]
    d.phase(
        name,
        d.p("results", result, "eval.json"),
        f"maskfocus evaluate {show(model)} ({e['prompts_per_tag']} test prompts x {e['per_prompt']} images per tag)",
        lambda: d.run(
            name, "evaluate", "--model", model, "--metadata", d.p("data", "test_subset.jsonl"),
            "--out", d.p("results", result), "--details", d.p("work", name), "--steps", e["steps"], "--cfg", e["cfg"],
            "--per-prompt", e["per_prompt"], "--seed", e["seed"],
        ),
    )  # fmt: skip


def grid_rows(d: Demo) -> list[dict]:
    "The grid's prompts: the first `grid.prompts_per_tag` evaluation prompts of each tag, in GenEval's tag order."
    from maskfocus.geneval import TAGS

    metas = [json.loads(line) for line in d.p("data", "test_subset.jsonl").read_text().splitlines()]
    k = d.cfg["grid"]["prompts_per_tag"]
    return [m for t in TAGS for m in [m for m in metas if m["tag"] == t][:k]]


def draw_grid(d: Demo) -> None:
    "Base and trained images of the same prompts and seeds side by side, each titled with the judge's verdict."
    import torch
    from maskfocus.models.pipeline import MaskedPipeline
    from maskfocus.report.plots import new_figure, save_figure
    from maskfocus.toy.evaluate import generate_for_metadata, judge_images

    if d.cfg["threads"]:
        torch.set_num_threads(d.cfg["threads"])
    g, e, rows = d.cfg["grid"], d.cfg["eval"], grid_rows(d)
    n = g["images"]
    fig, axs = new_figure(len(rows), 2 * n, size=(1.0, 1.12))
    for side, (label, folder) in enumerate((("base", d.p("models", "base")), ("trained", d.p("rl", "final")))):
        with contextlib.redirect_stderr(io.StringIO()):  # the weight loader's progress bars
            pipe = MaskedPipeline.load(folder)
        ims = generate_for_metadata(pipe, rows, n, g["seed"], e["steps"], e["cfg"])
        ok = [r["correct"] for r in judge_images(rows, ims)]
        for i, m in enumerate(rows):
            for c in range(n):
                ax, good = axs[i, side * n + c], ok[i * n + c]
                ax.imshow(ims[i][c])
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(f"{label}: {'ok' if good else 'wrong'}", fontsize=6, color="green" if good else "red")
            if side == 0:
                axs[i, 0].set_ylabel(m["prompt"].replace("a photo of ", ""), fontsize=6)
    fig.suptitle(
        f"base (left) vs MaskFocus after {d.cfg['rl']['iterations']} iterations (right), same seeds", fontsize=8
    )
    save_figure(fig, d.p("grid.png"), dpi=100)


def per_tag_table(d: Demo) -> tuple[str, dict, dict]:
    "The markdown table of the two evaluations (one row each, then the change), and the two summaries."
    from maskfocus.geneval import TAGS
    from maskfocus.toy.evaluate import table_markdown

    e, rl = d.cfg["eval"], d.cfg["rl"]
    label = f"N={int(e['steps'])},cfg={float(e['cfg']):g}"
    base = json.loads(d.p("results", "base", "eval.json").read_text())[label]
    trained = json.loads(d.p("results", "rl", "eval.json").read_text())[label]
    table = table_markdown({"base": base, f"{rl['preset']}, {rl['iterations']} iterations": trained})
    delta = [trained["tags"][t] - base["tags"][t] for t in TAGS] + [trained["overall"] - base["overall"]]
    return table + "| change | " + " | ".join(f"{x:+.3f}" for x in delta) + " |\n", base, trained


def write_summary(d: Demo) -> str:
    "table.md and README.md: what was made, the phases' wall times, the per-tag table; returns the table."
    table, base, _ = per_tag_table(d)
    e, n_tag = d.cfg["eval"], d.cfg["eval"]["prompts_per_tag"] * d.cfg["eval"]["per_prompt"]
    note = (
        f"Judge accuracy on the first {e['prompts_per_tag']} test prompts of each GenEval tag, {e['per_prompt']} "
        f"images each ({n_tag} images per tag), N={e['steps']} steps, CFG {e['cfg']:g}, seed {e['seed']}; the same "
        "prompts and seeds for both models. Only `position` and `color_attr` hold compositions out of training; the "
        "test prompts of the other tags are training prompts too.\n"
    )
    d.p("table.md").write_text("# Before/after, per GenEval tag\n\n" + table + "\n" + note)
    times = "".join(f"| {k} | {v:.1f} |\n" for k, v in d.timings.items())
    total = sum(d.timings.values())
    model, base_dir = show(d.p("rl", "final")), show(d.p("models", "base"))
    d.p("README.md").write_text(
        "# The demo (`make demo`)\n\nMade by scripts/demo.py with the knobs in config.json (scripts/demo.yaml).\n\n"
        f"- `{show(d.p('models', 'clip'))}`: the toy CLIP (`maskfocus train-clip`); its evaluation: results/clip.json\n"
        f"- `{base_dir}`: the base model on the CLIP's frozen text tower (`maskfocus pretrain`)\n"
        f"- `{model}`: the MaskFocus model (`maskfocus train`); its curves in results/rl/dvclive\n"
        "- `results/base`, `results/rl`: `maskfocus evaluate` of both (eval.json, eval.md); picture grids per tag in "
        "work/eval_base/grids and work/eval_rl/grids\n"
        "- `grid.png`: base (left) vs trained (right), the same prompts and seeds; `table.md`: the table below\n"
        "- `logs/`: the output of every command; `params.yaml`: the sections the clip and pretrain commands read\n\n"
        f"## Before/after\n\n{table}\n{note}\n![base vs trained](grid.png)\n\n"
        f"## Wall time per phase (s)\n\n| phase | s |\n|---|---|\n{times}| total | {total:.1f} |\n\n"
        "## Next\n\n"
        f"    maskfocus sample --model {model} --metadata data/prompts/test_metadata.jsonl "
        f"--out {show(d.p('samples'))}\n"
        f"    maskfocus evaluate --model {model} --metadata data/prompts/test_metadata.jsonl "
        f"--out {show(d.p('eval_full'))}\n"
        f"    maskfocus train --params params.yaml --section rl --base {base_dir} --out {show(d.p('rl_full'))}\n"
    )
    return table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "scripts" / "demo.yaml"), help="the knobs (default: %(default)s)")
    ap.add_argument("--out", default=str(ROOT / "demo"), help="output folder (default: %(default)s)")
    ap.add_argument("--fresh", action="store_true", help="delete the output folder first")
    args = ap.parse_args(argv)
    d = Demo(load_config(Path(args.config)), Path(args.out))
    if args.fresh and d.out.exists():
        if any(d.out.iterdir()) and not d.p("config.json").is_file():
            raise SystemExit(f"error: --fresh: {show(d.out)} is not a demo folder (no config.json); not deleting it")
        shutil.rmtree(d.out)
        d.timings = {}
    t0 = time.perf_counter()
    check_config(d)
    write_inputs(d)
    train_phases(d)
    eval_phase(d, "eval_base", d.p("models", "base"), "base")
    eval_phase(d, "eval_rl", d.p("rl", "final"), "rl")
    d.phase("grid", d.p("grid.png"), f"before/after picture grid -> {show(d.p('grid.png'))}", lambda: draw_grid(d))
    table = write_summary(d)
    print(f"\n{table}\n[demo] done in {time.perf_counter() - t0:.1f} s; see {show(d.p('README.md'))}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
