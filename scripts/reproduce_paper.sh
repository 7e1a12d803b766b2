#!/usr/bin/env bash
# The paper's evidence beyond accuracy, end to end on CPU for a small zoo model, MLP vs B-spline vs RSWAF:
# Hessian spectrum, training-step memory vs batch size, throughput, learned spline edges.
# Writes docs/figures/*.png and docs/results_run.md (the raw output that docs/results.md quotes).
#
#   scripts/reproduce_paper.sh [--quick]
#   CHECKPOINTS="runs/a/last.ckpt runs/b/last.ckpt runs/c/last.ckpt" scripts/reproduce_paper.sh
#
# With CHECKPOINTS (trained runs, e.g. from `kanvision fit --config configs/experiment/...`), the Hessian
# and spline plots are of those trained minima; without, of the untrained MODEL (random init).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
QUICK=0; [[ "${1:-}" == "--quick" ]] && QUICK=1
OUT=${OUT:-/tmp/kv_reproduce}; mkdir -p "$OUT" docs/figures
DATA=${DATA:-$HOME/data/cifar10-jpeg}
MODEL=${MODEL:-kan_mixer_tiny_p4_32}
KINDS=(--model "$MODEL" --num-classes 10 --kan none --kan bspline --kan rswaf)
if [[ -n "${CHECKPOINTS:-}" ]]; then
  TRAINED=(); for c in $CHECKPOINTS; do TRAINED+=(--checkpoint "$c"); done
  BSPLINE_CKPT=$(for c in $CHECKPOINTS; do echo "$c"; done | grep -m1 -i bspline || true)
else
  TRAINED=("${KINDS[@]}"); BSPLINE_CKPT=""
fi
if [[ -d "$DATA/test" ]]; then DATA_ARGS=(--data imagefolder --data-root "$DATA"); else DATA_ARGS=(--data synthetic); fi
if (( QUICK )); then H=(--batch-size 16 --top-k 2 --steps 10 --probes 2 --trace-probes 5 --maxiter 5); BS=(2 8 32); TP=(--batch-size 16 --repeats 3)
else H=(--batch-size 64 --top-k 3 --steps 30 --probes 3 --trace-probes 20 --maxiter 20); BS=(8 32 128 512); TP=(--batch-size 64 --repeats 5); fi
{
  echo "# run $(date -u +%FT%TZ) quick=$QUICK model=$MODEL checkpoints=${CHECKPOINTS:-none (untrained)}"
  echo "hardware: $(nproc) CPU cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)), torch threads: $($PY -c 'import torch; print(torch.get_num_threads())'), no GPU"
  echo "data for the Hessian and splines: ${DATA_ARGS[*]}"
} | tee "$OUT/header.txt"
/usr/bin/time -f "hessian wall %e s" $PY -m kanvision.cli analyze hessian "${TRAINED[@]}" "${DATA_ARGS[@]}" "${H[@]}" --out "$OUT/hessian" 2>&1 | grep -v '━' | tee "$OUT/hessian.log"
/usr/bin/time -f "memory wall %e s" $PY -m kanvision.cli analyze memory "${KINDS[@]}" --batch-sizes "${BS[@]}" --max-memory-gb 8 --out "$OUT/memory" 2>&1 | tee "$OUT/memory.log"
/usr/bin/time -f "throughput wall %e s" $PY -m kanvision.cli analyze throughput "${KINDS[@]}" "${TP[@]}" --out "$OUT/throughput" 2>&1 | tee "$OUT/throughput.log"
if [[ -n "$BSPLINE_CKPT" ]]; then SPL=(--checkpoint "$BSPLINE_CKPT"); else SPL=(--model "$MODEL" --num-classes 10 --kan bspline); fi
/usr/bin/time -f "splines wall %e s" $PY -m kanvision.cli analyze splines "${SPL[@]}" "${DATA_ARGS[@]}" --batch-size 64 --top 9 --out "$OUT/splines" 2>&1 | tee "$OUT/splines.log"
cp "$(ls "$OUT"/splines/splines_*.png | head -1)" docs/figures/splines_bspline.png
cp "$OUT/hessian/hessian_density.png" docs/figures/hessian_density.png
cp "$OUT/memory/memory.png" docs/figures/memory_vs_batch.png
cat "$OUT/header.txt" "$OUT/hessian.log" "$OUT/memory.log" "$OUT/throughput.log" "$OUT/splines.log" > docs/results_run.md
echo "wrote docs/figures/*.png and docs/results_run.md"
