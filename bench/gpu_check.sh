#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py): on a machine with a CUDA GPU, a random-init Qwen2.5-VL-3B-sized model, bf16,
# flash-attention when installed; exactness packed vs padded and fused vs full, FSDP2 through Accelerate (launches of
# examples/grpo_vl.py on the tiny model: training, save, exact resume, LoRA, vLLM colocate), B3 memory on the GPU, B7
# (step time against TRL's GRPOTrainer), B8 (vLLM colocate against generate, when vLLM is installed), B9 (images
# encoded once per prompt against every pass) and B12 (async rollouts against sync, vLLM colocate). One JSON line per section, also written to gpu_check.jsonl; stopped after 9 minutes
# whatever is left. Extra arguments go to the script (e.g. --sections exact b7). PYTHON picks the interpreter
# (default: .venv's, else python3).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
timeout 540 "$PYTHON" bench/gpu_check.py "$@" 2> gpu_check.stderr | tee gpu_check.jsonl
status=${PIPESTATUS[0]}
[ "$status" -eq 0 ] || tail -n 20 gpu_check.stderr >&2
exit "$status"
