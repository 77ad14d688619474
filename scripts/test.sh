#!/usr/bin/env bash
# Set up the environment, lint, and run the whole test suite on CPU (what CI runs): tests/unit, tests/integration and
# tests/e2e. `bash scripts/test.sh --fast` runs the unit tier alone (about a minute; no vLLM environment needed); any
# other arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "${1:-}" = "--fast" ]; then
  shift
  export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
  .venv/bin/ruff check rft_trl tests examples bench
  exec .venv/bin/python -m pytest tests/unit -q -p no:cacheprovider "$@"
fi
# vLLM's CPU build, in its own environment, for tests/e2e/test_vllm.py and tests/integration/test_agents_vllm.py. A
# failed build fails the run: the real-engine tests need it. Only a reduced run asked for by name
# (RFT_TRL_TESTS_WITHOUT_VLLM=1) goes on without it (and does not build it); those tests then skip, saying why, and the
# run says it was reduced, first and last.
WITHOUT_VLLM=${RFT_TRL_TESTS_WITHOUT_VLLM:-0}
if [ "$WITHOUT_VLLM" != 0 ] && [ "$WITHOUT_VLLM" != 1 ]; then
  echo "RFT_TRL_TESTS_WITHOUT_VLLM must be 1 (a reduced run without the vLLM tests) or 0 (the full run)," \
    "not '$WITHOUT_VLLM'" >&2
  exit 2
fi
export RFT_TRL_TESTS_WITHOUT_VLLM=$WITHOUT_VLLM  # read by the vLLM tests
reduced_run_notice() {
  echo "REDUCED RUN (RFT_TRL_TESTS_WITHOUT_VLLM=1): without the vLLM tests" \
    "(the real-engine tests of tests/e2e/test_vllm.py and tests/integration/test_agents_vllm.py skip)." \
    "The full run, as CI runs it, leaves the variable unset." >&2
}
if [ "$WITHOUT_VLLM" = 1 ]; then
  reduced_run_notice
elif bash scripts/setup_vllm.sh > .venv-vllm.log 2>&1; then
  tail -n 1 .venv-vllm.log
else
  echo "scripts/setup_vllm.sh failed; the end of .venv-vllm.log:" >&2
  tail -n 40 .venv-vllm.log >&2
  echo "scripts/setup_vllm.sh failed (log above, all of it in .venv-vllm.log): the vLLM tests need .venv-vllm." \
    "Fix the build, or run the reduced suite without the vLLM tests:" \
    "RFT_TRL_TESTS_WITHOUT_VLLM=1 bash scripts/test.sh" >&2
  exit 1
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
if [ "$WITHOUT_VLLM" = 1 ]; then
  reduced_run_notice
fi
exit "$status"
