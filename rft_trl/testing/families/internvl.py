"""Tiny InternVL: an InternViT vision tower, a pixel-shuffle MLP projector and a Qwen2 text model."""

from __future__ import annotations

from transformers import GotOcr2ImageProcessor, PreTrainedModel, ProcessorMixin
from transformers.models.internvl import (
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLProcessor,
    InternVLVideoProcessor,
)

from .common import TILE_SIZE, TOKENS_PER_TILE, family_tokenizer, init_model, make_processor, text_kwargs, vision_tower

# An image is tiled into at most this many tiles (plus a thumbnail when it makes more than one): a square image stays
# one tile (4 tokens), a 1:2 image becomes 2 tiles + thumbnail (12 tokens).
MAX_TILES = 2
INTERNVL_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}


def build_tiny_internvl(seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """
    Build a tiny InternVL with its processor.

    An image is resized and tiled into at most 2 tiles of 56x56 (plus a 56x56 thumbnail when it makes more than one),
    each tile giving 4 `<IMG_CONTEXT>` tokens between `<img>` and `</img>`. `pixel_values` is flat over tiles,
    `[num_tiles_in_batch, 3, 56, 56]`, with no per-row dimension. A video is one 56x56 tile per frame, rendered as
    `Frame1: <img>...</img>` lines, and its frames join the same `pixel_values`.

    Args:
        seed (`int`, *optional*, defaults to `0`):
            Seeds the tokenizer corpus and the weight initialisation.

    Returns:
        `tuple[PreTrainedModel, InternVLProcessor]`: the model in eval mode and a processor that handles images and
        videos.
    """
    # The processor reads the media tokens as named tokenizer attributes (`tokenizer.start_image_token_id`, ...).
    tokenizer = family_tokenizer(
        seed,
        list(INTERNVL_TOKENS.values()),
        image="<IMG_CONTEXT>\n",
        video="<video>\n",
        named_tokens=INTERNVL_TOKENS,
    )
    size = {"height": TILE_SIZE, "width": TILE_SIZE}
    processor = make_processor(
        InternVLProcessor,
        tokenizer,
        image_processor=GotOcr2ImageProcessor(size=size, crop_to_patches=True, min_patches=1, max_patches=MAX_TILES),
        video_processor=InternVLVideoProcessor(size=size),
        image_seq_length=TOKENS_PER_TILE,
    )
    config = InternVLConfig(
        vision_config=vision_tower("internvl_vision", TILE_SIZE),
        text_config={"model_type": "qwen2", **text_kwargs(tokenizer)},
        image_token_id=tokenizer.context_image_token_id,
        # The default `downsample_ratio=0.5` is the 2x2 pixel shuffle `TOKENS_PER_TILE` counts.
        image_seq_length=TOKENS_PER_TILE,
        tie_word_embeddings=False,
    )
    return init_model(InternVLForConditionalGeneration, config, seed, tokenizer), processor
