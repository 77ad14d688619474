"""A batch of rollout experience, the unit the PPO/GRPO update consumes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import torch


def map_tensors(value: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """
    Apply `fn` to every tensor inside nested lists, tuples and dicts; other leaves (numbers, strings, images) are
    returned as they are.
    """
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, dict):
        return {key: map_tensors(item, fn) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(map_tensors(item, fn) for item in value)
    return value


@dataclass
class Experience:
    """
    A batch of B samples: sequences, the rollout's per-token statistics and the multimodal inputs of the prompts.

    Two layouts exist, told apart by [`Experience.is_packed`]:

    - padded: every per-token field is a tensor, left-padded with zeros to the longest sample, so the last `A`
      positions of `sequences` are the action (completion) positions of `action_mask` and friends;
    - packed: every per-token field is a list of B unpadded 1-D tensors, to be concatenated into one row for a
      padding-free forward (see [`Experience.packed_seq_lens`] and [`Experience.num_actions`]).

    Args:
        sequences (`torch.Tensor` of shape `(B, S)` or `list[torch.Tensor]`):
            Prompt + completion token ids.
        action_log_probs (`torch.Tensor` of shape `(B, A)` or `list[torch.Tensor]`, *optional*):
            Log-probabilities of the completion tokens under the rollout policy.
        base_action_log_probs (`torch.Tensor` of shape `(B, A)` or `list[torch.Tensor]`, *optional*):
            The same under the reference model.
        values (`torch.Tensor` of shape `(B, A)` or `list[torch.Tensor]`, *optional*):
            Critic values of the completion tokens.
        returns (`torch.Tensor` of shape `(B, A)` or `list[torch.Tensor]`, *optional*):
            Value targets.
        advantages (`torch.Tensor` of shape `(B, A)` or `list[torch.Tensor]`, *optional*):
            Advantages of the completion tokens.
        attention_mask (`torch.Tensor` of shape `(B, S)` or `list[torch.Tensor]`, *optional*):
            1 on real tokens, 0 on padding.
        action_mask (`torch.Tensor` of shape `(B, A)` or `list[torch.Tensor]`, *optional*):
            1 on completion tokens that take part in the loss.
        info (`dict[str, torch.Tensor]`, *optional*, defaults to `{}`):
            Per-sample statistics, each a tensor with B rows (`reward`, `response_length`, `total_length`, ...).
        action_entropy (`torch.Tensor` of shape `(B, A)` or `list[torch.Tensor]`, *optional*):
            Entropy of the policy at the completion tokens.
        importance_weights (`torch.Tensor` of shape `(B, A)` or `list[torch.Tensor]`, *optional*):
            Truncated importance-sampling weights correcting the rollout engine's sampling distribution to the
            trainer's (TRL's `vllm_importance_sampling_correction`); they multiply the per-token policy loss.
        tool_mask (`torch.Tensor` of shape `(B, A)` or `list[torch.Tensor]`, *optional*):
            TRL's name: 1 on the completion tokens the policy sampled, 0 on those a tool or an environment inserted
            (a multi-turn rollout's observations), which are context but never trained on: out of the loss, the KL
            and the entropy. `None` when every completion token was sampled.
        multimodal_inputs (`dict[str, torch.Tensor]`, *optional*, defaults to `{}`):
            The prompts' media fields, the samples' pieces concatenated (see `rft_trl.data.multimodal`); passed to
            the model as keywords.
        multimodal_shapes (`dict[str, list[tuple[int, ...] | None]]`, *optional*, defaults to `{}`):
            Each sample's shape of every media field (`None` where it has none); what splitting the batch into
            samples needs.
        token_fields (`dict[str, torch.Tensor | list[torch.Tensor]]`, *optional*, defaults to `{}`):
            The processor's per-token type fields (`mm_token_type_ids`, ...), laid out like `sequences` (0 on the
            completion and the padding); passed to the model as keywords.
        multimodal_samples (`list[dict[str, torch.Tensor]]`, *optional*):
            The samples' own media dicts (the replay buffer items'), held by reference and never moved or pinned:
            what [`~rft_trl.models.media_encodings.MediaEncodings`] recognises a prompt's media by.
    """

    sequences: torch.Tensor | list[torch.Tensor]
    action_log_probs: torch.Tensor | list[torch.Tensor] | None = None
    base_action_log_probs: torch.Tensor | list[torch.Tensor] | None = None
    values: torch.Tensor | list[torch.Tensor] | None = None
    returns: torch.Tensor | list[torch.Tensor] | None = None
    advantages: torch.Tensor | list[torch.Tensor] | None = None
    attention_mask: torch.Tensor | list[torch.Tensor] | None = None
    action_mask: torch.Tensor | list[torch.Tensor] | None = None
    info: dict[str, torch.Tensor] = field(default_factory=dict)
    action_entropy: torch.Tensor | list[torch.Tensor] | None = None
    importance_weights: torch.Tensor | list[torch.Tensor] | None = None
    tool_mask: torch.Tensor | list[torch.Tensor] | None = None
    multimodal_inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    multimodal_shapes: dict[str, list[tuple[int, ...] | None]] = field(default_factory=dict)
    token_fields: dict[str, torch.Tensor | list[torch.Tensor]] = field(default_factory=dict)
    multimodal_samples: list[dict[str, torch.Tensor]] | None = field(default=None, metadata={"by_reference": True})

    @property
    def is_packed(self) -> bool:
        """Whether the per-token fields are lists of unpadded samples."""
        return isinstance(self.sequences, list)

    @property
    def batch_size(self) -> int:
        return len(self.sequences)

    @property
    def packed_seq_lens(self) -> list[int] | None:
        """Length of each sample's sequence when packed, `None` when padded."""
        if not self.is_packed:
            return None
        return [sequence.numel() for sequence in self.sequences]

    @property
    def num_actions(self) -> int | list[int]:
        """Number of action positions: per sample when packed, the padded width `A` when padded."""
        reference = self.action_mask if self.action_mask is not None else self.action_log_probs
        if reference is None:
            raise ValueError("num_actions needs action_mask or action_log_probs.")
        if self.is_packed:
            return [actions.numel() for actions in reference]
        return reference.size(1)

    def to_device(self, device: torch.device | str, non_blocking: bool = False) -> Experience:
        """
        Move every tensor to `device`, in place.

        Returns:
            [`Experience`]: `self`, for chaining.
        """
        for f in _moved_fields(self):
            setattr(
                self, f.name, map_tensors(getattr(self, f.name), lambda t: t.to(device, non_blocking=non_blocking))
            )
        return self

    def pin_memory(self) -> Experience:
        """
        Pin every tensor in page-locked memory, in place, so that copies to the accelerator can be asynchronous. A
        no-op without an accelerator, like `DataLoader(pin_memory=True)`, which calls this.

        Returns:
            [`Experience`]: `self`.
        """
        if torch.accelerator.is_available():
            for f in _moved_fields(self):
                setattr(self, f.name, map_tensors(getattr(self, f.name), lambda t: t.pin_memory()))
        return self


def _moved_fields(experience: Experience) -> list:
    """The fields whose tensors move with the batch: all but those held by reference (`multimodal_samples`)."""
    return [f for f in fields(experience) if not f.metadata.get("by_reference")]


def __getattr__(name: str):
    # The seed's `ExperienceVL` stays importable from here. It lives in `rft_trl.compat`, which imports this module,
    # so it is looked up on first use: importing this module never imports compat.
    if name == "ExperienceVL":
        from ..compat.experience import ExperienceVL

        return ExperienceVL
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
