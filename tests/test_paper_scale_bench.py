"A CPU smoke run of benchmarks/paper_scale.py at its tiny size: the JSON's fields are there, its numbers finite."

import importlib.util, json, math, os, subprocess, sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "paper_scale.py"
VARIANTS = ("fp32", "fp32_ckpt", "bf16", "bf16_ckpt")


def numbers(obj, path=""):
    "Every int/float leaf of a JSON object, with its path."
    if isinstance(obj, dict):
        return [x for k, v in obj.items() for x in numbers(v, f"{path}.{k}")]
    if isinstance(obj, list):
        return [x for i, v in enumerate(obj) for x in numbers(v, f"{path}[{i}]")]
    return [(path, obj)] if isinstance(obj, (int, float)) and not isinstance(obj, bool) else []


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("paper_scale") / "tiny.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(SCRIPT), "--size", "tiny", "--device", "cpu", "--repeats", "1", "--out", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return json.loads(out.read_text())


def test_header_fields(result):
    assert result["complete"] is True and result["ran_on_gpu"] is False
    assert result["device"]["type"] == "cpu" and result["device"]["name"] and result["torch"] == torch.__version__
    c = result["config"]
    assert c["size"] == "tiny" and c["image_tokens"] == 64 and c["grid"] == [8, 8]
    assert c["K"] == {"maskfocus": 2, "mask_grpo": c["N"]} and c["cfg"] == 5.0 and c["G"] == 2
    assert 1e6 < c["params"] < 1e7 and c["params"] == result["flops"]["params"]
    f = result["flops"]
    assert 2.5 < f["forward_backward_per_sample"] / f["forward_per_sample"] < 3.5
    assert f["forward_backward_checkpointed_per_sample"] > f["forward_backward_per_sample"]
    assert "VmHWM" in result["memory_method"] or "getrusage" in result["memory_method"]
    assert result["peak_tflops"] == 989.0 and result["estimate"]["seconds"] > 0
    assert result["wall_s"] > 0 and result["process_cpu_s"] > 0


def test_every_number_is_finite_and_times_positive(result):
    leaves = numbers(result)
    assert len(leaves) > 100
    bad = [(p, v) for p, v in leaves if not math.isfinite(v)]
    assert not bad, bad
    times = [(p, v) for p, v in leaves if p.endswith(("median_s", "update_s", "images_per_s", "mfu", "_tflops"))]
    assert times and all(v > 0 for _, v in times), times


def test_variants_rollouts_and_ratios(result):
    assert set(result["rollout"]) == {"fp32", "bf16"} and set(result["variants"]) == set(VARIANTS)
    for p, r in result["rollout"].items():
        assert r["status"] == "ok" and r["images_per_s"] > 0 and r["peak_memory_bytes"] > 0 and r["mfu"] > 0
    N, K = result["config"]["N"], result["config"]["K"]["maskfocus"]
    for name, v in result["variants"].items():
        assert v["status"] == "ok" and v["grad_checkpointing"] == name.endswith("_ckpt")
        mf, mg = v["update"]["maskfocus"], v["update"]["mask_grpo"]
        assert mf["steps_trained"] == K and mg["steps_trained"] == N
        assert mf["update_s"] == pytest.approx(K * (mf["step"]["median_s"] + mf["reference_forward"]["median_s"]))
        assert mg["update_s"] == pytest.approx(N * mg["step"]["median_s"])
        assert mf["step"]["peak_memory_bytes"] > 0 and mf["mfu"] > 0 and mf["loop"]["median_s"] > 0
        assert (mf["recomputed_flops_per_step"] > 0) == v["grad_checkpointing"]
        assert v["iteration"]["ratio_maskfocus_over_mask_grpo"] > 0
    assert result["ratios"]["fp32"] == {k: 1.0 for k in result["ratios"]["fp32"]}
    assert set(result["ratios"]) == set(VARIANTS)


def test_bf16_close_to_fp32(result):
    d = result["bf16_vs_fp32"]
    assert d["status"] == "ok" and d["scored_tokens"] > 0
    assert 0 < d["logits_rel_l2"] < 0.1 and d["logp_max_abs_diff"] < 0.5 and d["argmax_agreement"] > 0.5


def test_out_of_memory_is_recorded_not_raised():
    spec = importlib.util.spec_from_file_location("_paper_scale_bench", SCRIPT)
    ps = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = ps  # dataclasses resolve the module's annotations through sys.modules
    try:
        spec.loader.exec_module(ps)
    finally:
        del sys.modules[spec.name]

    def oom():
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    r = ps.guarded(oom, torch.device("cpu"))
    assert r["status"] == "oom" and "out of memory" in r["error"]
    assert ps.guarded(lambda: {"x": 1}, torch.device("cpu")) == {"status": "ok", "x": 1}
