"""
Console progress a person can read: one compact line per log instead of the Trainer's dict dumps.

The full metric dicts still go to `report_to` (wandb, trackio, tensorboard...) and `trainer.state.log_history`;
only what the console shows changes. [`ReadableProgressCallback`] keeps the Trainer's tqdm bar and writes each log
above it; [`ReadablePrinterCallback`] sends it to the `rft_trl.progress` logger (with `disable_tqdm=True`).
"""

from __future__ import annotations

import logging
import math
import sys
import time

from transformers.trainer_callback import PrinterCallback, ProgressCallback

__all__ = ["ReadablePrinterCallback", "ReadableProgressCallback", "format_log_line"]


def _number(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.4g}"
    return f"{value:.2e}"


def _section(logs: dict, prefix: str) -> list[str]:
    """The parts of one line, from the metrics under `prefix` (`""` for training, `"eval_"` for evaluation)."""
    parts = []
    reward = logs.get(f"{prefix}reward")
    if isinstance(reward, (int, float)):
        text = f"reward {_number(reward)}"
        if isinstance(logs.get(f"{prefix}reward_std"), (int, float)):
            text += f" ± {_number(logs[f'{prefix}reward_std'])}"
        functions = {
            key[len(f"{prefix}rewards/") : -len("/mean")]: value
            for key, value in logs.items()
            if key.startswith(f"{prefix}rewards/") and key.endswith("/mean")
        }
        if len(functions) > 1:
            text += " (" + ", ".join(f"{name} {_number(value)}" for name, value in functions.items()) + ")"
        parts.append(text)
    for label, key in (
        ("kl", "kl"),
        ("entropy", "entropy"),
        ("len", "completions/mean_length"),
        ("clipped", "clip_ratio/region_mean"),
        ("loss", "loss"),
    ):
        value = logs.get(f"{prefix}{key}")
        if isinstance(value, (int, float)):
            parts.append(f"{label} {_number(value)}")
    failures = logs.get(f"{prefix}rollout/reward_failures") or logs.get(f"{prefix}reward_failures")
    if failures:
        parts.append(f"reward failures {int(failures)}")
    return parts


def format_log_line(
    logs: dict,
    step: int,
    max_steps: int,
    seconds_per_step: float | None = None,
    tokens_per_second: float | None = None,
) -> str:
    """
    One line for a log: a training step's (reward mean ± std and per function, KL, entropy, completion length, clip
    fraction, loss, seconds per step, tokens per second), an evaluation's (`eval` and the same), or any other as
    `key value` pairs.
    """
    where = f"step {step}/{max_steps}" if max_steps > 0 else f"step {step}"
    if any(key.startswith("eval_") for key in logs):
        return " · ".join([f"eval {where}", *_section(logs, "eval_")])
    if "loss" in logs:
        parts = [where, *_section(logs, "")]
        if seconds_per_step is not None:
            parts.append(f"{seconds_per_step:.2f} s/step")
        if tokens_per_second is not None:
            parts.append(f"{tokens_per_second:.0f} tok/s")
        return " · ".join(parts)
    shown = {k: v for k, v in logs.items() if k != "total_flos"}
    return " · ".join([where, *(f"{k} {_number(v) if isinstance(v, float) else v}" for k, v in shown.items())])


class _Pace:
    """Seconds per optimizer step and tokens (TRL's `num_tokens`, prompts and completions) per second between two
    training logs."""

    def __init__(self) -> None:
        self.last: tuple[float, int, float | None] | None = None

    def start(self, step: int, tokens: float) -> None:
        self.last = (time.monotonic(), step, tokens)

    def __call__(self, step: int, logs: dict) -> tuple[float | None, float | None]:
        if "loss" not in logs:
            return None, None
        now, tokens = time.monotonic(), logs.get("num_tokens")
        per_step = per_token = None
        if self.last is not None and step > self.last[1]:
            elapsed = now - self.last[0]
            per_step = elapsed / (step - self.last[1])
            if tokens is not None and self.last[2] is not None and elapsed > 0:
                per_token = (tokens - self.last[2]) / elapsed
        self.last = (now, step, tokens)
        return per_step, per_token


class _ConsoleHandler(logging.StreamHandler):
    """A handler writing to whatever `sys.stdout` is when a line is emitted (a test or a notebook may swap it)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass  # always the current sys.stdout


def progress_logger() -> logging.Logger:
    """
    The `rft_trl.progress` logger the lines go to when no progress bar shows them: INFO to stdout, bare lines, not
    propagated (as transformers configures its own library logger). Reconfigure it with `logging` to redirect them.
    """
    logger = logging.getLogger("rft_trl.progress")
    if not logger.handlers:
        handler = _ConsoleHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


class _ReadableLines:
    """The pace between training logs and the line of each log, for both callbacks."""

    def __init__(self) -> None:
        self._pace = _Pace()

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        self._pace.start(state.global_step, state.num_input_tokens_seen)

    def _line(self, state, logs: dict) -> str:
        return format_log_line(logs, state.global_step, state.max_steps, *self._pace(state.global_step, logs))


class ReadableProgressCallback(_ReadableLines, ProgressCallback):
    """The Trainer's tqdm progress bar, with each log written above it as one readable line."""

    def __init__(self, max_str_len: int = 100):
        ProgressCallback.__init__(self, max_str_len)
        _ReadableLines.__init__(self)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or logs is None:
            return
        if self.training_bar is not None:
            self.training_bar.write(self._line(state, logs))
        else:  # evaluate() outside train()
            progress_logger().info(self._line(state, logs))


class ReadablePrinterCallback(_ReadableLines, PrinterCallback):
    """Each log as one readable line on the `rft_trl.progress` logger (for `disable_tqdm=True`)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_local_process_zero and logs is not None:
            progress_logger().info(self._line(state, logs))


def use_readable_console(trainer) -> None:
    """One readable line per log on the console instead of the Trainer's dict dumps (`report_to` gets the dicts)."""
    for default, readable in (
        (ProgressCallback, ReadableProgressCallback),
        (PrinterCallback, ReadablePrinterCallback),
    ):
        if any(type(callback) is default for callback in trainer.callback_handler.callbacks):
            trainer.remove_callback(default)
            trainer.add_callback(readable)
