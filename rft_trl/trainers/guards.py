"""Guards of the training loop: skip non-finite optimizer steps identically on every process; keep tokens given on
the command line out of what integrations record.

`transformers.Trainer` steps the optimizer and the learning-rate scheduler unconditionally (bar Accelerate's
mixed-precision overflow check), so one NaN loss or Inf gradient would poison the weights and the Adam moments for
good. [`NonFiniteGuard`] decides, once per optimizer step, whether the step is taken; [`GuardedOptimizer`] and
[`GuardedScheduler`] wrap the prepared optimizer and scheduler so that a skipped step leaves the parameters, the
optimizer state and the learning-rate schedule exactly as they were.

The decision is the same on every rank: the local flags (a non-finite loss seen in any micro-batch of the step, a
non-finite gradient norm) are summed over processes before anyone acts on them. Under DDP the gradients, hence their
norm, are already identical after the all-reduce; the sum also covers a NaN loss whose gradients are finite (a NaN
term with no gradient path) on a single rank.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Callable

import torch
from accelerate.optimizer import AcceleratedOptimizer

logger = logging.getLogger(__name__)


class NonFiniteTrainingError(RuntimeError):
    """Raised when too many optimizer steps in a row had a non-finite loss or gradient."""


class NonFiniteGuard:
    """
    Decides whether each optimizer step is skipped for a NaN/Inf loss or gradient norm, and counts the skips.

    Call [`observe_loss`] with every micro-batch's loss, then [`decide`] once per optimizer step, just before the
    optimizer steps; `skip_step` then holds the decision until the next call to `decide`.

    Args:
        max_consecutive_skips (`int`):
            Raise [`NonFiniteTrainingError`] when this many optimizer steps in a row are skipped.
    """

    def __init__(self, max_consecutive_skips: int):
        if max_consecutive_skips < 1:
            raise ValueError(f"max_consecutive_skips must be >= 1, got {max_consecutive_skips}.")
        self.max_consecutive_skips = max_consecutive_skips
        self.skip_step = False
        self.skipped_steps = 0
        self.consecutive_skips = 0
        # A 0-dim bool tensor on the loss's device, so that observing a micro-batch never synchronises with it.
        self._loss_nonfinite: torch.Tensor | None = None

    def observe_loss(self, loss: torch.Tensor) -> None:
        """Remember whether this micro-batch's loss (any shape) has a NaN or Inf, until the next [`decide`]."""
        nonfinite = ~torch.isfinite(loss.detach()).all()
        self._loss_nonfinite = nonfinite if self._loss_nonfinite is None else self._loss_nonfinite | nonfinite

    def decide(
        self,
        grad_norm: torch.Tensor | float | None,
        reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
        step: int | None = None,
    ) -> bool:
        """
        Decide whether the coming optimizer step is skipped, and update the counters.

        Args:
            grad_norm (`torch.Tensor`, `float` or `None`):
                The total gradient norm of the step (before clipping); `None` when the backend did not report one.
            reduce_sum (`Callable`, *optional*):
                Sums a tensor over processes (`accelerator.reduce`); `None` in a single process.
            step (`int`, *optional*):
                The optimizer step, for the log message.

        Returns:
            `bool`: whether the step is skipped (also stored in `skip_step`).

        Raises:
            [`NonFiniteTrainingError`]: when this skip makes `max_consecutive_skips` in a row.
        """
        device = self._loss_nonfinite.device if self._loss_nonfinite is not None else None
        if isinstance(grad_norm, torch.Tensor):
            device = grad_norm.device
        flag = torch.zeros((), device=device)
        if self._loss_nonfinite is not None:
            flag = flag + self._loss_nonfinite.to(flag.device).float()
        if grad_norm is not None:
            flag = flag + (~torch.isfinite(torch.as_tensor(grad_norm, device=flag.device))).float()
        self._loss_nonfinite = None
        if reduce_sum is not None:
            flag = reduce_sum(flag)
        self.skip_step = bool(flag.item() > 0)
        if not self.skip_step:
            self.consecutive_skips = 0
            return False
        self.skipped_steps += 1
        self.consecutive_skips += 1
        logger.warning(
            "Skipping optimizer step %s: non-finite loss or gradient norm (%s); %d in a row, %d in total.",
            step,
            None if grad_norm is None else float(grad_norm),
            self.consecutive_skips,
            self.skipped_steps,
        )
        if self.consecutive_skips >= self.max_consecutive_skips:
            raise NonFiniteTrainingError(
                f"Aborting: the last {self.consecutive_skips} optimizer steps had a NaN/Inf loss or gradient norm "
                f"(max_consecutive_nonfinite_steps={self.max_consecutive_skips}; {self.skipped_steps} steps skipped "
                f"in total). The weights are those of the last finite step: lower the learning rate, check the "
                f"rewards and advantages for NaN/Inf, or resume from an earlier checkpoint."
            )
        return True

    def state_dict(self) -> dict[str, int]:
        return {"skipped_steps": self.skipped_steps, "consecutive_skips": self.consecutive_skips}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.skipped_steps = int(state["skipped_steps"])
        self.consecutive_skips = int(state["consecutive_skips"])


class GuardedOptimizer(torch.optim.Optimizer):
    """
    A prepared optimizer whose `step` does nothing when the guard skips the step; everything else passes through.

    Like Accelerate's own wrapper it does not call `Optimizer.__init__`: the wrapped optimizer owns the parameter
    groups and the state, so checkpoints hold exactly what they would without the guard.

    Args:
        optimizer (`accelerate.optimizer.AcceleratedOptimizer`):
            The optimizer after `accelerator.prepare`.
        guard ([`NonFiniteGuard`]):
            Holds the decision for the current step.
    """

    def __init__(self, optimizer: AcceleratedOptimizer, guard: NonFiniteGuard):
        self.optimizer = optimizer
        self.guard = guard

    @property
    def state(self):
        return self.optimizer.state

    @state.setter
    def state(self, state):
        self.optimizer.state = state

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, param_groups):
        self.optimizer.param_groups = param_groups

    @property
    def defaults(self):
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, defaults):
        self.optimizer.defaults = defaults

    def step(self, closure=None):
        if self.guard.skip_step:
            return None
        return self.optimizer.step(closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict) -> None:
        self.optimizer.add_param_group(param_group)

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.optimizer.load_state_dict(state_dict)

    def train(self) -> None:
        """Schedule-free optimizers switch modes; the Trainer calls this before each training step."""
        self.optimizer.train()

    def eval(self) -> None:
        self.optimizer.eval()


class GuardedScheduler:
    """
    A learning-rate scheduler that does not advance on skipped steps (as after a mixed-precision overflow).

    Args:
        scheduler (`torch.optim.lr_scheduler.LRScheduler`):
            A per-step scheduler (not `ReduceLROnPlateau`, which steps on metrics).
        guard ([`NonFiniteGuard`]):
            Holds the decision for the current step.
    """

    def __init__(self, scheduler: torch.optim.lr_scheduler.LRScheduler, guard: NonFiniteGuard):
        self.scheduler = scheduler
        self.guard = guard

    def step(self, *args, **kwargs) -> None:
        if not self.guard.skip_step:
            self.scheduler.step(*args, **kwargs)

    def get_last_lr(self) -> list[float]:
        return self.scheduler.get_last_lr()

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.scheduler.load_state_dict(state_dict)


def guard_optimizer_and_scheduler(optimizer, scheduler, guard: NonFiniteGuard) -> tuple:
    """
    Wrap a prepared optimizer and its scheduler so that skipped steps change neither.

    A scheduler that steps on metrics (`ReduceLROnPlateau`) or is not a `torch` scheduler (e.g. `GreedyLR`) is left
    as it is: the Trainer does not step it per optimizer step.

    Only an optimizer prepared by Accelerate is wrapped (the Trainer creates the scheduler right after
    `accelerator.prepare`); anything else is returned as it is, to be wrapped once prepared.

    Returns:
        `tuple`: `(optimizer, scheduler)`, wrapped.
    """
    if not isinstance(optimizer, AcceleratedOptimizer):
        return optimizer, scheduler
    optimizer = GuardedOptimizer(optimizer, guard)
    per_step = isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler) and not isinstance(
        scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau
    )
    if per_step:
        scheduler = GuardedScheduler(scheduler, guard)
    return optimizer, scheduler


def redact_token_arguments(args, argv: list[str] | None = None) -> int:
    """
    Replace, in place, each command-line argument that is a token held by `args` with its placeholder.

    `TrainingArguments.to_dict` already writes `<HUB_TOKEN>` for fields ending in `_token`; but a token given on the
    command line (`--hub_token hf_...`) also lives in `sys.argv`, which tools record verbatim (wandb stores the
    program's arguments in its run metadata). The process's own `sys.argv` is what they read, so that is what is
    redacted. (`ps` still shows the original command line: prefer the `HF_TOKEN` environment variable.)

    Args:
        args (`transformers.TrainingArguments`): the parsed arguments.
        argv (`list[str]`, *optional*): the list to redact; defaults to `sys.argv`.

    Returns:
        `int`: how many arguments were redacted.
    """
    argv = sys.argv if argv is None else argv
    tokens = {}
    for field in dataclasses.fields(args):
        value = getattr(args, field.name)
        if field.name.endswith("_token") and isinstance(value, str) and value:
            tokens[value] = f"<{field.name.upper()}>"
    redacted = 0
    for i, arg in enumerate(argv):
        flag, equals, value = arg.partition("=")
        if arg in tokens:
            argv[i] = tokens[arg]
        elif equals and value in tokens:
            argv[i] = f"{flag}={tokens[value]}"
        else:
            continue
        redacted += 1
    return redacted
