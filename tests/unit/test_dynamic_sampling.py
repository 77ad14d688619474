"""Dynamic sampling (DAPO, verl's filter_groups) on hand-built rollouts: which groups go, how a rollout is refilled,
the bound on rounds, the refill order and its resume, the join of rounds of different widths; and TRL's soft overlong
punishment under rft_trl's reward contract."""

import math

import pytest
import torch

from rft_trl import RFTConfig
from rft_trl.rewards import RewardOutput, RewardScorer, get_soft_overlong_punishment
from rft_trl.trainers.dynamic_sampling import (
    DynamicSampling,
    RefillRows,
    concat_samples,
    select_samples,
    zero_spread_groups,
)

NAN = float("nan")
PAD = 0


def test_zero_spread_groups_hand_built():
    rewards = torch.tensor(
        [
            [1.0, 1.0, 1.0],  # all equal: no spread
            [0.0, 1.0, 1.0],  # spread
            [0.5, NAN, 0.5],  # the valid ones equal (the failed one is excluded, not 0): no spread
            [0.5, NAN, 0.7],  # the valid ones differ: spread
            [NAN, 2.0, NAN],  # one valid reward: nothing to compare
            [NAN, NAN, NAN],  # none
            [-1.0, -1.0, -1.0 + 1e-6],  # a tiny spread is a spread (verl: std > 0)
        ]
    ).flatten()
    expected = [True, False, True, False, True, True, False]
    assert zero_spread_groups(rewards, 3).tolist() == expected
    # Control: the same rewards read as groups of 7 samples... of 21 / 7 = 3 groups, each with spread.
    assert zero_spread_groups(rewards, 7).tolist() == [False, False, False]


def fake_round(rows: list[dict], group_size: int, prompt_width: int, action_width: int) -> tuple:
    """
    A round as `generate_and_score` returns it, for rows `{"id": k, "rewards": [...]}`: sample j of row k has prompt
    token 100 + k (left-padded to `prompt_width`) and completion tokens 10 * j + 1, ... (right-padded to
    `action_width`; its length 1 + j % action_width).
    """
    sequences, attention, actions, types = [], [], [], []
    for row in rows:
        for j in range(group_size):
            length = 1 + j % action_width
            completion = [10 * j + 1 + t for t in range(length)] + [PAD] * (action_width - length)
            sequences.append([PAD] * (prompt_width - 1) + [100 + row["id"]] + completion)
            attention.append([0] * (prompt_width - 1) + [1] * (1 + length) + [0] * (action_width - length))
            actions.append([1] * length + [0] * (action_width - length))
            types.append([7] * prompt_width + [8] * action_width)
    sequences = torch.tensor(sequences)
    samples = {
        "sequences": sequences,
        "attention_mask": torch.tensor(attention),
        "action_mask": torch.tensor(actions, dtype=torch.bool),
        "completion_ids": sequences[:, prompt_width:],
        "token_fields": {"token_type_ids": torch.tensor(types)},
        "multimodal_inputs": [{} for _ in range(len(rows) * group_size)],
        "kept_rows": list(range(len(rows))),
    }
    rewards = torch.tensor([r for row in rows for r in row["rewards"]], dtype=torch.float32)
    out = RewardOutput(
        rewards=rewards,
        valid=rewards.isfinite(),
        components={"f": rewards.clone()},
        failures={"f": int((~rewards.isfinite()).sum())},
        first_failure=None,
    )
    completions = [f"{row['id']}/{j}" for row in rows for j in range(group_size)]
    prompts = [f"prompt {row['id']}" for row in rows for _ in range(group_size)]
    return samples, completions, prompts, out


def sampler(rows, target=2, max_rounds=10, reduce_sum=None):
    """A `DynamicSampling` over `rows` whose rounds grow wider (prompt and completion), as real rounds may."""
    sampling = DynamicSampling(group_size=2, target=target, max_rounds=max_rounds, pad_token_id=PAD)
    sampling.draw_from(rows, seed=0, process_index=0, num_processes=1)
    widths = iter([(3, 2), (4, 3), (2, 4), (5, 1)] * 10)

    def generate(batch):
        generate.calls.append([row["id"] for row in batch])
        return fake_round(batch, 2, *next(widths))

    generate.calls = []
    return sampling, generate, reduce_sum or (lambda t: t)


def prompt_ids(samples) -> list[int]:
    """Each kept sample's prompt token (100 + the row id), read back from the joined sequences."""
    return [int(row[row > 0][0]) - 100 for row in samples["sequences"]]


def test_fill_keeps_exactly_the_groups_with_spread_and_refills_from_new_prompts():
    dataset = [{"id": 10 + k, "rewards": [float(k % 2), 1.0]} for k in range(8)]  # odd ids tie, even ids spread
    sampling, generate, reduce_sum = sampler(dataset, target=3)
    first_rows = [
        {"id": 0, "rewards": [1.0, 1.0]},  # dropped
        {"id": 1, "rewards": [0.0, 1.0]},  # kept
        {"id": 2, "rewards": [NAN, 0.0]},  # dropped: one valid reward
    ]
    first = fake_round(first_rows, 2, 3, 2)
    (samples, completions, prompts, rewards), metrics = sampling.fill(first, generate, reduce_sum)

    # The refill order over the dataset (seeded, independent of this test's expectations): read it back to know
    # which refill rows have spread, then check that exactly those, in order, completed the rollout.
    refill_ids = generate.calls
    assert all(len(ids) == 3 for ids in refill_ids)  # each round draws a rollout's worth of prompts
    spread_refills = [i for ids in refill_ids for i in ids if (i - 10) % 2 == 0]
    assert prompt_ids(samples)[::2] == [1, *spread_refills[:2]]
    assert prompt_ids(samples) == [i for i in [1, *spread_refills[:2]] for _ in range(2)]
    assert prompts == [f"prompt {i}" for i in prompt_ids(samples)]
    assert completions == [f"{i}/{j}" for i in [1, *spread_refills[:2]] for j in range(2)]
    assert rewards.rewards[:2].tolist() == [0.0, 1.0] and rewards.rewards[2:].tolist() == [0.0, 1.0] * 2
    assert len(samples["multimodal_inputs"]) == 6 and "kept_rows" not in samples

    generated = 3 + 3 * len(generate.calls)
    kept_spread = 1 + len(spread_refills)
    assert metrics == {
        "rollout/dynamic_sampling/rounds": 1.0 + len(generate.calls),
        "rollout/dynamic_sampling/generated_groups": float(generated),
        "rollout/dynamic_sampling/dropped_groups": float(generated - kept_spread),
        "rollout/dynamic_sampling/surplus_groups": float(kept_spread - 3),
        "rollout/dynamic_sampling/reward": pytest.approx(
            (2.0 + 1.0 + 0.0 + sum(float((i - 10) % 2) + 1.0 for ids in refill_ids for i in ids)) / (2 * generated - 1)
        ),
        "rollout/dynamic_sampling/tied_fillers": 0.0,
    }
    assert sampling.drawn == 3 * len(generate.calls)


def test_fill_without_zero_spread_groups_is_the_first_round_itself():
    # Control for the trainer-level identity test: nothing to drop, nothing generated, the rollout untouched.
    sampling, generate, reduce_sum = sampler([{"id": 9, "rewards": [0.0, 1.0]}])
    first = fake_round([{"id": 0, "rewards": [0.0, 1.0]}, {"id": 1, "rewards": [2.0, 1.0]}], 2, 3, 2)
    (samples, completions, prompts, rewards), metrics = sampling.fill(first, generate, reduce_sum)
    assert generate.calls == [] and metrics["rollout/dynamic_sampling/rounds"] == 1.0
    assert torch.equal(samples["sequences"], first[0]["sequences"]) and completions == first[1]
    assert torch.equal(rewards.rewards, first[3].rewards)


def test_fill_at_the_bound_fills_with_tied_groups_and_zero_is_unbounded():
    # One group spreads in the first round; every later one ties. At the bound (rounds count the first, as verl's
    # num_gen_batches) the rollout is filled with the last round's tied groups, counted, rather than ended (verl).
    rows = [{"id": 0, "rewards": [0.0, 1.0]}] + [{"id": k, "rewards": [1.0, 1.0]} for k in range(1, 8)]
    first = fake_round(rows[:2], 2, 3, 2)
    sampling, generate, reduce_sum = sampler(rows, max_rounds=3)
    (samples, _, _, rewards), metrics = sampling.fill(first, generate, reduce_sum)
    assert len(generate.calls) == 2
    assert rewards.rewards.tolist() == [0.0, 1.0, 1.0, 1.0]  # the spread group, then one tied filler
    assert metrics["rollout/dynamic_sampling/tied_fillers"] == 1.0
    assert metrics["rollout/dynamic_sampling/dropped_groups"] == 5.0

    # 0: no bound. Rows that only spread late are still waited for.
    late = [{"id": k, "rewards": [1.0, 1.0] if k < 30 else [0.0, 1.0]} for k in range(32)]
    sampling, generate, reduce_sum = sampler(late, max_rounds=0)
    _, metrics = sampling.fill(fake_round(late[:2], 2, 3, 2), generate, reduce_sum)
    assert metrics["rollout/dynamic_sampling/rounds"] > 3


def test_fill_keeps_generating_while_another_process_is_short():
    # This process fills at once; the other (seen through the all-reduce) is short for two more rounds: this one must
    # generate in step (ZeRO-3 and vLLM tensor parallelism generate collectively), discarding what it draws.
    others_short = iter([1.0, 1.0, 0.0])
    sampling, generate, _ = sampler([{"id": k, "rewards": [0.0, 1.0]} for k in range(8)])
    first = fake_round([{"id": 0, "rewards": [0.0, 1.0]}, {"id": 1, "rewards": [0.0, 1.0]}], 2, 3, 2)
    (samples, *_), metrics = sampling.fill(first, generate, lambda short: short + next(others_short))
    assert len(generate.calls) == 2 and prompt_ids(samples)[::2] == [0, 1]
    assert metrics["rollout/dynamic_sampling/surplus_groups"] == 4.0


def test_concat_samples_pads_rounds_to_a_common_width():
    a = fake_round([{"id": 1, "rewards": [0.0, 1.0]}], 2, prompt_width=2, action_width=3)[0]
    b = fake_round([{"id": 2, "rewards": [0.0, 1.0]}], 2, prompt_width=4, action_width=1)[0]
    b["rollout_log_probs"] = torch.tensor([[-0.5], [-0.25]])
    a["rollout_log_probs"] = torch.full((2, 3), -1.0)
    joined = concat_samples([a, b], PAD)
    # Prompt width 4 (b's), completion width 3 (a's): [N, 7], prompts right-aligned at column 3, completions from 4.
    assert joined["sequences"].shape == (4, 7) and joined["action_mask"].shape == (4, 3)
    for part, rows in ((a, slice(0, 2)), (b, slice(2, 4))):
        for original, padded in zip(part["sequences"], joined["sequences"][rows]):
            assert padded[3].item() == original[part["sequences"].shape[1] - part["action_mask"].shape[1] - 1]
        # The real tokens, read through the masks, are each part's own.
        assert [s[m.bool()].tolist() for s, m in zip(joined["sequences"][rows], joined["attention_mask"][rows])] == [
            s[m.bool()].tolist() for s, m in zip(part["sequences"], part["attention_mask"])
        ]
        assert [c[m].tolist() for c, m in zip(joined["completion_ids"][rows], joined["action_mask"][rows])] == [
            c[m].tolist() for c, m in zip(part["completion_ids"], part["action_mask"])
        ]
    assert joined["rollout_log_probs"][2:].tolist() == [[-0.5, 0.0, 0.0], [-0.25, 0.0, 0.0]]
    # Token types: the pad positions take their edge's type (prompt 7 on the left, completion 8 on the right).
    assert joined["token_fields"]["token_type_ids"][0].tolist() == [7, 7, 7, 7, 8, 8, 8]
    assert joined["token_fields"]["token_type_ids"][2].tolist() == [7, 7, 7, 7, 8, 8, 8]
    assert joined["sequences"][0, :2].tolist() == [PAD, PAD] and not joined["attention_mask"][2:, 5:].any()
    # Selecting after joining is indexing along the sample axis.
    picked = select_samples(joined, [3, 0])
    assert torch.equal(picked["sequences"], joined["sequences"][[3, 0]])
    with pytest.raises(ValueError, match="Only some rounds"):
        concat_samples([a, {k: v for k, v in b.items() if k != "rollout_log_probs"}], PAD)


def test_refill_rows_split_processes_and_resume_where_they_stopped():
    rows = list(range(10))
    one = RefillRows(rows, seed=3, process_index=0, num_processes=1)
    order = one.draw(4) + one.draw(4) + one.draw(4)  # 12 positions: a whole pass, then a new pass begins
    assert sorted(order[:10]) == rows and order[:10] != rows  # a permutation, shuffled
    second_pass = torch.randperm(10, generator=torch.Generator().manual_seed(3 + 1_000_003 + 1)).tolist()
    assert order[10:] == second_pass[:2]
    # Two processes split each draw: disjoint rows, together the single-process order.
    p0, p1 = (RefillRows(rows, 3, rank, 2) for rank in (0, 1))
    a, b = p0.draw(2) + p0.draw(3), p1.draw(2) + p1.draw(3)
    assert p0.drawn == p1.drawn == 10
    assert [x for pair in zip(a, b) for x in pair] == order[:10]
    # A resumed refill (its position from a checkpoint) draws what the uninterrupted one draws next.
    resumed = RefillRows(rows, 3, 0, 1, drawn=8)
    assert resumed.draw(4) == order[8:12]
    assert RefillRows(rows, 4, 0, 1).draw(10) != order[:10]  # control: another seed, another order


def test_dynamic_sampling_config_checks():
    base = dict(output_dir="out", use_cpu=True, per_device_train_batch_size=2, gradient_accumulation_steps=2)
    args = RFTConfig(**base, n_samples_per_prompt=2, dynamic_sampling=True, dynamic_sampling_max_rounds=0)
    assert args.dynamic_sampling and args.dynamic_sampling_max_rounds == 0
    assert RFTConfig(**base, n_samples_per_prompt=2).dynamic_sampling is False  # off by default
    with pytest.raises(ValueError, match="n_samples_per_prompt >= 2"):
        RFTConfig(**base, n_samples_per_prompt=1, advantage_estimator="reinforce++", dynamic_sampling=True)
    with pytest.raises(ValueError, match="dynamic_sampling_max_rounds"):
        RFTConfig(**base, n_samples_per_prompt=2, dynamic_sampling=True, dynamic_sampling_max_rounds=-1)


@pytest.mark.parametrize(("max_len", "cache"), [(10, 4), (8, 8), (6, 1)])
def test_trl_soft_overlong_punishment_is_dapo_eq_13_under_our_reward_contract(max_len, cache):
    # TRL's own function (re-exported, not reimplemented), scored by rft_trl's RewardScorer as the trainer calls it:
    # `completion_ids` is one of the columns every reward function receives.
    import trl.rewards

    assert get_soft_overlong_punishment is trl.rewards.get_soft_overlong_punishment
    punishment = get_soft_overlong_punishment(max_completion_len=max_len, soft_punish_cache=cache)
    lengths = list(range(0, max_len + 3))
    scorer = RewardScorer([punishment])
    out = scorer(["p"] * len(lengths), ["c"] * len(lengths), completion_ids=[[5] * length for length in lengths])

    def dapo(length):
        # DAPO Eq. 13: 0 up to L_max - L_cache; then (L_max - L_cache - |y|) / L_cache down to -1 at L_max; -1 past it.
        if length <= max_len - cache:
            return 0.0
        if length <= max_len:
            return (max_len - cache - length) / cache
        return -1.0

    assert out.rewards.tolist() == pytest.approx([dapo(length) for length in lengths])
    assert out.valid.all() and scorer.names == ["soft_overlong_punishment_reward"]
    # By hand for the first case: L_max 10, L_cache 4 -> 6 tokens 0, 7 tokens -1/4, 9 tokens -3/4, 10 -1, 11 -1.
    if (max_len, cache) == (10, 4):
        assert [out.rewards[n].item() for n in (6, 7, 9, 10, 11)] == [0.0, -0.25, -0.75, -1.0, -1.0]
        assert not math.isclose(out.rewards[8].item(), 0.0)  # control: the buffer is punished
