"""Per-sample experience items ([`BufferItem`]), and the conversions between them and batched [`Experience`]s.

One code path serves every modality and model family: the per-token fields (the sequence, its masks, the
processor's token types) are padded or packed the same way for all, `info` holds per-sample values, and the prompts'
media fields (images, videos, audio clips, ...) are concatenated and split by `rft_trl.data.multimodal`, which
knows no field name. The seed's vision-language items and batches (`BufferItemVL`, `ExperienceVL`) are faces over
these functions in `rft_trl.compat`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch

from ..data.multimodal import concat_multimodal_inputs, multimodal_shapes, split_multimodal_inputs
from .experience import Experience, map_tensors

# Per-sample fields with a sequence (S) or action (A) dimension: left-padded when batched, listed when packed.
TOKEN_FIELDS = (
    "sequences",
    "action_log_probs",
    "base_action_log_probs",
    "values",
    "returns",
    "advantages",
    "attention_mask",
    "action_mask",
    "action_entropy",
    "importance_weights",
    "tool_mask",
)
# Of those, the ones aligned with the action (completion) positions rather than the whole sequence.
ACTION_FIELDS = (
    "action_log_probs",
    "base_action_log_probs",
    "values",
    "returns",
    "advantages",
    "action_mask",
    "action_entropy",
    "importance_weights",
    "tool_mask",
)


@dataclass
class BufferItem:
    """
    One sample of experience: unpadded as the replay buffer holds it, or a padded batch's row as
    [`split_experience_batch`] gives it.

    Shapes: `sequences` and `attention_mask` `(S)`; `action_log_probs`, `base_action_log_probs`, `values`,
    `returns`, `advantages`, `action_mask`, `action_entropy`, `importance_weights` and `tool_mask` `(A)`, aligned with
    the last `A` tokens of `sequences`. `info` maps names to this sample's statistics (0-d tensors or Python numbers).
    `multimodal_inputs` holds this sample's media fields (see `rft_trl.data.multimodal`), `{}` for a text-only
    sample; `token_fields` its per-token type fields (`mm_token_type_ids`, ...), each `(S)` like `sequences`.
    """

    sequences: torch.Tensor
    action_log_probs: torch.Tensor
    base_action_log_probs: torch.Tensor
    values: torch.Tensor
    returns: torch.Tensor
    advantages: torch.Tensor
    attention_mask: torch.LongTensor | None
    action_mask: torch.BoolTensor | None
    info: dict | None
    action_entropy: torch.Tensor | None = None
    importance_weights: torch.Tensor | None = None
    tool_mask: torch.BoolTensor | None = None
    multimodal_inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    token_fields: dict[str, torch.Tensor] = field(default_factory=dict)


def zero_pad_sequences(sequences: list[torch.Tensor], side: str = "left") -> torch.Tensor:
    """
    Zero-pad sequences along their first dimension to the longest one and stack them.

    Args:
        sequences (`list[torch.Tensor]`):
            Tensors of shape `(L_i, *rest)`, same `rest`, dtype and device.
        side (`str`, *optional*, defaults to `"left"`):
            Where the zeros go: `"left"` or `"right"`.

    Returns:
        `torch.Tensor` of shape `(len(sequences), max L_i, *rest)`.

    Example:

    ```python
    >>> zero_pad_sequences([torch.tensor([1, 2, 3]), torch.tensor([4, 5])], side="left")
    tensor([[1, 2, 3],
            [0, 4, 5]])
    ```
    """
    if side not in ("left", "right"):
        raise ValueError(f"Unknown padding side {side!r}; use 'left' or 'right'.")
    if not sequences:
        raise ValueError("zero_pad_sequences needs at least one sequence.")
    max_len = max(sequence.shape[0] for sequence in sequences)
    padded = sequences[0].new_zeros((len(sequences), max_len, *sequences[0].shape[1:]))  # (B, max L, *rest)
    for row, sequence in zip(padded, sequences):
        if side == "left":
            row[max_len - sequence.shape[0] :] = sequence
        else:
            row[: sequence.shape[0]] = sequence
    return padded


def _leading_zeros(mask: torch.Tensor) -> int:
    nonzero = mask.nonzero()
    return mask.numel() if nonzero.numel() == 0 else int(nonzero[0, 0])


def _trailing_zeros(mask: torch.Tensor) -> int:
    return _leading_zeros(mask.flip(0))


def remove_padding_in_sequences(items: list[BufferItem]) -> list[BufferItem]:
    """
    Strip the padding a batch adds to its samples, returning new items (the inputs are left unchanged). Any item
    dataclass with [`BufferItem`]'s per-token fields and `token_fields` is accepted (the seed's `BufferItemVL` too).

    The sequence (and its per-token type fields) loses its leading zeros of `attention_mask` (left padding) and the
    trailing positions where both `attention_mask` and `action_mask` are zero (right padding after the completion);
    the action fields lose the same
    right padding and the leading zeros of `action_mask` (the left padding of a batch whose completions differ in
    length). The action fields stay aligned with the end of the sequence, and an unpadded item is returned as is.

    Example:

    ```python
    >>> item = BufferItem(sequences=torch.tensor([0, 0, 1, 2, 3, 0, 0]),
    ...                   attention_mask=torch.tensor([0, 0, 1, 1, 1, 0, 0]),
    ...                   action_mask=torch.tensor([0, 0, 1, 1, 1, 0, 0]), ...)
    >>> remove_padding_in_sequences([item])[0].sequences
    tensor([1, 2, 3])
    ```

    Raises:
        `ValueError`: when an item has no `attention_mask` or `action_mask` to locate the padding.
    """
    unpadded = []
    for item in items:
        if item.attention_mask is None or item.action_mask is None:
            raise ValueError("remove_padding_in_sequences needs attention_mask and action_mask to find the padding.")
        right = min(_trailing_zeros(item.attention_mask), _trailing_zeros(item.action_mask))
        seq_left, seq_end = _leading_zeros(item.attention_mask), item.sequences.shape[0] - right
        action_end = item.action_mask.shape[0] - right
        action_left = _leading_zeros(item.action_mask[:action_end])
        trimmed = {
            "sequences": item.sequences[seq_left:seq_end],
            "attention_mask": item.attention_mask[seq_left:seq_end],
            "token_fields": {name: value[seq_left:seq_end] for name, value in item.token_fields.items()},
        }
        for name in ACTION_FIELDS:
            value = getattr(item, name)
            trimmed[name] = None if value is None else value[action_left:action_end]
        unpadded.append(replace(item, **trimmed))
    return unpadded


def _batch_token_field(name: str, values: list[torch.Tensor | None], packing_samples: bool):
    present = [value is not None for value in values]
    if not any(present):
        return None
    if not all(present):
        raise ValueError(f"{name} is None in some items but not in others.")
    return list(values) if packing_samples else zero_pad_sequences(values, side="left")


def _batch_info(infos: list[dict | None]) -> dict[str, torch.Tensor]:
    infos = [info or {} for info in infos]
    batch = {}
    for key in infos[0]:
        values = []
        for info in infos:
            if key not in info:
                raise ValueError(f"info[{key!r}] is missing from some items; every item needs the same info keys.")
            value = info[key]
            if isinstance(value, (bool, int, float)):
                value = torch.tensor(value)  # LightRFT items carry Python scalars as well as tensors
            if not isinstance(value, torch.Tensor):
                raise ValueError(
                    f"info[{key!r}] must be a tensor or a Python number per sample, got {type(value).__name__}."
                )
            values.append(value)
        if len({value.shape for value in values}) > 1:
            raise ValueError(f"info[{key!r}] has different shapes across items: {sorted({v.shape for v in values})}.")
        batch[key] = torch.stack(values)
    for info in infos:
        extra = set(info) - set(batch)
        if extra:
            raise ValueError(f"info[{sorted(extra)[0]!r}] is missing from some items; every item needs the same keys.")
    return batch


def _batch_token_fields(per_item: list[dict[str, torch.Tensor]], packing_samples: bool) -> dict:
    names = set(per_item[0])
    for fields_of_item in per_item:
        if set(fields_of_item) != names:
            raise ValueError(
                f"Items carry different per-token fields: {sorted(names)} vs {sorted(fields_of_item)}; every item "
                "needs the same."
            )
    return {
        name: _batch_token_field(name, [fields_of_item[name] for fields_of_item in per_item], packing_samples)
        for name in sorted(names)
    }


def make_experience_batch(
    items: list[BufferItem], packing_samples: bool = False, pad_to_multiple_of: int | None = None
) -> Experience:
    """
    Collate items into one batched [`Experience`].

    Args:
        items (`list[BufferItem]`):
            The samples.
        packing_samples (`bool`, *optional*, defaults to `False`):
            `True` keeps the per-token fields as lists of unpadded tensors; `False` left-pads them with zeros into
            `(B, max length)` tensors.
        pad_to_multiple_of (`int`, *optional*):
            Padded batches only: left-pad the sequence-wide fields (`sequences`, `attention_mask`, per-token type
            fields) further, to a width that is a multiple of this (TRL's `pad_to_multiple_of`). The model numbers
            positions from the attended tokens, so the log-probs do not change.

    Returns:
        [`Experience`]: `info` values stacked over the items (Python numbers made tensors), per-token type fields
        padded or listed like `sequences`, media fields concatenated in item order.

    Raises:
        `ValueError`: on an empty list, an item that is not a [`BufferItem`], a field that is `None` in only some
        items, or inconsistent `info` or multimodal fields.
    """
    if not items:
        raise ValueError("make_experience_batch needs at least one item.")
    if any(type(item) is not BufferItem for item in items):
        raise ValueError(
            f"make_experience_batch needs BufferItem items, got {sorted({type(item).__name__ for item in items})}."
        )
    batch = {
        name: _batch_token_field(name, [getattr(item, name) for item in items], packing_samples)
        for name in TOKEN_FIELDS
    }
    batch["info"] = _batch_info([item.info for item in items])
    batch["token_fields"] = _batch_token_fields([item.token_fields for item in items], packing_samples)
    if pad_to_multiple_of and not packing_samples:
        extra = -batch["sequences"].shape[1] % pad_to_multiple_of
        if extra:
            for name in ("sequences", "attention_mask"):
                if batch[name] is not None:
                    batch[name] = torch.nn.functional.pad(batch[name], (extra, 0))
            batch["token_fields"] = {
                name: torch.nn.functional.pad(value, (extra, 0)) for name, value in batch["token_fields"].items()
            }
    per_sample = [item.multimodal_inputs for item in items]
    batch["multimodal_inputs"] = concat_multimodal_inputs(per_sample)
    batch["multimodal_shapes"] = multimodal_shapes(per_sample)
    batch["multimodal_samples"] = per_sample
    return Experience(**batch)


def split_experience_batch(experience: Experience) -> list[BufferItem]:
    """
    Split a batched [`Experience`] into one item per sample, padding kept: a padded batch's item holds its row of
    each per-token field as batched, padding included (the seed's behaviour; [`remove_padding_in_sequences`] is the
    separate step that strips it), a packed batch's item its own unpadded sample. Followed by
    [`remove_padding_in_sequences`] for a padded batch, it is the inverse of [`make_experience_batch`].

    The item tensors are views of the batch's.

    Args:
        experience ([`Experience`]):
            The batch; its `multimodal_shapes` must describe its `multimodal_inputs`.

    Returns:
        `list[BufferItem]`: one item per sample, in order.

    Raises:
        `ValueError`: when a field or `info` entry does not have one entry per sample, or the media fields do not
        match `multimodal_shapes`.
    """
    batch_size = experience.batch_size
    per_sample: list[dict] = [{} for _ in range(batch_size)]
    for name in TOKEN_FIELDS:
        value = getattr(experience, name)
        if value is not None and len(value) != batch_size:
            raise ValueError(f"{name} has {len(value)} samples but sequences has {batch_size}.")
        for i, sample in enumerate(per_sample):
            sample[name] = None if value is None else value[i]
    for key, value in experience.info.items():
        if len(value) != batch_size:
            raise ValueError(f"info[{key!r}] has {len(value)} rows but the batch has {batch_size} samples.")
    for i, sample in enumerate(per_sample):
        sample["info"] = {key: value[i] for key, value in experience.info.items()}
        sample["token_fields"] = {name: value[i] for name, value in experience.token_fields.items()}

    if experience.multimodal_inputs and not experience.multimodal_shapes:
        raise ValueError("The experience has media fields but no multimodal_shapes to split them by.")
    multimodal = split_multimodal_inputs(experience.multimodal_inputs, experience.multimodal_shapes)
    if not experience.multimodal_shapes:
        multimodal = [{} for _ in range(batch_size)]
    if len(multimodal) != batch_size:
        raise ValueError(f"multimodal_shapes describe {len(multimodal)} samples but the batch has {batch_size}.")
    return [BufferItem(**sample, multimodal_inputs=mm) for sample, mm in zip(per_sample, multimodal)]


def item_to_device(item: BufferItem, device: torch.device | str, non_blocking: bool = False) -> BufferItem:
    """
    Return a copy of `item` with every tensor (multimodal fields and `info` included) on `device`. Any item dataclass
    is accepted (the seed's `BufferItemVL` too).
    """
    return replace(
        item,
        **{
            f.name: map_tensors(getattr(item, f.name), lambda t: t.to(device, non_blocking=non_blocking))
            for f in fields(item)
        },
    )
