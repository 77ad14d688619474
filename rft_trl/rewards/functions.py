"""Rule rewards for the short-answer tasks (colour, count, yes/no ...) that rft_trl trains and tests on.

Every function follows TRL's reward-function contract: ``f(prompts, completions, **columns) -> list[float]``,
where ``prompts`` and ``completions`` are lists of strings or of chat-message lists, and each extra dataset column
arrives as a keyword list aligned with them. They return one float per sample and raise on a sample they cannot
judge (a missing reference answer, say), which [`RewardScorer`] isolates and reports instead of scoring 0.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from typing import Any

# The optional answer tag; the last one wins, because models that "think aloud" often quote a tag before the
# final one.
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
# One think block, then a non-empty answer. The negative lookaheads reject a second <think> or </think>, which
# would otherwise let a model hide text between two blocks.
_THINK_FORMAT = re.compile(
    r"\s*<think>(?:(?!</?think>).)*</think>(?:(?!</?think>).)*\S(?:(?!</?think>).)*", re.DOTALL | re.IGNORECASE
)
# Characters stripped from both ends of an answer: ASCII punctuation and quotes, so "Red." and "'red'" match "red".
_EDGE_PUNCTUATION = string.punctuation + string.whitespace + "\u201c\u201d\u2018\u2019"


def completion_text(completion: str | Sequence[dict[str, Any]]) -> str:
    """
    The text of one completion.

    Args:
        completion (`str` or `list[dict]`):
            A plain string, or a conversational completion: a list of chat messages whose ``content`` is a string
            or a list of content parts (``{"type": "text", "text": ...}``; other parts are ignored).

    Returns:
        `str`: the string itself, or the text of the last message.
    """
    if isinstance(completion, str):
        return completion
    if len(completion) == 0:
        return ""
    content = completion[-1]["content"]
    if isinstance(content, str):
        return content
    return "".join(part["text"] for part in content if part["type"] == "text")


def extract_answer(text: str) -> str:
    """
    The answer in a completion: the content of the last ``<answer>...</answer>`` tag if there is one, else the whole
    text, with surrounding whitespace and punctuation removed.

    Args:
        text (`str`): the completion text.

    Returns:
        `str`: the answer, possibly empty.
    """
    tagged = _ANSWER_TAG.findall(text)
    answer = tagged[-1] if tagged else text
    return answer.strip(_EDGE_PUNCTUATION)


def normalize_answer(answer: Any) -> str:
    """
    Normalize an answer for comparison: ``str()`` of it (so ``3`` and ``"3"`` compare equal), surrounding whitespace
    and punctuation stripped, inner whitespace collapsed to single spaces, case folded.

    Args:
        answer (`Any`): a string or a number.

    Returns:
        `str`: the normalized answer.
    """
    return " ".join(str(answer).strip(_EDGE_PUNCTUATION).split()).casefold()


def accuracy_reward(prompts: list, completions: list, answer: list, **columns: Any) -> list[float]:
    """
    1.0 where the completion's answer equals the reference in the ``answer`` column, 0.0 elsewhere.

    The comparison ignores case, surrounding whitespace and punctuation, and an optional ``<answer>...</answer>``
    tag on either side: ``"<answer> Red. </answer>"`` matches ``"red"``, and ``"3"`` matches the reference
    ``"<answer> 3 </answer>"``. Numbers are compared as their ``str()``.

    Args:
        prompts (`list`): the prompts (unused; part of the contract).
        completions (`list[str]` or `list[list[dict]]`): the completions.
        answer (`list[str | int | float]`): the reference answers, one per completion.
        **columns: the other dataset columns (unused).

    Returns:
        `list[float]`: one 1.0 / 0.0 per completion.

    Raises:
        ValueError: if a reference answer is ``None`` or empty; the scorer then marks that sample failed rather
            than scoring it 0.
    """
    rewards = []
    for completion, reference in zip(completions, answer, strict=True):
        # A reference may be tagged like a completion (R1-V's CLEVR solutions are "<answer> 3 </answer>").
        expected = (
            ""
            if reference is None
            else normalize_answer(extract_answer(reference) if isinstance(reference, str) else reference)
        )
        if expected == "":
            raise ValueError(f"accuracy_reward needs a reference answer, got {reference!r}")
        predicted = normalize_answer(extract_answer(completion_text(completion)))
        rewards.append(float(predicted == expected))
    return rewards


def format_reward(prompts: list, completions: list, max_words: int = 3, **columns: Any) -> list[float]:
    """
    1.0 where the completion is a single short answer, 0.0 elsewhere.

    A single short answer is either bare text or one ``<answer>...</answer>`` tag with nothing but whitespace around
    it, whose content is one line of 1 to ``max_words`` words. Bind another ``max_words`` with
    ``functools.partial(format_reward, max_words=5)``.

    Args:
        prompts (`list`): the prompts (unused; part of the contract).
        completions (`list[str]` or `list[list[dict]]`): the completions.
        max_words (`int`, *optional*, defaults to `3`): the longest answer, in whitespace-separated words.
        **columns: the dataset columns (unused).

    Returns:
        `list[float]`: one 1.0 / 0.0 per completion.
    """
    if max_words < 1:
        raise ValueError(f"max_words must be at least 1, got {max_words}")
    rewards = []
    for completion in completions:
        text = completion_text(completion).strip()
        tags = _ANSWER_TAG.findall(text)
        # A stray or unclosed tag is a format error too.
        if len(tags) > 1 or "answer>" in _ANSWER_TAG.sub("", text).lower():
            rewards.append(0.0)
            continue
        if tags:
            if _ANSWER_TAG.fullmatch(text) is None:
                rewards.append(0.0)
                continue
            text = tags[0].strip()
        words = text.split()
        rewards.append(float("\n" not in text and 1 <= len(words) <= max_words))
    return rewards


def think_format_reward(prompts: list, completions: list, **columns: Any) -> list[float]:
    """
    1.0 where the completion is one ``<think>...</think>`` block followed by a non-empty answer, 0.0 elsewhere.

    Args:
        prompts (`list`): the prompts (unused; part of the contract).
        completions (`list[str]` or `list[list[dict]]`): the completions.
        **columns: the dataset columns (unused).

    Returns:
        `list[float]`: one 1.0 / 0.0 per completion.
    """
    return [float(_THINK_FORMAT.fullmatch(completion_text(c)) is not None) for c in completions]
