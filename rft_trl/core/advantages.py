"""
Masked statistics and advantage estimators.

Shapes: ``B`` sequences (prompts x ``group_size`` completions, grouped contiguously: rows ``[g * k, (g + 1) * k)``
share a prompt), ``A`` action (completion) tokens per row. ``action_mask`` ``[B, A]`` marks real action tokens;
``valid`` ``[B]`` marks samples to learn from. A sample whose reward could not be computed (``valid`` False) is
left out of every group mean, group standard deviation and whitening statistic, and gets advantage 0 and return 0
at every token; callers should also drop it from their loss masks.

Every estimator first turns sequence scores ``[B]`` into per-token rewards ``[B, A]`` (the score on the last
action token, minus an optional per-token KL penalty), then into advantages:

==========================  =========================================================================
``gae``                     generalised advantage estimation with a critic (https://arxiv.org/abs/1506.02438)
``group_norm``              GRPO: ``(r - mean_g) / (std_g + eps)`` (https://arxiv.org/abs/2402.03300)
``dr_grpo``                 Dr. GRPO: ``r - mean_g``, no std (https://arxiv.org/abs/2503.20783)
``rloo``                    leave-one-out: ``r_i - mean of the other k - 1`` (https://arxiv.org/abs/2402.14740)
``reinforce++``             discounted return of the KL-penalised rewards, whitened over the batch
                            (https://arxiv.org/abs/2501.03262)
``reinforce++-baseline``    group mean subtracted from the score first, then as ``reinforce++``
==========================  =========================================================================
"""

import torch

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "compute_advantages",
    "compute_discounted_returns",
    "compute_gae",
    "group_centered_scores",
    "group_norm_scores",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "rloo_scores",
    "scores_to_token_rewards",
]

ADVANTAGE_ESTIMATORS = ("gae", "group_norm", "dr_grpo", "rloo", "reinforce++", "reinforce++-baseline")


def masked_mean(tensor: torch.Tensor, mask: torch.Tensor | None, dim: int | None = None) -> torch.Tensor:
    """
    Mean of ``tensor`` over the entries where ``mask`` is true.

    Masked-out entries are never read into the sum (they may hold ``inf`` or ``nan``, e.g. padded log-probs). A
    slice with no valid entry has mean 0 rather than ``nan``.

    Args:
        tensor (`torch.Tensor`):
            Values, e.g. `[B, A]`.
        mask (`torch.Tensor` or `None`):
            Boolean or 0/1 tensor of the same shape; `None` means every entry counts.
        dim (`int`, *optional*):
            Dimension to reduce; `None` reduces over all entries.

    Returns:
        `torch.Tensor`: the mean, with `dim` removed (a scalar when `dim` is `None`).
    """
    if mask is None:
        return tensor.mean() if dim is None else tensor.mean(dim)
    mask = mask.bool().expand_as(tensor)
    kept = torch.where(mask, tensor, 0)
    total = kept.sum() if dim is None else kept.sum(dim)
    count = mask.sum() if dim is None else mask.sum(dim)
    return total / count.clamp(min=1)


def masked_var(
    tensor: torch.Tensor, mask: torch.Tensor | None, dim: int | None = None, unbiased: bool = True
) -> torch.Tensor:
    """
    Variance of ``tensor`` over the entries where ``mask`` is true.

    Args:
        tensor (`torch.Tensor`):
            Values.
        mask (`torch.Tensor` or `None`):
            Boolean or 0/1 tensor of the same shape; `None` means every entry counts.
        dim (`int`, *optional*):
            Dimension to reduce; `None` reduces over all entries.
        unbiased (`bool`, *optional*, defaults to `True`):
            Divide by `n - 1` (Bessel's correction) instead of `n`. A slice with a single valid entry has
            variance 0 either way.

    Returns:
        `torch.Tensor`: the variance, with `dim` removed (a scalar when `dim` is `None`).
    """
    mask = torch.ones_like(tensor, dtype=torch.bool) if mask is None else mask.bool().expand_as(tensor)
    # Zeroing masked entries first keeps an inf there from turning the gradient of the mean into nan.
    tensor = torch.where(mask, tensor, 0)
    mean = masked_mean(tensor, mask, dim)
    centered = tensor - (mean if dim is None else mean.unsqueeze(dim))
    sq = torch.where(mask, centered.square(), 0)
    total = sq.sum() if dim is None else sq.sum(dim)
    count = mask.sum() if dim is None else mask.sum(dim)
    return total / (count - 1 if unbiased else count).clamp(min=1)


def masked_whiten(
    values: torch.Tensor, mask: torch.Tensor | None, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """
    ``(values - mean) / (std + eps)`` with mean and (unbiased) standard deviation over the valid entries.

    Args:
        values (`torch.Tensor`):
            Values, e.g. advantages `[B, A]`.
        mask (`torch.Tensor` or `None`):
            Boolean or 0/1 tensor of the same shape; masked-out entries are excluded from the statistics and
            are 0 in the result. `None` means every entry counts.
        shift_mean (`bool`, *optional*, defaults to `True`):
            Subtract the mean; when `False` only the scale is normalised (the mean is added back).
        eps (`float`, *optional*, defaults to `1e-8`):
            Added to the standard deviation so that constant values do not divide by zero.

    Returns:
        `torch.Tensor`: whitened values, same shape as `values`.
    """
    mean = masked_mean(values, mask)
    std = masked_var(values, mask).sqrt()
    whitened = (values - mean) / (std + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened if mask is None else torch.where(mask.bool(), whitened, 0)


def _check_valid(valid: torch.Tensor | None, batch_size: int, device: torch.device) -> torch.Tensor:
    if valid is None:
        return torch.ones(batch_size, dtype=torch.bool, device=device)
    if valid.shape != (batch_size,):
        raise ValueError(f"valid must have shape [B] = ({batch_size},), got {tuple(valid.shape)}.")
    return valid.bool()


def _grouped(scores: torch.Tensor, group_size: int, valid: torch.Tensor | None):
    """``scores`` and ``valid`` as ``[B / k, k]`` groups, with the number of valid members ``[B / k, 1]``."""
    if scores.dim() != 1:
        raise ValueError(f"scores must have shape [B], got {tuple(scores.shape)}.")
    if group_size < 1 or scores.shape[0] % group_size != 0:
        raise ValueError(
            f"The batch size ({scores.shape[0]}) must be a positive multiple of group_size ({group_size}): "
            "completions of one prompt must be contiguous rows."
        )
    valid = _check_valid(valid, scores.shape[0], scores.device).view(-1, group_size)  # [G, k]
    grouped = scores.view(-1, group_size)  # [G, k]
    count = valid.sum(-1, keepdim=True)  # [G, 1]
    return grouped, valid, count


def normalize_then_sum_scores(
    components: torch.Tensor, weights: torch.Tensor, group_size: int, eps: float = 1e-4
) -> torch.Tensor:
    """
    TRL's ``multi_objective_aggregation="normalize_then_sum"`` (GDPO), first step: each reward function's scores
    normalised within each group, ``(x - mean_g) / (std_g + eps)`` (unbiased std, over the samples the function
    scored; 0 for a group of one), then weighted and summed. The result still needs the batch normalisation.

    Args:
        components (`torch.Tensor` of shape `[B, K]`):
            The raw scores of the `K` reward functions, NaN where a function did not score a sample (it returned None
            or failed): such entries are left out of the statistics and add nothing to the sum.
        weights (`torch.Tensor` of shape `[K]`):
            The reward weights.
        group_size (`int`):
            Completions per prompt; groups are contiguous rows.
        eps (`float`, *optional*, defaults to `1e-4`, TRL's):
            Added to each standard deviation.

    Returns:
        `torch.Tensor` of shape `[B]`.
    """
    if components.dim() != 2 or components.shape[0] % group_size:
        raise ValueError(f"components must be [B, K] with B a multiple of group_size, got {tuple(components.shape)}.")
    grouped = components.view(-1, group_size, components.shape[1])  # [G, k, K]
    scored = ~grouped.isnan()
    count = scored.sum(1, keepdim=True)  # [G, 1, K]
    mean = grouped.nan_to_num(0.0).sum(1, keepdim=True) / count.clamp(min=1)
    squares = ((grouped - mean).nan_to_num(0.0) ** 2).sum(1, keepdim=True)
    std = (squares / (count - 1).clamp(min=1)).sqrt() * (count > 1)
    normalised = ((grouped - mean) / (std + eps)).view_as(components)  # NaN where not scored
    return (normalised * weights.to(components)).nan_to_num(0.0).sum(-1)


def group_centered_scores(scores: torch.Tensor, group_size: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """
    ``r - mean_g``: each score minus the mean of the valid scores of its group (Dr. GRPO, REINFORCE++-baseline).

    Args:
        scores (`torch.Tensor` of shape `[B]`):
            Sequence rewards, groups of `group_size` contiguous rows.
        group_size (`int`):
            Completions per prompt `k`; `B` must be a multiple of it.
        valid (`torch.Tensor` of shape `[B]`, *optional*):
            Samples to use; invalid ones are left out of the mean and get 0.

    Returns:
        `torch.Tensor` of shape `[B]`.
    """
    grouped, valid, _ = _grouped(scores, group_size, valid)
    mean = masked_mean(grouped, valid, dim=-1).unsqueeze(-1)  # [G, 1]
    return torch.where(valid, grouped - mean, 0).view(-1)


def group_norm_scores(
    scores: torch.Tensor,
    group_size: int,
    valid: torch.Tensor | None = None,
    eps: float = 1e-6,
    std: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """
    GRPO's ``(r - mean_g) / (std_g + eps)`` with the unbiased standard deviation of the valid scores of each group.

    A group whose valid scores are all equal (or with a single valid member) gets advantage 0. With `std` given
    (TRL's ``scale_rewards="batch"``: the standard deviation of the whole batch), every group is divided by it.

    Args:
        scores (`torch.Tensor` of shape `[B]`):
            Sequence rewards, groups of `group_size` contiguous rows.
        group_size (`int`):
            Completions per prompt `k`; `B` must be a multiple of it.
        valid (`torch.Tensor` of shape `[B]`, *optional*):
            Samples to use; invalid ones are left out of the statistics and get 0.
        eps (`float`, *optional*, defaults to `1e-6`):
            Added to the standard deviation.
        std (`torch.Tensor` or `float`, *optional*):
            One standard deviation for every group instead of each group's own.

    Returns:
        `torch.Tensor` of shape `[B]`.
    """
    grouped, valid, _ = _grouped(scores, group_size, valid)
    mean = masked_mean(grouped, valid, dim=-1).unsqueeze(-1)  # [G, 1]
    if std is None:
        std = masked_var(grouped, valid, dim=-1).sqrt().unsqueeze(-1)  # [G, 1]
    return torch.where(valid, (grouped - mean) / (std + eps), 0).view(-1)


def rloo_scores(scores: torch.Tensor, group_size: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """
    REINFORCE leave-one-out: ``r_i - (sum_g - r_i) / (n_g - 1)``, the score minus the mean of the *other* valid
    scores of its group (with no invalid samples, ``n_g = k``).

    A sample that is the only valid one of its group has no baseline and gets 0.

    Args:
        scores (`torch.Tensor` of shape `[B]`):
            Sequence rewards, groups of `group_size` contiguous rows.
        group_size (`int`):
            Completions per prompt `k`; `B` must be a multiple of it.
        valid (`torch.Tensor` of shape `[B]`, *optional*):
            Samples to use; invalid ones are left out of the baselines and get 0.

    Returns:
        `torch.Tensor` of shape `[B]`.
    """
    grouped, valid, count = _grouped(scores, group_size, valid)
    total = torch.where(valid, grouped, 0).sum(-1, keepdim=True)  # [G, 1]
    others = count - 1  # [G, 1]
    baseline = (total - grouped) / others.clamp(min=1)  # [G, k]
    return torch.where(valid & (others > 0), grouped - baseline, 0).view(-1)


def scores_to_token_rewards(
    scores: torch.Tensor,
    action_mask: torch.Tensor,
    kl: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> torch.Tensor:
    """
    Per-token rewards: ``-kl_coef * kl`` on every action token, plus the sequence score on the last one.

    Args:
        scores (`torch.Tensor` of shape `[B]`):
            Sequence rewards (possibly already baselined or normalised).
        action_mask (`torch.Tensor` of shape `[B, A]`):
            Real action tokens; the score goes to the last true position of each row (rows without one get none).
        kl (`torch.Tensor` of shape `[B, A]`, *optional*):
            Per-token KL estimate between policy and reference (see `rft_trl.core.compute_approx_kl`).
        kl_coef (`float`, *optional*, defaults to `0.0`):
            Weight of the KL penalty in the reward.

    Returns:
        `torch.Tensor` of shape `[B, A]`, 0 outside `action_mask`.
    """
    mask = action_mask.bool()
    num_actions = mask.shape[-1]
    positions = torch.arange(num_actions, device=mask.device).expand_as(mask)  # [B, A]
    last = torch.where(mask, positions, -1).amax(-1)  # [B], -1 for a row without actions
    is_last = positions == last.unsqueeze(-1)  # [B, A]
    rewards = torch.where(is_last, scores.unsqueeze(-1).to(torch.promote_types(scores.dtype, torch.float32)), 0)
    if kl is not None and kl_coef != 0:
        rewards = rewards - kl_coef * torch.where(mask, kl, 0)
    return rewards


def _reverse_scan(
    deltas: torch.Tensor, mask: torch.Tensor, decay: float, values: torch.Tensor | None = None, gamma: float = 1.0
) -> torch.Tensor:
    """
    ``out_t = x_t + decay * out_next`` over the action tokens of each row, from the end, skipping masked positions.

    With ``values`` given, ``x_t = deltas_t + gamma * V_next - V_t`` (the GAE TD error), where ``V_next`` is the
    value of the next *action* token (0 after the last). Masked positions are skipped, not treated as steps, so a
    hole in the mask (e.g. tool output inside a multi-turn completion) joins the tokens on its two sides. The loop
    runs over the ``A`` token positions; every batch row advances at once.
    """
    batch, num_actions = deltas.shape
    out = torch.zeros_like(deltas)  # [B, A]
    carry = deltas.new_zeros(batch)  # [B], out at the next action token
    next_value = deltas.new_zeros(batch)  # [B], V at the next action token
    for t in reversed(range(num_actions)):
        step = deltas[:, t]
        if values is not None:
            step = step + gamma * next_value - values[:, t]
            next_value = torch.where(mask[:, t], values[:, t], next_value)
        carry = torch.where(mask[:, t], step + decay * carry, carry)
        out[:, t] = torch.where(mask[:, t], carry, 0)
    return out


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    action_mask: torch.Tensor,
    gamma: float = 1.0,
    lambd: float = 0.95,
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Generalised advantage estimation (https://arxiv.org/abs/1506.02438) over the action tokens of each row.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` and ``A_t = delta_t + gamma * lambd * A_{t+1}``, where ``t + 1`` is
    the next action token (``V`` and ``A`` are 0 after the last); returns are ``A_t + V_t``.

    Args:
        rewards (`torch.Tensor` of shape `[B, A]`):
            Per-token rewards (see [`scores_to_token_rewards`]).
        values (`torch.Tensor` of shape `[B, A]`):
            Critic values of the states before each action token.
        action_mask (`torch.Tensor` of shape `[B, A]`):
            Real action tokens; other positions are skipped and get 0.
        gamma (`float`, *optional*, defaults to `1.0`):
            Discount factor.
        lambd (`float`, *optional*, defaults to `0.95`):
            GAE trade-off between bias (0: one-step TD) and variance (1: Monte-Carlo return minus value).
        valid (`torch.Tensor` of shape `[B]`, *optional*):
            Samples to use; invalid rows get advantage 0 and return 0.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: advantages and returns, each `[B, A]`, 0 outside `action_mask`.
    """
    if rewards.shape != values.shape or rewards.shape != action_mask.shape:
        raise ValueError(
            f"rewards, values and action_mask must have the same shape [B, A], got {tuple(rewards.shape)}, "
            f"{tuple(values.shape)} and {tuple(action_mask.shape)}."
        )
    mask = action_mask.bool() & _check_valid(valid, rewards.shape[0], rewards.device).unsqueeze(-1)
    dtype = torch.promote_types(rewards.dtype, values.dtype)
    values = values.to(dtype)
    advantages = _reverse_scan(rewards.to(dtype), mask, gamma * lambd, values=values, gamma=gamma)
    returns = torch.where(mask, advantages + values, 0)
    return advantages, returns


def compute_discounted_returns(
    rewards: torch.Tensor, action_mask: torch.Tensor, gamma: float = 1.0, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """
    ``G_t = r_t + gamma * G_{t+1}`` over the action tokens of each row (masked positions skipped, 0 in the output).

    Args:
        rewards (`torch.Tensor` of shape `[B, A]`):
            Per-token rewards (see [`scores_to_token_rewards`]).
        action_mask (`torch.Tensor` of shape `[B, A]`):
            Real action tokens.
        gamma (`float`, *optional*, defaults to `1.0`):
            Discount factor.
        valid (`torch.Tensor` of shape `[B]`, *optional*):
            Samples to use; invalid rows get 0.

    Returns:
        `torch.Tensor` of shape `[B, A]`.
    """
    if rewards.shape != action_mask.shape:
        raise ValueError(
            f"rewards and action_mask must have the same shape [B, A], got {tuple(rewards.shape)} and "
            f"{tuple(action_mask.shape)}."
        )
    mask = action_mask.bool() & _check_valid(valid, rewards.shape[0], rewards.device).unsqueeze(-1)
    return _reverse_scan(rewards, mask, gamma)


def compute_advantages(
    estimator: str,
    scores: torch.Tensor,
    action_mask: torch.Tensor,
    *,
    group_size: int = 1,
    values: torch.Tensor | None = None,
    kl: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    gamma: float = 1.0,
    lambd: float = 0.95,
    valid: torch.Tensor | None = None,
    eps: float = 1e-6,
    reward_std: torch.Tensor | float | None = None,
    baselined: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Token-level advantages and returns from sequence scores, by the named estimator.

    Steps: (1) baseline the scores per group (``group_norm``, ``dr_grpo``, ``rloo``, ``reinforce++-baseline``);
    (2) per-token rewards: the score on the last action token, minus ``kl_coef * kl`` on every action token;
    (3) ``gae``: GAE with the critic's ``values``; all others: the discounted return ``G_t``, used as advantage;
    (4) ``reinforce++`` and ``reinforce++-baseline``: whiten the advantages over all valid action tokens of the
    batch. With ``kl_coef = 0`` and ``gamma = 1`` the group estimators give every token of a row the row's baselined
    score.

    Args:
        estimator (`str`):
            One of `ADVANTAGE_ESTIMATORS`: `"gae"`, `"group_norm"`, `"dr_grpo"`, `"rloo"`, `"reinforce++"`,
            `"reinforce++-baseline"`.
        scores (`torch.Tensor` of shape `[B]`):
            Sequence rewards; rows `[g * group_size, (g + 1) * group_size)` answer the same prompt.
        action_mask (`torch.Tensor` of shape `[B, A]`):
            Real action tokens.
        group_size (`int`, *optional*, defaults to `1`):
            Completions per prompt; the group estimators need it (`rloo` needs at least 2).
        values (`torch.Tensor` of shape `[B, A]`, *optional*):
            Critic values; required by `"gae"`, rejected by the others.
        kl (`torch.Tensor` of shape `[B, A]`, *optional*):
            Per-token KL between policy and reference, folded into the rewards with weight `kl_coef`.
        kl_coef (`float`, *optional*, defaults to `0.0`):
            KL penalty weight in the reward (0 when the KL is a loss term instead).
        gamma (`float`, *optional*, defaults to `1.0`):
            Discount factor.
        lambd (`float`, *optional*, defaults to `0.95`):
            GAE lambda (used by `"gae"` only).
        valid (`torch.Tensor` of shape `[B]`, *optional*):
            Samples to use. Invalid samples are left out of group statistics and whitening; their advantages and
            returns are 0.
        eps (`float`, *optional*, defaults to `1e-6`):
            Added to standard deviations (`"group_norm"` and the whitening of the `reinforce++` variants).
        reward_std (`torch.Tensor` or `float`, *optional*):
            `"group_norm"` only: divide by this one standard deviation (the batch's, TRL's
            `scale_rewards="batch"`) instead of each group's.
        baselined (`bool`, *optional*, defaults to `False`):
            The scores are already baselined and scaled (TRL's `normalize_then_sum`): step (1) is skipped. For the
            group estimators (`group_norm`, `dr_grpo`) only.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: advantages and returns, each `[B, A]`, 0 outside `action_mask` and on
        invalid rows. For the `reinforce++` variants the returns are the discounted returns before whitening.
    """
    if estimator not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"Unknown advantage estimator {estimator!r}; expected one of {ADVANTAGE_ESTIMATORS}.")
    if (values is None) == (estimator == "gae"):
        raise ValueError(f"values must be given for 'gae' and only for 'gae' (estimator={estimator!r}).")
    if scores.shape != action_mask.shape[:1]:
        raise ValueError(
            f"scores must have shape [B] = ({action_mask.shape[0]},) to match action_mask, got {tuple(scores.shape)}."
        )
    valid = _check_valid(valid, scores.shape[0], scores.device)

    if reward_std is not None and estimator != "group_norm":
        raise ValueError(f"reward_std applies to 'group_norm' only, not {estimator!r}.")
    if baselined and estimator not in ("group_norm", "dr_grpo"):
        raise ValueError(f"baselined scores replace a group baseline: 'group_norm' or 'dr_grpo', not {estimator!r}.")
    if baselined:
        scores = torch.where(valid, scores, torch.zeros_like(scores))
    elif estimator == "group_norm":
        scores = group_norm_scores(scores, group_size, valid, eps, reward_std)
    elif estimator in ("dr_grpo", "reinforce++-baseline"):
        scores = group_centered_scores(scores, group_size, valid)
    elif estimator == "rloo":
        if group_size < 2:
            raise ValueError(f"'rloo' needs group_size >= 2 (a leave-one-out baseline), got {group_size}.")
        scores = rloo_scores(scores, group_size, valid)

    rewards = scores_to_token_rewards(scores, action_mask, kl, kl_coef)  # [B, A]
    if estimator == "gae":
        return compute_gae(rewards, values, action_mask, gamma, lambd, valid)
    returns = compute_discounted_returns(rewards, action_mask, gamma, valid)  # [B, A]
    if estimator in ("reinforce++", "reinforce++-baseline"):
        mask = action_mask.bool() & valid.unsqueeze(-1)
        return masked_whiten(returns, mask, eps=eps), returns
    return returns, returns
