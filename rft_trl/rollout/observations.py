"""
What a tool or environment turn inserts into a multi-turn rollout: its messages, as the policy's chat template renders
them and its processor processes them, media included.

A tool may answer with text or with content blocks (TRL's multimodal tool responses:
`[{"type": "image", "image": <PIL image>}, {"type": "text", "text": "..."}]`; `"video"` and `"audio"` blocks alike).
The blocks' media go through the loaders and the one processor call a prompt's media get
([`~rft_trl.data.collator.PromptCollator.process_text`]), so that the inserted ids carry the processor's own
placeholder expansion, the inserted per-token fields its token types, and the sample's media fields grow by the
observation's, in the order their placeholders appear.

That composition (the prompt processed alone, then each turn appended) is exact only when the processor gives the same
ids, token types and media fields as it gives the whole conversation processed at once. [`check_observation_kind`]
proves it on the user's processor at construction, one media kind at a time, and names what differs otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..data.collator import ProcessedText
from ..data.multimodal import MEDIA_KINDS, concat_multimodal_inputs, synthetic_media

__all__ = ["Observation", "check_observation_kind", "observation_media", "render_tool_turn"]

# Renders a text and processes it with its media (`PromptCollator.process_text`).
Process = Callable[[str, Mapping[str, Sequence[Any]] | None], ProcessedText]


@dataclass
class Observation:
    """
    A tool turn's inserted ids, after an assistant turn that called tools and up to the next assistant header.

    Attributes:
        ids (`list[int]`): the inserted token ids, media placeholders expanded.
        token_fields (`dict[str, list[int]]`): the processor's per-token fields over `ids`.
        multimodal_inputs (`dict[str, torch.Tensor]`): the media fields of its media (`{}` without media).
        media (`dict[str, list]`): its loaded media per kind (`{}` without media).
        before (`list[int]`): the ids of the minimal conversation it was cut from (what `render_tool_turn` may be
            given again for a tool of the same name).
    """

    before: list[int]
    ids: list[int]
    token_fields: dict[str, list[int]]
    multimodal_inputs: dict[str, torch.Tensor]
    media: dict[str, list[Any]]


def observation_media(messages: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """
    The media of tool messages' content blocks per kind, in the order they appear (`{}` for text answers).

    Raises:
        `ValueError`: a media block without its item (`{"type": "image"}` rather than `{"type": "image", "image": x}`).
    """
    media: dict[str, list[Any]] = {}
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind not in MEDIA_KINDS:
                continue
            if part.get(kind) is None:
                raise ValueError(
                    f"Tool {message.get('name')!r} returned a {kind!r} block without its {kind}: return "
                    f"{{'type': '{kind}', '{kind}': <the {kind}>}}."
                )
            media.setdefault(kind, []).append(part[kind])
    return media


def render_tool_turn(
    processing_class: Any,
    process: Process,
    tool_messages: list[dict],
    eos_token_id: int | list[int],
    chat_template_kwargs: Mapping[str, Any] | None = None,
    before: list[int] | None = None,
) -> Observation:
    """
    The ids the chat template puts after an assistant turn that called tools: the tool messages, then the next
    assistant turn's header, processed with the messages' media.

    Rendered on a minimal conversation (a user message, an assistant message calling the first message's tool) with
    and without `tool_messages` (TRL's way); the difference is the suffix. The boundary is the last end-of-turn token
    of the shorter rendering, as generation stops right after it (a template's newline after it belongs to the
    suffix).

    Args:
        before (`list[int]`, *optional*): the shorter rendering's ids, when already known (they depend on the tool's
            name only; [`~rft_trl.rollout.tools.MultiTurn`] keeps them per name).

    Raises:
        `ValueError`: the shorter rendering is not a prefix of the longer one (a template that rewrites earlier turns;
            such templates are refused at construction).
    """
    kwargs = dict(chat_template_kwargs or {})
    call = {"type": "function", "function": {"name": tool_messages[0]["name"], "arguments": {}}}
    conversation = [{"role": "user", "content": "dummy"}, {"role": "assistant", "content": "", "tool_calls": [call]}]
    if before is None:
        before = process(
            processing_class.apply_chat_template(conversation, add_generation_prompt=False, tokenize=False, **kwargs)
        ).input_ids.tolist()
    media = observation_media(tool_messages)
    after = process(
        processing_class.apply_chat_template(
            conversation + tool_messages, add_generation_prompt=True, tokenize=False, **kwargs
        ),
        media,
    )
    eos = set(torch.as_tensor(eos_token_id).flatten().tolist())
    before_ids = before
    ends = [i for i, token in enumerate(before) if token in eos]
    if ends:
        before = before[: ends[-1] + 1]
    ids = after.input_ids.tolist()
    if ids[: len(before)] != before:
        raise ValueError(
            "The chat template renders the assistant's tool-calling turn differently once tool messages follow it: "
            "a tool turn cannot be appended as token ids."
        )
    return Observation(
        before=before_ids,
        ids=ids[len(before) :],
        token_fields={name: value[len(before) :].tolist() for name, value in after.token_fields.items()},
        multimodal_inputs=after.multimodal_inputs if after.media else {},
        media=after.media,
    )


def check_observation_kind(
    kind: str,
    processing_class: Any,
    process: Process,
    completion_token_types: Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]],
    eos_token_id: int | list[int],
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> str | None:
    """
    Whether a tool answering with an item of `kind` composes exactly on this processor: `None` if so, else what
    differs.

    A conversation (a user message with one item, an assistant turn calling a tool, the tool answering with another
    item) is processed whole, once, and composed as the rollout composes it: the prompt processed alone, the
    assistant's ids with the type the model's own `generate` gives a generated token, then [`render_tool_turn`]. The
    ids, every per-token field and every media field must be equal.

    Args:
        kind (`str`): `"image"`, `"video"` or `"audio"`, a kind the processor takes.
        processing_class: the policy's processor.
        process: [`~rft_trl.data.collator.PromptCollator.process_text`].
        completion_token_types: [`~rft_trl.models.inputs.ModelInputs.completion_token_types`] of the policy.
        eos_token_id (`int` or `list[int]`): the generation's end-of-turn tokens.
        chat_template_kwargs (`Mapping`, *optional*): as the rollout renders (the tools, a training template).
    """
    kwargs = dict(chat_template_kwargs or {})
    item = synthetic_media(kind, processing_class)
    user = {"role": "user", "content": [{"type": kind}, {"type": "text", "text": "Look."}]}
    call = {"type": "function", "function": {"name": "observe", "arguments": {}}}
    assistant = {"role": "assistant", "content": "", "tool_calls": [call]}
    answer = [{"type": kind, kind: item}, {"type": "text", "text": "Seen."}]
    tool = {"role": "tool", "name": "observe", "content": answer}
    try:
        prompt = process(
            processing_class.apply_chat_template([user], add_generation_prompt=True, tokenize=False, **kwargs),
            {kind: [item]},
        )
        whole = process(
            processing_class.apply_chat_template(
                [user, assistant, tool], add_generation_prompt=True, tokenize=False, **kwargs
            ),
            {kind: [item, item]},
        )
        turn = render_tool_turn(processing_class, process, [tool], eos_token_id, kwargs)
    except ValueError as error:
        return f"the processor fails on a tool's {kind} ({error})"
    ids, start, end = whole.input_ids.tolist(), prompt.input_ids.shape[0], len(whole.input_ids) - len(turn.ids)
    if not turn.media:
        return f"the chat template renders no placeholder for a {kind} in a tool message"
    if ids[:start] != prompt.input_ids.tolist() or ids[end:] != turn.ids or end <= start:
        return f"the ids of a tool's {kind} differ from those of the whole conversation processed at once"
    generated = completion_token_types({name: value[None] for name, value in prompt.token_fields.items()})
    for name, value in whole.token_fields.items():
        if name not in prompt.token_fields or name not in turn.token_fields:
            return f"the per-token field {name!r} is missing from a part processed alone"
        composed = [
            *prompt.token_fields[name].tolist(),
            *[int(generated[name][0])] * (end - start),
            *turn.token_fields[name],
        ]
        if composed != value.tolist():
            return f"the per-token field {name!r} differs from the whole conversation's (the tokens' types)"
    composed = concat_multimodal_inputs([prompt.multimodal_inputs, turn.multimodal_inputs])
    for name in sorted(set(composed) | set(whole.multimodal_inputs)):
        ours, theirs = composed.get(name), whole.multimodal_inputs.get(name)
        if ours is None or theirs is None or ours.shape != theirs.shape or not torch.equal(ours, theirs):
            shapes = [None if t is None else tuple(t.shape) for t in (ours, theirs)]
            return (
                f"the media field {name!r} of the prompt and the tool turn, laid end to end, differs from the whole "
                f"conversation's (shapes {shapes[0]} vs {shapes[1]})"
            )
    return None
