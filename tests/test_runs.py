"""`maskfocus.runs.lr_lambda` gives, bit for bit, the LR of each training loop's former formula."""

import math

import pytest

from maskfocus.runs import lr_lambda


def trainer_formula(total, warmup, schedule):  # maskfocus.rl.trainer.lr_lambda before the refactor
    def f(s):
        w = min(1.0, (s + 1) / warmup) if warmup else 1.0
        if schedule == "constant":
            return w
        t = min(max(s - warmup, 0), total) / max(1, total - warmup)
        return w * ((1.0 - t) if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * t)))

    return f


def clip_formula(lr, warmup, steps, min_lr_ratio, step):  # maskfocus.toy.clip.lr_at before the refactor
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def pretrain_formula(steps, warmup):  # maskfocus.toy.pretrain._lr_lambda before the refactor
    return lambda s: min(1.0, (s + 1) / max(1, warmup)) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
@pytest.mark.parametrize("total,warmup", [(60, 0), (60, 5), (120, 10), (7, 7), (1000, 100), (37, 3)])
def test_trainer_numbers(schedule, total, warmup):
    new, old = lr_lambda(total, warmup, schedule), trainer_formula(total, warmup, schedule)
    assert [new(s) for s in range(total + 1)] == [old(s) for s in range(total + 1)]


@pytest.mark.parametrize("lr", [1e-3, 3e-4, 2e-3, 0.1])
@pytest.mark.parametrize("steps,warmup", [(1000, 100), (30, 3), (6, 0), (50, 50), (777, 13)])
@pytest.mark.parametrize("floor", [0.0, 0.1, 0.37])
def test_clip_numbers(lr, steps, warmup, floor):
    new = lr_lambda(steps, warmup, "cosine", peak=lr, floor=floor)
    assert [new(s) for s in range(steps)] == [clip_formula(lr, warmup, steps, floor, s) for s in range(steps)]


@pytest.mark.parametrize("steps,warmup", [(1200, 50), (16, 4), (20, 5), (8, 0), (333, 1)])
def test_pretrain_numbers(steps, warmup):
    new, old = lr_lambda(steps, warmup, "cosine", decay_from_start=True), pretrain_formula(steps, warmup)
    assert [new(s) for s in range(steps + 2)] == [old(s) for s in range(steps + 2)]
