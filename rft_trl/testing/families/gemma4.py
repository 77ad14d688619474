"""Tiny Gemma 4: its own vision tower (2D RoPE over variable patch grids, 3x3 pooling), sliding and global layers."""

from __future__ import annotations

from transformers import PreTrainedModel, ProcessorMixin
from transformers.models.gemma4 import (
    Gemma4AudioFeatureExtractor,
    Gemma4Config,
    Gemma4ForConditionalGeneration,
    Gemma4ImageProcessor,
    Gemma4Processor,
    Gemma4VideoProcessor,
)

from .common import (
    HEAD_DIM,
    HIDDEN_SIZE,
    NUM_HEADS,
    NUM_LAYERS,
    family_tokenizer,
    init_model,
    make_processor,
    text_kwargs,
    token_ids,
)

# The fewest soft tokens Gemma 4's image processor supports: an image is resized (aspect ratio kept) to at most
# 70 x 9 patches of 16 pixels, pooled 3x3 into at most 70 soft tokens.
GEMMA4_SOFT_TOKENS = 70
GEMMA4_POOLING = 3
# Gemma4Processor checks for the audio tokens on every call, audio or not (an operator-precedence slip in its
# `validate_inputs`), so the tokenizer names them too.
GEMMA4_TOKENS = {
    "boi_token": "<|image>",
    "image_token": "<|image|>",
    "eoi_token": "<image|>",
    "boa_token": "<|audio>",
    "audio_token": "<|audio|>",
    "eoa_token": "<audio|>",
}
# Gemma4Processor adds this token to the tokenizer itself; adding it first keeps the vocabulary the model's.
GEMMA4_VIDEO_TOKEN = "<|video|>"


def gemma4_token_ids(tokenizer) -> dict[str, int]:
    """The ids of Gemma 4's special tokens (`GEMMA4_TOKENS`, `GEMMA4_VIDEO_TOKEN`), under `Gemma4Config`'s names."""
    return token_ids(
        tokenizer,
        boi_token_id=GEMMA4_TOKENS["boi_token"],
        eoi_token_id=GEMMA4_TOKENS["eoi_token"],
        image_token_id=GEMMA4_TOKENS["image_token"],
        video_token_id=GEMMA4_VIDEO_TOKEN,
        boa_token_id=GEMMA4_TOKENS["boa_token"],
        eoa_token_index=GEMMA4_TOKENS["eoa_token"],
        audio_token_id=GEMMA4_TOKENS["audio_token"],
    )


# Sliding window of the local layer: above any test prompt, as the released one is above most real ones.
GEMMA4_SLIDING_WINDOW = 512


def build_tiny_gemma4(seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """
    Build a tiny Gemma 4 (its vision tower, a sliding and a global text layer, per-layer input embeddings) for images.

    An image part renders as `<|image|>`, which [`Gemma4Processor`] expands into `<|image>` + one `<|image|>` per
    soft token (at most 70, fewer for a wide or tall image) + `<image|>`. The processor returns `mm_token_type_ids`
    (the model reads them for its vision blocks), `pixel_values` (patches) and `image_position_ids` (each patch's grid
    position, -1 on padding). Its video and audio sub-processors are kept as released, but the chat template renders no
    video or audio part and the model has no audio tower: rft_trl's layout probe marks both kinds unusable.

    Args:
        seed (`int`, *optional*, defaults to `0`):
            Seeds the tokenizer corpus and the weight initialisation.

    Returns:
        `tuple[PreTrainedModel, Gemma4Processor]`: the model in eval mode and its processor.
    """
    tokenizer = family_tokenizer(
        seed,
        [*GEMMA4_TOKENS.values(), GEMMA4_VIDEO_TOKEN],
        image=GEMMA4_TOKENS["image_token"],
        named_tokens=GEMMA4_TOKENS,
    )
    processor = make_processor(
        Gemma4Processor,
        tokenizer,
        feature_extractor=Gemma4AudioFeatureExtractor(),
        image_processor=Gemma4ImageProcessor(max_soft_tokens=GEMMA4_SOFT_TOKENS, pooling_kernel_size=GEMMA4_POOLING),
        video_processor=Gemma4VideoProcessor(),
        image_seq_length=GEMMA4_SOFT_TOKENS,
    )
    text_config = {
        **text_kwargs(tokenizer),
        "head_dim": HEAD_DIM,
        "global_head_dim": HEAD_DIM,
        "sliding_window": GEMMA4_SLIDING_WINDOW,
        "layer_types": ["sliding_attention", "full_attention"],
        # Image tokens attend to each other both ways in the sliding layers (`mm_token_type_ids` mark them): the
        # layout whose token types change the logits, which packing cannot keep apart (refused by verify_model).
        "use_bidirectional_attention": "vision",
        "num_kv_shared_layers": 0,
        "vocab_size_per_layer_input": len(tokenizer),
        "hidden_size_per_layer_input": 16,
    }
    vision_config = {
        "hidden_size": HIDDEN_SIZE,
        "intermediate_size": 2 * HIDDEN_SIZE,
        "num_hidden_layers": NUM_LAYERS,
        "num_attention_heads": NUM_HEADS,
        "num_key_value_heads": NUM_HEADS,
        "head_dim": HEAD_DIM,
        "pooling_kernel_size": GEMMA4_POOLING,
        "position_embedding_size": GEMMA4_SOFT_TOKENS * GEMMA4_POOLING**2,
    }
    config = Gemma4Config(
        text_config=text_config,
        vision_config=vision_config,
        audio_config=None,
        tie_word_embeddings=False,
        **gemma4_token_ids(tokenizer),
    )
    return init_model(Gemma4ForConditionalGeneration, config, seed, tokenizer), processor
