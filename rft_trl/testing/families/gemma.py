"""Tiny Gemma 3: a SigLIP vision tower, the average-pooling projector, and sliding plus global text layers."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, ProcessorMixin
from transformers.models.gemma3 import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessor,
    Gemma3Processor,
)

from .common import HEAD_DIM, family_tokenizer, init_model, make_processor, text_kwargs, token_ids, vision_tower

# A 64x64 image cut into 8x8-pixel patches (an 8x8 grid) is average-pooled 2x2 into 16 soft tokens.
GEMMA3_IMAGE_SIZE = 64
GEMMA3_PATCH_SIZE = 8
GEMMA3_TOKENS_PER_IMAGE = 16
# Sliding window of the local layers: above any test prompt, as the released 1024 is above most real ones.
GEMMA3_SLIDING_WINDOW = 512
GEMMA3_TOKENS = {"boi_token": "<start_of_image>", "image_token": "<image_soft_token>", "eoi_token": "<end_of_image>"}


def build_tiny_gemma3(seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """
    Build a tiny Gemma 3 (SigLIP vision tower, average-pooling projector, a sliding and a global text layer).

    An image part renders as `<start_of_image>`, which [`Gemma3Processor`] expands into
    `\\n\\n<start_of_image>` + 16 x `<image_soft_token>` + `<end_of_image>\\n\\n`. The processor returns
    `token_type_ids` (1 on the soft tokens): pass them to the model, they make attention bidirectional inside each
    image. Give images nested per row (`[[image], []]`) when a call has several rows.

    Args:
        seed (`int`, *optional*, defaults to `0`):
            Seeds the tokenizer corpus and the weight initialisation.

    Returns:
        `tuple[PreTrainedModel, Gemma3Processor]`: the model in eval mode and its processor (images, squashed to
        64x64 pixels).
    """
    tokenizer = family_tokenizer(
        seed, list(GEMMA3_TOKENS.values()), image=GEMMA3_TOKENS["boi_token"], named_tokens=GEMMA3_TOKENS
    )
    processor = make_processor(
        Gemma3Processor,
        tokenizer,
        image_processor=Gemma3ImageProcessor(size={"height": GEMMA3_IMAGE_SIZE, "width": GEMMA3_IMAGE_SIZE}),
        image_seq_length=GEMMA3_TOKENS_PER_IMAGE,
    )
    text_config = {
        **text_kwargs(tokenizer),
        "head_dim": HEAD_DIM,
        "query_pre_attn_scalar": HEAD_DIM,
        "sliding_window": GEMMA3_SLIDING_WINDOW,
        "layer_types": ["sliding_attention", "full_attention"],
    }
    config = Gemma3Config(
        text_config=text_config,
        vision_config=vision_tower(
            "siglip_vision_model", GEMMA3_IMAGE_SIZE, patch_size=GEMMA3_PATCH_SIZE, vision_use_head=False
        ),
        mm_tokens_per_image=GEMMA3_TOKENS_PER_IMAGE,
        tie_word_embeddings=False,
        **token_ids(
            tokenizer,
            boi_token_index=GEMMA3_TOKENS["boi_token"],
            eoi_token_index=GEMMA3_TOKENS["eoi_token"],
            image_token_index=GEMMA3_TOKENS["image_token"],
        ),
    )
    model = init_model(Gemma3ForConditionalGeneration, config, seed, tokenizer)
    # Gemma 3 initialises the projector to zeros (a trained checkpoint overwrites it); left so, every image would embed
    # as zeros, the logits would ignore the pixels and the vision tower would get no gradient. Re-drawn from the
    # seeded generator, right after the weights, so the build stays deterministic.
    with torch.no_grad():
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(std=config.initializer_range)
    return model, processor
