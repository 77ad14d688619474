"""Evaluation of a policy by its rewards: `PPOTrainerVL.evaluate`'s loop over the eval set.

One completion per eval prompt (greedy by default; TRL's `num_generations_eval` samples that many), scored by the
reward functions, every eval row counted once across processes, with TRL's eval loss (the training loss of the eval
rollout, no update) where the estimator has a baseline.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
from accelerate.utils import gather_object

from ..data.rows import ROW_INDEX
from ..rewards.functions import completion_text
from .experience_maker import EmptyBatchError, Rollout
from .metrics import MetricRecorder, eval_metrics
from .trainer_hooks import unwrapped_for_generation

if TYPE_CHECKING:
    from .ppo_trainer_vl import PPOTrainerVL

__all__ = ["evaluate_rollouts", "loss_without_update"]

logger = logging.getLogger(__name__)


def evaluate_rollouts(trainer: PPOTrainerVL, dataset, metric_key_prefix: str) -> tuple[dict[str, float], list[tuple]]:
    """
    Generate and score the eval completions of `dataset` (one eval set), on every process.

    Returns:
        `tuple`: the metrics (see `PPOTrainerVL.evaluate`), and the completions to show, gathered from all processes,
        as `(key, prompt, completion, reward, {function: score})` (empty unless `log_completions`).
    """
    if trainer._async_rollouts is not None:
        trainer._async_rollouts.wait()  # the rollout generated ahead uses the engine and the collator
    dataloader = trainer.get_eval_dataloader(dataset)
    was_training = trainer.model.training
    trainer.model.eval()
    # One greedy completion per prompt by default; TRL's num_generations_eval samples that many instead.
    samples_per_prompt = trainer.args.num_generations_eval or 1
    sampling = trainer.args.sampling_kwargs()
    if trainer.args.num_generations_eval is None:
        sampling = {**sampling, "do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    records, losses, shown = [], [], []
    # The loss needs a baseline: RLOO's leave-one-out has none for a single sample per prompt.
    with_loss = not (trainer.args.advantage_estimator == "rloo" and samples_per_prompt < 2)
    trainer.experience_maker.trainer_state = trainer.state
    trainer._sync_rollout_engine()
    trainer.experience_maker.engine.seed_rollout(trainer.state.global_step, stream=1)
    for batch in dataloader:
        indices = [row[ROW_INDEX] for row in batch.rows]  # the collator names skipped rows by it too
        trainer.experience_maker.clear_encodings()
        with unwrapped_for_generation(trainer.model_wrapped, trainer.accelerator, trainer._gather_for_rollout()):
            try:
                samples, completions, prompts, out = trainer.experience_maker.generate_and_score(
                    batch.rows, samples_per_prompt, sampling
                )
            except EmptyBatchError as error:
                # The eval set is what it is (no replacement rows): the batch's rows are counted as skipped
                # (eval_data/skipped/*) and the evaluation goes on with the next batch.
                logger.warning("Evaluation: %s The batch is left out.", error)
                continue
            if with_loss:
                rollout = trainer.experience_maker.experience_from(
                    samples, completions, prompts, out, samples_per_prompt
                )
        if with_loss:
            losses.extend(loss_without_update(trainer, rollout))
        lengths = samples["action_mask"].sum(-1).tolist()
        for i, length in enumerate(lengths):
            row = samples["kept_rows"][i // samples_per_prompt]
            key = (indices[row], i % samples_per_prompt)
            components = {name: float(scores[i]) for name, scores in out.components.items()}
            records.append((key, float(out.rewards[i]), bool(out.valid[i]), length, components))
            if trainer.args.log_completions:
                shown.append((key, prompts[i], completion_text(completions[i]), float(out.rewards[i]), components))
    data_counts = {**trainer.collator.pop_skip_counts(), **trainer.collator.pop_repair_counts()}
    if was_training:
        trainer.model.train()
    metrics = eval_metrics(gather_object(records), metric_key_prefix)
    losses = gather_object(losses)
    if losses:
        metrics[f"{metric_key_prefix}_loss"] = sum(losses) / len(losses)
    for counts in gather_object([data_counts]):  # rows skipped or repaired, summed over the processes
        for name, count in counts.items():
            key = f"{metric_key_prefix}_{name}"
            metrics[key] = metrics.get(key, 0.0) + float(count)
    shown = gather_object(shown) if trainer.args.log_completions else []
    return metrics, shown


@torch.no_grad()
def loss_without_update(trainer: PPOTrainerVL, rollout: Rollout) -> list[float]:
    """The training loss of each micro-batch of `rollout`, without a gradient or an update (TRL's `eval_loss`)."""
    # The training buffer's collation (micro-batch size, packing, padding); its items are left alone.
    collate, size = trainer.replay_buffer.collate_fn, trainer.replay_buffer.sample_batch_size
    # The loss records training metrics as it goes: keep them out of the training logs.
    training_metrics, trainer._metrics = trainer._metrics, MetricRecorder()
    try:
        losses = []
        for start in range(0, len(rollout.items), size):
            batch = collate(rollout.items[start : start + size]).to_device(trainer.accelerator.device)
            losses.append(trainer.compute_loss(trainer.model_wrapped, batch).item())
    finally:
        trainer._metrics = training_metrics
    return losses
