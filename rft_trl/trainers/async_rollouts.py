"""
Rollouts generated ahead of their turn (`async_rollouts`): one-step off-policy training, as NeMo-RL's and TRL's async
GRPO do it.

While rollout `r` trains, a background thread has the vLLM engine sample rollout `r + 1` from the weights rollout `r`
starts from; when `r + 1`'s turn comes, the trainer takes it, brings the engine to the current weights and launches
`r + 2`. A rollout's samples thus lag the policy they train by one rollout's optimizer steps, which the update weighs
by the importance-sampling correction of vLLM's samples (`vllm_importance_sampling_correction`: the sampler's log-probs
against the policy's). The first rollout, and any rollout not generated ahead, is sampled in turn.

What keeps a run the same run:

- **The same rows.** The next rollout's rows are read off the training sampler itself (a copy of it, drawn for the
  epoch in question); when the rows the dataloader then hands over differ (or the step does), the rollout generated
  ahead is discarded, counted, and the rollout sampled in turn.
- **The same samples.** Each rollout's sampling is seeded by the step it trains from (`RolloutEngine.seed_rollout`),
  so it draws the same completions whether sampled ahead or in turn; with `max_staleness=0` every rollout is sampled
  in turn and the run is the synchronous one.
- **Exact resume.** No rollout is generated ahead across a checkpoint the run will save: the rollout after it is
  sampled in turn from the saved weights, as a resumed run samples it. (A save the schedule did not announce, asked for
  by a callback, waits for the rollout in flight; a run resumed from it samples that rollout again from the saved
  weights, which is logged.)
- **One user of the engine and the collator at a time.** Evaluation and saving wait for the rollout in flight; the
  background thread runs only the first generation round (collation, sampling, rewards), never the encoder caches or
  the update.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from transformers.trainer_utils import SaveStrategy

from ..data.rows import ROW_INDEX
from .experience_maker import Sampled
from .sampling import RolloutSampler

if TYPE_CHECKING:
    from .ppo_trainer_vl import PPOTrainerVL

logger = logging.getLogger(__name__)

__all__ = ["AsyncRollouts", "build_async_rollouts", "close_async_rollouts", "wait_before_saving"]


@dataclass
class _InFlight:
    indices: list[int]  # the dataset indices of the rollout's rows (this process's)
    step: int  # the optimizer step it trains from
    version: int  # the optimizer step of the weights that sampled it
    future: Future


class AsyncRollouts:
    """
    The rollout generated ahead, and the prediction of which rows and step it is for.

    Args:
        sample (`Callable[[list[dict], int], Sampled]`): samples the first round of the rollout of these rows trained
            from that step ([`ExperienceMaker.sample`] within the collator's replacement rows); runs in the thread.
        rows: the training rows by dataset index ([`~rft_trl.data.rows.IndexedRows`]).
        sampler ([`RolloutSampler`]): the training sampler (copied for the prediction, never iterated).
        rollout_batch_size (`int`), process_index (`int`): this process's share of each block of prompts.
        steps_per_rollout (`int`): optimizer steps per rollout (the lag of a rollout generated ahead).
        max_staleness (`int`): the most optimizer steps a rollout may lag; below `steps_per_rollout`, nothing is
            generated ahead.
    """

    def __init__(
        self,
        sample: Callable[[list[dict], int], Sampled],
        rows,
        sampler: RolloutSampler,
        rollout_batch_size: int,
        process_index: int,
        steps_per_rollout: int,
        max_staleness: int,
    ):
        self._sample = sample
        self._rows = rows
        self._sampler_args = (sampler.num_samples, sampler.batch_size, sampler.repeat_count, sampler.shuffle)
        self._seed = sampler.seed
        self._share = slice(process_index * rollout_batch_size, (process_index + 1) * rollout_batch_size)
        self.steps_per_rollout = steps_per_rollout
        self.max_staleness = max_staleness
        self._blocks: dict[int, list[list[int]]] = {}  # epoch -> this process's indices of each rollout
        self._epoch = 0  # where the last rollout taken was found
        self._block: int | None = None  # its number in that epoch (None: not found)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rft_trl_rollout")
        self._in_flight: _InFlight | None = None
        self.discarded = 0

    # --------------------------------------------------------------------------------------------- taking

    def take(self, rows: list[dict], step: int, epoch: int) -> tuple[Sampled | None, dict[str, float]]:
        """
        The rollout generated ahead for these `rows` and `step` (in about `epoch`: the Trainer's count, where the
        rows are looked for first after a resume), if any (else `None`: sample it in turn), and the
        `rollout/async/*` metrics: `staleness` (optimizer steps between the weights that sampled the rollout and
        those it trains from; 0 in turn), `generated_ahead` (1 or 0), `wait_seconds` (how long the trainer waited
        for it) and `discarded` (rollouts generated ahead for other rows, over the run).
        """
        in_flight, self._in_flight = self._in_flight, None
        metrics = {"rollout/async/staleness": 0.0, "rollout/async/generated_ahead": 0.0}
        metrics["rollout/async/wait_seconds"] = 0.0
        sampled = None
        if in_flight is not None:
            start = time.perf_counter()
            result = in_flight.future.result()  # re-raises what the thread raised
            metrics["rollout/async/wait_seconds"] = time.perf_counter() - start
            if in_flight.indices == [row[ROW_INDEX] for row in rows] and in_flight.step == step:
                sampled = result
                metrics["rollout/async/staleness"] = float(step - in_flight.version)
                metrics["rollout/async/generated_ahead"] = 1.0
            else:
                self.discarded += 1
                logger.warning(
                    "The rollout generated ahead was for other rows or another step (rows %s at step %d; now %s at "
                    "step %d): discarded, this rollout is sampled in turn (%d discarded so far).",
                    in_flight.indices[:4], in_flight.step, [row[ROW_INDEX] for row in rows][:4], step, self.discarded,
                )  # fmt: skip
        metrics["rollout/async/discarded"] = float(self.discarded)
        self._locate(rows, epoch)
        return sampled, metrics

    def wait(self) -> bool:
        """Let the rollout in flight finish (evaluation and saving use what it uses); whether one was in flight."""
        if self._in_flight is None:
            return False
        self._in_flight.future.exception()  # waits; an error is raised by `take`
        return True

    def close(self) -> None:
        """Drop the rollout in flight (the run ended or failed) and stop the thread."""
        if self._in_flight is not None:
            self._in_flight.future.cancel()
            self._in_flight = None
        self._executor.shutdown(wait=True, cancel_futures=True)

    # --------------------------------------------------------------------------------------------- launching

    def launch_next(self, step: int, state, args) -> bool:
        """
        Start sampling the rollout after the one starting at optimizer step `step` (the `TrainerState` and the
        `TrainingArguments` tell whether the run goes on past it and saves before it); whether it was started.
        """
        following = step + self.steps_per_rollout
        if self.max_staleness < self.steps_per_rollout or following >= state.max_steps:
            return False
        position = self._next_position()
        if position is None or self._saves_at(following, position[0] != self._epoch, state, args):
            return False
        epoch, block = position
        indices = self._epoch_blocks(epoch)[block]
        rows = [self._rows[index] for index in indices]
        future = self._executor.submit(self._sample, rows, following)
        self._in_flight = _InFlight(indices, following, step, future)
        return True

    @staticmethod
    def _saves_at(step: int, new_epoch: bool, state, args) -> bool:
        """Whether the run saves a checkpoint at the end of optimizer step `step`, as the Trainer's flow decides."""
        strategy = args.save_strategy
        if strategy == SaveStrategy.STEPS:
            return bool(state.save_steps) and step % state.save_steps == 0
        if strategy == SaveStrategy.EPOCH:
            return new_epoch
        if strategy == SaveStrategy.BEST:  # saved when an evaluation improves: any evaluation may
            if args.eval_strategy == "epoch":
                return new_epoch
            return bool(state.eval_steps) and step % state.eval_steps == 0
        return False

    # --------------------------------------------------------------------------------------------- prediction

    def _epoch_blocks(self, epoch: int) -> list[list[int]]:
        """This process's indices of each rollout of `epoch`, as the training sampler draws them."""
        if epoch not in self._blocks:
            sampler = RolloutSampler(*self._sampler_args, seed=self._seed)
            sampler.set_epoch(epoch)
            stream = list(sampler)
            block, repeats = sampler.batch_size, sampler.repeat_count
            self._blocks = {e: b for e, b in self._blocks.items() if e >= epoch - 1}
            self._blocks[epoch] = [
                stream[start : start + block][self._share] for start in range(0, len(stream), block * repeats)
            ]
        return self._blocks[epoch]

    def _locate(self, rows: list[dict], hint: int) -> None:
        """Find the rollout of `rows`: in the last one's epoch, the next, or around `hint` (a resumed run's)."""
        indices = [row[ROW_INDEX] for row in rows]
        for epoch in dict.fromkeys((self._epoch, self._epoch + 1, hint, hint + 1)):
            blocks = self._epoch_blocks(epoch)
            if indices in blocks:
                self._epoch, self._block = epoch, blocks.index(indices)
                return
        self._block = None

    def _next_position(self) -> tuple[int, int] | None:
        """The epoch and rollout number of the rollout after the last one taken (`None` when it was not found)."""
        if self._block is None:
            return None
        if self._block + 1 < len(self._epoch_blocks(self._epoch)):
            return self._epoch, self._block + 1
        return self._epoch + 1, 0


def build_async_rollouts(trainer: PPOTrainerVL, rows, sampler: RolloutSampler) -> AsyncRollouts:
    """The trainer's [`AsyncRollouts`] over its training `rows` and `sampler`: its thread samples the first round of
    a rollout within the collator's replacement rows, as the trainer samples one in turn."""
    args = trainer.args

    def sample(rollout_rows: list[dict], step: int) -> Sampled:
        with trainer.collator.replacing_from(trainer._replacement_rows):
            return trainer.experience_maker.sample(rollout_rows, step)

    return AsyncRollouts(
        sample,
        rows,
        sampler,
        args.rollout_batch_size,
        trainer.accelerator.process_index,
        args.micro_steps_per_rollout // args.gradient_accumulation_steps,
        args.max_staleness,
    )


def close_async_rollouts(trainer: PPOTrainerVL) -> None:
    """At the end of `train` (or its failure): drop the trainer's rollout in flight, if any, and stop its thread."""
    if trainer._async_rollouts is not None:
        trainer._async_rollouts.close()


def wait_before_saving(rollouts: AsyncRollouts | None, step: int) -> None:
    """Let a rollout in flight finish before a checkpoint records the run's state (it draws replacement rows)."""
    if rollouts is not None and rollouts.wait():
        logger.warning(
            "Saving checkpoint-%d while the next rollout, generated ahead, is in flight (a save the schedule did not "
            "announce): a run resumed from it samples that rollout again from the saved weights, not bit for bit "
            "the rollout this run trains on.",
            step,
        )
