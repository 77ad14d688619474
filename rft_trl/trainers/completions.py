"""TRL's `log_completions`: the last rollout's (or an evaluation's) completions as a console table and a trackio or
wandb table."""

from __future__ import annotations

import importlib.util
from typing import Any

from trl.trainer.utils import print_prompt_completions_sample

from ..data.media import load_image
from .rft_config import RFTConfig

__all__ = ["CompletionsLog"]

# The columns every table row has; any other is a column reward functions logged (`log_extra`) or `images`.
_BASE_COLUMNS = ("step", "prompt", "completion", "reward")


class CompletionsLog:
    """
    The completions of the last rollout, kept until the next training log shows them (once), and the evaluation's.

    Args:
        args ([`RFTConfig`]): `log_multimodal`, `num_completions_to_print` and `report_to` are read.
        is_main_process (`bool`): only the main process prints and logs tables.
    """

    def __init__(self, args: RFTConfig, is_main_process: bool):
        self.args, self.is_main_process = args, is_main_process
        self.table: list[dict] = []
        self.rewards: dict[str, list[float]] = {}
        self.prompts: list = []
        self.logged = True

    def record_rollout(self, rollout: Any, step: int) -> None:
        """Keep `rollout`'s completions (a [`Rollout`]) as the table the next training log shows."""
        self.table = [
            {"step": step, "prompt": str(p), "completion": c, "reward": float(r)}
            for p, c, r in zip(rollout.prompts, rollout.completions, rollout.rewards.tolist())
        ]
        if self.args.log_multimodal and rollout.images is not None:
            for row, images in zip(self.table, rollout.images):
                row["images"] = images
        for column, values in rollout.extra_columns.items():
            for row, value in zip(self.table, values):
                row[column] = value
        self.rewards = rollout.reward_components
        self.prompts = rollout.prompts  # as given (chat messages stay messages), for the console table
        self.logged = False

    def trl_logs(self) -> dict[str, Any]:
        """
        TRL's private `_logs` view of the last rollout's completions: `prompt`, `completion`, `images` (with
        `log_multimodal`) and `extra` (the columns reward functions logged with `log_extra`).
        """
        extra = [name for name in (self.table[0] if self.table else {}) if name not in _BASE_COLUMNS]
        return {
            "prompt": [row["prompt"] for row in self.table],
            "completion": [row["completion"] for row in self.table],
            "images": [row["images"] for row in self.table if "images" in row],
            "extra": {name: [row[name] for row in self.table] for name in extra if name != "images"},
        }

    def log_rollout(self, step: int) -> None:
        """Show the last rollout's table, unless it was shown already."""
        if self.logged:
            return
        self.emit(self.table, self.prompts, self.rewards, "completions", step, extra=self.trl_logs()["extra"] or None)
        self.logged = True

    def log_eval(self, shown: list[tuple], step: int, metric_key_prefix: str) -> None:
        """The eval completions, each row once in dataset order, as the training table: console and trackers."""
        # Rows Accelerate repeated to even out the processes' last batches come back under the same key.
        rows = [row for _, row in sorted({row[0]: row for row in shown}.items())]
        table = [
            {"step": step, "prompt": str(prompt), "completion": completion, "reward": reward}
            for _, prompt, completion, reward, _ in rows
        ]
        rewards = {name: [row[4][name] for row in rows] for name in (rows[0][4] if rows else ())}
        self.emit(table, [row[1] for row in rows], rewards, f"{metric_key_prefix}_completions", step)

    def emit(
        self, table: list[dict], prompts: list, rewards: dict[str, list[float]], name: str, step: int, extra=None
    ) -> None:
        """Print `table` as TRL's console table (with `rich`) and log it as table `name` to trackio / wandb."""
        if not self.is_main_process or not table:
            return
        if importlib.util.find_spec("rich") is not None:
            print_prompt_completions_sample(
                prompts,
                [row["completion"] for row in table],
                rewards,
                None,
                step,
                self.args.num_completions_to_print,
                extra=extra,
            )
        if "trackio" in self.args.report_to:
            import trackio

            columns = [column for column in table[0] if column != "images"]
            rows = [[row.get(column) for column in columns] for row in table]
            trackio.log({name: trackio.Table(columns=columns, data=rows)})
        if "wandb" in self.args.report_to:
            import wandb

            if wandb.run is not None:
                rows = [
                    {**row, "images": [wandb.Image(load_image(image)) for image in row["images"]]}
                    if "images" in row
                    else row
                    for row in table
                ]
                wandb.log({name: wandb.Table(columns=list(rows[0]), data=[list(r.values()) for r in rows])})
