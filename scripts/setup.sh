#!/usr/bin/env bash
# One-command setup: a venv in .venv with torch, torchvision and kanvision (editable, with test extra).
# Usage: bash scripts/setup.sh [extra,...]   e.g. `bash scripts/setup.sh test,bench`
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
EXTRAS=${1:-test}
# Pinned together because torchvision only imports beside the torch build it was compiled for.
# Override for other platforms / CUDA builds, e.g. TORCH_SPEC="torch==2.9.1 torchvision==0.24.1".
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}

"$PY" - <<'PYCHECK'
import sys
if sys.version_info < (3, 10):
    sys.exit(f"kanvision needs Python >= 3.10, found {sys.version.split()[0]}; set PYTHON=/path/to/python3.10+")
PYCHECK

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first and alone, so the package install below finds it satisfied and pulls no other build.
# shellcheck disable=SC2086
.venv/bin/python -m pip install --quiet $TORCH_SPEC
.venv/bin/python -m pip install --quiet -e ".[${EXTRAS}]"
.venv/bin/python -c "import torch, torchvision, timm, lightning, kanvision; print('kanvision', kanvision.__version__, '| torch', torch.__version__, '| torchvision', torchvision.__version__, '| timm', timm.__version__, '| lightning', lightning.__version__)"
