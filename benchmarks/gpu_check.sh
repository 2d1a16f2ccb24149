#!/usr/bin/env bash
# Everything only a GPU can show, in one run on one H100/H200 (untested on a GPU: none has been available so far).
#
#   bash benchmarks/gpu_check.sh [OUT_FOLDER]     (default results/benchmarks/gpu_check_<UTC date-time>)
#
# Writes under OUT_FOLDER:
#   env.txt            nvidia-smi, torch/CUDA versions, git commit
#   paper_scale.json   benchmarks/paper_scale.py --size paper: the released Meissonic config with random weights,
#                      64x64 tokens, N = 64, CFG 5, G = 8: rollout images/s, seconds per selected-step update
#                      (MaskFocus K = 6 vs Mask-GRPO all 64 steps), peak memory (torch.cuda.max_memory_allocated) of
#                      one update with and without gradient checkpointing, MFU, for fp32 (TF32) and bf16; and the
#                      bf16-vs-fp32 logits / log-probs of the paper-size model ("bf16_vs_fp32")
#   small_loops.json   the same at --size small with the whole K- and N-step loops timed, checking that
#                      "one step x K" (how paper_scale.json counts an update) matches the loop on a GPU
#   *.log              what each command printed
# Commit the folder (and copy paper_scale.json to results/benchmarks/paper_scale.json) after the run.
#
# Time budget: under 8 minutes. Each command has a hard `timeout` (330 s + 120 s = 7.5 min in all), and
# paper_scale.py rewrites its JSON after every variant, so a command cut short still leaves what it measured.
# Expected time: paper_scale.py prints its own estimate first ("estimated ... s", also the JSON's "estimate"):
# the model FLOPs of every call it makes (FlopCounterMode counts on the meta device: forward of one sample, forward +
# backward, checkpointed forward + backward; times rows, steps, warm-ups and repeats) divided by 25 % of the bf16
# peak (989 TFLOP/s; fp32 with TF32 at half that), plus 90 s of imports, model init and FLOP counting. The rollouts
# dominate (64 steps x 16 rows per rollout, CFG); `--size paper --estimate-only` prints the breakdown on any machine.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-results/benchmarks/gpu_check_$(date -u +%Y%m%d_%H%M%S)}"
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible: nothing to check')"
{
  date -u
  git rev-parse HEAD 2>/dev/null || true
  nvidia-smi || true
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} >"$OUT/env.txt" 2>&1

status=0
timeout 330 "$PY" benchmarks/paper_scale.py --size paper --device cuda --out "$OUT/paper_scale.json" \
  2>&1 | tee "$OUT/paper_scale.log" || status=1
timeout 120 "$PY" benchmarks/paper_scale.py --size small --device cuda --loops --out "$OUT/small_loops.json" \
  2>&1 | tee "$OUT/small_loops.log" || status=1
# Optional, not in the 8-minute budget: fp32 without TF32 (how the code ran before the engine's tf32 knob),
# several times the fp32 rollout time:
#   "$PY" benchmarks/paper_scale.py --size paper --device cuda --precisions fp32 --checkpointing off --no-tf32 \
#     --repeats 1 --out "$OUT/paper_scale_fp32_no_tf32.json"
echo "wrote $OUT (exit status $status: 1 = a command failed or hit its timeout; its JSON holds what it measured)"
exit $status
