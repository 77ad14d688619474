"""A replay buffer holding one rollout's samples between generation and the policy updates."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace

import torch

from .batching import (
    BufferItem,
    item_to_device,
    make_experience_batch,
    remove_padding_in_sequences,
    split_experience_batch,
)
from .experience import Experience

# Per-token attributes that normalize() may whiten.
NORMALIZABLE_ATTRIBUTES = ("advantages", "returns", "values")


class NaiveReplayBuffer:
    """
    Store experience as unpadded per-sample items and serve them back as batches.

    The buffer is a map-style dataset: `DataLoader(buffer, batch_size=buffer.sample_batch_size,
    collate_fn=buffer.collate_fn, shuffle=True)` yields [`Experience`] batches for the updates.

    Args:
        sample_batch_size (`int`):
            Number of samples per batch handed to the updates.
        limit (`int`, *optional*, defaults to `0`):
            Maximum number of samples kept; the oldest are dropped beyond it. `0` or less keeps everything.
        cpu_offload (`bool`, *optional*, defaults to `True`):
            Move appended experience to the CPU, so the accelerator's memory only holds the batch being trained on.
        packing_samples (`bool`, *optional*, defaults to `False`):
            Collate batches as lists of unpadded samples instead of left-padded tensors.
        pad_to_multiple_of (`int`, *optional*):
            Padded batches' width is made a multiple of this (see [`make_experience_batch`]).
    """

    def __init__(
        self,
        sample_batch_size: int,
        limit: int = 0,
        cpu_offload: bool = True,
        packing_samples: bool = False,
        pad_to_multiple_of: int | None = None,
    ) -> None:
        self.sample_batch_size = sample_batch_size
        self.limit = limit
        self.cpu_offload = cpu_offload
        self.packing_samples = packing_samples
        self.pad_to_multiple_of = pad_to_multiple_of
        self.items: list[BufferItem] = []

    @torch.no_grad()
    def append(self, experience: Experience) -> None:
        """
        Split a batched [`Experience`] into items, strip a padded batch's padding from them (the buffer holds
        unpadded samples) and add them, dropping the oldest items beyond `limit`. The given experience is left as
        it is.
        """
        items = split_experience_batch(experience)
        self.extend(items if experience.is_packed else remove_padding_in_sequences(items))

    @torch.no_grad()
    def extend(self, items: list[BufferItem]) -> None:
        """Add already-split items, with the same offload and limit rules as [`NaiveReplayBuffer.append`]."""
        if self.cpu_offload:
            items = [item_to_device(item, "cpu") for item in items]
        self.items.extend(items)
        if self.limit > 0 and len(self.items) > self.limit:
            self.items = self.items[len(self.items) - self.limit :]

    def clear(self) -> None:
        self.items.clear()

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> BufferItem:
        return self.items[index]

    def collate_fn(self, batch: list[BufferItem]) -> Experience:
        """Collate items into an [`Experience`], packed or padded as the buffer was configured."""
        return make_experience_batch(
            batch, packing_samples=self.packing_samples, pad_to_multiple_of=self.pad_to_multiple_of
        )

    @torch.no_grad()
    def normalize(
        self,
        attribute: str = "advantages",
        all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
        eps: float = 1e-8,
    ) -> None:
        """
        Whiten an attribute over the whole buffer: `x <- (x - mean) / sqrt(max(var, eps))`, with the mean and
        (population) variance taken over the positions where `action_mask` is set for a per-token attribute, over
        every element for a per-sample one (whose shape differs from `action_mask`'s) or an item without
        `action_mask`. Every position is shifted and scaled, masked ones included.

        Args:
            attribute (`str`, *optional*, defaults to `"advantages"`):
                One of `"advantages"`, `"returns"`, `"values"`.
            all_reduce (`Callable[[torch.Tensor], torch.Tensor]`, *optional*):
                Sums a tensor over the data-parallel processes and returns the sum (e.g.
                `lambda t: accelerator.reduce(t, "sum")`), so that the statistics are global. Called twice, with a
                float64 tensor on the buffer's device: `[sum, count]`, then the sum of squared deviations. `None`
                uses this buffer's statistics alone.
            eps (`float`, *optional*, defaults to `1e-8`):
                Floor of the variance, so a constant attribute is centred rather than divided by zero.

        Raises:
            `ValueError`: on an unknown attribute, items without it, or no masked position in the whole buffer.
        """
        if attribute not in NORMALIZABLE_ATTRIBUTES:
            raise ValueError(f"Cannot normalize {attribute!r}; choose one of {', '.join(NORMALIZABLE_ATTRIBUTES)}.")
        values = [getattr(item, attribute) for item in self.items]
        if any(value is None for value in values):
            raise ValueError(f"normalize({attribute!r}) found items whose {attribute} is None.")
        # A per-token attribute is masked by action_mask; a per-sample one (or an item without a mask) counts whole.
        masks = [
            item.action_mask.bool()
            if item.action_mask is not None and item.action_mask.shape == value.shape
            else torch.ones_like(value, dtype=torch.bool)
            for item, value in zip(self.items, values)
        ]
        # The buffer may be empty on this process while others still hold samples: it then contributes zeros.
        pieces = [value[mask].double() for value, mask in zip(values, masks)]
        selected = torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.float64)
        device = selected.device
        sum_and_count = torch.tensor([selected.sum().item(), selected.numel()], dtype=torch.float64, device=device)
        if all_reduce is not None:
            sum_and_count = all_reduce(sum_and_count).to(device)
        total, count = sum_and_count.tolist()
        if count == 0:
            raise ValueError(f"normalize({attribute!r}) found no action positions to take statistics over.")
        mean = total / count
        squared_deviations = ((selected - mean) ** 2).sum()
        if all_reduce is not None:
            squared_deviations = all_reduce(squared_deviations).to(device)
        inv_std = max(squared_deviations.item() / count, eps) ** -0.5
        self.items = [
            replace(item, **{attribute: ((value.double() - mean) * inv_std).to(value.dtype)})
            for item, value in zip(self.items, values)
        ]


def top_up(items: list, size: int) -> list:
    """
    `items`, topped up to `size` with excluded copies (`valid` 0, masked out of the loss).

    A process whose collator skipped bad prompts has fewer samples, yet every process must replay the same number of
    micro-batches: DDP and ZeRO synchronise every backward, so one process running fewer would leave the others
    waiting (and a short rollout has no micro-batch to index).
    """
    topped_up = list(items)
    for i in range(size - len(items)):
        filler = copy.copy(items[i % len(items)])
        filler.info = {**filler.info, "valid": torch.zeros(())}
        topped_up.append(filler)
    return topped_up


def plan_micro_batches(buffer: NaiveReplayBuffer, items: list, epochs: int, seed: int) -> list[Experience]:
    """
    `epochs` passes over `items` (one rollout's), each in a fresh order drawn from `seed`, cut into the buffer's
    micro-batches; the buffer then holds the rollout.
    """
    buffer.clear()
    buffer.extend(items)
    size = buffer.sample_batch_size
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(epochs):
        order = torch.randperm(len(buffer), generator=generator).tolist()
        for start in range(0, len(buffer), size):
            batches.append(buffer.collate_fn([buffer[i] for i in order[start : start + size]]))
    return batches


def __getattr__(name: str):
    # The seed's `NaiveReplayBufferVL` stays importable from here. It lives in `rft_trl.compat`, which imports this
    # module, so it is looked up on first use: importing this module never imports compat.
    if name == "NaiveReplayBufferVL":
        from ..compat.experience import NaiveReplayBufferVL

        return NaiveReplayBufferVL
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
