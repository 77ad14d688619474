"""rft_trl.trainers.replay_buffer: storage, limit, offload, DataLoader batches and advantage whitening."""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from rft_trl.trainers import replay_buffer as replay_buffer_module
from rft_trl.trainers.experience import Experience, ExperienceVL
from rft_trl.trainers.replay_buffer import NaiveReplayBuffer, NaiveReplayBufferVL
from rft_trl.trainers.replay_buffer_utils import BufferItemVL, make_experience_batch


def assert_same(actual, expected, where):
    """Exact equality of tensors, lists of tensors and dicts of tensors (dtype, shape and values)."""
    if isinstance(expected, torch.Tensor):
        assert actual.dtype == expected.dtype and actual.shape == expected.shape, where
        assert torch.equal(actual, expected), where
    elif isinstance(expected, dict):
        assert list(actual) == list(expected), where
        for key in expected:
            assert_same(actual[key], expected[key], f"{where}[{key!r}]")
    else:
        assert isinstance(actual, list) and len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_same(a, e, f"{where}[{i}]")


def rollout_experience(prompt_lens, completion_lens, seed=0, experience_class=Experience, **kwargs):
    """
    A batch laid out as generation leaves it: prompts left-padded to the longest prompt, completions right-padded to
    the longest completion.
    """
    g = torch.Generator().manual_seed(seed)
    batch_size, max_prompt, max_completion = len(prompt_lens), max(prompt_lens), max(completion_lens)
    sequences = torch.zeros(batch_size, max_prompt + max_completion, dtype=torch.long)  # (B, S)
    attention_mask = torch.zeros_like(sequences)  # (B, S)
    action_mask = torch.zeros(batch_size, max_completion, dtype=torch.bool)  # (B, A)
    for i, (prompt, completion) in enumerate(zip(prompt_lens, completion_lens)):
        start, end = max_prompt - prompt, max_prompt + completion
        sequences[i, start:end] = torch.randint(1, 100, (end - start,), generator=g)
        attention_mask[i, start:end] = 1
        action_mask[i, :completion] = True
    per_token = {
        name: torch.randn(batch_size, max_completion, generator=g) * action_mask
        for name in ("action_log_probs", "base_action_log_probs", "values", "returns", "advantages")
    }
    info = {"reward": torch.randn(batch_size, generator=g), "response_length": torch.tensor(completion_lens).float()}
    return experience_class(
        sequences=sequences,
        attention_mask=attention_mask,
        action_mask=action_mask,
        info=info,
        **per_token,
        **kwargs,
    )


def test_append_stores_unpadded_items_and_leaves_the_experience_alone():
    experience = rollout_experience([3, 1], [2, 4])
    before = experience.sequences.clone()
    buffer = NaiveReplayBuffer(sample_batch_size=2)
    buffer.append(experience)
    assert len(buffer) == 2
    max_prompt = 3
    for i, (prompt, completion) in enumerate([(3, 2), (1, 4)]):
        item = buffer[i]
        assert torch.equal(item.sequences, experience.sequences[i, max_prompt - prompt : max_prompt + completion])
        assert torch.equal(item.advantages, experience.advantages[i, :completion])
        assert item.action_mask.all() and item.action_mask.numel() == completion
        assert torch.equal(item.info["reward"], experience.info["reward"][i])
    assert torch.equal(experience.sequences, before)


@pytest.mark.parametrize("packing_samples", [False, True])
def test_dataloader_yields_batches_of_the_stored_items(packing_samples):
    buffer = NaiveReplayBuffer(sample_batch_size=2, packing_samples=packing_samples)
    buffer.append(rollout_experience([3, 1, 2], [2, 4, 1], seed=0))
    buffer.append(rollout_experience([2, 2], [3, 3], seed=1))
    loader = DataLoader(buffer, batch_size=buffer.sample_batch_size, shuffle=False, collate_fn=buffer.collate_fn)
    batches = list(loader)
    assert len(batches) == 3 and all(type(batch) is Experience for batch in batches)
    for index, batch in enumerate(batches):
        expected = make_experience_batch(buffer.items[2 * index : 2 * index + 2], packing_samples=packing_samples)
        assert batch.is_packed == packing_samples
        for name in ("sequences", "attention_mask", "action_mask", "advantages", "info"):
            assert_same(getattr(batch, name), getattr(expected, name), name)


def test_vl_experience_round_trips_through_the_buffer():
    pixels = {"pixel_values": torch.randn(12, 4), "image_grid_thw": torch.tensor([[1, 2, 2], [1, 2, 4]])}
    experience = rollout_experience(
        [3, 2],
        [2, 2],
        experience_class=ExperienceVL,
        multimodal_inputs=pixels,
        multimodal_shapes={"pixel_values": [None, (12, 4)], "image_grid_thw": [None, (2, 3)]},
    )
    buffer = NaiveReplayBufferVL(sample_batch_size=2)
    buffer.append(experience)
    assert all(isinstance(item, BufferItemVL) for item in buffer.items)
    assert buffer[0].pixel_values is None and torch.equal(buffer[1].image_grid_thws, pixels["image_grid_thw"])
    (batch,) = DataLoader(buffer, batch_size=2, collate_fn=buffer.collate_fn)
    assert type(batch) is ExperienceVL
    assert_same(batch.multimodal_inputs, pixels, "multimodal_inputs")
    assert batch.multimodal_shapes == {"pixel_values": [None, (12, 4)], "image_grid_thw": [None, (2, 3)]}


def test_limit_drops_the_oldest_items():
    buffer = NaiveReplayBuffer(sample_batch_size=2, limit=3)
    experiences = [rollout_experience([2, 2], [1, 1], seed=seed) for seed in range(3)]
    for experience in experiences:
        buffer.append(experience)
    # 6 samples appended, the last 3 kept in order: sample 1 of batch 1, then both of batch 2.
    assert len(buffer) == 3
    expected = [(1, 1), (2, 0), (2, 1)]
    for item, (batch, row) in zip(buffer.items, expected):
        assert torch.equal(item.info["reward"], experiences[batch].info["reward"][row])
    unlimited = NaiveReplayBuffer(sample_batch_size=2, limit=0)
    for experience in experiences:
        unlimited.append(experience)
    assert len(unlimited) == 6


@pytest.mark.parametrize("cpu_offload", [True, False])
def test_cpu_offload_moves_items_to_cpu(monkeypatch, cpu_offload):
    moved_to = []
    real_item_to_device = replay_buffer_module.item_to_device

    def recording_item_to_device(item, device):
        moved_to.append(device)
        return real_item_to_device(item, device)

    monkeypatch.setattr(replay_buffer_module, "item_to_device", recording_item_to_device)
    buffer = NaiveReplayBuffer(sample_batch_size=2, cpu_offload=cpu_offload)
    buffer.append(rollout_experience([2, 3], [2, 1]))
    assert moved_to == (["cpu", "cpu"] if cpu_offload else [])
    assert all(item.sequences.device.type == "cpu" for item in buffer.items)


def test_clear_and_alias():
    buffer = NaiveReplayBuffer(sample_batch_size=2)
    buffer.append(rollout_experience([2], [2]))
    buffer.clear()
    assert len(buffer) == 0 and buffer.items == []
    # The seed's vision-language buffer is a face of the one buffer (it keeps the seed's item classes).
    assert issubclass(NaiveReplayBufferVL, NaiveReplayBuffer)


# --------------------------------------------------------------------------- normalize


def naive_whiten(values, masks):
    """Reference whitening with numpy: statistics over masked positions, population std, every position scaled."""
    selected = np.concatenate([v.double().numpy()[m.numpy()] for v, m in zip(values, masks)])
    mean, std = selected.mean(), selected.std()
    return [(v.double().numpy() - mean) / std for v in values]


def _filled_buffer(seed, prompt_lens, completion_lens, dtype=torch.float32):
    buffer = NaiveReplayBuffer(sample_batch_size=2)
    buffer.append(rollout_experience(prompt_lens, completion_lens, seed=seed))
    g = torch.Generator().manual_seed(seed + 100)
    for index, item in enumerate(buffer.items):
        # Interior masked positions hold values far off the rest: they must not move the statistics.
        item.action_mask = item.action_mask.clone()
        item.action_mask[0] = False
        item.advantages = torch.where(item.action_mask, item.advantages, torch.full_like(item.advantages, 50.0))
        item.advantages = (item.advantages * 3 + 1).to(dtype)
        item.returns = torch.randn(item.returns.shape, generator=g).to(dtype) + index
    return buffer


@pytest.mark.parametrize("attribute", ["advantages", "returns"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_normalize_matches_naive_whitening(attribute, dtype):
    buffer = _filled_buffer(0, [2, 3, 1], [4, 3, 5], dtype=dtype)
    values = [getattr(item, attribute) for item in buffer.items]
    expected = naive_whiten(values, [item.action_mask for item in buffer.items])
    buffer.normalize(attribute)
    for item, reference, original in zip(buffer.items, expected, values):
        assert getattr(item, attribute).dtype == dtype
        np.testing.assert_allclose(getattr(item, attribute).double().numpy(), reference, rtol=1e-5, atol=1e-6)
        assert original is not getattr(item, attribute)


def test_normalize_without_action_mask_uses_every_position():
    buffer = _filled_buffer(1, [2, 2], [3, 2])
    for item in buffer.items:
        item.action_mask = None
    values = [item.advantages for item in buffer.items]
    expected = naive_whiten(values, [torch.ones_like(v, dtype=torch.bool) for v in values])
    buffer.normalize("advantages")
    for item, reference in zip(buffer.items, expected):
        np.testing.assert_allclose(item.advantages.double().numpy(), reference, rtol=1e-5, atol=1e-6)


def test_normalize_per_sample_attribute_counts_every_sample():
    # Per-sample returns [1, 2, 3, 6]: mean 3, population variance (4 + 1 + 0 + 9) / 4 = 3.5.
    buffer = _filled_buffer(6, [2, 2, 2, 2], [3, 2, 4, 2])
    for item, value in zip(buffer.items, [1.0, 2.0, 3.0, 6.0]):
        item.returns = torch.tensor([value])
    buffer.normalize("returns")
    expected = [(value - 3.0) / 3.5**0.5 for value in [1.0, 2.0, 3.0, 6.0]]
    assert [item.returns.item() for item in buffer.items] == pytest.approx(expected)


def test_normalize_constant_attribute_is_centred():
    # Variance 0 is floored at eps, so (x - mean) / sqrt(eps) = 0 / 1e-4 = 0 everywhere.
    buffer = _filled_buffer(2, [2, 2], [3, 2])
    for item in buffer.items:
        item.advantages = torch.full_like(item.advantages, 3.0)
    buffer.normalize("advantages")
    assert all(torch.equal(item.advantages, torch.zeros_like(item.advantages)) for item in buffer.items)


def test_normalize_errors():
    buffer = _filled_buffer(3, [2], [2])
    with pytest.raises(ValueError, match="Cannot normalize 'action_mask'; choose one of advantages, returns, values"):
        buffer.normalize("action_mask")
    buffer.items[0].values = None
    with pytest.raises(ValueError, match=r"normalize\('values'\) found items whose values is None"):
        buffer.normalize("values")
    with pytest.raises(ValueError, match="found no action positions"):
        NaiveReplayBuffer(sample_batch_size=2).normalize("advantages")


class ThreadAllReduce:
    """Sum-all-reduce between threads that stand in for data-parallel processes."""

    def __init__(self, world_size):
        self.barrier = threading.Barrier(world_size, timeout=10)
        self.slots = [None] * world_size

    def for_rank(self, rank):
        def all_reduce(tensor):
            self.slots[rank] = tensor.clone()
            self.barrier.wait()
            total = sum(self.slots)
            self.barrier.wait()  # nobody overwrites a slot before everyone has summed
            return total

        return all_reduce


@pytest.mark.parametrize("shards", [([2, 3, 1], [4, 3, 5], [2, 2], [1, 6]), ([2, 3], [4, 3], None, None)])
def test_normalize_with_all_reduce_uses_global_statistics(shards):
    prompts_0, completions_0, prompts_1, completions_1 = shards
    rank_0 = _filled_buffer(4, prompts_0, completions_0)
    # The second process may hold nothing at all; it still takes part in the reductions.
    rank_1 = _filled_buffer(5, prompts_1, completions_1) if prompts_1 else NaiveReplayBuffer(sample_batch_size=2)
    items = rank_0.items + rank_1.items
    expected = naive_whiten([item.advantages for item in items], [item.action_mask for item in items])

    reducer = ThreadAllReduce(world_size=2)
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [
            pool.submit(buffer.normalize, "advantages", reducer.for_rank(rank))
            for rank, buffer in enumerate((rank_0, rank_1))
        ]
        for future in futures:
            future.result()
    for item, reference in zip(rank_0.items + rank_1.items, expected):
        np.testing.assert_allclose(item.advantages.double().numpy(), reference, rtol=1e-5, atol=1e-6)
