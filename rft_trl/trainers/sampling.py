"""How prompts reach the trainer: rollout-shaped blocks of dataset rows, map-style or streaming.

The Trainer's dataloader yields one rollout's prompt rows, repeated once per training micro-batch of that rollout; the
rows stay plain dicts ([`PromptRows`]), collated and processed once per rollout by the trainer.
"""

from __future__ import annotations

import torch
from datasets import IterableDataset
from torch.utils.data import Sampler

__all__ = ["PromptRows", "RolloutSampler", "RolloutStream", "is_stream"]


class RolloutSampler(Sampler[int]):
    """
    Yields prompt indices so that each rollout's prompts come `repeats` times in a row.

    With `num_processes` ranks, a block holds `num_processes * rollout_batch_size` distinct indices; the DataLoader
    cuts it into per-rank batches of `rollout_batch_size` and Accelerate hands batch `r` of every block to rank `r`,
    so each rank sees its own prompts `repeats` times, once per training micro-batch of the rollout.

    Args:
        num_rows (`int`): dataset size.
        block_size (`int`): prompts per rollout over all ranks.
        repeats (`int`): training micro-batches per rollout.
        shuffle (`bool`): draw prompts in a seeded random order (reshuffled per epoch).
        seed (`int`): the shuffle seed.
    """

    def __init__(self, num_rows: int, block_size: int, repeats: int, shuffle: bool = True, seed: int = 0):
        if num_rows < block_size:
            raise ValueError(
                f"The dataset has {num_rows} rows, fewer than one rollout needs ({block_size} prompts over all "
                f"processes): lower rollout_batch_size or add rows."
            )
        self.num_rows, self.block_size, self.repeats = num_rows, block_size, repeats
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_rows, generator=generator).tolist()
        else:
            order = list(range(self.num_rows))
        for start in range(0, self.num_rows - self.block_size + 1, self.block_size):
            block = order[start : start + self.block_size]
            for _ in range(self.repeats):
                yield from block

    def __len__(self) -> int:
        return (self.num_rows // self.block_size) * self.block_size * self.repeats


class PromptRows:
    """
    A batch of raw dataset rows, as the train and eval dataloaders yield them.

    Deliberately not a list: Accelerate moves batches to the device by walking every list and dict inside them,
    and an audio column holds thousands of Python floats per row. Rows are collated (and media processed) once per
    rollout by the trainer instead.
    """

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, key: str) -> bool:
        # transformers.Trainer looks for "labels" in a batch to count loss tokens; rows have none.
        return False


def is_stream(dataset) -> bool:
    """Whether `dataset` is iterable-only (a streaming `datasets.IterableDataset` or a torch `IterableDataset`)."""
    return isinstance(dataset, (IterableDataset, torch.utils.data.IterableDataset))


class RolloutStream(torch.utils.data.IterableDataset):
    """
    A streaming training set cut into rollouts, as [`RolloutSampler`] cuts a map-style one: blocks of `block_size`
    consecutive rows (a last, incomplete block is dropped), each block yielded `repeats` times. Accelerate gives each
    process its `block_size / num_processes` rows of every block.
    """

    def __init__(self, dataset, block_size: int, repeats: int):
        self.dataset, self.block_size, self.repeats = dataset, block_size, repeats

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):  # reshuffles a shuffled `datasets` stream
            self.dataset.set_epoch(epoch)

    def __iter__(self):
        block, blocks = [], 0
        for row in self.dataset:
            block.append(row)
            if len(block) == self.block_size:
                for _ in range(self.repeats):
                    yield from block
                block, blocks = [], blocks + 1
        if blocks == 0:
            raise ValueError(
                f"The streaming dataset ended after {len(block)} rows, fewer than one rollout needs "
                f"({self.block_size} prompts over all processes): lower rollout_batch_size or add rows."
            )
