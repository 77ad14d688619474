"""Tiny GLM-4.1V (`glm4v`) and GLM-4.5V (`glm4v_moe`) models with their processor.

They run the released code: partial M-RoPE, the downsampling merger, timestamped video frames and, for GLM-4.5V, a
MoE text layer with a shared expert. A 56x56 image is 16 patches of 14 pixels merged 2x2: 4 placeholder tokens.
"""

from __future__ import annotations

from transformers import (
    Glm4vImageProcessor,
    Glm4vProcessor,
    Glm4vVideoProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
)
from transformers.models.glm4v import Glm4vConfig, Glm4vForConditionalGeneration
from transformers.models.glm4v_moe import Glm4vMoeConfig, Glm4vMoeForConditionalGeneration

from .common import (
    HIDDEN_SIZE,
    MAX_VIDEO_FRAMES,
    NUM_EXPERTS,
    NUM_EXPERTS_PER_TOKEN,
    PATCH_SIZE,
    family_tokenizer,
    init_model,
    make_processor,
    patch_processors,
    patch_vision_config,
    text_kwargs,
    token_ids,
)

GLM4V_TOKENS = {
    "image_start_token_id": "<|begin_of_image|>",
    "image_end_token_id": "<|end_of_image|>",
    # Video frames are `<|image|>` tokens between `<|begin_of_video|>` and `<|end_of_video|>`; `<|video|>` is only the
    # unexpanded placeholder of the chat template.
    "image_token_id": "<|image|>",
    "video_start_token_id": "<|begin_of_video|>",
    "video_end_token_id": "<|end_of_video|>",
    "video_token_id": "<|video|>",
}
# Rotary embeddings cover half of each head, as released: 16 of 32 dimensions, 8 frequencies split (T, H, W).
GLM_ROPE_PARAMETERS = {
    "rope_type": "default",
    "rope_theta": 10000.0,
    "partial_rotary_factor": 0.5,
    "mrope_section": [2, 3, 3],
}


# GLM-4.5V's (and GLM-4.6V-MoE's) text layers: the first dense, the second a MoE block of 4 routed experts, top-2,
# plus one shared expert.
GLM4V_MOE_TEXT_ARGS = {
    "n_routed_experts": NUM_EXPERTS,
    "num_experts_per_tok": NUM_EXPERTS_PER_TOKEN,
    "n_shared_experts": 1,
    "moe_intermediate_size": HIDDEN_SIZE // 2,
    "first_k_dense_replace": 1,
    "n_group": 1,
    "topk_group": 1,
    "attention_bias": True,
}


def glm4v_config_args(
    seed: int,
    image_processor_class: type = Glm4vImageProcessor,
    video_processor_class: type = Glm4vVideoProcessor,
    processor_class: type = Glm4vProcessor,
) -> tuple[PreTrainedTokenizerFast, ProcessorMixin, dict]:
    """
    The tiny GLM-4.xV tokenizer, processor (of the given classes: GLM-4.6V has its own, with the same settings) and
    config arguments (`text_config`, `vision_config`, the token ids), as dicts for any GLM-4.xV config class.
    """
    tokenizer = family_tokenizer(
        seed,
        list(GLM4V_TOKENS.values()),
        image="<|begin_of_image|><|image|><|end_of_image|>",
        video="<|begin_of_video|><|video|><|end_of_video|>",
    )
    # Both processors bound the pixels summed over the (at least two) frames, an image counting as two. Frames arrive
    # decoded (a list of images), so none are sampled, and the timestamps assume 24 fps.
    image_processor, video_processor = patch_processors(
        image_processor_class,
        video_processor_class,
        PATCH_SIZE,
        image_frames=(2, 2),
        video_frames=(2, MAX_VIDEO_FRAMES),
        video_kwargs={"do_sample_frames": False},
    )
    processor = make_processor(
        processor_class, tokenizer, image_processor=image_processor, video_processor=video_processor
    )
    # A 4x4 grid of learned position embeddings (56 / 14), bicubically resampled to each image's grid. The vision MLP
    # is `out_hidden_size` wide and the merger `intermediate_size` wide, as released.
    vision_config = patch_vision_config(PATCH_SIZE, image_size=4 * PATCH_SIZE)
    config_args = {
        "text_config": {**text_kwargs(tokenizer), "rope_parameters": GLM_ROPE_PARAMETERS},
        "vision_config": vision_config,
        "tie_word_embeddings": False,
        **token_ids(tokenizer, **GLM4V_TOKENS),
    }
    return tokenizer, processor, config_args


def build_tiny_glm4v(seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """
    Build a tiny GLM-4.1V (dense text model) with its processor.

    GLM cannot mix images and videos in one forward (its placeholder mask uses the image token for both; upstream
    behaviour): keep image rows and video rows in separate batches.

    Args:
        seed (`int`, *optional*, defaults to `0`):
            Seeds the tokenizer corpus and the weight initialisation.

    Returns:
        `tuple[PreTrainedModel, Glm4vProcessor]`: the model in eval mode and a processor that handles images and
        videos (lists of frames; each pair of frames becomes one timestamped `<|begin_of_image|>...<|end_of_image|>`
        block inside `<|begin_of_video|>...<|end_of_video|>`).
    """
    tokenizer, processor, config_args = glm4v_config_args(seed)
    return init_model(Glm4vForConditionalGeneration, Glm4vConfig(**config_args), seed, tokenizer), processor


def build_tiny_glm4v_moe(seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """
    Build a tiny GLM-4.5V (first text layer dense, second a MoE block of 4 routed experts, top-2, plus one shared
    expert) with its processor, as [`build_tiny_glm4v`]'s.

    Args:
        seed (`int`, *optional*, defaults to `0`):
            Seeds the tokenizer corpus and the weight initialisation.

    Returns:
        `tuple[PreTrainedModel, Glm4vProcessor]`: the model in eval mode and its processor.
    """
    tokenizer, processor, config_args = glm4v_config_args(seed)
    config_args["text_config"].update(GLM4V_MOE_TEXT_ARGS)
    config = Glm4vMoeConfig(**config_args)
    return init_model(Glm4vMoeForConditionalGeneration, config, seed, tokenizer), processor
