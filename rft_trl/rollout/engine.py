"""
Rollout engines: what samples the completions of a rollout.

The experience maker hands an engine a [`PromptBatch`] (the processor's token ids and each prompt's loaded media)
and gets back, for `n` samples per prompt in prompt-major order, the padded completions with their masks and, when
the engine reports them, the per-token log-probs it sampled with. Nothing else in the trainer knows which engine
runs: `"hf"` is the policy's own `generate`; `"vllm"` is vLLM, in this process or behind a server
(`rft_trl.rollout.vllm`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..data.collator import PromptBatch
from ..data.multimodal import concat_multimodal_inputs, repeat_multimodal_inputs


@dataclass
class Generation:
    """
    One engine call's samples, `N = len(batch) * n` rows in prompt-major order.

    Args:
        sequences (`torch.LongTensor` of shape `[N, P + A]`): the left-padded prompt then the completion,
            right-padded with the pad token.
        attention_mask (`torch.LongTensor` of shape `[N, P + A]`): 1 on prompt and completion tokens.
        action_mask (`torch.BoolTensor` of shape `[N, A]`): the completion tokens, up to and including the first EOS.
        log_probs (`torch.Tensor` of shape `[N, A]`, *optional*): the engine's log-prob of each sampled token (after
            temperature, as the trainer computes them); `None` when the engine reports none.
        tool_mask (`torch.BoolTensor` of shape `[N, A]`, *optional*): in a multi-turn completion, `True` on the tokens
            the model sampled and `False` on the tool turns inserted between them (`rft_trl.rollout.tools`); `None`
            when every completion token was sampled.
        token_fields (`dict[str, torch.LongTensor]`, *optional*): each `[N, P + A]`, the per-token fields of a
            multi-turn sample's whole sequence, inserted turns' types included; `None`: the prompt's, extended over
            the completion as the model's `generate` extends them.
        multimodal_inputs (`list[dict[str, torch.Tensor]]`, *optional*): each sample's media fields when a tool
            turn added media to them; `None`: its prompt's.
        observations (`list[dict[str, list]]`, *optional*): each sample's tool-turn media per kind, as loaded.
    """

    sequences: torch.Tensor
    attention_mask: torch.Tensor
    action_mask: torch.Tensor
    log_probs: torch.Tensor | None = None
    tool_mask: torch.Tensor | None = None
    token_fields: dict[str, torch.Tensor] | None = None
    multimodal_inputs: list[dict[str, torch.Tensor]] | None = None
    observations: list[dict[str, list]] | None = None


class RolloutEngine:
    """
    The interface every rollout engine implements.

    Attributes:
        max_model_len (`int`, *optional*): the longest sequence (prompt and completion) the engine takes, where it is
            shorter than the model's context (vLLM's `max_model_len`, which refuses a longer prompt); `None`: the
            model's own.
    """

    name = "engine"
    max_model_len: int | None = None

    def generate(self, batch: PromptBatch, n: int, sampling_kwargs: dict) -> Generation:
        """Sample `n` completions per prompt of `batch` with `sampling_kwargs` (`RFTConfig.sampling_kwargs()`)."""
        raise NotImplementedError

    def sync_weights(self, model: nn.Module, version: int) -> bool:
        """
        Bring the engine's weights to `model`'s, `version` naming them (the optimizer step). Returns whether anything
        was sent: an engine skips a version it already holds.
        """
        return False

    def seed_rollout(self, step: int, stream: int = 0) -> None:
        """
        Seed the sampling of the rollout trained from optimizer step `step` (`stream` 1: an evaluation's, 2: dynamic
        sampling's extra rounds), so that it
        draws the same completions whenever and wherever it is generated: in turn, ahead of its turn
        (`async_rollouts`) or after a resume. transformers' `generate` draws from torch's RNG, which the Trainer
        checkpoints: nothing to do here; vLLM seeds each call.
        """

    def sleep(self) -> None:
        """Release what the engine holds on the accelerator while the trainer updates (vLLM's sleep mode)."""

    def wake_up(self) -> None:
        """Undo [`sleep`] before the next rollout."""

    def close(self) -> None:
        """Release the engine."""


def pad_completions(
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completions: list[list[int]],
    log_probs: list[list[float]] | None,
    eos_token_id: int | list[int],
    pad_token_id: int,
) -> Generation:
    """
    A [`Generation`] from per-sample completion token lists, each cut after its first EOS.

    Args:
        prompt_ids, prompt_mask (`torch.Tensor` of shape `[N, P]`): each sample's left-padded prompt and its mask.
        completions (`list[list[int]]`): `N` completions.
        log_probs (`list[list[float]]`, *optional*): the engine's log-prob of each completion token.
        eos_token_id (`int` or `list[int]`), pad_token_id (`int`): the tokenizer's.
    """
    eos = set(torch.as_tensor(eos_token_id).flatten().tolist())
    cut = []
    for tokens in completions:
        end = next((i + 1 for i, token in enumerate(tokens) if token in eos), len(tokens))
        cut.append(end)
    width = max(cut, default=0)
    rows = len(completions)
    completion_ids = torch.full((rows, width), pad_token_id, dtype=torch.long)
    action_mask = torch.zeros((rows, width), dtype=torch.bool)
    scores = None if log_probs is None else torch.zeros((rows, width), dtype=torch.float32)
    for i, (tokens, end) in enumerate(zip(completions, cut)):
        completion_ids[i, :end] = torch.tensor(tokens[:end], dtype=torch.long)
        action_mask[i, :end] = True
        if scores is not None:
            scores[i, :end] = torch.tensor(log_probs[i][:end], dtype=torch.float32)
    return Generation(
        sequences=torch.cat([prompt_ids, completion_ids], dim=1),
        attention_mask=torch.cat([prompt_mask.long(), action_mask.long()], dim=1),
        action_mask=action_mask,
        log_probs=scores,
    )


class HFEngine(RolloutEngine):
    """
    The policy's own `generate` (transformers), `micro_rollout_batch_size` samples at a time, each carrying its
    prompt's processed media.

    Args:
        actor ([`Actor`]): the policy.
        chunk_size (`int`): samples per `generate` call.
        device (`torch.device`): where the policy runs.
        suppress_media_tokens (`bool`): never sample media placeholder tokens (see [`Actor.generate`]).
        pad_token_id (`int`): the tokenizer's pad token.
        media_encodings ([`~rft_trl.models.media_encodings.MediaEncodings`], *optional*): the policy's encoder
            outputs per prompt's media, so that a prompt's `n` samples share one encoding.
    """

    name = "hf"

    def __init__(
        self,
        actor,
        chunk_size: int,
        device: torch.device,
        suppress_media_tokens: bool,
        pad_token_id: int,
        media_encodings=None,
    ):
        self.actor = actor
        self.chunk_size = chunk_size
        self.device = device
        self.suppress_media_tokens = suppress_media_tokens
        self.pad_token_id = pad_token_id
        self.media_encodings = media_encodings

    def generate(self, batch: PromptBatch, n: int, sampling_kwargs: dict) -> Generation:
        per_sample_mm = repeat_multimodal_inputs(batch.sample_multimodal_inputs, n)
        input_ids = batch.input_ids.repeat_interleave(n, dim=0)  # [N, P]
        attention_mask = batch.attention_mask.repeat_interleave(n, dim=0)  # [N, P]
        token_fields = {name: value.repeat_interleave(n, dim=0) for name, value in batch.token_fields.items()}
        sequences, masks, action_masks = [], [], []
        for start in range(0, input_ids.shape[0], self.chunk_size):
            rows = slice(start, start + self.chunk_size)
            if self.media_encodings is not None:
                mm = self.media_encodings.model_inputs(per_sample_mm[rows], self.device)
            else:
                mm = {k: v.to(self.device) for k, v in concat_multimodal_inputs(per_sample_mm[rows]).items()}
            seq, mask, action_mask = self.actor.generate(
                input_ids[rows].to(self.device),
                attention_mask=attention_mask[rows].to(self.device),
                suppress_media_tokens=self.suppress_media_tokens,
                **{k: v[rows].to(self.device) for k, v in token_fields.items()},
                **mm,
                **sampling_kwargs,
            )
            sequences.append(seq)
            masks.append(mask)
            action_masks.append(action_mask)
        width = max(a.shape[1] for a in action_masks)
        prompt_len = input_ids.shape[1]
        return Generation(
            sequences=_right_pad(sequences, prompt_len + width, self.pad_token_id),
            attention_mask=_right_pad(masks, prompt_len + width, 0),
            action_mask=_right_pad(action_masks, width, False),
        )


def generation_from_ids(
    prompts: list[list[int]],
    completions: list[list[int]],
    pad_token_id: int,
    tool_masks: list[list[int]] | None = None,
    log_probs: list[list[float | None]] | None = None,
) -> Generation:
    """
    A [`Generation`] from token-id lists: each prompt left-padded, each completion right-padded and kept whole (its
    `action_mask` covers every id given; an engine's completions are cut at their EOS by [`pad_completions`]).

    Args:
        prompts, completions (`list[list[int]]`): each sample's prompt and completion ids.
        pad_token_id (`int`): the tokenizer's pad token.
        tool_masks (`list[list[int]]`, *optional*): 1 on the completion ids the model sampled, 0 on inserted ones.
        log_probs (`list[list[float | None]]`, *optional*): the sampler's log-prob of each completion id (`None`
            where unknown, kept as NaN).
    """
    rows, prompt_width = len(prompts), max((len(ids) for ids in prompts), default=0)
    width = max((len(ids) for ids in completions), default=0)
    prompt_ids = torch.full((rows, prompt_width), pad_token_id, dtype=torch.long)
    prompt_mask = torch.zeros((rows, prompt_width), dtype=torch.long)
    completion_ids = torch.full((rows, width), pad_token_id, dtype=torch.long)
    action_mask = torch.zeros((rows, width), dtype=torch.bool)
    tool_mask = None if tool_masks is None else torch.zeros((rows, width), dtype=torch.bool)
    scores = None if log_probs is None else torch.zeros((rows, width), dtype=torch.float32)
    for row, (prompt, ids) in enumerate(zip(prompts, completions)):
        prompt_ids[row, prompt_width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        prompt_mask[row, prompt_width - len(prompt) :] = 1
        completion_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        action_mask[row, : len(ids)] = True
        if tool_mask is not None:
            tool_mask[row, : len(ids)] = torch.tensor(tool_masks[row], dtype=torch.bool)
        if scores is not None:
            scores[row, : len(ids)] = torch.tensor([float("nan") if x is None else x for x in log_probs[row]])
    return Generation(
        sequences=torch.cat([prompt_ids, completion_ids], dim=1),
        attention_mask=torch.cat([prompt_mask, action_mask.long()], dim=1),
        action_mask=action_mask,
        log_probs=scores,
        tool_mask=tool_mask,
    )


def _right_pad(tensors: list[torch.Tensor], width: int, value: int | float | bool) -> torch.Tensor:
    return torch.cat([nn.functional.pad(t, (0, width - t.shape[1]), value=value) for t in tensors])
