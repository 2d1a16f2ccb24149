"""scoring.geneval_hf on tiny random models built here (nothing downloaded): GenEval's class names, thresholds, the
16 cap, the counting threshold, colours from the masked crop, the folder judge's results and the reward protocol."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from maskfocus.core import InputError
from maskfocus.geneval import read_metadata, read_results, save_samples, summarize
from maskfocus.scoring.geneval_hf import (
    COCO_LABELS,
    ColorClassifier,
    GenEvalHF,
    GenEvalHFReward,
    Mask2FormerDetector,
    geneval_names,
    judge_folder_hf,
    masked_crop,
)
from maskfocus.scoring.geneval_hf_cli import write_tiny_color_clip, write_tiny_mask2former

ROOT = Path(__file__).resolve().parents[1]
GENEVAL = ROOT / "data" / "benchmarks" / "geneval"
NAMES = geneval_names(dict(enumerate(COCO_LABELS)))


def test_names_are_genevals():
    f = GENEVAL / "evaluation" / "object_names.txt"
    if not f.is_file():
        f = GENEVAL / "prompts" / "object_names.txt"
    if f.is_file():
        assert NAMES == f.read_text().splitlines()
    meta = GENEVAL / "prompts" / "evaluation_metadata.jsonl"
    if not meta.is_file():
        pytest.skip("GenEval's files are not in data/benchmarks/geneval")
    assert len(read_metadata(meta, classes=NAMES)) == 553  # every class of every prompt is a detector class
    with pytest.raises(InputError, match="80 instance classes"):
        geneval_names({0: "person"})


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    det = Mask2FormerDetector(write_tiny_mask2former(d / "det"), size=None)
    clip = ColorClassifier(write_tiny_color_clip(d / "clip"))
    head = det.model.class_predictor  # every query says "dog": detections exist on any image
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-5.0)
        head.bias[NAMES.index("dog")] = 5.0
        head.bias[-1] = 0.0
    return det, clip


def crafted(n_dogs: int, scores: list[float], size=(40, 48)):
    "Class and mask logits with one query per score: dogs with these class probabilities, masks in a grid."
    q = len(scores)
    cl = torch.full((q, 81), -30.0)
    cl[:, 80] = 0.0
    for i, p in enumerate(scores):
        cl[i, NAMES.index("dog")] = float(np.log(p / (1 - p)))  # class probability p (mask score ~1 below)
    ml = torch.full((q, *size), -30.0)
    for i in range(q):
        y, x = 4 * (i // 6), 8 * (i % 6)
        ml[i, y : y + 3, x : x + 6] = 30.0
    return cl, ml


class Fixed:
    "A detector stand-in returning fixed logits (the real detector's `names`, `to` and `logits`)."

    names, bf16 = NAMES, False

    def __init__(self, logits):
        self.out = logits

    def to(self, device):
        return self

    def logits(self, images):
        return [self.out for _ in images]


def test_thresholds_cap_and_counting(models):
    scores = [0.95] * 3 + [0.5] * 17 + [0.31, 0.29]
    ev = GenEvalHF(Fixed(crafted(0, scores)), models[1])
    img = np.zeros((40, 48, 3), np.uint8)
    one = {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"}
    count = {
        "tag": "counting",
        "include": [{"class": "dog", "count": 3}],
        "exclude": [{"class": "dog", "count": 4}],
        "prompt": "a photo of three dogs",
    }
    r1, r2 = ev.judge(np.stack([img, img]), [one, count])
    d1, d2 = json.loads(r1["details"])["dog"], json.loads(r2["details"])["dog"]
    assert len(d1) == 16 and all(len(row) == 5 for row in d1)  # at most 16 per class
    assert [row[4] for row in d1] == sorted((row[4] for row in d1), reverse=True) and d1[0][4] > 0.9
    assert d1[0][:4] == [0.0, 0.0, 6.0, 3.0]  # the box of the first query's mask
    assert len(d2) == 3 and r2["correct"] and r2["strict_correct"]  # counting: above 0.9 only
    ev16 = GenEvalHF(Fixed(crafted(0, [0.31, 0.29])), models[1])
    assert len(json.loads(ev16.judge([img], [one])[0]["details"])["dog"]) == 1  # 0.29 is below 0.3
    assert ev16.judge([img], [count])[0]["details"] == "{}"


def test_colours_come_from_the_masked_crop(models, monkeypatch):
    _, clip = models
    img = np.zeros((40, 48, 3), np.uint8)
    img[..., 0] = 200
    cl, ml = crafted(0, [0.95, 0.95, 0.95])
    seen = []
    transform = clip.transform
    monkeypatch.setattr(clip, "transform", lambda im: seen.append(np.asarray(im)) or transform(im))
    ev = GenEvalHF(Fixed((cl, ml)), clip)
    meta = {"tag": "colors", "include": [{"class": "dog", "count": 2, "color": "red"}], "prompt": "two red dogs"}
    rec = ev.judge([img], [meta])[0]
    assert len(seen) == 2  # only the best `count` detections are coloured
    for crop, row in zip(seen, json.loads(rec["details"])["dog"]):
        box = [int(v) for v in row[:4]]
        assert crop.shape == (box[3] - box[1], box[2] - box[0], 3)
        mask = ml[(box[1] // 4) * 6 + box[0] // 8].numpy() > 0  # the query whose mask has this box
        want = np.asarray(masked_crop(img, box, mask))
        assert (crop == want).all() and (crop == (200, 0, 0)).all()
    big = np.zeros((40, 48), bool)
    big[0:2, 0:3] = True
    crop = np.asarray(masked_crop(img, [0, 0, 6, 3], big))
    assert (crop[:2, :3] == (200, 0, 0)).all() and (crop[2] == 153).all() and (crop[:, 3:] == 153).all()


def test_folder_judge_writes_genevals_format(models, tmp_path):
    det, clip = models
    metas = [
        {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"},
        {"tag": "colors", "include": [{"class": "dog", "count": 1, "color": "red"}], "prompt": "a photo of a red dog"},
        {"tag": "counting", "include": [{"class": "cat", "count": 2}], "exclude": [{"class": "cat", "count": 3}],
         "prompt": "a photo of two cats"},
    ]  # fmt: skip
    rng = np.random.default_rng(0)
    save_samples(tmp_path / "imgs", metas, [[rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)] * 2 for _ in metas])
    ev = GenEvalHF(det, clip, batch_size=2)
    summary = judge_folder_hf(ev, tmp_path / "imgs", tmp_path / "results.jsonl")
    rows = read_results(tmp_path / "results.jsonl")
    assert summarize(rows) == summary and len(rows) == 6 and summary["prompts"] == 3
    for r in rows:
        assert set(r) >= {"filename", "tag", "prompt", "correct", "reason", "metadata", "details", "score"}
        assert isinstance(r["metadata"], str) and json.loads(r["metadata"])["prompt"] == r["prompt"]
        det_rows = json.loads(r["details"])
        assert all(isinstance(v, list) and all(len(b) == 5 for b in v) for v in det_rows.values())
    assert rows[0]["correct"] and len(json.loads(rows[0]["details"])["dog"]) == 16  # every query a dog: the cap
    assert not rows[4]["correct"] and rows[4]["reason"] == "expected cat>=2, found 0"


def test_reward_protocol(models):
    det, clip = models
    r = GenEvalHFReward(GenEvalHF(det, clip)).to("cpu")
    meta = {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"}
    cat = dict(meta, include=[{"class": "cat", "count": 1}], prompt="a photo of a cat")
    ims = np.random.default_rng(1).integers(0, 255, (2, 40, 48, 3), dtype=np.uint8)
    scores, info = r(ims, ["a photo of a dog", "a photo of a cat"], [meta, cat])
    assert r.name == "geneval_hf" and scores.dtype == np.float32 and scores.tolist() == [1.0, 0.0]
    assert info["mean"] == 0.5 and info["per_tag"] == {"single_object": 0.5}
    partial = GenEvalHFReward(GenEvalHF(det, clip), "partial")
    assert partial.name == "geneval_hf_partial" and partial(ims, ["", ""], [meta, cat])[0].tolist() == [0.0, 0.0]
    with pytest.raises(InputError, match="metadata"):
        r(ims, ["", ""])
    with pytest.raises(InputError, match=r"metadata\[1\]\.include\[0\]\.class"):
        r(ims, ["", ""], [meta, dict(meta, include=[{"class": "unicorn", "count": 1}])])
