"""Tiny Phi-4-multimodal: a SigLIP-style vision tower, a conformer audio encoder and a Phi-3 text model.

rft_trl refuses this family (`UNSUPPORTED_MODEL_TYPES`): transformers marks its vision attention causal, so under SDPA
an image's features depend on whether another image of the batch is padded. The builder keeps that behaviour, as
transformers builds and loads it, so that the tiny model shows what the refusal is about.
"""

from __future__ import annotations

from transformers import PreTrainedModel, ProcessorMixin
from transformers.models.phi4_multimodal import (
    Phi4MultimodalConfig,
    Phi4MultimodalFeatureExtractor,
    Phi4MultimodalForCausalLM,
    Phi4MultimodalImageProcessor,
    Phi4MultimodalProcessor,
)

from .common import (
    HIDDEN_SIZE,
    NUM_HEADS,
    NUM_LAYERS,
    PATCH_SIZE,
    VISION_TOWER,
    family_tokenizer,
    init_model,
    make_processor,
    text_kwargs,
)

PHI4_MULTIMODAL_TOKENS = {"image_token": "<|image|>", "audio_token": "<|audio|>"}
# The image processor hard-codes the token count of a 448 px crop seen in 14 px patches (16x16 after 2x2 pooling), so
# the vision tower keeps that geometry; with `dynamic_hd=1` every image is one crop plus the global view, a few
# hundred tokens (545 for a square image).
PHI4_CROP_SIZE = 448


def build_tiny_phi4_multimodal(seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """
    Build a tiny Phi-4-multimodal with its processor (images and audio).

    Images: `image_pixel_values` `[num_images, 2, 3, 448, 448]`, `image_attention_mask` `[num_images, 2, 32, 32]` and
    `image_sizes` `[num_images, 2]` (over the images of the whole batch, not the rows), and a few hundred `<|image|>`
    tokens per image. Audio: 80 mel bins at 100 frames a second, compressed 8x, so a 1 s clip is 13 `<|audio|>`
    tokens, with `audio_input_features` `[num_clips, frames, 80]` and `audio_embed_sizes` `[num_clips]`.

    Args:
        seed (`int`, *optional*, defaults to `0`):
            Seeds the tokenizer corpus and the weight initialisation.

    Returns:
        `tuple[PreTrainedModel, Phi4MultimodalProcessor]`: the model in eval mode and its processor.
    """
    tokenizer = family_tokenizer(
        seed,
        list(PHI4_MULTIMODAL_TOKENS.values()),
        image=PHI4_MULTIMODAL_TOKENS["image_token"],
        audio=PHI4_MULTIMODAL_TOKENS["audio_token"],
        named_tokens=PHI4_MULTIMODAL_TOKENS,
    )
    image_processor = Phi4MultimodalImageProcessor(
        size={"height": PHI4_CROP_SIZE, "width": PHI4_CROP_SIZE}, patch_size=PATCH_SIZE, dynamic_hd=1
    )
    processor = make_processor(
        Phi4MultimodalProcessor,
        tokenizer,
        image_processor=image_processor,
        audio_processor=Phi4MultimodalFeatureExtractor(),
    )
    # One config for all three towers: the text model's arguments sit at its top level (head_dim is 64 / 2 = 32).
    config = Phi4MultimodalConfig(
        **text_kwargs(tokenizer),
        original_max_position_embeddings=4096,
        vision_config={
            **VISION_TOWER,
            "patch_size": PATCH_SIZE,
            "image_size": PHI4_CROP_SIZE,
            "crop_size": PHI4_CROP_SIZE,
            "image_token_id": tokenizer.image_token_id,
        },
        audio_config={
            "hidden_size": HIDDEN_SIZE,
            "intermediate_size": 2 * HIDDEN_SIZE,
            "num_blocks": NUM_LAYERS,
            "num_attention_heads": NUM_HEADS,
            "ext_pw_out_channel": HIDDEN_SIZE,
            "depthwise_separable_out_channel": HIDDEN_SIZE,
            "nemo_conv_channels": HIDDEN_SIZE,
            "audio_token_id": tokenizer.audio_token_id,
        },
    )
    return init_model(Phi4MultimodalForCausalLM, config, seed, tokenizer), processor
