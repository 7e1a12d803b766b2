#!/usr/bin/env bash
# Train and ship the pretrained CIFAR-10 weights (kan_mixer_tiny_p4_32 and kan_convmixer_128_8_p4), one model at
# a time, resumably.
#
#   nohup bash scripts/train_pretrained.sh > ~/kanvision-runs/train_pretrained.log 2>&1 &
#   DRY_RUN=1 bash scripts/train_pretrained.sh      # print what it would run
#
# For each tag not yet in checkpoints/manifest.json: `kanvision fit` with its architecture's recipe
# (configs/pretrained/cifar10_<arch>.yaml) in $RUNS/runs/<name>/version_N, resumed from the newest
# interrupted-step*.ckpt or last.ckpt of that name when one exists (exact resume), then scripts/ship_pretrained.py
# (export, manifest entry, tables). Stop it with one SIGTERM/Ctrl-C to the fit: it saves and the next start
# resumes. Data: $DATA/{train,test}, unpacked from ../shared/data/cifar10-jpeg.tar.gz when absent.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
RUNS=${RUNS:-$HOME/kanvision-runs}
DATA=${DATA:-$HOME/data}
KV=${KV:-$REPO/.venv/bin/kanvision}
PY=${PY:-$REPO/.venv/bin/python}
run() { if [ -n "${DRY_RUN:-}" ]; then printf '%q ' "$@"; echo; else "$@"; fi; }

if [ ! -d "$DATA/train" ] || [ ! -d "$DATA/test" ]; then
  archive=${KANVISION_CIFAR10_JPEG:-$REPO/../shared/data/cifar10-jpeg.tar.gz}
  [ -f "$archive" ] || { echo "train_pretrained: no $DATA/train and no archive $archive to unpack" >&2; exit 1; }
  run mkdir -p "$DATA"
  run tar -xzf "$archive" -C "$DATA"
fi
mkdir -p "$RUNS"

# architecture : run-name prefix : tag suffix : --model.kan : match_params (empty: none) : seed
# Seed 0 is the first shipped weight; seed 1 ships as <tag>_seed1 (same recipe and hold-out, another init and order).
# ONLY="tag1 tag2" trains just those tags (in this order of the list).
M=kan_mixer_tiny_p4_32 C=kan_convmixer_128_8_p4
SPECS=("$M:cifar10:none:none::0" "$M:cifar10:bspline:bspline::0" "$M:cifar10:rswaf:rswaf::0"
       "$M:cifar10:none_match_bspline:none:bspline:0" "$C:cifar10_convmixer128:none:none::0"
       "$C:cifar10_convmixer128:bspline:bspline::0"
       "$C:cifar10_convmixer128:none:none::1" "$C:cifar10_convmixer128:bspline:bspline::1"
       "$M:cifar10:none:none::1" "$M:cifar10:bspline:bspline::1" "$M:cifar10:rswaf:rswaf::1"
       "$M:cifar10:none_match_bspline:none:bspline:1")
for spec in "${SPECS[@]}"; do
  IFS=: read -r arch prefix suffix kan match seed <<<"$spec"
  sfx=""; [ "$seed" != 0 ] && sfx=_seed$seed
  tag=$arch.cifar10_$suffix$sfx
  name=${prefix}_$suffix$sfx
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $tag "* ]]; then continue; fi
  RECIPE=configs/pretrained/cifar10_$arch.yaml
  if "$PY" - "$tag" <<'EOF'
import json, sys
from pathlib import Path
m = Path("checkpoints/manifest.json")
sys.exit(0 if m.is_file() and any(e["tag"] == sys.argv[1] for e in json.loads(m.read_text())["entries"]) else 1)
EOF
  then echo "=== $tag: shipped already"; continue; fi

  args=(fit --config configs/trainer/cpu.yaml --config "$RECIPE" --model.kan "$kan" --name "$name"
        --trainer.default_root_dir "$RUNS/runs" --data.root "$DATA" --trainer.enable_progress_bar false
        --seed_everything "$seed")
  [ -n "$match" ] && args+=(--model.model_kwargs "{\"match_params\": \"$match\"}")
  resume=$(ls -t "$RUNS/runs/$name"/version_*/checkpoints/interrupted-step*.ckpt \
               "$RUNS/runs/$name"/version_*/checkpoints/last.ckpt 2>/dev/null | head -1 || true)
  [ -n "$resume" ] && args+=(--ckpt_path "$resume")
  echo "=== $(date -u +%FT%TZ) $tag: ${resume:+resuming from $resume}"
  prev=$(cat "$RUNS/runs/$name/wall_s" 2>/dev/null || echo 0)
  start=$(date +%s)
  rc=0
  run "$KV" "${args[@]}" || rc=$?
  wall=$(( prev + $(date +%s) - start ))  # summed over the segments of a resumed run
  if [ -z "${DRY_RUN:-}" ]; then mkdir -p "$RUNS/runs/$name" && echo "$wall" > "$RUNS/runs/$name/wall_s"; fi
  if [ "$rc" -ne 0 ]; then echo "=== $tag: fit stopped (exit $rc); run this script again to resume" >&2; exit "$rc"; fi
  # The run's directory: the one resumed into, else the one this fit created (the newest).
  run_dir=$(ls -d "$RUNS/runs/$name"/version_* 2>/dev/null | sort -V | tail -1 || true)
  [ -n "$resume" ] && run_dir=$(dirname "$(dirname "$resume")")
  run_dir=${run_dir:-$RUNS/runs/$name/version_0}
  run "$PY" scripts/ship_pretrained.py "$run_dir" --tag "$tag" --seed "$seed" --wall-s "$wall" --trained-on "${TRAINED_ON:-$(nproc)-core CPU}" \
      --command "kanvision ${args[*]} (scripts/train_pretrained.sh at $(git rev-parse --short HEAD); wall time summed over resumes)"
done
