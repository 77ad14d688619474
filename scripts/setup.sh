#!/usr/bin/env bash
# Create .venv and install rft_trl with its test tools. Idempotent: a second run only re-checks.
#
# torch and torchvision are pinned together on the pip line: a loose torch lets pip pick an unrelated CUDA build,
# and PyPI's torchvision only imports beside the torch release it was built for. torchvision is what video
# processing in transformers needs.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check \
  "torch==2.14.1" "torchvision==0.29.1" -e ".[dev]" 2>&1 | grep -vE "is ignored: it is neither a file nor a directory" || true
.venv/bin/python -c "import torch, torchvision, transformers, trl, peft, accelerate, rft_trl; print('rft_trl', rft_trl.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__)"
