"""Positions, masks and index maps for padded and packed batches (rft_trl.models.packing), by hand."""

import pytest
import torch

from rft_trl.models.packing import (
    action_positions_packed,
    pack_sequences,
    packed_seq_lens_from_sample_ids,
    pad_packed,
    select_action_positions,
    unpack_values,
)


def test_packed_seq_lens_from_sample_ids():
    # OpenRLHF's packed mask numbers the samples: 1 1 1 | 2 | 3 3, then trailing padding (0).
    assert packed_seq_lens_from_sample_ids(torch.tensor([[1, 1, 1, 2, 3, 3, 0, 0]])) == [3, 1, 2]
    with pytest.raises(ValueError, match="shape \\[1, T\\]"):
        packed_seq_lens_from_sample_ids(torch.tensor([1, 1, 2]))
    with pytest.raises(ValueError, match="non-decreasing"):
        packed_seq_lens_from_sample_ids(torch.tensor([[1, 2, 1]]))


def test_pack_unpack_pad_round_trip():
    sequences = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 0]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])
    packed, lens = pack_sequences(sequences, mask)
    assert torch.equal(packed, torch.tensor([[5, 6, 7, 8, 9, 10, 11]]))
    assert lens == [3, 4]
    pieces = unpack_values(packed, lens)
    assert [p.tolist() for p in pieces] == [[5, 6, 7], [8, 9, 10, 11]]
    # Back to a batch, padding with -1 on either side.
    assert pad_packed(packed, lens, -1).tolist() == [[5, 6, 7, -1], [8, 9, 10, 11]]
    assert pad_packed(packed, lens, -1, side="left").tolist() == [[-1, 5, 6, 7], [8, 9, 10, 11]]
    # Per-token values with a trailing dim unpack too.
    values = torch.arange(14.0).reshape(1, 7, 2)
    assert unpack_values(values, lens)[1].shape == (4, 2)


def test_pack_unpack_errors():
    with pytest.raises(ValueError, match="must match"):
        pack_sequences(torch.zeros(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match="shape \\[1, T, ...\\]"):
        unpack_values(torch.zeros(5), [5])
    with pytest.raises(ValueError, match="sum to 4 but the packed row holds 5"):
        unpack_values(torch.zeros(1, 5), [2, 2])
    with pytest.raises(ValueError, match="'left' or 'right'"):
        pad_packed(torch.zeros(1, 2), [2], side="middle")


def test_action_positions_packed_by_hand():
    # Samples of 4, 3 and 2 tokens occupy [0, 4), [4, 7), [7, 9). Actions are the last 2, 1 and 1 tokens:
    # tokens 2, 3 (predicted by logits 1, 2), token 6 (logits 5), token 8 (logits 7).
    assert action_positions_packed([4, 3, 2], [2, 1, 1]).tolist() == [1, 2, 5, 7]
    # A sample with no action contributes nothing; a sample of n tokens can have n - 1 actions at most.
    assert action_positions_packed([4, 3], [0, 2]).tolist() == [4, 5]
    with pytest.raises(ValueError, match="at most 2 actions, got 3"):
        action_positions_packed([3], [3])
    with pytest.raises(ValueError, match="one per packed sample"):
        action_positions_packed([3, 2], [1])
    with pytest.raises(ValueError, match="must be >= 0"):
        action_positions_packed([3], [-1])


def test_select_action_positions_padded_and_packed():
    # Per-token values = 10 * position, so the selected positions can be read off.
    sequences = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])
    per_token = (10 * torch.arange(5.0)).expand(2, 5).unsqueeze(-1)  # [2, 5, 1]
    # num_actions=2: tokens at columns 3, 4 are predicted by positions 2, 3.
    values, labels = select_action_positions(per_token, sequences, 2, None)
    assert values[..., 0].tolist() == [[20.0, 30.0], [20.0, 30.0]]
    assert labels.tolist() == [[4, 5], [9, 10]]
    # None: every next token, positions 0..3 predicting tokens 1..4.
    values, labels = select_action_positions(per_token, sequences, None, None)
    assert values.shape == (2, 4, 1) and labels.tolist() == [[2, 3, 4, 5], [7, 8, 9, 10]]
    # Packed [1, 5] = samples [1, 2, 3] and [4, 5]: one action each, tokens 3 and 5, positions 1 and 3.
    packed = torch.tensor([[1, 2, 3, 4, 5]])
    values, labels = select_action_positions(per_token[:1], packed, [1, 1], [3, 2])
    assert values[..., 0].tolist() == [[10.0, 30.0]]
    assert labels.tolist() == [[3, 5]]


def test_select_action_positions_errors():
    sequences = torch.zeros(1, 4, dtype=torch.long)
    per_token = torch.zeros(1, 4, 3)
    with pytest.raises(ValueError, match="num_actions as a list"):
        select_action_positions(per_token, sequences, 2, [2, 2])
    with pytest.raises(ValueError, match="takes num_actions as an int"):
        select_action_positions(per_token, sequences, [2], None)
    with pytest.raises(ValueError, match="must be in \\[1, 3\\]"):
        select_action_positions(per_token, sequences, 4, None)
