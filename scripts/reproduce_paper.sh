#!/usr/bin/env bash
# End-to-end analyses on small models on CPU: Hessian density (MLP vs B-spline vs RSWAF), training-step
# memory vs batch size, written to docs/figures/ and docs/results_run.md (paste into docs/results.md).
#   scripts/reproduce_paper.sh [--quick]
# Models are UNTRAINED (random init): the zoo / training CLI had not landed when this was written.
# Default: timm's test_vit at 32x32 with its MLP swapped per kind (kanvision's KanMlp via mlp_layer).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
QUICK=0; [[ "${1:-}" == "--quick" ]] && QUICK=1
OUT=${OUT:-/tmp/kv_reproduce}; mkdir -p "$OUT" docs/figures
DATA=${DATA:-$HOME/data/cifar10-jpeg}
MODEL=(--model test_vit --model-kwargs '{"img_size": 32}' --num-classes 10 --kan none --kan bspline --kan rswaf)
if [[ -d "$DATA/test" ]]; then DATA_ARGS=(--data imagefolder --data-root "$DATA"); else DATA_ARGS=(--data synthetic); fi
if (( QUICK )); then H=(--batch-size 16 --top-k 2 --steps 10 --probes 2 --trace-probes 5); BS=(2 8 32)
else H=(--batch-size 32 --top-k 3 --steps 20 --probes 2 --trace-probes 10); BS=(8 32 128 512); fi
{
  echo "# run $(date -u +%FT%TZ) quick=$QUICK"
  echo "hardware: $(nproc) CPU cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)), torch threads: $($PY -c 'import torch; print(torch.get_num_threads())'), no GPU"
  echo "data for the Hessian: ${DATA_ARGS[*]}"
} | tee "$OUT/header.txt"
/usr/bin/time -f "hessian wall %e s" $PY -m kanvision.cli analyze hessian "${MODEL[@]}" "${DATA_ARGS[@]}" "${H[@]}" --out "$OUT/hessian" 2>&1 | grep -v '━' | tee "$OUT/hessian.log"
/usr/bin/time -f "memory wall %e s" $PY -m kanvision.cli analyze memory "${MODEL[@]}" --batch-sizes "${BS[@]}" --max-memory-gb 8 --out "$OUT/memory" 2>&1 | tee "$OUT/memory.log"
/usr/bin/time -f "splines wall %e s" $PY -m kanvision.cli analyze splines --model test_vit --model-kwargs '{"img_size": 32}' --num-classes 10 --kan bspline "${DATA_ARGS[@]}" --batch-size 32 --top 9 --out "$OUT/splines" 2>&1 | tee "$OUT/splines.log"
cp "$OUT/splines/splines_test_vit_bspline.png" docs/figures/splines_bspline.png
cp "$OUT/hessian/hessian_density.png" docs/figures/hessian_density.png
cp "$OUT/memory/memory.png" docs/figures/memory_vs_batch.png
cat "$OUT/header.txt" "$OUT/hessian.log" "$OUT/memory.log" "$OUT/splines.log" > docs/results_run.md
echo "wrote docs/figures/*.png and docs/results_run.md"
