"""Pure tensor math of reinforcement fine-tuning: log-probs, advantages, losses and KL estimators."""

from .advantages import (
    ADVANTAGE_ESTIMATORS,
    compute_advantages,
    compute_discounted_returns,
    compute_gae,
    group_centered_scores,
    group_norm_scores,
    masked_mean,
    masked_var,
    masked_whiten,
    normalize_then_sum_scores,
    rloo_scores,
    scores_to_token_rewards,
)
from .importance_sampling import IMPORTANCE_SAMPLING_MODES, rollout_importance_weights, rollout_mismatch_metrics
from .kl import KL_ESTIMATORS, compute_approx_kl
from .logprobs import (
    entropy_from_logits,
    log_probs_and_entropy_from_hidden,
    log_probs_and_entropy_from_logits,
    log_probs_from_logits,
)
from .losses import (
    IGNORE_INDEX,
    IMPORTANCE_SAMPLING_LEVELS,
    LOSS_AGG_MODES,
    aggregate_loss,
    high_entropy_mask,
    lm_loss,
    policy_loss,
    value_loss,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "IGNORE_INDEX",
    "IMPORTANCE_SAMPLING_LEVELS",
    "IMPORTANCE_SAMPLING_MODES",
    "KL_ESTIMATORS",
    "LOSS_AGG_MODES",
    "aggregate_loss",
    "compute_advantages",
    "compute_approx_kl",
    "compute_discounted_returns",
    "compute_gae",
    "entropy_from_logits",
    "group_centered_scores",
    "group_norm_scores",
    "normalize_then_sum_scores",
    "high_entropy_mask",
    "lm_loss",
    "log_probs_and_entropy_from_hidden",
    "log_probs_and_entropy_from_logits",
    "log_probs_from_logits",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "policy_loss",
    "rloo_scores",
    "rollout_importance_weights",
    "rollout_mismatch_metrics",
    "scores_to_token_rewards",
    "value_loss",
]
