#!/usr/bin/env bash
# GPU self-check (offline, any CUDA machine): KAN layer parity vs the float64 reference (fp32, bf16 autocast,
# compiled, after update_grid), a bf16-mixed fit of each kind through `kanvision fit`, a 2-GPU DDP fit with
# grid updates (2+ GPUs), and the layer benchmark vs its matmul floor. Prints one table; exits 1 if a row
# fails. Without a GPU it says so and runs the CPU subset.
#
#   scripts/gpu_check.sh [--quick] [--out gpu_check.md] [--device cuda:N]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
exec "$PY" -m kanvision.cli gpu-check "$@"
