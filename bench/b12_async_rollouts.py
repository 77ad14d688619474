"""
Benchmark B12: wall time per optimizer step with `async_rollouts=True` (the next rollout sampled by vLLM in a
background thread while the current one trains) against the synchronous run, same model, same rows, vLLM on the CPU.

    bash scripts/setup_vllm.sh                                                 # vLLM's CPU build, once
    .venv-vllm/bin/python bench/b12_async_rollouts.py --mode server            # ~15 min
    .venv-vllm/bin/python bench/b12_async_rollouts.py --mode colocate

The path users run: `PPOTrainerVL(..., use_vllm=True)` with `async_rollouts` False and True, each arm in a process of
its own, alternating for `--rounds` rounds. Each arm trains `--steps` optimizer steps (one rollout each: `--prompts`
prompts x `--samples` completions of up to `--completion-length` tokens at temperature 1, one optimizer step on all of
them); the time per step is the median of the step-end to step-end intervals after `--warmup` steps (the first rollout
of an async run is sampled in turn). The model is a "small" random-init Qwen3 (hidden 512, 4 layers, 8 heads of 64:
the CPU attention kernels take head dimension 64) with the tiny tokenizer, float32.

- `--mode server`: vLLM's OpenAI server (started here, from `.venv-vllm`) pinned to the last core, the trainer to the
  others with one torch thread per core: the layout of a server on its own device, where generation and the update
  do not compete for the same compute.
- `--mode colocate`: the engine inside the trainer's process; its thread and the update share all the cores.

Also reported per arm: the share of a step the trainer waited for the rollout generated ahead
(`rollout/async/wait_seconds`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # a colocated engine in the training process

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VLLM_PYTHON = os.path.join(ROOT, ".venv-vllm", "bin", "python")


def run_arm(arguments: argparse.Namespace) -> None:
    """One arm in this process: train and print the step-end times and the async metrics as JSON."""
    import torch
    from transformers import AutoTokenizer, TrainerCallback

    from rft_trl import PPOTrainerVL
    from rft_trl.testing import length_reward, make_task_dataset, tiny_config

    torch.set_num_threads(arguments.threads)
    work = tempfile.mkdtemp(prefix="b12_")
    samples = arguments.prompts * arguments.samples
    engine = (
        {"vllm_mode": "server", "vllm_server_base_url": arguments.url, "vllm_weight_sync_dir": os.path.join(work, "s")}
        if arguments.mode == "server"
        else {"vllm_max_model_length": 512, "vllm_enforce_eager": True}
    )
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
        async_rollouts=arguments.arm == "async",
        **engine,
    )
    rows = make_task_dataset("text", arguments.prompts * arguments.steps, seed=1)
    trainer = PPOTrainerVL(
        arguments.model,
        [length_reward],
        config,
        train_dataset=rows,
        processing_class=AutoTokenizer.from_pretrained(arguments.model),
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


def start_server(model: str, core: int, log_path: str) -> tuple[subprocess.Popen, str]:
    """vLLM's OpenAI server on `model`, pinned to `core`, as the tests start it (dev mode, processed log-probs)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        "taskset", "-c", str(core), VLLM_PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
        "--port", str(port), "--dtype", "float32", "--logprobs-mode", "processed_logprobs", "--enforce-eager",
        "--max-model-len", "512", "--no-enable-chunked-prefill",
    ]  # fmt: skip
    environment = {**os.environ, "VLLM_SERVER_DEV_MODE": "1", "OMP_NUM_THREADS": "1"}
    environment.pop("VLLM_ENABLE_V1_MULTIPROCESSING")
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return process, url
        except OSError:
            time.sleep(2)
    raise RuntimeError(f"the vLLM server did not start: see {log_path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arm", choices=["sync", "async"], help=argparse.SUPPRESS)  # one arm, in a subprocess
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["server", "colocate"], default="server")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--completion-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the trainer (default: its cores)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    arguments = parser.parse_args()
    if arguments.arm is not None:
        run_arm(arguments)
        return
    from b8_vllm_rollout import save_model

    cores = os.cpu_count() or 1
    work = tempfile.mkdtemp(prefix="b12_")
    model = save_model("small", os.path.join(work, "model"))
    server, url, pin = None, "", []
    if arguments.mode == "server":
        server, url = start_server(model, cores - 1, os.path.join(work, "server.log"))
        pin = ["taskset", "-c", ",".join(str(core) for core in range(max(cores - 1, 1)))]
    threads = arguments.threads or (max(cores - 1, 1) if arguments.mode == "server" else cores)
    forwarded = [
        "--mode", arguments.mode, "--model", model, "--url", url, "--steps", str(arguments.steps), "--prompts",
        str(arguments.prompts), "--samples", str(arguments.samples), "--completion-length",
        str(arguments.completion_length), "--threads", str(threads),
    ]  # fmt: skip
    per_step = {"sync": [], "async": []}
    waits = {"sync": [], "async": []}
    environment = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": str(threads)}
    try:
        for _ in range(arguments.rounds):
            for arm in ("sync", "async"):
                completed = subprocess.run(
                    [*pin, sys.executable, os.path.abspath(__file__), "--arm", arm, *forwarded],
                    capture_output=True,
                    text=True,
                    check=False,
                    env=environment,
                )
                line = next((x for x in completed.stdout.splitlines() if x.startswith("B12_RESULT ")), None)
                if line is None:
                    raise RuntimeError(
                        f"the {arm} arm failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-6000:]}"
                    )
                result = json.loads(line.removeprefix("B12_RESULT "))
                ends = result["step_ends"][arguments.warmup :]
                step = statistics.median(b - a for a, b in zip(ends, ends[1:]))
                per_step[arm].append(step)
                waits[arm].append(statistics.median(result["wait_seconds"][arguments.warmup + 1 :]) / step)
                print(json.dumps({"arm": arm, "seconds_per_step": step, "wait_share": waits[arm][-1]}), flush=True)
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
    summary = {
        arm: {"seconds_per_step": statistics.median(per_step[arm]), "runs": per_step[arm], "wait_share": waits[arm]}
        for arm in per_step
    }
    summary["async_over_sync"] = summary["async"]["seconds_per_step"] / summary["sync"]["seconds_per_step"]
    summary["trainer_threads"] = threads
    print(json.dumps(summary, indent=2), flush=True)
    if arguments.out:
        with open(arguments.out, "w") as handle:
            json.dump({"args": vars(arguments), "results": summary}, handle, indent=2)


if __name__ == "__main__":
    main()
