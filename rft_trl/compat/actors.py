"""
The seed's actor names (`lightrft.models.actor_vl.ActorVL`, `lightrft.models.actor_al.ActorAL`): faces of the one
[`Actor`] that name the seed's keyword arguments. The trainer builds [`Actor`] itself; it takes these too.
"""

from __future__ import annotations

import torch

from ..models.actor import Actor

__all__ = ["ActorAL", "ActorVL"]


class ActorVL(Actor):
    """
    An [`Actor`] whose `generate` and `forward` name the Qwen-VL fields of the seed's signatures: `pixel_values`,
    `image_grid_thw`, `pixel_values_videos`, `video_grid_thw`. Every other field a processor returns
    (`mm_token_type_ids`, `image_sizes`, `pixel_attention_mask`, `second_per_grid_ts`, ...) is passed by name too;
    the per-token type fields may be left out, as the seed's calls do, and are then derived from the tokens
    ([`Actor.token_types`]). The constructor and everything else are [`Actor`]'s.

    Example:

    ```python
    >>> actor = ActorVL("Qwen/Qwen2.5-VL-3B-Instruct", use_flash_attention_2=True, lora_rank=16, lora_alpha=32)
    >>> batch = processor(text=texts, images=images, return_tensors="pt", padding=True)
    >>> sequences, attention_mask, action_mask = actor.generate(**batch, max_new_tokens=100)
    >>> log_probs = actor(
    ...     sequences, action_mask.shape[1], attention_mask, pixel_values=batch["pixel_values"],
    ...     image_grid_thw=batch["image_grid_thw"],
    ... )
    ```
    """

    modality = "vision"

    def generate(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.LongTensor, torch.LongTensor, torch.BoolTensor]:
        """See [`Actor.generate`]; the named fields are passed on with the other keyword arguments."""
        return super().generate(
            input_ids,
            pixel_values=pixel_values,
            image_grid_thw=image_grid_thw,
            pixel_values_videos=pixel_values_videos,
            video_grid_thw=video_grid_thw,
            **kwargs,
        )

    def forward(
        self,
        sequences: torch.LongTensor,
        num_actions: int | list[int] | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
        return_output: bool = False,
        packed_seq_lens: list[int] | None = None,
        temperature: float = 1.0,
        return_entropy: bool = False,
        **model_inputs: torch.Tensor | None,
    ):
        """See [`Actor.forward`]; the named fields are passed on with the other model inputs."""
        return super().forward(
            sequences,
            num_actions,
            attention_mask,
            return_output=return_output,
            packed_seq_lens=packed_seq_lens,
            temperature=temperature,
            return_entropy=return_entropy,
            pixel_values=pixel_values,
            image_grid_thw=image_grid_thw,
            pixel_values_videos=pixel_values_videos,
            video_grid_thw=video_grid_thw,
            **model_inputs,
        )


class ActorAL(Actor):
    """
    An [`Actor`] whose `generate` and `forward` take the seed's `audio_values`: the processor's audio features
    (`input_features`, under the name LightRFT's audio actor uses). `forward` also names the seed's vision fields,
    which omni models (audio and images in one sample) use. Every other field a processor returns
    (`feature_attention_mask`, `mm_token_type_ids`, ...) is passed by name; the constructor and everything else are
    [`Actor`]'s.

    Example:

    ```python
    >>> actor = ActorAL("Qwen/Qwen2-Audio-7B-Instruct", lora_rank=16, lora_alpha=32)
    >>> batch = processor(text=texts, audio=clips, sampling_rate=16000, return_tensors="pt", padding=True)
    >>> sequences, attention_mask, action_mask = actor.generate(
    ...     batch["input_ids"], audio_values=batch["input_features"], attention_mask=batch["attention_mask"],
    ...     feature_attention_mask=batch["feature_attention_mask"], max_new_tokens=100,
    ... )
    ```
    """

    modality = "audio"
    field_aliases = {"audio_values": "input_features"}

    def generate(
        self, input_ids: torch.Tensor, audio_values: torch.Tensor | None = None, **kwargs
    ) -> tuple[torch.LongTensor, torch.LongTensor, torch.BoolTensor]:
        """See [`Actor.generate`]; `audio_values` is the processor's `input_features`."""
        return super().generate(input_ids, audio_values=audio_values, **kwargs)

    def forward(
        self,
        sequences: torch.LongTensor,
        num_actions: int | list[int] | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
        return_output: bool = False,
        packed_seq_lens: list[int] | None = None,
        audio_values: torch.Tensor | None = None,
        temperature: float = 1.0,
        return_entropy: bool = False,
        **model_inputs: torch.Tensor | None,
    ):
        """See [`Actor.forward`]; `audio_values` is the processor's `input_features`."""
        return super().forward(
            sequences,
            num_actions,
            attention_mask,
            return_output=return_output,
            packed_seq_lens=packed_seq_lens,
            temperature=temperature,
            return_entropy=return_entropy,
            pixel_values=pixel_values,
            image_grid_thw=image_grid_thw,
            pixel_values_videos=pixel_values_videos,
            video_grid_thw=video_grid_thw,
            audio_values=audio_values,
            **model_inputs,
        )
