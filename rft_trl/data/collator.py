"""Turn dataset rows into a left-padded prompt batch with its multimodal inputs, rejecting bad rows by name.

Rows follow the rft_trl data contract: a `prompt` (a string, or chat messages whose content parts may be
`{"type": "image"}`, `{"type": "video"}`, `{"type": "audio"}` or `{"type": "text", "text": ...}`), media columns
(`image` or `images`, `video` or `videos`, `audio` or `audios`) and any extra columns, which travel untouched to the
reward functions as keyword arguments.

A row's prompt is checked against its media columns and made into chat messages with one media part per item
(see [`rft_trl.data.prompts`]), which go through the processor's chat template (the tokenizer's for text models) with
the generation prompt appended; a plain-string prompt without media is used verbatim, as in TRL's "standard"
(non-conversational) format.

Each row is processed on its own, exactly once: its media are loaded (see [`rft_trl.data.media`]), the processor
runs once on the row and its media, and the per-row results are left-padded and concatenated. The trainer repeats
the per-sample pieces for each completion; it never runs the processor again, which the counters
[`PromptCollator.processor_calls`] and [`PromptCollator.media_processed`] let a benchmark check.

Prompts longer than `prompt_max_len` after media expansion are rejected (reason `"prompt_too_long"`), never
truncated: cutting the left of a chat prompt drops its system turn and template head, and cutting through a media
span would leave placeholder tokens that no longer match the media features.

A rejected row is named in logs and errors by its dataset index when the data pipeline gave it one (under
[`~rft_trl.data.rows.ROW_INDEX`]; else by its position among the rows this collator has seen) and by the column at
fault. Media that `datasets` could not decode reach the collator undecoded (see [`rft_trl.data.rows`]) and go through
the same loaders as paths and bytes: repaired and counted, or skipped and counted. A call whose every row is skipped
returns an empty batch, unless rows to replace them were given ([`PromptCollator.replacing_from`], as the trainer does
for training rollouts).
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from transformers import PreTrainedTokenizerBase, ProcessorMixin, WhisperFeatureExtractor

from .media import MediaError, image_bounds_from_processor, load_audio, load_image, load_video
from .multimodal import (
    ProcessorLayout,
    concat_multimodal_inputs,
    media_field_names,
    probe_processor,
    split_processor_output,
)
from .prompts import MEDIA_COLUMNS, RowRejected, collect_media, prompt_messages
from .rows import MEDIA_ERRORS, RESERVED_KEYS, ROW_INDEX

logger = logging.getLogger(__name__)


class SkippedRow(NamedTuple):
    """
    A row the collator dropped: `row` is its id-column value when it has one, else its dataset index (its position
    among the rows the collator has seen when it has none); `column` is the column at fault, when one is.
    """

    row: Any
    reason: str
    detail: str
    column: str | None = None


class BadSampleError(ValueError):
    """A row that cannot be used, raised at once when `on_bad_sample="raise"`."""

    def __init__(self, description: str, reason: str, detail: str, column: str | None = None):
        super().__init__(f"{description} is unusable ({reason}): {_in_column(column)}{detail}")
        self.reason = reason
        self.detail = detail
        self.column = column


def _in_column(column: str | None) -> str:
    return "" if column is None else f"column {column!r}: "


class TooManyBadSamplesError(RuntimeError):
    """More rows were skipped than `max_skip_fraction` allows."""


@dataclass
class PromptBatch:
    """
    A batch of unique prompts, ready for generation.

    Args:
        input_ids (`torch.LongTensor` of shape `[B, L]`):
            Prompt tokens after media expansion, left-padded with the tokenizer's pad token.
        attention_mask (`torch.LongTensor` of shape `[B, L]`):
            1 on prompt tokens, 0 on padding.
        token_fields (`dict[str, torch.LongTensor]`):
            The processor's per-token type fields (`mm_token_type_ids`, `token_type_ids`, ...), `[B, L]`, left-padded
            with 0 like the prompts; `{}` when it returns none.
        sample_multimodal_inputs (`list[dict[str, torch.Tensor]]`):
            Each prompt's media fields (`pixel_values`, `image_grid_thw`, `input_features`, ...), as the processor
            returned them for that prompt alone; `{}` for a prompt without media.
        prompts (`list`):
            The original `prompt` values of the kept rows, as reward functions receive them.
        prompt_texts (`list[str]`):
            The rendered prompts, before media expansion.
        sample_media (`list[dict[str, list]]`):
            Each prompt's loaded media per kind (`"image"`: PIL images, `"video"`: frame arrays, `"audio"`: waveforms
            at the processor's sampling rate), exactly as the processor received them: what a rollout engine that runs
            its own processor (vLLM) is given.
        prompt_messages (`list[list[dict] | None]`):
            Each prompt as the chat messages that were rendered, media parts in place (a plain-string prompt with
            media becomes one user message); `None` for a plain-text prompt without media.
        columns (`dict[str, list]`):
            Every column but `prompt` of the kept rows, media columns included, with the rows' own values (TRL's
            reward contract); `None` where a row lacks it.
        skipped (`list[SkippedRow]`):
            The rows of this call that were dropped, with their reasons.
        kept (`list[int]`):
            The position, among the rows of this call, of each kept row; positions from `len(rows)` on are replacement
            rows (see [`PromptCollator.replacing_from`]).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_fields: dict[str, torch.Tensor]
    sample_multimodal_inputs: list[dict[str, torch.Tensor]]
    prompts: list[Any]
    prompt_texts: list[str]
    columns: dict[str, list[Any]]
    sample_media: list[dict[str, list[Any]]] = field(default_factory=list)
    prompt_messages: list[list[dict] | None] = field(default_factory=list)
    skipped: list[SkippedRow] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def multimodal_inputs(self) -> dict[str, torch.Tensor]:
        """The media fields of the whole batch, as the model takes them (see `concat_multimodal_inputs`)."""
        return concat_multimodal_inputs(self.sample_multimodal_inputs)


@dataclass
class _Row:
    """One row after rendering, media loading and processing."""

    input_ids: torch.Tensor  # [L]
    token_fields: dict[str, torch.Tensor]  # each [L]
    multimodal_inputs: dict[str, torch.Tensor]
    prompt_text: str
    media: dict[str, list[Any]]
    messages: list[dict] | None


@dataclass
class ProcessedText:
    """
    A text and its media after [`PromptCollator.process_text`].

    Attributes:
        input_ids (`torch.LongTensor` of shape `[L]`): the tokens, media placeholders expanded.
        token_fields (`dict[str, torch.LongTensor]`): the processor's per-token fields, each `[L]`.
        multimodal_inputs (`dict[str, torch.Tensor]`): its media fields, as a prompt's.
        media (`dict[str, list]`): the loaded items per kind (kinds without items left out).
    """

    input_ids: torch.Tensor
    token_fields: dict[str, torch.Tensor]
    multimodal_inputs: dict[str, torch.Tensor]
    media: dict[str, list[Any]]


class PromptCollator:
    """
    Collate dataset rows (dicts) into a [`PromptBatch`], validating each row and processing its media once.

    Use it as a `DataLoader`'s `collate_fn`. With `num_workers > 0` the collator is copied into the worker processes,
    so its counters stay there; `PromptBatch.skipped` travels with each batch for the trainer to count.

    Args:
        processing_class ([`~transformers.ProcessorMixin`] or [`~transformers.PreTrainedTokenizerBase`]):
            The model's processor (vision or audio) or tokenizer (text).
        prompt_max_len (`int`, *optional*):
            Longest prompt in tokens after media expansion; longer rows are rejected with reason
            `"prompt_too_long"` (see the module docstring for why they are not truncated). No limit by default.
        layout ([`~rft_trl.data.multimodal.ProcessorLayout`], *optional*):
            The processor's media kinds and field layout; probed from `processing_class` by default (see
            [`~rft_trl.data.multimodal.probe_processor`]).
        on_bad_sample (`str`, *optional*, defaults to `"skip"`):
            `"skip"` drops a bad row, records its reason and logs a warning; `"raise"` raises [`BadSampleError`] at
            once.
        max_skip_fraction (`float`, *optional*, defaults to `0.1`):
            With `"skip"`, [`TooManyBadSamplesError`] is raised once the rows skipped so far exceed this fraction of
            `max(rows seen, min_rows_for_skip_fraction)`.
        min_rows_for_skip_fraction (`int`, *optional*, defaults to `32`):
            Floor on the denominator of the skip fraction, so that one bad row among the first few does not abort a
            run: with the defaults, the fourth bad row among the first 32 aborts, and later on more than 10%.
        id_column (`str`, *optional*, defaults to `"id"`):
            Column naming a row in messages and in `SkippedRow.row`, when a row has it; otherwise rows are named by
            their dataset index ([`~rft_trl.data.rows.ROW_INDEX`]), or when they have none by their position among
            all rows this collator has seen.
        audio_too_long (`str`, *optional*, defaults to `"truncate"`):
            Audio longer than the feature extractor's window (`n_samples`): `"truncate"` keeps the start and counts a
            repair, `"reject"` skips the row with reason `"audio_too_long"`.
        chat_template_kwargs (`dict`, *optional*):
            Extra keyword arguments of `apply_chat_template` (TRL's `chat_template_kwargs`, e.g.
            `{"enable_thinking": False}`).
        row_tools (`Callable`, *optional*):
            The tools a row's prompt is rendered with (`apply_chat_template`'s `tools`), from the row: for rows that
            differ in their tools (TRL's environments routed by an `environment` column).

    Attributes:
        media_kinds (`tuple[str, ...]`): the media kinds the processor takes; a row may hold any mix of them.
        processor_calls (`int`): processor (or tokenizer) calls so far, one per row that reached processing.
        media_processed (`Counter[str]`): media items handed to the processor so far, per kind. Each row's items
            are processed once, so over unique prompts this equals the number of media items collated.
        rows_seen (`int`), rows_skipped (`int`): rows collated and dropped so far.
    """

    def __init__(
        self,
        processing_class: ProcessorMixin | PreTrainedTokenizerBase,
        prompt_max_len: int | None = None,
        layout: ProcessorLayout | None = None,
        on_bad_sample: str = "skip",
        max_skip_fraction: float = 0.1,
        min_rows_for_skip_fraction: int = 32,
        id_column: str = "id",
        audio_too_long: str = "truncate",
        chat_template_kwargs: dict | None = None,
        row_tools: Callable[[Mapping[str, Any]], list] | None = None,
    ):
        if on_bad_sample not in ("skip", "raise"):
            raise ValueError(f"on_bad_sample must be 'skip' or 'raise', got {on_bad_sample!r}.")
        if not 0.0 <= max_skip_fraction <= 1.0:
            raise ValueError(f"max_skip_fraction must lie in [0, 1], got {max_skip_fraction}.")
        if min_rows_for_skip_fraction < 1:
            raise ValueError(f"min_rows_for_skip_fraction must be at least 1, got {min_rows_for_skip_fraction}.")
        if prompt_max_len is not None and prompt_max_len < 1:
            raise ValueError(f"prompt_max_len must be positive or None, got {prompt_max_len}.")
        if audio_too_long not in ("truncate", "reject"):
            raise ValueError(f"audio_too_long must be 'truncate' or 'reject', got {audio_too_long!r}.")

        self.processing_class = processing_class
        self.tokenizer = (
            processing_class.tokenizer if isinstance(processing_class, ProcessorMixin) else processing_class
        )
        if self.tokenizer.pad_token_id is None:
            raise ValueError("The tokenizer has no pad token; set `tokenizer.pad_token` (e.g. to its eos token).")
        self.layout = layout if layout is not None else probe_processor(processing_class)
        self.media_kinds = self.layout.media_kinds
        self.prompt_max_len = prompt_max_len
        self.on_bad_sample = on_bad_sample
        self.max_skip_fraction = max_skip_fraction
        self.min_rows_for_skip_fraction = min_rows_for_skip_fraction
        self.id_column = id_column
        self.audio_too_long = audio_too_long
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.row_tools = row_tools
        self._configure_media()

        self.processor_calls = 0
        self.media_processed: Counter[str] = Counter()
        self.rows_seen = 0
        self.rows_skipped = 0
        self._skip_counts: Counter[str] = Counter()
        self._repair_counts: Counter[str] = Counter()
        self._repairs_logged: set[str] = set()
        # Every skip so far by (column or None, reason), for the error that stops a run; never reset.
        self._skip_totals: Counter[tuple[str | None, str]] = Counter()
        # Dataset indices of the training rows skipped so far: a replacement row among them is passed over, not
        # counted again.
        self._skipped_indices: set[Any] = set()
        self._replacements: Iterable[Mapping[str, Any]] | None = None

    def _configure_media(self) -> None:
        """The bounds to load each media kind the processor takes into."""
        self.image_bounds = image_bounds_from_processor(
            self.processing_class.image_processor if "image" in self.media_kinds else None
        )
        self.video_bounds = image_bounds_from_processor(
            self.processing_class.video_processor if "video" in self.media_kinds else None
        )
        self.sampling_rate: int | None = None
        self.audio_max_samples: int | None = None
        if "audio" in self.media_kinds:
            feature_extractor = self.processing_class.feature_extractor
            self.sampling_rate = feature_extractor.sampling_rate
            # Whisper-style extractors cut every clip to a fixed window; others take any length.
            if isinstance(feature_extractor, WhisperFeatureExtractor):
                self.audio_max_samples = feature_extractor.n_samples

    # ------------------------------------------------------------------------------------------------- metrics

    def pop_skip_counts(self) -> dict[str, int]:
        """Rows skipped per reason since the last call, as `{"data/skipped/<reason>": count}`; resets them."""
        counts = {f"data/skipped/{reason}": count for reason, count in sorted(self._skip_counts.items())}
        self._skip_counts.clear()
        return counts

    def pop_repair_counts(self) -> dict[str, int]:
        """Media repairs per code since the last call, as `{"data/repaired/<code>": count}`; resets them."""
        counts = {f"data/repaired/{code}": count for code, count in sorted(self._repair_counts.items())}
        self._repair_counts.clear()
        return counts

    # ------------------------------------------------------------------------------------------------- collate

    @contextmanager
    def replacing_from(self, rows: Iterable[Mapping[str, Any]] | None) -> Iterator[PromptCollator]:
        """
        Within this context, a call whose every row is skipped collates rows from `rows` in their place, as many at
        a time as the call had, until one is kept; rows skipped before (by dataset index) are passed over. Every row
        drawn counts towards `max_skip_fraction` like any other, and when `rows` run out with none kept,
        [`TooManyBadSamplesError`] is raised. `None` keeps the plain behaviour (an empty batch).

        The trainer uses it for training rollouts, with rows drawn from the training set (see
        [`~rft_trl.data.rows.ReplacementRows`]), so that a batch of bad rows costs those rows, not the run.
        """
        previous, self._replacements = self._replacements, rows
        try:
            yield self
        finally:
            self._replacements = previous

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> PromptBatch:
        """
        Collate rows into a [`PromptBatch`].

        Args:
            rows (`Sequence[Mapping[str, Any]]`):
                Dataset rows; each must have a `prompt` key.

        Returns:
            [`PromptBatch`]: the kept rows, in order. It is empty (`len(batch) == 0`) only when every row was
            skipped, the skip limit still holds and no replacement rows were given (see [`replacing_from`]), which
            needs `max_skip_fraction` near 1 or tiny batches.

        Raises:
            [`BadSampleError`]: with `on_bad_sample="raise"`, on the first bad row.
            [`TooManyBadSamplesError`]: when skipped rows exceed `max_skip_fraction`, or when every row was skipped
            and the replacement rows ran out.
            `KeyError`: when a row has no `prompt` key (a dataset schema error, never skipped).
        """
        kept: list[tuple[Mapping[str, Any], _Row]] = []
        kept_positions: list[int] = []
        skipped: list[SkippedRow] = []
        self._collate_rows(rows, 0, kept, kept_positions, skipped)
        self._check_skip_limit(skipped)
        if not kept and rows and self._replacements is not None:
            self._collate_replacements(len(rows), kept, kept_positions, skipped)
        batch = self._assemble(kept, skipped)
        batch.kept = kept_positions
        return batch

    def _collate_rows(
        self,
        rows: Sequence[Mapping[str, Any]],
        offset: int,
        kept: list[tuple[Mapping[str, Any], _Row]],
        kept_positions: list[int],
        skipped: list[SkippedRow],
    ) -> None:
        """Prepare each row on its own, appending it to `kept` (at position `offset + i`) or to `skipped`."""
        for position, row in enumerate(rows, start=offset):
            if "prompt" not in row:
                raise KeyError(f"Dataset rows need a 'prompt' column; this row has {sorted(row)}.")
            index = self.rows_seen
            self.rows_seen += 1
            repairs: list[str] = []
            try:
                prepared = self._prepare_row(row, repairs)
            except RowRejected as rejection:
                skipped.append(self._skip(row, index, rejection))
                continue
            self._log_new_repairs(row, index, repairs)
            self._repair_counts.update(repairs)
            kept.append((row, prepared))
            kept_positions.append(position)

    def _collate_replacements(
        self,
        size: int,
        kept: list[tuple[Mapping[str, Any], _Row]],
        kept_positions: list[int],
        skipped: list[SkippedRow],
    ) -> None:
        """Every row of the call was skipped: collate replacement rows, `size` at a time, until one is kept."""
        logger.warning(
            "Every row of this batch of %d was skipped (%s); drawing replacement rows from the training set.",
            size,
            ", ".join(sorted({entry.reason for entry in skipped})),
        )
        fresh = (
            row
            for row in self._replacements
            if row.get(ROW_INDEX) is None or row[ROW_INDEX] not in self._skipped_indices
        )
        drawn = 0
        while not kept:
            rows = list(itertools.islice(fresh, size))
            if not rows:
                raise TooManyBadSamplesError(
                    f"Every row of a batch of {size} was skipped, and so were the {drawn} replacement rows drawn from "
                    f"the training set after it. Skipped so far: {self._skip_summary()}. Fix the data."
                )
            new_skips: list[SkippedRow] = []
            self._collate_rows(rows, size + drawn, kept, kept_positions, new_skips)
            skipped.extend(new_skips)
            self._check_skip_limit(new_skips)
            drawn += len(rows)

    def _log_new_repairs(self, row: Mapping[str, Any], index: int, repairs: list[str]) -> None:
        # Every repair is counted (data/repaired/<code>); the first of each kind is also logged, naming the row.
        for code in dict.fromkeys(repairs):
            if code not in self._repairs_logged:
                self._repairs_logged.add(code)
                _, description = self._describe(row, index)
                logger.warning(
                    "%s: media repaired (%s). Later repairs of this kind are counted in data/repaired/%s.",
                    description,
                    code,
                    code,
                )

    def _describe(self, row: Mapping[str, Any], index: int) -> tuple[Any, str]:
        """A row's name (its id, else its dataset index, else `index`) and how messages call it."""
        name, description = index, f"Row {index}"
        if row.get(ROW_INDEX) is not None:
            name, description = row[ROW_INDEX], f"Dataset index {row[ROW_INDEX]}"
        row_id = row.get(self.id_column)
        if row_id is None:
            return name, description
        return row_id, f"{description} ({self.id_column}={row_id!r})"

    def _skip(self, row: Mapping[str, Any], index: int, rejection: RowRejected) -> SkippedRow:
        name, description = self._describe(row, index)
        if self.on_bad_sample == "raise":
            raise BadSampleError(description, rejection.reason, rejection.detail, rejection.column) from rejection
        logger.warning(
            "%s skipped (%s): %s%s", description, rejection.reason, _in_column(rejection.column), rejection.detail
        )
        self.rows_skipped += 1
        self._skip_counts[rejection.reason] += 1
        self._skip_totals[(rejection.column, rejection.reason)] += 1
        if self._replacements is not None and row.get(ROW_INDEX) is not None:
            # Only while training rows are replaceable: an eval row's index names a row of another dataset.
            self._skipped_indices.add(row[ROW_INDEX])
        return SkippedRow(name, rejection.reason, rejection.detail, rejection.column)

    def _skip_summary(self) -> str:
        """Every skip so far by column and reason: `column 'image': corrupt_image 2, missing_file 1; ...`."""
        by_column: dict[str | None, list[str]] = {}
        totals = sorted(self._skip_totals.items(), key=lambda entry: (entry[0][0] or "", entry[0][1]))
        for (column, reason), count in totals:
            by_column.setdefault(column, []).append(f"{reason} {count}")
        return "; ".join(
            f"{'no column' if column is None else f'column {column!r}'}: {', '.join(reasons)}"
            for column, reasons in by_column.items()
        )

    def _check_skip_limit(self, skipped: list[SkippedRow]) -> None:
        fraction = self.rows_skipped / max(self.rows_seen, self.min_rows_for_skip_fraction)
        if not skipped or fraction <= self.max_skip_fraction:
            return
        latest = "; ".join(f"{entry.row}: {entry.reason}: {entry.detail}" for entry in skipped[-3:])
        raise TooManyBadSamplesError(
            f"{self.rows_skipped} of {self.rows_seen} rows skipped, above max_skip_fraction={self.max_skip_fraction} "
            f"(of at least {self.min_rows_for_skip_fraction} rows). Skipped so far: {self._skip_summary()}. Latest: "
            f"{latest}. Fix the data, or raise max_skip_fraction to accept more losses."
        )

    def _assemble(self, kept: list[tuple[Mapping[str, Any], _Row]], skipped: list[SkippedRow]) -> PromptBatch:
        length = max((prepared.input_ids.shape[0] for _, prepared in kept), default=0)
        # [B, L]: every prompt is right-aligned so that generation continues from the last column.
        input_ids = torch.full((len(kept), length), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(kept), length), dtype=torch.long)
        for i, (_, prepared) in enumerate(kept):
            n = prepared.input_ids.shape[0]
            input_ids[i, length - n :] = prepared.input_ids
            attention_mask[i, length - n :] = 1
        token_fields = {}
        names = [*self.layout.token_fields, *(name for _, prepared in kept for name in prepared.token_fields)]
        for name in dict.fromkeys(names):
            value = torch.zeros((len(kept), length), dtype=torch.long)  # [B, L], 0 (text) on the padding
            for i, (_, prepared) in enumerate(kept):
                piece = prepared.token_fields.get(name)
                if piece is not None:
                    value[i, length - piece.shape[0] :] = piece
            token_fields[name] = value
        return PromptBatch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_fields=token_fields,
            sample_multimodal_inputs=[prepared.multimodal_inputs for _, prepared in kept],
            prompts=[row["prompt"] for row, _ in kept],
            prompt_texts=[prepared.prompt_text for _, prepared in kept],
            columns={
                name: [row.get(name) for row, _ in kept]
                for name in dict.fromkeys(name for row, _ in kept for name in row)
                if name != "prompt" and name not in RESERVED_KEYS
            },
            skipped=skipped,
            sample_media=[prepared.media for _, prepared in kept],
            prompt_messages=[prepared.messages for _, prepared in kept],
        )

    # ------------------------------------------------------------------------------------------- any text

    def process_text(self, text: str, media: Mapping[str, Sequence[Any]] | None = None) -> ProcessedText:
        """
        A rendered text and its media (e.g. a tool turn's observation) through the loaders and the single processor
        call a prompt gets, with no special tokens added (the chat template wrote them).

        Args:
            text (`str`): the rendered text, one placeholder per media item.
            media (`Mapping[str, Sequence]`, *optional*): the items per kind (`"image"`, `"video"`, `"audio"`), in
                the order their placeholders appear, in any form a media column takes (PIL images, arrays, paths).

        Raises:
            `ValueError`: a kind the processor takes no media of, or an item or processor call that fails, named.
        """
        raw = {kind: list((media or {}).get(kind) or []) for kind in ("image", "video", "audio")}
        unknown = [kind for kind, items in raw.items() if items and kind not in self.media_kinds]
        if unknown:
            raise ValueError(
                f"{'/'.join(unknown)} given to {type(self.processing_class).__name__}, which processes "
                f"{'/'.join(self.media_kinds) or 'no media'}."
            )
        try:
            loaded = self._load_media(raw, {}, {}, [])
            input_ids, token_fields, multimodal_inputs = self._process(text, loaded, add_special_tokens=False)
        except RowRejected as error:
            raise ValueError(f"{error.reason}: {error.detail}") from error
        return ProcessedText(input_ids, token_fields, multimodal_inputs, {k: v for k, v in loaded.items() if v})

    # ---------------------------------------------------------------------------------------------- one row

    def _prepare_row(self, row: Mapping[str, Any], repairs: list[str]) -> _Row:
        """Validate, render, load and process one row; raises [`RowRejected`] with a reason code on any problem."""
        raw_media, columns = collect_media(row, self.layout, type(self.processing_class).__name__)
        decode_errors = row.get(MEDIA_ERRORS) or {}
        for column, error in decode_errors.items():
            if column not in columns.values():
                media_columns = ", ".join(name for names in MEDIA_COLUMNS.values() for name in names)
                raise RowRejected(
                    "undecodable_media",
                    f"datasets cannot decode it ({error}), and it is not a media column loaded here ({media_columns})",
                    column,
                )
        counts = {kind: len(items) for kind, items in raw_media.items()}
        tools = None if self.row_tools is None else self.row_tools(row)
        text, add_special_tokens, messages = self._render(row["prompt"], counts, columns, tools)
        media = self._load_media(raw_media, columns, decode_errors, repairs)
        input_ids, token_fields, multimodal_inputs = self._process(text, media, add_special_tokens)
        if self.prompt_max_len is not None and input_ids.shape[0] > self.prompt_max_len:
            raise RowRejected(
                "prompt_too_long",
                f"prompt has {input_ids.shape[0]} tokens after media expansion, above prompt_max_len="
                f"{self.prompt_max_len}",
            )
        loaded = {kind: items for kind, items in media.items() if items}
        return _Row(input_ids, token_fields, multimodal_inputs, text, loaded, messages)

    def _render(
        self, prompt: Any, counts: dict[str, int], columns: dict[str, str], tools: list | None = None
    ) -> tuple[str, bool, list | None]:
        """
        Render a prompt to text (with `tools` when given); returns it, whether the tokenizer should add its special
        tokens, and the messages rendered (`None` for a plain-text prompt).
        """
        messages = prompt_messages(prompt, counts, columns)
        if messages is None:
            return prompt, True, None
        # The template already holds every special token; letting the tokenizer add a BOS would double it.
        kwargs = self.chat_template_kwargs if tools is None else {**self.chat_template_kwargs, "tools": tools}
        text = self.processing_class.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False, **kwargs
        )
        return text, False, messages

    def _load_media(
        self,
        raw_media: dict[str, list[Any]],
        columns: dict[str, str],
        decode_errors: Mapping[str, str],
        repairs: list[str],
    ) -> dict[str, list[Any]]:
        """Load every item, naming the column (and the item of a list) that fails."""
        media: dict[str, list[Any]] = {}
        for kind, items in raw_media.items():
            column = columns.get(kind)
            media[kind] = []
            for position, item in enumerate(items):
                try:
                    media[kind].append(self._load_item(kind, item, repairs))
                except MediaError as error:
                    detail = error.detail if len(items) == 1 else f"item {position}: {error.detail}"
                    if column in decode_errors:
                        detail = f"{detail} (datasets: {decode_errors[column]})"
                    raise RowRejected(error.reason, detail, column) from error
            if items and column in decode_errors:
                # `datasets` could not decode the column (e.g. `Audio()` without torchcodec); the loaders here could.
                repairs.append(f"{kind}_decoded_by_rft_trl")
        return media

    def _load_item(self, kind: str, item: Any, repairs: list[str]) -> Any:
        if kind == "image":
            return load_image(item, self.image_bounds, repairs)
        if kind == "video":
            return load_video(item, self.video_bounds, repairs)
        return load_audio(item, self.sampling_rate, self.audio_max_samples, self.audio_too_long, repairs)

    def _process(
        self, text: str, media: dict[str, list[Any]], add_special_tokens: bool
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """
        One processor call for one row; returns its `[L]` token ids, its `[L]` per-token fields and its media
        fields, with the empty row of every batch-first field the row's media did not fill.
        """
        kwargs: dict[str, Any] = {"return_tensors": "pt", "add_special_tokens": add_special_tokens}
        # Media keywords the processor requires (Qwen3-ASR's `audio`) are `None` where the row has no such media.
        kwargs.update(dict.fromkeys(self.layout.required_arguments))
        if media["image"]:
            # Nested per row: some processors (LLaVA-OneVision) read a flat list as one image per row.
            kwargs["images"] = [media["image"]]
        if media["video"]:
            kwargs["videos"] = media["video"]
        if media["audio"]:
            kwargs["audio"] = media["audio"]
            kwargs["sampling_rate"] = self.sampling_rate
        self.processor_calls += 1
        self.media_processed.update({kind: len(items) for kind, items in media.items() if items})
        try:
            if isinstance(self.processing_class, ProcessorMixin):
                output = self.processing_class(text=[text], **kwargs)
            else:
                output = self.tokenizer([text], **kwargs)
        except ValueError as error:
            # The processor's own checks, e.g. placeholder tokens typed into the text that no media matches.
            raise RowRejected("processor_error", str(error)) from error
        input_ids, _, token_fields, media_fields = split_processor_output(
            output, media_field_names(self.processing_class)
        )
        for name, empty in self.layout.empty_rows.items():
            media_fields.setdefault(name, empty)
        return input_ids[0], {name: value[0] for name, value in token_fields.items()}, media_fields
