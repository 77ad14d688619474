"""Tiny Idefics3 and SmolVLM (the Idefics3 architecture with SmolVLM's processor).

Both are a SigLIP-style vision tower, a pixel-shuffle connector and a Llama text model.

Image splitting is off: every image is squared to one 56x56 tile of 16 patches, pixel-shuffled 2x2 into 4 tokens and
rendered as `<fake_token_around_image><global-img>` + 4 `<image>` + `<fake_token_around_image>`. `pixel_values` is
batch-first, `[batch, max_images_per_row, 3, 56, 56]`, rows with fewer images padded with all-zero images (which the
model drops), with `pixel_attention_mask` `[batch, max_images_per_row, 56, 56]`. A batch where no row has an image
must leave the image fields out.
"""

from __future__ import annotations

from transformers import PreTrainedModel, PreTrainedTokenizerFast, ProcessorMixin
from transformers.models.idefics3 import (
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessor,
    Idefics3Processor,
)
from transformers.models.smolvlm import (
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    SmolVLMImageProcessor,
    SmolVLMProcessor,
    SmolVLMVideoProcessor,
)

from .common import (
    PIXEL_SHUFFLE,
    TILE_SIZE,
    TOKENS_PER_TILE,
    family_tokenizer,
    init_model,
    make_processor,
    text_kwargs,
    vision_tower,
)

# `<row_i_col_j>` only appear when image splitting is on; they are in the vocabulary as in the released tokenizers.
# `<end_of_utterance>` is added by `Idefics3Processor` if missing: listed so that the model's vocabulary covers it.
IDEFICS3_MEDIA_TOKENS = [
    "<fake_token_around_image>",
    "<image>",
    "<global-img>",
    *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)),
    "<end_of_utterance>",
]
SMOLVLM_MEDIA_TOKENS = [*IDEFICS3_MEDIA_TOKENS, "<video>"]
# Every image (and video frame) squared to one tile.
TILE_SIZE_KWARGS = {"size": {"longest_edge": TILE_SIZE}, "max_image_size": {"longest_edge": TILE_SIZE}}


def _config_args(tokenizer: PreTrainedTokenizerFast, vision_model_type: str) -> dict:
    return {
        "vision_config": vision_tower(vision_model_type, TILE_SIZE),
        "text_config": {"model_type": "llama", **text_kwargs(tokenizer)},
        "image_token_id": tokenizer.convert_tokens_to_ids("<image>"),
        "scale_factor": PIXEL_SHUFFLE,
        "tie_word_embeddings": False,
    }


def build_tiny_idefics3(seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """
    Build a tiny Idefics3 with its processor (images only).

    Args:
        seed (`int`, *optional*, defaults to `0`):
            Seeds the tokenizer corpus and the weight initialisation.

    Returns:
        `tuple[PreTrainedModel, Idefics3Processor]`: the model in eval mode and its processor.
    """
    tokenizer = family_tokenizer(seed, IDEFICS3_MEDIA_TOKENS, image="<image>")
    # The processor re-adds `<fake_token_around_image>`, `<image>` and `<end_of_utterance>` with
    # `add_special_tokens`, which replaces the tokenizer's list of extra special tokens with those three: put the full
    # list back. A processor loaded with `from_pretrained` does it again ([`load_processing_class`] undoes it too).
    extra_special_tokens = tokenizer.extra_special_tokens
    processor = make_processor(
        Idefics3Processor,
        tokenizer,
        image_processor=Idefics3ImageProcessor(**TILE_SIZE_KWARGS, do_image_splitting=False),
        image_seq_len=TOKENS_PER_TILE,
    )
    tokenizer.extra_special_tokens = extra_special_tokens
    config = Idefics3Config(**_config_args(tokenizer, "idefics3_vision"), pad_token_id=tokenizer.pad_token_id)
    return init_model(Idefics3ForConditionalGeneration, config, seed, tokenizer), processor


def build_tiny_smolvlm(seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """
    Build a tiny SmolVLM with its processor (images, and videos of up to 4 frames).

    `SmolVLMProcessor` needs the `num2words` package (it spells out video frame counts), even for images. Give images
    nested per row (`[[image], []]`) when a call has several rows. A prompt with a video part is rendered with
    SmolVLM's own built-in chat template, whatever the tokenizer's.

    Args:
        seed (`int`, *optional*, defaults to `0`):
            Seeds the tokenizer corpus and the weight initialisation.

    Returns:
        `tuple[PreTrainedModel, SmolVLMProcessor]`: the model in eval mode and its processor.
    """
    tokenizer = family_tokenizer(seed, SMOLVLM_MEDIA_TOKENS, image="<image>", video="<video>")
    processor = make_processor(
        SmolVLMProcessor,
        tokenizer,
        image_processor=SmolVLMImageProcessor(**TILE_SIZE_KWARGS, do_image_splitting=False),
        video_processor=SmolVLMVideoProcessor(**TILE_SIZE_KWARGS, num_frames=4, fps=1),
        image_seq_len=TOKENS_PER_TILE,
    )
    config = SmolVLMConfig(**_config_args(tokenizer, "smolvlm_vision"))
    return init_model(SmolVLMForConditionalGeneration, config, seed, tokenizer), processor
