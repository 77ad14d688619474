"""
Rollout/train mismatch: how far the rollout engine's sampling distribution is from the trainer's, and its correction.

A rollout engine such as vLLM samples with its own kernels (and, in low precision, its own rounding), so the
per-token log-probs it reports, `log q`, differ from the trainer's recomputation on the same tokens, `log p`. The
update then learns from samples of `q` as if they came from `p`. Truncated importance sampling (TIS,
https://fengyao.notion.site/off-policy-rl) weighs each token's loss by `p / q`, bounded, under TRL's names and
semantics (`vllm_importance_sampling_mode`):

- `token_truncate`: per token, `clamp(p / q, clip_min, clip_max)`;
- `token_mask`: per token, `p / q`, or 0 outside `[clip_min, clip_max]`;
- `sequence_truncate`: per sequence, `clamp(prod_t p_t / q_t, clip_min, clip_max)`, applied to each of its tokens;
- `sequence_mask`: per sequence, `prod_t p_t / q_t`, or 0 (the sequence dropped) outside `[clip_min, clip_max]`.

A token the engine could not score (NaN) counts as a ratio of 1, as in TRL.
"""

from __future__ import annotations

import math

import torch

IMPORTANCE_SAMPLING_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


def rollout_importance_weights(
    log_probs: torch.Tensor,
    rollout_log_probs: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "sequence_mask",
    clip_min: float | None = None,
    clip_max: float | None = 3.0,
) -> torch.Tensor:
    """
    Truncated importance-sampling weights of the rollout engine's samples (see the module docstring).

    Args:
        log_probs (`torch.Tensor` of shape `[B, A]`):
            The trainer's log-probs of the sampled tokens under the rollout's weights.
        rollout_log_probs (`torch.Tensor` of shape `[B, A]`):
            The engine's log-probs of the same tokens (NaN where it gave none).
        mask (`torch.Tensor` of shape `[B, A]`):
            The completion tokens.
        mode (`str`, *optional*, defaults to `"sequence_mask"`):
            One of `IMPORTANCE_SAMPLING_MODES`.
        clip_min (`float`, *optional*):
            Lower bound `C_min`; `None` for none.
        clip_max (`float`, *optional*, defaults to `3.0`):
            Upper bound `C_max`; `None` for none.

    Returns:
        `torch.Tensor` of shape `[B, A]`: the weight of each token (a sequence mode repeats its sequence's weight on
        every token), 0 outside `mask`.
    """
    if mode not in IMPORTANCE_SAMPLING_MODES:
        raise ValueError(f"Unknown importance sampling mode {mode!r}; expected one of {IMPORTANCE_SAMPLING_MODES}.")
    mask = mask.bool()
    log_ratio = torch.where(mask, log_probs.double() - rollout_log_probs.double(), 0.0).nan_to_num(nan=0.0)
    if mode.startswith("sequence"):
        log_ratio = log_ratio.sum(-1, keepdim=True)  # [B, 1]
    ratio = log_ratio.exp()
    if mode.endswith("truncate"):
        if clip_min is not None or clip_max is not None:
            ratio = ratio.clamp(min=clip_min, max=clip_max)
    else:
        low = -math.inf if clip_min is None else clip_min
        high = math.inf if clip_max is None else clip_max
        ratio = ratio.masked_fill((ratio < low) | (ratio > high), 0.0)
    return torch.where(mask, ratio.expand_as(log_probs), 0.0).to(log_probs.dtype)


def rollout_mismatch_metrics(
    log_probs: torch.Tensor,
    rollout_log_probs: torch.Tensor,
    mask: torch.Tensor,
    weights: torch.Tensor | None,
    mode: str,
) -> dict[str, float]:
    """
    How far the engine's log-probs are from the trainer's, under TRL's metric names.

    - `sampling/sampling_logp_difference/mean`, `/max`: mean and max of `|log p - log q|` over the scored tokens;
    - `sampling/kl`: the k3 estimate of KL(q || p) from the engine's samples, mean over the scored tokens of
      `r - 1 - log r` with `r = p / q`;
    - with `weights`, `sampling/importance_sampling_ratio/min`, `/mean`, `/max`: of the per-token weights (token
      modes) or of the per-sequence weights (sequence modes).

    Args:
        log_probs, rollout_log_probs, mask (`torch.Tensor` of shape `[B, A]`): as in [`rollout_importance_weights`].
        weights (`torch.Tensor` of shape `[B, A]`, *optional*): its output, when the correction is applied.
        mode (`str`): the importance sampling mode, which says whether `weights` are per token or per sequence.
    """
    mask = mask.bool()
    scored = mask & ~rollout_log_probs.isnan()
    delta = (log_probs.double() - rollout_log_probs.double())[scored]
    metrics = {
        "sampling/sampling_logp_difference/mean": delta.abs().mean().item() if delta.numel() else 0.0,
        "sampling/sampling_logp_difference/max": delta.abs().max().item() if delta.numel() else 0.0,
        "sampling/kl": (torch.expm1(delta) - delta).mean().item() if delta.numel() else 0.0,
    }
    if weights is not None:
        if mode.startswith("sequence"):
            rows = mask.any(-1)
            first = mask.float().argmax(-1, keepdim=True)  # each sequence's weight sits on all its tokens
            values = weights.gather(-1, first).squeeze(-1)[rows]
        else:
            values = weights[mask]
        values = values.double()
        empty = values.numel() == 0
        metrics["sampling/importance_sampling_ratio/min"] = 0.0 if empty else values.min().item()
        metrics["sampling/importance_sampling_ratio/mean"] = 0.0 if empty else values.mean().item()
        metrics["sampling/importance_sampling_ratio/max"] = 0.0 if empty else values.max().item()
    return metrics
