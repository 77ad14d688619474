"""Tiny ERNIE-4.5-VL-MoE: a Qwen-style vision tower, 3-D RoPE, and MoE text layers with separate vision experts."""

from __future__ import annotations

from transformers import PreTrainedModel, ProcessorMixin
from transformers.models.ernie4_5_vl_moe import (
    Ernie4_5_VLMoeConfig,
    Ernie4_5_VLMoeForConditionalGeneration,
    Ernie4_5_VLMoeImageProcessor,
    Ernie4_5_VLMoeProcessor,
    Ernie4_5_VLMoeVideoProcessor,
)

from .common import (
    HIDDEN_SIZE,
    MAX_VIDEO_FRAMES,
    NUM_EXPERTS,
    NUM_EXPERTS_PER_TOKEN,
    NUM_HEADS,
    PATCH_SIZE,
    family_tokenizer,
    init_model,
    make_processor,
    pixel_bounds,
    text_kwargs,
    token_ids,
)

# The processor reads these tokens off the tokenizer by name; the config takes their ids.
ERNIE4_5_VL_TOKENS = {
    "image_start_token": "<|IMAGE_START|>",
    "image_token": "<|IMAGE_PLACEHOLDER|>",
    "image_end_token": "<|IMAGE_END|>",
    "video_start_token": "<|VIDEO_START|>",
    "video_token": "<|VIDEO_PLACEHOLDER|>",
    "video_end_token": "<|VIDEO_END|>",
}
# 3-D RoPE over head_dim 32: 16 frequencies split (H, W, T).
ERNIE4_5_VL_ROPE_PARAMETERS = {"rope_type": "default", "rope_theta": 500000.0, "mrope_section": [6, 6, 4]}


def build_tiny_ernie4_5_vl_moe(seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """
    Build a tiny ERNIE-4.5-VL-MoE (its vision tower and resampler; a dense text layer, then a MoE layer whose text and
    vision tokens go to separate groups of 4 experts, top-2, plus a shared expert) with its processor.

    An image part renders as `<|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>`, the processor repeating the
    placeholder once per merged patch (4 for a 56x56 image); videos likewise. The processor returns
    `mm_token_type_ids` (for the 3-D positions) and `moe_mm_token_type_ids` (which experts a token goes to; boundary
    tokens included). As released, the video processor draws each frame's timestamp with a font it loads from the
    Hub: the tiny one does not draw (`draw_on_frames=False`) and takes decoded frames as they come.

    Args:
        seed (`int`, *optional*, defaults to `0`):
            Seeds the tokenizer corpus and the weight initialisation.

    Returns:
        `tuple[PreTrainedModel, Ernie4_5_VLMoeProcessor]`: the model in eval mode and its processor.
    """
    tokens = ERNIE4_5_VL_TOKENS
    tokenizer = family_tokenizer(
        seed,
        list(tokens.values()),
        image=tokens["image_start_token"] + tokens["image_token"] + tokens["image_end_token"],
        video=tokens["video_start_token"] + tokens["video_token"] + tokens["video_end_token"],
        named_tokens=tokens,
    )
    processor = make_processor(
        Ernie4_5_VLMoeProcessor,
        tokenizer,
        image_processor=Ernie4_5_VLMoeImageProcessor(size=pixel_bounds(PATCH_SIZE)),
        video_processor=Ernie4_5_VLMoeVideoProcessor(
            size=pixel_bounds(PATCH_SIZE, 2, MAX_VIDEO_FRAMES),
            do_sample_frames=False,
            draw_on_frames=False,
        ),
    )
    text_config = {
        **text_kwargs(tokenizer),
        "rope_parameters": ERNIE4_5_VL_ROPE_PARAMETERS,
        "moe_num_experts": NUM_EXPERTS,
        "moe_k": NUM_EXPERTS_PER_TOKEN,
        "moe_num_shared_experts": 1,
        "moe_intermediate_size": [HIDDEN_SIZE, HIDDEN_SIZE // 2],
    }
    vision_config = {
        "depth": 2,
        "hidden_size": HIDDEN_SIZE,
        "intermediate_size": 2 * HIDDEN_SIZE,
        "num_heads": NUM_HEADS,
        "patch_size": PATCH_SIZE,
    }
    config = Ernie4_5_VLMoeConfig(
        text_config=text_config,
        vision_config=vision_config,
        tie_word_embeddings=False,
        **token_ids(
            tokenizer,
            image_start_token_id=tokens["image_start_token"],
            image_end_token_id=tokens["image_end_token"],
            image_token_id=tokens["image_token"],
            video_start_token_id=tokens["video_start_token"],
            video_end_token_id=tokens["video_end_token"],
            video_token_id=tokens["video_token"],
        ),
    )
    return init_model(Ernie4_5_VLMoeForConditionalGeneration, config, seed, tokenizer), processor
