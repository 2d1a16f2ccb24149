"""Tests of `maskfocus.toy.judge`: grammar -> metadata -> scene -> judge round trip, folder judging, bad input."""

import json
import shutil

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

from maskfocus.toy import world
from maskfocus.core import InputError
from maskfocus.geneval import read_results, save_samples, summarize
from maskfocus.toy.judge import find_objects, judge_batch, judge_folder, judge_image

PROMPTS = world.all_prompts()
seeds = st.integers(0, 2**32 - 1)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(PROMPTS), seeds)
def test_ground_truth_round_trip(meta, seed):
    "Any prompt of the grammar, any seed: the render of a scene sampled for it is judged correct with score 1."
    scene = world.sample_scene(meta, np.random.default_rng(seed))
    r = judge_image(world.render(scene), meta)
    assert r["correct"] is True, r["reason"]
    assert r["strict_correct"] is True and r["score"] == 1.0 and r["reason"] == ""
    assert json.loads(r["metadata"]) == meta and r["tag"] == meta["tag"] and r["prompt"] == meta["prompt"]


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(PROMPTS), seeds)
def test_detections_are_the_scene(meta, seed):
    "Every drawn object is found once, with its exact box and colour, and nothing else is."
    scene = world.sample_scene(meta, np.random.default_rng(seed))
    dets = find_objects(world.render(scene))
    found = sorted((s, d["color"], tuple(d["box"])) for s, v in dets.items() for d in v)
    assert found == sorted((o.shape, o.color, tuple(o.box)) for o in scene)


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(world.SHAPES),
    st.sampled_from(world.COLORS),
    st.integers(0, 6),
    st.integers(0, 6),
    st.integers(0, 3),
    st.sampled_from(world.COLORS),
)
def test_fragments_and_blobs_are_not_objects(shape, color, row, col, q, color2):
    "One quadrant of a shape, or a shape with two quadrants of another colour, is never an object."
    P, o = world.PATCH, world.Obj(shape, color, row, col)
    base = world.render((o,))
    y, x, qy, qx = row * P, col * P, (q // 2) * P, (q % 2) * P
    frag = np.full_like(base, world.BACKGROUND)
    frag[y + qy : y + qy + P, x + qx : x + qx + P] = base[y + qy : y + qy + P, x + qx : x + qx + P]
    assert find_objects(frag) == {}
    if color2 != color:
        blob = base.copy()
        cell = blob[y : y + 2 * P, x : x + 2 * P]
        half = cell[:, P:] if q % 2 else cell[P:]
        half[(half != world.BACKGROUND).any(-1)] = world.COLOR_RGB[color2]
        assert find_objects(blob) == {}


def _folder(tmp_path, n_per_prompt=2):
    "A small GenEval folder: per tag, two prompts, each with right images and one image of another prompt."
    rng = np.random.default_rng(0)
    metas, images = [], []
    for t in world.TAGS:
        ps = world.all_prompts(t)
        for m in ps[:2]:
            ims = [world.render(world.sample_scene(m, rng)) for _ in range(n_per_prompt)]
            ims.append(world.render(world.sample_scene(ps[-1] if m is not ps[-1] else ps[0], rng)))
            metas.append(m)
            images.append(ims)
    save_samples(tmp_path / "gen", metas, images)
    return tmp_path / "gen", metas, images


def test_judge_folder_matches_direct_judging(tmp_path):
    folder, metas, images = _folder(tmp_path)
    out = tmp_path / "res" / "results.jsonl"
    summary = judge_folder(folder, out)
    direct = [judge_image(im, m) for m, ims in zip(metas, images) for im in ims]
    assert summary == summarize(direct)
    rows = read_results(out)
    assert [{k: v for k, v in r.items() if k != "filename"} for r in rows] == direct
    assert rows[0]["filename"].endswith("00000/samples/0000.png")
    assert list(rows[0])[:7] == ["filename", "tag", "prompt", "correct", "reason", "metadata", "details"]
    assert 0 < summary["overall"] < 1 and summary["images"] == len(direct)
    batch = judge_batch(
        np.stack([im for ims in images for im in ims]), [m for m, ims in zip(metas, images) for _ in ims]
    )
    assert batch == direct


def _expect_error(folder, out, *needles):
    with pytest.raises(InputError) as e:
        judge_folder(folder, out)
    for s in needles:
        assert s in str(e.value), str(e.value)
    return e.value


@pytest.fixture
def bad_folder(tmp_path):
    folder, _, _ = _folder(tmp_path, n_per_prompt=1)
    out = tmp_path / "out" / "results.jsonl"
    out.parent.mkdir()
    out.write_text("old\n")  # an earlier result file must survive a failed run untouched
    yield folder, out
    assert out.read_text() == "old\n", "out_jsonl was touched on error"
    assert [p.name for p in out.parent.iterdir()] == ["results.jsonl"], "a temporary file was left behind"
    new = tmp_path / "never.jsonl"
    with pytest.raises(InputError):
        judge_folder(folder, new)
    assert not new.exists(), "out_jsonl was created on error"


def test_missing_samples_folder(bad_folder):
    folder, out = bad_folder
    shutil.rmtree(folder / "00003" / "samples")
    e = _expect_error(folder, out, "missing samples/ folder")
    assert e.file == str(folder / "00003" / "samples")


def test_wrong_image_size(bad_folder):
    folder, out = bad_folder
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(folder / "00004" / "samples" / "0001.png")
    e = _expect_error(folder, out, str(folder / "00004" / "samples" / "0001.png"), "field 'size'", "64x48")
    assert e.field == "size"


def test_unreadable_png(bad_folder):
    folder, out = bad_folder
    (folder / "00002" / "samples" / "0000.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    _expect_error(folder, out, str(folder / "00002" / "samples" / "0000.png"), "not a readable image")


def test_malformed_metadata_line(bad_folder):
    folder, out = bad_folder
    mf = folder / "00005" / "metadata.jsonl"
    mf.write_text('{"tag": "colors", "include": [{"class": "circle", "count": 1\n')
    e = _expect_error(folder, out, f"{mf}:1", "malformed JSON")
    assert e.line == 1


def test_bad_metadata_field(bad_folder):
    folder, out = bad_folder
    mf = folder / "00002" / "metadata.jsonl"  # two_object: no colour yet
    mf.write_text(mf.read_text().replace('"count": 1', '"count": 1, "color": "mauve"', 1))
    e = _expect_error(folder, out, f"{mf}:1", "field 'include[0].color'", "mauve")
    assert (e.line, e.field) == (1, "include[0].color")


def test_missing_folder(tmp_path):
    with pytest.raises(InputError, match="folder not found"):
        judge_folder(tmp_path / "nope", tmp_path / "r.jsonl")
    assert not (tmp_path / "r.jsonl").exists()


@pytest.mark.parametrize(
    "image, field",
    [
        (np.zeros((32, 32, 3), np.uint8), "image.shape"),
        (np.zeros((64, 64), np.uint8), "image.shape"),
        (np.zeros((64, 64, 4), np.uint8), "image.shape"),
        (np.zeros((64, 64, 3), np.float32), "image.dtype"),
    ],
)
def test_judge_image_rejects_bad_images(image, field):
    with pytest.raises(InputError) as e:
        judge_image(image, PROMPTS[0])
    assert e.value.field == field and f"field '{field}'" in str(e.value)


def test_judge_batch_bad_input():
    ims = np.stack([world.render(world.sample_scene(m, np.random.default_rng(0))) for m in PROMPTS[:2]])
    with pytest.raises(InputError, match="field 'metas'"):
        judge_batch(ims, PROMPTS[:1])
    with pytest.raises(InputError, match=r"field 'images\[1\].shape'"):
        judge_batch([ims[0], ims[1, :10]], PROMPTS[:2])
    with pytest.raises(InputError, match=r"field 'metas\[0\].tag'"):
        judge_batch(ims, [{**PROMPTS[0], "tag": "x"}, PROMPTS[1]])
    assert [r["correct"] for r in judge_batch(ims, PROMPTS[:2])] == [True, True]
