"""Exact resume: what a checkpoint holds of a [`PPOTrainerVL`] run beyond the Trainer's own files (the micro-step,
the controllers, the non-finite guard, the replacement rows' passes, the EMA weights, a synced reference) and the
fingerprint of the KL reference it was trained against, written and restored."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from accelerate.utils import gather_object
from accelerate.utils.constants import OPTIMIZER_NAME as ACCELERATE_OPTIMIZER_NAME
from safetensors.torch import save_file
from transformers.trainer import OPTIMIZER_NAME

from .async_rollouts import wait_before_saving
from .checkpointing import (
    REFERENCE_NAME,
    CheckpointError,
    check_resumable,
    load_rft_state,
    read_safetensors,
    remove_partial_checkpoints,
    resolve_resume_checkpoint,
    save_rft_state,
)
from .fingerprint import fingerprint_difference, weights_fingerprint

if TYPE_CHECKING:
    from .ppo_trainer_vl import PPOTrainerVL

__all__ = [
    "check_reference",
    "checkpoint_optimizer_file",
    "gather_run_state",
    "prepare_resume",
    "save_run_state",
    "reference_fingerprint",
    "restore_run_state",
    "run_state",
]

logger = logging.getLogger(__name__)


def prepare_resume(trainer: PPOTrainerVL, resume_from_checkpoint: str | bool | None) -> str | None:
    """
    Before training starts: fingerprint the KL reference (what every checkpoint records and a resume is checked
    against), and resolve, check and restore the checkpoint to resume from (`True`: the newest complete one, after
    removing what interrupted saves left).

    Returns:
        `str` or `None`: the checkpoint the Trainer loads its own state and the weights from.
    """
    args = trainer.args
    if resume_from_checkpoint not in (None, False) and args.should_save:
        remove_partial_checkpoints(args.output_dir)
    checkpoint = resolve_resume_checkpoint(resume_from_checkpoint, args.output_dir)
    trainer._reference_fingerprint = reference_fingerprint(trainer)
    if checkpoint is not None:
        steps_per_rollout = args.micro_steps_per_rollout // args.gradient_accumulation_steps
        check_resumable(checkpoint, steps_per_rollout, optimizer_file=checkpoint_optimizer_file(trainer))
        restore_run_state(trainer, checkpoint)
    return checkpoint


def checkpoint_optimizer_file(trainer: PPOTrainerVL) -> str | None:
    """
    The file of a checkpoint that holds the optimizer state, as the Trainer writes it: `optimizer.pt`; under FSDP,
    Accelerate's `optimizer.bin` (a full state dict, `fsdp_state_dict_type: FULL_STATE_DICT`); `None` under DeepSpeed,
    which keeps its own files.
    """
    if trainer.is_deepspeed_enabled:
        return None
    if trainer.is_fsdp_enabled:
        return f"{ACCELERATE_OPTIMIZER_NAME}.bin"
    return OPTIMIZER_NAME


def gather_run_state(trainer: PPOTrainerVL, checkpoint: str) -> None:
    """
    Before `checkpoint` is saved (on every process): gather what each process holds of the run's state (the
    replacement rows' passes: each process draws its own), and warn when the save cannot be resumed from. A rollout
    generated ahead (`async_rollouts`) is let finish first: it draws replacement rows.
    """
    wait_before_saving(trainer._async_rollouts, trainer.state.global_step)
    steps_per_rollout = trainer.args.micro_steps_per_rollout // trainer.args.gradient_accumulation_steps
    if trainer.state.global_step % steps_per_rollout:
        logger.warning(
            "Saving %s in the middle of a rollout (%d optimizer steps each): training cannot resume from it. Set "
            "save_steps to a multiple of %d.",
            checkpoint,
            steps_per_rollout,
            steps_per_rollout,
        )
    passes = 0 if trainer._replacement_rows is None else trainer._replacement_rows.passes
    trainer._replacement_passes_per_process = gather_object([passes])


def save_run_state(trainer: PPOTrainerVL, checkpoint: str) -> None:
    """Write the run's state into `checkpoint` (the writing process): JSON state, EMA weights, a synced reference."""
    save_rft_state(checkpoint, run_state(trainer), trainer._ema.state)
    if trainer.args.sync_ref_model:  # the reference has moved away from the initial policy: keep it
        reference = {k: v.detach().contiguous().cpu() for k, v in trainer.ref_model.state_dict().items()}
        save_file(reference, os.path.join(checkpoint, REFERENCE_NAME))


def run_state(trainer: PPOTrainerVL) -> dict[str, Any]:
    """What a checkpoint needs beyond the Trainer's own files to resume exactly (JSON-serialisable)."""
    return {
        "micro_step": trainer._step,
        "ptx_position": trainer._ptx.position,
        "kl_controller": trainer.kl_ctl.state_dict(),
        "entropy_controller": trainer.entropy_controller.state_dict(),
        "nonfinite": trainer._nonfinite_guard.state_dict(),
        "reference_fingerprint": trainer._reference_fingerprint,
        "replacement_passes": trainer._replacement_passes_per_process,
    } | _refill_state(trainer)


def _refill_state(trainer: PPOTrainerVL) -> dict[str, int]:
    """Dynamic sampling's refill position (the same on every process: they draw in step); none without it."""
    sampling = trainer.experience_maker.dynamic_sampling
    return {} if sampling is None else {"dynamic_sampling_drawn": sampling.drawn}


def restore_run_state(trainer: PPOTrainerVL, checkpoint: str) -> None:
    """Put the run's state saved in `checkpoint` back into `trainer`, after checking its KL reference."""
    state, ema = load_rft_state(checkpoint, trainer.accelerator.device)
    check_reference(checkpoint, state.get("reference_fingerprint"), trainer._reference_fingerprint)
    trainer._step = state["micro_step"]
    trainer._ptx.position = state["ptx_position"]
    trainer.kl_ctl.load_state_dict(state["kl_controller"])
    if "entropy_controller" in state:  # checkpoints written before the entropy controller have none
        trainer.entropy_controller.load_state_dict(state["entropy_controller"])
    trainer._nonfinite_guard.load_state_dict(state["nonfinite"])
    passes = state.get("replacement_passes", [])  # checkpoints written before it have none
    if len(passes) == trainer.accelerator.num_processes:
        trainer._replacement_passes = passes[trainer.accelerator.process_index]
    sampling = trainer.experience_maker.dynamic_sampling
    if sampling is not None:
        if "dynamic_sampling_drawn" not in state:
            raise CheckpointError(
                f"{checkpoint} was written without dynamic_sampling, which this run sets: the refill prompts it "
                "would draw are unknown. Resume with the settings it was trained with, or start a new run."
            )
        sampling.restore(state["dynamic_sampling_drawn"])
    # The checkpoint ends a rollout: the next micro-step generates a fresh one.
    trainer._micro_batches = []
    trainer._ema.load(ema)
    if trainer.args.sync_ref_model:
        path = os.path.join(checkpoint, REFERENCE_NAME)
        if not os.path.isfile(path):
            raise CheckpointError(
                f"{checkpoint} has no {REFERENCE_NAME}: it was not written with sync_ref_model=True, so the "
                "synced reference cannot be restored. Resume with the settings it was trained with."
            )
        trainer.ref_model.load_state_dict(read_safetensors(path, str(trainer.accelerator.device)), strict=True)


def reference_fingerprint(trainer: PPOTrainerVL) -> dict[str, list[float]] | None:
    """
    The fingerprint of the KL reference as this run built it (`None` without a reference, or with `sync_ref_model`,
    whose checkpoints hold the reference's weights themselves).
    """
    if trainer._reference_fn is None or trainer.args.sync_ref_model:
        return None
    if trainer._reference is not None:
        return weights_fingerprint(trainer._reference)
    # PEFT: the reference is the frozen base under the adapter; what trains (the adapter) is left out.
    model = trainer.actor.model
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    return weights_fingerprint(model, skip=trainable.__contains__)


def check_reference(
    checkpoint: str, recorded: dict[str, list[float]] | None, current: dict[str, list[float]] | None
) -> None:
    """
    Refuse to resume `checkpoint` against another KL reference than the one it was trained against.

    Args:
        checkpoint (`str`): the checkpoint, for the messages.
        recorded (`dict`, *optional*): the fingerprint it records (`None` when written before rft_trl recorded one).
        current (`dict`, *optional*): this run's reference's (`None` when the run has no reference to check).
    """
    if current is None:
        return
    if recorded is None:
        logger.warning(
            "%s records no fingerprint of its KL reference (written before rft_trl recorded one): the reference "
            "this run built cannot be checked against the one the checkpoint was trained with.",
            checkpoint,
        )
        return
    difference = fingerprint_difference(recorded, current)
    if difference is not None:
        raise CheckpointError(
            f"{checkpoint} was trained against another KL reference than the one this run built: {difference}. "
            "The reference is the model given to the trainer (with PEFT, the base under the adapter) before the "
            "checkpoint's weights are loaded, so a resumed run must build it as the interrupted run did (the "
            "same model, and any warm-up or preprocessing of it before the trainer). Rebuild it that way, or "
            "start a new run."
        )
