"""
Benchmark B13: dynamic sampling (DAPO; `dynamic_sampling=True`) against plain GRPO, steps and seconds to 0.9 held-out
accuracy on a tiny task whose groups saturate as the policy learns.

    PYTHONPATH=. python bench/b13_dynamic_sampling.py                           # colour, seeds 0 1 2, ~1 h on 2 cores
    PYTHONPATH=. python bench/b13_dynamic_sampling.py --task text --seeds 0 --steps 100 --eval-every 10
    PYTHONPATH=. python bench/b13_dynamic_sampling.py --steps 2 --eval-every 1 --seeds 0      # smoke run, ~1 min

Per seed: the task's tiny model after the examples' format warm-up (B11's `warmed_up_model`: chance accuracy, the
answer format learnt), then `--steps` optimizer steps of each arm from the same weights with B11's shared settings
(8 samples per prompt, 8-token completions at temperature 1, learning rate 1e-3, `loss_type="dapo"`,
`scale_rewards="group"`, `accuracy_reward` weighted 1, `format_reward` logged with weight 0) and `--prompts` prompts
per rollout. The binary accuracy reward saturates: once the policy answers a prompt right (or wrong) every time, its
group gives GRPO no gradient. With `--dynamic` those groups are dropped and refilled from new prompts (at most
`--max-rounds` generation rounds per rollout), so each step trains on `--prompts` groups with signal, at the price of
more generation. Held-out accuracy (greedy, B11's callback, the task's eval split) every `--eval-every` steps decides
when an arm reaches 0.9 (training stops there); a dynamic arm whose rollout cannot be filled within the bound fills
it with tied groups, counted. Reported per arm: steps and seconds to 0.9 (median over seeds; "-" when never), the
generation rounds per rollout and the share of groups dropped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from b11_learning_vs_trl import SHARED, GreedyAccuracy, steps_to, timed_training, warmed_up_model
from common import markdown_table, quiet
from transformers import TrainerCallback

from rft_trl import PPOTrainerVL, RFTConfig
from rft_trl.rewards import accuracy_reward, format_reward

DYNAMIC = "rollout/dynamic_sampling/"


class ElapsedAndCounts(TrainerCallback):
    """Wall seconds at each step's end (from the start of training) and the dynamic-sampling counts logged."""

    def __init__(self):
        self.seconds: dict[int, float] = {}
        self.rounds, self.generated, self.dropped, self.tied_fillers = [], 0.0, 0.0, 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds[state.global_step] = time.perf_counter() - self.start

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and f"{DYNAMIC}rounds" in logs:
            self.rounds.append(logs[f"{DYNAMIC}rounds"])
            self.generated += logs[f"{DYNAMIC}generated_groups"]
            self.dropped += logs[f"{DYNAMIC}dropped_groups"]
            self.tied_fillers += logs[f"{DYNAMIC}tied_fillers"]


class StopAtLevel(TrainerCallback):
    """Ends training once the held-out accuracy (taken by `accuracy`, a callback before this one) reaches `level`."""

    def __init__(self, accuracy: GreedyAccuracy, level: float):
        self.accuracy, self.level = accuracy, level

    def on_step_end(self, args, state, control, **kwargs):
        if self.accuracy.curve.get(state.global_step, 0.0) >= self.level:
            control.should_training_stop = True


def run_arm(task: str, seed: int, dynamic: bool, args) -> dict:
    model, processor, train, evaluation = warmed_up_model(task, seed)
    accuracy = GreedyAccuracy(processor, list(evaluation), args.eval_every)
    clock = ElapsedAndCounts()
    config = RFTConfig(
        output_dir="/tmp/rft_bench/b13",
        max_steps=args.steps,
        seed=seed,
        rollout_batch_size=args.prompts,
        micro_rollout_batch_size=128,
        dynamic_sampling=dynamic,
        dynamic_sampling_max_rounds=args.max_rounds,
        # Every step is logged, so that each rollout's dynamic-sampling counts are seen.
        **{**SHARED, "per_device_train_batch_size": args.prompts * 8, "logging_steps": 1},
    )
    trainer = PPOTrainerVL(
        model,
        [accuracy_reward, format_reward],
        config,
        train_dataset=train,
        processing_class=processor,
        callbacks=[accuracy, StopAtLevel(accuracy, 0.9), clock],
    )
    seconds = timed_training(trainer)
    reached = steps_to(accuracy.curve, 0.9)
    return {
        "dynamic": dynamic,
        "seed": seed,
        "steps_to_0.9": reached,
        "seconds_to_0.9": clock.seconds.get(reached) if reached else None,
        "seconds": seconds,
        "tied_fillers": clock.tied_fillers,  # groups that filled rollouts still short at the round bound
        "curve": accuracy.curve,
        "mean_rounds": statistics.mean(clock.rounds) if clock.rounds else 1.0,
        "dropped_share": clock.dropped / clock.generated if clock.generated else 0.0,
    }


def median_or_dash(values: list) -> str:
    reached = [value for value in values if value is not None]
    if len(reached) < len(values) / 2:  # the median of the seeds is "never"
        return "-"
    return f"{statistics.median(sorted(reached) + [float('inf')] * (len(values) - len(reached))):g}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="colour")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--prompts", type=int, default=8, help="prompts per rollout (8 samples each)")
    parser.add_argument("--max-rounds", type=int, default=10, help="dynamic_sampling_max_rounds")
    parser.add_argument("--json", help="write every run's figures here")
    args = parser.parse_args()
    quiet()
    results = []
    for seed in args.seeds:
        for dynamic in (False, True):
            result = run_arm(args.task, seed, dynamic, args)
            results.append(result)
            print(
                f"seed {seed} dynamic={dynamic}: 0.9 at step {result['steps_to_0.9']} "
                f"({result['seconds_to_0.9']} s), {result['seconds']:.0f} s in all, "
                f"{result['mean_rounds']:.2f} rounds per rollout, {result['dropped_share']:.0%} of groups dropped"
                + f", {result['tied_fillers']:.0f} tied groups filled rollouts at the bound",
                file=sys.stderr,
                flush=True,
            )
    rows = []
    for dynamic in (False, True):
        arm = [r for r in results if r["dynamic"] == dynamic]
        rows.append(
            [
                "dynamic sampling" if dynamic else "plain GRPO",
                " / ".join(str(r["steps_to_0.9"] or "-") for r in arm),
                median_or_dash([r["steps_to_0.9"] for r in arm]),
                median_or_dash([r["seconds_to_0.9"] and round(r["seconds_to_0.9"]) for r in arm]),
                f"{statistics.mean(r['mean_rounds'] for r in arm):.2f}",
                f"{statistics.mean(r['dropped_share'] for r in arm):.0%}",
            ]
        )
    header = ["arm", "steps to 0.9 per seed", "median steps", "median seconds", "rounds/rollout", "groups dropped"]
    print(markdown_table(header, rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
