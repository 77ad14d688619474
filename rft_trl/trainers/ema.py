"""`enable_ema`: an exponential moving average of the actor's trainable weights, kept after every optimizer step."""

from __future__ import annotations

import torch
from torch import nn
from transformers import TrainerCallback

from .guards import NonFiniteGuard

__all__ = ["ActorEMA"]


class ActorEMA(TrainerCallback):
    """
    After each optimizer step, `ema = beta * ema + (1 - beta) * actor` over the actor's trainable weights (the first
    step starts the average at the weights); copied into `ema_model` when one is given. Saved and restored with the
    run's state (`state`).

    Args:
        actor (`nn.Module`): the policy whose trainable weights are averaged.
        beta (`float`): the weight of the average so far (`ema_beta`).
        ema_model (`nn.Module`, *optional*): receives the average after every update, by parameter name.
        guard ([`NonFiniteGuard`]): a step it skipped left the weights as they were: nothing to average.
    """

    def __init__(self, actor: nn.Module, beta: float, ema_model: nn.Module | None, guard: NonFiniteGuard):
        self.actor, self.beta, self.ema_model, self.guard = actor, beta, ema_model, guard
        self.state: dict[str, torch.Tensor] | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if not self.guard.skip_step:
            self.update()

    def update(self) -> None:
        params = {name: p for name, p in self.actor.named_parameters() if p.requires_grad}
        if self.state is None:
            self.state = {name: p.detach().clone() for name, p in params.items()}
        else:
            for name, p in params.items():
                self.state[name].lerp_(p.detach(), 1 - self.beta)
        self._copy_to_model()

    def load(self, state: dict[str, torch.Tensor] | None) -> None:
        """Restore the average a checkpoint saved (`None`: none saved)."""
        self.state = state
        if state is not None:
            self._copy_to_model()

    def _copy_to_model(self) -> None:
        if self.ema_model is not None:
            target = dict(self.ema_model.named_parameters())
            for name, value in self.state.items():
                target[name].data.copy_(value)
