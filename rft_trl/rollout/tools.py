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
from .engine import Generation, RolloutEngine, generation_from_ids

__all__ = ["MultiTurn", "ToolBox", "run_tool_turns", "tool_suffix_ids"]

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


def tool_suffix_ids(
    processing_class: Any,
    tool_messages: list[dict],
    eos_token_id: int | list[int],
    chat_template_kwargs: dict | None = None,
) -> list[int]:
    """
    The token ids the chat template puts after an assistant turn that called tools: the tool messages, then the
    next assistant turn's header.

    Rendered on a minimal conversation (a user message, an assistant message calling the first message's tool) with
    and without `tool_messages`; the difference is the suffix. The boundary is the last end-of-turn token of the
    shorter rendering, as generation stops right after it (a template's newline after it belongs to the suffix).

    Raises:
        `ValueError`: the shorter rendering is not a prefix of the longer one (a template that rewrites earlier
            turns; [`MultiTurn`] refuses those at construction).
    """
    kwargs = dict(chat_template_kwargs or {})
    call = {"type": "function", "function": {"name": tool_messages[0]["name"], "arguments": {}}}
    conversation = [{"role": "user", "content": "dummy"}, {"role": "assistant", "content": "", "tool_calls": [call]}]
    before = processing_class.apply_chat_template(
        conversation, add_generation_prompt=False, tokenize=True, return_dict=False, **kwargs
    )
    after = processing_class.apply_chat_template(
        conversation + tool_messages, add_generation_prompt=True, tokenize=True, return_dict=False, **kwargs
    )
    eos = set(torch.as_tensor(eos_token_id).flatten().tolist())
    ends = [i for i, token in enumerate(before) if token in eos]
    if ends:
        before = before[: ends[-1] + 1]
    if after[: len(before)] != before:
        raise ValueError(
            "The chat template renders the assistant's tool-calling turn differently once tool messages follow it: "
            "a tool turn cannot be appended as token ids."
        )
    return list(after[len(before) :])


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

    def parse(self, ids: list[int], prefix: list[int], toolbox: ToolBox | None = None) -> dict:
        """
        One assistant turn's message, tool calls parsed with the arguments typed by the tools' schemas (TRL's
        `parse_response`; plain text when malformed).
        """
        return parse_response(self.tokenizer, ids, prefix=prefix, tools=(toolbox or self.toolbox).tools)


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

    Args:
        engine ([`RolloutEngine`]): samples each next turn (one completion per conversation).
        batch ([`PromptBatch`]): the prompts `first` was sampled from (text prompts).
        first ([`Generation`]): `n` completions per prompt, prompt-major.
        n (`int`): completions per prompt.
        sampling_kwargs (`dict`): the rollout's sampling arguments.
        turns ([`MultiTurn`]): the tools and limits.
        toolboxes (`list[ToolBox]`, *optional*): each sample's own tools (an environment's methods bound to the
            sample's instance); `turns.toolbox` for every sample when not given.

    Returns:
        [`ToolTurns`].
    """
    prompt_width = batch.input_ids.shape[1]
    prompt_mask = batch.attention_mask.bool().repeat_interleave(n, dim=0)  # [N, P]
    prompt_rows = batch.input_ids.repeat_interleave(n, dim=0)  # [N, P]
    prompts = [row[mask].tolist() for row, mask in zip(prompt_rows, prompt_mask)]
    completions = [
        row[prompt_width:][mask].tolist() for row, mask in zip(first.sequences, first.action_mask)
    ]  # each sample's tokens so far
    tool_masks = [[1] * len(ids) for ids in completions]
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
        continuing, contexts = [], []
        for i in active:
            tool_calls = messages[i]["tool_calls"]
            tool_messages, failed = toolboxes[i].call(tool_calls)
            calls, failures = calls + len(tool_calls), failures + failed
            suffix = tool_suffix_ids(
                turns.processing_class, tool_messages, turns.eos_token_id, turns.chat_template_kwargs
            )
            context = prompts[i] + completions[i] + suffix
            if len(completions[i]) + len(suffix) > turns.max_completion_length or len(context) >= max_model_len:
                continue  # no room for the tool turn: the completion ends as it is, without it
            conversations[i].extend(tool_messages)
            completions[i] += suffix
            tool_masks[i] += [0] * len(suffix)
            if scores is not None:
                scores[i] += [None] * len(suffix)
            continuing.append(i)
            contexts.append(context)
        if not continuing:
            break
        following = engine.generate(_context_batch(contexts, turns.pad_token_id), 1, sampling_kwargs)
        width = following.sequences.shape[1] - following.action_mask.shape[1]
        active = []
        for row, i in enumerate(continuing):
            sampled = following.sequences[row, width:][following.action_mask[row]].tolist()
            sampled = sampled[: max(turns.max_completion_length - len(completions[i]), 0)]
            if not sampled:
                continue
            message = turns.parse(sampled, prompts[i] + completions[i], toolboxes[i])
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
    return ToolTurns(generation, conversations, calls, failures)


def _context_batch(contexts: list[list[int]], pad_token_id: int) -> PromptBatch:
    """Token-id contexts as a left-padded text [`PromptBatch`] an engine samples from."""
    width = max(len(ids) for ids in contexts)
    input_ids = torch.full((len(contexts), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(contexts), width), dtype=torch.long)
    for row, ids in enumerate(contexts):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids) :] = 1
    return PromptBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        token_fields={},
        sample_multimodal_inputs=[{} for _ in contexts],
        prompts=[None] * len(contexts),
        prompt_texts=[""] * len(contexts),
        columns={},
    )
