#!/usr/bin/env bash
# Set up the environment, then run the GRPO demo: the built-in tiny Qwen2.5-VL learns the colour task on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/accelerate launch --config_file accelerate_configs/cpu.yaml \
  examples/grpo_vl.py --config examples/recipes/grpo_vl_tiny.yaml "$@"
