"""How prompts reach the trainer: rollout-shaped blocks of dataset rows, map-style or streaming.

The Trainer's dataloader yields one rollout's prompt rows, repeated once per training micro-batch of that rollout; the
rows stay plain dicts ([`PromptRows`]), collated and processed once per rollout by the trainer.
"""

from __future__ import annotations

import torch
from datasets import IterableDataset
from trl.trainer.utils import RepeatSampler

from ..data.rows import IndexedRows, IndexedStream

__all__ = ["PromptRows", "RolloutSampler", "RolloutStream", "eval_rows", "is_stream", "training_rows"]


class RolloutSampler(RepeatSampler):
    """
    TRL's `RepeatSampler` yielding prompt indices so that each rollout's prompts come `repeats` times in a row.

    With `num_processes` ranks, a block holds `num_processes * rollout_batch_size` distinct indices; the DataLoader
    cuts it into per-rank batches of `rollout_batch_size` and Accelerate hands batch `r` of every block to rank `r`,
    so each rank sees its own prompts `repeats` times, once per training micro-batch of the rollout. This is TRL's
    sampler with `mini_repeat_count=1`, `batch_size=block_size` and `repeat_count=repeats`, except that each epoch's
    order is drawn from `seed + epoch` ([`RolloutSampler.set_epoch`], which the Trainer calls) rather than from one
    generator advanced by every pass: a resumed run then draws the interrupted run's order for the epoch it resumes.

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
        super().__init__(
            range(num_rows),
            mini_repeat_count=1,
            batch_size=block_size,
            repeat_count=repeats,
            shuffle=shuffle,
            seed=seed,
        )
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.shuffle:
            self.generator.manual_seed(self.seed + epoch)

    def __iter__(self):
        # Each pass draws from `seed + epoch`, also when a pass is repeated without `set_epoch` (a second loader).
        self.set_epoch(self.epoch)
        return super().__iter__()


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


def training_rows(
    dataset, block_size: int, repeats: int
) -> tuple[torch.utils.data.Dataset, IndexedRows | IndexedStream]:
    """
    The training set as the train dataloader reads it, and the rows replacements for skipped rows are drawn from.

    Rows are read one by one with their dataset index, so that a bad media item costs its row (see
    `rft_trl.data.rows`); a stream is cut into rollouts of `block_size` rows, each `repeats` times ([`RolloutStream`]).
    """
    if is_stream(dataset):
        rows = IndexedStream(dataset)
        return RolloutStream(rows, block_size, repeats), rows
    rows = IndexedRows(dataset)
    return rows, rows


def eval_rows(dataset, args) -> IndexedRows | IndexedStream:
    """The eval rows, each with its dataset index (rows Accelerate repeats to even out processes count once)."""
    if dataset is None:
        raise ValueError("Evaluation needs an eval_dataset: pass one to the trainer or to evaluate().")
    if not is_stream(dataset):
        return IndexedRows(dataset)
    if args.accelerator_config.dispatch_batches:
        raise ValueError("Iterable datasets require `dispatch_batches=False`; drop it from accelerator_config.")
    return IndexedStream(dataset)
