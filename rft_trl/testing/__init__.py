"""Offline tiny models, processors and synthetic datasets for smoke tests, demos and the test suite."""

from .agent_tasks import ZoomEnvironment, make_zoom_dataset, zoom_warmup_rows
from .datasets import (
    TASK_ANSWERS,
    TASK_WARMUP_ROWS,
    make_colour_dataset,
    make_grounding_dataset,
    make_pattern_dataset,
    make_pitch_dataset,
    make_task_dataset,
    make_text_dataset,
    make_video_dataset,
)
from .families import (
    RELEASED_VOCAB_BUILDERS,
    TINY_MODEL_BUILDERS,
    build_tiny_gemma3,
    build_tiny_glm4v,
    build_tiny_glm4v_moe,
    build_tiny_idefics3,
    build_tiny_internvl,
    build_tiny_llava,
    build_tiny_llava_onevision,
    build_tiny_mistral3,
    build_tiny_phi4_multimodal,
    build_tiny_qwen2_5_omni,
    build_tiny_qwen3_5_released_vocab,
    build_tiny_qwen3_moe_released_vocab,
    build_tiny_qwen3_omni_moe,
    build_tiny_qwen3_released_vocab,
    build_tiny_qwen3_vl,
    build_tiny_qwen3_vl_moe,
    build_tiny_smolvlm,
)
from .models import (
    TINY_MODEL_KINDS,
    build_tiny_model,
    build_tiny_qwen2,
    build_tiny_qwen2_audio,
    build_tiny_qwen2_vl,
    build_tiny_reward_model,
    load_processing_class,
    save_tiny_model,
)
from .released_tokenizers import build_qwen3_5_tokenizer, build_qwen3_tokenizer
from .tokenizer import MEDIA_PLACEHOLDER_TOKENS, SPECIAL_TOKENS, build_tiny_tokenizer
from .training import TINY_CONFIG, count_tower_images, distinct_reward, length_reward, tiny_config
from .vocabulary import COLOURS, FREQUENCIES, MOTIONS, PITCHES, TEXT_WORDS
