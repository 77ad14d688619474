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

from .common import init_model
from .glm import GLM4V_MOE_TEXT_ARGS, glm4v_config_args


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
    tokenizer, processor, config_args = glm4v_config_args(
        seed, Glm46VImageProcessor, Glm46VVideoProcessor, Glm46VProcessor
    )
    text_config = {"model_type": "glm4v_text", **config_args.pop("text_config")}
    vision_config = {"model_type": "glm4v_vision", **config_args.pop("vision_config")}
    config = Glm46VConfig(text_config=text_config, vision_config=vision_config, **config_args)
    return init_model(Glm46VForConditionalGeneration, config, seed, tokenizer), processor


def build_tiny_glm46v_moe(seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """
    Build a tiny GLM-4.6V-MoE: GLM-4.6V's classes over GLM-4.5V's MoE text model (`glm4v_moe_text`: the first layer
    dense, the second 4 routed experts, top-2, plus a shared expert), with [`build_tiny_glm46v`]'s processor.

    Args:
        seed (`int`, *optional*, defaults to `0`):
            Seeds the tokenizer corpus and the weight initialisation.

    Returns:
        `tuple[PreTrainedModel, Glm46VProcessor]`: the model in eval mode and its processor.
    """
    tokenizer, processor, config_args = glm4v_config_args(
        seed, Glm46VImageProcessor, Glm46VVideoProcessor, Glm46VProcessor
    )
    text_config = {"model_type": "glm4v_moe_text", **config_args.pop("text_config"), **GLM4V_MOE_TEXT_ARGS}
    vision_config = {"model_type": "glm4v_vision", **config_args.pop("vision_config")}
    config = Glm46VConfig(text_config=text_config, vision_config=vision_config, **config_args)
    return init_model(Glm46VForConditionalGeneration, config, seed, tokenizer), processor
