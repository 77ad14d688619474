"""Tiny Aya Vision: a SigLIP vision tower over image tiles, the pixel-shuffle + SwiGLU adapter, and Cohere 2."""

from __future__ import annotations

from transformers import GotOcr2ImageProcessor, PreTrainedModel, ProcessorMixin
from transformers.models.aya_vision import AyaVisionConfig, AyaVisionForConditionalGeneration, AyaVisionProcessor

from .common import (
    PATCH_SIZE,
    PIXEL_SHUFFLE,
    TILE_SIZE,
    family_tokenizer,
    init_model,
    make_processor,
    text_kwargs,
    vision_tower,
)

AYA_VISION_TOKENS = {
    "image_token": "<image>",
    "start_of_img_token": "<|START_OF_IMG|>",
    "end_of_img_token": "<|END_OF_IMG|>",
    "img_patch_token": "<|IMG_PATCH|>",
    "img_line_break_token": "<|IMG_LINE_BREAK|>",
}
# Tiles: a 56x56 global view plus, for a large enough image, up to 2 tiles of 56x56 (4 tokens a tile after the 2x2
# pixel shuffle). The released model allows 12 tiles of 364x364.
AYA_VISION_MAX_TILES = 2
# Sliding window of the local layer: above any test prompt, as the released 4096 is above most real ones.
AYA_VISION_SLIDING_WINDOW = 512


def build_tiny_aya_vision(seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """
    Build a tiny Aya Vision (SigLIP vision tower, pixel-shuffle adapter, Cohere 2 text model with a sliding and a
    global layer).

    An image part renders as `<image>`, which [`AyaVisionProcessor`] expands into `<|START_OF_IMG|>`, then for each
    local tile `TILE_<i>` + 4 `<|IMG_PATCH|>`, then `TILE_GLOBAL` + 4 `<|IMG_PATCH|>` for the global view, and
    `<|END_OF_IMG|>`. The tile markers are plain text, as released. The text model's `logit_scale` is 1 (the released
    0.0625 scales the logits after the head: such a model is scored from its full logits, which is exact but does not
    take the fused path the matrix asserts).

    Args:
        seed (`int`, *optional*, defaults to `0`):
            Seeds the tokenizer corpus and the weight initialisation.

    Returns:
        `tuple[PreTrainedModel, AyaVisionProcessor]`: the model in eval mode and its processor.
    """
    tokenizer = family_tokenizer(seed, list(AYA_VISION_TOKENS.values()), image=AYA_VISION_TOKENS["image_token"])
    image_processor = GotOcr2ImageProcessor(
        size={"height": TILE_SIZE, "width": TILE_SIZE},
        crop_to_patches=True,
        min_patches=1,
        max_patches=AYA_VISION_MAX_TILES,
    )
    processor = make_processor(
        AyaVisionProcessor,
        tokenizer,
        image_processor=image_processor,
        patch_size=PATCH_SIZE,
        img_size=TILE_SIZE,
        downsample_factor=PIXEL_SHUFFLE,
        **AYA_VISION_TOKENS,
    )
    text_config = {
        "model_type": "cohere2",
        **text_kwargs(tokenizer),
        "layer_types": ["sliding_attention", "full_attention"],
        "sliding_window": AYA_VISION_SLIDING_WINDOW,
        "logit_scale": 1.0,
    }
    config = AyaVisionConfig(
        vision_config=vision_tower("siglip_vision_model", TILE_SIZE, vision_use_head=False),
        text_config=text_config,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        downsample_factor=PIXEL_SHUFFLE,
        image_token_index=tokenizer.convert_tokens_to_ids(AYA_VISION_TOKENS["img_patch_token"]),
        tie_word_embeddings=False,
    )
    return init_model(AyaVisionForConditionalGeneration, config, seed, tokenizer), processor
