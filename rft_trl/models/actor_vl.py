"""`ActorVL`: the [`Actor`] face for vision-language models (images and videos)."""

from __future__ import annotations

from .actor import Actor

__all__ = ["ActorVL"]


class ActorVL(Actor):
    """
    An [`Actor`] that takes images and videos: `pixel_values`, `image_grid_thw`, `pixel_values_videos`,
    `video_grid_thw` (and `second_per_grid_ts` for Qwen2.5-VL videos) as keyword arguments of `generate` and
    `forward`. Everything else, including the constructor, is [`Actor`]'s.

    Example:

    ```python
    >>> actor = ActorVL("Qwen/Qwen2.5-VL-3B-Instruct", use_flash_attention_2=True, lora_rank=16, lora_alpha=32)
    >>> sequences, attention_mask, action_mask = actor.generate(
    ...     input_ids, attention_mask=mask, pixel_values=pixel_values, image_grid_thw=grid, max_new_tokens=100
    ... )
    ```
    """

    modality = "vision"
