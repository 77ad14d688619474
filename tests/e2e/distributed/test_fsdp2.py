"""
FSDP2 on the CPU: what runs there, and the refusal of what does not.

Measured with accelerate 1.16 and torch 2.14: torch's FSDP2 (`fully_shard`) shards, steps, gathers and generates on
2 gloo processes, but Accelerate enables FSDP only over accelerator devices; on the CPU it sets `DistributedType.NO`
and each process would train alone. So:

- `accelerate launch --config_file accelerate_configs/fsdp2.yaml` of the example on 2 CPU processes is refused by
  RFTConfig, naming the CPU configs to use instead;
- rft_trl's reads of sharded weights (the rollout engine's weight sync, LoRA merged in; the reference fingerprint; the
  saved model) and HF generation are checked under torch's FSDP2 itself on 2 gloo processes
  (`tests/e2e/distributed/fsdp2_worker.py`), against an unsharded copy on each rank.

The trainer's own run under FSDP2 (Accelerate's sharding of the policy and the reference, save, exact resume) needs a
GPU: bench/gpu_check.py's FSDP2 section.
"""

import json
import os
import subprocess
import sys

import pytest
from test_distributed import EXAMPLE, EXAMPLE_ARGS, REPO, free_port, kill_process_tree, launch

WORKER = REPO / "tests" / "e2e" / "distributed" / "fsdp2_worker.py"
FSDP2_CONFIG = REPO / "accelerate_configs" / "fsdp2.yaml"
# The worker takes about 20 s on 2 busy cores; a launch refused at RFTConfig's construction about 10 s.
TIMEOUT_S = 300

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fsdp2_records(tmp_path_factory) -> list[dict]:
    """Both ranks' records of the worker, launched with torch's launcher (gloo, no Accelerate)."""
    output_dir = tmp_path_factory.mktemp("fsdp2")
    port = str(free_port())
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
    env = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONFAULTHANDLER": "1"}
    process = subprocess.Popen(
        [*command, str(WORKER), "--output_dir", str(output_dir)],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        kill_process_tree(process.pid)
        output, _ = process.communicate()
        pytest.fail(f"the FSDP2 worker did not finish within {TIMEOUT_S} s (a hang?); output tail:\n{output[-4000:]}")
    assert process.returncode == 0, output[-4000:]
    return [json.loads((output_dir / f"rank{rank}.json").read_text()) for rank in range(2)]


def test_fsdp2_launch_on_the_cpu_is_refused_naming_the_cpu_configs(tmp_path):
    # The shipped GPU config, cut to 2 processes for this machine.
    config = tmp_path / "fsdp2_two.yaml"
    config.write_text(FSDP2_CONFIG.read_text().replace("num_processes: 8", "num_processes: 2"))
    returncode, output = launch(config, tmp_path / "out", *EXAMPLE_ARGS, env={}, timeout=TIMEOUT_S, script=EXAMPLE)
    assert returncode != 0
    assert "FSDP needs an accelerator (GPU)" in output
    assert "accelerate_configs/deepspeed_zero3_cpu.yaml" in output
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_weight_sync_under_fsdp2_sends_the_full_trained_weights(fsdp2_records):
    for record in fsdp2_records:
        assert record["world_size"] == 2
        # The step moved the weights, and each rank trained on its own batch (the control: stepped on this rank's
        # batch alone, the weights differ by as much)...
        assert record["step_moved_weights"] > 1e-3
        assert record["control_own_batch_only"] > 1e-3
        # ...yet the sync sends, on every rank, the weights of the copy stepped on the mean of both ranks' losses,
        # under the names and shapes save_pretrained writes.
        assert record["sync_after_step"] < 1e-6
        # Control: the parameters as each rank holds them (its shards) are not the model's weights.
        assert record["control_local_shards"] == float("inf")
        # The reference fingerprint is the full weights' too.
        assert record["fingerprint_names_equal"]
        assert record["fingerprint_after_step"] < 1e-9


def test_weight_sync_under_fsdp2_merges_sharded_lora_adapters(fsdp2_records):
    for record in fsdp2_records:
        assert record["lora_delta"] > 1e-3  # the adapters change the merged weights
        assert record["lora_sync"] < 1e-6


def test_model_saved_from_fsdp2_shards_reloads_with_from_pretrained(fsdp2_records):
    for record in fsdp2_records:
        assert record["saved_reloaded"] < 1e-6
        # Written under the checkpoint's names, as the unsharded model writes them; control: without restoring the
        # classes FSDP2 gave the modules, transformers' conversions are not found and the runtime names are written.
        assert record["saved_names_as_unsharded"]
        assert not record["control_saved_names_without_original_classes"]


def test_hf_generation_under_fsdp2_matches_the_unsharded_model_with_ranks_stopping_apart(fsdp2_records):
    first, second = fsdp2_records
    # Rank 0 stopped after 2 tokens, rank 1 ran to 6: the ranks still gathered each other's shards in lockstep.
    assert len(first["generated"]) < len(second["generated"]) == 6
    for record in fsdp2_records:
        assert record["generated"] == record["expected_generation"]
