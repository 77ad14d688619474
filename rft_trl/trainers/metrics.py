"""Training metrics over micro-batches ([`MetricRecorder`]), rollout metrics merged over rollouts and processes, and
the evaluation metrics of `PPOTrainerVL.evaluate`."""

from __future__ import annotations

import math
from collections import defaultdict

import torch
from accelerate.utils import gather_object

__all__ = [
    "MetricRecorder",
    "eval_metrics",
    "gather_rollout_metrics",
    "merge_rollout_metrics",
    "rollout_metrics",
    "sampled_mask",
    "value_metrics",
]

# Rollout metrics that count things: summed when rollouts (or processes) are merged.
_COUNT_METRICS = (
    "data/skipped",
    "data/repaired",
    "rollout/reward_failures",
    "rollout/reward_abstained",
    "rollout/num_samples",
    "rollout/tokens",
    "rollout/dynamic_sampling/generated_groups",
    "rollout/dynamic_sampling/dropped_groups",
    "rollout/dynamic_sampling/surplus_groups",
)


def merge_rollout_metrics(per_rollout: list[dict[str, float]]) -> dict[str, float]:
    """
    Merge the metrics of several rollouts (or of one rollout's processes): counts summed, minima (`min_*`, `*_min`,
    `*/min`) and maxima (`max_*`, `*_max`, `*/max`) kept, the rest averaged over the rollouts that report them.
    """
    merged: dict[str, list[float]] = defaultdict(list)
    for metrics in per_rollout:
        for name, value in metrics.items():
            merged[name].append(value)
    result = {}
    for name, values in merged.items():
        last = name.rsplit("/", 1)[-1]
        if name.startswith(_COUNT_METRICS):
            result[name] = sum(values)
        elif last == "min" or last.startswith("min_") or last.endswith("_min"):
            result[name] = min(values)
        elif last == "max" or last.startswith("max_") or last.endswith("_max"):
            result[name] = max(values)
        else:
            result[name] = sum(values) / len(values)
    return result


def gather_rollout_metrics(metrics: dict[str, float], num_processes: int) -> dict[str, float]:
    """A rollout's metrics over all processes (every process calls this), merged by [`merge_rollout_metrics`]."""
    if num_processes == 1:
        return dict(metrics)
    return merge_rollout_metrics(gather_object([metrics]))


def eval_metrics(records: list[tuple], prefix: str) -> dict[str, float]:
    """
    Evaluation metrics from `(key, reward, valid, completion length, {function: score})` records of all processes,
    each key (a row index, and the sample number when several completions are sampled per row) counted once.
    """
    unique = list({record[0]: record for record in reversed(records)}.values())
    rewards = torch.tensor([r[1] for r in unique if r[2]], dtype=torch.float64)
    lengths = torch.tensor([r[3] for r in unique], dtype=torch.float64)
    metrics = {
        f"{prefix}_reward": rewards.mean().item() if rewards.numel() else float("nan"),
        f"{prefix}_reward_std": rewards.std().item() if rewards.numel() > 1 else 0.0,
        f"{prefix}_completions/mean_length": lengths.mean().item() if lengths.numel() else float("nan"),
        f"{prefix}_reward_failures": float(sum(not r[2] for r in unique)),
        f"{prefix}_num_samples": float(len(unique)),
    }
    for name in dict.fromkeys(name for record in unique for name in record[4]):
        # A function's scores where it scored (NaN where it failed or did not apply).
        scores = torch.tensor([r[4][name] for r in unique if name in r[4]], dtype=torch.float64)
        scores = scores[scores.isfinite()]
        if scores.numel():
            metrics[f"{prefix}_rewards/{name}/mean"] = scores.mean().item()
            metrics[f"{prefix}_rewards/{name}/std"] = scores.std().item() if scores.numel() > 1 else 0.0
    return metrics


class MetricRecorder:
    """
    The training metrics of one logging interval: each micro-batch's value with the number of tokens it was computed
    over, kept as tensors during the step and read once when logged ([`MetricRecorder.aggregate`]).
    """

    def __init__(self) -> None:
        self.entries: dict[str, list[torch.Tensor]] = defaultdict(list)  # name -> [value, weight] per micro-batch

    def record(self, name: str, value, weight: torch.Tensor | None = None) -> None:
        """Keep a micro-batch's metric, with the number of tokens it was computed over (1 when it is not a mean)."""
        value = torch.as_tensor(value).detach().float()
        weight = torch.ones_like(value) if weight is None else weight.detach().float().to(value.device)
        self.entries[name].append(torch.stack([value, weight]))

    def aggregate(self, device: torch.device | str) -> dict[str, float]:
        """
        The interval's metrics over its micro-batches, and a fresh interval: `*_max` the largest, `*_min` the
        smallest, any other the token-weighted mean. Micro-batches without a token in the loss (every sample
        excluded, e.g. the fillers of a rollout whose bad rows were skipped) count for nothing, and a metric none of
        them had is not logged. This is the one host read, instead of one per micro-batch.
        """
        names = [name for name, entries in self.entries.items() if entries]
        if not names:
            return {}
        reduced = []
        for name in names:
            values, weights = torch.stack([entry.to(device) for entry in self.entries[name]]).T
            present = weights > 0
            if name.endswith("_max"):
                value = torch.where(present, values, -math.inf).max()
            elif name.endswith("_min"):
                value = torch.where(present, values, math.inf).min()
            else:
                value = (torch.where(present, values, 0.0) * weights).sum() / weights.sum().clamp(min=1e-12)
            reduced.append(torch.stack([value, weights.sum()]))
        self.entries.clear()
        return {name: value for name, (value, total) in zip(names, torch.stack(reduced).tolist()) if total > 0}


def sampled_mask(samples: dict) -> torch.Tensor:
    """`[N, A]`: the completion tokens the model sampled (all of them but a multi-turn rollout's tool turns)."""
    if "tool_mask" in samples:
        return samples["action_mask"] & samples["tool_mask"]
    return samples["action_mask"]


def value_metrics(
    values: torch.Tensor, returns: torch.Tensor, action_mask: torch.Tensor, valid: torch.Tensor
) -> dict[str, float]:
    """How well the critic's rollout-time values predict the returns, over the whole rollout (as CleanRL does)."""
    mask = action_mask & valid[:, None].to(action_mask.device)
    returns, values = returns[mask], values[mask]
    metrics = {"train/values": values.mean().item() if values.numel() else float("nan")}
    variance = returns.var() if returns.numel() > 1 else returns.new_zeros(())
    # Undefined when every return is equal (e.g. every sample scored 1): not logged then.
    if variance > 0:
        metrics["train/explained_variance"] = (1 - (returns - values).var() / variance).item()
    return metrics


def rollout_metrics(
    samples: dict, rewards_out, kl_stats: dict, group_size: int, truncated: torch.Tensor
) -> dict[str, float]:
    """The rollout's statistics under TRL's names (`reward`, `completions/*`, `frac_reward_zero_std`), with our
    `rollout/num_samples` and `rollout/kl` (the rollout policy's KL to the reference). `truncated` `[N]`: the samples
    with no EOS within generate_max_len (TRL's clipped completions)."""
    valid = rewards_out.valid
    rewards = rewards_out.rewards[valid]
    lengths = sampled_mask(samples).sum(-1).float()  # [N], on the device: the tokens the model sampled (TRL's)
    terminated = torch.where(truncated, float("nan"), lengths)  # [N]
    # One host read for all length statistics (the rewards live on the host already).
    stats = torch.stack(
        [
            lengths.mean(),
            lengths.min(),
            lengths.max(),
            truncated.float().mean(),
            terminated.nanmean(),
            terminated.nan_to_num(float("inf")).min(),
            terminated.nan_to_num(float("-inf")).max(),
        ]
    ).tolist()
    # TRL logs 0 for the terminated lengths when every completion was cut off.
    stats[4:] = [value if math.isfinite(value) else 0.0 for value in stats[4:]]
    names = ["mean_length", "min_length", "max_length", "clipped_ratio"]
    names += ["mean_terminated_length", "min_terminated_length", "max_terminated_length"]
    metrics = {f"completions/{name}": value for name, value in zip(names, stats)}
    metrics["reward"] = rewards.mean().item() if rewards.numel() else float("nan")
    metrics["reward_std"] = rewards.std().item() if rewards.numel() > 1 else 0.0
    metrics["rollout/num_samples"] = float(valid.numel())
    # Prompt and completion tokens of the rollout (TRL's `num_tokens` accumulates them).
    metrics["rollout/tokens"] = float(samples["attention_mask"].sum())
    # Groups whose valid rewards are all equal give GRPO no signal; their share is worth watching.
    groups = rewards_out.rewards.view(-1, group_size)
    spread = groups.nan_to_num(float("-inf")).amax(-1) - groups.nan_to_num(float("inf")).amin(-1)
    metrics["frac_reward_zero_std"] = (spread == 0).float().mean().item()
    if kl_stats:
        metrics["rollout/kl"] = kl_stats["kl"]
    if "tool_calls" in samples:
        # TRL's tool metrics: calls per completion, and the share of calls that failed.
        calls = float(samples["tool_calls"])
        metrics["tools/call_frequency"] = calls / valid.numel()
        metrics["tools/failure_frequency"] = samples["tool_failures"] / calls if calls else 0.0
    return metrics
