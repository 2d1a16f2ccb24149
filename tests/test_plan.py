"""`maskfocus plan` (maskfocus.rl.plan, maskfocus.models.flops): counts against real models measured on CPU."""

import argparse, re

import pytest
import torch

from maskfocus.core import InputError
from maskfocus.models.flops import param_counts, saved_activation_bytes
from maskfocus.models.meissonic_config import MeissonicConfig
from maskfocus.models.transformer import MeissonicTransformer
from maskfocus.rl.plan import add_plan_parser

SMALL = MeissonicConfig(**{**MeissonicConfig.tiny().__dict__, "num_layers": 2, "num_single_layers": 2})
GRID, TEXT = (16, 16), 8


def _measured_saved_bytes(model: MeissonicTransformer, batch: int, rows: int | None = None) -> int:
    """Bytes of the distinct storages autograd saves in one real CPU forward (+ float32 log-softmax), params left out;
    with `rows`, the packed head (`positions=`) at that many random positions per sample."""
    torch.manual_seed(0)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = st.nbytes()
        return t

    c = model.config
    inputs = (
        torch.randint(0, c.codebook_size, (batch, *GRID)),
        torch.randn(batch, TEXT, c.joint_attention_dim),
        torch.randn(batch, c.pooled_projection_dim),
        torch.full((batch,), 0.5),
        torch.rand(batch, 5),
    )
    pos = None
    if rows is not None:  # exactly `rows` Trues per sample
        pos = (torch.rand(batch, GRID[0] * GRID[1]).argsort(1).argsort(1) < rows).view(batch, *GRID)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(*inputs, positions=pos)
        lp = out.float().log_softmax(-1) if rows is not None else out.float().flatten(2).log_softmax(1)
    lp.sum().backward()  # the graph is a real one
    return sum(seen.values())


def test_param_count_equals_real_model():
    assert param_counts(SMALL)["total"] == sum(p.numel() for p in MeissonicTransformer(SMALL).parameters())


@pytest.mark.parametrize("ckpt", [False, True])
def test_saved_activations_match_cpu_measurement(ckpt):
    "The fake-tensor count vs the bytes saved by a real CPU forward, batch 2: within 2 % (storages dedup'd alike)."
    model = MeissonicTransformer(SMALL, gradient_checkpointing=ckpt)
    measured = _measured_saved_bytes(model, 2)
    planned = saved_activation_bytes(SMALL, GRID, TEXT, 2, "fp32", ckpt)
    assert abs(planned - measured) <= 0.02 * measured, (planned, measured)


@pytest.mark.parametrize("rows", [1, 40, 256])
def test_packed_head_activations_match_cpu_measurement(rows):
    "`head_rows` (the packed update head) vs a real CPU forward with `positions=` at that many positions per sample."
    model = MeissonicTransformer(SMALL)
    measured = _measured_saved_bytes(model, 2, rows)
    planned = saved_activation_bytes(SMALL, GRID, TEXT, 2, "fp32", False, head_rows=rows)
    assert abs(planned - measured) <= 0.02 * measured, (planned, measured)
    if rows < 256:  # fewer rows, less saved, by the head's share
        assert planned < saved_activation_bytes(SMALL, GRID, TEXT, 2, "fp32", False)


def _run(argv):
    p = argparse.ArgumentParser()
    add_plan_parser(p.add_subparsers())
    a = p.parse_args(["plan", *argv])
    return a.func(a)


@pytest.fixture
def small_params(tmp_path):
    SMALL.to_json(tmp_path / "config.json")
    f = tmp_path / "p.yaml"
    f.write_text("rl:\n  prompts_per_iter: 2\n  group_size: 4\n  steps: 8\n  K: 2\n  engine: {precision: bf16}\n")
    return ["--params", str(f), "--model", str(tmp_path / "config.json"), "--grid", "16", "--text-len", "8"]


def test_cli_prints_total(small_params, capsys):
    assert _run([*small_params, "--gpus", "2", "--sharding", "zero2"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"per-GPU total: \d+\.\d+ GB", out[-1])


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--gpus", "0"], "--gpus"),
        (["--gpus", "3"], "split"),  # 8 samples over 3 GPUs
        (["--section", "nope"], "nope"),
    ],
)
def test_cli_bad_inputs(small_params, extra, needle):
    with pytest.raises(InputError, match=needle):
        _run([*small_params, *extra])


def test_cli_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        _run(["--params", str(tmp_path / "none.yaml")])
