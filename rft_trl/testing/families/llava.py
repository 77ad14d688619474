"""Tiny LLaVA-style models: LLaVA 1.5, LLaVA-OneVision and Mistral 3.

LLaVA 1.5 is CLIP + Llama, LLaVA-OneVision SigLIP with anyres tiles + Qwen2, Mistral 3 Pixtral (2D RoPE) + Mistral.
"""

from __future__ import annotations

from transformers import PreTrainedModel, ProcessorMixin
from transformers.models.llava import LlavaConfig, LlavaForConditionalGeneration, LlavaImageProcessor, LlavaProcessor
from transformers.models.llava_onevision import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
)
from transformers.models.mistral3 import Mistral3Config, Mistral3ForConditionalGeneration
from transformers.models.pixtral import PixtralImageProcessor, PixtralProcessor

from .common import (
    HIDDEN_SIZE,
    MERGE_SIZE,
    PATCH_SIZE,
    family_tokenizer,
    init_model,
    make_processor,
    text_kwargs,
    vision_tower,
)

# LLaVA 1.5: a 56x56 crop in 14-pixel patches gives 16 patch features + CLS; the CLS is dropped.
LLAVA_IMAGE_SIZE = 56
# LLaVA-OneVision: 28x28 tiles of 2x2 patches (4 tokens a tile). Anyres picks one of these tiny grids, so a single
# image is a base tile plus at most 2x2 tiles (<= 24 tokens with the row newlines); a video frame is pooled to 1
# token; an image in a multi-image row is one un-tiled tile (4 tokens + newline).
ONEVISION_TILE_SIZE = 28
ONEVISION_GRID_PINPOINTS = [[28, 28], [28, 56], [56, 28], [56, 56]]
# Mistral 3: 14-pixel patches merged 2x2, so one token per 28x28 pixels plus an [IMG_BREAK] per row; images are
# shrunk to fit 112 pixels (4x4 tokens at most), never enlarged: 56x56 -> [IMG] x 4 + 2 row markers.
MISTRAL3_LONGEST_EDGE = 112


def build_tiny_llava(seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """
    Build a tiny LLaVA 1.5 (CLIP vision tower, two-layer MLP projector, Llama text model).

    An image part renders as `<image>`, which [`LlavaProcessor`] repeats once per patch feature: 16 for the 56x56
    crop (the CLS feature is dropped, `vision_feature_select_strategy="default"`). The features come from the
    second-to-last vision layer, as released, so the last vision layer gets no gradient.

    Args:
        seed (`int`, *optional*, defaults to `0`):
            Seeds the tokenizer corpus and the weight initialisation.

    Returns:
        `tuple[PreTrainedModel, LlavaProcessor]`: the model in eval mode and its processor (images, resized and
        centre-cropped to 56x56).
    """
    image = "<image>"
    tokenizer = family_tokenizer(seed, [image], image=image)
    crop_size = {"height": LLAVA_IMAGE_SIZE, "width": LLAVA_IMAGE_SIZE}
    processor = make_processor(
        LlavaProcessor,
        tokenizer,
        image_processor=LlavaImageProcessor(size={"shortest_edge": LLAVA_IMAGE_SIZE}, crop_size=crop_size),
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        image_token=image,
        num_additional_image_tokens=1,
    )
    config = LlavaConfig(
        vision_config=vision_tower("clip_vision_model", LLAVA_IMAGE_SIZE, projection_dim=HIDDEN_SIZE),
        text_config={"model_type": "llama", **text_kwargs(tokenizer)},
        image_token_index=tokenizer.convert_tokens_to_ids(image),
        image_seq_length=(LLAVA_IMAGE_SIZE // PATCH_SIZE) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        tie_word_embeddings=False,
    )
    return init_model(LlavaForConditionalGeneration, config, seed, tokenizer), processor


def build_tiny_llava_onevision(seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """
    Build a tiny LLaVA-OneVision (SigLIP vision tower, anyres tiling, Qwen2 text model) that takes images and videos.

    An image part renders as `<image>` and a video part as `<video>`. A lone image in its row is tiled ("anyres"):
    a 28x28 base view plus up to 2x2 tiles chosen from a tiny grid, 4 tokens a tile and a newline token per row of
    features (56x56 -> 24 tokens). In a row with several images each image is a single padded-to-square tile
    (5 tokens), so give images nested per row. A video frame (28x28) is pooled to 1 token, plus one newline token
    per video. The model needs the processor's `batch_num_images`.

    Args:
        seed (`int`, *optional*, defaults to `0`):
            Seeds the tokenizer corpus and the weight initialisation.

    Returns:
        `tuple[PreTrainedModel, LlavaOnevisionProcessor]`: the model in eval mode and its processor.
    """
    image, video = "<image>", "<video>"
    tokenizer = family_tokenizer(seed, [image, video], image=image, video=video)
    size = {"height": ONEVISION_TILE_SIZE, "width": ONEVISION_TILE_SIZE}
    processor = make_processor(
        LlavaOnevisionProcessor,
        tokenizer,
        image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=ONEVISION_GRID_PINPOINTS),
        video_processor=LlavaOnevisionVideoProcessor(size=size),
        num_image_tokens=(ONEVISION_TILE_SIZE // PATCH_SIZE) ** 2,
        vision_feature_select_strategy="full",
        image_token=image,
        video_token=video,
        vision_aspect_ratio="anyres_max_9",
    )
    config = LlavaOnevisionConfig(
        vision_config=vision_tower("siglip_vision_model", ONEVISION_TILE_SIZE, vision_use_head=False),
        text_config={"model_type": "qwen2", **text_kwargs(tokenizer)},
        image_token_index=tokenizer.convert_tokens_to_ids(image),
        video_token_index=tokenizer.convert_tokens_to_ids(video),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=ONEVISION_GRID_PINPOINTS,
        vision_aspect_ratio="anyres_max_9",
        tie_word_embeddings=False,
    )
    return init_model(LlavaOnevisionForConditionalGeneration, config, seed, tokenizer), processor


def build_tiny_mistral3(seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """
    Build a tiny Mistral 3 (Pixtral vision tower with 2D RoPE, 2x2 patch merger, Mistral text model).

    An image part renders as `[IMG]`, which [`PixtralProcessor`] expands into one `[IMG]` per 28x28 pixels, an
    `[IMG_BREAK]` after each row and `[IMG_END]` in place of the last break. Images keep their aspect ratio (shrunk to
    fit 112 pixels, rounded up to 28), so a batch's `pixel_values` are zero-padded to the largest image and
    `image_sizes` (which the model needs) gives each image's real size.

    Args:
        seed (`int`, *optional*, defaults to `0`):
            Seeds the tokenizer corpus and the weight initialisation.

    Returns:
        `tuple[PreTrainedModel, PixtralProcessor]`: the model in eval mode and its processor.
    """
    image, image_break, image_end = "[IMG]", "[IMG_BREAK]", "[IMG_END]"
    tokenizer = family_tokenizer(seed, [image, image_break, image_end], image=image)
    image_processor = PixtralImageProcessor(
        size={"longest_edge": MISTRAL3_LONGEST_EDGE}, patch_size={"height": PATCH_SIZE, "width": PATCH_SIZE}
    )
    processor = make_processor(
        PixtralProcessor,
        tokenizer,
        image_processor=image_processor,
        patch_size=PATCH_SIZE,
        spatial_merge_size=MERGE_SIZE,
        image_token=image,
        image_break_token=image_break,
        image_end_token=image_end,
    )
    config = Mistral3Config(
        vision_config=vision_tower("pixtral", MISTRAL3_LONGEST_EDGE),
        # No sliding window, as in the released Mistral 3.
        text_config={"model_type": "mistral", **text_kwargs(tokenizer), "sliding_window": None},
        image_token_index=tokenizer.convert_tokens_to_ids(image),
        spatial_merge_size=MERGE_SIZE,
        vision_feature_layer=-1,
        multimodal_projector_bias=False,
        tie_word_embeddings=False,
    )
    return init_model(Mistral3ForConditionalGeneration, config, seed, tokenizer), processor
