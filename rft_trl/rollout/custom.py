"""
TRL's experimental `rollout_func`: a user function that generates a rollout itself (an external agent framework, an
environment server) and hands back token ids.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .engine import Generation, generation_from_ids

__all__ = ["run_rollout_func"]

REQUIRED = ("prompt_ids", "completion_ids", "logprobs")


def run_rollout_func(
    rollout_func: Callable, rows: list[dict], n: int, pad_token_id: int
) -> tuple[Generation, list, dict[str, list[Any]]]:
    """
    Call `rollout_func` with each sample's prompt (each row's `n` times, prompt-major). It returns `prompt_ids`,
    `completion_ids` and `logprobs` per sample, and optionally `env_mask` (TRL's: 1 on the completion ids the model
    sampled, 0 on those an environment inserted, which are never trained on) and fields every reward function
    receives (a list, one value per sample, or one value for all).

    Returns:
        `tuple`: the [`Generation`] (completions kept whole; `tool_mask` from `env_mask`), each sample's prompt, and
        the columns reward functions receive (the rows' own but `prompt`, the returned fields, `completion_ids`).
    """
    samples = [row for row in rows for _ in range(n)]
    prompts = [row["prompt"] for row in samples]
    output = rollout_func(prompts)
    missing = sorted(set(REQUIRED) - set(output))
    if missing:
        raise ValueError(f"rollout_func must return keys {missing} in its output dict.")
    extra = {name: value for name, value in output.items() if name not in REQUIRED}
    env_mask = extra.pop("env_mask", None)
    for name in (*REQUIRED, "env_mask"):
        value = env_mask if name == "env_mask" else output[name]
        if value is not None and len(value) != len(samples):
            raise ValueError(
                f"rollout_func returned {len(value)} {name} for {len(samples)} samples ({len(rows)} prompts x {n}): "
                "one per sample."
            )
    generation = generation_from_ids(
        [list(ids) for ids in output["prompt_ids"]],
        [list(ids) for ids in output["completion_ids"]],
        pad_token_id,
        tool_masks=env_mask,
        log_probs=output["logprobs"],
    )
    columns = {name: [row.get(name) for row in samples] for name in dict.fromkeys(k for row in samples for k in row)}
    columns.pop("prompt")
    for name, values in extra.items():  # TRL's: per-sample lists, or one value for every sample
        columns[name] = values if isinstance(values, list) else [values] * len(samples)
    columns["completion_ids"] = [list(ids) for ids in output["completion_ids"]]
    return generation, prompts, columns
