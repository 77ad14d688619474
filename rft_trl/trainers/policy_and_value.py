"""The trained module of a run with a critic (the actor and the critic under one `accelerator.prepare`), and the
update's forward on a micro-batch through whichever module trains."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..models.actor import Actor
from ..models.media_encodings import MediaEncodings
from .experience import Experience

__all__ = ["PolicyAndValue", "actor_and_critic_groups", "micro_batch_forward"]


class PolicyAndValue(nn.Module):
    """
    The actor and the critic as one module, so one `accelerator.prepare` carries both: `trainer.model` when a critic
    trains (as TRL's `PPOTrainer` wraps policy and value); without one, `trainer.model` is the policy itself.
    """

    def __init__(self, actor: Actor, critic: nn.Module | None = None):
        super().__init__()
        self.actor = actor
        self.critic = critic
        self.config = actor.hf_model.config

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        self.actor.gradient_checkpointing_enable(gradient_checkpointing_kwargs)
        if self.critic is not None:
            self.critic.gradient_checkpointing_enable(gradient_checkpointing_kwargs)

    def gradient_checkpointing_disable(self) -> None:
        self.actor.gradient_checkpointing_disable()
        if self.critic is not None:
            self.critic.gradient_checkpointing_disable()

    @property
    def is_gradient_checkpointing(self) -> bool:
        """Whether the actor recomputes activations in backward (TRL's generation context reads it)."""
        return self.actor.hf_model.is_activation_checkpointing

    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs: dict | None = None, every_n_layers: int = 1, offload: bool = False
    ) -> None:
        """What `Trainer` calls for `gradient_checkpointing=True` (transformers 5): checkpoint actor and critic."""
        if every_n_layers != 1 or offload:
            raise ValueError(
                "PPOTrainerVL checkpoints every layer without offloading; drop every_n_layers/offload from "
                "activation_checkpointing_kwargs."
            )
        self.gradient_checkpointing_enable(activation_checkpointing_kwargs)

    def forward(
        self,
        sequences: torch.Tensor,
        num_actions: int | list[int],
        attention_mask: torch.Tensor | None = None,
        packed_seq_lens: list[int] | None = None,
        temperature: float = 1.0,
        return_entropy: bool = False,
        with_actor: bool = True,
        with_values: bool = False,
        **multimodal_inputs: torch.Tensor,
    ) -> dict[str, Any]:
        """
        One forward of whichever halves the step trains (the DDP/DeepSpeed wrapper must see a single call).

        Returns:
            `dict`: `log_probs` (and `entropy`, `output`) when `with_actor`, `values` when `with_values`; all
            `[B, A]` padded or `[1, sum(A)]` packed.
        """
        result: dict[str, Any] = {}
        common = {"attention_mask": attention_mask, "packed_seq_lens": packed_seq_lens, **multimodal_inputs}
        if with_actor:
            outputs = self.actor(
                sequences,
                num_actions,
                temperature=temperature,
                return_entropy=return_entropy,
                return_output=True,
                **common,
            )
            result["log_probs"], result["output"] = outputs[0], outputs[-1]
            if return_entropy:
                result["entropy"] = outputs[1]
        if with_values:
            result["values"] = self.critic(sequences, num_actions, **common)
        return result


def micro_batch_forward(
    model: nn.Module,
    actor: Actor,
    experience: Experience,
    temperature: float,
    with_actor: bool = True,
    with_values: bool = False,
    media_encodings: MediaEncodings | None = None,
) -> dict[str, Any]:
    """
    The update's forward on an experience micro-batch (padded or packed), through the trained module `model` (the
    DDP/DeepSpeed wrapper of the policy, or of a [`PolicyAndValue`] when `with_values`).

    Args:
        model (`nn.Module`): the wrapped trained module, which the forward must run through.
        actor ([`Actor`]): the policy; without a critic its forward runs through `model`.
        experience ([`Experience`]): the micro-batch.
        temperature (`float`): the sampling temperature the log-probs are scored at.
        with_actor, with_values (`bool`): which halves the step trains.
        media_encodings ([`MediaEncodings`], *optional*): the policy's cached encoder outputs, used instead of the
            media fields (not with a critic, whose backbone has an encoder of its own).

    Returns:
        `dict`: `log_probs`, `entropy` and `output` when `with_actor`, `values` when `with_values`; `[B, A]` padded or
        `[1, sum(A)]` packed.
    """
    packed_seq_lens = experience.packed_seq_lens
    sequences = torch.cat(experience.sequences)[None] if packed_seq_lens else experience.sequences
    token_fields = {
        name: torch.cat(value)[None] if packed_seq_lens else value for name, value in experience.token_fields.items()
    }
    media = experience.multimodal_inputs
    if media_encodings is not None and experience.multimodal_samples is not None:
        media = media_encodings.model_inputs(experience.multimodal_samples, sequences.device)  # each prompt's once
    common = {
        "attention_mask": None if packed_seq_lens else experience.attention_mask,
        "packed_seq_lens": packed_seq_lens,
        **token_fields,
        **media,
    }
    if with_values:
        return model(
            sequences,
            experience.num_actions,
            temperature=temperature,
            return_entropy=True,  # logged as TRL's `entropy`; computed in the same pass as the log-probs
            with_actor=with_actor,
            with_values=True,
            **common,
        )
    if not with_actor:
        return {}
    # `model` wraps the policy itself (DDP, DeepSpeed): the actor runs its forward through the wrapper.
    log_probs, entropy, output = actor(
        sequences,
        experience.num_actions,
        temperature=temperature,
        return_entropy=True,
        return_output=True,
        wrapped_model=model,
        **common,
    )
    return {"log_probs": log_probs, "entropy": entropy, "output": output}


def actor_and_critic_groups(model: PolicyAndValue, decay: set[str], args) -> list[dict]:
    """
    The optimizer's parameter groups of a [`PolicyAndValue`]: the actor's at `learning_rate`, the critic's at
    `critic_learning_rate` (`learning_rate` when unset), each split by the Trainer's weight-decay rule (`decay`: the
    names that decay); empty groups left out.
    """
    critic_lr = args.critic_learning_rate or args.learning_rate
    groups = []
    for prefix, lr in (("actor.", args.learning_rate), ("critic.", critic_lr)):
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and n.startswith(prefix)]
        groups.append({"params": [p for n, p in named if n in decay], "weight_decay": args.weight_decay, "lr": lr})
        groups.append({"params": [p for n, p in named if n not in decay], "weight_decay": 0.0, "lr": lr})
    return [group for group in groups if group["params"]]
