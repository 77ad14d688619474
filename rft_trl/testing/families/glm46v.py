"""Tiny GLM-4.6V (`glm46v`): GLM-4.1V's architecture and processor under their own classes.

It runs the released code: partial M-RoPE, the downsampling merger and timestamped video frames, on GLM-4.1V's text
and vision towers (`glm4v_text`, `glm4v_vision`). A 56x56 image is 16 patches of 14 pixels merged 2x2: 4 placeholder
tokens.
"""

from __future__ import annotations

from transformers import PreTrainedModel, ProcessorMixin
from transformers.models.glm46v import (
    Glm46VConfig,
    Glm46VForConditionalGeneration,
    Glm46VImageProcessor,
    Glm46VProcessor,
    Glm46VVideoProcessor,
)

from .common import (
    MAX_VIDEO_FRAMES,
    PATCH_SIZE,
    family_tokenizer,
    init_model,
    make_processor,
    patch_processors,
    patch_vision_config,
    text_kwargs,
    token_ids,
)
from .glm import GLM4V_TOKENS, GLM_ROPE_PARAMETERS


def build_tiny_glm46v(seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """
    Build a tiny GLM-4.6V (dense GLM-4 text model, GLM's vision tower) with its processor.

    As GLM-4.1V, it cannot mix images and videos in one forward (upstream behaviour): keep image rows and video rows
    in separate batches.

    Args:
        seed (`int`, *optional*, defaults to `0`):
            Seeds the tokenizer corpus and the weight initialisation.

    Returns:
        `tuple[PreTrainedModel, Glm46VProcessor]`: the model in eval mode and a processor that handles images and
        videos (lists of frames; each pair of frames becomes one timestamped `<|begin_of_image|>...<|end_of_image|>`
        block inside `<|begin_of_video|>...<|end_of_video|>`).
    """
    tokenizer = family_tokenizer(
        seed,
        list(GLM4V_TOKENS.values()),
        image="<|begin_of_image|><|image|><|end_of_image|>",
        video="<|begin_of_video|><|video|><|end_of_video|>",
    )
    # As GLM-4.1V's: both processors bound the pixels summed over the (at least two) frames, an image counting as two;
    # frames arrive decoded, so none are sampled.
    image_processor, video_processor = patch_processors(
        Glm46VImageProcessor,
        Glm46VVideoProcessor,
        PATCH_SIZE,
        image_frames=(2, 2),
        video_frames=(2, MAX_VIDEO_FRAMES),
        video_kwargs={"do_sample_frames": False},
    )
    processor = make_processor(
        Glm46VProcessor, tokenizer, image_processor=image_processor, video_processor=video_processor
    )
    config = Glm46VConfig(
        text_config={"model_type": "glm4v_text", **text_kwargs(tokenizer), "rope_parameters": GLM_ROPE_PARAMETERS},
        vision_config={"model_type": "glm4v_vision", **patch_vision_config(PATCH_SIZE, image_size=4 * PATCH_SIZE)},
        tie_word_embeddings=False,
        **token_ids(tokenizer, **GLM4V_TOKENS),
    )
    return init_model(Glm46VForConditionalGeneration, config, seed, tokenizer), processor
