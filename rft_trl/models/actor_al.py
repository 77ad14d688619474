"""`ActorAL`: the [`Actor`] face for audio-language models."""

from __future__ import annotations

from .actor import Actor

__all__ = ["ActorAL"]


class ActorAL(Actor):
    """
    An [`Actor`] that takes audio: the processor's `input_features` and `feature_attention_mask` as keyword
    arguments of `generate` and `forward`. `audio_values` is accepted as another name for `input_features` (the
    name LightRFT's audio actor uses). Everything else, including the constructor, is [`Actor`]'s.

    Example:

    ```python
    >>> actor = ActorAL("Qwen/Qwen2-Audio-7B-Instruct", lora_rank=16, lora_alpha=32)
    >>> sequences, attention_mask, action_mask = actor.generate(
    ...     input_ids, attention_mask=mask, audio_values=features, feature_attention_mask=feature_mask,
    ...     max_new_tokens=100,
    ... )
    ```
    """

    modality = "audio"
    field_aliases = {"audio_values": "input_features"}
