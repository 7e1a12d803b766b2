#!/usr/bin/env bash
# One command for a time-limited GPU allocation: self-check, kernel and training benchmarks, then a resumable queue
# of trainings and Hessians packed into OUT as each finishes (scripts/gpu_run.py says what and in which order).
#
#   scripts/gpu_run.sh OUT --budget-minutes 12 [--data DIR] [--only 'train/*'] [--dry-run]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}
exec "$PY" scripts/gpu_run.py "$@"
