"""Tiny Qwen models: Qwen2-VL, Qwen2.5-VL, Qwen3-VL (dense and MoE), Qwen2-Audio, Qwen2 and Qwen3 text, reward models.

The first five (Qwen2-VL, Qwen2.5-VL, Qwen2-Audio, Qwen2 text and reward) keep four attention heads of 16 dimensions
and the default Qwen tokenizer: tests and the demo depend on their exact weights. Qwen3-VL uses head_dim 32 like every
later family.
"""

from __future__ import annotations

import torch
from transformers import (
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
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)
from transformers.models.qwen2_5_vl import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_vl import Qwen2VLConfig, Qwen2VLForConditionalGeneration
from transformers.models.qwen3_vl import Qwen3VLConfig, Qwen3VLForConditionalGeneration
from transformers.models.qwen3_vl_moe import Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration

from ..tokenizer import build_tiny_tokenizer
from .common import (
    AUDIO_CHUNK_SECONDS,
    HEAD_DIM,
    HIDDEN_SIZE,
    MAX_VIDEO_FRAMES,
    MERGE_SIZE,
    NUM_EXPERTS,
    NUM_EXPERTS_PER_TOKEN,
    NUM_LAYERS,
    NUM_MEL_BINS,
    PATCH_SIZE,
    TEMPORAL_PATCH_SIZE,
    family_tokenizer,
    init_model,
    make_processor,
    patch_processors,
    patch_vision_config,
    qwen2_vl_processors,
    text_kwargs,
    token_ids,
    whisper_feature_extractor,
)

# Qwen2 text tower of the first builders: hidden 64 in 4 heads of 16 (2 key/value heads).
QWEN2_NUM_HEADS = 4
QWEN2_NUM_KV_HEADS = 2
# M-RoPE splits head_dim / 2 = 8 rotary frequencies into (temporal, height, width) sections.
QWEN2_MROPE_SECTION = [2, 3, 3]
# Qwen3-VL: 16-pixel patches; a 56x56 image is resized to 64x64: 4 placeholder tokens.
QWEN3_PATCH_SIZE = 16

QWEN_VISION_TOKENS = {
    "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
}
QWEN_IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
QWEN_VIDEO_PLACEHOLDER = "<|vision_start|><|video_pad|><|vision_end|>"


def _qwen2_text_kwargs(tokenizer: PreTrainedTokenizerFast) -> dict:
    return text_kwargs(tokenizer, num_heads=QWEN2_NUM_HEADS, num_kv_heads=QWEN2_NUM_KV_HEADS)


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
        and videos (14-pixel patches merged 2x2: a 56x56 image is 4 placeholder tokens).
    """
    tokenizer = build_tiny_tokenizer(seed=seed)
    text_config = {
        **_qwen2_text_kwargs(tokenizer),
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": QWEN2_MROPE_SECTION},
    }
    vision_common = {
        "depth": NUM_LAYERS,
        "num_heads": 2,
        "in_channels": 3,
        "patch_size": PATCH_SIZE,
        "spatial_merge_size": MERGE_SIZE,
        "temporal_patch_size": TEMPORAL_PATCH_SIZE,
    }
    ids = token_ids(tokenizer, **QWEN_VISION_TOKENS)
    if version == "2":
        vision_config = {**vision_common, "embed_dim": 32, "hidden_size": HIDDEN_SIZE, "mlp_ratio": 2}
        model_class, config_class = Qwen2VLForConditionalGeneration, Qwen2VLConfig
    elif version == "2.5":
        vision_config = {
            **vision_common,
            "hidden_size": 32,
            "intermediate_size": 64,
            "out_hidden_size": HIDDEN_SIZE,
            "window_size": 56,
            "fullatt_block_indexes": [1],
        }
        model_class, config_class = Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLConfig
    else:
        raise ValueError(f"Unknown Qwen-VL version {version!r}; use '2' or '2.5'.")
    image_processor, video_processor = qwen2_vl_processors(PATCH_SIZE)
    processor = make_processor(
        Qwen2VLProcessor, tokenizer, image_processor=image_processor, video_processor=video_processor
    )
    config = config_class(text_config=text_config, vision_config=vision_config, **ids)
    return init_model(model_class, config, seed, tokenizer), processor


def qwen3_text_config(tokenizer: PreTrainedTokenizerFast, rope_theta: float, **kwargs) -> dict:
    """
    The text config of Qwen3-VL and Qwen3-Omni: head_dim 32 set explicitly (Qwen3's default is 128) and M-RoPE
    interleaved over its 16 rotary frequencies, (T, H, W) = (6, 5, 5) as the released (24, 20, 20).

    Args:
        tokenizer (`PreTrainedTokenizerFast`):
            Gives the vocabulary size and special ids.
        rope_theta (`float`):
            The rotary base.
        kwargs:
            The family's own rope parameters.
    """
    rope_parameters = {
        "rope_type": "default",
        "rope_theta": rope_theta,
        "mrope_section": [6, 5, 5],
        "mrope_interleaved": True,
        **kwargs,
    }
    return {**text_kwargs(tokenizer), "head_dim": HEAD_DIM, "rope_parameters": rope_parameters}


def qwen3_vision_config(position_grid: int, **kwargs) -> dict:
    """
    Qwen3-VL's vision tower, also Qwen3-Omni's: 16-pixel patches, a `position_grid` x `position_grid` grid of learned
    position embeddings bilinearly resampled to each image's grid, and the first block's features added to the
    first text layer's hidden states (DeepStack). `kwargs` add the family's own fields.
    """
    return patch_vision_config(
        QWEN3_PATCH_SIZE, num_position_embeddings=position_grid**2, deepstack_visual_indexes=[0], **kwargs
    )


def qwen3_vl_processor(tokenizer: PreTrainedTokenizerFast) -> ProcessorMixin:
    """
    Qwen3-VL's processor (Qwen3.5's too) around `tokenizer`, with the tiny pixel bounds. Videos are bounded by the
    pixels summed over their frames: 4 tokens a pair of frames, up to 16 frames. Frames arrive decoded (a list of
    images), so none are sampled, and the timestamps assume 24 fps.
    """
    image_processor, video_processor = patch_processors(
        Qwen2VLImageProcessor,
        Qwen3VLVideoProcessor,
        QWEN3_PATCH_SIZE,
        video_frames=(2, MAX_VIDEO_FRAMES),
        video_kwargs={
            "do_sample_frames": False,
            "min_frames": 2,
            "max_frames": MAX_VIDEO_FRAMES,
            "cap_pixels_per_frame": False,
        },
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor = make_processor(
        Qwen3VLProcessor, tokenizer, image_processor=image_processor, video_processor=video_processor
    )
    return processor


def qwen3_vl_config_args(seed: int) -> tuple[PreTrainedTokenizerFast, ProcessorMixin, dict]:
    # The Qwen vision tokens are among the tiny tokenizer's own; only the template drops the audio part.
    tokenizer = family_tokenizer(seed, [], image=QWEN_IMAGE_PLACEHOLDER, video=QWEN_VIDEO_PLACEHOLDER)
    processor = qwen3_vl_processor(tokenizer)
    config_args = {
        "text_config": qwen3_text_config(tokenizer, rope_theta=10000.0),
        "vision_config": qwen3_vision_config(position_grid=4),
        "tie_word_embeddings": False,
        **token_ids(tokenizer, **QWEN_VISION_TOKENS),
    }
    return tokenizer, processor, config_args


def build_tiny_qwen3_vl(seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """
    Build a tiny Qwen3-VL (dense text model, interleaved M-RoPE, DeepStack vision features) with its processor.

    Args:
        seed (`int`, *optional*, defaults to `0`):
            Seeds the tokenizer corpus and the weight initialisation.

    Returns:
        `tuple[PreTrainedModel, Qwen3VLProcessor]`: the model in eval mode and a processor that handles images (a
        56x56 image is 4 tokens) and videos (lists of frames; each pair of frames gets a `<t seconds>` timestamp).
    """
    tokenizer, processor, config_args = qwen3_vl_config_args(seed)
    return init_model(Qwen3VLForConditionalGeneration, Qwen3VLConfig(**config_args), seed, tokenizer), processor


def build_tiny_qwen3_vl_moe(seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """
    Build a tiny Qwen3-VL-MoE (every text layer a sparse MoE block of 4 experts, top-2) with its processor.

    Args:
        seed (`int`, *optional*, defaults to `0`):
            Seeds the tokenizer corpus and the weight initialisation.

    Returns:
        `tuple[PreTrainedModel, Qwen3VLProcessor]`: the model in eval mode and [`build_tiny_qwen3_vl`]'s processor.
    """
    tokenizer, processor, config_args = qwen3_vl_config_args(seed)
    config_args["text_config"].update(
        num_experts=NUM_EXPERTS,
        num_experts_per_tok=NUM_EXPERTS_PER_TOKEN,
        moe_intermediate_size=HIDDEN_SIZE // 2,
        decoder_sparse_step=1,
    )
    config = Qwen3VLMoeConfig(**config_args)
    return init_model(Qwen3VLMoeForConditionalGeneration, config, seed, tokenizer), processor


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
    processor = make_processor(Qwen2AudioProcessor, tokenizer, feature_extractor=whisper_feature_extractor())
    audio_config = {
        "model_type": "qwen2_audio_encoder",
        "num_mel_bins": NUM_MEL_BINS,
        "encoder_layers": 2,
        "encoder_attention_heads": 2,
        "encoder_ffn_dim": 64,
        "d_model": 32,
        # The encoder needs mel frames == 2 * max_source_positions: 100 frames a second.
        "max_source_positions": AUDIO_CHUNK_SECONDS * 100 // 2,
    }
    config = Qwen2AudioConfig(
        audio_config=audio_config,
        text_config={"model_type": "qwen2", **_qwen2_text_kwargs(tokenizer)},
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
    )
    return init_model(Qwen2AudioForConditionalGeneration, config, seed, tokenizer), processor


def build_tiny_qwen2(seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Build a tiny text-only Qwen2 causal LM and its tokenizer."""
    tokenizer = build_tiny_tokenizer(seed=seed)
    return init_model(Qwen2ForCausalLM, Qwen2Config(**_qwen2_text_kwargs(tokenizer)), seed, tokenizer), tokenizer


def build_tiny_qwen3(seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """
    Build a tiny text-only Qwen3 causal LM (two heads of 32: the smallest head vLLM's CPU kernels take) and its
    tokenizer, the default Qwen one.
    """
    tokenizer = build_tiny_tokenizer(seed=seed)
    config = Qwen3Config(**text_kwargs(tokenizer), head_dim=HEAD_DIM)
    return init_model(Qwen3ForCausalLM, config, seed, tokenizer), tokenizer


def build_tiny_reward_model(seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Build a tiny Qwen2 sequence-classification model with one output (a scalar reward) and its tokenizer."""
    tokenizer = build_tiny_tokenizer(seed=seed)
    config = Qwen2Config(**_qwen2_text_kwargs(tokenizer), num_labels=1)
    # No generation config to finish: a sequence classifier does not generate.
    torch.manual_seed(seed)
    return Qwen2ForSequenceClassification(config).eval(), tokenizer
