"""What the `examples/` scripts share: arguments, model and data set-up, the run, and its outputs.

Each example is a few lines that pick defaults (task, model kind, estimator) and call [`main`], so the four scripts
differ only in what they are about.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import random
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from datasets import Dataset, load_dataset
from transformers import AutoConfig, AutoProcessor
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled, unset_hf_deepspeed_config
from transformers.trainer_utils import IntervalStrategy, SaveStrategy
from trl import ModelConfig, TrlParser, get_peft_config, get_quantization_config

from .data.collator import PromptCollator
from .models.actor import Actor
from .plotting import plot_reward_curve
from .rewards import accuracy_reward, format_reward, think_format_reward
from .rollout import Environments
from .trainers.ppo_trainer_vl import PPOTrainerVL
from .trainers.progress import progress_logger
from .trainers.rft_config import RFTConfig
from .trainers.sft import supervised_warmup

logger = logging.getLogger(__name__)

# Synthetic task -> the tiny model kind that runs it. The tasks' rows and answers, and the tiny models, come from
# `rft_trl.testing`, imported only by a run that asks for them (the built-in tiny demo, `--tiny`): a run on a real
# model never loads the tiny stand-ins.
TASK_KINDS = {
    "colour": "qwen2_5_vl",
    "grounding": "qwen2_5_vl",
    "pattern": "qwen2_5_vl",
    "video": "qwen2_5_vl",
    "pitch": "qwen2_audio",
    "text": "qwen2",
    "zoom": "qwen2_5_vl",
}

# Environments by short name (`--environment_factory crop`); any other value is a dotted import path.
ENVIRONMENTS = {"crop": "rft_trl.rollout.crop.CropEnvironment"}

# Settings under which the built-in tiny models learn the synthetic tasks on a CPU (see tests/e2e/test_learning.py):
# 16 prompts x 8 samples per rollout, generated in one batch, replayed as 4 optimizer steps of 32 samples. The
# examples start from these when they run the built-in tiny model (no `--model_name_or_path`), so that they run with
# no arguments; a real model never gets them: it starts from RFTConfig's defaults (TRL's), see `parse_args`.
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
    "activation_checkpointing": False,
}


# What each script (and the `rft-trl` command) is, whatever the model: its output directory, and PPO's critic.
SCRIPT_DEFAULTS = {
    "grpo_vl": {"output_dir": "outputs/grpo_vl"},
    "grpo_text": {"output_dir": "outputs/grpo_text"},
    "grpo_audio": {"output_dir": "outputs/grpo_audio"},
    "ppo_vl": {"output_dir": "outputs/ppo_vl", "advantage_estimator": "gae"},
    "grpo_agent": {"output_dir": "outputs/grpo_agent"},
}

# What each script runs on the built-in tiny model (no `--model_name_or_path`), over TINY_DEMO_DEFAULTS: the task,
# how long the demo trains, and the demo's own tuning. None of it reaches a run of a real model.
DEMO_RUNS = {
    "grpo_vl": {"dataset_name": "colour", "max_steps": 1000, "eval_steps": 250},
    # The zoom task: the policy must call the environment's `zoom` tool and read the colour off the image it returns
    # (rft_trl.testing.agent_tasks). Its format warm-up teaches the call; completions hold the call (about 45 tokens
    # of the tiny byte-level tokenizer), the tool turn and the answer.
    "grpo_agent": {
        "dataset_name": "zoom",
        "num_train_samples": 256,  # 448x448 images: the rows are larger than the other tasks'
        "environment_factory": "rft_trl.testing.agent_tasks.ZoomEnvironment",
        "reward_funcs": ["accuracy_reward"],
        "format_warmup_steps": 150,
        "max_completion_length": 120,
        "max_tool_calling_iterations": 1,
        "max_steps": 400,
        "eval_steps": 100,
    },
    "grpo_text": {"dataset_name": "text", "max_steps": 300, "eval_steps": 100},
    "grpo_audio": {"dataset_name": "pitch", "max_steps": 120, "eval_steps": 40},
    "ppo_vl": {
        "dataset_name": "colour",
        "critic_learning_rate": 3e-3,
        # lambda = 1: advantages are Monte-Carlo returns minus values, not a young critic's bootstrapped guesses.
        "lambd": 1.0,
        "max_steps": 500,
        "eval_steps": 100,
    },
}


def parse_args(script: str, argv: list[str] | None = None) -> tuple[ScriptArguments, RFTConfig, ModelConfig]:
    """
    Parse `argv` (or the command line) with TRL's `TrlParser` into [`ScriptArguments`], [`RFTConfig`] and TRL's
    `ModelConfig`, over the defaults of `script` (a key of `SCRIPT_DEFAULTS`); a `--config` YAML overrides the
    defaults, flags override both.

    A run of the built-in tiny model (no `model_name_or_path`, in the YAML or the flags) starts from
    `TINY_DEMO_DEFAULTS` and the script's `DEMO_RUNS` entry; a run of a real model (a recipe's `--tiny` smoke test
    included) from `RFTConfig`'s defaults, which are TRL's `GRPOConfig`'s. Which of the two applied is printed when
    the run starts.
    """
    if script not in SCRIPT_DEFAULTS:
        raise ValueError(f"Unknown script {script!r}: use one of {', '.join(SCRIPT_DEFAULTS)}.")

    def parse(defaults: dict) -> tuple[ScriptArguments, RFTConfig, ModelConfig]:
        parser = TrlParser((ScriptArguments, RFTConfig, ModelConfig))
        parser.set_defaults(**defaults)
        return parser.parse_args_and_config(args=argv)

    # First the model alone (the YAML or the flags may name it): the training arguments' defaults depend on it.
    arguments = list(sys.argv[1:] if argv is None else argv)
    asks_for_help = "-h" in arguments or "--help" in arguments
    model_args, _ = TrlParser((ModelConfig,)).parse_args_and_config(args=arguments, return_remaining_strings=True)
    built_in = model_args.model_name_or_path is None and not asks_for_help
    defaults = {**TINY_DEMO_DEFAULTS, **DEMO_RUNS[script]} if built_in else {}
    parsed = parse({**defaults, **SCRIPT_DEFAULTS[script]})
    if parsed[1].should_log:
        progress_logger().info(defaults_in_use(script, parsed, built_in, argv))
    return parsed


# The demo defaults named in the line that starts a run of the built-in tiny model.
_NAMED_DEMO_DEFAULTS = ("learning_rate", "beta", "max_completion_length", "freeze_encoder", "num_generations")


def defaults_in_use(
    script: str, parsed: tuple[ScriptArguments, RFTConfig, ModelConfig], built_in: bool, argv: list[str] | None
) -> str:
    """The line that starts a run: the model, which defaults it starts from, and the recipe (`--config`) over them."""
    script_args, _, model_args = parsed
    arguments = list(sys.argv[1:] if argv is None else argv)
    # TrlParser reads `--config PATH` (two words) only.
    recipe = arguments[arguments.index("--config") + 1] if "--config" in arguments[:-1] else None
    over = f", then the recipe {recipe}" if recipe else ""
    if built_in:
        demo = {**TINY_DEMO_DEFAULTS, **DEMO_RUNS[script]}
        named = ", ".join(f"{name} {demo[name]}" for name in _NAMED_DEMO_DEFAULTS if name in demo)
        kind = script_args.tiny_model_kind or TASK_KINDS.get(script_args.dataset_name, "?")
        task = script_args.dataset_name
        return (
            f"rft_trl {script}: the built-in tiny {kind} model on the {task!r} task, from the tiny demo's defaults "
            f"(rft_trl.scripts.TINY_DEMO_DEFAULTS: {named}, ...){over}, then the command line."
        )
    smoke = " (--tiny: replaced by its tiny stand-in)" if script_args.tiny else ""
    return (
        f"rft_trl {script}: {model_args.model_name_or_path}{smoke}, from RFTConfig's defaults (TRL GRPOConfig's)"
        f"{over}, then the command line."
    )


def parse_and_run(script: str, argv: list[str] | None = None) -> PPOTrainerVL:
    """[`parse_args`] for `script`, then [`main`]."""
    return main(*parse_args(script, argv))


def end_launched_process() -> None:
    """
    In a distributed launch (`WORLD_SIZE` above 1), end the process without the interpreter's own teardown, once
    [`main`] has returned (everything written, every process past the final barrier, the process group closed). With
    the gloo backend under DeepSpeed ZeRO-3 a rank sometimes aborted in that teardown ("terminate called without an
    active exception", with no Python frame left on its stack) after training and saving had succeeded, and the
    launcher reported the whole run failed. Logs and the standard streams are flushed first. A single process returns
    and exits as usual.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# Reward functions the scripts know by name (`--reward_funcs`); any other name is a dotted import path.
REWARD_FUNCS: dict[str, Callable] = {
    "accuracy_reward": accuracy_reward,
    "format_reward": format_reward,
    "think_format_reward": think_format_reward,
}
# Used when no `--reward_funcs` is given: accuracy trained on, format logged (weights 1 and 0).
DEFAULT_REWARD_FUNCS = ("accuracy_reward", "format_reward")

# `--tiny`: rollouts and completion tokens of a recipe's smoke test, and the synthetic task per tiny kind whose
# modality is not images.
TINY_SMOKE_ROLLOUTS = 2
TINY_SMOKE_COMPLETION_LENGTH = 8
TINY_TASK_OF_KIND = {"qwen2_audio": "pitch", "qwen2": "text"}


@dataclass
class ScriptArguments:
    """
    Arguments of the example scripts, besides [`RFTConfig`] and TRL's `ModelConfig`.

    Args:
        dataset_name (`str`, *optional*, defaults to `"colour"`):
            A built-in synthetic task (`colour`, `grounding`, `pattern`, `video`, `pitch`, `text`) or a `datasets`
            name/path whose rows hold `prompt`, media columns and `answer`.
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
        prompt_column (`str`, *optional*, defaults to `"prompt"`), answer_column (`str`, *optional*, defaults to
        `"answer"`):
            Columns of a `datasets` dataset renamed to `prompt` and `answer` (the names the collator and
            `accuracy_reward` read), e.g. `problem` and `solution`.
        prompt_template (`str`, *optional*):
            A format string with a `{prompt}` field, applied to plain-string prompts of a `datasets` dataset, e.g.
            `"{prompt} Give the final answer in <answer></answer> tags."`.
        reward_funcs (`list[str]`, *optional*, defaults to `["accuracy_reward", "format_reward"]`):
            Reward functions by name (`accuracy_reward`, `format_reward`, `think_format_reward` of
            `rft_trl.rewards`) or dotted import path (`my_lib.rewards.custom_reward`, as TRL's `trl grpo`). With the
            default pair and no `reward_weights`, the format reward is logged with weight 0.
        reward_model_name_or_path (`str`, *optional*):
            A sequence-classification reward model (Hub id or path) scored before the `reward_funcs`.
        environment_factory (`str`, *optional*):
            TRL's `environment_factory`, an environment class: `crop` (`rft_trl.rollout.crop.CropEnvironment`, a
            crop tool over each row's image) or a dotted import path (`my_lib.envs.MyEnvironment`). Its public
            methods are each sample's tools (see docs/agents.md).
        tools (`list[str]`, *optional*):
            TRL's `tools`, functions by dotted import path (`my_lib.tools.calculator`).
        tiny (`bool`, *optional*, defaults to `False`):
            Smoke-test a recipe on the CPU: its model is replaced by the built-in tiny model of its family
            (`tiny_model_kind`, which the recipe names), its dataset by the synthetic task of that family's modality
            (`tiny_dataset_name`), and the run is cut to `TINY_SMOKE_ROLLOUTS` rollouts with short completions. A
            recipe that saves checkpoints saves one at the end of each rollout (so the smoke run resumes as the real
            one does). Every other setting (batch layout, LoRA, estimator, loss, checkpoint rotation) runs as
            written.
        tiny_dataset_name (`str`, *optional*):
            The synthetic task of `--tiny` (`colour`, `video`, `pitch`, `text`); by default the one of the tiny
            family's modality (`pitch` for `qwen2_audio`, `text` for `qwen2`, else `colour`).
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
    prompt_column: str = field(default="prompt", metadata={"help": "Dataset column holding the prompt."})
    answer_column: str = field(default="answer", metadata={"help": "Dataset column holding the reference answer."})
    prompt_template: str | None = field(
        default=None, metadata={"help": "Format string with a {prompt} field for plain-string prompts."}
    )
    reward_funcs: list[str] | None = field(
        default=None,
        metadata={"help": f"Reward functions: {', '.join(REWARD_FUNCS)} or dotted import paths."},
    )
    reward_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Sequence-classification reward model (id or path)."}
    )
    environment_factory: str | None = field(
        default=None,
        metadata={
            "help": f"Environment class (TRL's environment_factory): {', '.join(ENVIRONMENTS)} or a dotted path."
        },
    )
    tools: list[str] | None = field(default=None, metadata={"help": "Tools (TRL's tools=), by dotted import path."})
    tiny: bool = field(default=False, metadata={"help": "Smoke-test the recipe on its tiny family stand-in."})
    tiny_dataset_name: str | None = field(
        default=None, metadata={"help": "Synthetic task of --tiny (default: the tiny family's modality)."}
    )


def load_data(script_args: ScriptArguments, seed: int) -> tuple[Dataset, Dataset | None]:
    """The train and eval sets: a synthetic task by name, or a `datasets` dataset."""
    if script_args.dataset_name in TASK_KINDS:
        formatting = {
            "prompt_column": script_args.prompt_column != "prompt",
            "answer_column": script_args.answer_column != "answer",
            "prompt_template": script_args.prompt_template is not None,
        }
        if any(formatting.values()):
            raise ValueError(
                f"{', '.join(name for name, given in formatting.items() if given)} apply to a `datasets` dataset; "
                f"the synthetic task {script_args.dataset_name!r} has its own prompts and answers."
            )
        from .testing import make_task_dataset

        train = make_task_dataset(script_args.dataset_name, script_args.num_train_samples, seed=seed)
        evaluation = make_task_dataset(script_args.dataset_name, script_args.num_eval_samples, seed=seed + 1)
        return train, evaluation
    train = load_dataset(script_args.dataset_name, split=script_args.dataset_train_split)
    test_split = script_args.dataset_test_split
    evaluation = None if test_split is None else load_dataset(script_args.dataset_name, split=test_split)
    return format_dataset(train, script_args), None if evaluation is None else format_dataset(evaluation, script_args)


def format_dataset(dataset: Dataset, script_args: ScriptArguments) -> Dataset:
    """Rename the prompt and answer columns to `prompt` and `answer`, and apply `prompt_template` to the prompts."""
    for column, name in ((script_args.prompt_column, "prompt"), (script_args.answer_column, "answer")):
        if column == name:
            continue
        if column not in dataset.column_names:
            raise ValueError(
                f"{name}_column={column!r} is not a column of {script_args.dataset_name!r} (columns: "
                f"{', '.join(dataset.column_names)})."
            )
        if name in dataset.column_names:
            raise ValueError(
                f"{script_args.dataset_name!r} has both {column!r} and {name!r}; {name}_column={column!r} would "
                f"rename one onto the other. Drop or rename {name!r} first."
            )
        dataset = dataset.rename_column(column, name)
    if "prompt" not in dataset.column_names:
        raise ValueError(
            f"{script_args.dataset_name!r} has no 'prompt' column (columns: {', '.join(dataset.column_names)}); "
            "name the one holding the question with --prompt_column."
        )
    template = script_args.prompt_template
    if template is None:
        return dataset
    if "{prompt}" not in template:
        raise ValueError(f"prompt_template must contain a '{{prompt}}' field, got {template!r}.")

    def fill(prompt: Any, index: int) -> dict:
        if not isinstance(prompt, str):
            raise ValueError(
                f"row {index}: prompt_template applies to plain-string prompts, but the prompt is "
                f"{type(prompt).__name__} (chat messages carry their own wording)."
            )
        return {"prompt": template.format(prompt=prompt)}

    return dataset.map(fill, input_columns="prompt", with_indices=True)


def format_warmup(
    model,
    processing_class,
    train_dataset: Dataset,
    answers: list[str],
    script_args: ScriptArguments,
    seed: int,
    environment_factory: Callable | None = None,
) -> list[float]:
    """
    Teach the answer format with a random answer per row, so RL starts at chance reward, not at zero. An agent task
    (`TASK_WARMUP_ROWS`) gives its own rows (the tool call, and a random answer after the tool's), rendered with the
    environment's tools as its rollouts are.
    """
    from .testing import TASK_WARMUP_ROWS

    chat_template_kwargs = {}
    if script_args.dataset_name in TASK_WARMUP_ROWS:
        rows = TASK_WARMUP_ROWS[script_args.dataset_name](train_dataset, seed)
        if environment_factory is not None:
            chat_template_kwargs["tools"] = Environments(environment_factory, []).all_tools
    else:
        rng = random.Random(seed)
        rows = [dict(row, completion=rng.choice(answers)) for row in train_dataset]
    collator = PromptCollator(processing_class, chat_template_kwargs=chat_template_kwargs)
    actor = Actor(model, freeze_encoder=False)
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


def import_dotted(name: str, what: str) -> Any:
    """The object a dotted import path names (`my_lib.rewards.custom_reward`), or a `ValueError` naming `what`."""
    module_name, _, attribute = name.rpartition(".")
    if not module_name:
        raise ValueError(f"{what} {name!r} is not a dotted import path (`my_lib.module.name`).")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"Cannot import {what} {name!r}: {error}") from error


def load_agent(script_args: ScriptArguments) -> tuple[Callable | None, list[Callable]]:
    """The environment class (TRL's `environment_factory`) and the tools (`tools=`) the script arguments name."""
    name = script_args.environment_factory
    factory = None if name is None else import_dotted(ENVIRONMENTS.get(name, name), "environment_factory")
    return factory, [import_dotted(tool, "tool") for tool in script_args.tools or []]


def load_reward_funcs(script_args: ScriptArguments) -> list[Callable | str]:
    """The reward model (if any) then the `reward_funcs`, by name in `REWARD_FUNCS` or by dotted import path."""
    funcs: list[Callable | str] = []
    if script_args.reward_model_name_or_path:
        funcs.append(script_args.reward_model_name_or_path)
    for name in script_args.reward_funcs or DEFAULT_REWARD_FUNCS:
        if name in REWARD_FUNCS:
            funcs.append(REWARD_FUNCS[name])
            continue
        if "." not in name:
            raise ValueError(
                f"Unknown reward function {name!r}: use one of {', '.join(REWARD_FUNCS)} or a dotted import path "
                "(`my_lib.rewards.custom_reward`)."
            )
        funcs.append(import_dotted(name, "reward function"))
    return funcs


def use_tiny_stand_in(script_args: ScriptArguments, training_args: RFTConfig, model_args: ModelConfig) -> None:
    """
    `--tiny`: swap the recipe's model for the tiny model of its family, its dataset for a synthetic task, and cut
    the run to `TINY_SMOKE_ROLLOUTS` rollouts, checkpointed (if the recipe saves) at the end of each; everything else
    in the recipe runs as written.
    """
    steps_per_rollout = training_args.micro_steps_per_rollout // training_args.gradient_accumulation_steps
    kind = script_args.tiny_model_kind
    if kind is None:
        from .testing import TINY_MODEL_KINDS

        raise ValueError(
            "--tiny needs the recipe's family: set tiny_model_kind (e.g. qwen2_5_vl) to one of "
            f"{', '.join(TINY_MODEL_KINDS)}."
        )
    task = script_args.tiny_dataset_name or TINY_TASK_OF_KIND.get(kind, "colour")
    logger.info(
        "--tiny: %s replaced by the tiny %s model, %s by the synthetic %r task, %d rollouts of %d steps",
        model_args.model_name_or_path,
        kind,
        script_args.dataset_name,
        task,
        TINY_SMOKE_ROLLOUTS,
        steps_per_rollout,
    )
    # The stand-in is built in memory: loading options of the real checkpoint do not apply to it.
    model_args.model_name_or_path = None
    model_args.model_revision, model_args.dtype, model_args.attn_implementation = "main", "float32", None
    model_args.load_in_4bit = model_args.load_in_8bit = False
    script_args.dataset_name, script_args.dataset_test_split = task, None
    script_args.prompt_column, script_args.answer_column, script_args.prompt_template = "prompt", "answer", None
    script_args.num_eval_samples = min(script_args.num_eval_samples, 8)
    script_args.reward_model_name_or_path = None
    training_args.max_steps = TINY_SMOKE_ROLLOUTS * steps_per_rollout
    # Both names of the alias pair: RFTConfig resolved them into each other when it was parsed.
    length = min(training_args.generate_max_len, TINY_SMOKE_COMPLETION_LENGTH)
    training_args.generate_max_len = training_args.max_completion_length = length
    if training_args.save_strategy != SaveStrategy.NO:
        # The recipe's checkpointing, at the smoke run's scale: one checkpoint per rollout (a resumable boundary).
        training_args.save_strategy, training_args.save_steps = SaveStrategy.STEPS, steps_per_rollout
    training_args.push_to_hub = False


def model_init_kwargs(model_args: ModelConfig, training_args: RFTConfig) -> dict | None:
    """TRL's `ModelConfig` loading options (revision, dtype, attention, quantization) as `model_init_kwargs`."""
    kwargs: dict[str, Any] = {}
    if model_args.model_revision != "main":
        kwargs["revision"] = model_args.model_revision
    # ModelConfig's default dtype is float32; left there, bf16/fp32 follow the training arguments' `bf16`.
    if model_args.dtype not in (None, "float32"):
        kwargs["dtype"] = model_args.dtype
    if model_args.attn_implementation is not None:
        kwargs["attn_implementation"] = model_args.attn_implementation
    quantization_config = get_quantization_config(model_args)
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    kwargs.update(training_args.model_init_kwargs or {})
    return kwargs or None


def check_family(model_path: str, script_args: ScriptArguments, training_args: RFTConfig) -> None:
    """A recipe's `tiny_model_kind` names the family its smoke test stands in for: it must be the model's."""
    if script_args.tiny_model_kind is None:
        return
    model_type = AutoConfig.from_pretrained(model_path, trust_remote_code=training_args.trust_remote_code).model_type
    if model_type != script_args.tiny_model_kind:
        raise ValueError(
            f"tiny_model_kind={script_args.tiny_model_kind!r} but {model_path} is a {model_type!r} model: the "
            f"recipe's --tiny smoke test would test another family. Set tiny_model_kind to {model_type!r} (if rft_trl "
            "has that tiny family) or remove it."
        )


def main(script_args: ScriptArguments, training_args: RFTConfig, model_args: ModelConfig) -> PPOTrainerVL:
    """Build the model and data, optionally warm up, train, save, and plot the reward curve."""
    if script_args.tiny:
        use_tiny_stand_in(script_args, training_args, model_args)
    train_dataset, eval_dataset = load_data(script_args, training_args.seed)
    environment_factory, tools = load_agent(script_args)
    if eval_dataset is None and training_args.eval_strategy != IntervalStrategy.NO:
        if training_args.load_best_model_at_end:
            raise ValueError(
                f"load_best_model_at_end needs evaluation, but {script_args.dataset_name!r} has no evaluation split: "
                "name one with --dataset_test_split, or set load_best_model_at_end false."
            )
        progress_logger().info(
            "No evaluation split (--dataset_test_split) for %r: evaluation is off (eval_strategy %r -> 'no').",
            script_args.dataset_name,
            training_args.eval_strategy.value,
        )
        training_args.eval_strategy, training_args.do_eval = IntervalStrategy.NO, False
    if model_args.model_name_or_path is None:
        if script_args.dataset_name not in TASK_KINDS:
            raise ValueError("Pass --model_name_or_path: the built-in tiny models only fit the synthetic tasks.")
        from .testing import TASK_ANSWERS, build_tiny_model

        kind, answers = TASK_KINDS[script_args.dataset_name], TASK_ANSWERS[script_args.dataset_name]
        with whole_model(training_args):
            model, processing_class = build_tiny_model(
                script_args.tiny_model_kind or kind, seed=script_args.tiny_model_seed
            )
            # A resumed run warms up again, identically (the same model seed, rows and warm-up seed): the KL
            # reference is the warmed-up model the checkpoint was trained against (the trainer checks it), and the
            # trained weights then come from the checkpoint.
            if script_args.format_warmup_steps > 0:
                format_warmup(
                    model,
                    processing_class,
                    train_dataset,
                    answers,
                    script_args,
                    training_args.seed,
                    environment_factory,
                )
    else:
        model = model_args.model_name_or_path
        check_family(model, script_args, training_args)
        training_args.model_init_kwargs = model_init_kwargs(model_args, training_args)
        processing_class = AutoProcessor.from_pretrained(
            model, revision=model_args.model_revision, trust_remote_code=training_args.trust_remote_code
        )

    if training_args.reward_weights is None and script_args.reward_funcs is None:
        # The format reward is logged but not trained on: the accuracy reward already requires a clean answer.
        training_args.reward_weights = [1.0, 0.0] if script_args.reward_model_name_or_path is None else [1.0, 1.0, 0.0]
    trainer = PPOTrainerVL(
        model=model,
        reward_funcs=load_reward_funcs(script_args),
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processing_class,
        peft_config=get_peft_config(model_args),
        environment_factory=environment_factory,
        tools=tools or None,
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
    # Every process leaves together, with its process group closed: a process that exits while another is still
    # writing the model can abort in the collective backend's teardown (seen with gloo under ZeRO-3).
    trainer.accelerator.wait_for_everyone()
    # vLLM's engine shuts down first, through its own shutdown: left to its exit-time finalizer it would destroy its
    # process groups after end_training had destroyed them all ("Invalid process group specified").
    if trainer.rollout_engine is not None:
        trainer.rollout_engine.close()
    trainer.accelerator.end_training()
    return trainer
