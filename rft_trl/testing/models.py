"""Build, save and load the tiny models of [`TINY_MODEL_BUILDERS`] by kind name.

The builders themselves live in `rft_trl.testing.families`, one module per group of related families; the Qwen ones
are re-exported here, where they have always been.
"""

from __future__ import annotations

from transformers import AutoProcessor, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerFast, ProcessorMixin

from .families import OMNI_PROCESSORS, TINY_MODEL_BUILDERS, use_video_processor_size
from .families.qwen import build_tiny_qwen2, build_tiny_qwen2_audio, build_tiny_qwen2_vl, build_tiny_reward_model

__all__ = [
    "TINY_MODEL_KINDS",
    "build_tiny_model",
    "build_tiny_qwen2",
    "build_tiny_qwen2_audio",
    "build_tiny_qwen2_vl",
    "build_tiny_reward_model",
    "load_processing_class",
    "save_tiny_model",
]

TINY_MODEL_KINDS = tuple(TINY_MODEL_BUILDERS)


def build_tiny_model(kind: str, seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin | PreTrainedTokenizerFast]:
    """
    Build one of the tiny models by name.

    Args:
        kind (`str`):
            One of [`TINY_MODEL_KINDS`]: a family's model type (`"qwen2_vl"`, `"gemma3"`, ...), `"qwen2"` (text) or
            `"qwen2_reward"` (a sequence classifier with one output).
        seed (`int`, *optional*, defaults to `0`):
            Seeds the tokenizer corpus and the weight initialisation.

    Returns:
        `tuple[PreTrainedModel, ProcessorMixin | PreTrainedTokenizerFast]`: the model in eval mode and its processor
        (multimodal kinds) or tokenizer (text kinds).
    """
    if kind not in TINY_MODEL_BUILDERS:
        raise ValueError(f"Unknown tiny model kind {kind!r}; choose one of {', '.join(TINY_MODEL_KINDS)}.")
    return TINY_MODEL_BUILDERS[kind](seed)


def save_tiny_model(kind: str, path: str, seed: int = 0) -> str:
    """
    Build a tiny model and write it with its processor to `path`, loadable by `from_pretrained` (the processor by
    [`load_processing_class`]).

    Returns:
        `str`: `path`.
    """
    model, processing_class = build_tiny_model(kind, seed)
    model.save_pretrained(path)
    processing_class.save_pretrained(path)
    return path


def load_processing_class(path: str) -> ProcessorMixin | PreTrainedTokenizerFast:
    """
    Load the processor (multimodal) or tokenizer (text) saved next to a tiny model, equal to the one its builder made.

    `AutoProcessor.from_pretrained` alone gives three processors back different from what was saved, and this undoes
    it: the Idefics3 processor's tokenizer without its extra special tokens, the Phi-4-multimodal processor without a
    chat template, and the Omni processors with their class's video size instead of the saved one.
    """
    processing_class = AutoProcessor.from_pretrained(path)
    if not isinstance(processing_class, ProcessorMixin):
        return processing_class
    # Idefics3Processor's constructor replaces the tokenizer's extra special tokens with the three it adds; the saved
    # tokenizer holds the whole list.
    extra_special_tokens = AutoTokenizer.from_pretrained(path).extra_special_tokens
    if processing_class.tokenizer.extra_special_tokens != extra_special_tokens:
        processing_class.tokenizer.extra_special_tokens = extra_special_tokens
    # Phi4MultimodalProcessor's constructor takes no chat template, so loading drops the saved one; every tiny
    # processor was built with its tokenizer's.
    if processing_class.chat_template is None:
        processing_class.chat_template = processing_class.tokenizer.chat_template
    if isinstance(processing_class, OMNI_PROCESSORS):
        use_video_processor_size(processing_class)
    return processing_class
