"""A smoke-test training setup: a config that trains a tiny model for a couple of steps in about a second."""

from __future__ import annotations

import zlib

from ..models.utils import unwrap_model
from ..rewards.functions import completion_text
from ..trainers.rft_config import RFTConfig

TINY_CONFIG = {
    # 2 prompts x 2 samples = 4 sequences per rollout, micro-batches of 2, 2 accumulated: one optimizer step per
    # rollout, and a whole step takes about a second on the tiny models.
    "n_samples_per_prompt": 2,
    "rollout_batch_size": 2,
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 2,
    "max_steps": 2,
    "generate_max_len": 4,
    "learning_rate": 1e-2,
    "use_cpu": True,
    "save_strategy": "no",
    "report_to": "none",
    "disable_tqdm": True,
    "seed": 0,
    # Against TRL's defaults: log every step, fp32 on the CPU, no activation checkpointing (nothing to save on tiny
    # models, and it costs time).
    "logging_steps": 1,
    "bf16": False,
    "activation_checkpointing": False,
}


def tiny_config(output_dir: str, **overrides) -> RFTConfig:
    """
    An [`RFTConfig`] sized for smoke tests of `PPOTrainerVL` on the tiny models (see `TINY_CONFIG`).

    Args:
        output_dir (`str`): where the trainer writes.
        overrides: any `RFTConfig` field, replacing the tiny defaults.
    """
    return RFTConfig(output_dir=output_dir, **{**TINY_CONFIG, **overrides})


def length_reward(prompts, completions, **columns) -> list[float]:
    """A dense reward (shorter is better): every group has spread, so every smoke-test step has a gradient."""
    return [1.0 / (1.0 + len(completion_text(c))) for c in completions]


def distinct_reward(prompts, completions, **columns) -> list[float]:
    """
    A reward in [0, 1) that differs between any two different completions (a hash of the text): every group whose
    samples differ has spread, even when they are all equally long (where `length_reward` ties and the step has no
    gradient). For tests that need every step to move the policy.
    """
    return [zlib.crc32(completion_text(c).encode()) / 2**32 for c in completions]


def count_tower_images(trainer) -> dict[str, int]:
    """
    Count the images the vision towers of a trainer on a Qwen2-VL-style model encode: a forward pre-hook on each
    `visual` tower adds the rows of its `grid_thw` (one per image). The counts, `{"policy": n, "reference": n}`, grow
    as the trainer runs; the reference's only when it is a model of its own. For measuring the encoder-output cache.
    """
    counts = {"policy": 0, "reference": 0}

    def counter(name: str):
        def hook(module, args, kwargs):
            counts[name] += kwargs["grid_thw"].shape[0]

        return hook

    towers = {"policy": trainer.model, "reference": trainer.ref_model}
    for name, model in towers.items():
        if model is not None:
            unwrap_model(model).model.visual.register_forward_pre_hook(counter(name), with_kwargs=True)
    return counts
