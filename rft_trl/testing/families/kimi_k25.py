"""Tiny Kimi-K2.5: MoonViT (2D RoPE over native-resolution patches, 2x2 merge) and a DeepSeek-V3 MoE text model."""

from __future__ import annotations

from transformers import PreTrainedModel, ProcessorMixin
from transformers.models.kimi_k25 import (
    Kimi_K25Config,
    Kimi_K25ForConditionalGeneration,
    Kimi_K25ImageProcessor,
    Kimi_K25Processor,
    Kimi_K25VideoProcessor,
)

from .common import (
    HIDDEN_SIZE,
    NUM_EXPERTS,
    NUM_EXPERTS_PER_TOKEN,
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

KIMI_K25_TOKENS = {
    "vision_start_token_id": "<|media_begin|>",
    "vision_end_token_id": "<|media_end|>",
    "image_token_id": "<|media_pad|>",
    "video_token_id": "<|kimi_k25_video_placeholder|>",
}
KIMI_K25_MEDIA_CONTENT = "<|media_content|>"
# Images (and video frames) shrink to at most 56x56 pixels: 4x4 patches of 14, merged 2x2 into 4 tokens.
KIMI_K25_SIZE = {"max_height": TILE_SIZE, "max_width": TILE_SIZE}


def build_tiny_kimi_k25(seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """
    Build a tiny Kimi-K2.5 (MoonViT vision tower and projector; a DeepSeek-V3 text model with multi-head latent
    attention, its first layer dense and its second a MoE block of 4 routed experts, top-2, plus a shared expert).

    An image part renders as `<|media_begin|>image<|media_content|><|media_pad|><|media_end|>`, the processor
    repeating `<|media_pad|>` once per merged patch (4 for a 56x56 image); a video part as the video placeholder, which
    it expands into timestamped chunks of 4 frames. Positions are 1-D: the processor returns no per-token field. The
    DeepSeek-V3 routers are kept in float32 whatever the model's dtype (`_keep_in_fp32_modules_strict`).

    Args:
        seed (`int`, *optional*, defaults to `0`):
            Seeds the tokenizer corpus and the weight initialisation.

    Returns:
        `tuple[PreTrainedModel, Kimi_K25Processor]`: the model in eval mode and its processor.
    """
    tokens = KIMI_K25_TOKENS
    tokenizer = family_tokenizer(
        seed,
        [*tokens.values(), KIMI_K25_MEDIA_CONTENT],
        image=f"{tokens['vision_start_token_id']}image{KIMI_K25_MEDIA_CONTENT}{tokens['image_token_id']}"
        f"{tokens['vision_end_token_id']}",
        video=tokens["video_token_id"],
    )
    processor = make_processor(
        Kimi_K25Processor,
        tokenizer,
        image_processor=Kimi_K25ImageProcessor(size=KIMI_K25_SIZE),
        video_processor=Kimi_K25VideoProcessor(size=KIMI_K25_SIZE, do_sample_frames=False),
    )
    text_config = {
        # Multi-head latent attention expands its latent keys and values to every head: as many key/value heads.
        **text_kwargs(tokenizer, num_kv_heads=NUM_HEADS),
        "model_type": "deepseek_v3",
        "q_lora_rank": 32,
        "kv_lora_rank": 32,
        "qk_rope_head_dim": 16,
        "qk_nope_head_dim": 16,
        "v_head_dim": 32,
        "n_routed_experts": NUM_EXPERTS,
        "num_experts_per_tok": NUM_EXPERTS_PER_TOKEN,
        "n_shared_experts": 1,
        "moe_intermediate_size": HIDDEN_SIZE // 2,
        "first_k_dense_replace": 1,
        "n_group": 1,
        "topk_group": 1,
    }
    vision_config = {
        "patch_size": PATCH_SIZE,
        "hidden_size": HIDDEN_SIZE,
        "intermediate_size": 2 * HIDDEN_SIZE,
        "num_hidden_layers": NUM_LAYERS,
        "num_attention_heads": NUM_HEADS,
        "pos_emb_height": 8,
        "pos_emb_width": 8,
    }
    config = Kimi_K25Config(
        text_config=text_config,
        vision_config=vision_config,
        projection_hidden_size=HIDDEN_SIZE,
        tie_word_embeddings=False,
        **token_ids(tokenizer, **tokens),
    )
    return init_model(Kimi_K25ForConditionalGeneration, config, seed, tokenizer), processor
