"""
Multi-turn rollouts with tools (TRL's `tools=`): the model calls a tool, reads what it returned, and goes on.

A completion whose parsed assistant message holds tool calls gets the tools run, the tool messages rendered by the
chat template appended as token ids (never a re-tokenization of decoded text), and the engine samples the next
assistant turn from `prompt + completion so far + tool turn`, until no turn calls a tool, `max_iterations` turns
have, or the completion budget is spent. The sequence trained on is exactly the ids sampled plus the ids of the
inserted tool turns; `tool_mask` marks the sampled ones (TRL's name: 1 sampled, 0 inserted), so that the inserted
ones are context, never trained on.

TRL's own chat-template utilities parse the responses (`parse_response`, with the schema `add_response_schema`
sets) and check the template (`supports_tool_calling`, `is_chat_template_prefix_preserving`).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from trl.chat_template_utils import parse_response

from ..data.collator import PromptBatch
from ..data.multimodal import concat_multimodal_inputs, repeat_multimodal_inputs
from .engine import Generation, RolloutEngine, generation_from_ids
from .observations import Observation, Process, observation_media, render_tool_turn

__all__ = ["MultiTurn", "ToolBox", "run_tool_turns"]

logger = logging.getLogger(__name__)


class ToolBox:
    """
    The tools a rollout's model may call: plain or async callables, called by their `__name__` with the arguments
    the model wrote (TRL's `tools`). Schemas come from their type hints and docstrings, through the chat template.

    Args:
        tools (`list[Callable]`): the tools.
    """

    def __init__(self, tools: list[Callable]):
        self.tools = list(tools)
        self.by_name: dict[str, Callable] = {}
        for tool in self.tools:
            if not callable(tool):
                raise TypeError(f"tools must be callables, got {type(tool).__name__}.")
            name = tool.__name__
            if name in self.by_name:
                raise ValueError(f"Two tools are named {name!r}: the model calls tools by name, so names must differ.")
            self.by_name[name] = tool

    def __bool__(self) -> bool:
        return bool(self.tools)

    def call(self, tool_calls: list[dict]) -> tuple[list[dict], int]:
        """
        Run one assistant turn's tool calls; async tools of the turn run concurrently.

        A call that fails (an unknown tool, bad arguments, an exception in the tool, a call type other than
        `"function"`) is answered with `{"error": "<message>"}`, as TRL does, and counted.

        Returns:
            `tuple[list[dict], int]`: the tool messages in call order (`{"role": "tool", "name", "content"}`; a tool
            returning a list of content blocks keeps them, any other result becomes its `str`), and the failures.
        """
        results: list[Any] = [None] * len(tool_calls)
        names = []
        failures = 0
        pending = {}
        for position, call in enumerate(tool_calls):
            function = call.get("function", {}) if call.get("type") == "function" else None
            name = function.get("name", "unknown") if function is not None else call.get("name", "unknown")
            names.append(name)
            try:
                if function is None:
                    raise ValueError(f"Unsupported tool call type: {call.get('type')}")
                if name not in self.by_name:
                    raise ValueError(f"Tool {name} not found.")
                result = self.by_name[name](**function.get("arguments", {}))
                if inspect.isawaitable(result):
                    pending[position] = result
                else:
                    results[position] = result
            except Exception as error:  # a tool's failure is the model's feedback, never the run's end
                failures += 1
                results[position] = {"error": str(error)}
        if pending:
            finished = _run_coroutines(list(pending.values()))
            for position, result in zip(pending, finished):
                if isinstance(result, Exception):
                    failures += 1
                    result = {"error": str(result)}
                results[position] = result
        messages = [
            {"role": "tool", "name": name, "content": result if isinstance(result, list) else str(result)}
            for name, result in zip(names, results)
        ]
        return messages, failures


def _run_coroutines(coroutines: list) -> list:
    async def gather():
        return await asyncio.gather(*coroutines, return_exceptions=True)

    return asyncio.run(gather())


@dataclass
class MultiTurn:
    """
    What the tool loop needs besides the engine.

    Args:
        tokenizer (`PreTrainedTokenizerBase`): the policy's tokenizer (with the response schema set).
        processing_class (`ProcessorMixin` or `PreTrainedTokenizerBase`): what renders the chat template.
        toolbox ([`ToolBox`]): the tools.
        max_iterations (`int`, *optional*): tool-calling turns per completion at most (TRL's
            `max_tool_calling_iterations`); `None` for no limit.
        max_completion_length (`int`): the completion budget over all turns, inserted tool turns included.
        max_model_len (`int`): the model's context; a tool turn that would reach it is dropped.
        eos_token_id (`int` or `list[int]`), pad_token_id (`int`): the generation's.
        chat_template_kwargs (`dict`): passed to `apply_chat_template` (the `tools`, and a training template where
            the model's own is not prefix-preserving).
        completion_token_types (`Callable`): the policy's
            [`~rft_trl.models.inputs.ModelInputs.completion_token_types`]: the per-token type of a sampled token.
        process (`Callable`, *optional*): renders a tool turn's text with its media into ids and media fields (the
            collator's [`~rft_trl.data.collator.PromptCollator.process_text`]); set with the collator.
        observation_kinds (`dict[str, str | None]`): per media kind the processor takes, `None` when a tool's answer
            of that kind composes exactly, else why not ([`~rft_trl.rollout.observations.check_observation_kind`]).
    """

    tokenizer: Any
    processing_class: Any
    toolbox: ToolBox
    max_iterations: int | None
    max_completion_length: int
    max_model_len: int
    eos_token_id: int | list[int]
    pad_token_id: int
    chat_template_kwargs: dict = field(default_factory=dict)
    completion_token_types: Callable[[dict], dict] = lambda token_fields: {}
    process: Process | None = None
    observation_kinds: dict[str, str | None] = field(default_factory=dict)
    _before: dict[str, list[int]] = field(default_factory=dict, repr=False)

    def parse(self, ids: list[int], prefix: list[int], toolbox: ToolBox | None = None) -> dict:
        """
        One assistant turn's message, tool calls parsed with the arguments typed by the tools' schemas (TRL's
        `parse_response`; plain text when malformed).
        """
        return parse_response(self.tokenizer, ids, prefix=prefix, tools=(toolbox or self.toolbox).tools)

    def observe(self, tool_messages: list[dict]) -> Observation:
        """
        The ids, per-token fields and media of a tool turn ([`~rft_trl.rollout.observations.render_tool_turn`]).

        Raises:
            `ValueError`: a tool answered with media of a kind this processor cannot take, or cannot take in a tool
                turn exactly (named with the reason found at construction).
        """
        for kind in observation_media(tool_messages):
            reason = self.observation_kinds.get(kind, f"{type(self.processing_class).__name__} takes no {kind}")
            if reason is not None:
                names = ", ".join(sorted({message["name"] for message in tool_messages}))
                article = "an" if kind[0] in "aeiou" else "a"
                raise ValueError(
                    f"Tool {names} answered with {article} {kind}, which cannot enter this rollout exactly: {reason}."
                )
        name = tool_messages[0]["name"]
        observation = render_tool_turn(
            self.processing_class,
            self.process,
            tool_messages,
            self.eos_token_id,
            self.chat_template_kwargs,
            before=self._before.get(name),
        )
        self._before[name] = observation.before  # the minimal conversation's ids depend on the tool's name only
        return observation


@dataclass
class ToolTurns:
    """
    A rollout's completions after the tool loop.

    Attributes:
        generation ([`Generation`]): the samples, each completion every turn's tokens end to end; `tool_mask` set,
            and `log_probs` where the engine reports them (each sampled turn's own, NaN on the inserted tool turns).
        conversations (`list[list[dict]]`): each completion as messages (assistant turns, tool calls parsed, and tool
            turns), as TRL hands reward functions a tool rollout's completions.
        calls (`int`), failures (`int`): the tool calls made, and those that failed.
    """

    generation: Generation
    conversations: list[list[dict]]
    calls: int
    failures: int


def run_tool_turns(
    engine: RolloutEngine,
    batch: PromptBatch,
    first: Generation,
    n: int,
    sampling_kwargs: dict,
    turns: MultiTurn,
    toolboxes: list[ToolBox] | None = None,
) -> ToolTurns:
    """
    Run the tools the completions of `first` call and sample the model's next turns, until none calls a tool.

    Each sample carries its whole context from turn to turn: the ids, the per-token fields (the prompt's and a tool
    turn's from the processor, a sampled token's the type the model's own `generate` gives it) and the media fields
    (the prompt's, then each tool turn's, in the order of their placeholders).

    Args:
        engine ([`RolloutEngine`]): samples each next turn (one completion per conversation).
        batch ([`PromptBatch`]): the prompts `first` was sampled from.
        first ([`Generation`]): `n` completions per prompt, prompt-major.
        n (`int`): completions per prompt.
        sampling_kwargs (`dict`): the rollout's sampling arguments.
        turns ([`MultiTurn`]): the tools and limits.
        toolboxes (`list[ToolBox]`, *optional*): each sample's own tools (an environment's methods bound to the
            sample's instance); `turns.toolbox` for every sample when not given.

    Returns:
        [`ToolTurns`]: its generation holds every sample's `token_fields`, `multimodal_inputs` and `observations`.
    """
    prompt_width = batch.input_ids.shape[1]
    prompt_mask = batch.attention_mask.bool().repeat_interleave(n, dim=0)  # [N, P]
    prompt_rows = batch.input_ids.repeat_interleave(n, dim=0)  # [N, P]
    prompts = [row[mask].tolist() for row, mask in zip(prompt_rows, prompt_mask)]
    completions = [
        row[prompt_width:][mask].tolist() for row, mask in zip(first.sequences, first.action_mask)
    ]  # each sample's tokens so far
    tool_masks = [[1] * len(ids) for ids in completions]
    generated = turns.completion_token_types(batch.token_fields)  # per field, [B]: a sampled token's type
    fields = [
        {
            name: value[i // n][prompt_mask[i]].tolist() + [int(generated[name][i // n])] * len(completions[i])
            for name, value in batch.token_fields.items()
        }
        for i in range(len(prompts))
    ]  # each sample's per-token fields so far
    media_inputs = repeat_multimodal_inputs(batch.sample_multimodal_inputs, n)  # each sample's media fields so far
    observed: list[dict[str, list]] = [{} for _ in prompts]  # each sample's tool-turn media, per kind
    # The engine's log-prob of each completion id (vLLM's), None on the inserted ones; None when it reports none.
    scores = None
    if first.log_probs is not None:
        scores = [row[mask].tolist() for row, mask in zip(first.log_probs, first.action_mask)]
    toolboxes = toolboxes or [turns.toolbox] * len(completions)
    messages = [turns.parse(ids, prefix, box) for ids, prefix, box in zip(completions, prompts, toolboxes)]
    conversations = [[message] for message in messages]
    calls = failures = 0
    max_model_len = min(turns.max_model_len, engine.max_model_len or turns.max_model_len)  # vLLM's may be shorter
    active = [i for i, message in enumerate(messages) if message.get("tool_calls")]
    iteration = 0
    while active and (turns.max_iterations is None or iteration < turns.max_iterations):
        continuing = []
        for i in active:
            tool_calls = messages[i]["tool_calls"]
            tool_messages, failed = toolboxes[i].call(tool_calls)
            calls, failures = calls + len(tool_calls), failures + failed
            observation = turns.observe(tool_messages)
            suffix = observation.ids
            if (
                len(completions[i]) + len(suffix) > turns.max_completion_length
                or len(prompts[i]) + len(completions[i]) + len(suffix) >= max_model_len
            ):
                continue  # no room for the tool turn: the completion ends as it is, without it
            conversations[i].extend(tool_messages)
            _append(fields[i], observation.token_fields, len(prompts[i]) + len(completions[i]), len(suffix))
            completions[i] += suffix
            tool_masks[i] += [0] * len(suffix)
            if observation.media:
                media_inputs[i] = concat_multimodal_inputs([media_inputs[i], observation.multimodal_inputs])
                for kind, items in observation.media.items():
                    observed[i].setdefault(kind, []).extend(items)
            if scores is not None:
                scores[i] += [None] * len(suffix)
            continuing.append(i)
        if not continuing:
            break
        context = _context_batch(
            [prompts[i] + completions[i] for i in continuing],
            [fields[i] for i in continuing],
            [media_inputs[i] for i in continuing],
            turns.pad_token_id,
        )
        following = engine.generate(context, 1, sampling_kwargs)
        types = turns.completion_token_types(context.token_fields)  # per field, [len(continuing)]
        width = following.sequences.shape[1] - following.action_mask.shape[1]
        active = []
        for row, i in enumerate(continuing):
            sampled = following.sequences[row, width:][following.action_mask[row]].tolist()
            sampled = sampled[: max(turns.max_completion_length - len(completions[i]), 0)]
            if not sampled:
                continue
            message = turns.parse(sampled, prompts[i] + completions[i], toolboxes[i])
            values = {name: [int(value[row])] * len(sampled) for name, value in types.items()}
            _append(fields[i], values, len(prompts[i]) + len(completions[i]), len(sampled))
            completions[i] += sampled
            tool_masks[i] += [1] * len(sampled)
            if scores is not None:
                scores[i] += following.log_probs[row][following.action_mask[row]][: len(sampled)].tolist()
            conversations[i].append(message)
            messages[i] = message
            if message.get("tool_calls"):
                active.append(i)
        iteration += 1
    generation = generation_from_ids(prompts, completions, turns.pad_token_id, tool_masks=tool_masks, log_probs=scores)
    generation.token_fields = _pad_fields(fields, [len(ids) for ids in prompts], generation.action_mask.shape[1])
    generation.multimodal_inputs = media_inputs
    generation.observations = observed
    return ToolTurns(generation, conversations, calls, failures)


def _append(fields: dict[str, list[int]], values: dict[str, list[int]], length: int, count: int) -> None:
    """Extend a sample's per-token fields (each `length` long) by `count` tokens' `values` (0 where none given)."""
    for name in values.keys() - fields.keys():
        fields[name] = [0] * length
    for name, column in fields.items():
        column.extend(values.get(name, [0] * count))


def _pad_fields(fields: list[dict[str, list[int]]], prompt_lengths: list[int], width: int) -> dict[str, torch.Tensor]:
    """
    Per field, `[N, P + A]`: each sample's prompt part left-padded to the longest prompt and its completion part
    right-padded to `width`, with 0 (the text type, as the collator pads).
    """
    prompt_width = max(prompt_lengths, default=0)
    names = dict.fromkeys(name for sample in fields for name in sample)
    padded = {}
    for name in names:
        value = torch.zeros((len(fields), prompt_width + width), dtype=torch.long)  # [N, P + A]
        for row, (sample, length) in enumerate(zip(fields, prompt_lengths)):
            column = sample.get(name)
            if column is None:
                continue
            value[row, prompt_width - length : prompt_width] = torch.tensor(column[:length], dtype=torch.long)
            completion = column[length:]
            value[row, prompt_width : prompt_width + len(completion)] = torch.tensor(completion, dtype=torch.long)
        padded[name] = value
    return padded


def _context_batch(
    contexts: list[list[int]],
    fields: list[dict[str, list[int]]],
    media_inputs: list[dict[str, torch.Tensor]],
    pad_token_id: int,
) -> PromptBatch:
    """Each sample's context (its ids, per-token fields and media fields) as a left-padded [`PromptBatch`]."""
    width = max(len(ids) for ids in contexts)
    input_ids = torch.full((len(contexts), width), pad_token_id, dtype=torch.long)  # [B, W]
    attention_mask = torch.zeros((len(contexts), width), dtype=torch.long)  # [B, W]
    names = dict.fromkeys(name for sample in fields for name in sample)
    token_fields = {name: torch.zeros((len(contexts), width), dtype=torch.long) for name in names}  # each [B, W]
    for row, ids in enumerate(contexts):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids) :] = 1
        for name, column in fields[row].items():
            token_fields[name][row, width - len(column) :] = torch.tensor(column, dtype=torch.long)
    return PromptBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        token_fields=token_fields,
        sample_multimodal_inputs=list(media_inputs),
        prompts=[None] * len(contexts),
        prompt_texts=[""] * len(contexts),
        columns={},
    )
