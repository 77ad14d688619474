"""
Benchmark B11: how much each trainer learns per step. TRL's `GRPOTrainer` and `PPOTrainerVL` side by side, the same
warmed-up tiny model, data, prompts x samples, learning rate and estimator, over several seeds.

    PYTHONPATH=. python bench/b11_learning_vs_trl.py                     # colour, grounding, pitch, 3 seeds, ~35 min
    PYTHONPATH=. python bench/b11_learning_vs_trl.py --tasks grounding --seeds 0 --steps 200
    PYTHONPATH=. python bench/b11_learning_vs_trl.py --tasks colour --beta 0.1     # with a KL reference
    PYTHONPATH=. python bench/b11_learning_vs_trl.py --tasks pattern --beta 0.1 --steps 300 --eval-every 10 \
        --seeds 0 1 2 3 4 5 6                                              # steps to 0.9 on the pattern task
    PYTHONPATH=. python bench/b11_learning_vs_trl.py --tasks grounding --image-size 112 --beta 0.1 --steps 3000 \
        --eval-every 100 --seeds 3 --trainers TRL --verbose --json trl_3.json    # one side, progress as it goes

Per task and seed: the tiny model of the task (seeded) gets the examples' format warm-up (40 supervised steps on
random answers, `rft_trl.scripts.format_warmup`), so that both trainers start from the same weights at chance
reward. Each trainer then runs `--steps` optimizer steps with what a user of either gets by default plus the
settings the comparison needs equal: 16 prompts x 8 samples per rollout, replayed as 4 optimizer steps of 32 samples
(TRL: `steps_per_generation=4`), 8-token completions at temperature 1, learning rate 1e-3 (constant), `--beta` (0 by
default; above 0 the warmed-up model is saved and both trainers load it by path, since TRL builds its reference from a
path only), the vision tower trained (TRL's default), float32, TRL's
default estimator and loss on both sides (`scale_rewards="group"`, `loss_type="dapo"`), `accuracy_reward` weighted 1
and `format_reward` logged with weight 0.

Held-out accuracy is measured the same way for both, by one callback outside either trainer: every `--eval-every`
steps, greedy decoding (8 new tokens) of the `--eval-rows` rows of the task's eval split with `generate` on the model
each trainer trains, scored by `accuracy_reward`. Reported: steps to reach 0.9 held-out accuracy (the first
evaluation at or above it; "-" when never) per seed and their median, and the median accuracy at fixed steps. The
pitch task (audio) runs on ours alone (TRL's GRPOTrainer takes no audio). Tasks that need the vision tower beyond a
colour: grounding (the colour of the left of two squares) and pattern (the stripes' spatial frequency).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import sys
import tempfile
import time
import warnings

import torch
from transformers import PrinterCallback, TrainerCallback
from transformers.utils import logging as hf_logging

from rft_trl import PPOTrainerVL, RFTConfig
from rft_trl.data import PromptCollator
from rft_trl.rewards import accuracy_reward, format_reward
from rft_trl.scripts import TASK_KINDS, ScriptArguments, format_warmup
from rft_trl.testing import (
    TASK_ANSWERS,
    build_tiny_model,
    make_grounding_dataset,
    make_pattern_dataset,
    make_task_dataset,
)

# What both trainers share.
SHARED = dict(
    num_generations=8,
    per_device_train_batch_size=32,
    gradient_accumulation_steps=1,
    max_completion_length=8,
    temperature=1.0,
    learning_rate=1e-3,
    lr_scheduler_type="constant",
    beta=0.0,
    # With --beta: the plain k3 KL gradient on both sides, as the demo (TINY_DEMO_DEFAULTS).
    use_bias_correction_kl=False,
    scale_rewards="group",
    loss_type="dapo",
    reward_weights=[1.0, 0.0],
    bf16=False,
    gradient_checkpointing=False,
    logging_steps=25,
    use_cpu=True,
    save_strategy="no",
    report_to="none",
    disable_tqdm=True,
)


class GreedyAccuracy(TrainerCallback):
    """
    Every `every` steps (and before the first), greedy held-out accuracy of the model being trained; printed as it is
    taken, prefixed with `label`, when one is given.
    """

    def __init__(self, processor, rows: list[dict], every: int, label: str | None = None):
        self.collator, self.rows, self.every, self.label = PromptCollator(processor), rows, every, label
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.curve: dict[int, float] = {}

    @torch.no_grad()
    def accuracy(self, model) -> float:
        was_training = model.training
        model.eval()
        batch = self.collator(self.rows)
        sequences = model.generate(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            **batch.token_fields,
            **batch.multimodal_inputs,
            max_new_tokens=8,
            do_sample=False,
        )
        completions = self.tokenizer.batch_decode(sequences[:, batch.input_ids.shape[1] :], skip_special_tokens=True)
        model.train(was_training)
        rewards = accuracy_reward([None] * len(completions), completions, [row["answer"] for row in self.rows])
        return sum(rewards) / len(rewards)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.curve[0] = self.accuracy(model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0:
            self.curve[state.global_step] = self.accuracy(model)
            if self.label:
                print(f"{self.label} step {state.global_step}: {self.curve[state.global_step]:.3f}", flush=True)


# The tasks whose images can be larger than the tiny default (`--image-size`).
SIZED_TASKS = {"grounding": make_grounding_dataset, "pattern": make_pattern_dataset}


def task_rows(task: str, num_samples: int, seed: int, image_size: int | None):
    if task in SIZED_TASKS and image_size is not None:
        return SIZED_TASKS[task](num_samples, seed=seed, image_size=image_size)
    return make_task_dataset(task, num_samples, seed=seed)


def warmed_up_model(task: str, seed: int, image_size: int | None = None):
    """The task's tiny model after the examples' format warm-up, its processor, and the train/eval rows."""
    kind, answers = TASK_KINDS[task], TASK_ANSWERS[task]
    model, processor = build_tiny_model(kind, seed=seed)
    if task in SIZED_TASKS and image_size is not None:
        # The tiny processor shrinks images to at most 56 x 56 (4 image tokens): let it keep the larger ones.
        processor.image_processor.size.longest_edge = image_size * image_size
    train, evaluation = task_rows(task, 512, seed, image_size), task_rows(task, 64, seed + 1000, image_size)
    format_warmup(model, processor, train, answers, ScriptArguments(format_warmup_steps=40), seed)
    return model, processor, train, evaluation


def timed_training(trainer) -> float:
    """Train without the Trainer's console printer; returns the seconds it took."""
    trainer.remove_callback(PrinterCallback)
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start


def run_ours(model, processor, train, callback, steps: int, seed: int, beta: float) -> float:
    config = RFTConfig(
        output_dir="/tmp/rft_bench/b11_ours",
        max_steps=steps,
        seed=seed,
        rollout_batch_size=16,
        micro_rollout_batch_size=128,
        **{**SHARED, "beta": beta},
    )
    trainer = PPOTrainerVL(
        model,
        [accuracy_reward, format_reward],
        config,
        train_dataset=train,
        processing_class=processor,
        callbacks=[callback],
    )
    return timed_training(trainer)


def run_trl(model, processor, train, callback, steps: int, seed: int, beta: float) -> float:
    from trl import GRPOConfig, GRPOTrainer

    config = GRPOConfig(
        output_dir="/tmp/rft_bench/b11_trl",
        max_steps=steps,
        seed=seed,
        steps_per_generation=4,
        **{**SHARED, "beta": beta},
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[accuracy_reward, format_reward],
        args=config,
        train_dataset=train,
        processing_class=processor,
        callbacks=[callback],
    )
    return timed_training(trainer)


def steps_to(curve: dict[int, float], level: float) -> int | None:
    return next((step for step, accuracy in sorted(curve.items()) if accuracy >= level), None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["colour", "grounding", "pitch"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--eval-rows", type=int, default=64)
    parser.add_argument("--json", default=None, help="also write every curve to this file (after every run)")
    parser.add_argument(
        "--trainers",
        nargs="+",
        choices=["rft_trl", "TRL"],
        default=["rft_trl", "TRL"],
        help="which sides to run (one each in two processes runs them in parallel)",
    )
    parser.add_argument("--verbose", action="store_true", help="print each evaluation as it is taken")
    parser.add_argument(
        "--beta",
        type=float,
        default=0.0,
        help="KL coefficient; above 0 both trainers get the warmed-up model as a saved path, to build a reference",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="grounding and pattern images' side in pixels (default 56: 4 image tokens; 112: 16)",
    )
    options = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    hf_logging.set_verbosity_error()

    results: dict[str, dict[str, list[dict]]] = {}
    for task in options.tasks:
        sides = {"rft_trl": run_ours} if task == "pitch" else {"rft_trl": run_ours, "TRL": run_trl}
        sides = {name: run for name, run in sides.items() if name in options.trainers}
        results[task] = {name: [] for name in sides}
        for seed in options.seeds:
            model, processor, train, evaluation = warmed_up_model(task, seed, options.image_size)
            rows = list(evaluation)[: options.eval_rows]
            saved = None
            if options.beta > 0:
                # TRL builds its KL reference from a path only: both trainers load the warmed-up model from disk.
                saved = tempfile.mkdtemp(prefix="b11_warmed_")
                model.save_pretrained(saved)
                processor.save_pretrained(saved)
            for name, run in sides.items():
                label = f"{task} seed {seed} {name}" if options.verbose else None
                callback = GreedyAccuracy(processor, rows, options.eval_every, label)
                policy = saved if saved is not None else copy.deepcopy(model)
                seconds = run(policy, processor, train, callback, options.steps, seed, options.beta)
                results[task][name].append({"seed": seed, "seconds": seconds, "curve": callback.curve})
                reached = steps_to(callback.curve, 0.9)
                print(
                    f"{task} seed {seed} {name}: steps to 0.9 = {reached}, final {callback.curve[options.steps]:.3f}, "
                    f"{seconds:.0f} s",
                    flush=True,
                )
                if options.json:
                    with open(options.json, "w") as f:
                        json.dump(results, f, indent=1)

    every = options.eval_every
    # The evaluations nearest to a quarter, a half, three quarters and the end of the run (400 steps: 100 ... 400).
    quarters = (round(options.steps * k / 4 / every) * every for k in (1, 2, 3, 4))
    marks = sorted({min(options.steps, max(every, step)) for step in quarters})
    print(f"\n{len(options.seeds)} seeds; held-out greedy accuracy on {options.eval_rows} rows every {every} steps")
    header = ["task", "trainer", "steps to 0.9 (per seed)", "median", *(f"acc @ {m}" for m in marks), "s / 100 steps"]
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for task, sides in results.items():
        for name, runs in sides.items():
            reached = [steps_to(run["curve"], 0.9) for run in runs]
            finite = [r if r is not None else float("inf") for r in reached]
            median = statistics.median(finite)
            accuracies = [statistics.median(run["curve"].get(m, float("nan")) for run in runs) for m in marks]
            per_100 = statistics.median(run["seconds"] for run in runs) / options.steps * 100
            cells = [
                task,
                name,
                ", ".join("-" if r is None else str(r) for r in reached),
                "-" if median == float("inf") else f"{median:g}",
                *(f"{a:.3f}" for a in accuracies),
                f"{per_100:.0f}",
            ]
            print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
