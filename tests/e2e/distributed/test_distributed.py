"""
Two-process PPOTrainerVL runs on the CPU (gloo), launched as real processes with `accelerate launch --config_file`.

Each test starts `tests/e2e/distributed/ppo_worker.py` on two ranks (the tiny Qwen2.5-VL, 2 prompts x 2 samples per
rank and rollout, 2 optimizer steps) and checks what every rank wrote. The commands are the shipped configs launched as
their comments say, with no environment variable or flag beyond them:

    accelerate launch --config_file accelerate_configs/cpu_multi_process.yaml \
        tests/e2e/distributed/ppo_worker.py --output_dir OUT [--fault reward_error|corrupt_image|nan_loss]
    accelerate launch --config_file accelerate_configs/deepspeed_zero2_cpu.yaml \
        tests/e2e/distributed/ppo_worker.py --output_dir OUT

Every launch is bounded by a timeout that kills the whole process group: a hang fails the test instead of the CI job.
"""

import contextlib
import importlib.util
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[3]
WORKER = REPO / "tests" / "e2e" / "distributed" / "ppo_worker.py"
DDP_CONFIG = REPO / "accelerate_configs" / "cpu_multi_process.yaml"
ZERO2_CONFIG = REPO / "accelerate_configs" / "deepspeed_zero2_cpu.yaml"
ZERO3_CONFIG = REPO / "accelerate_configs" / "deepspeed_zero3_cpu.yaml"
EXAMPLE = REPO / "examples" / "grpo_vl.py"
# The built-in example, cut to 2 optimizer steps of 2 prompts x 2 samples per rank, logging every step.
EXAMPLE_ARGS = (
    "--max_steps", "2", "--eval_strategy", "no", "--report_to", "none", "--rollout_batch_size", "2",
    "--num_generations", "2", "--per_device_train_batch_size", "4", "--micro_rollout_batch_size", "4",
    "--logging_steps", "1",
)  # fmt: skip
# The worker's sizes: prompts per rank and rollout, samples per prompt, optimizer steps (one rollout each).
PROMPTS_PER_RANK, SAMPLES_PER_PROMPT, STEPS = 2, 2, 2
# A launch takes 20-40 s on 2 busy cores; DeepSpeed's first launch on a machine also JIT-compiles a comm op (~90 s).
DDP_TIMEOUT_S = 300
ZERO2_TIMEOUT_S = 600

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def kill_process_tree(pid: int) -> None:
    """Kill a process and all its descendants: torch's launcher starts each worker in a session of its own."""
    root = psutil.Process(pid)
    processes = [root, *root.children(recursive=True)]
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(processes, timeout=30)


def launch(
    config: Path, output_dir: Path, *worker_args: str, env: dict[str, str], timeout: int, script: Path = WORKER
):
    """
    Run `script` (the worker by default) on two ranks; returns `(returncode, output)` with stdout and stderr together.

    On timeout the launcher and its workers are killed, so that a hang fails the test and leaves nothing behind.
    """
    base_env = {k: v for k, v in os.environ.items() if k not in ("ACCELERATE_USE_CPU", "DS_ACCELERATOR")}
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    # PYTHONFAULTHANDLER: a rank that aborts (SIGABRT, SIGSEGV) prints every thread's Python stack.
    full_env = {
        **base_env,
        "PYTHONPATH": pythonpath,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONFAULTHANDLER": "1",
        **env,
    }
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config),
        "--main_process_port",
        str(free_port()),
        str(script),
        "--output_dir",
        str(output_dir),
        *worker_args,
    ]
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_process_tree(process.pid)
        output, _ = process.communicate()
        pytest.fail(f"the 2-process run did not finish within {timeout} s (a hang?); output tail:\n{output[-4000:]}")
    return process.returncode, with_fault_dump_last(output)


def with_fault_dump_last(output: str) -> str:
    """
    The output with the fault handler's thread stacks (of a rank that aborted) repeated at its end, where the tail
    the tests show on failure (`output[-4000:]`) reaches them: the launcher's traceback follows and pushes them out.
    """
    start = output.find("Fatal Python error")
    if start < 0:
        return output
    end = output.find("Extension modules:", start)
    return f"{output}\n--- the aborted rank's threads ---\n{output[start : end if end > 0 else start + 3000][:3000]}"


def read_ranks(output_dir: Path) -> list[dict]:
    records = [json.loads((output_dir / f"rank{rank}.json").read_text()) for rank in range(2)]
    for rank, record in enumerate(records):
        record["params"] = load_file(output_dir / f"rank{rank}.safetensors")
    return records


def assert_ranks_agree(records: list[dict]) -> None:
    """Both ranks trained (parameters moved) and kept bit-identical parameters and KL coefficients."""
    first, second = records
    assert first["world_size"] == second["world_size"] == 2
    assert first["changed"], "no parameter changed: the run did not train"
    assert first["params"].keys() == second["params"].keys()
    differing = [name for name in first["params"] if not torch.equal(first["params"][name], second["params"][name])]
    assert not differing, f"parameters differ across ranks: {differing[:5]}"
    # Identical after every optimizer step, not only at the end.
    assert len(first["step_sha256"]) == STEPS
    assert first["step_sha256"] == second["step_sha256"]
    assert first["step_sha256"][-1] == first["sha256"] == second["sha256"]
    # The adaptive KL controller is fed the KL over all ranks, so its coefficient moves alike everywhere.
    assert first["kl_coef"] == second["kl_coef"]


def assert_prompts_sharded(records: list[dict], skipped_calls: dict[tuple[int, int], int] | None = None) -> None:
    """
    Each rollout, the ranks scored different prompts, and each prompt's whole group on one rank.

    `skipped_calls` maps `(rank, rollout)` to the prompts that rank's collator dropped in that rollout.
    """
    skipped_calls = skipped_calls or {}
    for rank, record in enumerate(records):
        assert len(record["seen_ids"]) == STEPS
        for rollout, ids in enumerate(record["seen_ids"]):
            prompts = PROMPTS_PER_RANK - skipped_calls.get((rank, rollout), 0)
            assert len(ids) == prompts * SAMPLES_PER_PROMPT
            # Samples are prompt-major: a group is SAMPLES_PER_PROMPT consecutive copies of one id.
            groups = [ids[i : i + SAMPLES_PER_PROMPT] for i in range(0, len(ids), SAMPLES_PER_PROMPT)]
            assert all(len(set(group)) == 1 for group in groups), ids
            assert len({group[0] for group in groups}) == prompts, ids
    for rollout in range(STEPS):
        on_rank0, on_rank1 = (set(record["seen_ids"][rollout]) for record in records)
        assert not on_rank0 & on_rank1, f"rollout {rollout}: a prompt was scored on both ranks"
    # The sampler draws without replacement within an epoch: no prompt comes back in the second rollout.
    every_id = [i for record in records for ids in record["seen_ids"] for i in ids[::SAMPLES_PER_PROMPT]]
    assert len(every_id) == len(set(every_id))


def test_ddp_two_processes_identical_parameters_and_sharded_prompts(tmp_path):
    returncode, output = launch(DDP_CONFIG, tmp_path, "--eval_rows", "5", env={}, timeout=DDP_TIMEOUT_S)
    assert returncode == 0, output[-4000:]
    records = read_ranks(tmp_path)
    assert {record["distributed_type"] for record in records} == {"DistributedType.MULTI_CPU"}
    assert_ranks_agree(records)
    assert_prompts_sharded(records)
    # Rank 0 logs one entry per optimizer step, with the rollout's samples counted over both ranks (2 x 4).
    steps = [entry for entry in records[0]["log_history"] if "loss" in entry]
    assert [entry["rollout/num_samples"] for entry in steps] == [8.0, 8.0]
    # 5 eval rows on 2 processes: Accelerate pads the last batch with repeats, each row still counts once, and
    # both processes report the same metrics.
    assert records[0]["eval"]["eval_num_samples"] == records[1]["eval"]["eval_num_samples"] == 5.0
    assert records[0]["eval"] == records[1]["eval"]


def test_zero2_two_processes_identical_parameters(tmp_path):
    assert importlib.util.find_spec("deepspeed") is not None, "install deepspeed (the dev extra) for this test"
    returncode, output = launch(ZERO2_CONFIG, tmp_path, env={}, timeout=ZERO2_TIMEOUT_S)
    assert returncode == 0, output[-4000:]
    records = read_ranks(tmp_path)
    # Accelerate falls back to plain DDP when told use_cpu: make sure DeepSpeed really ran, at stage 2.
    assert {record["distributed_type"] for record in records} == {"DistributedType.DEEPSPEED"}
    assert [record["zero_stage"] for record in records] == [2, 2]
    assert_ranks_agree(records)
    assert_prompts_sharded(records)


def test_exception_on_one_rank_ends_every_rank(tmp_path):
    returncode, output = launch(
        DDP_CONFIG,
        tmp_path,
        "--fault",
        "reward_error",
        "--fault_rank",
        "1",
        env={},
        timeout=DDP_TIMEOUT_S,
    )
    # Rank 1's reward function raises in the first rollout while rank 0 goes on into the rollout-metrics gather: the
    # launcher must end rank 0 too and report rank 1's error, not wait for it.
    assert returncode != 0
    assert "RewardFailureError" in output
    assert "injected reward failure on rank 1" in output
    assert not (tmp_path / "rank0.json").exists(), "rank 0 finished training without rank 1"


def test_bad_media_on_one_rank_is_skipped_there_and_counted_over_ranks(tmp_path):
    returncode, output = launch(
        DDP_CONFIG,
        tmp_path,
        "--fault",
        "corrupt_image",
        "--fault_rank",
        "1",
        env={},
        timeout=DDP_TIMEOUT_S,
    )
    assert returncode == 0, output[-4000:]
    assert "skipped (corrupt_image)" in output
    records = read_ranks(tmp_path)
    assert [record["rows_skipped"] for record in records] == [0, 1]
    # Rank 1 trained on 1 prompt in the first rollout (topped up with excluded copies), rank 0 on 2; both stay in step.
    assert_prompts_sharded(records, skipped_calls={(1, 0): 1})
    assert_ranks_agree(records)
    steps = [entry for entry in records[0]["log_history"] if "loss" in entry]
    # Rank 0 writes the logs but skipped nothing itself: the count of 1 is rank 1's, summed over ranks, and the
    # first rollout has 2 x 2 + 1 x 2 = 6 samples.
    assert steps[0]["data/skipped/corrupt_image"] == 1.0
    assert "data/skipped/corrupt_image" not in steps[1]
    assert [entry["rollout/num_samples"] for entry in steps] == [6.0, 8.0]


@pytest.mark.parametrize("config", [DDP_CONFIG, ZERO2_CONFIG], ids=["ddp", "zero2"])
def test_nan_loss_on_one_rank_skips_the_step_on_every_rank(tmp_path, config):
    # Under DeepSpeed the step is skipped by DeepSpeed's own check of the global gradient norm (its engine steps
    # inside backward), and the trainer's guard counts it from that norm; under DDP the guard skips it.
    returncode, output = launch(
        config,
        tmp_path,
        "--fault",
        "nan_loss",
        "--fault_rank",
        "1",
        "--fault_step",
        "2",
        env={},
        timeout=ZERO2_TIMEOUT_S if config == ZERO2_CONFIG else DDP_TIMEOUT_S,
    )
    assert returncode == 0, output[-4000:]
    records = read_ranks(tmp_path)
    assert_ranks_agree(records)
    for record in records:
        after_first, after_second = record["step_sha256"]
        # Step 1 trained; step 2 (NaN loss on rank 1 only) left the weights exactly as step 1 did, on both ranks.
        assert after_first != record["initial_sha256"]
        assert after_second == after_first == record["sha256"]
        # Each rank's own guard counted the skip: the decision was taken on the flags summed over ranks.
        steps = [entry for entry in record["log_history"] if "loss" in entry]
        assert [entry["train/nonfinite_steps_skipped"] for entry in steps] == [0.0, 1.0]
    # Rank 0's own loss was finite: it skipped because rank 1's NaN reached it through the gradient all-reduce and the
    # guard's summed flag, not because of anything local.
    rank0_steps = [entry for entry in records[0]["log_history"] if "loss" in entry]
    assert math.isfinite(rank0_steps[1]["train/policy_loss"])
    assert not math.isfinite(rank0_steps[1]["grad_norm"])


# ------------------------------------------------------------------------------------------------------ ZeRO-3


def example_steps(output_dir: Path) -> list[dict]:
    history = json.loads((output_dir / "log_history.json").read_text())
    return [entry for entry in history if "loss" in entry]


@pytest.fixture(scope="module")
def zero3_example(tmp_path_factory) -> Path:
    """The built-in example under ZeRO-3 on 2 processes, weights gathered once per rollout (the default)."""
    output_dir = tmp_path_factory.mktemp("zero3_example")
    returncode, output = launch(
        ZERO3_CONFIG, output_dir, *EXAMPLE_ARGS, env={}, timeout=ZERO2_TIMEOUT_S, script=EXAMPLE
    )
    assert returncode == 0, output[-4000:]
    return output_dir


def test_zero3_runs_the_builtin_example_with_a_kl_reference_and_saves_a_loadable_model(zero3_example):
    from transformers import AutoModelForMultimodalLM

    from rft_trl.testing import build_tiny_model

    tmp_path = zero3_example
    steps = example_steps(tmp_path)
    # Both ranks' samples in each rollout, and the KL to the (sharded) reference measured each step.
    assert [entry["rollout/num_samples"] for entry in steps] == [8.0, 8.0]
    assert all(math.isfinite(entry["kl"]) for entry in steps)
    # The weights were gathered on save: from_pretrained loads them, trained (the format warm-up and RL moved them).
    saved = AutoModelForMultimodalLM.from_pretrained(tmp_path)
    initial = build_tiny_model("qwen2_5_vl")[0].state_dict()
    weights = saved.state_dict()
    assert weights.keys() == initial.keys()
    assert all(torch.isfinite(value).all() for value in weights.values())
    assert any(not torch.equal(weights[name], initial[name]) for name in weights)


def test_zero3_generation_gathering_layer_by_layer_generates_and_trains_the_same(zero3_example, tmp_path):
    # ds3_gather_for_generation=False: DeepSpeed gathers each layer at each forward (every decoding step) instead of
    # the whole model once per rollout. A memory/speed trade (bench/b10_zero3_generation.py): the same completions,
    # hence the same metrics and the same trained weights, bit for bit.
    returncode, output = launch(
        ZERO3_CONFIG,
        tmp_path,
        *EXAMPLE_ARGS,
        "--ds3_gather_for_generation",
        "false",
        env={},
        timeout=ZERO2_TIMEOUT_S,
        script=EXAMPLE,
    )
    assert returncode == 0, output[-4000:]
    config = json.loads((tmp_path / "training_args.json").read_text())
    assert config["ds3_gather_for_generation"] is False
    compared = ("loss", "grad_norm", "reward", "kl", "completions/mean_length", "num_tokens", "rollout/num_samples")
    gathered, per_layer = example_steps(zero3_example), example_steps(tmp_path)
    assert [{key: entry[key] for key in compared} for entry in per_layer] == [
        {key: entry[key] for key in compared} for entry in gathered
    ]
    assert any(entry["grad_norm"] > 0 for entry in gathered)  # the runs trained on something
    weights, expected = load_file(tmp_path / "model.safetensors"), load_file(zero3_example / "model.safetensors")
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[name], expected[name]) for name in expected)


def test_zero3_trains_lora_and_a_saved_model_with_a_kl_reference(tmp_path):
    from rft_trl.testing import save_tiny_model

    lora = tmp_path / "lora"
    returncode, output = launch(
        ZERO3_CONFIG,
        lora,
        *EXAMPLE_ARGS,
        "--format_warmup_steps",
        "0",
        "--use_peft",
        "--lora_r",
        "4",
        env={},
        timeout=ZERO2_TIMEOUT_S,
        script=EXAMPLE,
    )
    assert returncode == 0, output[-4000:]
    assert (lora / "adapter_model.safetensors").is_file() and not (lora / "model.safetensors").exists()
    assert [entry["rollout/num_samples"] for entry in example_steps(lora)] == [8.0, 8.0]

    # A checkpoint on disk: loaded already sharded, and the KL reference loaded again from it (a sharded model
    # cannot be copied).
    checkpoint = save_tiny_model("qwen2_5_vl", str(tmp_path / "tiny"))
    saved = tmp_path / "saved"
    returncode, output = launch(
        ZERO3_CONFIG,
        saved,
        *EXAMPLE_ARGS,
        "--model_name_or_path",
        checkpoint,
        "--format_warmup_steps",
        "0",
        # A model from a path starts from TRL's defaults, not the tiny demo's: the demo's settings that matter here,
        # given as a user on a CPU machine gives them (no bf16 there; beta > 0 for the KL reference).
        *("--bf16", "false", "--activation_checkpointing", "false", "--beta", "0.1", "--max_completion_length", "8"),
        env={},
        timeout=ZERO2_TIMEOUT_S,
        script=EXAMPLE,
    )
    assert returncode == 0, output[-4000:]
    steps = example_steps(saved)
    assert [entry["rollout/num_samples"] for entry in steps] == [8.0, 8.0]
    assert all(math.isfinite(entry["kl"]) for entry in steps)


def test_zero3_without_gathering_weights_on_save_is_refused(tmp_path):
    config = tmp_path / "zero3_no_16bit.yaml"
    config.write_text(
        ZERO3_CONFIG.read_text().replace("zero3_save_16bit_model: true", "zero3_save_16bit_model: false")
    )
    returncode, output = launch(
        config, tmp_path / "out", *EXAMPLE_ARGS, "--format_warmup_steps", "0", env={}, timeout=ZERO2_TIMEOUT_S,
        script=EXAMPLE,
    )  # fmt: skip
    assert returncode != 0
    assert "set `zero3_save_16bit_model: true` in the accelerate config" in output


def test_two_machines_run_the_builtin_example_as_one_machine_with_two_processes(zero3_example, tmp_path):
    # The multi-node launch of docs/multinode.md, on this machine: two `accelerate launch` commands, one per "machine"
    # (--num_machines 2, --machine_rank 0 and 1, one process each, rendezvous over TCP at --main_process_ip). It is the
    # same job as the one-machine, two-process launch: the same metrics and the same saved weights, bit for bit.
    port = str(free_port())
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("ACCELERATE_USE_CPU", "DS_ACCELERATOR")},
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    machines = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "accelerate.commands.launch",
                "--config_file",
                str(ZERO3_CONFIG),
                "--num_machines",
                "2",
                "--machine_rank",
                str(rank),
                "--num_processes",
                "2",
                "--main_process_ip",
                "127.0.0.1",
                "--main_process_port",
                port,
                str(EXAMPLE),
                "--output_dir",
                str(tmp_path),
                *EXAMPLE_ARGS,
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    outputs = []
    for machine in machines:
        try:
            outputs.append(machine.communicate(timeout=ZERO2_TIMEOUT_S)[0])
        except subprocess.TimeoutExpired:
            for other in machines:
                kill_process_tree(other.pid)
            pytest.fail("the two-machine launch did not finish (a hang?)")
    assert [machine.returncode for machine in machines] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    ours, theirs = example_steps(tmp_path), example_steps(zero3_example)
    timing = ("step_time", "grad_norm")
    assert [entry["rollout/num_samples"] for entry in ours] == [8.0, 8.0]  # both machines' samples in each rollout
    assert [{k: v for k, v in e.items() if k not in timing} for e in ours] == [
        {k: v for k, v in e.items() if k not in timing} for e in theirs
    ]
    trained, reference = load_file(tmp_path / "model.safetensors"), load_file(zero3_example / "model.safetensors")
    assert trained.keys() == reference.keys()
    assert all(torch.equal(trained[name], reference[name]) for name in trained)
