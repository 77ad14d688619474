"""What the tiny families share: sizes, tokenizer, processor and config pieces, and the seeded build.

The sizes are those of every family added after the first Qwen builders (`qwen.py`), which keep their own.
"""

from __future__ import annotations

import torch
from transformers import (
    BaseImageProcessor,
    BaseVideoProcessor,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
    WhisperFeatureExtractor,
)

from ..tokenizer import build_tiny_tokenizer, make_chat_template

HIDDEN_SIZE = 64
NUM_LAYERS = 2
# Two heads of 32: vLLM's CPU attention kernels refuse head_dim 16, so every family added after the first Qwen ones
# (which keep 4 heads of 16) uses head_dim 32 in its text, vision and audio towers.
NUM_HEADS = 2
HEAD_DIM = HIDDEN_SIZE // NUM_HEADS
NUM_KV_HEADS = 1
# A vision tower of the family's own architecture at the tiny size (CLIP, SigLIP, Pixtral, InternViT ...).
VISION_TOWER = {
    "hidden_size": HIDDEN_SIZE,
    "intermediate_size": 2 * HIDDEN_SIZE,
    "num_hidden_layers": NUM_LAYERS,
    "num_attention_heads": NUM_HEADS,
}
# MoE text layers: 4 routed experts, 2 per token.
NUM_EXPERTS = 4
NUM_EXPERTS_PER_TOKEN = 2
# Vision patches of 14 pixels merged (or pixel-shuffled) 2x2, and 2 frames per temporal patch, as released.
PATCH_SIZE = 14
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
MAX_VIDEO_FRAMES = 16
# InternVL, Idefics3 and SmolVLM: one 56x56 tile of 16 patches, pixel-shuffled 2x2 into 4 tokens.
TILE_SIZE = 56
PIXEL_SHUFFLE = 2
TOKENS_PER_TILE = (TILE_SIZE // PATCH_SIZE) ** 2 // PIXEL_SHUFFLE**2
# Audio: 16 kHz, a 10 ms hop (100 mel frames a second), 32 mel bins instead of the released 128, and a 2 s window
# instead of 30 s, which keeps the audio encoders ~10x cheaper while they run the same code.
AUDIO_SAMPLING_RATE = 16000
AUDIO_CHUNK_SECONDS = 2
NUM_MEL_BINS = 32


def text_kwargs(
    tokenizer: PreTrainedTokenizerFast, num_heads: int = NUM_HEADS, num_kv_heads: int = NUM_KV_HEADS
) -> dict:
    """
    The text tower's config arguments: hidden size 64, two layers, untied embeddings, the tokenizer's special ids.

    Args:
        tokenizer (`PreTrainedTokenizerFast`):
            Gives the vocabulary size and the bos (`<|endoftext|>`), eos and pad ids.
        num_heads (`int`, *optional*, defaults to `2`):
            Attention heads; head_dim is 64 / `num_heads`.
        num_kv_heads (`int`, *optional*, defaults to `1`):
            Key/value heads.
    """
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": HIDDEN_SIZE,
        "intermediate_size": 2 * HIDDEN_SIZE,
        "num_hidden_layers": NUM_LAYERS,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "max_position_embeddings": 4096,
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
    }


def family_tokenizer(
    seed: int,
    media_tokens: list[str],
    image: str | None = None,
    video: str | None = None,
    audio: str | None = None,
    named_tokens: dict[str, str] | None = None,
) -> PreTrainedTokenizerFast:
    """
    The tiny tokenizer with a family's media tokens and a chat template that renders media parts as its placeholders.

    Args:
        seed (`int`):
            Seed of the tokenizer corpus.
        media_tokens (`list[str]`):
            The family's special tokens, added after the Qwen ones in this order (their ids follow).
        image (`str`, *optional*):
            Text of an `{"type": "image"}` part, which the family's processor expands; `None`: no image parts.
        video (`str`, *optional*):
            Text of an `{"type": "video"}` part, or `None`.
        audio (`str`, *optional*):
            Text of an `{"type": "audio"}` part, or `None`.
        named_tokens (`dict[str, str]`, *optional*):
            Tokens the family's processor reads as tokenizer attributes (`tokenizer.image_token`, ...).
    """
    return build_tiny_tokenizer(
        seed=seed,
        extra_special_tokens=media_tokens,
        chat_template=make_chat_template(image=image, video=video, audio=audio),
        named_tokens=named_tokens,
    )


def token_ids(tokenizer: PreTrainedTokenizerFast, **tokens: str) -> dict[str, int]:
    """`{"image_token_id": "<image>"}` -> `{"image_token_id": 412}`: config arguments from token strings."""
    return {name: tokenizer.convert_tokens_to_ids(token) for name, token in tokens.items()}


def pixel_bounds(patch_size: int, min_frames: int = 1, max_frames: int = 1) -> dict[str, int]:
    """
    The `size` of a Qwen-style image or video processor, which bounds the pixel count: from one merged token to a 2x2
    grid of them per frame. A 56x56 image then gives 16 patches and 4 placeholder tokens (resized to 64x64 first
    with 16-pixel patches); larger images shrink to at most that.

    Args:
        patch_size (`int`):
            The vision patch size (14 or 16); one merged token covers `(2 * patch_size) ** 2` pixels.
        min_frames (`int`, *optional*, defaults to `1`):
            Frames the lower bound counts: processors that bound the pixels summed over all frames (Qwen3-VL and GLM
            videos, GLM images counted as two frames) need it above 1.
        max_frames (`int`, *optional*, defaults to `1`):
            Frames the upper bound counts, likewise.
    """
    factor = patch_size * MERGE_SIZE
    return {"shortest_edge": min_frames * factor**2, "longest_edge": max_frames * (2 * factor) ** 2}


def patch_processors(
    image_processor_class: type[BaseImageProcessor],
    video_processor_class: type[BaseVideoProcessor],
    patch_size: int,
    image_frames: tuple[int, int] = (1, 1),
    video_frames: tuple[int, int] = (1, 1),
    video_kwargs: dict | None = None,
    **kwargs,
) -> tuple[BaseImageProcessor, BaseVideoProcessor]:
    """
    An image processor and a video processor that cut `patch_size` pixel patches, merged 2x2, two frames a temporal
    patch (Qwen2-VL and its descendants: Qwen2.5-VL, Qwen3-VL, the Omni models, GLM-4.1V), bounded by
    [`pixel_bounds`].

    Args:
        image_processor_class (`type`):
            The family's image processor class.
        video_processor_class (`type`):
            The family's video processor class.
        patch_size (`int`):
            Pixels per patch side.
        image_frames (`tuple[int, int]`, *optional*, defaults to `(1, 1)`):
            The frames the image processor's lower and upper pixel bounds count: `(2, 2)` for GLM, which counts an
            image as two frames.
        video_frames (`tuple[int, int]`, *optional*, defaults to `(1, 1)`):
            The same for the video processor: `(1, 1)` where the bounds hold per frame (Qwen2-VL), `(2, 16)` where
            they hold for the pixels summed over the frames (Qwen3-VL, GLM).
        video_kwargs (`dict`, *optional*):
            Arguments of the video processor only.
        kwargs:
            Arguments of both (e.g. `image_mean`).
    """
    common = {"patch_size": patch_size, "merge_size": MERGE_SIZE, "temporal_patch_size": TEMPORAL_PATCH_SIZE, **kwargs}
    image_processor = image_processor_class(size=pixel_bounds(patch_size, *image_frames), **common)
    video_processor = video_processor_class(
        size=pixel_bounds(patch_size, *video_frames), **common, **(video_kwargs or {})
    )
    return image_processor, video_processor


def vision_tower(model_type: str, image_size: int, patch_size: int = PATCH_SIZE, **kwargs) -> dict:
    """
    A ViT-style vision tower of the family's own architecture at the tiny size ([`VISION_TOWER`]).

    Args:
        model_type (`str`):
            The tower's config type (`"clip_vision_model"`, `"siglip_vision_model"`, `"pixtral"`, ...).
        image_size (`int`):
            Pixels per side of the images (or tiles) it sees.
        patch_size (`int`, *optional*, defaults to `14`):
            Pixels per side of a patch.
        kwargs:
            The family's own fields.
    """
    return {"model_type": model_type, **VISION_TOWER, "image_size": image_size, "patch_size": patch_size, **kwargs}


def patch_vision_config(patch_size: int, **kwargs) -> dict:
    """
    A Qwen-style vision tower (Qwen2.5-VL and later, GLM-4.1V): two blocks of two 32-dimensional heads over
    `patch_size` pixel patches, merged 2x2 into the text model's width. `kwargs` add the family's own fields.
    """
    return {
        "depth": NUM_LAYERS,
        "hidden_size": HIDDEN_SIZE,
        "intermediate_size": 2 * HIDDEN_SIZE,
        "num_heads": NUM_HEADS,
        "patch_size": patch_size,
        "spatial_merge_size": MERGE_SIZE,
        "temporal_patch_size": TEMPORAL_PATCH_SIZE,
        "out_hidden_size": HIDDEN_SIZE,
        **kwargs,
    }


def qwen2_vl_processors(patch_size: int) -> tuple[BaseImageProcessor, BaseVideoProcessor]:
    """
    Qwen2-VL's image and video processors (also those of the Omni models), bounded per image and per frame. Frames
    arrive decoded, so none are sampled; at least 2 are kept (one temporal patch).
    """
    video_kwargs = {"min_frames": 2, "max_frames": MAX_VIDEO_FRAMES, "cap_pixels_per_frame": False}
    return patch_processors(Qwen2VLImageProcessor, Qwen2VLVideoProcessor, patch_size, video_kwargs=video_kwargs)


def make_processor(
    processor_class: type[ProcessorMixin], tokenizer: PreTrainedTokenizerFast, **kwargs
) -> ProcessorMixin:
    """
    `processor_class` around `tokenizer` and the sub-processors and options in `kwargs`, with the tokenizer's chat
    template (the tiny tokenizer's, whose media parts render as the family's placeholders).
    """
    return processor_class(tokenizer=tokenizer, chat_template=tokenizer.chat_template, **kwargs)


def whisper_feature_extractor() -> WhisperFeatureExtractor:
    """A log-mel feature extractor with [`NUM_MEL_BINS`] bins and a [`AUDIO_CHUNK_SECONDS`] window (200 frames)."""
    return WhisperFeatureExtractor(
        feature_size=NUM_MEL_BINS,
        sampling_rate=AUDIO_SAMPLING_RATE,
        hop_length=AUDIO_SAMPLING_RATE // 100,
        chunk_length=AUDIO_CHUNK_SECONDS,
        n_fft=400,
    )


def finish(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    """Stop generation at the tokenizer's eos, pad with its pad token, and put the model in eval mode."""
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    return model.eval()


def init_model(
    model_class: type[PreTrainedModel], config: PretrainedConfig, seed: int, tokenizer: PreTrainedTokenizerFast
) -> PreTrainedModel:
    """Draw the weights of `model_class(config)` from `seed` and [`finish`] it for `tokenizer`."""
    torch.manual_seed(seed)
    return finish(model_class(config), tokenizer)
