"""
Policy, value and language-model losses, and their aggregation over tokens.

Every loss returns ``(loss, metrics)``: a scalar tensor to back-propagate and a dict of detached scalar tensors
(no device synchronisation until someone reads them). Shapes: ``B`` sequences, ``A`` action tokens.
"""

import math

import torch

from .advantages import masked_mean, masked_var
from .logprobs import log_probs_from_logits

__all__ = [
    "IGNORE_INDEX",
    "IMPORTANCE_SAMPLING_LEVELS",
    "LOSS_AGG_MODES",
    "aggregate_loss",
    "high_entropy_mask",
    "lm_loss",
    "policy_loss",
    "value_loss",
]

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")
# The per-token objective of `policy_loss` (TRL's loss types that are not only an aggregation).
POLICY_SURROGATES = ("clip", "cispo", "sapo", "vespo")
IGNORE_INDEX = -100


def aggregate_loss(
    loss_mat: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean", norm_length: int | None = None
) -> torch.Tensor:
    """
    Reduce a per-token loss to a scalar.

    - ``token-mean``: mean over all valid tokens of the batch (long sequences weigh more; DAPO,
      https://arxiv.org/abs/2503.14476).
    - ``seq-mean-token-mean``: mean over tokens within each sequence, then over sequences (GRPO's original form).
    - ``seq-mean-token-sum``: sum over tokens within each sequence, then mean over sequences.
    - ``seq-mean-token-sum-norm``: sum over tokens divided by the constant ``norm_length``, then mean over
      sequences (Dr. GRPO, https://arxiv.org/abs/2503.20783): no length-dependent normaliser.

    Sequences without any valid token (e.g. dropped samples) are left out of the mean over sequences.

    Args:
        loss_mat (`torch.Tensor` of shape `[B, A]`):
            Per-token losses; entries outside `mask` are never read (they may be `inf` or `nan`).
        mask (`torch.Tensor` of shape `[B, A]`):
            Tokens that count (boolean or 0/1).
        mode (`str`, *optional*, defaults to `"token-mean"`):
            One of `LOSS_AGG_MODES`.
        norm_length (`int`, *optional*):
            The constant of `"seq-mean-token-sum-norm"` (typically the maximum completion length); required by
            that mode only.

    Returns:
        `torch.Tensor`: scalar loss.
    """
    if mode not in LOSS_AGG_MODES:
        raise ValueError(f"Unknown loss_agg_mode {mode!r}; expected one of {LOSS_AGG_MODES}.")
    if (norm_length is not None) != (mode == "seq-mean-token-sum-norm"):
        raise ValueError(f"norm_length must be given for 'seq-mean-token-sum-norm' and only for it (mode={mode!r}).")
    mask = mask.bool()
    if mode == "token-mean":
        return masked_mean(loss_mat, mask)
    token_sum = torch.where(mask, loss_mat, 0).sum(-1)  # [B]
    token_count = mask.sum(-1)  # [B]
    if mode == "seq-mean-token-mean":
        per_seq = token_sum / token_count.clamp(min=1)
    elif mode == "seq-mean-token-sum":
        per_seq = token_sum
    else:
        per_seq = token_sum / norm_length
    return masked_mean(per_seq, token_count > 0)


def _check_policy_args(eps_clip_low, eps_clip_high, dual_clip, importance_sampling_level, use_cpg_loss):
    if not 0 <= eps_clip_low < 1:
        raise ValueError(f"eps_clip_low must be in [0, 1), got {eps_clip_low}.")
    if eps_clip_high < 0:
        raise ValueError(f"eps_clip_high must be >= 0, got {eps_clip_high}.")
    if dual_clip is not None and dual_clip <= 1:
        raise ValueError(f"dual_clip must be > 1 (it bounds the loss at dual_clip * |A|), got {dual_clip}.")
    if importance_sampling_level not in IMPORTANCE_SAMPLING_LEVELS:
        raise ValueError(
            f"Unknown importance_sampling_level {importance_sampling_level!r}; expected one of "
            f"{IMPORTANCE_SAMPLING_LEVELS}."
        )
    if use_cpg_loss and (dual_clip is not None or importance_sampling_level != "token"):
        raise ValueError(
            "use_cpg_loss clips the token log-ratio itself: it combines with neither dual_clip nor "
            "importance_sampling_level='sequence'."
        )


def policy_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor | None = None,
    eps_clip_low: float = 0.2,
    eps_clip_high: float | None = None,
    dual_clip: float | None = None,
    importance_sampling_level: str = "token",
    use_cpg_loss: bool = False,
    entropy_mask: torch.Tensor | None = None,
    loss_agg_mode: str = "token-mean",
    norm_length: int | None = None,
    ratio_cap: float | None = None,
    sequence_weight: torch.Tensor | None = None,
    token_weight: torch.Tensor | None = None,
    surrogate: str = "clip",
    sapo_temperatures: tuple[float, float] = (1.0, 1.05),
    vespo_gamma: tuple[float, float, float, float] = (2.0, 3.0, 3.0, 2.0),
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """
    Clipped policy-gradient loss: PPO and its variants, per token, then aggregated.

    With ``r = exp(log_probs - old_log_probs)`` and advantage ``A``:

    - PPO (https://arxiv.org/abs/1707.06347): ``-min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)``; a larger
      ``eps_clip_high`` is DAPO's clip-higher (https://arxiv.org/abs/2503.14476).
    - ``dual_clip = c``: for ``A < 0`` the loss is further capped at ``-c A`` (Ye et al. 2020,
      https://arxiv.org/abs/1912.09729), so a huge ratio on a bad token cannot dominate.
    - ``importance_sampling_level="sequence"``: GSPO (https://arxiv.org/abs/2507.18071). Every token of sequence
      ``i`` uses the sequence ratio ``s_i = exp(mean_t log r_it)``, written per token as
      ``exp(log pi_t - sg[log pi_t] + sg[log s_i])`` so that the value is ``s_i`` and the gradient is
      ``s_i * grad log pi_t`` (``sg`` = stop-gradient); clipped like the token ratio (GSPO uses eps ~ 3e-4, 4e-4).
    - ``use_cpg_loss``: clipped policy gradient as in LightRFT's ``PolicyLoss(use_cpg_loss=True)`` (CPGD,
      https://arxiv.org/abs/2505.12504): ``-A * clip_A(log r)`` where the log-ratio is capped at
      ``log(1 + eps_high)`` when ``A > 0`` and floored at ``log(1 - eps_low)`` otherwise; the gradient is
      ``-A grad log pi`` inside the bound and 0 beyond it. LightRFT writes the same objective on
      ``log_probs`` (``-A * clip(log_probs, ..., old_log_probs + log(1 +/- eps))``); the two differ by the constant
      ``-A * old_log_probs``, so the gradients are equal and this value is 0 on-policy.
    - ``surrogate="cispo"`` (MiniMax-M1, https://arxiv.org/abs/2506.13585): ``-sg[min(r, eps_clip_high)] A log pi``:
      the importance weight is clipped (at the absolute value ``eps_clip_high``, TRL's ``epsilon_high``) and
      detached, so every token keeps a gradient.
    - ``surrogate="sapo"`` (https://arxiv.org/abs/2511.20347): ``-sigmoid(tau (r - 1)) * 4 / tau * A``, a soft
      trust region with ``tau = sapo_temperatures[0]`` for ``A > 0`` and ``[1]`` otherwise.
    - ``surrogate="vespo"`` (https://arxiv.org/abs/2602.10693): ``-sg[phi(w)] A log pi`` with the sequence ratio
      ``w = exp(sum_t log r_t)`` and ``phi(w) = exp(lam + k log w - lam w)`` (``phi(1) = 1``), where
      ``(k, lam) = vespo_gamma[:2]`` for ``A >= 0`` and ``vespo_gamma[2:]`` otherwise.

    Args:
        log_probs (`torch.Tensor` of shape `[B, A]`):
            Log-probabilities of the actions under the current policy (differentiable).
        old_log_probs (`torch.Tensor` of shape `[B, A]`):
            Log-probabilities under the policy that sampled them.
        advantages (`torch.Tensor` of shape `[B, A]` or `[B]`):
            Advantages; a `[B]` tensor applies to every token of its row.
        mask (`torch.Tensor` of shape `[B, A]`, *optional*):
            Action tokens that count; `None` means all.
        eps_clip_low (`float`, *optional*, defaults to `0.2`):
            Lower clip range: the ratio is clipped at `1 - eps_clip_low`.
        eps_clip_high (`float`, *optional*):
            Upper clip range (`1 + eps_clip_high`); defaults to `eps_clip_low`.
        dual_clip (`float`, *optional*):
            Dual-clip constant `c > 1` for negative advantages; `None` disables it.
        importance_sampling_level (`str`, *optional*, defaults to `"token"`):
            `"token"` (PPO) or `"sequence"` (GSPO).
        use_cpg_loss (`bool`, *optional*, defaults to `False`):
            Use the clipped policy-gradient (CPGD) objective instead of the ratio objective.
        entropy_mask (`torch.Tensor` of shape `[B, A]`, *optional*):
            Tokens allowed to carry gradient (see [`high_entropy_mask`]); combined with `mask` for the loss.
            Metrics are computed on `mask`.
        loss_agg_mode (`str`, *optional*, defaults to `"token-mean"`):
            One of `LOSS_AGG_MODES` (see [`aggregate_loss`]).
        norm_length (`int`, *optional*):
            Constant of `"seq-mean-token-sum-norm"`.
        ratio_cap (`float`, *optional*):
            Two-sided clipping (TRL's `delta`, from INTELLECT-2): the ratio of the unclipped term is capped at this
            value (> 1 + `eps_clip_high`); `None` disables it.
        sequence_weight (`torch.Tensor` of shape `[B, 1]`, *optional*):
            Multiplies each sequence's token losses before aggregation, leaving the normaliser unchanged (TRL's
            off-policy sequence mask: 0 drops a sequence's contribution).
        token_weight (`torch.Tensor` of shape `[B, A]`, *optional*):
            Multiplies each token's loss before aggregation, leaving the normaliser unchanged; not differentiated
            (TRL's `importance_sampling_ratio` of vLLM rollouts, see [`rollout_importance_weights`]).
        surrogate (`str`, *optional*, defaults to `"clip"`):
            One of `POLICY_SURROGATES`: the clipped ratio objective above, or CISPO, SAPO, VESPO.
        sapo_temperatures (`tuple[float, float]`, *optional*, defaults to `(1.0, 1.05)`):
            SAPO's temperatures for positive and non-positive advantages.
        vespo_gamma (`tuple[float, float, float, float]`, *optional*, defaults to `(2.0, 3.0, 3.0, 2.0)`):
            VESPO's `(k_pos, lambda_pos, k_neg, lambda_neg)`.

    Returns:
        `tuple[torch.Tensor, dict[str, torch.Tensor]]`: the scalar loss and metrics over the `mask` tokens:
        `clipfrac` (fraction where the clip is active), `dual_clipfrac`, `approx_kl` (k3 estimate of
        KL(old || new): mean of `r - 1 - log r` over token ratios), `ratio_mean`, `ratio_max`, `ratio_min` (of the
        ratio the objective uses: the sequence ratio under GSPO) and `entropy_mask_frac` (fraction of tokens kept by
        `entropy_mask`; 1 without it).
    """
    eps_clip_high = eps_clip_low if eps_clip_high is None else eps_clip_high
    _check_policy_args(eps_clip_low, eps_clip_high, dual_clip, importance_sampling_level, use_cpg_loss)
    mask = torch.ones_like(log_probs, dtype=torch.bool) if mask is None else mask.bool()
    # At least float32: a bf16 ratio moves in 0.4 % steps, the size of the clip decisions it feeds.
    dtype = torch.promote_types(torch.promote_types(log_probs.dtype, old_log_probs.dtype), torch.float32)
    log_probs, old_log_probs = log_probs.to(dtype), old_log_probs.to(dtype)
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    advantages = advantages.to(dtype).expand_as(log_probs)

    # Masked first: padded log-probs may be -inf, and exp of their difference would poison the gradients.
    log_ratio = torch.where(mask, log_probs - old_log_probs, 0)  # [B, A]
    if importance_sampling_level == "sequence":
        seq_log_ratio = masked_mean(log_ratio, mask, dim=-1).unsqueeze(-1)  # [B, 1]
        log_ratio = log_probs - log_probs.detach() + seq_log_ratio.detach()
        log_ratio = torch.where(mask, log_ratio, 0)

    if surrogate not in POLICY_SURROGATES:
        raise ValueError(f"Unknown surrogate {surrogate!r}; expected one of {POLICY_SURROGATES}.")
    if surrogate != "clip" and (use_cpg_loss or dual_clip is not None or ratio_cap is not None):
        raise ValueError(
            f"surrogate={surrogate!r} has its own clipping: use_cpg_loss, dual_clip and ratio_cap apply to 'clip'."
        )
    if surrogate != "clip":
        ratio = log_ratio.exp()
        loss_mat, clipped = _other_surrogate(
            surrogate, ratio, log_probs, old_log_probs, advantages, mask, eps_clip_high, sapo_temperatures, vespo_gamma
        )
        dual_clipped = torch.zeros_like(clipped)
    elif use_cpg_loss:
        upper, lower = math.log1p(eps_clip_high), math.log1p(-eps_clip_low)
        positive = advantages > 0
        clipped_log_ratio = torch.where(positive, log_ratio.clamp(max=upper), log_ratio.clamp(min=lower))
        loss_mat = -advantages * clipped_log_ratio
        clipped = torch.where(positive, log_ratio > upper, log_ratio < lower) & (advantages != 0)
        dual_clipped = torch.zeros_like(clipped)
        ratio = log_ratio.exp()
    else:
        ratio = log_ratio.exp()
        # Two-sided clipping (TRL's `delta`): the unclipped term's ratio is capped as well, which bounds the loss of
        # a token with a negative advantage whose ratio has grown large.
        capped = ratio if ratio_cap is None else ratio.clamp(max=ratio_cap)
        surrogate = capped * advantages
        clipped_surrogate = ratio.clamp(1 - eps_clip_low, 1 + eps_clip_high) * advantages
        loss_mat = -torch.min(surrogate, clipped_surrogate)
        clipped = clipped_surrogate < surrogate
        dual_clipped = torch.zeros_like(clipped)
        if dual_clip is not None:
            cap = -dual_clip * advantages
            dual_clipped = (advantages < 0) & (loss_mat > cap)
            loss_mat = torch.where(dual_clipped, cap, loss_mat)

    loss_mask = mask if entropy_mask is None else mask & entropy_mask.bool()
    if sequence_weight is not None:
        loss_mat = loss_mat * sequence_weight.to(loss_mat.dtype)
    if token_weight is not None:
        loss_mat = loss_mat * token_weight.detach().to(loss_mat.dtype)
    loss = aggregate_loss(loss_mat, loss_mask, loss_agg_mode, norm_length)

    with torch.no_grad():
        token_log_ratio = torch.where(mask, log_probs - old_log_probs, 0)
        metrics = {
            "clipfrac": masked_mean(clipped.float(), mask),
            "dual_clipfrac": masked_mean(dual_clipped.float(), mask),
            "approx_kl": masked_mean(torch.expm1(token_log_ratio) - token_log_ratio, mask),
            "ratio_mean": masked_mean(ratio, mask),
            "ratio_max": torch.where(mask, ratio, -math.inf).max(),
            "ratio_min": torch.where(mask, ratio, math.inf).min(),
            "entropy_mask_frac": masked_mean(loss_mask.float(), mask),
        }
        # TRL's clip ratios: tokens whose ratio left the trust region on the side that stops their gradient.
        low = (ratio < 1 - eps_clip_low) & (advantages < 0)
        high = (ratio > 1 + eps_clip_high) & (advantages > 0)
        metrics["clip_ratio/low_mean"] = masked_mean(low.float(), mask)
        metrics["clip_ratio/low_min"] = metrics["clip_ratio/low_mean"]
        metrics["clip_ratio/high_mean"] = masked_mean(high.float(), mask)
        metrics["clip_ratio/high_max"] = metrics["clip_ratio/high_mean"]
        metrics["clip_ratio/region_mean"] = masked_mean((low | high).float(), mask)
    return loss, metrics


def _other_surrogate(
    surrogate: str,
    ratio: torch.Tensor,
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cap: float,
    sapo_temperatures: tuple[float, float],
    vespo_gamma: tuple[float, float, float, float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-token loss `[B, A]` of CISPO, SAPO or VESPO, and where its clipping acts (see [`policy_loss`])."""
    advantages = advantages.expand_as(ratio)
    if surrogate == "cispo":
        loss_mat = -ratio.clamp(max=cap).detach() * advantages * log_probs
        return loss_mat, ratio > cap
    if surrogate == "sapo":
        positive_tau, negative_tau = sapo_temperatures
        tau = torch.where(advantages > 0, positive_tau, negative_tau)
        return -torch.sigmoid(tau * (ratio - 1)) * 4 / tau * advantages, torch.zeros_like(mask)
    k_pos, lambda_pos, k_neg, lambda_neg = vespo_gamma
    with torch.no_grad():
        # The sequence's log ratio, summed over its tokens, in log space (w can be astronomically far from 1).
        token_log_ratio = torch.where(mask, (log_probs - old_log_probs).clamp(-20.0, 20.0), 0)
        log_w = token_log_ratio.sum(-1, keepdim=True).clamp(math.log(1e-8), 20.0)  # [B, 1]
        sequence_advantage = torch.where(mask, advantages, 0).sum(-1, keepdim=True)  # [B, 1], its sign
        nonnegative = sequence_advantage >= 0
        k = torch.where(nonnegative, k_pos, k_neg)
        lam = torch.where(nonnegative, lambda_pos, lambda_neg).clamp(min=1e-4)
        phi = (lam + k * log_w - lam * log_w.exp()).exp().nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)  # [B, 1]
    return -phi * advantages * log_probs, torch.zeros_like(mask)


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor | None = None,
    value_clip: float | None = None,
    loss_agg_mode: str = "token-mean",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """
    PPO value loss ``0.5 * (V - R)^2``, or with ``value_clip = c`` the pessimistic
    ``0.5 * max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)``.

    Args:
        values (`torch.Tensor` of shape `[B, A]`):
            Current critic values (differentiable).
        old_values (`torch.Tensor` of shape `[B, A]`):
            Values at rollout time.
        returns (`torch.Tensor` of shape `[B, A]`):
            Targets (e.g. GAE returns).
        mask (`torch.Tensor` of shape `[B, A]`, *optional*):
            Action tokens that count; `None` means all.
        value_clip (`float`, *optional*):
            Clip range of the value update; `None` disables clipping.
        loss_agg_mode (`str`, *optional*, defaults to `"token-mean"`):
            One of `LOSS_AGG_MODES` except `"seq-mean-token-sum-norm"`.

    Returns:
        `tuple[torch.Tensor, dict[str, torch.Tensor]]`: the scalar loss and metrics over the `mask` tokens:
        `vf_clipfrac` (fraction where the clipped term is the larger), `values_mean` and `explained_variance`
        (``1 - Var(R - V) / Var(R)``: 1 is a perfect critic, 0 no better than the mean return).
    """
    if value_clip is not None and value_clip <= 0:
        raise ValueError(f"value_clip must be > 0 or None, got {value_clip}.")
    mask = torch.ones_like(values, dtype=torch.bool) if mask is None else mask.bool()
    dtype = torch.promote_types(values.dtype, torch.float32)
    values, old_values, returns = values.to(dtype), old_values.to(dtype), returns.to(dtype)
    unclipped = (values - returns).square()
    if value_clip is None:
        loss_mat = unclipped
        clipped_larger = torch.zeros_like(mask)
    else:
        values_clipped = old_values + (values - old_values).clamp(-value_clip, value_clip)
        clipped = (values_clipped - returns).square()
        loss_mat = torch.max(unclipped, clipped)
        clipped_larger = clipped > unclipped
    loss = 0.5 * aggregate_loss(loss_mat, mask, loss_agg_mode)
    with torch.no_grad():
        metrics = {
            "vf_clipfrac": masked_mean(clipped_larger.float(), mask),
            "values_mean": masked_mean(values, mask),
            "explained_variance": 1 - masked_var(returns - values, mask) / masked_var(returns, mask),
        }
    return loss, metrics


def lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """
    Next-token cross-entropy: position ``t`` of ``logits`` predicts ``labels[t + 1]``, averaged over the labels
    that are not ``ignore_index``.

    Computed with [`rft_trl.core.log_probs_from_logits`], so the float32 log-softmax is never materialised. With
    no label to predict the loss is 0 (not ``nan``).

    Args:
        logits (`torch.Tensor` of shape `[..., L, V]`):
            Model logits over the full sequence.
        labels (`torch.Tensor` of shape `[..., L]`):
            Token ids aligned with the input (not shifted), `ignore_index` where no loss is wanted.
        ignore_index (`int`, *optional*, defaults to `-100`):
            Label value to skip (the Hugging Face convention).

    Returns:
        `tuple[torch.Tensor, dict[str, torch.Tensor]]`: the scalar loss and `{"num_tokens": ...}`.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"labels must have shape logits.shape[:-1] = {tuple(logits.shape[:-1])}, got {tuple(labels.shape)}."
        )
    targets = labels[..., 1:]
    keep = targets != ignore_index
    # Ignored labels are replaced by a valid id only to be gathered; the mask drops them.
    log_probs = log_probs_from_logits(logits[..., :-1, :], torch.where(keep, targets, 0))
    loss = -masked_mean(log_probs, keep)
    return loss, {"num_tokens": keep.sum().detach()}


def high_entropy_mask(
    entropy: torch.Tensor, mask: torch.Tensor, threshold: float, population: torch.Tensor | None = None
) -> torch.Tensor:
    """
    TRL's top-entropy token selection (`top_entropy_quantile`, the "80/20" forking-token rule of Wang et al. 2025,
    https://arxiv.org/abs/2506.01939): the valid tokens whose entropy is at least the `threshold` quantile of the
    `population` of entropies. Equal entropies at the cutoff are all kept, as in TRL.

    Args:
        entropy (`torch.Tensor` of shape `[B, A]`):
            Per-token entropy of the policy (see [`rft_trl.core.entropy_from_logits`]).
        mask (`torch.Tensor` of shape `[B, A]`):
            Valid action tokens.
        threshold (`float`):
            The quantile, in `[0, 1]`: `1 - top_entropy_quantile` keeps that top fraction.
        population (`torch.Tensor` of shape `[N]`, *optional*):
            The entropies the quantile is taken over: the valid tokens of every process, so that all cut at the same
            entropy. Defaults to the valid tokens of `entropy`.

    Returns:
        `torch.BoolTensor` of shape `[B, A]`, inside `mask`; all `False` when the population is empty.
    """
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}.")
    mask = mask.bool()
    entropy = entropy.detach()
    population = entropy[mask].float() if population is None else population.detach().float()  # [N]
    if population.numel() == 0:
        return torch.zeros_like(mask)
    cutoff = torch.quantile(population, threshold)
    return (entropy >= cutoff) & mask
