"""Tiny speech-to-text families that take one audio per prompt: Qwen3-ASR (`qwen3_asr`) and AudioFlamingo3
(`audioflamingo3`).

Both processors take exactly one audio per text (`len(text) == len(audio)`), and Qwen3-ASR's `__call__` requires
`audio` (a prompt without audio passes `audio=None`): the layout probe finds both from the processors.

- Qwen3-ASR: a Qwen3 text model and its own audio encoder (strided convolutions over chunks of 100 mel frames,
  13 tokens a full chunk); its feature extractor pads a batch to its longest clip (`input_features_mask`).
- AudioFlamingo3: a Qwen2 text model and a Whisper-style encoder; the processor cuts each clip into windows of
  the feature extractor's chunk (2 s here, 30 s as released), one row of `input_features` per window.
"""

from __future__ import annotations

from transformers import (
    AudioFlamingo3Config,
    AudioFlamingo3ForConditionalGeneration,
    AudioFlamingo3Processor,
    PreTrainedModel,
    ProcessorMixin,
    Qwen3ASRConfig,
    Qwen3ASRForConditionalGeneration,
    Qwen3ASRProcessor,
)
from transformers.models.qwen3_asr.feature_extraction_qwen3_asr import Qwen3ASRFeatureExtractor

from .common import (
    AUDIO_CHUNK_SECONDS,
    AUDIO_SAMPLING_RATE,
    HEAD_DIM,
    HIDDEN_SIZE,
    NUM_HEADS,
    NUM_LAYERS,
    NUM_MEL_BINS,
    family_tokenizer,
    init_model,
    make_processor,
    text_kwargs,
    whisper_feature_extractor,
)

QWEN3_ASR_AUDIO_TOKENS = {"audio_token": "<|audio_pad|>", "audio_bos_token": "<|audio_start|>"}
QWEN3_ASR_AUDIO_TOKENS["audio_eos_token"] = "<|audio_end|>"
# Qwen3-ASR's encoder reads mel frames in chunks of 2 * n_window (100 frames, 1 s), each 13 tokens when full.
QWEN3_ASR_WINDOW = 50
AUDIOFLAMINGO3_AUDIO_TOKEN = "<sound>"
# A small audio encoder: two layers of two 16-dimensional heads.
AUDIO_ENCODER = {"layers": NUM_LAYERS, "heads": NUM_HEADS, "width": HIDDEN_SIZE // 2}


def build_tiny_qwen3_asr(seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """
    Build a tiny Qwen3-ASR with its processor (32 mel bins, 100 frames a second).

    Args:
        seed (`int`, *optional*, defaults to `0`):
            Seeds the tokenizer corpus and the weight initialisation.

    Returns:
        `tuple[PreTrainedModel, Qwen3ASRProcessor]`: the model in eval mode and its processor (a 1 s clip is 13
        `<|audio_pad|>` tokens between `<|audio_start|>` and `<|audio_end|>`).
    """
    tokens = QWEN3_ASR_AUDIO_TOKENS
    audio_part = tokens["audio_bos_token"] + tokens["audio_token"] + tokens["audio_eos_token"]
    tokenizer = family_tokenizer(seed, list(tokens.values()), audio=audio_part, named_tokens=tokens)
    feature_extractor = Qwen3ASRFeatureExtractor(
        feature_size=NUM_MEL_BINS,
        sampling_rate=AUDIO_SAMPLING_RATE,
        hop_length=AUDIO_SAMPLING_RATE // 100,
        chunk_length=AUDIO_CHUNK_SECONDS,
        n_fft=400,
    )
    processor = make_processor(Qwen3ASRProcessor, tokenizer, feature_extractor=feature_extractor)
    audio_config = {
        "num_mel_bins": NUM_MEL_BINS,
        "encoder_layers": AUDIO_ENCODER["layers"],
        "encoder_attention_heads": AUDIO_ENCODER["heads"],
        "encoder_ffn_dim": 2 * AUDIO_ENCODER["width"],
        "d_model": AUDIO_ENCODER["width"],
        "downsample_hidden_size": AUDIO_ENCODER["width"] // 2,
        "output_dim": HIDDEN_SIZE,
        "n_window": QWEN3_ASR_WINDOW,
    }
    config = Qwen3ASRConfig(
        audio_config=audio_config,
        text_config={"model_type": "qwen3", **text_kwargs(tokenizer), "head_dim": HEAD_DIM},
        audio_token_id=tokenizer.convert_tokens_to_ids(tokens["audio_token"]),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    return init_model(Qwen3ASRForConditionalGeneration, config, seed, tokenizer), processor


def build_tiny_audioflamingo3(seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """
    Build a tiny AudioFlamingo3 with its processor and a Whisper feature extractor cut to a 2 s window.

    Args:
        seed (`int`, *optional*, defaults to `0`):
            Seeds the tokenizer corpus and the weight initialisation.

    Returns:
        `tuple[PreTrainedModel, AudioFlamingo3Processor]`: the model in eval mode and its processor (a 1 s clip is
        25 `<sound>` tokens).
    """
    tokenizer = family_tokenizer(seed, [AUDIOFLAMINGO3_AUDIO_TOKEN], audio=AUDIOFLAMINGO3_AUDIO_TOKEN)
    processor = AudioFlamingo3Processor(
        feature_extractor=whisper_feature_extractor(),
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template,
        audio_token=AUDIOFLAMINGO3_AUDIO_TOKEN,
        max_audio_len=10 * AUDIO_CHUNK_SECONDS,
    )
    audio_config = {
        "num_mel_bins": NUM_MEL_BINS,
        "num_hidden_layers": AUDIO_ENCODER["layers"],
        "num_attention_heads": AUDIO_ENCODER["heads"],
        "intermediate_size": 2 * AUDIO_ENCODER["width"],
        "hidden_size": AUDIO_ENCODER["width"],
        # The encoder adds one position embedding per frame after its stride-2 convolution: 100 frames a second.
        "max_source_positions": AUDIO_CHUNK_SECONDS * 100 // 2,
    }
    config = AudioFlamingo3Config(
        audio_config=audio_config,
        text_config={"model_type": "qwen2", **text_kwargs(tokenizer)},
        audio_token_id=tokenizer.convert_tokens_to_ids(AUDIOFLAMINGO3_AUDIO_TOKEN),
    )
    return init_model(AudioFlamingo3ForConditionalGeneration, config, seed, tokenizer), processor
