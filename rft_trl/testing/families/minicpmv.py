"""Tiny MiniCPM-V 4.6 (`minicpmv4_6`): a SigLIP-style NaViT vision tower with a window-attention merger, and the
Qwen3.5 hybrid text model (a Gated DeltaNet linear-attention layer, then a full-attention layer).

Its processor lays every image's patches side by side on the last axis of one `pixel_values` `[1, 3, 14, patches x
14]` (one `target_sizes` row per image), for a batch as for one prompt, and the model reads only `pixel_values[:1]`.
rft_trl batches samples on the first axis, so the layout probe refuses its images and videos, naming that axis: the
builder is the refusal's test subject, outside the matrix.

Image slicing is off and the slice resolution is 112 pixels: an image is resized to at most 8x8 patches of 14
pixels, merged 4x4 (a window merger after the first vision layer, then the final merger) into at most 4 `<image>`
tokens between `<image_start>` and `<image_end>`.
"""

from __future__ import annotations

from transformers import (
    MiniCPMV4_6Config,
    MiniCPMV4_6ForConditionalGeneration,
    MiniCPMV4_6Processor,
    PreTrainedModel,
    ProcessorMixin,
)
from transformers.models.minicpmv4_6.image_processing_minicpmv4_6 import MiniCPMV4_6ImageProcessor
from transformers.models.minicpmv4_6.video_processing_minicpmv4_6 import MiniCPMV4_6VideoProcessor

from .common import HEAD_DIM, PATCH_SIZE, VISION_TOWER, family_tokenizer, init_model, make_processor, text_kwargs
from .qwen3_5 import LINEAR_ATTENTION

# The tokens MiniCPM-V's processor reads as tokenizer attributes.
MINICPMV_TOKENS = {
    "image_token": "<image>",
    "video_token": "<video>",
    "image_start_token": "<image_start>",
    "image_end_token": "<image_end>",
    "slice_start_token": "<slice>",
    "slice_end_token": "</slice>",
    "image_id_start_token": "<image_id>",
    "image_id_end_token": "</image_id>",
}
SLICE_RESOLUTION = 112


def build_tiny_minicpmv4_6(seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """
    Build a tiny MiniCPM-V 4.6 (one linear-attention layer, one full-attention layer) with its processor.

    Args:
        seed (`int`, *optional*, defaults to `0`):
            Seeds the tokenizer corpus and the weight initialisation.

    Returns:
        `tuple[PreTrainedModel, MiniCPMV4_6Processor]`: the model in eval mode and its processor (a 56x56 image is 4
        tokens).
    """
    image_token, video_token = MINICPMV_TOKENS["image_token"], MINICPMV_TOKENS["video_token"]
    tokenizer = family_tokenizer(
        seed, list(MINICPMV_TOKENS.values()), image=image_token, video=video_token, named_tokens=MINICPMV_TOKENS
    )
    sizes = {"scale_resolution": SLICE_RESOLUTION, "patch_size": PATCH_SIZE, "slice_mode": False}
    processor = make_processor(
        MiniCPMV4_6Processor,
        tokenizer,
        image_processor=MiniCPMV4_6ImageProcessor(**sizes, use_image_id=False),
        video_processor=MiniCPMV4_6VideoProcessor(**sizes, use_image_id=False, do_sample_frames=False),
    )
    # The window merger runs after the first of the two vision layers.
    vision_config = {**VISION_TOWER, "patch_size": PATCH_SIZE, "image_size": SLICE_RESOLUTION, "insert_layer_id": 0}
    config = MiniCPMV4_6Config(
        text_config={"model_type": "qwen3_5_text", **text_kwargs(tokenizer), "head_dim": HEAD_DIM, **LINEAR_ATTENTION},
        vision_config=vision_config,
        insert_layer_id=0,
        image_size=SLICE_RESOLUTION,
        image_token_id=tokenizer.convert_tokens_to_ids(image_token),
        video_token_id=tokenizer.convert_tokens_to_ids(video_token),
    )
    return init_model(MiniCPMV4_6ForConditionalGeneration, config, seed, tokenizer), processor
