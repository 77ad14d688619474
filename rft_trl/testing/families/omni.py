"""Tiny Qwen-Omni thinkers: Qwen2.5-Omni and Qwen3-Omni-MoE.

A thinker is the text-generating half of an Omni model, without the talker and vocoder that turn its output into
speech. It takes images, videos and audio, and runs the released code: M-RoPE with time-aligned audio and vision
positions, the vision tower, the chunked audio encoder and, for Qwen3-Omni, DeepStack visual features and sparse-MoE
text layers.
"""

from __future__ import annotations

from transformers import PreTrainedModel, PreTrainedTokenizerFast, ProcessorMixin
from transformers.models.qwen2_5_omni import (
    Qwen2_5OmniProcessor,
    Qwen2_5OmniThinkerConfig,
    Qwen2_5OmniThinkerForConditionalGeneration,
)
from transformers.models.qwen3_omni_moe import (
    Qwen3OmniMoeProcessor,
    Qwen3OmniMoeThinkerConfig,
    Qwen3OmniMoeThinkerForConditionalGeneration,
)

from .common import (
    HIDDEN_SIZE,
    NUM_EXPERTS,
    NUM_EXPERTS_PER_TOKEN,
    NUM_HEADS,
    NUM_LAYERS,
    NUM_MEL_BINS,
    PATCH_SIZE,
    family_tokenizer,
    init_model,
    make_processor,
    patch_vision_config,
    qwen2_vl_processors,
    text_kwargs,
    token_ids,
    whisper_feature_extractor,
)
from .qwen import QWEN3_PATCH_SIZE, qwen3_text_config, qwen3_vision_config

QWEN2_5_OMNI_TOKENS = {
    "image_token": "<|IMAGE|>",
    "video_token": "<|VIDEO|>",
    "audio_token": "<|AUDIO|>",
    "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
    "audio_bos_token": "<|audio_bos|>",
    "audio_eos_token": "<|audio_eos|>",
}
QWEN3_OMNI_TOKENS = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "audio_token": "<|audio_pad|>",
    "vision_bos_token": "<|vision_start|>",
    "vision_eos_token": "<|vision_end|>",
    "audio_bos_token": "<|audio_start|>",
    "audio_eos_token": "<|audio_end|>",
}
OMNI_PROCESSORS = (Qwen2_5OmniProcessor, Qwen3OmniMoeProcessor)


def use_video_processor_size(processor: ProcessorMixin) -> None:
    """
    Let an Omni processor's video processor size the frames.

    Both Omni processor classes carry video defaults (`videos_kwargs = {"size": ...}`, at least 128 merged tokens a
    frame) that override the video processor's own `size` at every call: four 56x56 frames would become 288 tokens
    instead of 8. Only the constructor's arguments are saved, so a processor loaded with `from_pretrained` has the
    class defaults again and needs this call too ([`load_processing_class`] makes it).
    """
    processor.videos_kwargs = {}


def _omni_parts(
    seed: int, processor_class: type[ProcessorMixin], tokens: dict[str, str], patch_size: int
) -> tuple[PreTrainedTokenizerFast, ProcessorMixin]:
    # The processors read the media tokens as named tokenizer attributes (`tokenizer.image_token`, ...).
    tokenizer = family_tokenizer(
        seed,
        list(tokens.values()),
        image=tokens["vision_bos_token"] + tokens["image_token"] + tokens["vision_eos_token"],
        video=tokens["vision_bos_token"] + tokens["video_token"] + tokens["vision_eos_token"],
        audio=tokens["audio_bos_token"] + tokens["audio_token"] + tokens["audio_eos_token"],
        named_tokens=tokens,
    )
    image_processor, video_processor = qwen2_vl_processors(patch_size)
    processor = make_processor(
        processor_class,
        tokenizer,
        image_processor=image_processor,
        video_processor=video_processor,
        feature_extractor=whisper_feature_extractor(),
    )
    use_video_processor_size(processor)
    return tokenizer, processor


def _media_ids(tokenizer: PreTrainedTokenizerFast, tokens: dict[str, str]) -> dict[str, int]:
    return token_ids(
        tokenizer,
        image_token_id=tokens["image_token"],
        video_token_id=tokens["video_token"],
        audio_token_id=tokens["audio_token"],
        vision_start_token_id=tokens["vision_bos_token"],
        vision_end_token_id=tokens["vision_eos_token"],
        audio_start_token_id=tokens["audio_bos_token"],
        audio_end_token_id=tokens["audio_eos_token"],
    )


def _audio_config(**kwargs) -> dict:
    return {
        "num_mel_bins": NUM_MEL_BINS,
        "encoder_layers": NUM_LAYERS,
        "encoder_attention_heads": NUM_HEADS,
        "encoder_ffn_dim": 2 * HIDDEN_SIZE,
        "d_model": HIDDEN_SIZE,
        "max_source_positions": 100,
        "output_dim": HIDDEN_SIZE,
        **kwargs,
    }


def build_tiny_qwen2_5_omni(seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """
    Build a tiny Qwen2.5-Omni thinker with its processor (images, videos and audio).

    The processor pads every audio clip to a fixed 2 s window (200 mel frames) and truncates longer ones. The audio
    encoder reads only the frames that `feature_attention_mask` marks, attends within 2 s chunks and gives one
    placeholder token per four frames (25 for a 1 s clip). A 56x56 image is 4 placeholder tokens.

    Args:
        seed (`int`, *optional*, defaults to `0`):
            Seeds the tokenizer corpus and the weight initialisation.

    Returns:
        `tuple[PreTrainedModel, Qwen2_5OmniProcessor]`: the model in eval mode and its processor; load a saved one
        with [`load_processing_class`], which keeps the small video size.
    """
    tokenizer, processor = _omni_parts(seed, Qwen2_5OmniProcessor, QWEN2_5_OMNI_TOKENS, PATCH_SIZE)
    media_ids = _media_ids(tokenizer, QWEN2_5_OMNI_TOKENS)
    text_config = {
        **text_kwargs(tokenizer),
        # (temporal, height, width) sections of the head_dim / 2 = 16 rotary frequencies, as the released [16, 24, 24]
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [4, 6, 6]},
    }
    config = Qwen2_5OmniThinkerConfig(
        text_config=text_config,
        vision_config=patch_vision_config(PATCH_SIZE, window_size=56, fullatt_block_indexes=[1]),
        # Attention chunks of 2 * n_window = 200 frames; one chunk is 100 positions after the stride-2 convolution.
        audio_config=_audio_config(n_window=100),
        # This config names three of the ids `*_token_index`.
        image_token_index=media_ids.pop("image_token_id"),
        video_token_index=media_ids.pop("video_token_id"),
        audio_token_index=media_ids.pop("audio_token_id"),
        position_id_per_seconds=processor.position_id_per_seconds,
        seconds_per_chunk=int(processor.seconds_per_chunk),
        **media_ids,
    )
    return init_model(Qwen2_5OmniThinkerForConditionalGeneration, config, seed, tokenizer), processor


def build_tiny_qwen3_omni_moe(seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """
    Build a tiny Qwen3-Omni-MoE thinker (4 experts, top-2) with its processor (images, videos and audio).

    The processor pads audio clips to the longest one in the call and truncates none. The audio encoder cuts them into
    1 s chunks (100 mel frames, 13 placeholder tokens each). A 56x56 image is resized to 64x64: 4 placeholder tokens.

    Args:
        seed (`int`, *optional*, defaults to `0`):
            Seeds the tokenizer corpus and the weight initialisation.

    Returns:
        `tuple[PreTrainedModel, Qwen3OmniMoeProcessor]`: the model in eval mode and its processor, as
        [`build_tiny_qwen2_5_omni`]'s.
    """
    tokenizer, processor = _omni_parts(seed, Qwen3OmniMoeProcessor, QWEN3_OMNI_TOKENS, QWEN3_PATCH_SIZE)
    text_config = {
        # Both `mrope_interleaved` and `interleaved`, as in the released config.
        **qwen3_text_config(tokenizer, rope_theta=1000000.0, interleaved=True),
        "moe_intermediate_size": HIDDEN_SIZE,
        "num_experts": NUM_EXPERTS,
        "num_experts_per_tok": NUM_EXPERTS_PER_TOKEN,
    }
    # An 8x8 position grid; `image_size` and `apply_vit_abs_pos_embed` are unused by transformers, but vLLM's vision
    # tower sizes the grid from them (image_size // patch_size = 8 a side).
    vision_config = qwen3_vision_config(position_grid=8, image_size=128, apply_vit_abs_pos_embed=True)
    config = Qwen3OmniMoeThinkerConfig(
        text_config=text_config,
        vision_config=vision_config,
        # The processor's and the encoder's token counts hard-code 1 s chunks (n_window 50): keep it.
        audio_config=_audio_config(n_window=processor.n_window, downsample_hidden_size=16),
        position_id_per_seconds=int(processor.position_id_per_seconds),
        **_media_ids(tokenizer, QWEN3_OMNI_TOKENS),
    )
    return init_model(Qwen3OmniMoeThinkerForConditionalGeneration, config, seed, tokenizer), processor
