"""
Shared pieces of the trainer benchmarks (B1, B2, B4, B5, B6 and the scaling study).

Every benchmark builds its trainers here so that both sides of a comparison get the same tiny model (same seed,
hence the same weights), the same data, the same trainable parameters (the vision/audio tower frozen, as
`PPOTrainerVL` does by default), the same optimizer settings and the same forced completion length: generation
gets `min_new_tokens = max_new_tokens = L`, so every completion has exactly `L` tokens on both sides.

The GRPO variant used everywhere is the one both trainers compute identically: advantages `r - mean_group` (TRL
`scale_rewards="none"`, ours `advantage_estimator="dr_grpo"`), token-mean loss over the micro-batch (TRL
`loss_type="bnpo"`, ours `loss_agg_mode="token-mean"`), `beta = 0` (TRL cannot build a reference for an in-memory
model), one optimizer step per rollout (so the update is on-policy and neither trainer runs an extra old-log-prob
forward). Both compute in float32: TRL's config defaults to bf16 autocast (also on CPU), which is turned off here.
Gradient checkpointing is off on both sides unless asked for (TRL turns it on by default; a tiny model gains nothing
from it).

Run the benchmarks from the repository root with `PYTHONPATH=.`; they set `torch.set_num_threads(1)` themselves.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import PrinterCallback, TrainerCallback  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from rft_trl import PPOTrainerVL, RFTConfig  # noqa: E402
from rft_trl.models.utils import freeze_non_language_parameters  # noqa: E402
from rft_trl.testing import build_tiny_model, make_task_dataset  # noqa: E402
from rft_trl.testing.datasets import colour_square_image, make_pitch_dataset  # noqa: E402
from rft_trl.testing.vocabulary import COLOURS  # noqa: E402

# task -> tiny model kind
TASK_MODELS = {"colour": "qwen2_5_vl", "video": "qwen2_vl", "pitch": "qwen2_audio", "text": "qwen2"}


def quiet() -> None:
    """One thread, no warnings or info logs: the benchmarks print only their tables."""
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    hf_logging.set_verbosity_error()


@dataclass
class Setup:
    """
    One benchmark configuration, shared by both sides of a comparison.

    Args:
        task (`str`): synthetic task of `rft_trl.testing` (`colour`, `video`, `pitch`, `text`).
        prompts (`int`): prompts per optimizer step (one rollout per step).
        n (`int`): completions per prompt.
        completion_length (`int`): every completion has exactly this many tokens.
        micro_batches (`int`): gradient-accumulation micro-batches per optimizer step.
        steps (`int`): optimizer steps per run; the first is a warm-up and is not timed.
        packing (`bool`): our trainer's `packing_samples`.
        gradient_checkpointing (`bool`): on both sides.
        beta (`float`): KL coefficient (ours only; TRL needs 0 with an in-memory model).
        max_epochs (`int`): PPO epochs per rollout (ours only; > 1 makes the update off-policy).
        images_per_prompt (`int`): colour task only: distinct images per prompt.
        audio_seconds (`float`): pitch task only: clip length (the tiny model's window is 2 s).
        seed (`int`): model weights, data and sampling seed.
    """

    task: str = "colour"
    prompts: int = 2
    n: int = 8
    completion_length: int = 32
    micro_batches: int = 1
    steps: int = 4
    packing: bool = False
    gradient_checkpointing: bool = False
    beta: float = 0.0
    max_epochs: int = 1
    images_per_prompt: int = 1
    audio_seconds: float = 1.0
    seed: int = 0

    @property
    def samples(self) -> int:
        return self.prompts * self.n

    def but(self, **changes) -> Setup:
        return replace(self, **changes)


def completion_text(completion) -> str:
    """Our completions are strings; TRL's, for conversational prompts, are `[{"role": "assistant", "content"}]`."""
    return completion if isinstance(completion, str) else completion[-1]["content"]


def length_reward(prompts, completions, **columns) -> list[float]:
    """A reward with spread inside every group (so advantages and gradients are non-zero), cheap to compute."""
    return [float(len(completion_text(c)) % 7) for c in completions]


def dataset_for(setup: Setup, rows: int | None = None) -> Dataset:
    """The task's rows, enough for every step of a run, with the image count and clip length of `setup`."""
    rows = rows or max(4 * setup.prompts * setup.steps, 16)
    if setup.images_per_prompt > 1:
        return multi_image_dataset(rows, setup.images_per_prompt, setup.seed)
    if setup.task == "pitch" and setup.audio_seconds != 1.0:
        return make_pitch_dataset(rows, seed=setup.seed, seconds=setup.audio_seconds)
    return make_task_dataset(setup.task, rows, seed=setup.seed)


def multi_image_dataset(num_rows: int, images_per_prompt: int, seed: int = 0) -> Dataset:
    """Colour-task rows with `images_per_prompt` distinct images each, in an `images` column."""
    rng = np.random.default_rng(seed)
    content = [{"type": "image", "text": None}] * images_per_prompt
    content = [*content, {"type": "text", "text": "What colour are the squares? Answer with one word."}]
    rows = []
    for i in range(num_rows):
        colour = COLOURS[i % len(COLOURS)]
        images = [colour_square_image(colour, rng) for _ in range(images_per_prompt)]
        rows.append({"prompt": [{"role": "user", "content": content}], "images": images, "answer": colour})
    return Dataset.from_list(rows)


class StepClock(TrainerCallback):
    """Wall and CPU time at the end of every optimizer step; `step_times()` gives the per-step intervals."""

    def __init__(self):
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.wall, self.cpu = [time.perf_counter()], [time.process_time()]

    def on_step_end(self, args, state, control, **kwargs):
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def step_times(self, skip: int = 1) -> tuple[list[float], list[float]]:
        """(wall, cpu) seconds of each step after the first `skip` (warm-up) steps."""
        wall = [b - a for a, b in zip(self.wall, self.wall[1:])][skip:]
        cpu = [b - a for a, b in zip(self.cpu, self.cpu[1:])][skip:]
        return wall, cpu


def build_ours(
    setup: Setup,
    dataset: Dataset | None = None,
    reward: Callable = length_reward,
    callbacks: list | None = None,
    output_dir: str = "/tmp/rft_bench/ours",
    **overrides,
) -> PPOTrainerVL:
    """`PPOTrainerVL` on the tiny model of `setup.task`, forced completion length, one rollout per step."""
    model, processing_class = build_tiny_model(TASK_MODELS[setup.task], seed=setup.seed)
    length = setup.completion_length
    config = dict(
        output_dir=output_dir,
        n_samples_per_prompt=setup.n,
        rollout_batch_size=setup.prompts,
        per_device_train_batch_size=setup.samples // setup.micro_batches,
        gradient_accumulation_steps=setup.micro_batches,
        # The whole rollout in one generate call, as TRL generates its generation batch.
        micro_rollout_batch_size=setup.samples,
        max_epochs=setup.max_epochs,
        generate_max_len=length,
        generation_kwargs={"min_new_tokens": length},
        advantage_estimator="dr_grpo",
        loss_agg_mode="token-mean",
        # The tower frozen on both sides (build_trl freezes TRL's model the same way): PPOTrainerVL trains it by
        # default, as TRL does.
        freeze_encoder=True,
        init_kl_coef=setup.beta,
        packing_samples=setup.packing,
        bf16=False,  # TRL's default is bf16 autocast (on CPU too); both sides compute in float32 here
        gradient_checkpointing=setup.gradient_checkpointing,
        learning_rate=1e-5,
        max_steps=setup.steps,
        logging_steps=1,
        use_cpu=True,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=setup.seed,
    )
    config.update(overrides)
    trainer = PPOTrainerVL(
        model,
        [reward],
        RFTConfig(**config),
        train_dataset=dataset if dataset is not None else dataset_for(setup),
        processing_class=processing_class,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)
    return trainer


def build_trl(
    setup: Setup,
    dataset: Dataset | None = None,
    reward: Callable = length_reward,
    callbacks: list | None = None,
    output_dir: str = "/tmp/rft_bench/trl",
    **overrides,
):
    """TRL's `GRPOTrainer` on the same tiny model (tower frozen, as in `build_ours`), forced completion length."""
    from trl import GRPOConfig, GRPOTrainer

    if setup.beta != 0:
        raise ValueError("TRL's GRPOTrainer rebuilds its reference from a path: an in-memory model needs beta=0.")
    model, processing_class = build_tiny_model(TASK_MODELS[setup.task], seed=setup.seed)
    freeze_non_language_parameters(model)
    length = setup.completion_length
    config = dict(
        output_dir=output_dir,
        num_generations=setup.n,
        per_device_train_batch_size=setup.samples // setup.micro_batches,
        gradient_accumulation_steps=setup.micro_batches,
        max_completion_length=length,
        generation_kwargs={"min_new_tokens": length},
        scale_rewards="none",
        loss_type="bnpo",
        beta=0.0,
        # TRL's configs default to bf16 autocast (on CPU too); ours computes in float32.
        bf16=False,
        gradient_checkpointing=setup.gradient_checkpointing,
        learning_rate=1e-5,
        max_steps=setup.steps,
        logging_steps=1,
        use_cpu=True,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=setup.seed,
    )
    config.update(overrides)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[reward],
        args=GRPOConfig(**config),
        train_dataset=dataset if dataset is not None else dataset_for(setup),
        processing_class=processing_class,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)
    return trainer


def timed_run(build: Callable, setup: Setup) -> tuple[list[float], list[float]]:
    """Build a fresh trainer with `build(setup, callbacks=[clock])`, train it, return its (wall, cpu) step times."""
    clock = StepClock()
    trainer = build(setup, callbacks=[clock])
    trainer.train()
    return clock.step_times()


def interleaved(sides: dict[str, Callable[[], tuple[list[float], list[float]]]], repetitions: int) -> dict:
    """
    Run every side once per repetition, in the order given (A, B, A, B, ...), so that a change in machine load hits
    both sides alike.

    Returns:
        `dict`: per side, `wall` and `cpu` step times of every run (a list per repetition).
    """
    results = {name: {"wall": [], "cpu": []} for name in sides}
    for _ in range(repetitions):
        for name, run in sides.items():
            wall, cpu = run()
            results[name]["wall"].append(wall)
            results[name]["cpu"].append(cpu)
    return results


def median_of(runs: list[list[float]]) -> float:
    return statistics.median(t for run in runs for t in run)


def paired_ratio(numerator: list[list[float]], denominator: list[list[float]]) -> tuple[float, float, float]:
    """
    Median, min and max over repetitions of `median(numerator run) / median(denominator run)`: each repetition's
    two runs were measured back to back, under the same load.
    """
    ratios = [statistics.median(a) / statistics.median(b) for a, b in zip(numerator, denominator)]
    return statistics.median(ratios), min(ratios), max(ratios)


def markdown_table(header: list[str], rows: list[list]) -> str:
    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def load_note() -> str:
    """The 1-minute load average and core count, printed with every result: timings here are taken on a shared box."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min) / {five:.1f} (5 min) on {os.cpu_count()} cores"
