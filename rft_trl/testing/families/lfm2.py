"""Tiny LFM2-VL (`lfm2_vl`): a SigLIP2 NaFlex vision tower, a pixel-unshuffle projector and an LFM2 text model; and
that LFM2 text model alone (`lfm2`, a causal LM with the tiny tokenizer).

The text model is a hybrid: a gated short-convolution layer then a full-attention layer. Padded batches are exact; the
convolution runs across packed samples, so `verify_model` refuses packing with the measured difference. transformers
keeps packed samples apart in that layer only when told the boundaries (`seq_idx`), through the causal-conv1d kernel;
its torch fallback (CPU) refuses them.

Image splitting is off: every image keeps its aspect ratio, resized to at most 16 patches of 16 pixels (4x4), which
the projector unshuffles 2x2 into at most 4 `<image>` tokens between `<|image_start|>` and `<|image_end|>`.
`pixel_values` is `[images, 16, 768]` (patches padded to 16, with `pixel_attention_mask` and each image's patch grid
in `spatial_shapes`).
"""

from __future__ import annotations

from transformers import (
    Lfm2Config,
    Lfm2ForCausalLM,
    Lfm2VlConfig,
    Lfm2VlForConditionalGeneration,
    Lfm2VlImageProcessor,
    Lfm2VlProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
)

from ..tokenizer import build_tiny_tokenizer
from .common import (
    PIXEL_SHUFFLE,
    TOKENS_PER_TILE,
    VISION_TOWER,
    family_tokenizer,
    init_model,
    make_processor,
    text_kwargs,
)

# `<|img_thumbnail|>` and the `<|img_row_i_col_j|>` tile tokens only appear when image splitting is on.
LFM2_VL_MEDIA_TOKENS = ["<image>", "<|image_start|>", "<|image_end|>", "<|img_thumbnail|>"]
LFM2_PATCH_SIZE = 16


def _text_config(tokenizer: PreTrainedTokenizerFast) -> dict:
    return {
        **text_kwargs(tokenizer),
        "layer_types": ["conv", "full_attention"],
        # The feed-forward width as given (released checkpoints round it up to a multiple of 256).
        "block_auto_adjust_ff_dim": False,
        # Read for every weight of the model (the LFM2-VL config has none of its own). At the released 0.02 the gated
        # convolution (a product of two small projections) barely acts: its leak across packed samples measured
        # 1.6e-5-2e-5 nats in LFM2-VL, at the 1e-5 tolerance, so the packing check would be a coin toss; at 0.1 it is
        # 0.06-0.07.
        "initializer_range": 0.1,
    }


def build_tiny_lfm2(seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """
    Build a tiny text-only LFM2 causal LM ([`build_tiny_lfm2_vl`]'s text model: one convolution layer, one
    full-attention layer) and its tokenizer, the default Qwen one.

    Args:
        seed (`int`, *optional*, defaults to `0`):
            Seeds the tokenizer corpus and the weight initialisation.

    Returns:
        `tuple[PreTrainedModel, PreTrainedTokenizerFast]`: the model in eval mode and its tokenizer.
    """
    tokenizer = build_tiny_tokenizer(seed=seed)
    return init_model(Lfm2ForCausalLM, Lfm2Config(**_text_config(tokenizer)), seed, tokenizer), tokenizer


def build_tiny_lfm2_vl(seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """
    Build a tiny LFM2-VL (one convolution layer, one full-attention layer) with its processor (images only).

    Args:
        seed (`int`, *optional*, defaults to `0`):
            Seeds the tokenizer corpus and the weight initialisation.

    Returns:
        `tuple[PreTrainedModel, Lfm2VlProcessor]`: the model in eval mode and its processor (a 56x56 image is 4
        tokens).
    """
    tokenizer = family_tokenizer(seed, LFM2_VL_MEDIA_TOKENS, image="<image>")
    image_processor = Lfm2VlImageProcessor(
        do_image_splitting=False,
        encoder_patch_size=LFM2_PATCH_SIZE,
        downsample_factor=PIXEL_SHUFFLE,
        min_image_tokens=1,
        max_image_tokens=TOKENS_PER_TILE,
    )
    processor = make_processor(Lfm2VlProcessor, tokenizer, image_processor=image_processor)
    text_config = {"model_type": "lfm2", **_text_config(tokenizer)}
    # The learned position embeddings are a 4x4 grid, resampled to each image's patch grid.
    vision_config = {
        "model_type": "siglip2_vision_model",
        **VISION_TOWER,
        "patch_size": LFM2_PATCH_SIZE,
        "num_patches": TOKENS_PER_TILE * PIXEL_SHUFFLE**2,
    }
    config = Lfm2VlConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        downsample_factor=PIXEL_SHUFFLE,
        projector_hidden_size=2 * VISION_TOWER["hidden_size"],
        tie_word_embeddings=False,
    )
    return init_model(Lfm2VlForConditionalGeneration, config, seed, tokenizer), processor
