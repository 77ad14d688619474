"""Tiny random-init models of real architectures, with their real processors, built offline.

Every builder is deterministic for a given seed and returns ``(model, processing_class)``. The models are small
enough (hidden size 64, two layers) that generate, forward and backward take milliseconds on a CPU, yet they run
the same code as the released checkpoints: M-RoPE and the vision tower for Qwen2-VL / Qwen2.5-VL, the Whisper-style
encoder for Qwen2-Audio. Save them with ``save_pretrained`` and the result loads with ``from_pretrained``.
"""

from __future__ import annotations

import torch
from transformers import (
    AutoProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2AudioConfig,
    Qwen2AudioForConditionalGeneration,
    Qwen2AudioProcessor,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2ForSequenceClassification,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
    WhisperFeatureExtractor,
)
from transformers.models.qwen2_5_vl import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_vl import Qwen2VLConfig, Qwen2VLForConditionalGeneration

from .tokenizer import build_tiny_tokenizer

HIDDEN_SIZE = 64
NUM_HEADS = 4
NUM_LAYERS = 2
# M-RoPE splits head_dim / 2 = 8 rotary frequencies into (temporal, height, width) sections.
MROPE_SECTION = [2, 3, 3]
# Vision side: 14-pixel patches merged 2x2, as in the released models, so a 56x56 image becomes 16 patches
# and 4 placeholder tokens.
PATCH_SIZE = 14
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
MIN_PIXELS = 28 * 28
MAX_PIXELS = 56 * 56
# Audio side: a 2 s chunk at 16 kHz with a 10 ms hop gives 200 mel frames; the encoder needs
# frames == 2 * max_source_positions.
AUDIO_SAMPLING_RATE = 16000
AUDIO_CHUNK_SECONDS = 2
NUM_MEL_BINS = 32

TINY_MODEL_KINDS = ("qwen2_vl", "qwen2_5_vl", "qwen2_audio", "qwen2", "qwen2_reward")


def _text_kwargs(tokenizer: PreTrainedTokenizerFast) -> dict:
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": HIDDEN_SIZE,
        "intermediate_size": 2 * HIDDEN_SIZE,
        "num_hidden_layers": NUM_LAYERS,
        "num_attention_heads": NUM_HEADS,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
    }


def _vision_ids(tokenizer: PreTrainedTokenizerFast) -> dict:
    return {
        "image_token_id": tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        "video_token_id": tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        "vision_start_token_id": tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        "vision_end_token_id": tokenizer.convert_tokens_to_ids("<|vision_end|>"),
    }


def _vision_processor(tokenizer: PreTrainedTokenizerFast) -> Qwen2VLProcessor:
    size = {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}
    common = {"patch_size": PATCH_SIZE, "merge_size": MERGE_SIZE, "temporal_patch_size": TEMPORAL_PATCH_SIZE}
    image_processor = Qwen2VLImageProcessor(size=size, **common)
    video_processor = Qwen2VLVideoProcessor(
        size=size, min_frames=2, max_frames=16, cap_pixels_per_frame=False, **common
    )
    return Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=tokenizer.chat_template,
    )


def _finish(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    return model.eval()


def build_tiny_qwen2_vl(seed: int = 0, version: str = "2.5") -> tuple[PreTrainedModel, ProcessorMixin]:
    """
    Build a tiny Qwen2-VL (`version="2"`) or Qwen2.5-VL (`version="2.5"`) with its processor.

    Args:
        seed (`int`, *optional*, defaults to `0`):
            Seeds the tokenizer corpus and the weight initialisation.
        version (`str`, *optional*, defaults to `"2.5"`):
            `"2"` for Qwen2-VL, `"2.5"` for Qwen2.5-VL (windowed vision attention, SwiGLU vision MLP).

    Returns:
        `tuple[PreTrainedModel, Qwen2VLProcessor]`: the model in eval mode and a processor that handles images
        and videos.
    """
    tokenizer = build_tiny_tokenizer(seed=seed)
    text_config = {
        **_text_kwargs(tokenizer),
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": MROPE_SECTION},
    }
    vision_common = {
        "depth": 2,
        "num_heads": 2,
        "in_channels": 3,
        "patch_size": PATCH_SIZE,
        "spatial_merge_size": MERGE_SIZE,
        "temporal_patch_size": TEMPORAL_PATCH_SIZE,
    }
    torch.manual_seed(seed)
    if version == "2":
        vision_config = {**vision_common, "embed_dim": 32, "hidden_size": HIDDEN_SIZE, "mlp_ratio": 2}
        config = Qwen2VLConfig(text_config=text_config, vision_config=vision_config, **_vision_ids(tokenizer))
        model = Qwen2VLForConditionalGeneration(config)
    elif version == "2.5":
        vision_config = {
            **vision_common,
            "hidden_size": 32,
            "intermediate_size": 64,
            "out_hidden_size": HIDDEN_SIZE,
            "window_size": 56,
            "fullatt_block_indexes": [1],
        }
        config = Qwen2_5_VLConfig(text_config=text_config, vision_config=vision_config, **_vision_ids(tokenizer))
        model = Qwen2_5_VLForConditionalGeneration(config)
    else:
        raise ValueError(f"Unknown Qwen-VL version {version!r}; use '2' or '2.5'.")
    return _finish(model, tokenizer), _vision_processor(tokenizer)


def build_tiny_qwen2_audio(seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """
    Build a tiny Qwen2-Audio with a `WhisperFeatureExtractor` cut to a 2 s chunk (200 mel frames).

    The short chunk keeps the audio encoder ~10x cheaper than the released 30 s window while running the same code;
    clips longer than the chunk are truncated by the feature extractor.

    Args:
        seed (`int`, *optional*, defaults to `0`):
            Seeds the tokenizer corpus and the weight initialisation.

    Returns:
        `tuple[PreTrainedModel, Qwen2AudioProcessor]`: the model in eval mode and its processor.
    """
    tokenizer = build_tiny_tokenizer(seed=seed)
    num_frames = AUDIO_CHUNK_SECONDS * 100
    feature_extractor = WhisperFeatureExtractor(
        feature_size=NUM_MEL_BINS,
        sampling_rate=AUDIO_SAMPLING_RATE,
        hop_length=160,
        chunk_length=AUDIO_CHUNK_SECONDS,
        n_fft=400,
    )
    processor = Qwen2AudioProcessor(
        feature_extractor=feature_extractor, tokenizer=tokenizer, chat_template=tokenizer.chat_template
    )
    audio_config = {
        "model_type": "qwen2_audio_encoder",
        "num_mel_bins": NUM_MEL_BINS,
        "encoder_layers": 2,
        "encoder_attention_heads": 2,
        "encoder_ffn_dim": 64,
        "d_model": 32,
        "max_source_positions": num_frames // 2,
    }
    text_config = {"model_type": "qwen2", **_text_kwargs(tokenizer)}
    config = Qwen2AudioConfig(
        audio_config=audio_config,
        text_config=text_config,
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
    )
    torch.manual_seed(seed)
    model = Qwen2AudioForConditionalGeneration(config)
    return _finish(model, tokenizer), processor


def build_tiny_qwen2(seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Build a tiny text-only Qwen2 causal LM and its tokenizer."""
    tokenizer = build_tiny_tokenizer(seed=seed)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(**_text_kwargs(tokenizer)))
    return _finish(model, tokenizer), tokenizer


def build_tiny_reward_model(seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Build a tiny Qwen2 sequence-classification model with one output (a scalar reward) and its tokenizer."""
    tokenizer = build_tiny_tokenizer(seed=seed)
    torch.manual_seed(seed)
    model = Qwen2ForSequenceClassification(Qwen2Config(**_text_kwargs(tokenizer), num_labels=1))
    return model.eval(), tokenizer


def build_tiny_model(kind: str, seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin | PreTrainedTokenizerFast]:
    """
    Build one of the tiny models by name.

    Args:
        kind (`str`):
            One of `"qwen2_vl"`, `"qwen2_5_vl"`, `"qwen2_audio"`, `"qwen2"` (text) and `"qwen2_reward"`.
        seed (`int`, *optional*, defaults to `0`):
            Seeds the tokenizer corpus and the weight initialisation.
    """
    if kind == "qwen2_vl":
        return build_tiny_qwen2_vl(seed, version="2")
    if kind == "qwen2_5_vl":
        return build_tiny_qwen2_vl(seed, version="2.5")
    if kind == "qwen2_audio":
        return build_tiny_qwen2_audio(seed)
    if kind == "qwen2":
        return build_tiny_qwen2(seed)
    if kind == "qwen2_reward":
        return build_tiny_reward_model(seed)
    raise ValueError(f"Unknown tiny model kind {kind!r}; choose one of {', '.join(TINY_MODEL_KINDS)}.")


def save_tiny_model(kind: str, path: str, seed: int = 0) -> str:
    """
    Build a tiny model and write it with its processor to `path`, loadable by `from_pretrained`.

    Returns:
        `str`: `path`.
    """
    model, processing_class = build_tiny_model(kind, seed)
    model.save_pretrained(path)
    processing_class.save_pretrained(path)
    return path


def load_processing_class(path: str) -> ProcessorMixin | PreTrainedTokenizerFast:
    """Load the processor (multimodal) or tokenizer (text) saved next to a tiny model."""
    return AutoProcessor.from_pretrained(path)
