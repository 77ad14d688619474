"""
AsyncRollouts' plan without an engine: which rows it samples ahead, and when it does not. The reference is the
training sampler itself, iterated as the train dataloader iterates it (one block of prompts per rollout, each block
`repeats` times), over several shuffled epochs.
"""

from __future__ import annotations

from types import SimpleNamespace

from transformers.trainer_utils import SaveStrategy

from rft_trl.data.rows import ROW_INDEX
from rft_trl.trainers.async_rollouts import AsyncRollouts
from rft_trl.trainers.sampling import RolloutSampler

ROWS = [{"prompt": f"p{i}", ROW_INDEX: i} for i in range(10)]


def rollouts_as_the_dataloader_serves_them(sampler: RolloutSampler, epochs: int, share: slice) -> list[tuple]:
    """(epoch, this process's indices) of every rollout, from the sampler's own iteration."""
    served = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        stream = list(sampler)
        step = sampler.batch_size * sampler.repeat_count
        served += [(epoch, stream[start : start + sampler.batch_size][share]) for start in range(0, len(stream), step)]
    return served


def plan(max_staleness: int = 1, steps_per_rollout: int = 1, process_index: int = 0) -> tuple[AsyncRollouts, list]:
    launched = []

    def sample(rows, step):
        launched.append(([row[ROW_INDEX] for row in rows], step))
        return ("sampled", step)

    sampler = RolloutSampler(len(ROWS), block_size=4, repeats=3, shuffle=True, seed=7)
    rollouts = AsyncRollouts(sample, ROWS, sampler, 2, process_index, steps_per_rollout, max_staleness)
    return rollouts, launched


def state_and_args(max_steps: int, save_steps: int = 0, strategy=SaveStrategy.NO):
    state = SimpleNamespace(max_steps=max_steps, save_steps=save_steps, eval_steps=0)
    return state, SimpleNamespace(save_strategy=strategy, eval_strategy="no")


def test_every_rollout_after_the_first_is_sampled_ahead_across_epochs_and_processes():
    for process in (0, 1):
        share = slice(2 * process, 2 * process + 2)
        served = rollouts_as_the_dataloader_serves_them(RolloutSampler(10, 4, 3, True, 7), 4, share)
        assert len(served) == 8  # 2 rollouts per epoch (10 rows, blocks of 4, the last 2 rows dropped)
        rollouts, launched = plan(process_index=process)
        state, args = state_and_args(max_steps=len(served))
        for step, (epoch, indices) in enumerate(served):
            sampled, metrics = rollouts.take([ROWS[i] for i in indices], step, epoch)
            assert (sampled is None) == (step == 0), step
            assert metrics["rollout/async/generated_ahead"] == float(step > 0)
            assert metrics["rollout/async/staleness"] == float(step > 0)
            rollouts.launch_next(step, state, args)
        # Each launch was the next rollout's rows, for the step it trains from; none after the last step.
        assert launched == [(indices, step) for step, (_, indices) in enumerate(served)][1:]
        assert rollouts.discarded == 0
        rollouts.close()


def test_a_rollout_sampled_for_other_rows_is_discarded_and_counted():
    served = rollouts_as_the_dataloader_serves_them(RolloutSampler(10, 4, 3, True, 7), 1, slice(0, 2))
    rollouts, launched = plan()
    state, args = state_and_args(max_steps=10)
    rollouts.take([ROWS[i] for i in served[0][1]], 0, 0)
    rollouts.launch_next(0, state, args)
    other = [row for row in ROWS if row[ROW_INDEX] not in launched[0][0]][:2]
    sampled, metrics = rollouts.take(other, 1, 0)
    assert sampled is None and metrics["rollout/async/discarded"] == 1.0
    # A step other than the one it was sampled for: discarded too (its seeds are that step's).
    rollouts.take([ROWS[i] for i in served[0][1]], 0, 0)
    rollouts.launch_next(0, state, args)
    sampled, metrics = rollouts.take([ROWS[i] for i in launched[-1][0]], 2, 0)
    assert sampled is None and metrics["rollout/async/discarded"] == 2.0
    rollouts.close()


def test_nothing_is_sampled_ahead_across_a_scheduled_checkpoint_below_the_bound_or_past_the_end():
    served = rollouts_as_the_dataloader_serves_them(RolloutSampler(10, 4, 3, True, 7), 1, slice(0, 2))
    rows = [ROWS[i] for i in served[0][1]]
    cases = [
        (plan(), state_and_args(10, save_steps=2, strategy=SaveStrategy.STEPS), 1, False),  # saves at step 2
        (plan(), state_and_args(10, save_steps=2, strategy=SaveStrategy.STEPS), 0, True),  # saves at step 2, not 1
        (plan(), state_and_args(10, strategy=SaveStrategy.EPOCH), 1, False),  # step 2 starts epoch 1
        (plan(), state_and_args(10, strategy=SaveStrategy.EPOCH), 0, True),
        (plan(), state_and_args(2), 1, False),  # step 2 is past max_steps
        (plan(max_staleness=0), state_and_args(10), 0, False),  # max_staleness 0: the synchronous run
        (plan(max_staleness=1, steps_per_rollout=2), state_and_args(10), 0, False),  # would lag 2 steps
    ]
    for (rollouts, _), (state, args), step, expected in cases:
        epoch_rows = rows if step == 0 else [ROWS[i] for i in served[1][1]]
        rollouts.take(epoch_rows, step, 0)
        assert rollouts.launch_next(step, state, args) == expected, (step, args.save_strategy, rollouts.max_staleness)
        rollouts.close()
