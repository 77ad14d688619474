"""The one place that knows multimodal field names and how their rows map to samples.

Everything a processor returns beyond the sequence-aligned fields (`input_ids`, `attention_mask`, ...) travels through
rft_trl as one opaque `dict[str, torch.Tensor]` of *multimodal inputs* that is handed to the model as keyword
arguments. Such a dict is laid out like a processor's batch: the rows of every field are stacked over the samples,
and a field holds a fixed number of rows per media item (image, video or audio clip). [`MULTIMODAL_FIELDS`] records
that layout; with the number of items each sample holds, the dict can be split into per-sample dicts and
concatenated back ([`split_multimodal_inputs`], [`concat_multimodal_inputs`]) without any other module knowing a
field name.

Example:

```python
>>> batch = processor(text=texts, images=images, return_tensors="pt", padding=True)
>>> multimodal_inputs = extract_multimodal_inputs(batch)  # pixel_values, image_grid_thw
>>> per_sample = split_multimodal_inputs(multimodal_inputs, {"image": [2, 0, 1]})
>>> concat_multimodal_inputs(per_sample).keys() == multimodal_inputs.keys()
True
```
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

MEDIA_KINDS = ("image", "video", "audio")
_PLURALS = {"image": "images", "video": "videos", "audio": "audio clips"}


@dataclass(frozen=True)
class MultimodalField:
    """
    Row layout of one multimodal field.

    Args:
        media (`str`):
            The media kind whose items own the rows: `"image"`, `"video"` or `"audio"`.
        grid (`str` or `None`, *optional*, defaults to `None`):
            Name of the `[n_items, 3]` grid field whose per-item product `t * h * w` is the number of rows an item
            has in this field. `None` means one row per item.
    """

    media: str
    grid: str | None = None


MULTIMODAL_FIELDS: dict[str, MultimodalField] = {
    # [sum over images of t*h*w, channels * temporal_patch * patch**2]
    "pixel_values": MultimodalField("image", grid="image_grid_thw"),
    # [n_images, 3]
    "image_grid_thw": MultimodalField("image"),
    # [sum over videos of t*h*w, channels * temporal_patch * patch**2]
    "pixel_values_videos": MultimodalField("video", grid="video_grid_thw"),
    # [n_videos, 3]
    "video_grid_thw": MultimodalField("video"),
    # [n_videos]: seconds per temporal grid step, returned by the Qwen2.5-VL processor for videos
    "second_per_grid_ts": MultimodalField("video"),
    # [n_clips, mel_bins, frames]
    "input_features": MultimodalField("audio"),
    # [n_clips, frames]
    "feature_attention_mask": MultimodalField("audio"),
}

# The multimodal fields a model of each modality accepts as forward keywords.
MODALITY_FIELDS: dict[str, tuple[str, ...]] = {
    "text": (),
    "vision": ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts"),
    "audio": ("input_features", "feature_attention_mask"),
}

# Processor outputs with one entry per token travel with the sequences, not in the multimodal dict;
# mm_token_type_ids is rebuilt by the actor from the tokens because it must also cover generated tokens.
SEQUENCE_FIELDS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")


def _check_fields(multimodal_inputs: Mapping[str, torch.Tensor]) -> None:
    for name, value in multimodal_inputs.items():
        if name not in MULTIMODAL_FIELDS:
            raise ValueError(
                f"Unknown multimodal field {name!r}; rft_trl.data.multimodal knows {', '.join(MULTIMODAL_FIELDS)}. "
                "Declare its row layout in MULTIMODAL_FIELDS."
            )
        if not isinstance(value, torch.Tensor) or value.dim() == 0:
            raise ValueError(
                f"Multimodal field {name!r} must be a tensor with at least one dimension, got {type(value).__name__}."
            )


def _rows_per_item(multimodal_inputs: Mapping[str, torch.Tensor]) -> tuple[dict[str, list[int]], dict[str, int]]:
    """
    Check the layout of a multimodal dict and return, per field, the number of rows of each of its items, and, per
    media kind, the number of items.
    """
    _check_fields(multimodal_inputs)
    num_items: dict[str, int] = {}
    counted_by: dict[str, str] = {}
    for name, value in multimodal_inputs.items():
        spec = MULTIMODAL_FIELDS[name]
        if spec.grid is not None:
            continue
        if spec.media in num_items and num_items[spec.media] != value.shape[0]:
            raise ValueError(
                f"Multimodal field {name!r} has {value.shape[0]} rows but {counted_by[spec.media]!r} has "
                f"{num_items[spec.media]}: both hold one row per {spec.media}."
            )
        num_items[spec.media] = value.shape[0]
        counted_by[spec.media] = name

    rows: dict[str, list[int]] = {}
    for name, value in multimodal_inputs.items():
        spec = MULTIMODAL_FIELDS[name]
        if spec.grid is None:
            rows[name] = [1] * value.shape[0]
            continue
        if spec.grid not in multimodal_inputs:
            if value.shape[0] == 0:
                rows[name] = []
                continue
            raise ValueError(
                f"Multimodal field {name!r} needs {spec.grid!r} to tell how many of its rows belong to each "
                f"{spec.media}."
            )
        rows[name] = multimodal_inputs[spec.grid].prod(dim=-1).tolist()
        if sum(rows[name]) != value.shape[0]:
            raise ValueError(
                f"Multimodal field {name!r}: expected {sum(rows[name])} rows ({len(rows[name])} "
                f"{_PLURALS[spec.media]} in {spec.grid!r}) but got {value.shape[0]}."
            )
    return rows, num_items


def count_items(multimodal_inputs: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """
    Count the media items held by a multimodal dict (one sample's or a whole batch's).

    Args:
        multimodal_inputs (`Mapping[str, torch.Tensor]`):
            Multimodal fields laid out as a processor returns them.

    Returns:
        `dict[str, int]`: the number of items of every media kind in [`MEDIA_KINDS`], zero for absent kinds.

    Raises:
        `ValueError`: on an unknown field, or when the fields disagree about the number of items or rows.
    """
    _, num_items = _rows_per_item(multimodal_inputs)
    return {kind: num_items.get(kind, 0) for kind in MEDIA_KINDS}


def count_items_per_sample(per_sample: list[Mapping[str, torch.Tensor]]) -> dict[str, list[int]]:
    """
    Count the media items of each sample, in the form [`split_multimodal_inputs`] takes.

    Args:
        per_sample (`list[Mapping[str, torch.Tensor]]`):
            One multimodal dict per sample.

    Returns:
        `dict[str, list[int]]`: for every media kind that at least one sample holds, the number of items of each
        sample. A text-only batch gives `{}`.
    """
    counts = [count_items(sample) for sample in per_sample]
    return {kind: [c[kind] for c in counts] for kind in MEDIA_KINDS if any(c[kind] for c in counts)}


def split_multimodal_inputs(
    multimodal_inputs: Mapping[str, torch.Tensor], item_counts: Mapping[str, list[int]], num_samples: int | None = None
) -> list[dict[str, torch.Tensor]]:
    """
    Split a batch's multimodal dict into one dict per sample.

    The pieces are views of the batch tensors (no copy). A sample without items of a media kind gets none of that
    kind's fields, as if it had been processed alone.

    Args:
        multimodal_inputs (`Mapping[str, torch.Tensor]`):
            Multimodal fields of a batch, rows stacked over the samples in order.
        item_counts (`Mapping[str, list[int]]`):
            For each media kind, the number of items of each sample, e.g. `{"image": [2, 0, 1]}`. Every kind that
            has fields in `multimodal_inputs` must be present; kinds absent from it must count zero items.
        num_samples (`int`, *optional*):
            Number of samples. Required when `item_counts` is empty (a text-only batch); otherwise it is the length
            of the count lists and, when given, is checked against them.

    Returns:
        `list[dict[str, torch.Tensor]]`: `num_samples` dicts.

    Raises:
        `ValueError`: on an unknown field or media kind, counts that disagree with the fields, or count lists of
        different lengths.
    """
    rows, num_items = _rows_per_item(multimodal_inputs)
    for kind in item_counts:
        if kind not in MEDIA_KINDS:
            raise ValueError(f"Unknown media kind {kind!r} in item_counts; use one of {', '.join(MEDIA_KINDS)}.")
    lengths = {len(counts) for counts in item_counts.values()}
    if num_samples is not None:
        lengths.add(num_samples)
    if len(lengths) != 1:
        if not lengths:
            raise ValueError("split_multimodal_inputs needs num_samples when item_counts is empty.")
        sizes = ", ".join(f"{kind}: {len(counts)}" for kind, counts in item_counts.items())
        raise ValueError(f"item_counts ({sizes}) and num_samples={num_samples} disagree on the number of samples.")
    (num_samples,) = lengths
    for name in multimodal_inputs:
        kind = MULTIMODAL_FIELDS[name].media
        if kind not in item_counts and len(rows[name]) > 0:
            raise ValueError(
                f"Multimodal field {name!r} holds {_PLURALS[kind]} but item_counts has no {kind!r} entry."
            )
    for kind, counts in item_counts.items():
        if sum(counts) != num_items.get(kind, 0):
            raise ValueError(
                f"item_counts[{kind!r}] adds up to {sum(counts)} {_PLURALS[kind]} but the multimodal inputs hold "
                f"{num_items.get(kind, 0)}."
            )

    per_sample: list[dict[str, torch.Tensor]] = [{} for _ in range(num_samples)]
    for name, value in multimodal_inputs.items():
        if not rows[name]:
            continue
        counts = item_counts[MULTIMODAL_FIELDS[name].media]
        # Consecutive items belong to consecutive samples: sum the rows of each sample's items.
        sample_rows, start = [], 0
        for count in counts:
            sample_rows.append(sum(rows[name][start : start + count]))
            start += count
        for sample, piece, count in zip(per_sample, value.split(sample_rows), counts):
            if count > 0:
                sample[name] = piece
    return per_sample


def concat_multimodal_inputs(per_sample: list[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """
    Concatenate per-sample multimodal dicts into a batch's, the inverse of [`split_multimodal_inputs`].

    Sample order is kept; fields without any rows are dropped; keys follow [`MULTIMODAL_FIELDS`] order.

    Args:
        per_sample (`list[Mapping[str, torch.Tensor]]`):
            One multimodal dict per sample; each is checked for a consistent layout.

    Returns:
        `dict[str, torch.Tensor]`: the batch's multimodal dict (`{}` when no sample has any field).
    """
    for sample in per_sample:
        _rows_per_item(sample)
    batch = {}
    for name in MULTIMODAL_FIELDS:
        pieces = [sample[name] for sample in per_sample if name in sample and sample[name].shape[0] > 0]
        if pieces:
            batch[name] = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=0)
    return batch


def repeat_multimodal_inputs(per_sample: list[Mapping[str, torch.Tensor]], n: int) -> list[dict[str, torch.Tensor]]:
    """
    Repeat each sample's multimodal dict `n` times, interleaved as `[s0] * n + [s1] * n + ...`, the order of
    `n` completions per prompt. The repeats share tensor storage; each is its own (shallow) dict.

    Args:
        per_sample (`list[Mapping[str, torch.Tensor]]`):
            One multimodal dict per sample.
        n (`int`):
            Number of copies per sample, at least 1.

    Returns:
        `list[dict[str, torch.Tensor]]`: `len(per_sample) * n` dicts.
    """
    if n < 1:
        raise ValueError(f"repeat_multimodal_inputs needs n >= 1, got {n}.")
    return [dict(sample) for sample in per_sample for _ in range(n)]


def select_fields(multimodal_inputs: Mapping[str, torch.Tensor], modality: str) -> dict[str, torch.Tensor]:
    """
    Keep the fields a model of `modality` accepts as forward keywords.

    Fields of another modality are dropped when they hold no rows and rejected otherwise, so that media never
    silently goes unseen by the model.

    Args:
        multimodal_inputs (`Mapping[str, torch.Tensor]`):
            Multimodal fields of a sample or batch.
        modality (`str`):
            `"text"`, `"vision"` or `"audio"` (the keys of [`MODALITY_FIELDS`]).

    Returns:
        `dict[str, torch.Tensor]`: the accepted fields.

    Raises:
        `ValueError`: on an unknown modality or field, or when a non-empty field is not accepted by the modality.
    """
    if modality not in MODALITY_FIELDS:
        raise ValueError(f"Unknown modality {modality!r}; use one of {', '.join(MODALITY_FIELDS)}.")
    _check_fields(multimodal_inputs)
    accepted = MODALITY_FIELDS[modality]
    unexpected = [name for name, value in multimodal_inputs.items() if name not in accepted and value.numel() > 0]
    if unexpected:
        raise ValueError(
            f"A {modality!r} model does not accept the multimodal fields {', '.join(unexpected)}; it accepts "
            f"{', '.join(accepted) or 'none'}."
        )
    return {name: value for name, value in multimodal_inputs.items() if name in accepted}


def extract_multimodal_inputs(processor_output: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """
    Take the multimodal fields out of a processor's output (a `BatchFeature` or dict).

    Args:
        processor_output (`Mapping[str, torch.Tensor]`):
            What `processor(text=..., images=..., return_tensors="pt")` returns.

    Returns:
        `dict[str, torch.Tensor]`: every field except the sequence-aligned ones in [`SEQUENCE_FIELDS`].

    Raises:
        `ValueError`: on a field that is neither sequence-aligned nor declared in [`MULTIMODAL_FIELDS`].
    """
    multimodal_inputs = {name: value for name, value in processor_output.items() if name not in SEQUENCE_FIELDS}
    _rows_per_item(multimodal_inputs)
    return multimodal_inputs
