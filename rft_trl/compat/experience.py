"""
The seed's vision-language experience names (`lightrft.trainer.replay_buffer_utils`, `replay_buffer_vl`):
[`BufferItemVL`], [`ExperienceVL`], [`is_vl_experience`], the [`make_experience_batch`] and
[`split_experience_batch`] that tell them apart, and [`NaiveReplayBufferVL`].

Each is a face over the one path of `rft_trl.trainers.batching`: a [`BufferItemVL`] is read as a [`BufferItem`]
whose `multimodal_inputs` hold its vision fields under their processor names, batched by the same function, and the
batch is handed back as an [`ExperienceVL`]. The trainer never sees these classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

from ..trainers import batching
from ..trainers.batching import BufferItem, remove_padding_in_sequences
from ..trainers.experience import Experience
from ..trainers.replay_buffer import NaiveReplayBuffer

__all__ = [
    "BufferItemVL",
    "ExperienceVL",
    "NaiveReplayBufferVL",
    "is_vl_experience",
    "make_experience_batch",
    "split_experience_batch",
]

# BufferItemVL's seed attribute names for the processor fields they hold.
_VL_ATTRIBUTE_FIELDS = {
    "pixel_values": "pixel_values",
    "image_grid_thws": "image_grid_thw",
    "pixel_values_videos": "pixel_values_videos",
    "video_grid_thws": "video_grid_thw",
}


@dataclass
class BufferItemVL:
    """
    One sample of vision-language experience under the seed's field names.

    Shapes as in [`BufferItem`], plus `pixel_values` `(sum of t*h*w over the images, D)`, `image_grid_thws`
    `(n_images, 3)`, and the same for videos. `raw_images` are the images before processing. The vision fields are
    read through [`BufferItemVL.multimodal_inputs`], so batching treats this item exactly like a [`BufferItem`];
    a processor's other media fields (`image_sizes`, `second_per_grid_ts`, ...) go in `extra_multimodal_inputs`
    and its per-token type fields in `token_fields`.
    """

    sequences: torch.Tensor
    pixel_values: torch.Tensor | None = None
    image_grid_thws: torch.Tensor | None = None
    pixel_values_videos: torch.Tensor | None = None
    video_grid_thws: torch.Tensor | None = None
    raw_images: list | None = None
    action_log_probs: torch.Tensor = None
    base_action_log_probs: torch.Tensor = None
    values: torch.Tensor = None
    returns: torch.Tensor = None
    advantages: torch.Tensor = None
    attention_mask: torch.LongTensor | None = None
    action_mask: torch.BoolTensor | None = None
    info: dict | None = None
    action_entropy: torch.Tensor | None = None
    importance_weights: torch.Tensor | None = None
    tool_mask: torch.BoolTensor | None = None
    extra_multimodal_inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    token_fields: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def multimodal_inputs(self) -> dict[str, torch.Tensor]:
        """All media fields under their processor names, e.g. `image_grid_thws` as `image_grid_thw`."""
        named = {
            name: getattr(self, attribute)
            for attribute, name in _VL_ATTRIBUTE_FIELDS.items()
            if getattr(self, attribute) is not None
        }
        return {**named, **self.extra_multimodal_inputs}


@dataclass
class ExperienceVL(Experience):
    """
    An [`Experience`] built from [`BufferItemVL`] items (the seed's vision-language face). Its images, videos and
    grids live in `multimodal_inputs` like every other modality's fields; it only adds the raw media.

    Args:
        raw_images (`list`, *optional*):
            For each sample, its images before processing (or `None`).
    """

    raw_images: list | None = None


def _as_buffer_item(item: BufferItemVL) -> BufferItem:
    """The [`BufferItem`] holding the same tensors as `item`, its vision fields in `multimodal_inputs`."""
    shared = {f.name: getattr(item, f.name) for f in fields(BufferItem) if f.name != "multimodal_inputs"}
    return BufferItem(**shared, multimodal_inputs=item.multimodal_inputs)


def _as_buffer_item_vl(item: BufferItem, raw_images: list | None) -> BufferItemVL:
    """The [`BufferItemVL`] holding the same tensors as `item`, its vision fields under the seed's names."""
    shared = {f.name: getattr(item, f.name) for f in fields(BufferItem) if f.name != "multimodal_inputs"}
    by_name = {name: attribute for attribute, name in _VL_ATTRIBUTE_FIELDS.items()}
    vision = {attribute: item.multimodal_inputs.get(name) for attribute, name in _VL_ATTRIBUTE_FIELDS.items()}
    extra = {name: value for name, value in item.multimodal_inputs.items() if name not in by_name}
    return BufferItemVL(**shared, **vision, raw_images=raw_images, extra_multimodal_inputs=extra)


def is_vl_experience(experience: Experience | BufferItem | BufferItemVL) -> bool:
    """
    Whether an experience (batched or one item) is a vision-language one: built under the seed's vision-language
    names ([`ExperienceVL`], [`BufferItemVL`]) or holding image or video fields.

    Args:
        experience ([`Experience`], [`BufferItem`] or [`BufferItemVL`]):
            The experience to inspect.

    Returns:
        `bool`
    """
    if isinstance(experience, (ExperienceVL, BufferItemVL)):
        return True
    # The seed's vision field names: what its vision-language items carry.
    return any(name in experience.multimodal_inputs for name in ("pixel_values", "pixel_values_videos"))


def make_experience_batch(
    items: list[BufferItem | BufferItemVL], packing_samples: bool = False, pad_to_multiple_of: int | None = None
) -> Experience:
    """
    The seed's `make_experience_batch`: the trainer's [`~rft_trl.trainers.batching.make_experience_batch`] for
    [`BufferItem`] items; for [`BufferItemVL`] items, the batch of the [`BufferItem`]s holding the same tensors, as an
    [`ExperienceVL`] with the items' `raw_images`.

    Args:
        items (`list[BufferItem]` or `list[BufferItemVL]`):
            The samples, all of one class.
        packing_samples (`bool`, *optional*, defaults to `False`):
            `True` keeps the per-token fields as lists of unpadded tensors; `False` left-pads them with zeros into
            `(B, max length)` tensors.
        pad_to_multiple_of (`int`, *optional*):
            Padded batches only: left-pad the sequence-wide fields further, to a width that is a multiple of this.

    Returns:
        [`Experience`], or [`ExperienceVL`] for [`BufferItemVL`] items.

    Raises:
        `ValueError`: on an empty list, mixed item classes, or what the batching itself refuses.
    """
    if not items:
        raise ValueError("make_experience_batch needs at least one item.")
    item_class = type(items[0])
    if item_class not in (BufferItem, BufferItemVL) or any(type(item) is not item_class for item in items):
        raise ValueError(
            "make_experience_batch needs items that are all BufferItem or all BufferItemVL, got "
            f"{sorted({type(item).__name__ for item in items})}."
        )
    if item_class is BufferItem:
        return batching.make_experience_batch(items, packing_samples, pad_to_multiple_of)
    core_items = [_as_buffer_item(item) for item in items]
    batch = batching.make_experience_batch(core_items, packing_samples, pad_to_multiple_of)
    raw_images = [item.raw_images for item in items]
    return ExperienceVL(
        **{f.name: getattr(batch, f.name) for f in fields(Experience)},
        raw_images=None if all(raw is None for raw in raw_images) else raw_images,
    )


def split_experience_batch(experience: Experience) -> list[BufferItem | BufferItemVL]:
    """
    The seed's `split_experience_batch`: the trainer's [`~rft_trl.trainers.batching.split_experience_batch`], whose
    items an [`ExperienceVL`] hands back as [`BufferItemVL`]s (each with its sample's `raw_images`).

    Args:
        experience ([`Experience`]):
            The batch; its `multimodal_shapes` must describe its `multimodal_inputs`.

    Returns:
        `list[BufferItem]` or `list[BufferItemVL]`: one item per sample, in order.

    Raises:
        `ValueError`: when the batch does not split (see the core function), or `raw_images` does not have one entry
        per sample.
    """
    items = batching.split_experience_batch(experience)
    if not isinstance(experience, ExperienceVL):
        return items
    raw_images = experience.raw_images or [None] * len(items)
    if len(raw_images) != len(items):
        raise ValueError(f"raw_images has {len(raw_images)} entries but the batch has {len(items)} samples.")
    return [_as_buffer_item_vl(item, raw) for item, raw in zip(items, raw_images)]


class NaiveReplayBufferVL(NaiveReplayBuffer):
    """
    The seed's vision-language replay buffer: a [`NaiveReplayBuffer`] that keeps an [`ExperienceVL`]'s samples as
    [`BufferItemVL`] items and collates them back into [`ExperienceVL`] batches. Any other experience round-trips
    as in [`NaiveReplayBuffer`], which the trainer uses for every modality.
    """

    @torch.no_grad()
    def append(self, experience: Experience) -> None:
        """See [`NaiveReplayBuffer.append`]; an [`ExperienceVL`] gives [`BufferItemVL`] items."""
        # Not super(): the parent splits every batch into plain BufferItems; this face keeps the seed's item class.
        items = split_experience_batch(experience)
        self.extend(items if experience.is_packed else remove_padding_in_sequences(items))

    def collate_fn(self, batch: list[BufferItem | BufferItemVL]) -> Experience:
        """See [`NaiveReplayBuffer.collate_fn`]; [`BufferItemVL`] items give an [`ExperienceVL`]."""
        return make_experience_batch(
            batch, packing_samples=self.packing_samples, pad_to_multiple_of=self.pad_to_multiple_of
        )
