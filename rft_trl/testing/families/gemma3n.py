"""Tiny Gemma 3n: timm's MobileNetV5 vision tower, a Conformer audio tower, and AltUp/LAuReL text layers."""

from __future__ import annotations

from transformers import PreTrainedModel, ProcessorMixin, SiglipImageProcessor
from transformers.models.gemma3n import Gemma3nAudioFeatureExtractor, Gemma3nProcessor

from .common import (
    AUDIO_SAMPLING_RATE,
    HEAD_DIM,
    HIDDEN_SIZE,
    NUM_HEADS,
    NUM_MEL_BINS,
    family_tokenizer,
    init_model,
    make_processor,
    text_kwargs,
    token_ids,
)

# Gemma 3n's token layout, in id order: the text vocabulary (with the image and audio begin tokens), then the vision
# tokens its vision embedder looks up (from `<end_of_image>`), then the audio ones (from `<end_of_audio>`).
GEMMA3N_TEXT_TOKENS = {"boi_token": "<start_of_image>", "boa_token": "<start_of_audio>"}
GEMMA3N_VISION_TOKENS = {"eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
GEMMA3N_AUDIO_TOKENS = {"eoa_token": "<end_of_audio>", "audio_token": "<audio_soft_token>"}
GEMMA3N_TOKENS = {**GEMMA3N_TEXT_TOKENS, **GEMMA3N_VISION_TOKENS, **GEMMA3N_AUDIO_TOKENS}
# A 64x64 image through MobileNetV5 at 1/16 of its channels, its multi-scale fusion pooled to 2x2: 4 soft tokens.
GEMMA3N_IMAGE_SIZE = 64
GEMMA3N_VISION_RESOLUTION = 2
GEMMA3N_CHANNEL_MULTIPLIER = 1 / 16
# The audio tower reduces 10 ms mel frames 16x (two stride-2 convolutions, then 4x in the Conformer): a 1 s clip gives
# 7 soft tokens, and every clip is padded to this many (clips up to ~1.9 s).
GEMMA3N_AUDIO_TOKENS_PER_CLIP = 12
# Sliding window of the local layer: above any test prompt, as the released 512 is above most real ones.
GEMMA3N_SLIDING_WINDOW = 512


def build_tiny_gemma3n(seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """
    Build a tiny Gemma 3n (MobileNetV5 vision tower, Conformer audio tower, a sliding and a global text layer with
    AltUp, LAuReL and per-layer input embeddings) for images and audio. Needs `timm`.

    An image part renders as `<image_soft_token>`, which [`Gemma3nProcessor`] expands into `\\n\\n<start_of_image>` +
    4 x `<image_soft_token>` + `<end_of_image>\\n\\n`; an audio part likewise with 12 `<audio_soft_token>`. The
    processor returns `token_type_ids` (the media kind of each token), `pixel_values`, `input_features` and
    `input_features_mask`.

    Args:
        seed (`int`, *optional*, defaults to `0`):
            Seeds the tokenizer corpus and the weight initialisation.

    Returns:
        `tuple[PreTrainedModel, Gemma3nProcessor]`: the model in eval mode and its processor (images squashed to 64x64
        pixels, 16 kHz audio).
    """
    # Imported here: Gemma 3n's config and model import timm, which imports wandb where it is installed; importing
    # rft_trl.testing loads neither (tests/e2e/test_package.py).
    from transformers.models.gemma3n import Gemma3nConfig, Gemma3nForConditionalGeneration

    tokenizer = family_tokenizer(
        seed,
        list(GEMMA3N_TOKENS.values()),
        image=GEMMA3N_TOKENS["image_token"],
        audio=GEMMA3N_TOKENS["audio_token"],
        named_tokens=GEMMA3N_TOKENS,
    )
    ids = token_ids(tokenizer, **{name: token for name, token in GEMMA3N_TOKENS.items()})
    processor = make_processor(
        Gemma3nProcessor,
        tokenizer,
        feature_extractor=Gemma3nAudioFeatureExtractor(feature_size=NUM_MEL_BINS, sampling_rate=AUDIO_SAMPLING_RATE),
        image_processor=SiglipImageProcessor(size={"height": GEMMA3N_IMAGE_SIZE, "width": GEMMA3N_IMAGE_SIZE}),
        audio_seq_length=GEMMA3N_AUDIO_TOKENS_PER_CLIP,
        image_seq_length=GEMMA3N_VISION_RESOLUTION**2,
    )
    text_config = {
        **text_kwargs(tokenizer),
        "head_dim": HEAD_DIM,
        "sliding_window": GEMMA3N_SLIDING_WINDOW,
        "layer_types": ["sliding_attention", "full_attention"],
        "vocab_size_per_layer_input": ids["eoi_token"],
        "hidden_size_per_layer_input": 16,
        "altup_num_inputs": 2,
        "laurel_rank": 8,
        "num_kv_shared_layers": 0,
        "activation_sparsity_pattern": [0.0, 0.0],
    }
    vision_config = {
        "model_args": {
            "channel_multiplier": GEMMA3N_CHANNEL_MULTIPLIER,
            "msfa_output_resolution": GEMMA3N_VISION_RESOLUTION,
        },
        "vocab_size": len(GEMMA3N_VISION_TOKENS),
        "vocab_offset": ids["eoi_token"],
    }
    audio_config = {
        "input_feat_size": NUM_MEL_BINS,
        "hidden_size": HIDDEN_SIZE,
        "conf_num_attention_heads": NUM_HEADS,
        "conf_num_hidden_layers": 2,
        "sscp_conv_channel_size": [16, 8],
        "vocab_size": len(GEMMA3N_AUDIO_TOKENS),
        "vocab_offset": ids["eoa_token"],
    }
    config = Gemma3nConfig(
        text_config=text_config,
        vision_config=vision_config,
        audio_config=audio_config,
        audio_soft_tokens_per_image=GEMMA3N_AUDIO_TOKENS_PER_CLIP,
        vision_soft_tokens_per_image=GEMMA3N_VISION_RESOLUTION**2,
        tie_word_embeddings=False,
        boi_token_id=ids["boi_token"],
        eoi_token_id=ids["eoi_token"],
        image_token_id=ids["image_token"],
        boa_token_id=ids["boa_token"],
        eoa_token_id=ids["eoa_token"],
        audio_token_id=ids["audio_token"],
    )
    return init_model(Gemma3nForConditionalGeneration, config, seed, tokenizer), processor
