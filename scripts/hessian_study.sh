#!/usr/bin/env bash
# Figure 3 of the limitations paper at the scale issue 14 asks for: the Hessian of the training loss of each
# shipped model (the Mixer four, then the ConvMixer pair; MODELS="checkpoints/<tag> ..." picks) on 1,000
# un-augmented training images (the 5,000-image hold-out excluded and scored beside it), top-5 eigenpairs by
# ARPACK with residuals, SLQ 10 probes x 80 Lanczos steps, Hutchinson 20 probes, and the paper's statistic
# (eigenvalues above 0.1 / 0.01 / 0.001 of the largest).
#
#   scripts/hessian_study.sh OUT [DATA]        # DATA: CIFAR-10 image folders DATA/{train,test}/<class>/
#   SCALE=cpu scripts/hessian_study.sh OUT     # reduced: 256 images, top-5 at tol 1e-3, SLQ 10 x 20, no trace;
#     on 2 CPU cores (docs/data/hessian_cpu.json): MLP 11 min, B-spline 23 min, size-matched MLP 34 min;
#     ConvMixer MLP 7 min, ConvMixer B-spline 21 min (a test run sharing the cores for part of both)
#
# The full scale needs a GPU in practice: one model takes ~860 HVPs over the 1,000 images. Measured per HVP
# over 128 images on 2 idle CPU cores, SLQ's lockstep probes: MLP 1.1 s, B-spline 2.5 s, RSWAF 3.6 s,
# size-matched MLP 2.6 s (so ~8x that per HVP at 1,000 images). The ConvMixer's depthwise convolutions are
# dearer than their FLOPs: PyTorch's double backward of a grouped convolution runs one convolution per group
# (~1,000 calls per HVP here); ConvMixer-128 MLP, 256 images, with a training run sharing the 2 cores: 15 s per
# HVP. On an H200 shared with four training runs, before the cheaper B-spline path (impl='local') and lockstep
# SLQ: 0.27-0.46 s (MLP), 1.7 s (B-spline).
# Resumable: a model already in OUT/hessian.json is kept (--resume); each model is written as it finishes.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: scripts/hessian_study.sh OUT [DATA]}
DATA=${2:-$HOME/data}
PY=${PY:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}
C=checkpoints/kan_mixer_tiny_p4_32.cifar10 V=checkpoints/kan_convmixer_128_8_p4.cifar10
MODELS=${MODELS:-"${C}_none ${C}_bspline ${C}_rswaf ${C}_none_match_bspline ${V}_none ${V}_bspline"}
ARGS=(); for m in $MODELS; do ARGS+=(--checkpoint "$m"); done
case ${SCALE:-full} in
  full) S=(--batch-size 250 --batches 4 --top-k 5 --tol 1e-4 --maxiter 30 --steps 80 --probes 10 --trace-probes 20) ;;
  cpu)  S=(--batch-size 128 --batches 2 --top-k 5 --tol 1e-3 --maxiter 20 --steps 20 --probes 10 --trace-probes 0) ;;
  *) echo "hessian_study.sh: SCALE must be full or cpu, got '$SCALE'" >&2; exit 2 ;;
esac
exec $PY -m kanvision.cli analyze hessian "${ARGS[@]}" --data imagefolder --data-root "$DATA" --split train \
  --val-split 0.1 --data-seed 0 --bottom-k 0 "${S[@]}" --resume --out "$OUT"
