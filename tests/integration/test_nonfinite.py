"""NaN/Inf guard: a non-finite loss or gradient skips the optimizer step (weights, Adam moments and LR schedule
unchanged), the skips are counted and logged, and too many in a row abort with a clear error."""

import copy
import math

import pytest
import torch
from transformers import TrainerCallback

from rft_trl import PPOTrainerVL
from rft_trl.testing import build_tiny_model, length_reward, make_task_dataset, tiny_config
from rft_trl.trainers.guards import (
    GuardedOptimizer,
    GuardedScheduler,
    NonFiniteGuard,
    NonFiniteTrainingError,
    guard_optimizer_and_scheduler,
)


def make_trainer(tmp_path, **overrides) -> PPOTrainerVL:
    # 2 prompts x 2 samples = 4 sequences per rollout, micro-batches of 2, 2 accumulated: one optimizer step per
    # rollout. A linear decay over 4 steps makes every scheduler step change the learning rate.
    model, tokenizer = build_tiny_model("qwen2")
    args = tiny_config(str(tmp_path / "out"), **{"max_steps": 4, "lr_scheduler_type": "linear", **overrides})
    return PPOTrainerVL(
        model, [length_reward], args, train_dataset=make_task_dataset("text", 8), processing_class=tokenizer
    )


def inject_nonfinite(trainer: PPOTrainerVL, nan_loss_steps=(), inf_grad_steps=()) -> None:
    """
    Make the given optimizer steps (1-based) non-finite: NaN logits in the update forward (so a NaN loss), or an
    Inf gradient on the output projection. Generation and the reference run without gradients and stay finite.
    The same two hooks, registered on one rank only, inject a NaN on that rank in a distributed test.
    """
    head = trainer.actor.hf_model.get_output_embeddings()

    def nan_logits(module, inputs, output):
        if torch.is_grad_enabled() and trainer.state.global_step + 1 in nan_loss_steps:
            return output * float("nan")
        return output

    def inf_grad(grad):
        if trainer.state.global_step + 1 in inf_grad_steps:
            return torch.full_like(grad, float("inf"))
        return grad

    head.register_forward_hook(nan_logits)
    head.weight.register_hook(inf_grad)


class StepSnapshots(TrainerCallback):
    """Parameters, optimizer state and scheduler state before and after every optimizer step."""

    def __init__(self, trainer: PPOTrainerVL):
        self.trainer = trainer
        self.before = None
        self.steps: dict[int, tuple[dict, dict]] = {}

    def snapshot(self) -> dict:
        trainer = self.trainer
        return {
            "params": {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad},
            "optimizer": copy.deepcopy(trainer.optimizer.state_dict()),
            "scheduler": copy.deepcopy(trainer.lr_scheduler.state_dict()),
            "lr": trainer.lr_scheduler.get_last_lr(),
        }

    def on_step_begin(self, args, state, control, **kwargs):
        self.before = self.snapshot()

    def on_step_end(self, args, state, control, **kwargs):
        self.steps[state.global_step] = (self.before, self.snapshot())


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def assert_same_optimizer_state(a: dict, b: dict) -> None:
    assert a["state"].keys() == b["state"].keys()
    for index in a["state"]:
        assert_same_tensors(a["state"][index], b["state"][index])
    assert a["param_groups"] == b["param_groups"]


# ------------------------------------------------------------------------------------------------ guard, unit


def test_guard_skips_on_nan_loss_or_nonfinite_grad_norm_and_counts():
    guard = NonFiniteGuard(max_consecutive_skips=3)
    # Two finite micro-batches and a finite norm: the step is taken.
    guard.observe_loss(torch.tensor(0.5))
    guard.observe_loss(torch.tensor(-0.1))
    assert guard.decide(torch.tensor(1.0)) is False
    # One NaN micro-batch among two poisons the whole step, even with a finite norm.
    guard.observe_loss(torch.tensor(float("nan")))
    guard.observe_loss(torch.tensor(0.2))
    assert guard.decide(torch.tensor(1.0)) is True and guard.skip_step
    # A finite loss with an Inf (or NaN) gradient norm is skipped too; a plain float norm works as well.
    guard.observe_loss(torch.tensor(0.2))
    assert guard.decide(float("inf")) is True
    assert (guard.skipped_steps, guard.consecutive_skips) == (2, 2)
    # A finite step resets the run of skips but not the total; the flags were consumed by the last decision.
    assert guard.decide(torch.tensor(3.0)) is False and not guard.skip_step
    assert (guard.skipped_steps, guard.consecutive_skips) == (2, 0)


def test_guard_decides_on_the_flags_summed_over_processes():
    # A stand-in for accelerator.reduce on 2 ranks, where the other rank saw a NaN loss (flag 1): this rank's step is
    # finite, yet it must skip, as the other rank does.
    other_rank_nonfinite = NonFiniteGuard(3)
    other_rank_nonfinite.observe_loss(torch.tensor(0.1))
    assert other_rank_nonfinite.decide(torch.tensor(1.0), reduce_sum=lambda flag: flag + 1.0) is True
    # The other rank finite (flag 0): nothing to skip.
    both_finite = NonFiniteGuard(3)
    assert both_finite.decide(torch.tensor(1.0), reduce_sum=lambda flag: flag + 0.0) is False


def test_guard_aborts_after_max_consecutive_skips_and_restores_state():
    guard = NonFiniteGuard(max_consecutive_skips=2)
    assert guard.decide(float("nan")) is True
    with pytest.raises(NonFiniteTrainingError, match=r"last 2 optimizer steps had a NaN/Inf loss or gradient norm"):
        guard.decide(float("nan"))
    restored = NonFiniteGuard(2)
    restored.load_state_dict({"skipped_steps": 5, "consecutive_skips": 1})
    assert restored.state_dict() == {"skipped_steps": 5, "consecutive_skips": 1}
    with pytest.raises(ValueError, match="max_consecutive_skips must be >= 1"):
        NonFiniteGuard(0)


def test_guarded_optimizer_and_scheduler_freeze_on_skip():
    weight = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    inner = torch.optim.AdamW([weight], lr=0.1)
    guard = NonFiniteGuard(3)
    optimizer = GuardedOptimizer(inner, guard)
    scheduler = GuardedScheduler(torch.optim.lr_scheduler.LambdaLR(inner, lambda step: 1.0 / (1 + step)), guard)

    weight.grad = torch.tensor([0.5, 0.5])
    guard.decide(1.0)
    optimizer.step()
    scheduler.step()
    after_first = weight.detach().clone(), copy.deepcopy(optimizer.state_dict()), scheduler.state_dict()
    assert not torch.equal(after_first[0], torch.tensor([1.0, -2.0]))
    # LambdaLR: lr = 0.1 * 1 / (1 + 1) after one step.
    assert scheduler.get_last_lr() == [0.1 / 2]

    weight.grad = torch.tensor([float("nan"), 0.5])
    guard.decide(float("nan"))
    optimizer.step()
    scheduler.step()
    assert torch.equal(weight.detach(), after_first[0])
    assert_same_optimizer_state(optimizer.state_dict(), after_first[1])
    assert scheduler.state_dict() == after_first[2] and scheduler.get_last_lr() == [0.1 / 2]


def test_unprepared_optimizers_and_metric_schedulers_are_not_wrapped():
    weight = torch.nn.Parameter(torch.zeros(1))
    raw = torch.optim.SGD([weight], lr=0.1)
    step_lr = torch.optim.lr_scheduler.StepLR(raw, step_size=1)
    guard = NonFiniteGuard(3)
    # Not yet prepared by Accelerate: left alone, to be wrapped once accelerator.prepare has run.
    assert guard_optimizer_and_scheduler(raw, step_lr, guard) == (raw, step_lr)


# ------------------------------------------------------------------------------------------------ trainer


def test_nonfinite_steps_are_skipped_and_logged(tmp_path):
    trainer = make_trainer(tmp_path, max_consecutive_nonfinite_steps=3)
    inject_nonfinite(trainer, nan_loss_steps={2}, inf_grad_steps={3})
    snapshots = StepSnapshots(trainer)
    trainer.add_callback(snapshots)
    trainer.train()
    # The Trainer's optimizer and per-step scheduler were wrapped once prepared.
    assert isinstance(trainer.optimizer, GuardedOptimizer) and isinstance(trainer.lr_scheduler, GuardedScheduler)

    for step in (2, 3):
        before, after = snapshots.steps[step]
        assert_same_tensors(before["params"], after["params"])
        assert_same_optimizer_state(before["optimizer"], after["optimizer"])
        assert before["scheduler"] == after["scheduler"] and before["lr"] == after["lr"]
    # The finite steps around them did move all three (so the comparisons above can fail).
    for step in (1, 4):
        before, after = snapshots.steps[step]
        assert any(not torch.equal(before["params"][n], after["params"][n]) for n in before["params"])
        assert after["scheduler"]["last_epoch"] == before["scheduler"]["last_epoch"] + 1
    # Linear decay from 1e-2 over 4 steps: step 1 runs at 1e-2, then 7.5e-3 until the next step taken, step 4 (the
    # skipped steps 2 and 3 did not advance the schedule), after which it is 5e-3.
    assert snapshots.steps[1][0]["lr"][0] == pytest.approx(1e-2)
    assert snapshots.steps[4][0]["lr"][0] == pytest.approx(7.5e-3)
    assert snapshots.steps[4][1]["lr"][0] == pytest.approx(5e-3)
    # Adam's step count advanced on the 2 finite steps only.
    adam_steps = {float(s["step"]) for s in snapshots.steps[4][1]["optimizer"]["state"].values()}
    assert adam_steps == {2.0}

    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["train/nonfinite_steps_skipped"] for entry in logs] == [0.0, 1.0, 2.0, 2.0]
    assert math.isnan(logs[1]["train/policy_loss"])
    assert not math.isfinite(logs[2]["grad_norm"]) and math.isfinite(logs[3]["grad_norm"])


def test_consecutive_nonfinite_steps_abort_with_the_last_finite_weights(tmp_path):
    trainer = make_trainer(tmp_path, max_consecutive_nonfinite_steps=2)
    inject_nonfinite(trainer, nan_loss_steps={2, 3})
    snapshots = StepSnapshots(trainer)
    trainer.add_callback(snapshots)
    with pytest.raises(NonFiniteTrainingError, match=r"max_consecutive_nonfinite_steps=2; 2 steps skipped"):
        trainer.train()
    # Step 2 was skipped, step 3 aborted before its optimizer step: the weights are step 1's.
    after_step_1 = snapshots.steps[1][1]["params"]
    assert_same_tensors(after_step_1, {n: p.detach() for n, p in trainer.model.named_parameters() if p.requires_grad})
