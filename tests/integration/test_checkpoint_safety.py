"""Crash-safe checkpoints: a save killed at any point, or failing on a full disk, never leaves a checkpoint that is
chosen for resuming; the run continues from the last complete one; rotation never leaves zero complete checkpoints."""

import errno
import json
import multiprocessing
import os
import traceback

import pytest
import torch
from transformers.trainer_utils import get_last_checkpoint

from rft_trl import PPOTrainerVL
from rft_trl.testing import build_tiny_model, length_reward, make_task_dataset, tiny_config
from rft_trl.trainers.checkpointing import (
    COMPLETE_MARKER,
    KILL_AT_SAVE_ENV,
    CheckpointError,
    complete_checkpoints,
    is_complete_checkpoint,
    kill_point,
    last_complete_checkpoint,
    remove_partial_checkpoints,
    resolve_resume_checkpoint,
    rotate_checkpoints,
    staged_checkpoint,
)


def make_trainer(output_dir, **overrides) -> PPOTrainerVL:
    # One optimizer step per rollout (2 prompts x 2 samples, micro-batches of 2, 2 accumulated), a checkpoint every
    # step and only the newest kept: every save rotates.
    model, tokenizer = build_tiny_model("qwen2")
    args = tiny_config(
        str(output_dir),
        **{"max_steps": 7, "save_strategy": "steps", "save_steps": 1, "save_total_limit": 1, **overrides},
    )
    return PPOTrainerVL(
        model, [length_reward], args, train_dataset=make_task_dataset("text", 8), processing_class=tokenizer
    )


def run_killed_at(output_dir, point: str, step: int, resume: bool) -> None:
    """Train in a forked process that SIGKILLs itself at `point` of the save of `step`; check that it was killed."""

    def child():
        try:
            os.environ[KILL_AT_SAVE_ENV] = f"{point}:{step}"
            make_trainer(output_dir).train(resume_from_checkpoint=True if resume else None)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)

    # fork: the child inherits the imported modules (no 10 s of imports per crash) and its environment change stays
    # in the child.
    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join(timeout=120)
    assert process.exitcode == -9, f"expected SIGKILL at {point}:{step}, exit code {process.exitcode}"


def listing(output_dir) -> list[str]:
    return sorted(os.listdir(output_dir))


def staged_files(output_dir, step: int) -> list[str]:
    """What the Trainer had written of `checkpoint-<step>` into its staging directory when the save was cut short."""
    return sorted(os.listdir(output_dir / f"tmp-checkpoint-{step}" / f"checkpoint-{step}"))


def trainable(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def test_killed_saves_resume_from_the_last_complete_checkpoint(tmp_path):
    out = tmp_path / "out"
    # Step 2's save dies before any weights are written: step 1 is the last complete checkpoint.
    run_killed_at(out, "before_weights", 2, resume=False)
    assert listing(out) == ["checkpoint-1", "tmp-checkpoint-2"]
    assert staged_files(out, 2) == []
    # The Trainer's own lookup cannot see the staging directory either.
    assert get_last_checkpoint(str(out)) == str(out / "checkpoint-1")

    # Resumed from step 1 (the partial directory is removed first), then step 3's save dies after the weights.
    run_killed_at(out, "after_weights", 3, resume=True)
    assert listing(out) == ["checkpoint-2", "tmp-checkpoint-3"]
    partial = staged_files(out, 3)
    assert "model.safetensors" in partial and "optimizer.pt" not in partial

    # Step 4's save dies with every file written but before the commit marker.
    run_killed_at(out, "before_marker", 4, resume=True)
    assert listing(out) == ["checkpoint-3", "tmp-checkpoint-4"]
    partial = staged_files(out, 4)
    assert {"optimizer.pt", "trainer_state.json", "rft_state.json"} <= set(partial) and COMPLETE_MARKER not in partial

    # Step 5's save dies after the marker, before the rename: complete content, yet never visible.
    run_killed_at(out, "before_rename", 5, resume=True)
    assert listing(out) == ["checkpoint-4", "tmp-checkpoint-5"]
    assert COMPLETE_MARKER in staged_files(out, 5)

    # Step 6 is committed, then rotation dies after moving checkpoint-5 aside: the newest complete one survives.
    run_killed_at(out, "during_rotation", 6, resume=True)
    assert listing(out) == ["checkpoint-6", "tmp-checkpoint-5.deleted"]
    assert complete_checkpoints(str(out)) == [str(out / "checkpoint-6")]

    # The last resume cleans up and finishes the run.
    resumed = make_trainer(out)
    resumed.train(resume_from_checkpoint=True)
    assert listing(out) == ["checkpoint-7"] and is_complete_checkpoint(str(out / "checkpoint-7"))
    steps = [entry["step"] for entry in resumed.state.log_history if "loss" in entry]
    assert steps == [1, 2, 3, 4, 5, 6, 7]

    # Six crashes later the weights are those of an uninterrupted run: every resume started from the right state.
    uninterrupted = make_trainer(tmp_path / "reference", save_strategy="no")
    uninterrupted.train()
    reference = trainable(uninterrupted)
    final = trainable(resumed)
    assert reference.keys() == final.keys()
    for name in reference:
        assert torch.equal(reference[name], final[name]), name


def test_full_disk_keeps_the_previous_checkpoint_and_raises(tmp_path, monkeypatch):
    out = tmp_path / "out"
    trainer = make_trainer(out, max_steps=2)
    real_save = torch.save

    def save_on_full_disk(obj, f, *args, **kwargs):
        # The optimizer state of step 2 hits a full disk; everything else is written normally.
        if "tmp-checkpoint-2" in str(f):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_on_full_disk)
    with pytest.raises(OSError, match=r"Could not write checkpoint .*checkpoint-2: No space left on device") as error:
        trainer.train()
    assert error.value.errno == errno.ENOSPC
    # Rotation only follows a commit: checkpoint-1 is intact and the partial one is gone.
    assert listing(out) == ["checkpoint-1"] and is_complete_checkpoint(str(out / "checkpoint-1"))

    monkeypatch.undo()
    resumed = make_trainer(out, max_steps=2)
    resumed.train(resume_from_checkpoint=True)
    assert listing(out) == ["checkpoint-2"]


def test_explicit_partial_or_mid_rollout_checkpoints_are_refused(tmp_path, caplog):
    out = tmp_path / "out"
    # 2 PPO epochs over each rollout make 2 optimizer steps per rollout, so step 1 is mid-rollout.
    with caplog.at_level("WARNING"):
        make_trainer(out, max_steps=1, max_epochs=2, save_total_limit=None).train()
    assert "in the middle of a rollout" in caplog.text
    with pytest.raises(CheckpointError, match=r"saved at step 1, in the middle of a rollout \(2 optimizer steps"):
        make_trainer(out, max_steps=2, max_epochs=2).train(resume_from_checkpoint=True)

    # A checkpoint whose marker no longer matches its files (truncated weights) is not complete.
    checkpoint = out / "checkpoint-1"
    with open(checkpoint / "model.safetensors", "r+b") as f:
        f.truncate(100)
    with pytest.raises(CheckpointError, match="is not a complete checkpoint"):
        make_trainer(out, max_steps=2, max_epochs=2).train(resume_from_checkpoint=str(checkpoint))
    with pytest.raises(CheckpointError, match="No complete checkpoint in"):
        make_trainer(out, max_steps=2, max_epochs=2).train(resume_from_checkpoint=True)
    # From the command line the flag arrives as a string: "true" means the newest complete checkpoint.
    with pytest.raises(CheckpointError, match="No complete checkpoint in"):
        make_trainer(out, max_steps=2, max_epochs=2).train(resume_from_checkpoint="true")
    with pytest.raises(CheckpointError, match="does not exist"):
        make_trainer(out, max_steps=2, max_epochs=2).train(resume_from_checkpoint=str(out / "checkpoint-9"))


def test_a_corrupted_weights_file_is_named(tmp_path):
    out = tmp_path / "out"
    make_trainer(out, max_steps=1).train()
    checkpoint = out / "checkpoint-1"
    # Same size, garbage header: the commit marker still matches, the weights do not parse.
    weights = checkpoint / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(b"\xff" * size)
    with pytest.raises(CheckpointError, match=r"weights in .*checkpoint-1 cannot be read .* corrupted"):
        make_trainer(out, max_steps=2).train(resume_from_checkpoint=True)


def test_checkpoint_without_optimizer_state_is_refused(tmp_path):
    out = tmp_path / "out"
    make_trainer(out, max_steps=1, disable_ds_ckpt=True).train()
    assert "optimizer.pt" not in os.listdir(out / "checkpoint-1")
    with pytest.raises(CheckpointError, match="holds no optimizer state"):
        make_trainer(out, max_steps=2).train(resume_from_checkpoint=True)


# ------------------------------------------------------------------------------------------------ directory rules


def fake_checkpoint(run_dir, step: int, complete: bool = True) -> str:
    """A committed-looking checkpoint directory holding one file."""
    final = os.path.join(run_dir, f"checkpoint-{step}")
    with staged_checkpoint(final, is_writer=True, wait_for_everyone=lambda: None, step=step) as staging:
        with open(os.path.join(staging, "weights.bin"), "wb") as f:
            f.write(b"x" * step)
    if not complete:
        os.remove(os.path.join(final, COMPLETE_MARKER))
    return final


def test_staged_checkpoint_commits_only_on_success(tmp_path):
    run_dir = str(tmp_path)
    first = fake_checkpoint(run_dir, 1)
    with open(os.path.join(first, COMPLETE_MARKER)) as f:
        assert json.load(f) == {"global_step": 1, "files": {"weights.bin": 1}}
    with pytest.raises(RuntimeError, match="boom"):
        with staged_checkpoint(os.path.join(run_dir, "checkpoint-2"), True, lambda: None, 2) as staging:
            open(os.path.join(staging, "weights.bin"), "wb").close()
            raise RuntimeError("boom")
    assert listing(run_dir) == ["checkpoint-1"]
    # Saving the same step again replaces the old directory whole.
    fake_checkpoint(run_dir, 1)
    assert listing(run_dir) == ["checkpoint-1"] and is_complete_checkpoint(first)


def test_lookup_ignores_incomplete_and_cleanup_removes_only_staging(tmp_path):
    run_dir = str(tmp_path)
    fake_checkpoint(run_dir, 2)
    fake_checkpoint(run_dir, 10)
    fake_checkpoint(run_dir, 11, complete=False)  # e.g. written by another tool: ignored, never deleted
    os.makedirs(os.path.join(run_dir, "tmp-checkpoint-12"))
    os.makedirs(os.path.join(run_dir, "tmp-checkpoint-3.deleted"))
    # Numeric order, not lexicographic: 10 is newer than 2.
    assert complete_checkpoints(run_dir) == [
        os.path.join(run_dir, "checkpoint-2"),
        os.path.join(run_dir, "checkpoint-10"),
    ]
    assert last_complete_checkpoint(run_dir) == os.path.join(run_dir, "checkpoint-10")
    assert resolve_resume_checkpoint(True, run_dir) == os.path.join(run_dir, "checkpoint-10")
    assert resolve_resume_checkpoint(None, run_dir) is None and resolve_resume_checkpoint(False, run_dir) is None
    with pytest.raises(CheckpointError, match="checkpoint-11 is not a complete checkpoint"):
        resolve_resume_checkpoint(os.path.join(run_dir, "checkpoint-11"), run_dir)
    removed = remove_partial_checkpoints(run_dir)
    assert sorted(os.path.basename(p) for p in removed) == ["tmp-checkpoint-12", "tmp-checkpoint-3.deleted"]
    assert listing(run_dir) == ["checkpoint-10", "checkpoint-11", "checkpoint-2"]


@pytest.mark.parametrize(
    "limit, best, kept",
    [
        # The newest complete checkpoint (4) always stays; the incomplete 5 is neither counted nor deleted.
        (1, None, [4, 5]),
        # The best one is protected too, even beyond the limit.
        (1, 1, [1, 4, 5]),
        (3, None, [2, 3, 4, 5]),
        (3, 1, [1, 3, 4, 5]),
        # No limit: nothing is deleted.
        (None, None, [1, 2, 3, 4, 5]),
    ],
)
def test_rotation_keeps_the_newest_and_best_complete_checkpoints(tmp_path, limit, best, kept):
    run_dir = str(tmp_path)
    for step in (1, 2, 3, 4):
        fake_checkpoint(run_dir, step)
    fake_checkpoint(run_dir, 5, complete=False)
    best_path = None if best is None else os.path.join(run_dir, f"checkpoint-{best}")
    rotate_checkpoints(run_dir, limit, best_model_checkpoint=best_path, step=4)
    assert listing(run_dir) == sorted(f"checkpoint-{step}" for step in kept)


def test_kill_point_names_are_checked(monkeypatch):
    with pytest.raises(ValueError, match="Unknown save point 'after_lunch'"):
        kill_point("after_lunch", 1)
    # A point or step that does not match leaves the process alive.
    monkeypatch.setenv(KILL_AT_SAVE_ENV, "before_marker:3")
    kill_point("before_marker", 2)
    kill_point("after_weights", 3)
