"""Positions, masks and index maps for padded and packed batches.

Two batch layouts reach the actor, the critic and the reward model:

- **padded**: `sequences` of shape `[B, L]`, prompts left-padded and responses right-padded, with an
  `attention_mask` of zeros on the padding;
- **packed**: `sequences` of shape `[1, T]` holding the samples back to back with no padding at all, and
  `packed_seq_lens` (one length per sample, summing to `T`).

A packed forward is equivalent to the padded one when every sample's positions restart at 0 and no token attends
across a sample boundary. transformers builds exactly that attention pattern from restarting `position_ids` when no
2D attention mask is given (sdpa/eager: a block-diagonal mask; flash-attention: the varlen kernel).

Everything here is a pure function of tensors and plain numbers.
"""

from __future__ import annotations

import torch

__all__ = [
    "action_positions_packed",
    "pack_sequences",
    "packed_seq_lens_from_sample_ids",
    "pad_packed",
    "select_action_positions",
    "unpack_values",
]


def packed_seq_lens_from_sample_ids(sample_ids: torch.Tensor) -> list[int]:
    """
    Sample lengths from a packed "attention mask" that numbers the samples (`[[1, 1, 1, 2, 2, 3, ...]]`).

    This is the packed-mask convention of OpenRLHF-style trainers: token `t` belongs to sample `sample_ids[0, t]`.
    Trailing zeros (padding at the end of the packed row) are not a sample.

    Args:
        sample_ids (`torch.Tensor` of shape `[1, T]`):
            Non-decreasing sample numbers, each sample's tokens contiguous.

    Returns:
        `list[int]`: the length of each sample, in order.
    """
    if sample_ids.dim() != 2 or sample_ids.shape[0] != 1:
        raise ValueError(f"A packed sample-id mask must have shape [1, T], got {tuple(sample_ids.shape)}.")
    ids = sample_ids[0]
    ids = ids[ids != 0]
    if (ids.diff() < 0).any():
        raise ValueError("A packed sample-id mask must number the samples in non-decreasing order.")
    return torch.unique_consecutive(ids, return_counts=True)[1].tolist()


def pack_sequences(sequences: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """
    Remove the padding of a padded batch and concatenate its rows.

    Args:
        sequences (`torch.Tensor` of shape `[B, L]`):
            Token ids (or any per-token values).
        attention_mask (`torch.Tensor` of shape `[B, L]`):
            1 on the tokens to keep. Each row's kept tokens need not be contiguous; their order is preserved.

    Returns:
        `tuple[torch.Tensor, list[int]]`: the packed row `[1, sum(lens)]` and the kept length of each row.
    """
    if sequences.shape[:2] != attention_mask.shape:
        raise ValueError(
            f"sequences {tuple(sequences.shape)} and attention_mask {tuple(attention_mask.shape)} must match."
        )
    keep = attention_mask.bool()
    packed = sequences[keep].unsqueeze(0)  # [1, T], boolean indexing walks the rows in order
    return packed, keep.sum(-1).tolist()


def unpack_values(packed: torch.Tensor, lengths: list[int]) -> list[torch.Tensor]:
    """
    Split a packed row into one tensor per sample.

    Args:
        packed (`torch.Tensor` of shape `[1, T, ...]`):
            Per-token values of the packed samples.
        lengths (`list[int]`):
            Length of each sample, summing to `T`.

    Returns:
        `list[torch.Tensor]`: views of shapes `[n_i, ...]`.
    """
    if packed.dim() < 2 or packed.shape[0] != 1:
        raise ValueError(f"A packed tensor must have shape [1, T, ...], got {tuple(packed.shape)}.")
    flat = packed[0]
    if flat.shape[0] != sum(lengths):
        raise ValueError(f"lengths sum to {sum(lengths)} but the packed row holds {flat.shape[0]} tokens.")
    return list(flat.split(lengths))


def pad_packed(
    packed: torch.Tensor, lengths: list[int], padding_value: float = 0, side: str = "right"
) -> torch.Tensor:
    """
    Turn a packed row back into a padded batch.

    Args:
        packed (`torch.Tensor` of shape `[1, T]`):
            Per-token values of the packed samples.
        lengths (`list[int]`):
            Length of each sample, summing to `T`.
        padding_value (`float`, *optional*, defaults to `0`):
            Value of the padding.
        side (`str`, *optional*, defaults to `"right"`):
            `"right"` or `"left"`: where the padding goes.

    Returns:
        `torch.Tensor` of shape `[len(lengths), max(lengths)]`.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}.")
    rows = unpack_values(packed, lengths)
    width = max(lengths)
    out = packed.new_full((len(lengths), width), padding_value)  # [B, max_len]
    for i, row in enumerate(rows):
        if side == "right":
            out[i, : row.shape[0]] = row
        else:
            out[i, width - row.shape[0] :] = row
    return out


def action_positions_packed(packed_seq_lens: list[int], num_actions: list[int], device=None) -> torch.Tensor:
    """
    Indices, in a packed row, of the logits that score each sample's action tokens.

    Sample `i` occupies `[s_i, e_i)`; its actions are its last `num_actions[i]` tokens `e_i - a_i .. e_i - 1`, each
    predicted by the logits one position earlier, `e_i - a_i - 1 .. e_i - 2`. The token scored by index `j` is
    `j + 1`.

    Args:
        packed_seq_lens (`list[int]`):
            Length of each packed sample.
        num_actions (`list[int]`):
            Number of action tokens at the end of each sample; `0 <= a_i <= n_i - 1` (the first token of a sample
            has no prediction inside that sample).
        device (`torch.device` or `str`, *optional*):
            Device of the result.

    Returns:
        `torch.LongTensor` of shape `[sum(num_actions)]`.
    """
    _check_lengths(packed_seq_lens, "packed_seq_lens", minimum=1)
    _check_lengths(num_actions, "num_actions", minimum=0)
    if len(num_actions) != len(packed_seq_lens):
        raise ValueError(
            f"num_actions has {len(num_actions)} entries but packed_seq_lens has {len(packed_seq_lens)}; "
            "give one per packed sample."
        )
    pieces = []
    end = 0
    for length, actions in zip(packed_seq_lens, num_actions):
        end += length
        if actions > length - 1:
            raise ValueError(f"A sample of {length} tokens has at most {length - 1} actions, got {actions}.")
        pieces.append(torch.arange(end - actions - 1, end - 1, device=device))
    return torch.cat(pieces)


def select_action_positions(
    per_token: torch.Tensor,
    sequences: torch.Tensor,
    num_actions: int | list[int] | None,
    packed_seq_lens: list[int] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    The per-token outputs (logits, hidden states) at the positions that predict the action tokens, and those tokens.

    Position `t` of `per_token` predicts token `t + 1`. Padded: the actions are the last `num_actions` tokens of every
    row (or all tokens after the first with `num_actions=None`). Packed: the last `num_actions[i]` tokens of each
    sample.

    Args:
        per_token (`torch.Tensor` of shape `[B, L, ...]`):
            Model output per token, e.g. logits `[B, L, V]`.
        sequences (`torch.LongTensor` of shape `[B, L]`):
            Token ids.
        num_actions (`int`, `list[int]` or `None`):
            Padded: the completion width `R` (the last `R` columns), or `None` for every token after the first.
            Packed: the action count of each sample.
        packed_seq_lens (`list[int]`, *optional*):
            Packed sample lengths, or `None` for a padded batch.

    Returns:
        `tuple[torch.Tensor, torch.LongTensor]`: `[B, A, ...]` (a view when padded) and the action tokens `[B, A]`.
    """
    if packed_seq_lens is not None:
        if not isinstance(num_actions, (list, tuple)):
            raise ValueError("A packed forward needs num_actions as a list, one count per packed sample.")
        index = action_positions_packed(packed_seq_lens, list(num_actions), device=sequences.device)  # [A]
        return per_token[:, index], sequences[:, index + 1]
    if num_actions is None:
        return per_token[:, :-1], sequences[:, 1:]
    if not isinstance(num_actions, int):
        raise ValueError(f"A padded forward takes num_actions as an int, got {type(num_actions).__name__}.")
    if not 0 < num_actions < sequences.shape[1]:
        raise ValueError(
            f"num_actions={num_actions} must be in [1, {sequences.shape[1] - 1}] for sequences of width "
            f"{sequences.shape[1]}."
        )
    return per_token[:, -num_actions - 1 : -1], sequences[:, -num_actions:]


def _check_lengths(lengths: list[int], name: str, minimum: int) -> None:
    if len(lengths) == 0:
        raise ValueError(f"{name} must name at least one sample.")
    if min(lengths) < minimum:
        raise ValueError(f"Every entry of {name} must be >= {minimum}, got {list(lengths)}.")
