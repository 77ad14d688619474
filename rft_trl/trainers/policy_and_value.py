"""The trained module of a run with a critic: the actor and the critic under one `accelerator.prepare`."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..models.actor import Actor

__all__ = ["PolicyAndValue"]


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
