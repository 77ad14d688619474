"""Tiny Qwen3.5 (`qwen3_5`) and Qwen3.5-MoE (`qwen3_5_moe`) with Qwen3-VL's processor (transformers pairs them so), and
Qwen3.5's text model alone (`qwen3_5_text`, a causal LM with the tiny tokenizer).

Their text models are hybrids: a Gated DeltaNet linear-attention layer (a causal convolution and a recurrent state)
then a full-attention layer with partial, interleaved M-RoPE. Padded batches are exact; the linear-attention layer
carries its state across packed samples, so `verify_model` refuses packing with the measured difference. transformers
keeps packed samples apart in that layer only when told the boundaries (`cu_seq_lens_q`, `seq_idx`), through the
flash-linear-attention and causal-conv1d kernels; its torch fallbacks (CPU) refuse them.
"""

from __future__ import annotations

from transformers import PreTrainedModel, PreTrainedTokenizerFast, ProcessorMixin
from transformers.models.qwen3_5 import (
    Qwen3_5Config,
    Qwen3_5ForCausalLM,
    Qwen3_5ForConditionalGeneration,
    Qwen3_5TextConfig,
)
from transformers.models.qwen3_5_moe import Qwen3_5MoeConfig, Qwen3_5MoeForConditionalGeneration

from ..tokenizer import build_tiny_tokenizer
from .common import (
    HEAD_DIM,
    HIDDEN_SIZE,
    NUM_EXPERTS,
    NUM_EXPERTS_PER_TOKEN,
    init_model,
    patch_vision_config,
    text_kwargs,
)
from .qwen import QWEN3_PATCH_SIZE, qwen3_vl_config_args

# Half the linear-attention heads' width of the full-attention ones, as released (128 against 256).
LINEAR_ATTENTION = {
    "layer_types": ["linear_attention", "full_attention"],
    "linear_key_head_dim": HEAD_DIM // 2,
    "linear_value_head_dim": HEAD_DIM // 2,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 2,
}
# A quarter of head_dim 32 rotates (as released): 4 frequencies interleaved (T, H, W) = (2, 1, 1).
ROPE_PARAMETERS = {
    "rope_type": "default",
    "rope_theta": 10000.0,
    "partial_rotary_factor": 0.25,
    "mrope_section": [2, 1, 1],
    "mrope_interleaved": True,
}


def _text_config(tokenizer: PreTrainedTokenizerFast) -> dict:
    return {**text_kwargs(tokenizer), "head_dim": HEAD_DIM, "rope_parameters": ROPE_PARAMETERS, **LINEAR_ATTENTION}


def _config_args(seed: int) -> tuple[PreTrainedTokenizerFast, ProcessorMixin, dict]:
    tokenizer, processor, config_args = qwen3_vl_config_args(seed)
    # Qwen3-VL's vision tower without DeepStack: learned 4x4 position embeddings resampled to each image's grid.
    vision_config = patch_vision_config(QWEN3_PATCH_SIZE, num_position_embeddings=16)
    config_args.update(text_config=_text_config(tokenizer), vision_config=vision_config)
    return tokenizer, processor, config_args


def build_tiny_qwen3_5_text(seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """
    Build a tiny text-only Qwen3.5 causal LM ([`build_tiny_qwen3_5`]'s text model: one linear-attention layer, one
    full-attention layer) and its tokenizer, the default Qwen one.

    Args:
        seed (`int`, *optional*, defaults to `0`):
            Seeds the tokenizer corpus and the weight initialisation.

    Returns:
        `tuple[PreTrainedModel, PreTrainedTokenizerFast]`: the model in eval mode and its tokenizer.
    """
    tokenizer = build_tiny_tokenizer(seed=seed)
    config = Qwen3_5TextConfig(**_text_config(tokenizer))
    return init_model(Qwen3_5ForCausalLM, config, seed, tokenizer), tokenizer


def build_tiny_qwen3_5(seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """
    Build a tiny Qwen3.5 (one linear-attention layer, one full-attention layer) with its processor.

    Args:
        seed (`int`, *optional*, defaults to `0`):
            Seeds the tokenizer corpus and the weight initialisation.

    Returns:
        `tuple[PreTrainedModel, Qwen3VLProcessor]`: the model in eval mode and [`build_tiny_qwen3_vl`]'s processor.
    """
    tokenizer, processor, config_args = _config_args(seed)
    return init_model(Qwen3_5ForConditionalGeneration, Qwen3_5Config(**config_args), seed, tokenizer), processor


def build_tiny_qwen3_5_moe(seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """
    Build a tiny Qwen3.5-MoE (both text layers a sparse MoE block of 4 experts, top-2, with a shared expert) with its
    processor.

    Args:
        seed (`int`, *optional*, defaults to `0`):
            Seeds the tokenizer corpus and the weight initialisation.

    Returns:
        `tuple[PreTrainedModel, Qwen3VLProcessor]`: the model in eval mode and [`build_tiny_qwen3_vl`]'s processor.
    """
    tokenizer, processor, config_args = _config_args(seed)
    config_args["text_config"].update(
        num_experts=NUM_EXPERTS,
        num_experts_per_tok=NUM_EXPERTS_PER_TOKEN,
        moe_intermediate_size=HIDDEN_SIZE // 2,
        shared_expert_intermediate_size=HIDDEN_SIZE // 2,
    )
    config = Qwen3_5MoeConfig(**config_args)
    return init_model(Qwen3_5MoeForConditionalGeneration, config, seed, tokenizer), processor
