import math

import pytest
import torch

from rft_trl.core import (
    ADVANTAGE_ESTIMATORS,
    compute_advantages,
    compute_discounted_returns,
    compute_gae,
    group_centered_scores,
    group_norm_scores,
    masked_mean,
    masked_var,
    masked_whiten,
    rloo_scores,
    scores_to_token_rewards,
)

# ---------------------------------------------------------------------------------------------------------------
# Masked statistics


def test_masked_statistics_by_hand():
    values = torch.tensor([[1.0, 2.0, math.inf], [3.0, math.nan, 6.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, False, True]])
    # Valid entries 1, 2, 3, 6: mean 3; squared deviations 4, 1, 0, 9 = 14; unbiased 14 / 3, biased 14 / 4.
    assert masked_mean(values, mask).item() == pytest.approx(3.0)
    assert masked_var(values, mask).item() == pytest.approx(14 / 3)
    assert masked_var(values, mask, unbiased=False).item() == pytest.approx(3.5)
    # Per row: means 1.5 and 4.5; unbiased variances 0.5 and 4.5.
    torch.testing.assert_close(masked_mean(values, mask, dim=-1), torch.tensor([1.5, 4.5]))
    torch.testing.assert_close(masked_var(values, mask, dim=-1), torch.tensor([0.5, 4.5]))
    # The inf and nan sit in masked slots: they must not reach the gradient either.
    masked_var(values, mask).backward()
    assert torch.isfinite(values.grad).all()


def test_masked_statistics_of_empty_and_single_slices():
    values = torch.tensor([[5.0, 7.0], [2.0, 9.0]])
    mask = torch.tensor([[False, False], [True, False]])
    # An empty row has mean 0 (not nan); a single valid entry has variance 0 (no n - 1 = 0 division).
    torch.testing.assert_close(masked_mean(values, mask, dim=-1), torch.tensor([0.0, 2.0]))
    torch.testing.assert_close(masked_var(values, mask, dim=-1), torch.tensor([0.0, 0.0]))


def test_masked_whiten_by_hand():
    values = torch.tensor([1.0, 2.0, 3.0, 100.0])
    mask = torch.tensor([True, True, True, False])
    # Valid 1, 2, 3: mean 2, unbiased std 1 -> -1, 0, 1; the masked slot becomes 0.
    torch.testing.assert_close(masked_whiten(values, mask, eps=0.0), torch.tensor([-1.0, 0.0, 1.0, 0.0]))
    # Without the shift the mean comes back: 1, 2, 3 (std is already 1).
    torch.testing.assert_close(
        masked_whiten(values, mask, shift_mean=False, eps=0.0), torch.tensor([1.0, 2.0, 3.0, 0])
    )


# ---------------------------------------------------------------------------------------------------------------
# GAE and discounted returns


def test_gae_by_hand():
    # rewards [0, 0, 1], values [0.5, 0.6, 0.7], gamma 0.9, lambda 0.8 (gamma * lambda = 0.72):
    # t=2: delta = 1 + 0.9 * 0 - 0.7 = 0.3;       A2 = 0.3
    # t=1: delta = 0 + 0.9 * 0.7 - 0.6 = 0.03;    A1 = 0.03 + 0.72 * 0.3 = 0.246
    # t=0: delta = 0 + 0.9 * 0.6 - 0.5 = 0.04;    A0 = 0.04 + 0.72 * 0.246 = 0.21712
    # returns = A + V = [0.71712, 0.846, 1.0]; the padded 4th slot is 0 in both.
    rewards = torch.tensor([[0.0, 0.0, 1.0, 5.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 0.6, 0.7, 9.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0]])
    advantages, returns = compute_gae(rewards, values, mask, gamma=0.9, lambd=0.8)
    torch.testing.assert_close(advantages, torch.tensor([[0.21712, 0.246, 0.3, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(returns, torch.tensor([[0.71712, 0.846, 1.0, 0.0]], dtype=torch.float64))


def naive_gae(rewards, values, gamma, lambd):
    """Textbook GAE for one sequence without padding, as python lists."""
    advantages, last = [0.0] * len(rewards), 0.0
    for t in reversed(range(len(rewards))):
        next_value = values[t + 1] if t + 1 < len(rewards) else 0.0
        last = rewards[t] + gamma * next_value - values[t] + gamma * lambd * last
        advantages[t] = last
    return advantages


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gae_matches_naive_loop_with_padding_and_holes(dtype):
    # Each row: random right or left padding and, in some rows, a hole (e.g. a tool reply inside a multi-turn
    # completion). The reference compacts every row to its action tokens, runs the textbook loop, scatters back.
    torch.manual_seed(0)
    batch, num_actions, gamma, lambd = 6, 9, 0.95, 0.9
    rewards = torch.randn(batch, num_actions, dtype=dtype)
    values = torch.randn(batch, num_actions, dtype=dtype)
    mask = torch.ones(batch, num_actions, dtype=torch.bool)
    mask[0, 6:] = False  # right padding
    mask[1, :3] = False  # left padding
    mask[2, 3:5] = False  # hole
    mask[3, :] = False  # no action at all
    mask[4, [1, 4, 8]] = False  # several holes
    advantages, returns = compute_gae(rewards, values, mask, gamma, lambd)

    expected_adv = torch.zeros_like(rewards)
    for b in range(batch):
        idx = mask[b].nonzero().squeeze(-1)
        row = naive_gae(rewards[b, idx].tolist(), values[b, idx].tolist(), gamma, lambd)
        expected_adv[b, idx] = torch.tensor(row, dtype=dtype)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(advantages, expected_adv, atol=tol, rtol=tol)
    torch.testing.assert_close(returns, torch.where(mask, expected_adv + values, 0), atol=tol, rtol=tol)


def test_gae_invalid_rows_get_zero():
    rewards, values = torch.ones(2, 3), torch.ones(2, 3)
    advantages, returns = compute_gae(rewards, values, torch.ones(2, 3), valid=torch.tensor([True, False]))
    assert advantages[0].abs().sum() > 0 and returns[0].abs().sum() > 0
    assert (advantages[1] == 0).all() and (returns[1] == 0).all()


def test_discounted_returns_by_hand():
    # rewards [0, 0, 1] with gamma 0.5: G = [0.25, 0.5, 1]; a hole at slot 1 makes slot 0 the direct predecessor
    # of slot 2: G = [0.5, 0, 1].
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 7.0, 1.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 1]])
    returns = compute_discounted_returns(rewards, mask, gamma=0.5)
    torch.testing.assert_close(returns, torch.tensor([[0.25, 0.5, 1.0], [0.5, 0.0, 1.0]]))


def test_scores_to_token_rewards_places_score_on_last_action_token():
    # Right-padded row: last action at slot 1; left-padded: slot 2; a hole keeps the last true slot; no actions:
    # no score. KL penalty 0.5 * kl on action tokens only.
    mask = torch.tensor([[1, 1, 0], [0, 1, 1], [1, 0, 0], [0, 0, 0]])
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0])
    kl = torch.full((4, 3), 0.2)
    rewards = scores_to_token_rewards(scores, mask, kl, kl_coef=0.5)
    expected = torch.tensor([[-0.1, 0.9, 0.0], [0.0, -0.1, 1.9], [2.9, 0.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(rewards, expected)


# ---------------------------------------------------------------------------------------------------------------
# Group baselines


def test_group_estimators_by_hand():
    scores = torch.tensor([1.0, 0.0, 1.0, 0.0, 3.0, 0.0, 0.0, 0.0])
    # Group 1 {1, 0, 1, 0}: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = 0.57735 -> +-0.5 / 0.57735 = +-0.866025.
    # Group 2 {3, 0, 0, 0}: mean 0.75, std sqrt((2.25^2 + 3 * 0.75^2) / 3) = 1.5 -> 1.5, -0.5, -0.5, -0.5.
    expected_norm = [0.866025, -0.866025, 0.866025, -0.866025, 1.5, -0.5, -0.5, -0.5]
    torch.testing.assert_close(group_norm_scores(scores, 4), torch.tensor(expected_norm), atol=1e-5, rtol=0)
    # Dr. GRPO: r - mean only.
    expected_centered = [0.5, -0.5, 0.5, -0.5, 2.25, -0.75, -0.75, -0.75]
    torch.testing.assert_close(group_centered_scores(scores, 4), torch.tensor(expected_centered))
    # RLOO: r_i - (sum - r_i) / 3. Group 1: 1 - 1/3 = 2/3, 0 - 2/3; group 2: 3 - 0 = 3, 0 - 3/3 = -1.
    expected_rloo = [2 / 3, -2 / 3, 2 / 3, -2 / 3, 3.0, -1.0, -1.0, -1.0]
    torch.testing.assert_close(rloo_scores(scores, 4), torch.tensor(expected_rloo))


def test_group_estimators_exclude_invalid_samples_by_hand():
    # Group {1, 0, 5 (invalid: reward failed), 0}: statistics over {1, 0, 0} only, mean 1/3.
    scores = torch.tensor([1.0, 0.0, 5.0, 0.0])
    valid = torch.tensor([True, True, False, True])
    torch.testing.assert_close(group_centered_scores(scores, 4, valid), torch.tensor([2 / 3, -1 / 3, 0.0, -1 / 3]))
    # Unbiased std of {1, 0, 0}: sqrt(((2/3)^2 + 2 (1/3)^2) / 2) = sqrt(1/3) -> (2/3) / 0.57735 = 1.1547.
    torch.testing.assert_close(
        group_norm_scores(scores, 4, valid), torch.tensor([1.154700, -0.577350, 0.0, -0.577350]), atol=1e-5, rtol=0
    )
    # RLOO over the 2 other valid samples: 1 - 0 = 1; 0 - (1 + 0) / 2 = -0.5.
    torch.testing.assert_close(rloo_scores(scores, 4, valid), torch.tensor([1.0, -0.5, 0.0, -0.5]))
    # A sample alone in its group has no baseline: 0 for all three.
    alone = torch.tensor([True, False, False, False])
    for fn in (group_centered_scores, group_norm_scores, rloo_scores):
        assert (fn(scores, 4, alone) == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_group_estimators_match_naive_per_group_loops(dtype):
    torch.manual_seed(1)
    group_size, groups = 5, 7
    scores = torch.randn(groups * group_size).to(dtype)
    valid = torch.rand(groups * group_size) > 0.3
    norm, centered, rloo = (
        fn(scores, group_size, valid) for fn in (group_norm_scores, group_centered_scores, rloo_scores)
    )
    for g in range(groups):
        rows = range(g * group_size, (g + 1) * group_size)
        kept = [i for i in rows if valid[i]]
        vals = scores[kept].double()
        for i in rows:
            if not valid[i]:
                assert norm[i] == centered[i] == rloo[i] == 0
                continue
            r = scores[i].double()
            std = vals.std().item() if len(kept) > 1 else 0.0
            others = [scores[j].double() for j in kept if j != i]
            tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
            assert centered[i].item() == pytest.approx((r - vals.mean()).item(), abs=tol)
            assert norm[i].item() == pytest.approx(((r - vals.mean()) / (std + 1e-6)).item(), abs=tol, rel=tol)
            expected_rloo = (r - sum(others) / len(others)).item() if others else 0.0
            assert rloo[i].item() == pytest.approx(expected_rloo, abs=tol)


# ---------------------------------------------------------------------------------------------------------------
# The dispatcher


def test_reinforce_plus_plus_by_hand():
    # Two rows of 2 tokens, scores [1, 0], KL penalty 1.0 * [[0.1, 0.1], [0, 0]], gamma 1:
    # token rewards row 0: [-0.1, 1 - 0.1 = 0.9] -> returns [0.8, 0.9]; row 1: [0, 0] -> [0, 0].
    # Whitening over the 4 tokens: mean 0.425, unbiased std sqrt((0.375^2 + 0.475^2 + 2 * 0.425^2) / 3) = 0.492443.
    mask = torch.ones(2, 2, dtype=torch.bool)
    kl = torch.tensor([[0.1, 0.1], [0.0, 0.0]])
    advantages, returns = compute_advantages("reinforce++", torch.tensor([1.0, 0.0]), mask, kl=kl, kl_coef=1.0)
    torch.testing.assert_close(returns, torch.tensor([[0.8, 0.9], [0.0, 0.0]]))
    std = math.sqrt((0.375**2 + 0.475**2 + 2 * 0.425**2) / 3)
    expected = torch.tensor([[0.375, 0.475], [-0.425, -0.425]]) / (std + 1e-6)
    torch.testing.assert_close(advantages, expected)


def test_reinforce_plus_plus_baseline_by_hand():
    # Groups of 2: scores [1, 0 | 3, 3] -> centred [0.5, -0.5 | 0, 0] -> returns constant per row (gamma 1).
    # Whitening over 8 tokens: mean 0, unbiased std sqrt(4 * 0.25 / 7) = 0.377964 -> +-1.322876 and 0.
    mask = torch.ones(4, 2, dtype=torch.bool)
    advantages, _ = compute_advantages("reinforce++-baseline", torch.tensor([1.0, 0.0, 3.0, 3.0]), mask, group_size=2)
    row = 0.5 / (math.sqrt(1 / 7) + 1e-6)
    torch.testing.assert_close(advantages, torch.tensor([[row, row], [-row, -row], [0.0, 0.0], [0.0, 0.0]]))


@pytest.mark.parametrize("estimator", ADVANTAGE_ESTIMATORS)
def test_every_estimator_broadcasts_its_score_and_zeroes_invalid_and_padding(estimator):
    # No KL and gamma = 1: a group estimator gives every action token of a row its baselined score; invalid rows and
    # padding get 0. For gae, lambda = 1 with zero values is the Monte-Carlo return: the raw score.
    torch.manual_seed(2)
    scores = torch.tensor([1.0, 0.0, 0.5, 2.0, 7.0, 1.0])
    mask = torch.ones(6, 4, dtype=torch.bool)
    mask[1, 2:] = False
    valid = torch.tensor([True, True, True, True, False, True])
    kwargs = {"values": torch.zeros(6, 4), "lambd": 1.0} if estimator == "gae" else {}
    advantages, returns = compute_advantages(estimator, scores, mask, group_size=3, valid=valid, **kwargs)
    assert (advantages[~mask] == 0).all() and (returns[~mask] == 0).all()
    assert (advantages[4] == 0).all() and (returns[4] == 0).all()
    expected_scores = {
        "gae": scores,
        "group_norm": group_norm_scores(scores, 3, valid),
        "dr_grpo": group_centered_scores(scores, 3, valid),
        "rloo": rloo_scores(scores, 3, valid),
        "reinforce++": scores,
        "reinforce++-baseline": group_centered_scores(scores, 3, valid),
    }[estimator]
    expected_returns = torch.where(mask & valid[:, None], expected_scores[:, None], 0)
    torch.testing.assert_close(returns, expected_returns)
    if estimator.startswith("reinforce++"):
        token_mask = mask & valid[:, None]
        torch.testing.assert_close(advantages, masked_whiten(expected_returns, token_mask, eps=1e-6))
        # Whitened over valid tokens only: mean 0, unbiased std ~1 there.
        assert masked_mean(advantages, token_mask).abs().item() < 1e-6
    else:
        torch.testing.assert_close(advantages, expected_returns)


def test_dispatcher_errors():
    scores, mask = torch.zeros(4), torch.ones(4, 3)
    with pytest.raises(ValueError, match=r"Unknown advantage estimator 'ppo'; expected one of \('gae', 'group_norm'"):
        compute_advantages("ppo", scores, mask)
    with pytest.raises(ValueError, match="values must be given for 'gae' and only for 'gae'"):
        compute_advantages("gae", scores, mask)
    with pytest.raises(ValueError, match="values must be given for 'gae' and only for 'gae'"):
        compute_advantages("group_norm", scores, mask, group_size=2, values=torch.zeros(4, 3))
    with pytest.raises(ValueError, match="'rloo' needs group_size >= 2"):
        compute_advantages("rloo", scores, mask, group_size=1)
    with pytest.raises(ValueError, match=r"The batch size \(4\) must be a positive multiple of group_size \(3\)"):
        compute_advantages("group_norm", scores, mask, group_size=3)
    with pytest.raises(ValueError, match=r"valid must have shape \[B\] = \(4,\)"):
        compute_advantages("dr_grpo", scores, mask, group_size=2, valid=torch.ones(3, dtype=torch.bool))
