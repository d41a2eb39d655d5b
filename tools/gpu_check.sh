#!/usr/bin/env bash
# Every GPU check in one run, for a lent GPU machine (see docs/benchmarks.md, "GPU").
#
#   bash tools/gpu_check.sh [MODEL_DIR] [OUT_DIR]
#
# The lent machine has Python with PyTorch and CUDA but nothing else can be
# installed from outside, so the run uses what `make gpu-bundle` prepared
# here and the device call carries (64 MiB at most):
#   .gpu_bundle/model/   the base model (config, weights, Semantic IDs)
#   .gpu_bundle/wheels/  this project's other runtime wheels, for Python 3.10-3.13
# It maps the source folders to the `userlayer` package (no install), installs
# the wheels offline into a temporary directory, and runs
# `userlayer bench gpu` within 7 minutes (GPU_CHECK_BUDGET_S, default 420 s, plus
# 60); the JSON is rewritten after each part, so a run cut short still reports
# what it measured, and a part that fails leaves its error there and the rest run.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
model="${1:-$repo/.gpu_bundle/model}"
out="${2:-${OUT:-$repo/gpu_out}}"
py="${PYTHON:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/pkg/userlayer" "$out"
for part in sdk edge cloud tools; do ln -s "$repo/$part" "$work/pkg/userlayer/$part"; done
if [ -d "$repo/.gpu_bundle/wheels" ]; then
  # each wheel the machine lacks, offline; a package already there is kept
  "$py" -m pip install --quiet --no-index --find-links "$repo/.gpu_bundle/wheels" \
    --target "$work/site" -r "$repo/.gpu_bundle/wheels/requirements.txt" \
    > "$out/pip.log" 2>&1 || echo "some wheels did not install: see $out/pip.log"
fi
export PYTHONPATH="$work/pkg:$work/site${PYTHONPATH:+:$PYTHONPATH}"
"$py" -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__,
  "cuda", torch.cuda.is_available() and torch.cuda.get_device_name(0))' | tee "$out/env.txt"
budget="${GPU_CHECK_BUDGET_S:-420}"  # the parts' budget; the run is cut 60 s past it
timeout "$((budget + 60))" "$py" -m userlayer.tools.cli bench gpu --model "$model" \
  --out "$out/gpu_check.json" --budget-s "$budget" 2>&1 | tee "$out/gpu_check.log"
