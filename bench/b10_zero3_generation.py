"""
Benchmark B10: generation under ZeRO-3, weights gathered once per rollout (`ds3_gather_for_generation=True`, the
default, TRL's way) against DeepSpeed gathering each layer at every forward, so at every decoding step (`False`).

    PYTHONPATH=. python bench/b10_zero3_generation.py              # ~7 min on 2 cores: 3 repetitions x 2 settings

Each run is the path users run: `accelerate launch --config_file accelerate_configs/deepspeed_zero3_cpu.yaml
examples/grpo_vl.py` on 2 CPU processes (gloo), the tiny Qwen2.5-VL, `--steps` optimizer steps of one rollout each
(2 prompts x 2 samples per process), no format warm-up, so that the random model writes every completion to
`--completion-length` tokens, and a dense reward (`rft_trl.testing.length_reward`), so that every step has a
gradient. The two settings alternate (True, False, True, False, ...) so that both see the same
machine load; per setting the median of the Trainer's `train_runtime` is taken. The step-1 metrics of the two
settings are compared too: gathering is a memory/speed choice and must not change what is generated or learned.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "accelerate_configs" / "deepspeed_zero3_cpu.yaml"
EXAMPLE = ROOT / "examples" / "grpo_vl.py"
COMPARED = ("loss", "grad_norm", "reward", "completions/mean_length", "num_tokens")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(gather: bool, steps: int, completion_length: int, output_dir: Path) -> dict:
    """One 2-process ZeRO-3 run of the example; returns its train_runtime, wall time and step-1 metrics."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    args = [
        "--output_dir", str(output_dir), "--max_steps", str(steps), "--format_warmup_steps", "0",
        "--rollout_batch_size", "2", "--num_generations", "2", "--per_device_train_batch_size", "4",
        "--micro_rollout_batch_size", "4", "--max_completion_length", str(completion_length),
        "--eval_strategy", "no", "--report_to", "none", "--logging_steps", "1", "--save_strategy", "no",
        "--reward_plot", "false", "--disable_tqdm", "true", "--ds3_gather_for_generation", str(gather).lower(),
        "--reward_funcs", "rft_trl.testing.length_reward",
    ]  # fmt: skip
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG),
        "--main_process_port", str(free_port()), str(EXAMPLE), *args,
    ]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"run failed (gather={gather}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    history = json.loads((output_dir / "log_history.json").read_text())
    first = next(entry for entry in history if entry.get("step") == 1 and "loss" in entry)
    runtime = next(entry["train_runtime"] for entry in history if "train_runtime" in entry)
    return {"train_runtime": runtime, "wall": wall, "step1": {key: first[key] for key in COMPARED}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--completion-length", type=int, default=64)
    options = parser.parse_args()

    runs: dict[bool, list[dict]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as scratch:
        for repetition in range(options.repetitions):
            for gather in (True, False):
                output_dir = Path(scratch) / f"{gather}_{repetition}"
                runs[gather].append(launch(gather, options.steps, options.completion_length, output_dir))
                runtime = runs[gather][-1]["train_runtime"]
                print(f"repetition {repetition} gather={gather}: {runtime:.1f} s", flush=True)

    gathered = statistics.median(run["train_runtime"] for run in runs[True])
    per_layer = statistics.median(run["train_runtime"] for run in runs[False])
    length = options.completion_length
    print(f"\n2 processes, ZeRO-3, {options.steps} steps (one rollout each), {length}-token completions")
    print("| ds3_gather_for_generation | train_runtime (median s) | runs (s) |")
    print("| --- | --- | --- |")
    for gather, median in ((True, gathered), (False, per_layer)):
        times = ", ".join(f"{run['train_runtime']:.1f}" for run in runs[gather])
        print(f"| {gather} | {median:.1f} | {times} |")
    print(f"\nper-layer gathering / gather once: {per_layer / gathered:.2f}x")
    same = all(run["step1"] == runs[True][0]["step1"] for run in runs[True] + runs[False])
    print(f"step-1 metrics ({', '.join(COMPARED)}) identical across all runs: {same}")
    print(json.dumps(runs[True][0]["step1"]))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
