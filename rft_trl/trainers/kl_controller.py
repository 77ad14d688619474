"""Controllers of the KL-penalty coefficient between the policy and its reference, and of the entropy bonus."""

import math

import torch

__all__ = ["AdaptiveKLController", "EntropyController", "FixedKLController"]


class FixedKLController:
    """
    A constant KL coefficient.

    Args:
        kl_coef (`float`):
            The coefficient.
    """

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current: float, n_steps: int) -> None:
        """Does nothing: the coefficient is fixed. Same signature as [`AdaptiveKLController.update`]."""

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self.value = float(state_dict["value"])


class AdaptiveKLController:
    """
    Proportional control of the KL coefficient towards a target KL (Ziegler et al. 2019,
    https://arxiv.org/abs/1909.08593, section 2.2).

    After each rollout with measured KL ``current`` over ``n_steps`` samples:
    ``e = clip(current / target - 1, -0.2, 0.2)`` and ``value *= 1 + e * n_steps / horizon``. The coefficient grows
    while the KL is above target and shrinks while it is below, by at most 20 % per ``horizon`` samples.

    Args:
        init_kl_coef (`float`):
            Starting coefficient.
        target (`float`):
            Target KL, > 0.
        horizon (`int`):
            Number of samples over which the coefficient may change by the full proportional error.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        if target <= 0:
            raise ValueError(f"target must be > 0, got {target}.")
        if horizon <= 0:
            raise ValueError(f"horizon must be > 0, got {horizon}.")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = horizon

    def update(self, current: float, n_steps: int) -> None:
        """Move the coefficient after a rollout whose mean KL was ``current``, measured over ``n_steps`` samples."""
        proportional_error = min(max(current / self.target - 1, -0.2), 0.2)
        self.value *= 1 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        """The coefficient, with the settings it was controlled under, for an exact resume."""
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        """Restore the coefficient; the settings in the state must match this controller's."""
        if (state_dict["target"], state_dict["horizon"]) != (self.target, self.horizon):
            raise ValueError(
                f"Checkpoint was saved with target={state_dict['target']}, horizon={state_dict['horizon']}; this "
                f"controller has target={self.target}, horizon={self.horizon}."
            )
        self.value = float(state_dict["value"])


class EntropyController:
    """
    The entropy-bonus coefficient (TRL's `entropy_coef`): constant, or with `adaptive` (TRL's `use_adaptive_entropy`)
    moved after every optimizer step: up by `delta` (to at most `maximum`) when the step's mean token entropy over
    all processes was at or below `target`, down by `delta` (to at least `minimum`) otherwise. An adaptive bonus
    applies only while the last measured entropy is at or below `target` (not before the first measurement), and
    every micro-batch of an accumulation window applies the coefficient of the window's start.

    Args:
        coef (`float`): the (initial) coefficient.
        adaptive (`bool`, *optional*, defaults to `False`): adapt it as above.
        target, delta, minimum, maximum (`float`, *optional*): TRL's `entropy_target`, `entropy_coef_delta`,
            `entropy_coef_min`, `entropy_coef_max`.
    """

    def __init__(
        self,
        coef: float,
        adaptive: bool = False,
        target: float = 0.2,
        delta: float = 0.005,
        minimum: float = 0.0,
        maximum: float = 1.0,
    ) -> None:
        self.value = float(coef)
        self.adaptive = adaptive
        self.target, self.delta, self.minimum, self.maximum = target, delta, minimum, maximum
        self.last_entropy = math.inf
        self._window: torch.Tensor | None = None

    @property
    def enabled(self) -> bool:
        """Whether the bonus can act at all (an adaptive one can grow from 0)."""
        return self.adaptive or self.value != 0.0

    def applied(self) -> float:
        """The coefficient a micro-batch applies now."""
        if self.adaptive and self.last_entropy > self.target:
            return 0.0
        return self.value

    def observe(self, entropy_sum: torch.Tensor, tokens: torch.Tensor) -> None:
        """Add one micro-batch's summed token entropy and token count to the accumulation window."""
        if self.adaptive:
            stats = torch.stack([entropy_sum.detach().float(), tokens.detach().float()])
            self._window = stats if self._window is None else self._window + stats

    def step(self, reduce_sum) -> None:
        """At an optimizer step: the window's mean entropy over all processes (`reduce_sum`) moves the coefficient."""
        if not self.adaptive or self._window is None:
            return
        total, tokens = reduce_sum(self._window).tolist()
        self._window = None
        self.last_entropy = total / max(tokens, 1.0)
        if self.last_entropy <= self.target:
            self.value = min(self.value + self.delta, self.maximum)
        else:
            self.value = max(self.value - self.delta, self.minimum)

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "last_entropy": self.last_entropy}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self.value = float(state_dict["value"])
        self.last_entropy = float(state_dict["last_entropy"])
