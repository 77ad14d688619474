"""What a processor returns beyond the tokens, and how it travels per sample: the one place that knows the layout.

A processor's output has three parts, told apart by its shape, never by a list of known names:

- **the sequence**: `input_ids` and `attention_mask`;
- **per-token fields**: outputs with the shape of `input_ids`, the token types transformers models read
  (`mm_token_type_ids` for M-RoPE, `token_type_ids` for Gemma 3's bidirectional image attention or PaliGemma's
  bidirectional prefix, ...). They travel with the sequence like `attention_mask` and are extended over completions
  with the value the model's own `generate` gives a generated token ([`~rft_trl.models.inputs.ModelInputs`] reads it
  off the model: 0, the text type, for most families, 1, the causal suffix, for PaliGemma). Only integer
  `*token_type_ids` fields are known to extend that way; any other per-token output is refused by name;
- **targets**: `labels`, which some processors (PaliGemma's) build for supervised fine-tuning, are loss targets,
  never an input of the forwards rft_trl runs: dropped;
- **media fields**: everything else (`pixel_values`, `image_grid_thw`, `image_sizes`, `pixel_attention_mask`,
  `input_features`, `feature_attention_mask`, ...), one opaque `dict[str, torch.Tensor]` per sample, handed to the
  model as keyword arguments.

rft_trl runs the processor on one sample at a time, so each sample's media fields are exactly what the processor
made of that sample. A batch of samples is their concatenation along the first dimension, each field zero-padded
in its other dimensions to the largest sample's, which is the processors' own batching convention (patches,
images of different sizes, mel frames: the model reads the real extent from a companion field such as
`image_sizes` or `feature_attention_mask`). Fields whose first dimension is the sample itself (batch-first, e.g.
Idefics3's `pixel_values` `[1, n_images, C, H, W]`) need one row for every sample, media or not: the collator
gives a sample without media an empty row (`[1, 0, C, H, W]`), found by [`probe_processor`]. Splitting a batch
back needs each sample's shapes ([`multimodal_shapes`]), recorded when it was concatenated.

Example:

```python
>>> per_sample = [processor_fields_of(row) for row in rows]  # media fields, one dict per sample
>>> batch = concat_multimodal_inputs(per_sample)            # what the model receives
>>> split_multimodal_inputs(batch, multimodal_shapes(per_sample)) == per_sample  # exactly, field by field
True
```
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import ProcessorMixin

logger = logging.getLogger(__name__)

MEDIA_KINDS = ("image", "video", "audio")
# The processor attribute that processes each media kind.
MEDIA_PROCESSOR_ATTRIBUTES = {"image": "image_processor", "video": "video_processor", "audio": "feature_extractor"}
# The processor keyword that takes each media kind.
MEDIA_ARGUMENTS = {"image": "images", "video": "videos", "audio": "audio"}
SEQUENCE_FIELDS = ("input_ids", "attention_mask")
# Loss targets a processor may build for supervised fine-tuning (PaliGemma's `labels`): not model inputs here.
TARGET_FIELDS = ("labels",)
TOKEN_TYPE_SUFFIX = "token_type_ids"

# A sample's shape per field: `None` when the sample does not have the field.
Shapes = dict[str, list[tuple[int, ...] | None]]


def is_token_field(name: str) -> bool:
    """Whether a model input named `name` is a per-token type field (`token_type_ids`, `mm_token_type_ids`, ...)."""
    return name.endswith(TOKEN_TYPE_SUFFIX)


def media_field_names(processing_class: Any) -> frozenset[str]:
    """
    The fields a processor's media sub-processors say they return (their `model_input_names`: `pixel_values`,
    `input_features`, `input_features_mask`, ...): media fields whatever their shape. None for a tokenizer.
    """
    if not isinstance(processing_class, ProcessorMixin):
        return frozenset()
    attributes = processing_class.get_attributes()
    return frozenset(
        name
        for attribute in MEDIA_PROCESSOR_ATTRIBUTES.values()
        if attribute in attributes
        for name in getattr(processing_class, attribute).model_input_names
    )


def split_processor_output(
    output: Mapping[str, Any], media_names: Collection[str] = ()
) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """
    Take a processor's (or tokenizer's) output apart: the sequence, the per-token fields and the media fields.

    Args:
        output (`Mapping[str, Any]`):
            What `processor(text=..., images=..., return_tensors="pt")` returns.
        media_names (`Collection[str]`, *optional*):
            Fields known to be media ([`media_field_names`]): never per-token, even when a sample's happen to have the
            shape of its tokens (Gemma 3n's `input_features_mask`, one value per mel frame, for a clip with as many
            frames as the prompt has tokens).

    Returns:
        `tuple`: `input_ids` `[B, L]`, `attention_mask` `[B, L]` (or `None`), the per-token fields (each `[B, L]`)
        and the media fields (`labels` are left out).

    Raises:
        `ValueError`: on a value that is not a tensor with at least one dimension, or an output shaped like the tokens
        that is not an integer `*token_type_ids` field (rft_trl would not know how to extend it over a completion).
    """
    input_ids = output["input_ids"]
    attention_mask = output.get("attention_mask")
    token_fields, media_fields = {}, {}
    for name, value in output.items():
        if name in SEQUENCE_FIELDS or name in TARGET_FIELDS:
            continue
        if not isinstance(value, torch.Tensor) or value.dim() == 0:
            raise ValueError(
                f"The processor returned {name!r} as {type(value).__name__}; rft_trl carries tensors of one or more "
                "dimensions to the model. Ask the processor for tensors (return_tensors='pt') or drop the field."
            )
        if value.shape == input_ids.shape and name not in media_names:
            if not is_token_field(name) or value.is_floating_point():
                raise ValueError(
                    f"The processor returned {name!r} with one value per token ({tuple(value.shape)}), but rft_trl "
                    f"only knows how to extend integer '*{TOKEN_TYPE_SUFFIX}' fields over a completion (as the "
                    "model's generate does). This model family is not supported; please open an issue naming the "
                    "field."
                )
            token_fields[name] = value
        else:
            media_fields[name] = value
    return input_ids, attention_mask, token_fields, media_fields


def multimodal_shapes(per_sample: Sequence[Mapping[str, torch.Tensor]]) -> Shapes:
    """
    Each sample's shape of every media field, what [`split_multimodal_inputs`] needs to undo a concatenation.

    Args:
        per_sample (`Sequence[Mapping[str, torch.Tensor]]`):
            One media dict per sample.

    Returns:
        `dict[str, list[tuple[int, ...] | None]]`: per field (in first-seen order), one shape per sample, `None` where
        the sample lacks the field.
    """
    names = list(dict.fromkeys(name for sample in per_sample for name in sample))
    for sample in per_sample:
        for name, value in sample.items():
            _check_piece(name, value, None)
    return {name: [tuple(sample[name].shape) if name in sample else None for sample in per_sample] for name in names}


def _check_piece(name: str, value: Any, reference: torch.Tensor | None) -> None:
    if not isinstance(value, torch.Tensor) or value.dim() == 0:
        raise ValueError(f"Media field {name!r} must be a tensor with at least one dimension, got {value!r:.80}.")
    if reference is not None and (value.dim() != reference.dim() or value.dtype != reference.dtype):
        raise ValueError(
            f"Media field {name!r} differs across samples: {tuple(reference.shape)} {reference.dtype} vs "
            f"{tuple(value.shape)} {value.dtype}; every sample's field needs the same rank and dtype."
        )


def concat_multimodal_inputs(per_sample: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """
    The media fields of a batch: each field's per-sample pieces zero-padded to the largest in every dimension but
    the first, then concatenated along the first, in sample order.

    A sample without a field contributes no rows to it. A field may end up without any element (e.g. the empty
    batch-first rows of text-only samples): it is kept, so that splitting gives the samples back exactly, and the
    model call leaves it out, as a processor leaves it out of a text-only batch.

    Args:
        per_sample (`Sequence[Mapping[str, torch.Tensor]]`):
            One media dict per sample.

    Returns:
        `dict[str, torch.Tensor]`: the batch's media fields (`{}` when no sample has any).

    Raises:
        `ValueError`: when a field is not a tensor, or its rank or dtype differs across samples.
    """
    batch = {}
    for name in multimodal_shapes(per_sample):
        pieces = [sample[name] for sample in per_sample if name in sample]
        for piece in pieces:
            _check_piece(name, piece, pieces[0])
        trailing = [max(piece.shape[d] for piece in pieces) for d in range(1, pieces[0].dim())]
        padded = [_pad_trailing(piece, trailing) for piece in pieces]
        batch[name] = padded[0] if len(padded) == 1 else torch.cat(padded, dim=0)
    return batch


def _pad_trailing(piece: torch.Tensor, trailing: list[int]) -> torch.Tensor:
    if list(piece.shape[1:]) == trailing:
        return piece
    # F.pad takes (last dim left, last dim right, second-to-last left, ...): pad every trailing dim on its right.
    pad = []
    for size, target in zip(reversed(piece.shape[1:]), reversed(trailing)):
        pad += [0, target - size]
    return torch.nn.functional.pad(piece, pad)


def split_multimodal_inputs(multimodal_inputs: Mapping[str, torch.Tensor], shapes: Shapes) -> list[dict]:
    """
    Split a batch's media fields into one dict per sample, the inverse of [`concat_multimodal_inputs`].

    The pieces are views of the batch tensors (no copy), cut back to each sample's own shape.

    Args:
        multimodal_inputs (`Mapping[str, torch.Tensor]`):
            The batch's media fields.
        shapes (`dict[str, list[tuple[int, ...] | None]]`):
            Each sample's shape per field, from [`multimodal_shapes`] of the samples that were concatenated.

    Returns:
        `list[dict[str, torch.Tensor]]`: one dict per sample (as many as the lists in `shapes`).

    Raises:
        `ValueError`: when the fields and `shapes` disagree (names, sample counts, row counts or sizes).
    """
    counts = {len(per_field) for per_field in shapes.values()}
    if len(counts) > 1:
        raise ValueError(f"The shape lists name different numbers of samples: {sorted(counts)}.")
    extra = set(multimodal_inputs) - set(shapes)
    if extra:
        raise ValueError(f"Media fields {sorted(extra)} have no per-sample shapes to split them by.")
    num_samples = counts.pop() if counts else 0
    per_sample: list[dict] = [{} for _ in range(num_samples)]
    for name, sample_shapes in shapes.items():
        if name not in multimodal_inputs:
            raise ValueError(f"Media field {name!r} of the samples' shapes is missing from the batch.")
        value = multimodal_inputs[name]
        rows = [shape[0] if shape is not None else 0 for shape in sample_shapes]
        if sum(rows) != value.shape[0]:
            raise ValueError(
                f"Media field {name!r} has {value.shape[0]} rows but the samples' shapes add up to {sum(rows)}."
            )
        for sample, shape, piece in zip(per_sample, sample_shapes, value.split(rows)):
            if shape is None:
                continue
            if len(shape) != value.dim() or any(s > v for s, v in zip(shape[1:], value.shape[1:])):
                raise ValueError(
                    f"Media field {name!r}: a sample's shape {shape} does not fit the batch's {tuple(value.shape)}."
                )
            for dim, size in enumerate(shape[1:], start=1):
                piece = piece.narrow(dim, 0, size)
            sample[name] = piece
    return per_sample


def repeat_multimodal_inputs(per_sample: list[Mapping[str, torch.Tensor]], n: int) -> list[dict[str, torch.Tensor]]:
    """
    Repeat each sample's media dict `n` times, interleaved as `[s0] * n + [s1] * n + ...`, the order of `n`
    completions per prompt. The repeats share tensor storage; each is its own (shallow) dict.

    Args:
        per_sample (`list[Mapping[str, torch.Tensor]]`):
            One media dict per sample.
        n (`int`):
            Number of copies per sample, at least 1.

    Returns:
        `list[dict[str, torch.Tensor]]`: `len(per_sample) * n` dicts.
    """
    if n < 1:
        raise ValueError(f"repeat_multimodal_inputs needs n >= 1, got {n}.")
    return [dict(sample) for sample in per_sample for _ in range(n)]


def extend_token_fields(
    token_fields: Mapping[str, torch.Tensor],
    width: int,
    side: str = "right",
    values: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """
    Extend per-token fields to `width` columns, e.g. a prompt's over its completion, or over left padding.

    A completion's values are the model's (what its `generate` gives a generated token, read off the model by
    [`~rft_trl.models.inputs.ModelInputs.completion_token_types`]): extend a prompt's fields over its completion
    through [`~rft_trl.models.inputs.ModelInputs.extend_token_fields`], which passes them here.

    Args:
        token_fields (`Mapping[str, torch.Tensor]`):
            Fields of shape `[B, L]` with `L <= width`.
        width (`int`):
            The width to reach.
        side (`str`, *optional*, defaults to `"right"`):
            Where the new columns go: `"right"` (a completion after its prompt) or `"left"` (left padding).
        values (`Mapping[str, torch.Tensor]`, *optional*):
            Per field, the value of each row's new columns, shape `[B]`; a field without one gets 0 (the text type,
            and what padding gets).

    Returns:
        `dict[str, torch.Tensor]`: fields of shape `[B, width]`.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}.")
    values = values or {}
    extended = {}
    for name, value in token_fields.items():
        missing = width - value.shape[-1]
        if missing < 0:
            raise ValueError(f"Per-token field {name!r} has {value.shape[-1]} columns, more than the {width} asked.")
        if not missing:
            extended[name] = value
            continue
        new = value.new_zeros(value.shape[0], missing)  # [B, missing]
        if name in values:
            new += values[name].to(value).view(-1, 1)
        extended[name] = torch.cat([value, new] if side == "right" else [new, value], dim=-1)
    return extended


# ---------------------------------------------------------------------------------------------------------- probe


@dataclass(frozen=True)
class ProcessorLayout:
    """
    What a processor takes and returns, found once by [`probe_processor`].

    Args:
        media_kinds (`tuple[str, ...]`):
            The media kinds the processor processes (`"image"`, `"video"`, `"audio"`), from its sub-processors.
        fields (`dict[str, tuple[str, ...]]`):
            For each media kind, the media fields a sample with that kind gets.
        token_fields (`tuple[str, ...]`):
            The per-token fields the processor returns.
        empty_rows (`dict[str, torch.Tensor]`):
            For each batch-first media field (one row per sample), the empty row a sample without that kind's
            media gets, e.g. `pixel_values` `[1, 0, C, H, W]`, or `[0]` for a per-sample count.
        media_token_ids (`tuple[int, ...]`):
            The tokenizer's added tokens that media bring into a prompt (placeholders, boundaries, rows and
            columns of image tiles, ...): a completion must never hold one.
        unusable (`dict[str, str]`):
            Media kinds the processor has a sub-processor for but could not process in the probe (e.g. a chat
            template without an audio placeholder), or batches in a way rft_trl cannot carry, with the reason: rows
            holding them are refused with it.
        one_per_prompt (`dict[str, str]`):
            Media kinds the processor takes at most one item of per prompt (AudioFlamingo3, Qwen3-ASR: one audio per
            text), with its error on two: rows holding more are refused with it.
        required_arguments (`tuple[str, ...]`):
            The media keywords the processor's `__call__` requires (Qwen3-ASR's `audio`): a row without that media
            passes `None` for them.
        text_only_error (`str`, *optional*):
            Why the processor could not process a prompt without media, when it could not: such rows are refused with
            it.
    """

    media_kinds: tuple[str, ...] = ()
    fields: dict[str, tuple[str, ...]] = field(default_factory=dict)
    token_fields: tuple[str, ...] = ()
    empty_rows: dict[str, torch.Tensor] = field(default_factory=dict)
    media_token_ids: tuple[int, ...] = ()
    unusable: dict[str, str] = field(default_factory=dict)
    one_per_prompt: dict[str, str] = field(default_factory=dict)
    required_arguments: tuple[str, ...] = ()
    text_only_error: str | None = None

    def kinds_of(self, names: Sequence[str]) -> list[str]:
        """The media kinds whose fields include any of `names`."""
        return [kind for kind, fields in self.fields.items() if set(fields) & set(names)]


def processor_media_kinds(processing_class: Any) -> tuple[str, ...]:
    """The media kinds a processing class processes: those it has a sub-processor for (none for a tokenizer)."""
    if not isinstance(processing_class, ProcessorMixin):
        return ()
    attributes = processing_class.get_attributes()
    return tuple(kind for kind in MEDIA_KINDS if MEDIA_PROCESSOR_ATTRIBUTES[kind] in attributes)


def required_media_arguments(processing_class: Any) -> tuple[str, ...]:
    """
    The media keywords (`images`, `videos`, `audio`) that a processor's `__call__` declares without a default, such as
    Qwen3-ASR's `audio`: a call for a prompt without that media passes `None` for them.
    """
    if not isinstance(processing_class, ProcessorMixin):
        return ()
    parameters = inspect.signature(processing_class.__call__).parameters
    return tuple(
        name
        for name in MEDIA_ARGUMENTS.values()
        if name in parameters and parameters[name].default is inspect.Parameter.empty
    )


def synthetic_media(kind: str, processing_class: ProcessorMixin) -> Any:
    """
    One synthetic item of a media kind that `processing_class` takes: a 64 x 64 image, a video of as many frames as
    its video processor samples (at least 4), or 1 s of a tone at its feature extractor's rate. What the layout probe
    and `verify_model` feed the processor.
    """
    if kind == "image":
        return Image.new("RGB", (64, 64), (120, 30, 200))
    if kind == "video":
        # At least as many frames as a frame-sampling video processor takes (Gemma 4 samples 32 by default).
        video_processor = processing_class.video_processor
        sampled = (
            getattr(video_processor, "num_frames", None) if getattr(video_processor, "do_sample_frames", 0) else 0
        )
        frames = max(4, int(sampled or 0))
        return [Image.new("RGB", (64, 64), (min(10 * t, 255), 30, 200)) for t in range(frames)]
    rate = processing_class.feature_extractor.sampling_rate
    return np.sin(np.linspace(0, 800 * np.pi, rate)).astype(np.float32)  # 1 s of a tone


def _probe_prompt(processing_class: ProcessorMixin, parts: list[str]) -> str:
    content = [{"type": kind} for kind in parts] + [{"type": "text", "text": "what is it"}]
    return processing_class.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )


def _process_probe(processing_class: ProcessorMixin, kind: str, items_per_prompt: list[int]) -> Mapping[str, Any]:
    """
    The processor on one prompt per entry of `items_per_prompt`, each holding that many synthetic items of `kind`, in
    one call, as the collator calls it (images nested per prompt; the required media keywords of other kinds `None`).
    """
    texts = [_probe_prompt(processing_class, [kind] * count) for count in items_per_prompt]
    items = [[synthetic_media(kind, processing_class) for _ in range(count)] for count in items_per_prompt]
    argument = MEDIA_ARGUMENTS[kind]
    kwargs: dict[str, Any] = {name: None for name in required_media_arguments(processing_class)}
    kwargs[argument] = items if kind == "image" else [item for prompt in items for item in prompt]
    if kind == "audio":
        kwargs["sampling_rate"] = processing_class.feature_extractor.sampling_rate
    return processing_class(text=texts, return_tensors="pt", **kwargs)


def _text_only_ids(processing_class: ProcessorMixin) -> tuple[set[int], str | None]:
    """
    The ids of the probe's prompt without media, and the processor's error when it cannot process such a prompt
    (then the tokenizer alone gives the ids: without media there is nothing for the processor to expand).
    """
    text = _probe_prompt(processing_class, [])
    kwargs = {name: None for name in required_media_arguments(processing_class)}
    try:
        return set(processing_class(text=[text], return_tensors="pt", **kwargs)["input_ids"][0].tolist()), None
    except Exception as error:  # the processor's own failure, kept as the reason text-only rows are refused
        reason = (
            f"{type(processing_class).__name__} could not process a prompt without media ({type(error).__name__}: "
            f"{error})"
        )
        logger.warning("%s: rows without media will be refused.", reason)
        return set(processing_class.tokenizer(text)["input_ids"]), reason


def _batch_axis(alone: torch.Tensor, pair: torch.Tensor) -> int | None:
    """
    The axis along which the processor put two identical samples' `alone` side by side to make `pair`: the first
    axis whose concatenation of `alone` with itself is exactly `pair`, or `None` when none is.
    """
    for axis in range(alone.dim()):
        if pair.dim() == alone.dim() and torch.equal(torch.cat([alone, alone], dim=axis), pair):
            return axis
    return None


def _probe_kind(processing_class: ProcessorMixin, kind: str) -> tuple[Mapping[str, Any], str | None]:
    """
    Process a row with two items of `kind` alone, or, when the processor refuses that, a row with one; returns the
    output and the processor's error on two items (`None` when it took them).

    Raises:
        `ValueError`: with the processor's error, when it cannot process a row with one item either.
    """
    name = type(processing_class).__name__
    try:
        return _process_probe(processing_class, kind, [2]), None
    except Exception as two_error:  # the processor's own failure, kept with what was being asked of it
        two = f"{name} could not process a row with two {kind}s ({type(two_error).__name__}: {two_error})"
    try:
        output = _process_probe(processing_class, kind, [1])
    except Exception as one_error:
        raise ValueError(
            f"{two}, nor one ({type(one_error).__name__}: {one_error}); rft_trl needs that to learn its field layout"
        ) from one_error
    return output, f"{two}: it takes one {kind} per prompt"


def _check_batched_on_first_axis(processing_class: ProcessorMixin, kind: str) -> None:
    """
    Refuse a kind whose media fields the processor batches on another axis than the first.

    Two identical one-item prompts in one call must give, for every media field, the one-prompt output concatenated
    with itself along the first axis, which is how rft_trl batches samples (each processed alone).

    Raises:
        `ValueError`: naming each field that the processor batches otherwise, and the axis it batches it on (MiniCPM-V
        4.6 lays every image side by side on the last axis of one `pixel_values`).
    """
    try:
        media_names = media_field_names(processing_class)
        _, _, _, alone = split_processor_output(_process_probe(processing_class, kind, [1]), media_names)
        _, _, _, pair = split_processor_output(_process_probe(processing_class, kind, [1, 1]), media_names)
    except Exception as error:  # the processor's own failure, kept with what was being asked of it
        raise ValueError(
            f"{type(processing_class).__name__} could not process two prompts with one {kind} each in one call "
            f"({type(error).__name__}: {error}); rft_trl needs that to learn how it batches samples"
        ) from error
    misfits = []
    for name, value in alone.items():
        axis = _batch_axis(value, pair[name]) if name in pair else None
        if axis != 0:
            where = "on no axis" if axis is None else f"on axis {axis} of {value.dim()}"
            misfits.append(f"{name!r} {tuple(value.shape)} alone, {tuple(pair[name].shape)} for two: batched {where}")
    if misfits:
        raise ValueError(
            f"{type(processing_class).__name__} batches the {kind} fields of two prompts otherwise than one after the "
            f"other on the first axis ({'; '.join(misfits)}); rft_trl concatenates each sample's fields on their "
            "first axis, and would hand the model samples it does not read. Rows with this kind are refused; a "
            "processor that batches on the first axis (or a model that reads its samples there) would make it work"
        )


def probe_processor(processing_class: Any) -> ProcessorLayout:
    """
    Find a processor's field layout by processing tiny synthetic rows per media kind.

    For each kind the processor takes:

    - a row holding two items of that kind is processed alone, as the collator processes rows (one item when the
      processor takes one per prompt: AudioFlamingo3, Qwen3-ASR). A media field with a single row for two items is
      batch-first (its first dimension is the sample); any other field stacks rows of items. Outputs shaped like the
      tokens are per-token fields. The added tokens in the row's ids that the same prompt without media lacks are the
      media tokens;
    - two one-item prompts are processed in one call: every media field must be the one-prompt field twice, one
      after the other on the first axis, how rft_trl batches samples processed alone.

    The prompt without media is processed with the required media keywords `None` (Qwen3-ASR requires `audio`); when
    the processor cannot process it, the tokenizer gives its ids and rows without media are refused.

    Args:
        processing_class (`ProcessorMixin` or `PreTrainedTokenizerBase`):
            The processor (a tokenizer gives an empty layout).

    Returns:
        [`ProcessorLayout`]

    A kind the processor fails on, or batches on another axis (MiniCPM-V 4.6), is left out of the layout with the
    reason (`unusable`, logged as a warning): a multimodal processor may carry a sub-processor its chat template or
    model does not use (Gemma 4's audio feature extractor beside an image-only model).

    Raises:
        `ValueError`: when the processor can process none of its media kinds (naming each kind and the reason), or
        returns something rft_trl cannot carry (see [`split_processor_output`]).
    """
    kinds = processor_media_kinds(processing_class)
    fields, token_fields, empty_rows, media_tokens, unusable, one_per_prompt = {}, set(), {}, set(), {}, {}
    text_only_error = None
    if kinds:
        added = set(processing_class.tokenizer.added_tokens_decoder)
        text_only, text_only_error = _text_only_ids(processing_class)
    for kind in kinds:
        try:
            output, two_error = _probe_kind(processing_class, kind)
            _check_batched_on_first_axis(processing_class, kind)
        except ValueError as error:
            unusable[kind] = str(error)
            logger.warning("%s: rows with %ss will be refused.", unusable[kind], kind)
            continue
        input_ids, _, tokens, media = split_processor_output(output, media_field_names(processing_class))
        media_tokens |= (set(input_ids[0].tolist()) - text_only) & added
        token_fields |= set(tokens)
        fields[kind] = tuple(media)
        if two_error is not None:
            # One item per prompt: a field cannot be told batch-first from stacking items, and needs no empty row
            # either way (a sample with the kind has one item, as the processor makes it).
            one_per_prompt[kind] = two_error
            continue
        for name, value in media.items():
            if value.shape[0] != 1:
                continue
            # A sample without this kind's media gets no items in the row (`[1, 0, ...]`), or, for a per-sample
            # count such as LLaVA-OneVision's `batch_num_images` (`[1]`), a count of 0.
            empty_rows[name] = value.new_zeros((1,) if value.dim() == 1 else (1, 0, *value.shape[2:]))
    if kinds and len(unusable) == len(kinds):
        raise ValueError("; ".join(unusable.values()) + ".")
    usable = tuple(kind for kind in kinds if kind not in unusable)
    layout = ProcessorLayout(
        usable,
        fields,
        tuple(sorted(token_fields)),
        empty_rows,
        tuple(sorted(media_tokens)),
        unusable,
        one_per_prompt,
        required_media_arguments(processing_class),
        text_only_error,
    )
    logger.debug("Processor layout of %s: %s", type(processing_class).__name__, layout)
    return layout
