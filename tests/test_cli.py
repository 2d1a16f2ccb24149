"""The installed `maskfocus` command: render -> judge round trip, summary on the last line, clear errors, nothing
half-written."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TEST_SPLIT = ROOT / "data" / "prompts" / "test_metadata.jsonl"


def small_metadata(tmp_path, n=12):
    lines = TEST_SPLIT.read_text().splitlines()
    p = tmp_path / "meta.jsonl"
    p.write_text("\n".join(lines[:: len(lines) // n][:n]) + "\n")
    return p


def test_render_then_judge_round_trip(tmp_path, run_cli):
    meta = small_metadata(tmp_path)
    r = run_cli("render", meta, "--out", tmp_path / "gen", "--per-prompt", 2, "--seed", 3)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "gen").iterdir()) == [f"{i:05d}" for i in range(12)]
    assert (tmp_path / "gen" / "00003" / "samples" / "0001.png").is_file()
    r = run_cli("judge", tmp_path / "gen", "--out", tmp_path / "res.jsonl")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(summary) >= {"overall", "tags"} and summary["overall"] == 1.0
    rows = [json.loads(l) for l in (tmp_path / "res.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and {"filename", "tag", "prompt", "correct", "reason", "metadata", "details"} <= set(rows[0])


def test_render_is_deterministic(tmp_path, run_cli):
    meta = small_metadata(tmp_path, 4)
    for d in ("a", "b"):
        assert run_cli("render", meta, "--out", tmp_path / d, "--seed", 5).returncode == 0
    pa, pb = sorted((tmp_path / "a").rglob("*.png")), sorted((tmp_path / "b").rglob("*.png"))
    assert [p.read_bytes() for p in pa] == [p.read_bytes() for p in pb]


@pytest.mark.parametrize(
    "edit, where",
    [
        (lambda s: s.replace('"tag": "colors"', '"tag": "colours"', 1), "field 'tag': unknown tag 'colours'"),
        (lambda s: s.replace('"color": "red"', '"color": "mauve"', 1), "color': unknown colour 'mauve'"),
        (lambda s: s.replace('"class": "circle"', '"class": "hexagon"', 1), "class': unknown class 'hexagon'"),
        (lambda s: s.replace("}]", "}", 1), "malformed JSON"),
    ],
)
def test_bad_metadata_is_one_clear_error(tmp_path, run_cli, edit, where):
    good = TEST_SPLIT.read_text()
    bad = edit(good)
    assert bad != good
    line = next(i for i, (a, b) in enumerate(zip(good.splitlines(), bad.splitlines()), 1) if a != b)
    p = tmp_path / "bad.jsonl"
    p.write_text(bad)
    r = run_cli("render", p, "--out", tmp_path / "gen")
    assert r.returncode == 2
    msg = r.stderr.strip()
    assert len(msg.splitlines()) == 1 and msg.startswith(f"error: {p}:{line}") and where in msg, msg
    assert not (tmp_path / "gen").exists(), "nothing may be written on bad input"


def _rendered(tmp_path, run_cli):
    meta = small_metadata(tmp_path, 3)
    assert run_cli("render", meta, "--out", tmp_path / "gen", "--per-prompt", 1).returncode == 0
    return tmp_path / "gen"


def test_missing_samples_folder(tmp_path, run_cli):
    gen = _rendered(tmp_path, run_cli)
    for p in (gen / "00001" / "samples").iterdir():
        p.unlink()
    (gen / "00001" / "samples").rmdir()
    r = run_cli("judge", gen, "--out", tmp_path / "res.jsonl")
    assert r.returncode == 2 and r.stderr.strip() == f"error: {gen / '00001' / 'samples'}: missing samples/ folder"
    assert not (tmp_path / "res.jsonl").exists()


def test_wrong_image_size(tmp_path, run_cli):
    gen = _rendered(tmp_path, run_cli)
    png = gen / "00002" / "samples" / "0000.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(png)
    (tmp_path / "res.jsonl").write_text("old\n")
    r = run_cli("judge", gen, "--out", tmp_path / "res.jsonl")
    assert r.returncode == 2 and str(png) in r.stderr and "field 'size'" in r.stderr and "expected 64x64" in r.stderr
    assert (tmp_path / "res.jsonl").read_text() == "old\n", "a failed judge must not touch an existing results file"


def test_malformed_metadata_in_folder(tmp_path, run_cli):
    gen = _rendered(tmp_path, run_cli)
    mf = gen / "00000" / "metadata.jsonl"
    mf.write_text(mf.read_text().replace('"count": 1', '"count": "one"', 1))
    r = run_cli("judge", gen, "--out", tmp_path / "res.jsonl")
    assert r.returncode == 2 and r.stderr.startswith(f"error: {mf}:1, field 'include[0].count'")


def test_prompts_check_passes_on_committed_data(run_cli, tmp_path):
    r = run_cli("prompts", "--seed", 0, "--test-per-tag", 36, "--out", ROOT / "data" / "prompts", "--check")
    assert r.returncode == 0, r.stderr
    r = run_cli("prompts", "--seed", 1, "--test-per-tag", 36, "--out", ROOT / "data" / "prompts", "--check")
    assert r.returncode == 1 and "differ from what seed 1 generates" in r.stderr


def test_sample_writes_geneval_layout_that_judge_reads(tmp_path, run_cli):
    "`maskfocus sample` on a (random) toy model folder in the released layout, then `maskfocus judge`."
    from maskfocus.toy.pipeline import toy_pipeline

    toy_pipeline(dim=32, heads=2, layers=1, single_layers=1, text_dim=32, text_layers=1).save(tmp_path / "model")
    meta = small_metadata(tmp_path, 3)
    r = run_cli(
        "sample",
        "--model",
        tmp_path / "model",
        "--metadata",
        meta,
        "--out",
        tmp_path / "gen",
        "--per-prompt",
        2,
        "--seed",
        1,
        "--steps",
        4,
        "--cfg",
        2,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["images"] == 6
    assert len(list((tmp_path / "gen").glob("*/samples/*.png"))) == 6
    r2 = run_cli(
        "sample",
        "--model",
        tmp_path / "model",
        "--metadata",
        meta,
        "--out",
        tmp_path / "gen2",
        "--per-prompt",
        2,
        "--seed",
        1,
        "--steps",
        4,
        "--cfg",
        2,
    )
    assert [p.read_bytes() for p in sorted((tmp_path / "gen").rglob("*.png"))] == [
        p.read_bytes() for p in sorted((tmp_path / "gen2").rglob("*.png"))
    ]
    r = run_cli("judge", tmp_path / "gen", "--out", tmp_path / "res.jsonl")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["images"] == 6


def test_sample_missing_model_is_one_clear_error(tmp_path, run_cli):
    "One error line, then the hint of a missing model folder (see test_missing_model_says_what_to_run)."
    meta = small_metadata(tmp_path, 2)
    r = run_cli("sample", "--model", tmp_path / "nope", "--metadata", meta, "--out", tmp_path / "gen")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and lines[0] == f"error: {tmp_path / 'nope'}: model folder not found", r.stderr
    assert len(lines) == 2 and lines[1].startswith("hint: ")
    assert not (tmp_path / "gen").exists()


@pytest.mark.parametrize(
    "command, then, stage",
    [
        (["sample", "--model", "{missing}", "--metadata", "{meta}", "--out", "{tmp}/o"], "--model demo/", "pretrain"),
        (["evaluate", "--model", "{missing}", "--metadata", "{meta}", "--out", "{tmp}/o"], "--model demo/", "pretrain"),
        (["train", "--base", "{missing}", "--out", "{tmp}/o"], "--base demo/models/base", "pretrain"),
        (
            ["evaluate", "--model", "{tmp}/model", "--clip", "{missing}", "--metadata", "{meta}", "--out", "{tmp}/o"],
            "--clip demo/models/clip",
            "train_clip",
        ),
        (
            ["pretrain", "--params", "{tmp}/p.yaml", "--run", "{tmp}/r", "--out", "{tmp}/o"],
            "text_encoder: demo/",
            "train_clip",
        ),
    ],
)
def test_missing_model_says_what_to_run(tmp_path, run_cli, command, then, stage):
    "A fresh clone has no models (DVC outputs): a model command whose model folder is missing names `make demo`."
    from maskfocus.toy.pipeline import toy_pipeline

    if "{tmp}/model" in command:
        toy_pipeline(dim=32, heads=2, layers=1, single_layers=1, text_dim=32, text_layers=1).save(tmp_path / "model")
    (tmp_path / "p.yaml").write_text(f"pretrain:\n  steps: 1\n  text_encoder: {tmp_path / 'missing'}\n")
    fill = {"{missing}": str(tmp_path / "missing"), "{meta}": str(small_metadata(tmp_path, 2)), "{tmp}": str(tmp_path)}
    argv = [next((a.replace(k, v) for k, v in fill.items() if k in a), a) for a in command]
    r = run_cli(*argv)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and lines[-2].startswith(f"error: {tmp_path / 'missing'}"), r.stderr
    assert lines[-1].startswith("hint: ") and "`make demo`" in lines[-1] and f"`dvc repro {stage}`" in lines[-1]
    assert then in lines[-1] and not (tmp_path / "o").exists()


def test_no_hint_when_the_model_folder_exists(tmp_path, run_cli):
    "A model folder that exists but is broken is not a fresh clone's missing model: the error line only."
    (tmp_path / "model").mkdir()
    meta = small_metadata(tmp_path, 2)
    r = run_cli("sample", "--model", tmp_path / "model", "--metadata", meta, "--out", tmp_path / "gen")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr


def test_evaluate_per_tag_balances_an_unequal_prompt_file(tmp_path, run_cli):
    "`maskfocus evaluate --per-tag N`: every tag gets ceil(N / its prompts) images per prompt, recorded in eval.json."
    from maskfocus.toy.pipeline import toy_pipeline

    toy_pipeline(dim=32, heads=2, layers=1, single_layers=1, text_dim=32, text_layers=1).save(tmp_path / "model")
    rows = [json.loads(l) for l in TEST_SPLIT.read_text().splitlines()]
    by_tag = {}
    for r in rows:
        by_tag.setdefault(r["tag"], []).append(r)
    pick = by_tag["colors"][:3] + by_tag["position"][:1]  # 3 prompts of one tag, 1 of another
    meta = tmp_path / "meta.jsonl"
    meta.write_text("".join(json.dumps(r) + "\n" for r in pick))
    r = run_cli(
        "evaluate",
        "--model",
        tmp_path / "model",
        "--metadata",
        meta,
        "--out",
        tmp_path / "ev",
        "--per-tag",
        4,
        "--steps",
        2,
        "--batch",
        5,
    )
    assert r.returncode == 0, r.stderr
    ev = json.loads((tmp_path / "ev" / "eval.json").read_text())["N=2,cfg=3"]
    assert ev["settings"]["per_tag"] == 4 and "per_prompt" not in ev["settings"]
    res = [json.loads(l) for l in (tmp_path / "ev" / "results" / "N=2,cfg=3.jsonl").read_text().splitlines()]
    per_prompt = Counter(x["filename"].split("/")[0] for x in res)
    assert per_prompt == {"00000": 2, "00001": 2, "00002": 2, "00003": 4}  # colors: ceil(4/3) = 2 each; position: 4
    assert ev["images"] == 10
    r = run_cli(
        "evaluate", "--model", tmp_path / "model", "--metadata", meta, "--out", tmp_path / "ev0", "--per-tag", 0
    )
    assert r.returncode == 2 and r.stderr.strip() == "error: field 'per_tag': per_tag must be an int >= 1, got 0", (
        r.stderr
    )
    assert not (tmp_path / "ev0").exists()


def test_version(run_cli):
    "`maskfocus --version` prints `maskfocus <version>`."
    from maskfocus import __version__

    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"maskfocus {__version__}", r.stderr


def _parsers():
    "Every parser of the `maskfocus` command: the top level, each subcommand, and `maskfocus train`'s own."
    import argparse

    from maskfocus.cli import build_parser
    from maskfocus.rl.command import build_train_parser

    top = build_parser()
    subs = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
    return [("maskfocus", top), ("maskfocus train", build_train_parser())] + [
        (f"maskfocus {name}", p) for a in subs for name, p in a.choices.items()
    ]


def test_every_option_has_help_and_shows_its_default():
    "Each action except help/version (and the subcommand list) has help; each optional one's help shows its default."
    import argparse

    skip = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)
    missing, no_default = [], []
    for name, parser in _parsers():
        fmt = parser._get_formatter()
        for a in parser._actions:
            if isinstance(a, skip):
                continue
            if not (a.help or "").strip():
                missing.append(f"{name} {'/'.join(a.option_strings) or a.dest}")
            elif a.option_strings and not a.required and "default" not in fmt._get_help_string(a):
                no_default.append(f"{name} {'/'.join(a.option_strings)}")
    assert not missing, f"options without help: {missing}"
    assert not no_default, f"options whose help does not show the default: {no_default}"
    assert len(_parsers()) == 2 + 11, "the top level, train's own parser and the 11 subcommands"


def test_read_params_names_line_and_column_of_a_yaml_error(tmp_path):
    "A malformed params file is one InputError naming the file, the line and the column."
    from maskfocus.core import InputError, read_params

    p = tmp_path / "params.yaml"
    p.write_text("rl:\n  lr: 0.1\n  clip: [0.2, 0.3\n  beta: 0\n")
    with pytest.raises(InputError) as e:
        read_params(p, "rl")
    assert e.value.line == 4 and e.value.file == str(p), str(e.value)
    assert str(e.value).startswith(f"{p}:4: malformed YAML at column 7") and "ParserError" in str(e.value)
