#!/usr/bin/env bash
# The training-scheme study (issue 13; arXiv:2411.05296 at CPU scale): 54 runs of kanvision fit through
# `kanvision sweep`, then docs/training_schemes.md and docs/figures/training_schemes.png from their results.
#
#   bash scripts/training_schemes.sh                  # ~2.3 h on the 2-core CPU; resumable: run it again
#   SWEEP=~/kanvision-runs/training_schemes DATA=~/data bash scripts/training_schemes.sh
#
# The sweep skips finished runs and resumes interrupted ones, so a stopped study continues where it was.
# On a cluster: add LAUNCHER=slurm to write the sbatch array (one task per run), submit it, then run this
# script again with REPORT_ONLY=1 to collect the results and write the page.
set -euo pipefail
cd "$(dirname "$0")/.."
SWEEP=${SWEEP:-$HOME/kanvision-runs/training_schemes}
DATA=${DATA:-$HOME/data}
KV=${KV:-.venv/bin/kanvision}
PY=${PY:-.venv/bin/python}
TRAINER=${TRAINER:-configs/trainer/cpu.yaml}
args=(sweep --config "$TRAINER" --config configs/study/training_schemes.yaml
      --grid configs/study/training_schemes_grid.yaml --out "$SWEEP" --launcher "${LAUNCHER:-local}")
[ -n "${REPORT_ONLY:-}" ] && args+=(--report-only)
args+=(-- --data.root "$DATA")
start=$(date +%s)
"$KV" "${args[@]}"
[ "${LAUNCHER:-local}" = slurm ] && [ -z "${REPORT_ONLY:-}" ] && exit 0
machine=${MACHINE:-"$(nproc)-core CPU"}
"$PY" scripts/training_schemes_doc.py "$SWEEP" --machine "$machine" \
    --command "${COMMAND:-kanvision ${args[*]}}"
echo "training_schemes: done in $(( $(date +%s) - start )) s"
