"""Tiny Llama 4: its vision tower (2D RoPE, pixel shuffle) over image tiles, and a MoE text model whose RoPE layers
attend in chunks and whose no-RoPE layers (every fourth as released, every second here) attend globally."""

from __future__ import annotations

from transformers import PreTrainedModel, ProcessorMixin
from transformers.models.llama4 import (
    Llama4Config,
    Llama4ForConditionalGeneration,
    Llama4ImageProcessor,
    Llama4Processor,
)

from .common import (
    HEAD_DIM,
    HIDDEN_SIZE,
    NUM_EXPERTS,
    NUM_HEADS,
    NUM_LAYERS,
    PATCH_SIZE,
    TILE_SIZE,
    family_tokenizer,
    init_model,
    make_processor,
    text_kwargs,
    token_ids,
)

LLAMA4_TOKENS = {
    "start_of_image_token": "<|image_start|>",
    "end_of_image_token": "<|image_end|>",
    "image_token": "<|image|>",
    "patch_token": "<|patch|>",
    "tile_x_separator_token": "<|tile_x_separator|>",
    "tile_y_separator_token": "<|tile_y_separator|>",
}
# Tiles of 56x56 pixels: 16 patches of 14, pixel-shuffled (ratio 0.5) into 4 tokens. An image is a global view plus,
# when it is larger than a tile, up to 2 local tiles (the released model allows 16 tiles of 336x336).
LLAMA4_MAX_TILES = 2
PIXEL_SHUFFLE_RATIO = 0.5
# Chunked attention on the RoPE layers: chunks above any test prompt, as the released 8192 is above most real ones.
LLAMA4_ATTENTION_CHUNK = 512


def build_tiny_llama4(seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """
    Build a tiny Llama 4 (its vision tower, pixel-shuffle projector; text: a chunked-attention RoPE layer, then a
    global-attention layer without RoPE, each with a MoE block of 4 experts, top-1, plus a shared expert, as Scout).

    transformers has no Llama 4 model without its language-model head, so [`Critic`] refuses it by name.

    An image part renders as `<|image|>`, which [`Llama4Processor`] expands into `<|image_start|>`, the local tiles
    (4 `<|patch|>` each, with `<|tile_x_separator|>` / `<|tile_y_separator|>` between them) when the image is larger
    than one tile, then `<|image|>` + 4 `<|patch|>` for the global view, and `<|image_end|>`.

    Args:
        seed (`int`, *optional*, defaults to `0`):
            Seeds the tokenizer corpus and the weight initialisation.

    Returns:
        `tuple[PreTrainedModel, Llama4Processor]`: the model in eval mode and its processor.
    """
    tokenizer = family_tokenizer(seed, list(LLAMA4_TOKENS.values()), image=LLAMA4_TOKENS["image_token"])
    processor = make_processor(
        Llama4Processor,
        tokenizer,
        image_processor=Llama4ImageProcessor(
            size={"height": TILE_SIZE, "width": TILE_SIZE},
            max_patches=LLAMA4_MAX_TILES,
            # The released processor rescales and normalises in bfloat16 (for the bfloat16 checkpoint), which a
            # float32 model refuses; rescaled only, the pixels stay float32 (in [0, 1] rather than [-1, 1]).
            do_normalize=False,
        ),
        patch_size=PATCH_SIZE,
        pixel_shuffle_ratio=PIXEL_SHUFFLE_RATIO,
        fake_image_token=LLAMA4_TOKENS["image_token"],
        **LLAMA4_TOKENS,
    )
    text_config = {
        **text_kwargs(tokenizer),
        "head_dim": HEAD_DIM,
        "intermediate_size_mlp": 2 * HIDDEN_SIZE,
        "num_local_experts": NUM_EXPERTS,
        "num_experts_per_tok": 1,
        "no_rope_layer_interval": 2,
        "attention_chunk_size": LLAMA4_ATTENTION_CHUNK,
    }
    # After the 2x2 pixel shuffle a token carries 4 x 64 features: the shuffle MLP takes them (`intermediate_size`,
    # which the encoder MLP shares, as released) down to the projector's 64.
    vision_config = {
        "hidden_size": HIDDEN_SIZE,
        "intermediate_size": 4 * HIDDEN_SIZE,
        "num_hidden_layers": NUM_LAYERS,
        "num_attention_heads": NUM_HEADS,
        "image_size": TILE_SIZE,
        "patch_size": PATCH_SIZE,
        "pixel_shuffle_ratio": PIXEL_SHUFFLE_RATIO,
        "projector_input_dim": HIDDEN_SIZE,
        "projector_output_dim": HIDDEN_SIZE,
        "vision_output_dim": HIDDEN_SIZE,
    }
    config = Llama4Config(
        text_config=text_config,
        vision_config=vision_config,
        tie_word_embeddings=False,
        **token_ids(
            tokenizer,
            boi_token_index=LLAMA4_TOKENS["start_of_image_token"],
            eoi_token_index=LLAMA4_TOKENS["end_of_image_token"],
            image_token_index=LLAMA4_TOKENS["patch_token"],
        ),
    )
    return init_model(Llama4ForConditionalGeneration, config, seed, tokenizer), processor
