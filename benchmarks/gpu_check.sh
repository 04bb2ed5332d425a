#!/usr/bin/env bash
# The GPU check of issue 21, ready to run on one CUDA GPU in at most 10 minutes:
#   every built-in architecture for one epoch with the data resident on the GPU, one
#   checkpoint's logits on CPU against GPU, a CIFAR-10 epoch in fp32 / channels-last / bf16,
#   the multi-model MLP trainer at K = 8 and 64, then the study's CIFAR-10 runs for as long
#   as the time allows. Everything goes under $OUT (else ./gpu-check-out); summary.json there
#   holds each step's result or error. Steps and options: benchmarks/gpu_check.py --help.
#
# Usage: RSC_DATA_DIR=/path/to/data benchmarks/gpu_check.sh [gpu_check.py options]
# Exits 2 with one line at once when there is no CUDA device.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
export PYTHONUNBUFFERED=1
# A hard stop under the 10 minutes, whatever a step does; the helper's own budget (540 s)
# ends its steps earlier and leaves summary.json complete.
exec timeout --kill-after=15 580 "$PYTHON" benchmarks/gpu_check.py "$@"
