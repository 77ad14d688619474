"""Dataset rows to model inputs: media loading with explicit repairs, the prompt collator, multimodal field layout."""

from .collator import (
    MEDIA_COLUMNS,
    BadSampleError,
    PromptBatch,
    PromptCollator,
    SkippedRow,
    TooManyBadSamplesError,
    infer_modality,
)
from .media import ImageBounds, MediaError, image_bounds_from_processor, load_audio, load_image, load_video
from .multimodal import (
    MEDIA_KINDS,
    MODALITY_FIELDS,
    MULTIMODAL_FIELDS,
    SEQUENCE_FIELDS,
    MultimodalField,
    concat_multimodal_inputs,
    count_items,
    count_items_per_sample,
    extract_multimodal_inputs,
    repeat_multimodal_inputs,
    select_fields,
    split_multimodal_inputs,
)
