"""
The seed's loss modules (`lightrft.models.loss`): `PolicyLoss`, `ValueLoss`, `GPTLMLoss`, with the seed's call
signatures. Each is a thin `nn.Module` over a pure function of `rft_trl.core`; the modules return the loss tensor and
keep the metrics of their last call for `get_last_stats()`.
"""

import torch
from torch import nn

from ..core import IGNORE_INDEX, lm_loss, policy_loss, value_loss

__all__ = ["GPTLMLoss", "PolicyLoss", "ValueLoss"]


def _as_floats(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    # The metrics stay tensors until asked for, so a step that does not log them never waits on the device.
    return {name: value.item() for name, value in metrics.items()}


class PolicyLoss(nn.Module):
    """
    PPO-family policy loss (see [`rft_trl.core.policy_loss`] for the formulas).

    Args:
        eps_clip (`float`, *optional*, defaults to `0.2`):
            Clip range of the ratio (lower side, and upper side unless `eps_clip_high` is set).
        use_cpg_loss (`bool`, *optional*, defaults to `False`):
            Clipped policy-gradient (CPGD) objective instead of the ratio objective.
        eps_clip_high (`float`, *optional*):
            Upper clip range (DAPO clip-higher); defaults to `eps_clip`.
        dual_clip (`float`, *optional*):
            Dual-clip constant `c > 1` for negative advantages.
        importance_sampling_level (`str`, *optional*, defaults to `"token"`):
            `"token"` (PPO) or `"sequence"` (GSPO).
        loss_agg_mode (`str`, *optional*, defaults to `"token-mean"`):
            One of `rft_trl.core.LOSS_AGG_MODES`.
        norm_length (`int`, *optional*):
            Constant of `"seq-mean-token-sum-norm"`.
    """

    def __init__(
        self,
        eps_clip: float = 0.2,
        use_cpg_loss: bool = False,
        eps_clip_high: float | None = None,
        dual_clip: float | None = None,
        importance_sampling_level: str = "token",
        loss_agg_mode: str = "token-mean",
        norm_length: int | None = None,
    ) -> None:
        super().__init__()
        self.eps_clip = eps_clip
        self.use_cpg_loss = use_cpg_loss
        self.eps_clip_high = eps_clip_high
        self.dual_clip = dual_clip
        self.importance_sampling_level = importance_sampling_level
        self.loss_agg_mode = loss_agg_mode
        self.norm_length = norm_length
        self._last_stats = {}

    def forward(
        self,
        log_probs: torch.Tensor,
        old_log_probs: torch.Tensor,
        advantages: torch.Tensor,
        action_mask: torch.Tensor | None = None,
        entropy_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            log_probs (`torch.Tensor` of shape `[B, A]`):
                Action log-probabilities under the current policy.
            old_log_probs (`torch.Tensor` of shape `[B, A]`):
                Action log-probabilities at rollout time.
            advantages (`torch.Tensor` of shape `[B, A]` or `[B]`):
                Advantages.
            action_mask (`torch.Tensor` of shape `[B, A]`, *optional*):
                Real action tokens.
            entropy_mask (`torch.Tensor` of shape `[B, A]`, *optional*):
                Tokens allowed to carry gradient (high-entropy selection).

        Returns:
            `torch.Tensor`: the scalar loss.
        """
        loss, metrics = policy_loss(
            log_probs,
            old_log_probs,
            advantages,
            action_mask,
            eps_clip_low=self.eps_clip,
            eps_clip_high=self.eps_clip_high,
            dual_clip=self.dual_clip,
            importance_sampling_level=self.importance_sampling_level,
            use_cpg_loss=self.use_cpg_loss,
            entropy_mask=entropy_mask,
            loss_agg_mode=self.loss_agg_mode,
            norm_length=self.norm_length,
        )
        self._last_stats = metrics
        return loss

    def get_last_stats(self) -> dict[str, float]:
        """Metrics of the last call as floats (empty before the first call)."""
        return _as_floats(self._last_stats)


class ValueLoss(nn.Module):
    """
    Clipped PPO value loss (see [`rft_trl.core.value_loss`]).

    Args:
        value_clip (`float`, *optional*):
            Clip range of the value update; `None` disables clipping.
        loss_agg_mode (`str`, *optional*, defaults to `"token-mean"`):
            One of `rft_trl.core.LOSS_AGG_MODES` except `"seq-mean-token-sum-norm"`.
    """

    def __init__(self, value_clip: float | None = None, loss_agg_mode: str = "token-mean") -> None:
        super().__init__()
        self.value_clip = value_clip
        self.loss_agg_mode = loss_agg_mode
        self._last_stats = {}

    def forward(
        self,
        values: torch.Tensor,
        old_values: torch.Tensor,
        returns: torch.Tensor,
        action_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            values (`torch.Tensor` of shape `[B, A]`):
                Current critic values.
            old_values (`torch.Tensor` of shape `[B, A]`):
                Values at rollout time.
            returns (`torch.Tensor` of shape `[B, A]`):
                Targets.
            action_mask (`torch.Tensor` of shape `[B, A]`, *optional*):
                Real action tokens.

        Returns:
            `torch.Tensor`: the scalar loss.
        """
        loss, metrics = value_loss(values, old_values, returns, action_mask, self.value_clip, self.loss_agg_mode)
        self._last_stats = metrics
        return loss

    def get_last_stats(self) -> dict[str, float]:
        """Metrics of the last call as floats (empty before the first call)."""
        return _as_floats(self._last_stats)


class GPTLMLoss(nn.Module):
    """
    Next-token cross-entropy over the labels that are not `IGNORE_INDEX` (see [`rft_trl.core.lm_loss`]); used
    for the seed's PTX (pre-training mix) loss.
    """

    IGNORE_INDEX = IGNORE_INDEX

    def __init__(self) -> None:
        super().__init__()
        self._last_stats = {}

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """
        Args:
            logits (`torch.Tensor` of shape `[..., L, V]`):
                Logits over the full sequence.
            labels (`torch.Tensor` of shape `[..., L]`):
                Unshifted labels, `IGNORE_INDEX` where no loss is wanted.

        Returns:
            `torch.Tensor`: the scalar loss.
        """
        loss, metrics = lm_loss(logits, labels, self.IGNORE_INDEX)
        self._last_stats = metrics
        return loss

    def get_last_stats(self) -> dict[str, float]:
        """Metrics of the last call as floats (empty before the first call)."""
        return _as_floats(self._last_stats)
