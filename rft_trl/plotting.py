"""The reward curve of a run, as a PNG, from the Trainer's `log_history`."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CURVES = (("reward", "train rollouts"), ("eval_reward", "eval (greedy)"))


def plot_reward_curve(log_history: list[dict], path: str) -> str:
    """
    Plot `reward` (and `eval_reward` when present) against the optimizer step.

    Args:
        log_history (`list[dict]`): `trainer.state.log_history`.
        path (`str`): where to write the PNG.

    Returns:
        `str`: `path`.
    """
    figure, axis = plt.subplots(figsize=(6, 3.5))
    for key, label in CURVES:
        points = [(entry["step"], entry[key]) for entry in log_history if key in entry]
        if points:
            steps, values = zip(*points)
            axis.plot(steps, values, marker="o" if len(points) < 30 else None, label=label)
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("mean reward")
    axis.set_ylim(-0.05, 1.05)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
