"""The PPO/GRPO objective of one micro-batch, assembled from `core` functions.

The trainer computes what needs the run's state (the cross-process entropy cutoff, the ptx batch, the MoE router's
auxiliary loss, the controllers' current coefficients) and hands it here; [`actor_objective`] returns the actor's loss
with the metrics to record, [`critic_objective`] the critic's. Nothing here reads or changes the trainer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.utils import ModelOutput

from ..core import aggregate_loss, compute_approx_kl, high_entropy_mask, masked_mean, policy_loss, value_loss
from .experience import Experience
from .rft_config import RFTConfig

logger = logging.getLogger(__name__)

__all__ = [
    "Objective",
    "RouterAuxLoss",
    "actor_objective",
    "critic_objective",
    "off_policy_sequence_mask",
    "padded_fields",
]


@dataclass
class Objective:
    """
    A micro-batch's loss and what to record of it.

    Attributes:
        loss (`torch.Tensor`): the scalar to differentiate.
        metrics (`dict[str, tuple[torch.Tensor, torch.Tensor | None]]`): each metric's value and weight (the tokens it
            is a mean over; `None` for a value that is not a mean).
        acting_mask (`torch.Tensor` of shape `[B, A]`, *optional*): the tokens the entropy bonus acted on.
    """

    loss: torch.Tensor
    metrics: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = field(default_factory=dict)
    acting_mask: torch.Tensor | None = None


class RouterAuxLoss:
    """
    The router load-balancing loss of a mixture-of-experts policy, read off its forward's output.

    Not every mixture-of-experts model computes one: Llama 4's and GLM-4.6V's multimodal outputs have no `aux_loss`
    field, Llama 4's text model leaves it `None` even with `output_router_logits`, and no model computes one with
    `output_router_logits` off. Such a model trains without the term, warned once.

    Args:
        hf_model (`nn.Module`): the policy's transformers model (named in the warning).
        coef (`float`): the term's weight (`resolve_aux_loss_coef`); 0 leaves it out.
    """

    def __init__(self, hf_model: nn.Module, coef: float):
        self.hf_model, self.coef = hf_model, coef
        self._warned = False

    def __call__(self, output: ModelOutput) -> torch.Tensor | None:
        # `ModelOutput.get` reads an absent field and a `None` one alike (it holds only the fields that are set).
        aux_loss = output.get("aux_loss")
        if aux_loss is None and not self._warned:
            self._warned = True
            logger.warning(
                "router_aux_loss_coef=%s, but %s returned no router auxiliary loss (a %s without aux_loss; "
                "output_router_logits=%s in its text config). Training without it.",
                self.coef,
                type(self.hf_model).__name__,
                type(output).__name__,
                self.hf_model.config.get_text_config().to_dict().get("output_router_logits"),
            )
        return aux_loss


@torch.no_grad()
def off_policy_sequence_mask(
    advantages: torch.Tensor,
    per_token_logps: torch.Tensor,
    sampling_per_token_logps: torch.Tensor,
    mask: torch.Tensor,
    off_policy_threshold: float,
) -> torch.Tensor:
    """
    TRL's off-policy sequence mask (DeepSeek-V3.2): a sequence with a negative advantage is dropped when the mean over
    its tokens of ``log pi_sampling - log pi_current`` exceeds `off_policy_threshold`.

    Args:
        advantages (`torch.Tensor` of shape `[B, 1]` or `[B, A]`): advantages; per token, a sequence's sign is that of
            its mean over the valid tokens.
        per_token_logps (`torch.Tensor` of shape `[B, A]`): the current policy's log-probs.
        sampling_per_token_logps (`torch.Tensor` of shape `[B, A]`): the log-probs the tokens were sampled with; NaN
            (unscorable) tokens count as no divergence.
        mask (`torch.Tensor` of shape `[B, A]`): valid tokens.
        off_policy_threshold (`float`): the largest mean divergence a negative-advantage sequence may have.

    Returns:
        `torch.Tensor` of shape `[B, 1]`, `mask`'s dtype: 1 to keep the sequence, 0 to drop it.
    """
    weight = mask.to(per_token_logps.dtype)
    divergence = torch.nan_to_num(sampling_per_token_logps - per_token_logps.detach(), nan=0.0) * weight
    mean_divergence = divergence.sum(-1, keepdim=True) / weight.sum(-1, keepdim=True).clamp(min=1.0)  # [B, 1]
    if advantages.shape[-1] == 1:
        sequence_advantage = advantages
    else:
        sequence_advantage = (advantages * weight).sum(-1, keepdim=True)  # [B, 1], the sign of the mean
    keep = (sequence_advantage >= 0) | (mean_divergence <= off_policy_threshold)
    return keep.to(mask.dtype)


def actor_objective(
    batch: dict[str, torch.Tensor | None],
    mask: torch.Tensor,
    args: RFTConfig,
    kl_coef: float,
    entropy_coef: float | None,
    entropy_mask: torch.Tensor | None = None,
    ptx_loss: torch.Tensor | None = None,
    aux_loss: torch.Tensor | None = None,
    aux_loss_coef: float = 0.0,
    off_policy_mask: Callable[..., torch.Tensor] = off_policy_sequence_mask,
) -> Objective:
    """
    The actor's loss on one micro-batch: the clipped policy loss, + the KL loss, + `ptx_coef` x the ptx loss, +
    the router's auxiliary loss, - the entropy bonus.

    Args:
        batch (`dict`): the micro-batch's `[B, A]` fields: `new_log_probs` (differentiable), `action_log_probs` (the
            rollout's; `None` for an on-policy update, which reuses the new ones detached), `advantages`,
            `base_action_log_probs` (the reference's, or `None`), `importance_weights` (or `None`) and, for the
            entropy terms, `new_entropy`.
        mask (`torch.Tensor` of shape `[B, A]`): the tokens trained on.
        args ([`RFTConfig`]): the loss settings (clipping, aggregation, KL, surrogate, ...).
        kl_coef (`float`): the KL controller's coefficient now.
        entropy_coef (`float`, *optional*): the entropy bonus's coefficient now; `None` for no bonus.
        entropy_mask (`torch.Tensor` of shape `[B, A]`, *optional*): the high-entropy tokens the policy loss keeps.
        ptx_loss (`torch.Tensor`, *optional*): the supervised loss of a ptx batch.
        aux_loss (`torch.Tensor`, *optional*): the MoE router's auxiliary loss.
        aux_loss_coef (`float`, *optional*, defaults to `0.0`): its weight.
        off_policy_mask (`Callable`, *optional*): the sequence mask of `off_policy_mask_threshold`, with
            [`off_policy_sequence_mask`]'s signature (the trainer passes its `get_off_policy_mask` hook, TRL's name).

    Returns:
        [`Objective`]: the loss, the metrics (TRL's names: `clip_ratio/*`, `kl`, `policy_loss`, `entropy`; ours under
        `train/`) and the tokens the entropy bonus acted on.
    """
    log_probs = batch["new_log_probs"]
    old_log_probs = batch["action_log_probs"] if batch["action_log_probs"] is not None else log_probs.detach()
    advantages = batch["advantages"]
    if args.advantage_clip is not None:
        advantages = advantages.clamp(-args.advantage_clip, args.advantage_clip)
    tokens = mask.sum()  # weighs this micro-batch's metrics; 0 when every sample in it is excluded
    sequence_weight = None
    if args.off_policy_mask_threshold is not None:
        sequence_weight = off_policy_mask(advantages, log_probs, old_log_probs, mask, args.off_policy_mask_threshold)
    norm_length = args.generate_max_len if args.loss_agg_mode == "seq-mean-token-sum-norm" else None
    loss, policy_metrics = policy_loss(
        log_probs,
        old_log_probs,
        advantages,
        mask,
        eps_clip_low=args.eps_clip,
        eps_clip_high=args.eps_clip_high,
        dual_clip=args.dual_clip,
        importance_sampling_level=args.importance_sampling_level,
        use_cpg_loss=args.use_cpg_loss,
        entropy_mask=entropy_mask,
        loss_agg_mode=args.loss_agg_mode,
        norm_length=norm_length,
        ratio_cap=args.delta,
        sequence_weight=sequence_weight,
        token_weight=batch.get("importance_weights"),
        surrogate=args.policy_surrogate,
        sapo_temperatures=(args.sapo_temperature_pos, args.sapo_temperature_neg),
        vespo_gamma=(args.vespo_k_pos, args.vespo_lambda_pos, args.vespo_k_neg, args.vespo_lambda_neg),
    )
    # TRL's clip ratios keep their names; ours go under train/.
    metrics = {
        name if name.startswith("clip_ratio/") else f"train/{name}": (value, tokens)
        for name, value in policy_metrics.items()
    }
    metrics["train/policy_loss"] = (loss, tokens)
    if batch["base_action_log_probs"] is not None:
        kl = compute_approx_kl(log_probs, batch["base_action_log_probs"], mask, kl_estimator=args.kl_estimator)
        metrics["kl"] = (masked_mean(kl, mask), tokens)
        if args.use_kl_loss:
            if args.use_bias_correction_kl:
                # The KL is estimated on samples of the rollout policy: weighting it by the importance ratio makes
                # its gradient the unbiased gradient of the current policy's KL (TRL's default). The ratio is the
                # policy loss's: per token, or (GSPO) each sequence's exp(mean log-ratio), as TRL's `coef_1`.
                log_ratio = torch.where(mask, log_probs - old_log_probs, 0)  # [B, A]
                if args.importance_sampling_level == "sequence":
                    log_ratio = masked_mean(log_ratio, mask, dim=-1).unsqueeze(-1)  # [B, 1]
                kl = kl * log_ratio.exp()
            # As TRL: beta * KL joins each token's loss before the loss type's aggregation (GRPO's mean per sequence
            # then over sequences, Dr. GRPO's sum over the maximum length, ...), so the KL term is aggregated alike.
            loss = loss + kl_coef * aggregate_loss(kl, mask, args.loss_agg_mode, norm_length)
    if ptx_loss is not None:
        metrics["train/ptx_loss"] = (ptx_loss, None)
        loss = loss + args.ptx_coef * ptx_loss
    if aux_loss is not None:
        loss = loss + aux_loss_coef * aux_loss
    # TRL's `policy_loss`: the actor's loss before the entropy bonus (KL included); ours is train/policy_loss.
    metrics["policy_loss"] = (loss, tokens)
    acting = None
    if batch.get("new_entropy") is not None:
        entropy = batch["new_entropy"]
        metrics["entropy"] = (masked_mean(entropy, mask), tokens)
        if entropy_coef is not None:
            # TRL's entropy bonus: the mean entropy of the tokens the policy loss acts on.
            acting = mask if entropy_mask is None else mask & entropy_mask
            loss = loss - entropy_coef * masked_mean(entropy, acting)
    return Objective(loss, metrics, acting)


def critic_objective(batch: dict[str, torch.Tensor | None], mask: torch.Tensor, value_clip: float | None) -> Objective:
    """
    The critic's clipped value loss on one micro-batch.

    Args:
        batch (`dict`): `new_values`, `values` (the rollout's) and `returns`, each `[B, A]`.
        mask (`torch.Tensor` of shape `[B, A]`): the tokens trained on.
        value_clip (`float`, *optional*): the value clipping range.

    Returns:
        [`Objective`]: the loss and its metrics under `train/`.
    """
    tokens = mask.sum()
    loss, value_metrics = value_loss(
        batch["new_values"], batch["values"], batch["returns"], mask, value_clip=value_clip
    )
    metrics = {f"train/{name}": (value, tokens) for name, value in value_metrics.items()}
    metrics["train/critic_loss"] = (loss, tokens)
    return Objective(loss, metrics)


def global_high_entropy_mask(
    entropies: torch.Tensor, mask: torch.Tensor, threshold: float, accelerator
) -> torch.Tensor:
    """
    TRL's top-entropy token selection: the tokens of `mask` (`[B, A]`) whose entropy is at least the `threshold`
    quantile of the valid tokens' entropies over all of `accelerator`'s processes (every process cuts at the same
    entropy); see [`rft_trl.core.high_entropy_mask`]. All `False` when no process has a valid token.
    """
    local = entropies.detach()[mask.bool()].float()
    # Processes hold different token counts: pad to a common length with -inf, which no entropy equals.
    padded = accelerator.pad_across_processes(local, dim=0, pad_index=float("-inf"))
    gathered = accelerator.gather(padded)
    return high_entropy_mask(entropies, mask, threshold, population=gathered[torch.isfinite(gathered)])


def padded_fields(experience: Experience, out: dict) -> dict[str, torch.Tensor]:
    """
    A micro-batch's per-token fields as `[B, A]` tensors, left-padded like a padded experience: the experience's
    (`action_mask`, old and reference log-probs, advantages, returns, values, importance weights) and the forward's
    outputs in `out` as `new_log_probs`, `new_entropy`, `new_values`. Packed fields are scattered into that layout
    out of place, so gradients flow back into the packed outputs.
    """
    names = (
        "action_mask",
        "action_log_probs",
        "base_action_log_probs",
        "advantages",
        "returns",
        "values",
        "importance_weights",
        "tool_mask",
    )
    fields = {name: getattr(experience, name) for name in names}
    fields.update({f"new_{k}": v for k, v in out.items() if k in ("log_probs", "entropy", "values")})
    if experience.is_packed:
        lengths = torch.tensor(experience.num_actions)
        width = int(lengths.max())
        # Left-padded layout: row i's actions fill its last lengths[i] columns.
        layout = torch.arange(width)[None, :] >= (width - lengths)[:, None]  # [B, A]
        for name, value in list(fields.items()):
            if value is None:
                continue
            flat = torch.cat(value) if isinstance(value, list) else value.flatten()
            layout_here = layout.to(flat.device)
            # masked_scatter is out of place, so gradients flow from the packed outputs into the padded view.
            fields[name] = flat.new_zeros(layout.shape).masked_scatter(layout_here, flat)
    fields["action_mask"] = fields["action_mask"].bool()
    if fields["tool_mask"] is not None:
        # Inserted tool/environment tokens are context, not actions: out of the loss, the KL and the entropy (TRL's
        # `mask = completion_mask * tool_mask`).
        fields["action_mask"] = fields["action_mask"] & fields.pop("tool_mask").bool()
    return fields
