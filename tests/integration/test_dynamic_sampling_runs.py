"""Dynamic sampling in the trainer: off, or on with nothing to drop, is the same run bit for bit; on with saturating
rewards it drops groups, refills from new prompts and logs it; and a resumed run is the uninterrupted one."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

from rft_trl import PPOTrainerVL
from rft_trl.rewards.functions import completion_text
from rft_trl.testing import build_tiny_model, distinct_reward, make_task_dataset, tiny_config

REPO = Path(__file__).resolve().parents[2]
DYNAMIC = "rollout/dynamic_sampling/"


def load_resume_test():
    """The exact-resume test's script and helpers (tests/integration/test_resume.py), reused as they are."""
    spec = importlib.util.spec_from_file_location("test_resume", Path(__file__).with_name("test_resume.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parity_reward(prompts, completions, **columns):
    """1 for an even-length completion: two samples tie about half the time, so many groups have no spread."""
    return [float(len(completion_text(c)) % 2 == 0) for c in completions]


class Logs(TrainerCallback):
    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if "loss" in logs:
            self.logs.append(dict(logs))


def train(tmp_path, name, reward, **overrides):
    torch.manual_seed(0)
    model, tokenizer = build_tiny_model("qwen2")
    before = {k: v.clone() for k, v in model.named_parameters()}
    logs = Logs()
    args = tiny_config(str(tmp_path / name), max_steps=3, **overrides)
    trainer = PPOTrainerVL(
        model,
        [reward],
        args,
        train_dataset=make_task_dataset("text", 16),
        processing_class=tokenizer,
        callbacks=[logs],
    )
    trainer.train()
    after = dict(trainer.actor.hf_model.named_parameters())
    changed = any(not torch.equal(before[k], after[k]) for k in before)
    return {k: v.detach() for k, v in after.items()}, logs.logs, changed


def without(logs, prefix):
    return [{k: v for k, v in entry.items() if not k.startswith(prefix) and k != "train_runtime"} for entry in logs]


def test_dynamic_sampling_off_and_on_without_ties_are_the_same_run(tmp_path):
    # distinct_reward gives every two different completions different rewards: with 4-token completions of a tiny
    # model no group ties, so dynamic sampling drops nothing and must leave the run exactly as it was.
    weights_off, logs_off, changed = train(tmp_path, "off", distinct_reward)
    weights_on, logs_on, _ = train(tmp_path, "on", distinct_reward, dynamic_sampling=True)
    assert changed
    assert all(entry[f"{DYNAMIC}rounds"] == 1.0 and entry[f"{DYNAMIC}dropped_groups"] == 0.0 for entry in logs_on)
    assert not any(key.startswith(DYNAMIC) for entry in logs_off for key in entry)
    strip = ("train_runtime", "train_samples_per_second", "train_steps_per_second")
    assert [{k: v for k, v in e.items() if k not in strip} for e in without(logs_on, DYNAMIC)] == [
        {k: v for k, v in e.items() if k not in strip} for e in logs_off
    ]
    assert all(torch.equal(weights_off[k], weights_on[k]) for k in weights_off)

    # Control: with rewards that tie, the same switch changes the run (groups are dropped and prompts refilled).
    weights_tied_off, logs_tied_off, _ = train(tmp_path, "tied_off", parity_reward)
    weights_tied_on, logs_tied_on, changed = train(tmp_path, "tied_on", parity_reward, dynamic_sampling=True)
    assert changed
    assert sum(entry[f"{DYNAMIC}dropped_groups"] for entry in logs_tied_on) > 0
    assert any(entry[f"{DYNAMIC}rounds"] > 1 for entry in logs_tied_on)
    # Every trained group has spread (TRL's metric over the trained rollout), which it has not without the switch.
    assert all(entry["frac_reward_zero_std"] == 0.0 for entry in logs_tied_on)
    assert any(entry["frac_reward_zero_std"] > 0.0 for entry in logs_tied_off)
    assert any(not torch.equal(weights_tied_off[k], weights_tied_on[k]) for k in weights_tied_off)
    for entry in logs_tied_on:  # the counts add up: every generated group is dropped, kept (2 per rollout) or surplus
        kept = (
            entry[f"{DYNAMIC}generated_groups"] - entry[f"{DYNAMIC}dropped_groups"] - entry[f"{DYNAMIC}surplus_groups"]
        )
        assert kept == 2.0 and 0.0 <= entry[f"{DYNAMIC}reward"] <= 1.0


def test_resume_with_dynamic_sampling_is_exact(tmp_path):
    resume = load_resume_test()
    # The exact-resume test's run, with dynamic sampling on and a reward that ties often (so rollouts are refilled:
    # the refill position and the sampling RNG must both survive the save).
    script = resume.SCRIPT.replace("        seed=0,\n", "        seed=0,\n        dynamic_sampling=True,\n")
    script = script.replace(
        "return [1.0 / (1.0 + len(completion_text(c))) for c in completions]",
        "return [float(len(completion_text(c)) % 2 == 0) for c in completions]",
    )
    assert script.count("dynamic_sampling=True") == 1 and "% 2 == 0" in script
    path = tmp_path / "train.py"
    path.write_text(script)
    uninterrupted, interrupted = str(tmp_path / "uninterrupted"), str(tmp_path / "interrupted")
    resume.run_forked(path, [(uninterrupted, 0), (interrupted, 3)])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, str(path), interrupted, "0", "resume"], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]

    a, b = os.path.join(uninterrupted, "checkpoint-6"), os.path.join(interrupted, "checkpoint-6")
    from safetensors.torch import load_file

    for name in ("model.safetensors", "ema.safetensors"):
        resume.assert_equal_nested(load_file(os.path.join(a, name)), load_file(os.path.join(b, name)), name)
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        resume.assert_equal_nested(
            resume.load_pickled_state(os.path.join(a, name)), resume.load_pickled_state(os.path.join(b, name)), name
        )
    with open(os.path.join(a, "rft_state.json")) as fa, open(os.path.join(b, "rft_state.json")) as fb:
        rft_a, rft_b = json.load(fa), json.load(fb)
    assert rft_a == rft_b
    with open(os.path.join(a, "trainer_state.json")) as fa, open(os.path.join(b, "trainer_state.json")) as fb:
        logs_a, logs_b = json.load(fa)["log_history"], json.load(fb)["log_history"]
    assert logs_a == logs_b  # every metric, the dynamic-sampling counts included
    with (
        open(os.path.join(uninterrupted, "samples.jsonl")) as fa,
        open(os.path.join(interrupted, "samples.jsonl")) as fb,
    ):
        assert fa.readlines() == fb.readlines()  # every round's prompts and completions, refills included

    # The state compared did move: rollouts were refilled (before and after the save), and the position was saved.
    with open(os.path.join(interrupted, "checkpoint-3", "rft_state.json")) as f:
        drawn_at_save = json.load(f)["dynamic_sampling_drawn"]
    assert 0 < drawn_at_save < rft_a["dynamic_sampling_drawn"]
    rounds = [entry[f"{DYNAMIC}rounds"] for entry in logs_a if f"{DYNAMIC}rounds" in entry]
    assert len(rounds) == 6 and max(rounds) > 1
