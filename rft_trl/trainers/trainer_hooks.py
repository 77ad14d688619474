"""What `PPOTrainerVL` relies on in `transformers.Trainer` and TRL beyond their public API, checked or wrapped."""

from __future__ import annotations

import warnings
from contextlib import contextmanager

from torch import nn
from transformers import Trainer
from trl.models.utils import unwrap_model_for_generation

__all__ = ["TRAINER_HOOKS", "check_trainer_hooks", "unwrapped_for_generation"]

# Private `transformers.Trainer` methods PPOTrainerVL overrides or calls, and what relies on each. They are checked
# when a trainer is built: if a transformers release renames or removes one, training would silently lose that
# guarantee, so the trainer refuses to start instead.
TRAINER_HOOKS = {
    "_prepare_inputs": "rollouts (each micro-batch is generated and scored here)",
    "_get_train_sampler": "rollout-shaped batches of prompts",
    "_get_dataloader": "the train and eval dataloaders",
    "_get_grad_norm": "the non-finite step guard (it decides there, before optimizer.step)",
    "_save": "saving the actor in Hugging Face format",
    "_save_checkpoint": "crash-safe checkpoints (the Trainer's own save, staged)",
    "_push_from_checkpoint": "crash-safe checkpoints (pushed once committed)",
    "_load_from_checkpoint": "exact resume (the actor, adapter and critic weights)",
    "_load_best_model": "load_best_model_at_end",
    "_get_output_dir": "crash-safe checkpoints (where the Trainer's save writes)",
}


def check_trainer_hooks(trainer_class: type = Trainer) -> None:
    """
    Raise when a private `Trainer` method rft_trl relies on ([`TRAINER_HOOKS`]) is missing from `trainer_class`.

    Raises:
        `RuntimeError`: naming the method, what depends on it and the installed transformers version.
    """
    import transformers

    missing = [name for name in TRAINER_HOOKS if not callable(getattr(trainer_class, name, None))]
    if missing:
        uses = "; ".join(f"{name} ({TRAINER_HOOKS[name]})" for name in missing)
        raise RuntimeError(
            f"transformers {transformers.__version__}'s Trainer lacks methods PPOTrainerVL builds on: {uses}. "
            "Install the transformers version rft_trl pins (see pyproject.toml)."
        )


# transformers 5.23 renamed gradient checkpointing to activation checkpointing; TRL 1.16's generation context still
# calls the old names (`is_gradient_checkpointing`, `gradient_checkpointing_disable/enable`), which warn on every call.
_TRL_CHECKPOINTING_DEPRECATION = r"`(is_)?gradient_checkpointing(_enable|_disable)?` is deprecated"


@contextmanager
def unwrapped_for_generation(model: nn.Module, accelerator, gather_deepspeed3_params: bool):
    """TRL's `unwrap_model_for_generation`, without the deprecation warnings of TRL's own calls into transformers."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_TRL_CHECKPOINTING_DEPRECATION, category=FutureWarning)
        with unwrap_model_for_generation(
            model, accelerator, gather_deepspeed3_params=gather_deepspeed3_params
        ) as unwrapped:
            yield unwrapped
