"""Dataset rows to model inputs: media loading with explicit repairs, the prompt collator, multimodal field layout."""

from .collator import BadSampleError, PromptBatch, PromptCollator, SkippedRow, TooManyBadSamplesError
from .media import ImageBounds, MediaError, image_bounds_from_processor, load_audio, load_image, load_video
from .multimodal import (
    MEDIA_KINDS,
    SEQUENCE_FIELDS,
    ProcessorLayout,
    concat_multimodal_inputs,
    extend_token_fields,
    is_token_field,
    multimodal_shapes,
    probe_processor,
    processor_media_kinds,
    repeat_multimodal_inputs,
    split_multimodal_inputs,
    split_processor_output,
)
from .prompts import MEDIA_COLUMNS
