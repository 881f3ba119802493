#!/usr/bin/env bash
# GPU measurements of cgh-jax (ResNet-50/18 throughput with SGD, M3, RM3, RA3; memory; input
# pipeline). Needs only jax (with its CUDA plugin), flax, optax and numpy (Pillow optional).
# Usage, from anywhere:  bash benchmarks/gpu.sh [--smoke] [extra flags of benchmarks/gpu.py]
# PYTHON=/path/to/python picks the interpreter (default python3).
# The table is printed and written to $OUT/gpu_results.md when OUT is set.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# Let XLA take most of the GPU memory up front (the default 75% can be too little for
# ResNet-50 at batch 768 with three gradient copies).
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
PYTHON="${PYTHON:-python3}"
"$PYTHON" -c "import jax; print('devices:', jax.devices())"
exec timeout 470 "$PYTHON" benchmarks/gpu.py "$@"
