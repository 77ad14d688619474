"""
bench/gpu_check.py is run on a lent GPU machine only; here it runs at its tiny size on the CPU, so that the script a
GPU session relies on does not rot between such sessions.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_runs_every_section_at_the_tiny_size_on_cpu():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    script = str(ROOT / "bench" / "gpu_check.py")
    command = [sys.executable, script, "--size", "tiny", "--steps", "2", "--repeats", "1"]
    completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, f"{completed.stdout[-3000:]}\n--- stderr ---\n{completed.stderr[-3000:]}"
    sections = {}
    for line in completed.stdout.splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            sections[entry["section"]] = entry
    # fp32 on the CPU: packed equals padded and fused equals the full logits, through ActorVL.forward.
    exact = sections["exact"]
    assert exact["image_tokens"] == 4 and exact["action_tokens"] == 37 + 64 + 5 + 50
    assert exact["packed_vs_padded_max"] < 1e-5 and exact["fused_vs_full_max"] < 1e-5, exact
    assert sections["memory"]["skipped"].startswith("needs CUDA")
    assert sections["fsdp2"]["skipped"].startswith("needs CUDA: Accelerate enables FSDP only over accelerators")
    b7 = sections["b7"]
    assert b7["rft_trl"]["median_step_s"] > 0 and b7["TRL"]["median_step_s"] > 0, b7
    assert b7["rft_trl"]["completion_tokens_per_s"] > 0, b7
    b9 = sections["b9"]
    # One rollout per step: generation encodes each prompt's image once, the update (4 micro-batches of 8) reuses it
    # while the tower is frozen and encodes each prompt present in a micro-batch while it trains; the pixels' path
    # encodes every sample in both.
    assert b9["frozen_cached"]["images_encoded_per_unique_image"] == 1, b9
    assert 2 <= b9["trained_cached"]["images_encoded_per_unique_image"] < 16, b9
    assert b9["frozen_pixels"]["images_encoded_per_unique_image"] == 16, b9
    # verify_model beside the first step: exact in fp32 on the CPU.
    verify = sections["verify"]
    assert 0 < verify["verify_s"] < verify["first_step_s"], verify
    assert verify["differences"]["padded"] < 1e-5 and verify["differences"]["encoder cache"] < 1e-5, verify
    # This environment has no vLLM: the section says so and how to get it.
    assert "pip install rft_trl[vllm]" in sections["b8"]["skipped"]
    assert "pip install rft_trl[vllm]" in sections["b12"]["skipped"]
