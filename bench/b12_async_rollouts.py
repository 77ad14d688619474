"""
Benchmark B12: wall time per optimizer step with `async_rollouts=True` (the next rollout sampled by vLLM in a background
thread while the current one trains) against the synchronous run, same model, same rows, vLLM on the CPU.

    bash scripts/setup_vllm.sh                                       # vLLM's CPU build, once
    .venv-vllm/bin/python bench/b12_async_rollouts.py                # both arms, 3 rounds, ~10 min
    .venv-vllm/bin/python bench/b12_async_rollouts.py --threads 1    # torch's intra-op threads per process

The path users run: `PPOTrainerVL(..., use_vllm=True, vllm_mode="colocate")` with `async_rollouts` False and True,
each arm in a process of its own (one in-process vLLM engine per process), alternating for `--rounds` rounds. Each
arm trains `--steps` optimizer steps (one rollout each: `--prompts` prompts x `--samples` completions of up to
`--completion-length` tokens at temperature 1, one optimizer step on all of them); the time per step is the median of
the step-end to step-end intervals after `--warmup` steps (the first rollout of an async run is sampled in turn). The
model is a "small" random-init Qwen3 (hidden 512, 4 layers, 8 heads of 64: the CPU attention kernels take head
dimension 64) with the tiny tokenizer, float32. Also reported per arm: the share of a step the trainer waited for the
rollout generated ahead (`rollout/async/wait_seconds`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in the training process (colocate)


def run_arm(arguments: argparse.Namespace) -> None:
    """One arm in this process: train and print the step-end times and the async metrics as JSON."""
    import torch
    from b8_vllm_rollout import save_model
    from transformers import AutoTokenizer, TrainerCallback

    from rft_trl import PPOTrainerVL
    from rft_trl.testing import length_reward, make_task_dataset, tiny_config

    torch.set_num_threads(arguments.threads)
    work = tempfile.mkdtemp(prefix="b12_")
    path = save_model("small", os.path.join(work, "model"))
    samples = arguments.prompts * arguments.samples
    config = tiny_config(
        os.path.join(work, "out"),
        rollout_batch_size=arguments.prompts,
        n_samples_per_prompt=arguments.samples,
        micro_rollout_batch_size=samples,
        per_device_train_batch_size=samples,
        gradient_accumulation_steps=1,
        generate_max_len=arguments.completion_length,
        max_steps=arguments.steps,
        learning_rate=1e-5,
        use_vllm=True,
        vllm_max_model_length=512,
        vllm_enforce_eager=True,
        async_rollouts=arguments.arm == "async",
    )
    rows = make_task_dataset("text", arguments.prompts * arguments.steps, seed=1)
    trainer = PPOTrainerVL(
        path, [length_reward], config, train_dataset=rows, processing_class=AutoTokenizer.from_pretrained(path)
    )

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.ends = []

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

    times = StepTimes()
    trainer.add_callback(times)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    result = {
        "arm": arguments.arm,
        "step_ends": times.ends,
        "wait_seconds": [entry.get("rollout/async/wait_seconds", 0.0) for entry in logged],
        "generated_ahead": [entry.get("rollout/async/generated_ahead", 0.0) for entry in logged],
        "completion_length": [entry["completions/mean_length"] for entry in logged],
    }
    print("B12_RESULT " + json.dumps(result), flush=True)
    trainer.rollout_engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arm", choices=["sync", "async"], help=argparse.SUPPRESS)  # one arm, in a subprocess
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--completion-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    arguments = parser.parse_args()
    if arguments.arm is not None:
        run_arm(arguments)
        return
    forwarded = [
        "--steps", str(arguments.steps), "--prompts", str(arguments.prompts), "--samples", str(arguments.samples),
        "--completion-length", str(arguments.completion_length), "--threads", str(arguments.threads),
    ]  # fmt: skip
    per_step = {"sync": [], "async": []}
    waits = {"sync": [], "async": []}
    for _ in range(arguments.rounds):
        for arm in ("sync", "async"):
            completed = subprocess.run(
                [sys.executable, __file__, "--arm", arm, *forwarded], capture_output=True, text=True, check=False
            )
            line = next((x for x in completed.stdout.splitlines() if x.startswith("B12_RESULT ")), None)
            if line is None:
                raise RuntimeError(f"the {arm} arm failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-6000:]}")
            result = json.loads(line.removeprefix("B12_RESULT "))
            ends = result["step_ends"][arguments.warmup :]
            step = statistics.median(b - a for a, b in zip(ends, ends[1:]))
            per_step[arm].append(step)
            waits[arm].append(statistics.median(result["wait_seconds"][arguments.warmup + 1 :]) / step)
            print(json.dumps({"arm": arm, "seconds_per_step": step, "wait_share": waits[arm][-1]}), flush=True)
    summary = {
        arm: {"seconds_per_step": statistics.median(per_step[arm]), "runs": per_step[arm], "wait_share": waits[arm]}
        for arm in per_step
    }
    summary["async_over_sync"] = summary["async"]["seconds_per_step"] / summary["sync"]["seconds_per_step"]
    print(json.dumps(summary, indent=2), flush=True)
    if arguments.out:
        with open(arguments.out, "w") as handle:
            json.dump({"args": vars(arguments), "results": summary}, handle, indent=2)


if __name__ == "__main__":
    main()
