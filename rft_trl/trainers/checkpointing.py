"""Crash-safe checkpoints that resume exactly, for [`PPOTrainerVL`].

The Trainer's own `_save_checkpoint` writes a checkpoint, pointed (through `_get_output_dir`) at a staging directory
`tmp-checkpoint-N` next to where it belongs, so that its files land in `tmp-checkpoint-N/checkpoint-N`. Once every
process has written its part, the writing process fsyncs the files, writes a `checkpoint_complete.json` marker (the
file list with sizes, fsynced), and renames the inner directory to `checkpoint-N` in one `os.replace`. So:

- a `checkpoint-N` directory is complete by construction; the Trainer's own `get_last_checkpoint` and the
  `checkpoint-*` rotation never see a staging directory (its name does not start with `checkpoint-`);
- a process killed at any point leaves at worst a `tmp-checkpoint-*` directory, removed at the next save or resume;
- a write error (a full disk) removes the staging directory and raises, leaving the earlier checkpoints untouched;
- rotation (`save_total_limit`) and the push to the Hub run after the commit, so the newest complete checkpoint
  always survives rotation and the Hub's copy holds the marker; a checkpoint is deleted by renaming it to a staging
  name first, so a deletion cut short is never mistaken for a checkpoint.

`train(resume_from_checkpoint=True)` resumes from the newest complete checkpoint: one whose marker is present and
whose files all still have the sizes it lists.

Resuming is exact when the checkpoint ends a rollout: the rollout's samples are not saved, so a checkpoint taken in
the middle of a rollout's PPO epochs is refused rather than resumed with a regenerated rollout.

For tests, `RFT_TRL_KILL_AT_SAVE=<point>:<step>` makes the process SIGKILL itself at a named point of the save of
optimizer step `<step>` (see `SAVE_POINTS`).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from peft import set_peft_model_state_dict
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import TrainerState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, sort_checkpoints

from ..models.fsdp import original_classes

if TYPE_CHECKING:
    from torch import nn

    from ..models.actor import Actor
    from .rft_config import RFTConfig

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "checkpoint_complete.json"
STAGING_PREFIX = "tmp-"
RFT_STATE_NAME = "rft_state.json"
EMA_NAME = "ema.safetensors"
# The KL reference's weights, saved when they change during training (`sync_ref_model`).
REFERENCE_NAME = "reference.safetensors"
KILL_AT_SAVE_ENV = "RFT_TRL_KILL_AT_SAVE"
# Where a save can be cut short, in order; `during_rotation` is after an old checkpoint was renamed aside.
SAVE_POINTS = ("before_weights", "after_weights", "before_marker", "before_rename", "after_commit", "during_rotation")

_CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from, with the reason and the fix."""


def kill_point(point: str, step: int) -> None:
    """
    Test hook: SIGKILL this process if `RFT_TRL_KILL_AT_SAVE` is `"<point>:<step>"`.

    Args:
        point (`str`): one of `SAVE_POINTS`.
        step (`int`): the optimizer step being saved.
    """
    if point not in SAVE_POINTS:
        raise ValueError(f"Unknown save point {point!r}; use one of {', '.join(SAVE_POINTS)}.")
    if os.environ.get(KILL_AT_SAVE_ENV) == f"{point}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


# ------------------------------------------------------------------------------------------------ finding


def checkpoint_step(path: str) -> int | None:
    """The step of a `checkpoint-N` directory name (`None` for any other name)."""
    match = _CHECKPOINT_NAME.match(os.path.basename(os.path.normpath(path)))
    return int(match.group(1)) if match else None


def is_complete_checkpoint(path: str) -> bool:
    """Whether `path` holds a commit marker and every file it lists, with the listed size."""
    marker = os.path.join(path, COMPLETE_MARKER)
    if not os.path.isfile(marker):
        return False
    try:
        with open(marker) as f:
            files = json.load(f)["files"]
    except (OSError, ValueError, KeyError):
        return False
    for name, size in files.items():
        file = os.path.join(path, name)
        if not os.path.isfile(file) or os.path.getsize(file) != size:
            return False
    return True


def complete_checkpoints(run_dir: str) -> list[str]:
    """The complete `checkpoint-N` directories of `run_dir`, by increasing step."""
    if not os.path.isdir(run_dir):
        return []
    found = []
    for name in os.listdir(run_dir):
        path = os.path.join(run_dir, name)
        step = checkpoint_step(name)
        if step is None or not os.path.isdir(path):
            continue
        if is_complete_checkpoint(path):
            found.append((step, path))
        else:
            logger.warning("Ignoring %s: it has no valid %s, so it may be incomplete.", path, COMPLETE_MARKER)
    return [path for _, path in sorted(found)]


def last_complete_checkpoint(run_dir: str) -> str | None:
    """The complete checkpoint of `run_dir` with the highest step, or `None`."""
    checkpoints = complete_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def remove_partial_checkpoints(run_dir: str) -> list[str]:
    """
    Delete what interrupted saves and rotations left in `run_dir` (the `tmp-checkpoint-*` directories).

    Returns:
        `list[str]`: the removed paths.
    """
    if not os.path.isdir(run_dir):
        return []
    removed = []
    for name in sorted(os.listdir(run_dir)):
        path = os.path.join(run_dir, name)
        if name.startswith(f"{STAGING_PREFIX}{PREFIX_CHECKPOINT_DIR}-") and os.path.isdir(path):
            shutil.rmtree(path)
            removed.append(path)
    if removed:
        logger.warning("Removed %d partial checkpoint(s) left by an interrupted save: %s", len(removed), removed)
    return removed


def resolve_resume_checkpoint(resume_from_checkpoint: str | bool | None, output_dir: str) -> str | None:
    """
    The checkpoint `Trainer.train(resume_from_checkpoint=...)` should load.

    Args:
        resume_from_checkpoint (`str`, `bool` or `None`):
            `True`: the newest complete checkpoint of `output_dir`; a path: that checkpoint, which must be complete;
            `None`/`False`: none.
        output_dir (`str`): where `True` looks.

    Raises:
        [`CheckpointError`]: `True` and no complete checkpoint, or a path that is not a complete checkpoint.
    """
    if resume_from_checkpoint is None or resume_from_checkpoint is False:
        return None
    if isinstance(resume_from_checkpoint, str) and resume_from_checkpoint.lower() in ("true", "false"):
        # From a command line (`--resume_from_checkpoint true`), TrainingArguments keeps the flag as a string.
        resume_from_checkpoint = resume_from_checkpoint.lower() == "true"
        if not resume_from_checkpoint:
            return None
    if resume_from_checkpoint is True:
        checkpoint = last_complete_checkpoint(output_dir)
        if checkpoint is None:
            raise CheckpointError(f"No complete checkpoint in {output_dir} to resume from.")
        return checkpoint
    if not os.path.isdir(resume_from_checkpoint):
        raise CheckpointError(
            f"resume_from_checkpoint={resume_from_checkpoint!r} does not exist (or is not a directory). Pass the path "
            "of a checkpoint-N directory, or True for the newest complete checkpoint of output_dir."
        )
    if not is_complete_checkpoint(resume_from_checkpoint):
        raise CheckpointError(
            f"{resume_from_checkpoint} is not a complete checkpoint (no valid {COMPLETE_MARKER}, or a listed file is "
            f"missing or truncated): it may have been cut short. Pass resume_from_checkpoint=True to take the newest "
            f"complete one."
        )
    return resume_from_checkpoint


def check_resumable(checkpoint: str, steps_per_rollout: int, optimizer_file: str | None) -> None:
    """
    Refuse a checkpoint that cannot resume the run exactly.

    Args:
        checkpoint (`str`): a complete checkpoint.
        steps_per_rollout (`int`): optimizer steps per rollout; checkpoints must fall on a rollout boundary.
        optimizer_file (`str`, *optional*): the file that must hold the optimizer state (`optimizer.pt`; under FSDP,
            Accelerate's `optimizer.bin`); `None` under DeepSpeed, which keeps its own files.

    Raises:
        [`CheckpointError`]: saved in the middle of a rollout, or saved without optimizer state.
    """
    state = TrainerState.load_from_json(os.path.join(checkpoint, TRAINER_STATE_NAME))
    if state.global_step % steps_per_rollout:
        raise CheckpointError(
            f"{checkpoint} was saved at step {state.global_step}, in the middle of a rollout ({steps_per_rollout} "
            f"optimizer steps each): its rollout is not in the checkpoint, so resuming would not reproduce the run. "
            f"Resume from a checkpoint saved at a multiple of {steps_per_rollout} steps (set save_steps to such a "
            f"multiple)."
        )
    if optimizer_file is not None and not os.path.isfile(os.path.join(checkpoint, optimizer_file)):
        raise CheckpointError(
            f"{checkpoint} holds no optimizer state (it was saved with save_only_model or disable_ds_ckpt), so "
            f"training cannot resume from it exactly. Load its weights with from_pretrained and start a new run."
        )


# ------------------------------------------------------------------------------------------------ writing


def _fsync(path: str) -> None:
    # Directories can only be opened (and fsynced) on POSIX; elsewhere the rename is as durable as the OS makes it.
    if os.path.isdir(path) and os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_checkpoint(staging: str, final: str, step: int) -> None:
    """
    Make a fully written staging directory (`tmp-checkpoint-N/checkpoint-N`) visible as `final`, durably.

    Order: fsync every file, write and fsync the marker (listing every file and its size), fsync the directory,
    rename, remove the staging root, fsync the parent. A crash before the rename leaves only the staging root.
    """
    files = {}
    for root, _, names in os.walk(staging):
        for name in names:
            path = os.path.join(root, name)
            _fsync(path)
            files[os.path.relpath(path, staging).replace(os.sep, "/")] = os.path.getsize(path)
    kill_point("before_marker", step)
    with open(os.path.join(staging, COMPLETE_MARKER), "w") as f:
        json.dump({"global_step": step, "files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    _fsync(staging)
    kill_point("before_rename", step)
    aside = None
    if os.path.exists(final):
        # The same step saved again: os.replace cannot overwrite a non-empty directory, so move the old one aside.
        aside = os.path.join(os.path.dirname(final), f"{STAGING_PREFIX}{os.path.basename(final)}.replaced")
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(final, aside)
    os.replace(staging, final)
    os.rmdir(os.path.dirname(staging))  # the staging root, empty now
    _fsync(os.path.dirname(final) or ".")
    if aside is not None:
        shutil.rmtree(aside)
    kill_point("after_commit", step)


@contextmanager
def staged_checkpoint(final: str, is_writer: bool, wait_for_everyone: Callable[[], None], step: int) -> Iterator[str]:
    """
    Yield a staging directory for checkpoint `final`, and commit it when the block ends without error.

    The directory is `tmp-checkpoint-N/checkpoint-N` (the Trainer writes `checkpoint-N` under the directory it is
    given). Every process writes its files (e.g. per-rank RNG states) into it; the writer removes leftovers of earlier
    attempts first and commits once all processes are done.

    Args:
        final (`str`): the `checkpoint-N` path.
        is_writer (`bool`): whether this process creates, commits and cleans up (`args.should_save`).
        wait_for_everyone (`Callable`): a barrier over processes (`accelerator.wait_for_everyone`).
        step (`int`): the optimizer step, for the markers and kill points.

    Raises:
        `OSError`: a write failed (e.g. `ENOSPC`); the staging directory is removed and earlier checkpoints are intact.
    """
    run_dir = os.path.dirname(final)
    root = os.path.join(run_dir, f"{STAGING_PREFIX}{os.path.basename(final)}")
    staging = os.path.join(root, os.path.basename(final))
    if is_writer:
        remove_partial_checkpoints(run_dir)
        os.makedirs(staging)
    wait_for_everyone()
    try:
        yield staging
        wait_for_everyone()
        if is_writer:
            commit_checkpoint(staging, final, step)
    except OSError as error:
        if is_writer:
            shutil.rmtree(root, ignore_errors=True)
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise OSError(
            error.errno or errno.EIO,
            f"Could not write checkpoint {final}: {reason}. The partial checkpoint was removed; earlier checkpoints "
            f"in {run_dir} are intact.",
        ) from error
    except BaseException:
        if is_writer:
            shutil.rmtree(root, ignore_errors=True)
        raise
    wait_for_everyone()


def point_to_best_checkpoint(state: TrainerState, save_strategy: str, run_dir: str) -> None:
    """
    Before a checkpoint of `run_dir` is staged: set `state.best_model_checkpoint` to the committed path of the best
    step, when that is the step being saved or an earlier checkpoint that rotation kept (the Trainer itself only
    looks in the directory it writes to, the staging one).
    """
    if save_strategy in ("steps", "epoch", "best") and state.best_global_step:
        best = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.best_global_step}")
        if state.best_global_step == state.global_step or os.path.isdir(best):
            state.best_model_checkpoint = best


def check_staged_save(state: TrainerState, staging: str, final: str, is_writer: bool) -> None:
    """
    After the Trainer's `_save_checkpoint` into `staging`: refuse a save that went elsewhere (a transformers release
    that no longer writes under `_get_output_dir`), and name a best checkpoint found in the staging directory by its
    committed path `final`, in the state and in its saved `trainer_state.json`.
    """
    if is_writer and not os.path.isfile(os.path.join(staging, TRAINER_STATE_NAME)):
        raise RuntimeError(
            f"transformers.Trainer._save_checkpoint did not write into {staging}: it no longer takes its directory "
            "from _get_output_dir, so checkpoints would not be crash-safe. Install the transformers version rft_trl "
            "pins (see pyproject.toml)."
        )
    if state.best_model_checkpoint == staging:
        state.best_model_checkpoint = final
        if is_writer:
            state.save_to_json(os.path.join(staging, TRAINER_STATE_NAME))


def rotate_checkpoints(
    run_dir: str, save_total_limit: int | None, best_model_checkpoint: str | None, step: int
) -> None:
    """
    Keep the `save_total_limit` newest complete checkpoints (and the best one), in the Trainer's order.

    Only complete checkpoints are counted and deleted, and the newest always stays, so rotation never leaves zero
    complete checkpoints. Each doomed checkpoint is renamed to a staging name before it is deleted, so a deletion cut
    short leaves a `tmp-` directory (removed at the next save), never a damaged `checkpoint-N`.

    Args:
        run_dir (`str`): the directory holding the checkpoints.
        save_total_limit (`int`, *optional*): how many to keep; `None` or <= 0 keeps all.
        best_model_checkpoint (`str`, *optional*): a checkpoint that is never deleted.
        step (`int`): the step just saved, for the kill point.
    """
    if save_total_limit is None or save_total_limit <= 0:
        return
    complete = {os.path.normpath(path) for path in complete_checkpoints(run_dir)}
    # Oldest first, by modification time as the Trainer orders them (by step where times are too close to tell).
    ordered = [os.path.normpath(path) for path in sort_checkpoints(run_dir, use_mtime=True)]
    ordered = [path for path in ordered if path in complete]
    keep = set(ordered[-1:])
    if best_model_checkpoint is not None and os.path.normpath(best_model_checkpoint) in complete:
        keep.add(os.path.normpath(best_model_checkpoint))
    excess = len(ordered) - max(save_total_limit, len(keep))
    for path in [path for path in ordered if path not in keep][: max(0, excess)]:
        aside = os.path.join(run_dir, f"{STAGING_PREFIX}{os.path.basename(path)}.deleted")
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(path, aside)
        kill_point("during_rotation", step)
        shutil.rmtree(aside)


def save_policy(
    output_dir: str,
    actor: Actor,
    critic: nn.Module | None,
    processing_class: Any,
    args: RFTConfig,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> None:
    """
    Write a trained policy as `from_pretrained` loads it: the actor in Hugging Face format (the LoRA adapter alone
    under PEFT) with its processor, the critic's weights in `critic/model.safetensors`, the arguments as JSON.

    Args:
        output_dir (`str`): where to write.
        actor ([`Actor`]), critic (`nn.Module`, *optional*): what was trained.
        processing_class (*optional*): the processor or tokenizer, saved beside the actor.
        args ([`RFTConfig`]): the run's arguments, saved as `training_args.json` (tokens redacted).
        state_dict (`dict`, *optional*): a gathered state dict of the trained module (the actor's, or the
            [`PolicyAndValue`]'s with `actor.model.` and `critic.` keys), when it is sharded (DeepSpeed).
    """
    os.makedirs(output_dir, exist_ok=True)
    actor_state = critic_state = None
    if state_dict is not None and critic is None:
        actor_state = state_dict  # the trained module is the policy itself
    elif state_dict is not None:
        actor_state = {k[len("actor.model.") :]: v for k, v in state_dict.items() if k.startswith("actor.model.")}
        critic_state = {k[len("critic.") :]: v for k, v in state_dict.items() if k.startswith("critic.")}
    # Under FSDP2 the model's classes are restored while it is written, for transformers' checkpoint conversions.
    with original_classes(actor.model):
        actor.model.save_pretrained(output_dir, state_dict=actor_state, safe_serialization=True)
    if processing_class is not None:
        processing_class.save_pretrained(output_dir)
    if critic is not None:
        critic_state = critic_state or critic.state_dict()
        os.makedirs(os.path.join(output_dir, "critic"), exist_ok=True)
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in critic_state.items()},
            os.path.join(output_dir, "critic", "model.safetensors"),
        )
    # JSON, not a pickle of the arguments: `to_json_string` redacts tokens, and JSON loads without running code.
    with open(os.path.join(output_dir, "training_args.json"), "w") as f:
        f.write(args.to_json_string())


# ------------------------------------------------------------------------------------------------ RFT state


def save_rft_state(output_dir: str, state: dict[str, Any], ema_state: dict[str, torch.Tensor] | None) -> None:
    """Write the trainer's own state (JSON) and the EMA weights (safetensors): nothing that loads by unpickling."""
    with open(os.path.join(output_dir, RFT_STATE_NAME), "w") as f:
        json.dump(state, f, indent=1)
    if ema_state is not None:
        save_file({k: v.detach().contiguous().cpu() for k, v in ema_state.items()}, os.path.join(output_dir, EMA_NAME))


def load_rft_state(
    checkpoint: str, device: torch.device | str
) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """The trainer state and EMA weights (on `device`, or `None` when not saved) of a checkpoint."""
    with open(os.path.join(checkpoint, RFT_STATE_NAME)) as f:
        state = json.load(f)
    ema_path = os.path.join(checkpoint, EMA_NAME)
    ema = read_safetensors(ema_path, device=str(device)) if os.path.isfile(ema_path) else None
    return state, ema


def read_safetensors(path: str, device: str = "cpu") -> dict[str, torch.Tensor]:
    """`safetensors.torch.load_file`, with a message naming the file when it cannot be read."""
    try:
        return load_file(path, device=device)
    except (OSError, SafetensorError) as error:
        raise CheckpointError(
            f"{path} cannot be read ({type(error).__name__}: {error}). The checkpoint may be corrupted: resume from "
            "an earlier one."
        ) from error


def load_saved_weights(checkpoint: str, hf_model: nn.Module) -> None:
    """
    Load the weights `save_pretrained` wrote into `checkpoint` into the in-memory `hf_model`, exactly and strictly.

    transformers saves weights in the checkpoint format of the family (for Qwen2.5-VL, `model.visual.*` is saved as
    `visual.*`; MoE experts may be split or fused), which differs from the in-memory names, so a plain
    `load_state_dict` of the file fails or, worse, loads nothing. The family's own `from_pretrained` applies its
    conversions; its state dict then has the in-memory names and shapes, and is loaded with `strict=True`.

    Args:
        checkpoint (`str`): a directory written by `save_pretrained` (safetensors, one file or sharded).
        hf_model (`nn.Module`): the transformers model to load into, in place.
    """
    parameter = next(hf_model.parameters())
    try:
        saved = type(hf_model).from_pretrained(
            checkpoint, dtype=parameter.dtype, use_safetensors=True, trust_remote_code=False
        )
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:
        raise CheckpointError(
            f"The weights in {checkpoint} cannot be read ({type(error).__name__}: {error}). The files may be "
            "corrupted: resume from an earlier checkpoint."
        ) from error
    hf_model.load_state_dict(saved.state_dict(), strict=True)


def load_checkpoint_weights(
    checkpoint: str, hf_model: nn.Module, critic: nn.Module | None, peft_model: nn.Module | None
) -> None:
    """
    Load a checkpoint's weights from safetensors only (never a pickle).

    Args:
        checkpoint (`str`): the checkpoint directory.
        hf_model (`nn.Module`): the actor's transformers model (full weights), unless `peft_model` is given.
        critic (`nn.Module`, *optional*): receives `critic/model.safetensors`.
        peft_model (`nn.Module`, *optional*): the actor's PEFT model; receives `adapter_model.safetensors`.
    """
    if peft_model is not None:
        set_peft_model_state_dict(peft_model, read_safetensors(os.path.join(checkpoint, "adapter_model.safetensors")))
    else:
        load_saved_weights(checkpoint, hf_model)
    if critic is not None:
        critic.load_state_dict(read_safetensors(os.path.join(checkpoint, "critic", "model.safetensors")))
