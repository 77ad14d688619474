"""
A resumed run is the same run, through the paths the README documents: every example script and every shipped recipe
(its `--tiny` variant, through `rft-trl`), interrupted after a checkpoint and resumed with
`--resume_from_checkpoint true`, logs after the checkpoint exactly what the uninterrupted run logged.

The example scripts are killed for real (SIGKILL right after the checkpoint is committed, `RFT_TRL_KILL_AT_SAVE`) and
resumed in a new process, as a user would. A recipe's interrupted run is the uninterrupted run's checkpoint copied
into a fresh output directory, which is what a run killed after that checkpoint leaves behind.

The control: a resume whose KL reference is not the one the checkpoint was trained against (the built-in demo's
format warm-up skipped, as the scripts did before) is refused, naming the reference, instead of training on.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rft_trl import cli
from rft_trl.trainers.checkpointing import KILL_AT_SAVE_ENV, CheckpointError

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "examples" / "recipes").glob("*.yaml"))

# Two rollouts of 2 prompts x 2 samples, each replayed as 2 optimizer steps of 2 samples; a checkpoint at step 2.
SMALL = {
    "max_steps": 4,
    "num_train_samples": 16,
    "num_eval_samples": 4,
    "format_warmup_steps": 3,
    "num_generations": 2,
    "rollout_batch_size": 2,
    "micro_rollout_batch_size": 4,
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 1,
    "max_completion_length": 4,
    "logging_steps": 1,
    "eval_strategy": "no",
    "save_strategy": "steps",
    "save_steps": 2,
    "report_to": "none",
    "reward_plot": "false",
    "disable_tqdm": "true",
    # Distinct rewards for distinct completions: every group has an advantage, so every step moves the policy.
    "reward_funcs": "rft_trl.testing.distinct_reward",
}
SMALL_ARGS = [item for key, value in SMALL.items() for item in (f"--{key}", str(value))]


def step_logs(history: list[dict], after: int) -> list[dict]:
    """The training logs of the steps after `after` (evaluation and the final summary left out)."""
    return [entry for entry in history if entry.get("step", 0) > after and "loss" in entry]


def launch(script: str, output_dir: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python examples/<script> ...` as a user starts it."""
    environment = {**os.environ, **(env or {})}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *SMALL_ARGS, "--output_dir", str(output_dir), *extra],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize("script", ["grpo_vl.py", "grpo_text.py", "grpo_audio.py", "ppo_vl.py"])
def test_an_example_killed_after_a_checkpoint_resumes_as_the_same_run(script, tmp_path):
    uninterrupted, interrupted = tmp_path / "uninterrupted", tmp_path / "interrupted"
    result = launch(script, uninterrupted)
    assert result.returncode == 0, result.stderr[-4000:]
    killed = launch(script, interrupted, env={KILL_AT_SAVE_ENV: "after_commit:2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-4000:]
    assert sorted(path.name for path in interrupted.glob("checkpoint-*")) == ["checkpoint-2"]
    resumed = launch(script, interrupted, "--resume_from_checkpoint", "true")
    assert resumed.returncode == 0, resumed.stderr[-4000:]

    expected = json.loads((uninterrupted / "log_history.json").read_text())
    got = json.loads((interrupted / "log_history.json").read_text())
    assert [entry["step"] for entry in step_logs(expected, 2)] == [3, 4]
    # Every metric of the steps after the checkpoint (reward, KL, losses, lengths...), bit for bit.
    assert step_logs(got, 2) == step_logs(expected, 2)
    # What is compared moves: the policy has left its KL reference, and the two steps differ.
    third, fourth = step_logs(expected, 2)
    assert third["kl"] > 0 and third != fourth


@pytest.mark.parametrize("recipe", RECIPES, ids=[path.stem for path in RECIPES])
def test_a_recipe_resumed_after_a_checkpoint_is_the_same_run(recipe, tmp_path):
    command = "ppo" if recipe.stem.startswith("ppo_") else "grpo"
    settings = yaml.safe_load(recipe.read_text())
    uninterrupted, interrupted = tmp_path / "uninterrupted", tmp_path / "interrupted"
    argv = [command, "--config", str(recipe), "--tiny", "--use_cpu", "true", "--report_to", "none"]
    argv += ["--reward_plot", "false", "--logging_steps", "1", "--save_strategy", "steps", "--disable_tqdm", "true"]
    if settings.get("format_warmup_steps", 40) > 0:
        argv += ["--format_warmup_steps", "3"]  # the tiny demo's warm-up, shortened
    assert cli.main([*argv, "--output_dir", str(uninterrupted)]) == 0
    expected = json.loads((uninterrupted / "log_history.json").read_text())
    trained = json.loads((uninterrupted / "training_args.json").read_text())
    rollout_steps = trained["save_steps"]
    assert trained["max_steps"] == 2 * rollout_steps

    interrupted.mkdir()
    first = f"checkpoint-{rollout_steps}"
    shutil.copytree(uninterrupted / first, interrupted / first)
    assert cli.main([*argv, "--output_dir", str(interrupted), "--resume_from_checkpoint", "true"]) == 0
    got = json.loads((interrupted / "log_history.json").read_text())
    after = step_logs(expected, rollout_steps)
    assert [entry["step"] for entry in after] == list(range(rollout_steps + 1, 2 * rollout_steps + 1))
    assert step_logs(got, rollout_steps) == after


def test_a_resume_against_another_reference_is_refused(tmp_path, monkeypatch):
    """The demo resumed without its warm-up (what the scripts did): the reference differs, and the run stops."""
    run = ["grpo", *SMALL_ARGS, "--output_dir", str(tmp_path)]
    assert cli.main(run) == 0
    assert (tmp_path / "checkpoint-2").is_dir()
    state = json.loads((tmp_path / "checkpoint-2" / "rft_state.json").read_text())
    assert state["reference_fingerprint"], "the checkpoint records its KL reference"
    shutil.rmtree(tmp_path / "checkpoint-4")
    # Another warm-up than the one the checkpoint was trained against: another reference.
    with pytest.raises(CheckpointError, match=r"another KL reference.*differ, the most"):
        cli.main([*run, "--format_warmup_steps", "0", "--resume_from_checkpoint", "true"])
    # The same run resumes (the check passes when the reference is the same).
    assert cli.main([*run, "--resume_from_checkpoint", "true"]) == 0
