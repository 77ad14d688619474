"""Controllers of the KL-penalty coefficient between the policy and its reference."""

__all__ = ["AdaptiveKLController", "FixedKLController"]


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
