"Benchmarks in their official layouts: the copied prompt files, the loaders, the layouts the official scripts read."

import argparse, hashlib, json, re, subprocess, warnings
from pathlib import Path

import numpy as np
import pytest

from maskfocus.core import InputError
from maskfocus.geneval import load_samples, read_metadata, save_samples
from maskfocus.scoring import benchmarks as B
from maskfocus.scoring import benchmark_cli as BC

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "benchmarks"


def test_files_match_the_readme_table_and_git_keeps_them_byte_identical():
    rows = re.findall(
        r"^\| `([^`]+)` \| (\d+) \| (\d+) \| [^|]+ \| `([0-9a-f]{64})` \|$", (DATA / "README.md").read_text(), re.M
    )
    files = sorted(
        str(p.relative_to(DATA))
        for p in DATA.rglob("*")
        if p.is_file() and p.name not in ("README.md", ".gitattributes")
    )
    assert sorted(r[0] for r in rows) == files and len(files) == 17
    for f, n, lines, sha in rows:
        b = (DATA / f).read_bytes()
        assert (len(b), b.count(b"\n") + (not b.endswith(b"\n")), hashlib.sha256(b).hexdigest()) == (
            int(n),
            int(lines),
            sha,
        ), f
        blob = subprocess.run(["git", "show", f"HEAD:data/benchmarks/{f}"], cwd=ROOT, capture_output=True)
        assert blob.returncode != 0 or blob.stdout == b, f"{f}: the committed blob differs from the working file"
    attrs = subprocess.run(
        ["git", "check-attr", "text", "data/benchmarks/drawbench/drawbench.txt"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert attrs.stdout.strip().endswith("unset")


def test_loaders_count_the_official_prompts():
    assert len(B.read_drawbench()) == 200 and len(B.benchmark_prompts("drawbench")["all"]) == 200
    for c in B.T2I_CATEGORIES:
        ps = B.read_t2i_compbench(c)
        assert len(ps) == 300 and all("_" not in p and "\r" not in p and p == p.strip() for p in ps), c
    cx = B.read_t2i_compbench("complex")
    parts = [
        B._lines(DATA / "t2i_compbench/examples/dataset" / f"complex_val_{k}.txt")
        for k in ("action", "spatial", "spatialaction")
    ]
    assert [len(p) for p in parts] == [212, 58, 30] and sorted(sum(parts, [])) == sorted(cx)
    assert all(" - " in s for s in B._lines(DATA / "t2i_compbench/examples/dataset/new_objects.txt"))
    metas = B.benchmark_prompts("geneval")["all"]
    assert metas == read_metadata(DATA / "geneval/prompts/evaluation_metadata.jsonl") and len(metas) == 553
    gp = B._lines(DATA / "geneval/prompts/generation_prompts.txt")
    assert gp == [m["prompt"] for m in metas]
    assert len(B._lines(DATA / "geneval/prompts/object_names.txt")) == 80


def test_drawbench_files_must_agree(tmp_path):
    for f in ("drawbench.txt", "drawbench.csv"):
        (tmp_path / f).write_bytes((DATA / "drawbench" / f).read_bytes())
    assert B.read_drawbench(tmp_path) == B.read_drawbench()
    lines = (tmp_path / "drawbench.txt").read_text().split("\n")
    lines[3] = "something else"
    (tmp_path / "drawbench.txt").write_text("\n".join(lines))
    with pytest.raises(InputError) as e:
        B.read_drawbench(tmp_path)
    assert e.value.line == 5 and e.value.field == "Prompt"


@pytest.mark.parametrize(
    "call, field",
    [
        (lambda: B.benchmark_prompts("parti"), "benchmark"),
        (lambda: B.benchmark_prompts("t2i_compbench", ["colour"]), "category"),
        (lambda: B.benchmark_prompts("geneval", ["colour"]), "categories"),
        (lambda: B.benchmark_prompts("drawbench", limit=0), "limit"),
        (lambda: B.benchmark_prompts("drawbench", limit=-3), "limit"),
        (lambda: B.layout_paths("t2i_compbench", {"color": [{"prompt": "a red_car"}]}, 10), "prompt"),
        (lambda: B.layout_paths("drawbench", {"all": []}, 0), "per_prompt"),
        (lambda: B.read_benchmark_images(".", "parti"), "benchmark"),
    ],
)
def test_bad_inputs_name_the_field(call, field):
    with pytest.raises(InputError) as e:
        call()
    assert e.value.field == field


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    "A tiny random pipeline, saved in the released layout and loaded back as a user's would be."
    import torch
    from maskfocus.models.pipeline import MaskedPipeline
    from maskfocus.toy.pipeline import toy_pipeline

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("pipe")
    p = toy_pipeline(dim=32, heads=2, layers=1, single_layers=1, text_dim=32, text_layers=1)
    p.sampling.steps = 2
    p.save(d)
    return d, MaskedPipeline.load(d)


T2I_NAME = re.compile(r"^(?P<prompt>[^_/]+)_(?P<id>\d{6})\.png$")


def test_t2i_compbench_layout_is_what_its_scorers_read(pipe, tmp_path):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        m = B.generate_benchmark(
            pipe[1], "t2i_compbench", tmp_path, per_prompt=3, limit=2, categories=["numeracy", "complex"]
        )
    assert any("10 images per prompt" in str(x.message) for x in w)  # complex's combiner wants 10
    assert m["images"] == 12 and sorted(p.name for p in tmp_path.iterdir()) == ["benchmark.json", "complex", "numeracy"]
    for c in ("numeracy", "complex"):
        assert [p.name for p in (tmp_path / c).iterdir()] == ["samples"]
        files = list((tmp_path / c / "samples").iterdir())
        assert all(f.is_file() and T2I_NAME.match(f.name) for f in files)  # flat, <prompt>_<NNNNNN>.png
        got = sorted((int(f.stem[f.stem.rindex("_") + 1 :]), f.stem[: f.stem.index("_")]) for f in files)
        assert got == [(j, B.read_t2i_compbench(c)[j // 3]) for j in range(6)]  # ids 0..n-1, prompts in file order


def test_drawbench_layout_and_scores(pipe, tmp_path):
    B.generate_benchmark(pipe[1], "drawbench", tmp_path, per_prompt=2, limit=3, categories=["Counting"], batch=4)
    db = [r for r in B.read_drawbench() if r["tag"] == "Counting"][:3]
    want = sorted(f"{r['index']}_{k}.png" for r in db for k in range(2))
    assert sorted(p.name for p in tmp_path.glob("*.png")) == want and all(re.fullmatch(r"\d+_\d\.png", n) for n in want)
    assert [json.loads(s) for s in (tmp_path / "prompts.jsonl").read_text().splitlines()] == db

    class Fake:
        name = "fake"

        def to(self, device):
            return self

        def __call__(self, images, prompts, metadata=None):
            assert images.dtype == np.uint8 and images.ndim == 4 and len(prompts) == len(metadata) == len(images)
            s = np.array([len(p) for p in prompts], np.float32)
            return s, {"mean": float(s.mean()), "per_tag": {}}

    s = B.score_benchmark(
        tmp_path, "drawbench", {"len": Fake(), "zero": lambda a, p, m=None: (np.zeros(len(a)), {})}, batch=4
    )
    lens = [len(r["prompt"]) for r in db for _ in range(2)]
    assert s["rewards"]["len"]["n"] == 6 and s["rewards"]["len"]["mean"] == pytest.approx(np.mean(lens))
    assert s["rewards"]["len"]["per_category"] == {
        "Counting": {"mean": pytest.approx(np.mean(lens)), "std": pytest.approx(np.std(lens)), "n": 6}
    }
    assert json.loads((tmp_path / "scores.json").read_text()) == s and s["rewards"]["zero"]["mean"] == 0
    with pytest.raises(InputError) as e:
        B.score_benchmark(tmp_path, "drawbench", {"bad": lambda a, p, m=None: (np.zeros(1), {})})
    assert e.value.field == "bad"


def test_geneval_layout_reads_back_and_equals_save_samples(pipe, tmp_path):
    B.generate_benchmark(pipe[1], "geneval", tmp_path / "g", per_prompt=2, limit=3, categories=["position"], batch=3)
    got = load_samples(tmp_path / "g")
    metas = B.benchmark_prompts("geneval", ["position"], 3)["all"]
    assert [m for m, _ in got] == metas and [len(ps) for _, ps in got] == [2, 2, 2]
    from PIL import Image

    save_samples(tmp_path / "ref", metas, [[np.asarray(Image.open(p)) for p in ps] for _, ps in got])
    tree = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.name != "benchmark.json")  # noqa: E731
    assert tree(tmp_path / "g") == tree(tmp_path / "ref")
    assert (tmp_path / "g/00002/metadata.jsonl").read_bytes() == (tmp_path / "ref/00002/metadata.jsonl").read_bytes()


def test_geneval_images_follow_the_seed_rule_of_maskfocus_sample(pipe, tmp_path):
    from PIL import Image
    from maskfocus.toy.evaluate import generate_for_metadata

    B.generate_benchmark(pipe[1], "geneval", tmp_path, per_prompt=2, limit=3, seed=5, batch=4)
    metas = B.benchmark_prompts("geneval", limit=3)["all"]
    ref = generate_for_metadata(pipe[1], metas, 2, seed=5, batch=4)
    for (_, ps), ims in zip(load_samples(tmp_path), ref):
        assert all((np.asarray(Image.open(p)) == im).all() for p, im in zip(ps, ims))


def _args(pipe_dir, out, *extra):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--out")
    ap.add_argument("--per-prompt", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, nargs="+")
    ap.add_argument("--cfg", type=float, nargs="+")
    ap.add_argument("--device", default="cpu")
    BC.add_benchmark_arguments(ap)
    return ap.parse_args(["--model", str(pipe_dir), "--out", str(out), *extra])


def test_benchmark_command_generates_then_scores_through_make_reward(pipe, tmp_path, monkeypatch, capsys):
    calls = []

    class Half:  # what make_reward returns: a reward with `to`
        def to(self, device):
            return self

        def __call__(self, a, p, m=None):
            return np.full(len(a), 0.5, np.float32), {"mean": 0.5, "per_tag": {}}

    def fake_make_reward(spec, models=None, monitor="judge", **kw):
        calls.append((dict(spec), dict(models or {}), monitor))
        return Half()

    monkeypatch.setattr("maskfocus.rl.rewards.make_reward", fake_make_reward)
    a = _args(
        pipe[0],
        tmp_path / "t2i",
        "--benchmark",
        "t2i_compbench",
        "--categories",
        "color",
        "--limit",
        "2",
        "--per-prompt",
        "2",
        "--steps",
        "2",
        "--reward-model",
        "clip_score=/ckpt/clip",
    )
    assert BC.benchmark_command(a) == 0
    assert calls == [({"clip_score": 1.0}, {"clip_score": "/ckpt/clip"}, None)]
    assert len(list((tmp_path / "t2i/color/samples").iterdir())) == 4
    assert json.loads(capsys.readouterr().out)["scores"] == {"clip_score": {"mean": 0.5, "n": 4}}
    for extra, field in [
        (["--benchmark", "drawbench", "--steps", "2", "4"], "--steps"),
        (["--benchmark", "drawbench", "--reward-model", "hps"], "--reward-model"),
        (["--benchmark", "drawbench", "--limit", "0"], "limit"),
    ]:
        with pytest.raises(InputError) as e:
            BC.benchmark_command(_args(pipe[0], tmp_path / "x", *extra))
        assert e.value.field == field
