"""
Benchmark B15: an agent task learned on the CPU. The zoom task (`rft_trl.testing.agent_tasks`): the colour of a dot
too small to see in the full view, which the environment's `zoom` tool returns enlarged (a multimodal tool response).

    PYTHONPATH=. python bench/b15_agent_tasks.py                         # both arms, seeds 0 1 2, ~25 min an arm
    PYTHONPATH=. python bench/b15_agent_tasks.py --arms tool --seeds 0 --steps 400

Arms, from the same tiny Qwen2.5-VL (seeded) and the same rows:

- `tool`: `examples/grpo_agent.py` as a user runs it with no model (its tiny demo: `rft_trl.scripts.parse_and_run`):
  `environment_factory=ZoomEnvironment`, a format warm-up on the tool call (and a random colour after the tool's
  answer), then GRPO with the tool loop (16 prompts x 8 samples per rollout, 120-token completions, one tool call).
- `no_tool`: the control. The same questions asked for a one-word answer from the full view alone, the usual format
  warm-up (random colours), the same GRPO settings without tools: what a policy can read off the shrunk image.

Held-out accuracy: the trainer's evaluation (one greedy completion per eval row, the tool loop included, scored by
`accuracy_reward`) every `--eval-every` steps on 64 rows of another seed. Reported: steps to 0.9 per seed and their
median, and the held-out accuracy at every evaluation.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time

from b11_learning_vs_trl import steps_to
from common import markdown_table, quiet

from rft_trl import PPOTrainerVL
from rft_trl.rewards import accuracy_reward
from rft_trl.scripts import format_warmup, parse_and_run, parse_args
from rft_trl.testing import build_tiny_model, make_zoom_dataset


def eval_curve(log_history: list[dict]) -> dict[int, float]:
    return {entry["step"]: entry["eval_reward"] for entry in log_history if "eval_reward" in entry}


def common_flags(seed: int, args, output_dir: str) -> list[str]:
    return [
        "--output_dir", output_dir, "--seed", str(seed), "--tiny_model_seed", str(seed), "--max_steps",
        str(args.steps), "--eval_steps", str(args.eval_every), "--num_eval_samples", "64", "--save_strategy", "no",
        "--report_to", "none", "--reward_plot", "false", "--use_cpu", "true",
    ]  # fmt: skip


def tool_arm(seed: int, args) -> dict:
    with tempfile.TemporaryDirectory() as output_dir:
        start = time.perf_counter()
        trainer = parse_and_run("grpo_agent", common_flags(seed, args, output_dir))
        seconds = time.perf_counter() - start
    return {"arm": "tool", "seed": seed, "curve": eval_curve(trainer.state.log_history), "seconds": seconds}


def no_tool_arm(seed: int, args) -> dict:
    with tempfile.TemporaryDirectory() as output_dir:
        script_args, training_args, _ = parse_args("grpo_agent", common_flags(seed, args, output_dir))
        training_args.max_tool_calling_iterations = None
        model, processor = build_tiny_model("qwen2_5_vl", seed=seed)

        def one_word(dataset):
            # The same question for a one-word answer from the full view: no tool to call.
            def ask(prompt):
                text = prompt[0]["content"][1]["text"].replace("Call zoom, then answer", "Answer")
                return {
                    "prompt": [{**prompt[0], "content": [prompt[0]["content"][0], {"type": "text", "text": text}]}]
                }

            return dataset.map(ask, input_columns="prompt")

        train = one_word(make_zoom_dataset(script_args.num_train_samples, seed=seed))
        evaluation = one_word(make_zoom_dataset(script_args.num_eval_samples, seed=seed + 1))
        script_args.dataset_name = "zoom (one word)"  # the usual warm-up: random colours, no tool call
        format_warmup(model, processor, train, ["red", "green", "blue", "yellow"], script_args, seed)
        trainer = PPOTrainerVL(
            model, [accuracy_reward], training_args, train_dataset=train, eval_dataset=evaluation,
            processing_class=processor,
        )  # fmt: skip
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    return {"arm": "no_tool", "seed": seed, "curve": eval_curve(trainer.state.log_history), "seconds": seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", nargs="+", default=["tool", "no_tool"], choices=["tool", "no_tool"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--json", help="write every run's figures here")
    args = parser.parse_args()
    quiet()
    results = []
    for arm in args.arms:
        for seed in args.seeds:
            result = (tool_arm if arm == "tool" else no_tool_arm)(seed, args)
            results.append(result)
            curve = ", ".join(f"{step}: {value:.3f}" for step, value in sorted(result["curve"].items()))
            print(f"{arm} seed {seed}: {curve} ({result['seconds']:.0f} s)", file=sys.stderr, flush=True)
    rows = []
    for arm in args.arms:
        runs = [r for r in results if r["arm"] == arm]
        reached = [steps_to(r["curve"], 0.9) for r in runs]
        finals = [r["curve"][max(r["curve"])] for r in runs if r["curve"]]
        median = statistics.median(s for s in reached if s is not None) if all(s is not None for s in reached) else "-"
        rows.append(
            [
                arm,
                " / ".join(str(s or "-") for s in reached),
                str(median),
                " / ".join(f"{value:.3f}" for value in finals),
                f"{statistics.mean(r['seconds'] for r in runs):.0f}",
            ]
        )
    header = ["arm", "steps to 0.9 per seed", "median", f"held-out at step {args.steps}", "seconds per run"]
    print(markdown_table(header, rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
