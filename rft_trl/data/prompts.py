"""
A row's prompt and media columns, checked against each other before anything is loaded: the media items per kind, and
the chat messages that carry one media part per item.

- chat messages keep their media parts, which must match the row's items in number per kind; messages without any
  get one part per item before the text of their first user message with plain string content (TRL's convention);
- a plain-string prompt *with* media becomes one user message whose content is the media parts (images, then videos,
  then audio, in column order) followed by the text;
- a plain-string prompt *without* media stays text, as in TRL's "standard" (non-conversational) format.

A row that breaks these rules raises [`RowRejected`] with a reason code and the column at fault, for the collator to
skip and count.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from .multimodal import MEDIA_KINDS, ProcessorLayout

# Media columns per kind: a single item, or a list of items.
MEDIA_COLUMNS = {"image": ("image", "images"), "video": ("video", "videos"), "audio": ("audio", "audios")}


class RowRejected(Exception):
    """
    A row that cannot be used.

    Args:
        reason (`str`): a code, counted under `data/skipped/<reason>` (`"media_mismatch"`, `"missing_image"`, ...).
        detail (`str`): what is wrong, for the log.
        column (`str`, *optional*): the column at fault, when one is.
    """

    def __init__(self, reason: str, detail: str, column: str | None = None):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.column = column


def collect_media(
    row: Mapping[str, Any], layout: ProcessorLayout, processor_name: str
) -> tuple[dict[str, list[Any]], dict[str, str]]:
    """
    The raw media items of a row per kind, from its singular or plural column, and the column of each kind the row
    has (holding items, an empty list or `None`).

    Args:
        row (`Mapping[str, Any]`): the dataset row.
        layout ([`~rft_trl.data.multimodal.ProcessorLayout`]): the media kinds the processor takes, and those it
            refuses.
        processor_name (`str`): the processor's class name, for the message that refuses a kind it cannot take.

    Raises:
        [`RowRejected`]: a media column the processor cannot use, or one that holds `None` items or a non-list.
    """
    media: dict[str, list[Any]] = {}
    columns: dict[str, str] = {}
    for kind, (single, plural) in MEDIA_COLUMNS.items():
        one, many = row.get(single), row.get(plural)
        if one is not None and many is not None:
            raise RowRejected("media_mismatch", f"row has both {single!r} and {plural!r}; use one")
        column = plural if many is not None or (one is None and plural in row) else single
        if column in row:
            columns[kind] = column
        if many is not None and not isinstance(many, (list, tuple)):
            raise RowRejected(
                "unsupported_input", f"column {plural!r} must hold a list, got {type(many).__name__}", plural
            )
        items = [one] if one is not None else list(many or [])
        if any(item is None for item in items):
            raise RowRejected(f"missing_{kind}", f"column {plural!r} holds None where a {kind} should be", plural)
        if items and kind in layout.unusable:
            raise RowRejected("unsupported_media", layout.unusable[kind], column)
        if len(items) > 1 and kind in layout.one_per_prompt:
            raise RowRejected(
                "unsupported_media", f"row has {len(items)} {kind}s: {layout.one_per_prompt[kind]}", column
            )
        if items and kind not in layout.media_kinds:
            raise RowRejected(
                "unsupported_media",
                f"row has {len(items)} {kind}(s) but {processor_name} cannot process "
                f"{kind}s (it takes {', '.join(layout.media_kinds) or 'text only'})",
                column,
            )
        media[kind] = items
    if layout.text_only_error is not None and not any(media.values()):
        raise RowRejected("unsupported_input", layout.text_only_error)
    return media, columns


def prompt_messages(prompt: Any, counts: dict[str, int], columns: dict[str, str]) -> list[Mapping[str, Any]] | None:
    """
    The chat messages a prompt is rendered from, one media part per item; `None` for a plain-text prompt without
    media, which is used verbatim.

    Args:
        prompt (`str` or `list[dict]`): the row's `prompt`.
        counts (`dict[str, int]`): the row's media items per kind.
        columns (`dict[str, str]`): the media column of each kind the row has (see [`collect_media`]).

    Raises:
        [`RowRejected`]: a malformed prompt, or media parts that do not match the row's items.
    """
    if isinstance(prompt, str):
        if not any(counts.values()):
            return None
        # Media first, then the question: the layout of the common VQA / audio-QA chat datasets.
        parts = [{"type": kind} for kind in MEDIA_KINDS for _ in range(counts[kind])]
        prompt = [{"role": "user", "content": [*parts, {"type": "text", "text": prompt}]}]
    elif not isinstance(prompt, list) or not prompt:
        raise RowRejected("bad_prompt", f"prompt must be a string or a non-empty list of messages, got {prompt!r:.80}")
    placeholders = _count_placeholders(prompt)
    if not placeholders and any(counts.values()):
        prompt = _with_media_parts(prompt, counts)
        placeholders = _count_placeholders(prompt)
    for kind in MEDIA_KINDS:
        if placeholders[kind] == counts[kind]:
            continue
        column = columns.get(kind)
        if counts[kind] == 0 and column is not None:
            # A column of the row holds None (or nothing) where the prompt wants media: the item is missing.
            raise RowRejected(
                f"missing_{kind}",
                f"prompt has {placeholders[kind]} {kind} part(s) but the column holds no {kind}",
                column,
            )
        raise RowRejected(
            "media_mismatch",
            f"prompt has {placeholders[kind]} {kind} part(s) but the row has {counts[kind]} {kind}(s)",
            column,
        )
    return prompt


def _count_placeholders(messages: list[Any]) -> Counter[str]:
    placeholders: Counter[str] = Counter()
    for message in messages:
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise RowRejected("bad_prompt", f"message {message!r:.80} needs 'role' and 'content'")
        content = message["content"]
        if isinstance(content, str):
            continue
        if not isinstance(content, list) or not all(isinstance(part, Mapping) for part in content):
            raise RowRejected(
                "bad_prompt", f"message content must be a string or a list of parts, got {content!r:.80}"
            )
        placeholders.update(part.get("type") for part in content if part.get("type") in MEDIA_KINDS)
    return placeholders


def _with_media_parts(messages: list[Mapping[str, Any]], counts: dict[str, int]) -> list[Mapping[str, Any]]:
    """
    TRL's convention for a chat prompt without media parts whose row has media: the first user message with plain
    string content gets one part per media item before its text (as `trl.data_utils.prepare_multimodal_messages`
    does for images). The prompt is returned unchanged when it has no such message.
    """
    for index, message in enumerate(messages):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            parts = [{"type": kind} for kind in MEDIA_KINDS for _ in range(counts[kind])]
            content = [*parts, {"type": "text", "text": message["content"]}]
            return [*messages[:index], {**message, "content": content}, *messages[index + 1 :]]
    return messages
