"""Offline tiny models, processors and synthetic datasets for smoke tests, demos and the test suite."""

from .datasets import (
    make_colour_dataset,
    make_pitch_dataset,
    make_task_dataset,
    make_text_dataset,
    make_video_dataset,
)
from .models import (
    TINY_MODEL_KINDS,
    build_tiny_model,
    build_tiny_qwen2,
    build_tiny_qwen2_audio,
    build_tiny_qwen2_vl,
    build_tiny_reward_model,
    save_tiny_model,
)
from .tokenizer import MEDIA_PLACEHOLDER_TOKENS, SPECIAL_TOKENS, build_tiny_tokenizer
from .training import TINY_CONFIG, length_reward, tiny_config
from .vocabulary import COLOURS, MOTIONS, PITCHES, TEXT_WORDS
