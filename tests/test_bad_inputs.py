"""One line for every bad input (issue 19): each case exits with status 2, prints exactly one `error:` line (no
traceback) naming the file or field, and leaves the --out path as it was (absent, or unchanged)."""

import errno
import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEST_SPLIT = ROOT / "data" / "prompts" / "test_metadata.jsonl"
TRAIN_SPLIT = ROOT / "data" / "prompts" / "train_metadata.jsonl"
LINES = TEST_SPLIT.read_text().splitlines()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    "A tiny random toy pipeline in the released layout, built once for the module."
    from maskfocus.toy.pipeline import toy_pipeline

    d = tmp_path_factory.mktemp("models") / "model"
    toy_pipeline(dim=32, heads=2, layers=1, single_layers=1, text_dim=32, text_layers=1).save(d)
    return d


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    "A GenEval-layout folder of 3 prompts x 1 ground-truth image (`maskfocus render`)."
    from maskfocus.cli import main

    d = tmp_path_factory.mktemp("rendered")
    (d / "meta.jsonl").write_text("\n".join(LINES[:3]) + "\n")
    assert main(["render", str(d / "meta.jsonl"), "--out", str(d / "gen")]) == 0
    return d / "gen"


def copy_tree(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def meta(tmp, text=None, name="meta.jsonl", binary=None) -> Path:
    p = tmp / name
    if binary is not None:
        p.write_bytes(binary)
    else:
        p.write_text("\n".join(LINES[:2]) + "\n" if text is None else text)
    return p


def edited(tmp, old, new) -> Path:
    s = TEST_SPLIT.read_text()
    assert old in s
    return meta(tmp, s.replace(old, new, 1))


def params(tmp, text) -> Path:
    p = tmp / "p.yaml"
    p.write_text(text)
    return p


def model_copy(tmp, model, edit) -> Path:
    "A copy of the tiny model with `edit(folder)` applied."
    d = copy_tree(model, tmp / "m")
    edit(d)
    return d


def truncate(path: Path, keep=0.5):
    b = path.read_bytes()
    path.write_bytes(b[: int(len(b) * keep)])


def _one_weight(d: Path, sub: str, value: float):
    "Set one value of the first float tensor of `sub`/*.safetensors to `value` (NaN, inf)."
    from safetensors.torch import load_file, save_file

    f = sorted((d / sub).glob("*.safetensors"))[0]
    sd = load_file(f)
    k = next(k for k, v in sd.items() if v.is_floating_point())
    sd[k] = sd[k].clone()
    sd[k].view(-1)[0] = value
    save_file(sd, f)


def _other_width(tmp, model):
    "The transformer of a model of another width in the folder of `model`."
    import shutil

    from maskfocus.toy.pipeline import toy_pipeline

    d = copy_tree(model, tmp / "m")
    toy_pipeline(dim=64, heads=2, layers=1, single_layers=1, text_dim=32, text_layers=1).save(tmp / "wide")
    for f in (tmp / "wide" / "transformer").glob("*.safetensors"):
        shutil.copy(f, d / "transformer" / f.name)
    return d


def _write_fails(monkeypatch, err=errno.ENOSPC):
    "Every file write through `open(..., 'w...')` / Path.write_* raises OSError(err): a full disk."
    import builtins

    real_open = builtins.open

    def full_open(file, mode="r", *a, **k):
        if any(c in mode for c in "wax+"):
            raise OSError(err, os.strerror(err), str(file))
        return real_open(file, mode, *a, **k)

    monkeypatch.setattr(builtins, "open", full_open)
    monkeypatch.setattr(Path, "write_text", lambda self, *a, **k: full_open(self, "w"))
    monkeypatch.setattr(Path, "write_bytes", lambda self, *a, **k: full_open(self, "wb"))


M, G, O = "{model}", "{gen}", "{out}"
SAMPLE = ["sample", "--model", M, "--metadata", "{meta}", "--out", O, "--steps", "2"]
TRAIN = ["train", "--base", M, "--out", O, "--iterations", "1", "--no-progress", "--cpu"]
SMALL = ["--set", "prompts_per_iter=1", "--set", "group_size=2", "--set", "steps=4"]


def train_params(text: str, expect: str) -> tuple:
    "A `train --params` case: the params file holds `text`; the error line must contain `expect`."
    return (lambda t, m, g: {"p": params(t, text)}, TRAIN + ["--params", "{p}"], expect)


# name -> (setup(tmp, model, gen) -> {placeholder: value}, argv, expected text in the error line)
CASES = {
    # --- metadata files (render, sample) ---
    "malformed JSON line": (
        lambda t, m, g: {"meta": edited(t, "}]", "}")},
        ["render", "{meta}", "--out", O],
        ":1: malformed JSON",
    ),
    "unknown tag": (
        lambda t, m, g: {"meta": edited(t, '"tag": "', '"tag": "x')},
        ["render", "{meta}", "--out", O],
        "field 'tag'",
    ),
    "unknown colour": (
        lambda t, m, g: {"meta": edited(t, '"color": "red"', '"color": "mauve"')},
        ["render", "{meta}", "--out", O],
        "unknown colour 'mauve'",
    ),
    "unknown shape": (
        lambda t, m, g: {"meta": edited(t, '"class": "circle"', '"class": "hexagon"')},
        ["render", "{meta}", "--out", O],
        "unknown class 'hexagon'",
    ),
    "count not a number": (
        lambda t, m, g: {"meta": edited(t, '"count": 1', '"count": "one"')},
        ["render", "{meta}", "--out", O],
        "count",
    ),
    "unknown key": (
        lambda t, m, g: {"meta": edited(t, '"prompt":', '"promt":')},
        ["render", "{meta}", "--out", O],
        "meta.jsonl:",
    ),
    "record not an object": (
        lambda t, m, g: {"meta": meta(t, "[1, 2]\n")},
        ["render", "{meta}", "--out", O],
        "meta.jsonl:1",
    ),
    "blank line": (
        lambda t, m, g: {"meta": meta(t, LINES[0] + "\n\n" + LINES[1] + "\n")},
        ["render", "{meta}", "--out", O],
        "meta.jsonl:2: blank line",
    ),
    "empty metadata file": (
        lambda t, m, g: {"meta": meta(t, "")},
        ["render", "{meta}", "--out", O],
        "no metadata lines",
    ),
    "binary metadata file": (
        lambda t, m, g: {"meta": meta(t, binary=bytes(range(256)))},
        ["render", "{meta}", "--out", O],
        "meta.jsonl",
    ),
    "non-UTF-8 metadata": (
        lambda t, m, g: {"meta": meta(t, binary=LINES[0].encode() + b"\n" + LINES[1].encode("utf-16"))},
        ["render", "{meta}", "--out", O],
        "meta.jsonl:2: not UTF-8",
    ),
    "missing metadata file": (
        lambda t, m, g: {"meta": t / "nope.jsonl"},
        ["render", "{meta}", "--out", O],
        "nope.jsonl: file not found",
    ),
    "metadata is a directory": (
        lambda t, m, g: {"meta": (t / "d").mkdir() or t / "d"},
        ["render", "{meta}", "--out", O],
        "is a directory",
    ),
    "metadata symlink loop": (
        lambda t, m, g: {"meta": os.symlink(t / "loop", t / "loop") or t / "loop"},
        ["render", "{meta}", "--out", O],
        "symbolic link",
    ),
    "sample: GenEval metadata malformed": (
        lambda t, m, g: {"meta": edited(t, "}]", "}")},
        SAMPLE,
        ":1: malformed JSON",
    ),
    "render --per-prompt 0": (
        lambda t, m, g: {"meta": meta(t)},
        ["render", "{meta}", "--out", O, "--per-prompt", "0"],
        "--per-prompt",
    ),
    # --- output paths ---
    "render --out is a file": (
        lambda t, m, g: {"meta": meta(t), "out": (t / "o").write_text("keep") and t / "o"},
        ["render", "{meta}", "--out", O],
        "o",
    ),
    "sample --out is a file": (
        lambda t, m, g: {"meta": meta(t), "out": (t / "o").write_text("keep") and t / "o"},
        SAMPLE,
        "o",
    ),
    "judge --out is a directory": (
        lambda t, m, g: {"out": (t / "o").mkdir() or t / "o"},
        ["judge", G, "--out", O],
        "is a directory",
    ),
    # --- judged folders ---
    "judge: missing folder": (lambda t, m, g: {"gen": t / "nope"}, ["judge", G, "--out", O], "nope"),
    "judge: missing samples/": (
        lambda t, m, g: {"gen": _no_samples(copy_tree(g, t / "g"))},
        ["judge", G, "--out", O],
        "missing samples/ folder",
    ),
    "judge: image of the wrong size": (
        lambda t, m, g: {"gen": _small_image(copy_tree(g, t / "g"))},
        ["judge", G, "--out", O],
        "field 'size'",
    ),
    "judge: image not a PNG": (
        lambda t, m, g: {"gen": _garbage_image(copy_tree(g, t / "g"))},
        ["judge", G, "--out", O],
        "0000.png",
    ),
    # --- model folders ---
    "missing model folder": (lambda t, m, g: {"meta": meta(t), "model": t / "nope"}, SAMPLE, "model folder not found"),
    "empty model folder": (lambda t, m, g: {"meta": meta(t), "model": (t / "e").mkdir() or t / "e"}, SAMPLE, "e"),
    "transformer config not JSON": (
        lambda t, m, g: {
            "meta": meta(t),
            "model": model_copy(t, m, lambda d: (d / "transformer" / "config.json").write_text("{not json")),
        },
        SAMPLE,
        "config.json",
    ),
    "transformer config missing": (
        lambda t, m, g: {
            "meta": meta(t),
            "model": model_copy(t, m, lambda d: (d / "transformer" / "config.json").unlink()),
        },
        SAMPLE,
        "config.json",
    ),
    "truncated transformer weights": (
        lambda t, m, g: {
            "meta": meta(t),
            "model": model_copy(t, m, lambda d: [truncate(f) for f in (d / "transformer").glob("*.safetensors")]),
        },
        SAMPLE,
        "transformer",
    ),
    "truncated text-encoder weights": (
        lambda t, m, g: {
            "meta": meta(t),
            "model": model_copy(t, m, lambda d: [truncate(f) for f in (d / "text_encoder").glob("*.safetensors")]),
        },
        SAMPLE,
        "text_encoder",
    ),
    "checkpoint of another width": (
        lambda t, m, g: {"meta": meta(t), "model": _other_width(t, m)},
        SAMPLE,
        "transformer",
    ),
    "NaN weights": (
        lambda t, m, g: {
            "meta": meta(t),
            "model": model_copy(t, m, lambda d: _one_weight(d, "transformer", float("nan"))),
        },
        SAMPLE,
        "not finite",
    ),
    "infinite weights": (
        lambda t, m, g: {
            "meta": meta(t),
            "model": model_copy(t, m, lambda d: _one_weight(d, "text_encoder", float("inf"))),
        },
        SAMPLE,
        "not finite",
    ),
    # --- train: params, presets, --set ---
    "train: unknown preset": (lambda t, m, g: {}, TRAIN + ["--preset", "nope"], "unknown preset 'nope'"),
    "train: unknown key": (lambda t, m, g: {}, TRAIN + ["--set", "lrr=1"], "lrr"),
    "train: --set without =": (lambda t, m, g: {}, TRAIN + ["--set", "lr"], "key=value"),
    "train: --set lr=abc": (lambda t, m, g: {}, TRAIN + ["--set", "lr=abc"], "field 'lr'"),
    "train: --set steps=0": (lambda t, m, g: {}, TRAIN + ["--set", "steps=0"], "field 'steps'"),
    "train: --set steps=2.5": (lambda t, m, g: {}, TRAIN + ["--set", "steps=2.5"], "field 'steps'"),
    "train: --set estimator=x": (lambda t, m, g: {}, TRAIN + ["--set", "estimator=x"], "field 'estimator'"),
    "train: --set dr.nope=1": (lambda t, m, g: {}, TRAIN + ["--set", "dr.nope=1"], "nope"),
    "train: --set dr.enabled=maybe": (lambda t, m, g: {}, TRAIN + ["--set", "dr.enabled=maybe"], "dr.enabled"),
    "train: --set dr.T=hot": (lambda t, m, g: {}, TRAIN + ["--set", "dr.T=hot"], "dr.T"),
    "train: --set shared_positions=2": (
        lambda t, m, g: {},
        TRAIN + ["--set", "shared_positions=2"],
        "shared_positions",
    ),
    "train: --set reward.judge=x": (lambda t, m, g: {}, TRAIN + ["--set", "reward.judge=x"], "reward.judge"),
    "train: --set reward_servers.s=ftp://x": (
        lambda t, m, g: {},
        TRAIN + ["--set", "reward_servers.s=ftp://x"],
        "reward_servers.s",
    ),
    "train: missing params file": (lambda t, m, g: {}, TRAIN + ["--params", "{out}.yaml"], "params file not found"),
    "train: malformed params YAML": train_params("rl:\n  lr: [1\n", "malformed YAML"),
    "train: no such section": train_params("other: {}\n", "no section 'rl'"),
    "train: section not a mapping": train_params("rl: [1, 2]\n", "field 'rl'"),
    "train: params file not a mapping": train_params("- 1\n- 2\n", "p.yaml"),
    "train: dr.T a string in params": train_params("rl:\n  dr: {T: hot}\n", "dr.T"),
    "train: dr not a mapping in params": train_params("rl:\n  dr: 3\n", "field 'dr'"),
    "train: per_preset unknown": train_params("rl:\n  per_preset: {nope: {}}\n", "per_preset.nope"),
    "train: unknown reward": (lambda t, m, g: {}, TRAIN + ["--set", "reward.nope=1"], "nope"),
    "train: missing base": (lambda t, m, g: {"model": t / "nope"}, TRAIN, "model folder not found"),
    "train: missing prompts": (lambda t, m, g: {}, TRAIN + ["--prompts", "{out}.jsonl"], "file not found"),
    "train: prompt with an unknown shape": (
        lambda t, m, g: {"meta": edited(t, '"class": "circle"', '"class": "hexagon"')},
        TRAIN + SMALL + ["--prompts", "{meta}"],
        "meta.jsonl:",
    ),
    "train: prompt with an unknown colour": (
        lambda t, m, g: {"meta": edited(t, '"color": "red"', '"color": "mauve"')},
        TRAIN + SMALL + ["--prompts", "{meta}"],
        "meta.jsonl:",
    ),
    "train: --out is a file": (lambda t, m, g: {"out": (t / "o").write_text("keep") and t / "o"}, TRAIN + SMALL, "o"),
    # --- evaluate / pretrain ---
    "evaluate --per-tag 0": (
        lambda t, m, g: {"meta": meta(t)},
        ["evaluate", "--model", M, "--metadata", "{meta}", "--out", O, "--per-tag", "0"],
        "field 'per_tag'",
    ),
    "evaluate: missing clip folder": (
        lambda t, m, g: {"meta": meta(t)},
        ["evaluate", "--model", M, "--clip", "{out}.clip", "--metadata", "{meta}", "--out", O],
        "o.clip",
    ),
    "pretrain: unknown key": (
        lambda t, m, g: {"p": params(t, "pretrain:\n  stepz: 1\n")},
        ["pretrain", "--params", "{p}", "--run", "{out}.run", "--out", O],
        "stepz",
    ),
    "pretrain: section not a mapping": (
        lambda t, m, g: {"p": params(t, "pretrain: 3\n")},
        ["pretrain", "--params", "{p}", "--run", "{out}.run", "--out", O],
        "field 'pretrain'",
    ),
    "evaluate: malformed params YAML": (
        lambda t, m, g: {"meta": meta(t), "p": params(t, "eval_base: [1\n")},
        ["evaluate", "--model", M, "--metadata", "{meta}", "--out", O, "--params", "{p}"],
        "malformed YAML",
    ),
    "judge --summary is a directory": (
        lambda t, m, g: {"s": (t / "s").mkdir() or t / "s"},
        ["judge", G, "--out", O, "--summary", "{s}"],
        "is a directory",
    ),
    "sample --per-prompt 0": (lambda t, m, g: {"meta": meta(t)}, SAMPLE + ["--per-prompt", "0"], "--per-prompt"),
    "render: count 0": (
        lambda t, m, g: {"meta": edited(t, '"count": 1', '"count": 0')},
        ["render", "{meta}", "--out", O],
        "count",
    ),
    "train: --set clip=[1]": (lambda t, m, g: {}, TRAIN + ["--set", "clip=[1]"], "field 'clip'"),
    "train: --set betas=[1,2]": (lambda t, m, g: {}, TRAIN + ["--set", "betas=[1,2]"], "field 'betas'"),
    "train: --set reward_timeout=0": (lambda t, m, g: {}, TRAIN + ["--set", "reward_timeout=0"], "reward_timeout"),
    "train: --set dr.split=2": (lambda t, m, g: {}, TRAIN + ["--set", "dr.split=2"], "dr.split"),
    "train: --set dr.apply_to_all=1": (lambda t, m, g: {}, TRAIN + ["--set", "dr.apply_to_all=1"], "dr.apply_to_all"),
    "train: --set lr=nan": (lambda t, m, g: {}, TRAIN + ["--set", "lr=.nan"], "field 'lr'"),
    "train: --set train_prompts=3": (lambda t, m, g: {}, TRAIN + ["--set", "train_prompts=3"], "train_prompts"),
    "train: --set group_size=1": (lambda t, m, g: {}, TRAIN + ["--set", "group_size=1"], "group_size"),
    "train: NaN base weights": (
        lambda t, m, g: {"model": model_copy(t, m, lambda d: _one_weight(d, "transformer", float("nan")))},
        TRAIN + SMALL,
        "not finite",
    ),
}


def _no_samples(gen: Path) -> Path:
    import shutil

    shutil.rmtree(gen / "00001" / "samples")
    return gen


def _small_image(gen: Path) -> Path:
    import numpy as np
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(gen / "00002" / "samples" / "0000.png")
    return gen


def _garbage_image(gen: Path) -> Path:
    (gen / "00000" / "samples" / "0000.png").write_bytes(b"not a png")
    return gen


def snapshot(p: Path):
    "What a path holds: None (absent), a file's bytes, or a folder's listing with its files' bytes."
    if not os.path.lexists(p):
        return None
    if p.is_file():
        return p.read_bytes()
    return {str(q.relative_to(p)): (q.read_bytes() if q.is_file() else None) for q in sorted(p.rglob("*"))}


def run_main(argv, capsys) -> tuple[int, str]:
    "maskfocus.cli.main in-process: (exit status, stderr)."
    from maskfocus.cli import main

    capsys.readouterr()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        rc = e.code
    return rc, capsys.readouterr().err


def check_one_line(rc, err, where):
    assert "Traceback" not in err, err
    lines = [l for l in err.splitlines() if "error" in l.lower()]  # splitlines: also after a progress bar's \r
    assert rc == 2, f"exit status {rc}, stderr: {err}"
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert where in lines[0], f"{where!r} not in {lines[0]!r}"


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line(name, tmp_path, model, rendered, capsys):
    setup, argv, where = CASES[name]
    fill = {"model": model, "gen": rendered, "out": tmp_path / "o", **setup(tmp_path, model, rendered)}
    argv = [a.format(**fill) if "{" in a else a for a in argv]
    out = Path(fill["out"])
    before = snapshot(out)
    rc, err = run_main(argv, capsys)
    check_one_line(rc, err, where.replace("{out}", str(out)))
    assert snapshot(out) == before, "nothing may be written on bad input"
    assert not (out.parent / "run").exists()


def _root_ignores_chmod(folder: Path) -> bool:
    return os.access(folder, os.W_OK)


@pytest.mark.parametrize("cmd", ["render", "judge"])
def test_read_only_output(cmd, tmp_path, rendered, capsys):
    "An output folder that cannot be written: one error line naming it, the old output left as it was."
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "res.jsonl").write_text("old\n")
    argv = (
        ["render", meta(tmp_path), "--out", ro / "gen"]
        if cmd == "render"
        else ["judge", rendered, "--out", ro / "res.jsonl"]
    )
    before = snapshot(ro)
    ro.chmod(0o555)
    try:
        if _root_ignores_chmod(ro):
            pytest.skip("running as root: chmod does not make a folder read-only")
        rc, err = run_main(argv, capsys)
    finally:
        ro.chmod(0o755)
    check_one_line(rc, err, str(ro))
    assert snapshot(ro) == before


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS, errno.EACCES])
@pytest.mark.parametrize("cmd", ["render", "judge"])
def test_disk_full(cmd, err, tmp_path, rendered, capsys, monkeypatch):
    "A write that fails (a full disk, a read-only file system, no permission; also as root): one line, old output kept."
    out = tmp_path / ("gen" if cmd == "render" else "res.jsonl")
    if cmd == "render":
        out.mkdir()
        (out / "keep").write_text("old")
        argv = ["render", meta(tmp_path), "--out", out]
    else:
        out.write_text("old\n")
        argv = ["judge", rendered, "--out", out]
    before = snapshot(out)
    _write_fails(monkeypatch, err)
    rc, stderr = run_main(argv, capsys)
    monkeypatch.undo()
    check_one_line(rc, stderr, os.strerror(err))
    assert snapshot(out) == before
