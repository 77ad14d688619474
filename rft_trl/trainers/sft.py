"""Supervised batches and a short warm-up: teach a policy the answer format before RL.

A randomly initialised (or badly formatted) policy rarely emits a parseable answer, so a rule reward gives RL no
signal. Real pipelines first fine-tune on the answer format; `supervised_warmup` does that in a few steps, and
`build_sft_batch` is also what the trainer's ptx loss (`ptx_coef > 0`) trains on.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..core import masked_mean
from ..data.collator import PromptCollator
from ..models.actor import Actor

logger = logging.getLogger(__name__)


def build_sft_batch(
    collator: PromptCollator, rows: list[dict], completion_column: str = "completion"
) -> dict[str, torch.Tensor]:
    """
    Prompt + target completion for each row, laid out like a rollout: left-padded prompt, right-padded completion.

    Args:
        collator ([`PromptCollator`]): renders and processes the prompts (media included).
        rows (`list[dict]`): dataset rows with a `prompt` and a `completion_column` string.
        completion_column (`str`, *optional*, defaults to `"completion"`): the target text's column.

    Returns:
        `dict`: `sequences` `[B, P + C]`, `attention_mask` `[B, P + C]`, `action_mask` `[B, C]` (1 on target
        tokens, the EOS included), `multimodal_inputs` (media and per-token type fields, the latter covering the
        prompt only: the actor extends them over the completion).
    """
    batch = collator(rows)
    if batch.skipped:
        raise ValueError(f"SFT rows were rejected as bad input: {batch.skipped}")
    tokenizer = collator.tokenizer
    targets = [str(value) for value in batch.columns[completion_column]]
    eos = tokenizer.eos_token_id
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] + [eos] for text in targets]
    width = max(len(x) for x in ids)
    completion = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)  # [B, C]
    action_mask = torch.zeros((len(ids), width), dtype=torch.bool)  # [B, C]
    for i, x in enumerate(ids):
        completion[i, : len(x)] = torch.tensor(x)
        action_mask[i, : len(x)] = True
    return {
        "sequences": torch.cat([batch.input_ids, completion], dim=1),
        "attention_mask": torch.cat([batch.attention_mask, action_mask.long()], dim=1),
        "action_mask": action_mask,
        "multimodal_inputs": {**batch.token_fields, **batch.multimodal_inputs},
    }


class PtxBatches:
    """
    The ptx loss's batches (`ptx_coef > 0`): `batch_size` rows of `dataset` at a time, cycling through one order drawn
    from `seed`; `position` (how many rows were served) is saved with the run's state for an exact resume.
    """

    def __init__(self, dataset, collator: PromptCollator, batch_size: int, seed: int):
        self.dataset, self.collator, self.batch_size, self.seed = dataset, collator, batch_size, seed
        self.position = 0

    def next(self, device: torch.device | str) -> dict[str, torch.Tensor]:
        """The next batch ([`build_sft_batch`]), on `device`."""
        num_rows = len(self.dataset)
        order = torch.randperm(num_rows, generator=torch.Generator().manual_seed(self.seed)).tolist()
        rows = [self.dataset[order[(self.position + i) % num_rows]] for i in range(self.batch_size)]
        self.position += self.batch_size
        batch = build_sft_batch(self.collator, rows)
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def sft_loss(actor: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean negative log-likelihood of the target tokens of a [`build_sft_batch`] batch."""
    device = batch["sequences"].device
    log_probs = actor(
        batch["sequences"],
        batch["action_mask"].shape[1],
        batch["attention_mask"],
        **{k: v.to(device) for k, v in batch["multimodal_inputs"].items()},
    )
    return -masked_mean(log_probs, batch["action_mask"])


def supervised_warmup(
    actor: Actor,
    collator: PromptCollator,
    rows: list[dict],
    steps: int = 30,
    batch_size: int = 8,
    learning_rate: float = 1e-3,
    seed: int = 0,
    completion_column: str = "completion",
) -> list[float]:
    """
    A few AdamW steps of supervised fine-tuning on `rows`, in place.

    Args:
        actor ([`Actor`]): the policy to warm up (its trainable parameters are updated).
        collator ([`PromptCollator`]): the policy's prompt collator.
        rows (`list[dict]`): rows with `prompt`, media and `completion_column`.
        steps (`int`, *optional*, defaults to `30`): optimizer steps.
        batch_size (`int`, *optional*, defaults to `8`): rows per step, drawn round-robin from a seeded shuffle.
        learning_rate (`float`, *optional*, defaults to `1e-3`): AdamW learning rate.
        seed (`int`, *optional*, defaults to `0`): seeds the row order.
        completion_column (`str`, *optional*, defaults to `"completion"`): the target text's column.

    Returns:
        `list[float]`: the loss of every step.
    """
    device = next(actor.parameters()).device
    params = [p for p in actor.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate)
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    was_training = actor.training
    actor.train()
    losses = []
    for step in range(steps):
        chosen = [rows[order[(step * batch_size + i) % len(rows)]] for i in range(batch_size)]
        batch = build_sft_batch(collator, chosen, completion_column)
        batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        loss = sft_loss(actor, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    actor.train(was_training)
    logger.info("supervised warm-up: loss %.3f -> %.3f over %d steps", losses[0], losses[-1], steps)
    return losses
