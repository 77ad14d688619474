"""Tiny random-init models of real architectures with their real processors, built offline, one module per group.

[`TINY_MODEL_BUILDERS`] maps each kind name to its builder.

Every builder takes a seed, is deterministic for it, and returns `(model, processing_class)`: the model in eval mode
(hidden size 64, two layers, so that generate, forward and backward take milliseconds on a CPU) and the family's own
processor (or tokenizer, for the text models) around a tokenizer trained locally. `save_pretrained` on both gives a
folder that `from_pretrained` loads.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from transformers import PreTrainedModel, PreTrainedTokenizerFast, ProcessorMixin

from .aya_vision import build_tiny_aya_vision
from .ernie4_5_vl import build_tiny_ernie4_5_vl_moe
from .gemma import build_tiny_gemma3
from .gemma3n import build_tiny_gemma3n
from .gemma4 import build_tiny_gemma4
from .glm import build_tiny_glm4v, build_tiny_glm4v_moe
from .glm46v import build_tiny_glm46v, build_tiny_glm46v_moe
from .idefics import build_tiny_idefics3, build_tiny_smolvlm
from .internvl import build_tiny_internvl
from .kimi_k25 import build_tiny_kimi_k25
from .lfm2 import build_tiny_lfm2, build_tiny_lfm2_vl
from .llama4 import build_tiny_llama4
from .llava import build_tiny_llava, build_tiny_llava_onevision, build_tiny_mistral3
from .minicpmv import build_tiny_minicpmv4_6
from .omni import OMNI_PROCESSORS, build_tiny_qwen2_5_omni, build_tiny_qwen3_omni_moe, use_video_processor_size
from .paligemma import build_tiny_paligemma
from .phi4 import build_tiny_phi4_multimodal
from .qwen import (
    build_tiny_qwen2,
    build_tiny_qwen2_audio,
    build_tiny_qwen2_vl,
    build_tiny_qwen3,
    build_tiny_qwen3_vl,
    build_tiny_qwen3_vl_moe,
    build_tiny_reward_model,
)
from .qwen3_5 import build_tiny_qwen3_5, build_tiny_qwen3_5_moe, build_tiny_qwen3_5_text
from .qwen_released_vocab import (
    RELEASED_VOCAB_BUILDERS,
    build_tiny_qwen3_5_released_vocab,
    build_tiny_qwen3_moe_released_vocab,
    build_tiny_qwen3_released_vocab,
)
from .speech import build_tiny_audioflamingo3, build_tiny_qwen3_asr

TINY_MODEL_BUILDERS: dict[str, Callable[[int], tuple[PreTrainedModel, ProcessorMixin | PreTrainedTokenizerFast]]] = {
    "qwen2_vl": partial(build_tiny_qwen2_vl, version="2"),
    "qwen2_5_vl": partial(build_tiny_qwen2_vl, version="2.5"),
    "qwen3_vl": build_tiny_qwen3_vl,
    "qwen3_vl_moe": build_tiny_qwen3_vl_moe,
    "qwen3_5": build_tiny_qwen3_5,
    "qwen3_5_moe": build_tiny_qwen3_5_moe,
    "qwen2_5_omni": build_tiny_qwen2_5_omni,
    "qwen3_omni_moe": build_tiny_qwen3_omni_moe,
    "qwen2_audio": build_tiny_qwen2_audio,
    "qwen3_asr": build_tiny_qwen3_asr,
    "audioflamingo3": build_tiny_audioflamingo3,
    "glm4v": build_tiny_glm4v,
    "glm4v_moe": build_tiny_glm4v_moe,
    "glm46v": build_tiny_glm46v,
    "glm46v_moe": build_tiny_glm46v_moe,
    "gemma3": build_tiny_gemma3,
    "gemma3n": build_tiny_gemma3n,
    "gemma4": build_tiny_gemma4,
    "llava": build_tiny_llava,
    "llava_onevision": build_tiny_llava_onevision,
    "internvl": build_tiny_internvl,
    "idefics3": build_tiny_idefics3,
    "smolvlm": build_tiny_smolvlm,
    "mistral3": build_tiny_mistral3,
    "aya_vision": build_tiny_aya_vision,
    "llama4": build_tiny_llama4,
    "lfm2_vl": build_tiny_lfm2_vl,
    "kimi_k25": build_tiny_kimi_k25,
    "ernie4_5_vl_moe": build_tiny_ernie4_5_vl_moe,
    "paligemma": build_tiny_paligemma,
    "minicpmv4_6": build_tiny_minicpmv4_6,
    "phi4_multimodal": build_tiny_phi4_multimodal,
    "qwen2": build_tiny_qwen2,
    "qwen3": build_tiny_qwen3,
    "qwen3_5_text": build_tiny_qwen3_5_text,
    "lfm2": build_tiny_lfm2,
    "qwen2_reward": build_tiny_reward_model,
}
