#!/usr/bin/env bash
# The performance benchmarks in one prepared run on a machine with a CUDA GPU:
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]          # on the GPU (cuda:0); results and a log in OUT_DIR
#   bash benchmarks/gpu_check.sh --dry [OUT_DIR]    # the same steps on the CPU at the smallest sizes
#
# 1. the base U-Net against diffusers' at matched FLOPs (forward, training step, memory, MFU);
# 2. a full render (base -> 256 -> 1024 where the cascade has them) and a clip, per stage;
# 3. the base stage's all-correct rate against sampler and steps;
# 4. the video stage's training step with channels-last against contiguous activations.
# The dry run checks that every step still runs (the test suite runs it); it measures nothing.
# OUT_DIR defaults to benchmarks/results/gpu (dry: a temporary folder). Run from anywhere; the
# project's .venv is used when it exists, else python3 (or $PYTHON when set).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY=0
if [[ "${1:-}" == "--dry" ]]; then
  DRY=1
  shift
fi
if [[ $DRY == 1 ]]; then
  OUT="${1:-$(mktemp -d)}"
  DEVICE=cpu
else
  OUT="${1:-$ROOT/benchmarks/results/gpu}"
  DEVICE=cuda
fi
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"  # PYTHON=... picks another interpreter
[[ -x "$PYTHON" ]] || PYTHON="$(command -v python3 || command -v python)"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
: > "$LOG"

step() {  # step NAME COMMAND...: run, keep the output in the log, stop at the first failure
  local name="$1"
  shift
  echo "== $name" | tee -a "$LOG"
  local start=$SECONDS
  if ! "$@" >> "$LOG" 2>&1; then
    echo "FAILED: $name (see $LOG)" >&2
    tail -n 20 "$LOG" >&2
    exit 1
  fi
  echo "   done in $((SECONDS - start)) s" | tee -a "$LOG"
}

if [[ $DRY == 0 ]]; then
  "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU here: run with --dry on a CPU')"
  { nvidia-smi || true; } >> "$LOG" 2>&1
fi

cd "$ROOT"
if [[ $DRY == 1 ]]; then
  step "U-Net vs diffusers (dry)" "$PYTHON" benchmarks/unet_vs_diffusers.py --dry --out "$OUT/unet_vs_diffusers.json"
  step "render (dry)" "$PYTHON" benchmarks/render.py --steps 2 --repeats 1 --untrained-video shapes-video64 --out "$OUT/render.json"
  step "samplers' quality (dry)" "$PYTHON" benchmarks/samplers_quality.py --dry --out "$OUT/samplers_quality.json"
  step "training step (dry)" "$PYTHON" benchmarks/train_step.py --preset tiny-video16 --batch 2 --rounds 1 \
    --out "$OUT/train_step.json"
else
  step "U-Net vs diffusers" "$PYTHON" benchmarks/unet_vs_diffusers.py --device "$DEVICE" --batches 1 8 16 64 \
    --out "$OUT/unet_vs_diffusers.json"
  step "render" "$PYTHON" benchmarks/render.py --device "$DEVICE" --untrained-video shapes-video64 --out "$OUT/render.json"
  step "samplers' quality" "$PYTHON" benchmarks/samplers_quality.py --device "$DEVICE" --n 200 --batch-size 100 \
    --out "$OUT/samplers_quality.json"
  step "training step" "$PYTHON" benchmarks/train_step.py --device "$DEVICE" --preset shapes-video64 --batch 32 \
    --out "$OUT/train_step.json"
fi
echo "results in $OUT"
