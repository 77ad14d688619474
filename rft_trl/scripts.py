"""What the `examples/` scripts share: arguments, model and data set-up, the run, and its outputs.

Each example is a few lines that pick defaults (task, model kind, estimator) and call [`main`], so the four scripts
differ only in what they are about.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from datasets import Dataset, load_dataset
from transformers import AutoProcessor
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled, unset_hf_deepspeed_config
from trl import ModelConfig, TrlParser, get_peft_config

from .data.collator import PromptCollator
from .plotting import plot_reward_curve
from .rewards import accuracy_reward, format_reward
from .testing import build_tiny_model, make_task_dataset
from .testing.vocabulary import COLOURS, MOTIONS, PITCHES, TEXT_WORDS
from .trainers.ppo_trainer_vl import PPOTrainerVL, actor_class
from .trainers.rft_config import RFTConfig
from .trainers.sft import supervised_warmup

logger = logging.getLogger(__name__)

# Synthetic task -> (tiny model kind, possible answers).
TASKS = {
    "colour": ("qwen2_5_vl", COLOURS),
    "video": ("qwen2_5_vl", MOTIONS),
    "pitch": ("qwen2_audio", PITCHES),
    "text": ("qwen2", TEXT_WORDS),
}

# Settings under which the built-in tiny models learn the synthetic tasks on a CPU (see tests/test_learning.py):
# 16 prompts x 8 samples per rollout, generated in one batch, replayed as 4 optimizer steps of 32 samples. The
# examples start from these so that they run with no arguments; a real model needs its own (at least
# learning_rate, and batch sizes that fit its memory).
TINY_DEMO_DEFAULTS = {
    "num_train_samples": 512,
    "num_eval_samples": 64,
    "num_generations": 8,
    "rollout_batch_size": 16,
    "micro_rollout_batch_size": 128,
    "per_device_train_batch_size": 32,
    "gradient_accumulation_steps": 1,
    "max_completion_length": 8,
    "learning_rate": 1e-3,
    "lr_scheduler_type": "constant",
    # KL to the warmed-up policy keeps the answers well-formed while RL moves their content. Not TRL's
    # importance-weighted (bias-corrected) KL: at this learning rate its weaker pull back to the reference let the
    # colour run, once solved, collapse to empty answers (eval reward 0.94 at step 400, 0.0 at 500); the plain k3
    # gradient holds it at 1.0.
    "beta": 0.1,
    "use_bias_correction_kl": False,
    # The tiny vision/audio towers are random: training them too separates the inputs sooner.
    "freeze_encoder": False,
    "eval_strategy": "steps",
    "per_device_eval_batch_size": 64,
    "logging_steps": 10,
    # A checkpoint every 100 optimizer steps (a rollout boundary of the demos: 4 steps per rollout), the newest two
    # kept: a killed run resumes with --resume_from_checkpoint true.
    "save_steps": 100,
    "save_total_limit": 2,
    # fp32 and no activation checkpointing: the tiny models are CPU-sized (TRL's defaults are bf16 and checkpointing).
    "bf16": False,
    "gradient_checkpointing": False,
}


# What each example script (and the `rft-trl` command) runs with no arguments, over TINY_DEMO_DEFAULTS: the task
# and how long the built-in demo trains.
DEMO_RUNS = {
    "grpo_vl": {"dataset_name": "colour", "max_steps": 1000, "eval_steps": 250, "output_dir": "outputs/grpo_vl"},
    "grpo_text": {"dataset_name": "text", "max_steps": 300, "eval_steps": 100, "output_dir": "outputs/grpo_text"},
    "grpo_audio": {"dataset_name": "pitch", "max_steps": 120, "eval_steps": 40, "output_dir": "outputs/grpo_audio"},
    "ppo_vl": {
        "dataset_name": "colour",
        "advantage_estimator": "gae",
        "critic_learning_rate": 3e-3,
        # lambda = 1: advantages are Monte-Carlo returns minus values, not a young critic's bootstrapped guesses.
        "lambd": 1.0,
        "max_steps": 500,
        "eval_steps": 100,
        "output_dir": "outputs/ppo_vl",
    },
}


def parse_and_run(defaults: dict, argv: list[str] | None = None) -> PPOTrainerVL:
    """
    Parse `argv` (or the command line) with TRL's `TrlParser` into [`ScriptArguments`], [`RFTConfig`] and TRL's
    `ModelConfig`, over `TINY_DEMO_DEFAULTS` and `defaults` (a `--config` YAML overrides those, flags override both),
    and run [`main`].
    """
    parser = TrlParser((ScriptArguments, RFTConfig, ModelConfig))
    parser.set_defaults(**{**TINY_DEMO_DEFAULTS, **defaults})
    script_args, training_args, model_args = parser.parse_args_and_config(args=argv)
    return main(script_args, training_args, model_args)


@dataclass
class ScriptArguments:
    """
    Arguments of the example scripts, besides [`RFTConfig`] and TRL's `ModelConfig`.

    Args:
        dataset_name (`str`, *optional*, defaults to `"colour"`):
            A built-in synthetic task (`colour`, `video`, `pitch`, `text`) or a `datasets` name/path whose rows
            hold `prompt`, media columns and `answer`.
        dataset_train_split (`str`, *optional*, defaults to `"train"`), dataset_test_split (`str`, *optional*):
            Splits of a `datasets` dataset.
        num_train_samples (`int`, *optional*, defaults to `256`), num_eval_samples (`int`, *optional*,
        defaults to `32`):
            Rows generated for a synthetic task.
        tiny_model_seed (`int`, *optional*, defaults to `0`):
            Seed of the built-in tiny model used when `--model_name_or_path` is not given.
        tiny_model_kind (`str`, *optional*):
            The built-in tiny family to use instead of the task's own (any kind of `rft_trl.testing`, e.g.
            `qwen3_vl` for the colour task); its processor must take the task's media.
        format_warmup_steps (`int`, *optional*, defaults to `40`):
            Supervised steps on the answer format (random answers) before RL; 0 skips it. A random tiny model
            never emits an answer otherwise, and a real instruct model does not need it. (Not `warmup_steps`: that
            is `TrainingArguments`' learning-rate warm-up.)
        format_warmup_learning_rate (`float`, *optional*, defaults to `3e-3`):
            Learning rate of the format warm-up.
        reward_plot (`bool`, *optional*, defaults to `True`):
            Write `reward_curve.png` into the output directory.
    """

    dataset_name: str = field(default="colour", metadata={"help": "Synthetic task or datasets name/path."})
    dataset_train_split: str = field(default="train", metadata={"help": "Train split of a datasets dataset."})
    dataset_test_split: str | None = field(default=None, metadata={"help": "Eval split of a datasets dataset."})
    num_train_samples: int = field(default=256, metadata={"help": "Rows of a synthetic train set."})
    num_eval_samples: int = field(default=32, metadata={"help": "Rows of a synthetic eval set."})
    tiny_model_seed: int = field(default=0, metadata={"help": "Seed of the built-in tiny model."})
    tiny_model_kind: str | None = field(default=None, metadata={"help": "Built-in tiny family (default: the task's)."})
    format_warmup_steps: int = field(default=40, metadata={"help": "Format warm-up steps before RL (0: none)."})
    format_warmup_learning_rate: float = field(default=3e-3, metadata={"help": "Learning rate of the format warm-up."})
    reward_plot: bool = field(default=True, metadata={"help": "Write reward_curve.png."})


def load_data(script_args: ScriptArguments, seed: int) -> tuple[Dataset, Dataset | None]:
    """The train and eval sets: a synthetic task by name, or a `datasets` dataset."""
    if script_args.dataset_name in TASKS:
        train = make_task_dataset(script_args.dataset_name, script_args.num_train_samples, seed=seed)
        evaluation = make_task_dataset(script_args.dataset_name, script_args.num_eval_samples, seed=seed + 1)
        return train, evaluation
    train = load_dataset(script_args.dataset_name, split=script_args.dataset_train_split)
    test_split = script_args.dataset_test_split
    return train, None if test_split is None else load_dataset(script_args.dataset_name, split=test_split)


def format_warmup(
    model, processing_class, train_dataset: Dataset, answers: list[str], script_args: ScriptArguments, seed: int
) -> list[float]:
    """Teach the answer format with a random answer per row, so RL starts at chance reward, not at zero."""
    rng = random.Random(seed)
    rows = [dict(row, completion=rng.choice(answers)) for row in train_dataset]
    collator = PromptCollator(processing_class)
    actor = actor_class(collator.media_kinds)(model, freeze_encoder=False)
    return supervised_warmup(
        actor,
        collator,
        rows,
        steps=script_args.format_warmup_steps,
        learning_rate=script_args.format_warmup_learning_rate,
        seed=seed,
    )


@contextmanager
def whole_model(training_args: RFTConfig) -> Iterator[None]:
    """
    Build the built-in tiny model whole even under ZeRO-3, for its format warm-up, which runs outside DeepSpeed.

    With ZeRO-3 configured, transformers shards every model built while the config is registered (each rank then
    holds a piece of each weight, and a plain forward fails); the trainer's DeepSpeed engine shards the whole model
    when it starts.
    """
    if training_args.deepspeed_plugin is None or not is_deepspeed_zero3_enabled():
        yield
        return
    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        training_args.deepspeed_plugin.set_deepspeed_weakref()


def _resuming(training_args: RFTConfig) -> bool:
    value = training_args.resume_from_checkpoint
    return value not in (None, False) and str(value).lower() != "false"


def main(script_args: ScriptArguments, training_args: RFTConfig, model_args: ModelConfig) -> PPOTrainerVL:
    """Build the model and data, optionally warm up, train, save, and plot the reward curve."""
    train_dataset, eval_dataset = load_data(script_args, training_args.seed)
    if model_args.model_name_or_path is None:
        if script_args.dataset_name not in TASKS:
            raise ValueError("Pass --model_name_or_path: the built-in tiny models only fit the synthetic tasks.")
        kind, answers = TASKS[script_args.dataset_name]
        with whole_model(training_args):
            model, processing_class = build_tiny_model(
                script_args.tiny_model_kind or kind, seed=script_args.tiny_model_seed
            )
            # A resumed run loads its warmed-up and trained weights from the checkpoint.
            if script_args.format_warmup_steps > 0 and not _resuming(training_args):
                format_warmup(model, processing_class, train_dataset, answers, script_args, training_args.seed)
    else:
        model = model_args.model_name_or_path
        processing_class = AutoProcessor.from_pretrained(model, trust_remote_code=False)

    if training_args.reward_weights is None:
        # The format reward is logged but not trained on: the accuracy reward already requires a clean answer.
        training_args.reward_weights = [1.0, 0.0]
    trainer = PPOTrainerVL(
        model=model,
        reward_funcs=[accuracy_reward, format_reward],
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processing_class,
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    if trainer.is_world_process_zero():
        os.makedirs(training_args.output_dir, exist_ok=True)
        with open(os.path.join(training_args.output_dir, "log_history.json"), "w") as f:
            json.dump(trainer.state.log_history, f, indent=1)
        if script_args.reward_plot:
            plot_reward_curve(trainer.state.log_history, os.path.join(training_args.output_dir, "reward_curve.png"))
    # push_to_hub saves the model and writes the model card before uploading; with push_to_hub set, save_model would
    # upload too, so calling both would push twice.
    if training_args.push_to_hub:
        trainer.push_to_hub()
    else:
        trainer.save_model(training_args.output_dir)
    return trainer
