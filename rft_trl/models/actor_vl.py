"""`ActorVL`: the [`Actor`] face for vision-language models, with the seed's keyword names."""

from __future__ import annotations

import torch

from .actor import Actor

__all__ = ["ActorVL"]


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
