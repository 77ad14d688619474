#!/usr/bin/env bash
# Set up the environment, lint, and run the whole test suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# vLLM's CPU build, in its own environment, for tests/test_vllm.py. A failure here is not fatal: those tests then
# skip, printing the reason (the tail of .venv-vllm.log).
if bash scripts/setup_vllm.sh > .venv-vllm.log 2>&1; then
  tail -n 1 .venv-vllm.log
else
  echo "scripts/setup_vllm.sh failed (see .venv-vllm.log): the vLLM tests will skip" >&2
fi
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/ruff check rft_trl tests examples bench
set +e
.venv/bin/python -m pytest tests -q -rs -p no:cacheprovider --durations=15 "$@"
status=$?
set -e
# pytest exits 5 when it collected no tests: that is a failure here, not a pass.
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests" >&2
  exit 1
fi
exit "$status"
