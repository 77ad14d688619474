"""Per-token KL estimators between the policy and a reference policy (http://joschu.net/blog/kl-approx.html)."""

import torch

__all__ = ["KL_ESTIMATORS", "compute_approx_kl"]

KL_ESTIMATORS = ("k1", "k2", "k3")


def compute_approx_kl(
    log_probs: torch.Tensor,
    log_probs_base: torch.Tensor,
    action_mask: torch.Tensor | None = None,
    kl_estimator: str = "k1",
) -> torch.Tensor:
    """
    Single-sample estimates of ``KL(pi || pi_base)`` at each sampled token, with ``log r = log_probs -
    log_probs_base`` and the tokens drawn from ``pi``:

    - ``k1 = log r``: unbiased, high variance, can be negative;
    - ``k2 = (log r)^2 / 2``: biased, low variance, non-negative; on-policy, its gradient with the samples held
      fixed, ``E[log r * grad log pi]``, is the gradient of the true KL;
    - ``k3 = exp(-log r) - 1 + log r``: unbiased, low variance, non-negative.

    Args:
        log_probs (`torch.Tensor` of shape `[B, A]`):
            Log-probabilities of the sampled tokens under the policy.
        log_probs_base (`torch.Tensor` of shape `[B, A]`):
            Log-probabilities of the same tokens under the reference policy.
        action_mask (`torch.Tensor` of shape `[B, A]`, *optional*):
            Real action tokens; other positions are 0 in the result (whatever the inputs hold there).
        kl_estimator (`str`, *optional*, defaults to `"k1"`):
            One of `KL_ESTIMATORS`: `"k1"`, `"k2"`, `"k3"`.

    Returns:
        `torch.Tensor` of shape `[B, A]`, float32 or wider.
    """
    # At least float32: bf16 log-probs would make k3's exp(-log r) - 1 mostly rounding error.
    dtype = torch.promote_types(torch.promote_types(log_probs.dtype, log_probs_base.dtype), torch.float32)
    log_ratio = log_probs.to(dtype) - log_probs_base.to(dtype)
    if action_mask is not None:
        # Masked first, so that padding (where log-probs may be -inf) cannot produce inf or nan, nor nan gradients.
        log_ratio = torch.where(action_mask.bool(), log_ratio, 0)
    if kl_estimator == "k1":
        return log_ratio
    if kl_estimator == "k2":
        return log_ratio.square() / 2
    if kl_estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"Unknown kl_estimator {kl_estimator!r}; expected one of {KL_ESTIMATORS}.")
