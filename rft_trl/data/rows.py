"""Read dataset rows one at a time, so that one bad media item costs its row, never the run or its neighbours.

`datasets` decodes the media columns of a row (`Image()`, `Audio()`, `Video()`, alone or nested in lists) when the row
is read: `dataset[i]` on a map-style dataset, the iteration itself on a streaming one. A corrupt or missing file (or a
decoder that is not installed, as torchcodec for `Audio()` and `Video()`) raises there, before the collator sees the
row. [`IndexedRows`] and [`IndexedStream`] read each row on its own and, when decoding fails, read it undecoded
(`{"bytes", "path"}` per item, as `decode=False` gives), decode its media columns one by one, and keep the undecoded
value of each column that fails, naming it under [`MEDIA_ERRORS`]. The collator then loads those values with its own
loaders ([`rft_trl.data.media`]): a value they read is a counted repair, one they cannot is a counted skip, logged with
the row's dataset index and the column. A read that fails for any other reason raises as it did.

Each row also carries its dataset index under [`ROW_INDEX`] (its position in the stream, for a streaming dataset),
which the collator uses to name it; neither key reaches the reward functions.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from datasets import Dataset, IterableDataset
from datasets.features.features import decode_nested_example, require_decoding

logger = logging.getLogger(__name__)

# The dataset index of a row (its position in the stream, for a streaming dataset).
ROW_INDEX = "__rft_trl_row_index__"
# `{column: "ErrorType: message"}`: the media columns `datasets` could not decode, left undecoded in the row.
MEDIA_ERRORS = "__rft_trl_media_errors__"
# The keys the data pipeline adds to a row; they are not dataset columns.
RESERVED_KEYS = (ROW_INDEX, MEDIA_ERRORS)


def decoded_columns(features: Mapping[str, Any] | None) -> dict[str, Any]:
    """
    The columns `datasets` decodes when a row is read: media features with `decode=True`, nested ones included.

    Args:
        features (`datasets.Features`, *optional*): a dataset's features; `None` (unknown, as in some streams) gives
            none.

    Returns:
        `dict[str, FeatureType]`: column name -> its feature.
    """
    if features is None:
        return {}
    return {name: feature for name, feature in features.items() if require_decoding(feature)}


def decode_row(row: Mapping[str, Any], columns: Mapping[str, Any]) -> dict[str, Any]:
    """
    Decode the media `columns` of an undecoded row one by one, as `datasets` would.

    Returns:
        `dict`: the row with each column decoded; a column whose decoding raises keeps its undecoded value and is
        named, with the error, under [`MEDIA_ERRORS`] (absent when every column decoded).
    """
    decoded, errors = dict(row), {}
    for name, feature in columns.items():
        try:
            decoded[name] = decode_nested_example(feature, row[name])
        # Whatever the decoder raises (PIL, a missing file, torchcodec not installed) is this column's failure; the
        # collator decides whether its own loaders can read the value instead.
        except Exception as error:
            errors[name] = f"{type(error).__name__}: {error}"
    if errors:
        decoded[MEDIA_ERRORS] = errors
    return decoded


class IndexedRows(torch.utils.data.Dataset):
    """
    A map-style dataset's rows, each with its index under [`ROW_INDEX`]; a `datasets.Dataset` row whose media cannot
    be decoded comes back undecoded in the failing columns, named under [`MEDIA_ERRORS`] (see the module docstring).

    Rows are read one at a time (there is no `__getitems__`): a batched read would fail as a whole for one bad row. A
    dataset with a transform (`with_transform`) raises as before: its rows cannot be rebuilt without the transform.
    """

    def __init__(self, dataset):
        self.dataset = dataset
        self._undecoded: Dataset | None = None  # the arrow view of `dataset`, made at the first failed read

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        try:
            row = self.dataset[index]
        except Exception:
            row = self._read_undecoded(index)
            if row is None:
                raise  # not a media column's failure: the dataset's own error
        return {**row, ROW_INDEX: index}

    def _read_undecoded(self, index: int) -> dict | None:
        """The row decoded column by column, or `None` when every media column decodes (the error lies elsewhere)."""
        if not isinstance(self.dataset, Dataset) or self.dataset.format["type"] == "custom":
            return None
        columns = decoded_columns(self.dataset.features)
        if not columns:
            return None
        if self._undecoded is None:
            # The arrow format never decodes: each media item reads as its stored {"bytes", "path"}.
            self._undecoded = self.dataset.with_format("arrow")
        row = decode_row(self._undecoded[index].to_pylist()[0], columns)
        return row if MEDIA_ERRORS in row else None


class IndexedStream(torch.utils.data.IterableDataset):
    """
    A streaming dataset's rows, each with its position in the stream under [`ROW_INDEX`].

    A `datasets.IterableDataset` with media columns is read undecoded and each row decoded here, column by column: a
    decoding error inside the stream's own iteration would end it at the first bad item. (The stream's threaded
    decoding, which `load_dataset` turns on for remote streams, is given up for that.)
    """

    def __init__(self, dataset):
        self.dataset = dataset
        self.columns = decoded_columns(dataset.features) if isinstance(dataset, IterableDataset) else {}
        self._source = dataset.decode(False) if self.columns else dataset

    def set_epoch(self, epoch: int) -> None:
        # `decode(False)` made a copy: the epoch (which reshuffles a shuffled stream) must reach the one iterated.
        if isinstance(self._source, IterableDataset):
            self._source.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict]:
        for index, row in enumerate(self._source):
            if self.columns:
                row = decode_row(row, self.columns)
            yield {**row, ROW_INDEX: index}


class ReplacementRows:
    """
    Rows that stand in for a training batch whose every row was skipped (see `PromptCollator.replacing_from`).

    Each pass (`iter`) reads every row once: a map-style set from a seeded random start with a random stride coprime
    to its length (a shuffled order that needs no index list, however large the set), a stream from its start (this
    process's share of it: every `num_shards`-th row from `shard`). The rows keep their dataset index, so the collator
    passes over the ones it already skipped.

    Args:
        rows ([`IndexedRows`] or [`IndexedStream`]): the training rows.
        seed (`int`, *optional*, defaults to `0`): seed of the random order.
        shard (`int`, *optional*, defaults to `0`), num_shards (`int`, *optional*, defaults to `1`):
            this process's index and the number of processes.
        passes (`int`, *optional*, defaults to `0`): passes already begun (a resumed run's, from its checkpoint).
    """

    def __init__(self, rows, seed: int = 0, shard: int = 0, num_shards: int = 1, passes: int = 0):
        self.rows, self.seed, self.shard, self.num_shards = rows, seed, shard, num_shards
        # Passes begun so far; each pass's order depends only on it (and the seed and shard), so a checkpoint that
        # records it lets a resumed run draw the same rows as the uninterrupted one.
        self.passes = passes

    def __iter__(self) -> Iterator[dict]:
        if isinstance(self.rows, torch.utils.data.IterableDataset):
            yield from itertools.islice(self.rows, self.shard, None, self.num_shards)
            return
        # A seed of its own per (shard, pass): shard + num_shards * pass never repeats.
        generator = torch.Generator().manual_seed(self.seed + self.shard + self.num_shards * self.passes)
        self.passes += 1
        size = len(self.rows)
        start, stride = (int(value) for value in torch.randint(size, (2,), generator=generator))
        while math.gcd(stride, size) != 1:  # ends: 1 is coprime to every size
            stride = (stride + 1) % size
        for step in range(size):
            yield self.rows[(start + step * stride) % size]
