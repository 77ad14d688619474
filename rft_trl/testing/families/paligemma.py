"""Tiny PaliGemma: a SigLIP vision tower, a linear projector and Gemma, with a bidirectional prefix."""

from __future__ import annotations

from transformers import PreTrainedModel, ProcessorMixin
from transformers.models.paligemma import PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor
from transformers.models.siglip import SiglipImageProcessor

from .common import HEAD_DIM, HIDDEN_SIZE, family_tokenizer, init_model, make_processor, text_kwargs, vision_tower

# A 32x32 image cut into 8x8-pixel patches: 16 image tokens.
PALIGEMMA_IMAGE_SIZE = 32
PALIGEMMA_PATCH_SIZE = 8
PALIGEMMA_TOKENS_PER_IMAGE = (PALIGEMMA_IMAGE_SIZE // PALIGEMMA_PATCH_SIZE) ** 2
PALIGEMMA_IMAGE_TOKEN = "<image>"


def build_tiny_paligemma(seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """
    Build a tiny PaliGemma (SigLIP vision tower, linear projector, a two-layer Gemma) for images.

    An image part renders as `<image>`, which [`PaliGemmaProcessor`] expands into 16 `<image>` tokens followed by the
    bos token; it appends `\\n` to the prompt. The processor returns `token_type_ids`: 0 over the prompt (the prefix,
    which attends to itself both ways) and 1 over a suffix, which its `generate` also gives every generated token (the
    causal part). The processor needs an image in every call, and adds PaliGemma's 1152 location and segmentation
    tokens to the tokenizer.

    Args:
        seed (`int`, *optional*, defaults to `0`):
            Seeds the tokenizer corpus and the weight initialisation.

    Returns:
        `tuple[PreTrainedModel, PaliGemmaProcessor]`: the model in eval mode and its processor (images, squashed to
        32x32 pixels).
    """
    tokenizer = family_tokenizer(
        seed,
        [PALIGEMMA_IMAGE_TOKEN],
        image=PALIGEMMA_IMAGE_TOKEN,
        named_tokens={"image_token": PALIGEMMA_IMAGE_TOKEN},
    )
    # The processor puts a bos token after the images; the tiny tokenizer's is the one `text_kwargs` names.
    tokenizer.bos_token = "<|endoftext|>"
    image_processor = SiglipImageProcessor(size={"height": PALIGEMMA_IMAGE_SIZE, "width": PALIGEMMA_IMAGE_SIZE})
    image_processor.image_seq_length = PALIGEMMA_TOKENS_PER_IMAGE
    processor = make_processor(PaliGemmaProcessor, tokenizer, image_processor=image_processor)
    text_config = {**text_kwargs(tokenizer), "model_type": "gemma", "head_dim": HEAD_DIM}
    config = PaliGemmaConfig(
        text_config=text_config,
        vision_config=vision_tower(
            "siglip_vision_model", PALIGEMMA_IMAGE_SIZE, patch_size=PALIGEMMA_PATCH_SIZE, vision_use_head=False
        ),
        projection_dim=HIDDEN_SIZE,
        hidden_size=HIDDEN_SIZE,
        vocab_size=len(tokenizer),
        image_token_index=tokenizer.convert_tokens_to_ids(PALIGEMMA_IMAGE_TOKEN),
        tie_word_embeddings=False,
    )
    return init_model(PaliGemmaForConditionalGeneration, config, seed, tokenizer), processor
