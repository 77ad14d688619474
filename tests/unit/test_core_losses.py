import math

import pytest
import torch
import torch.nn.functional as F

from rft_trl.core import LOSS_AGG_MODES, aggregate_loss, high_entropy_mask, lm_loss, policy_loss, value_loss

# ---------------------------------------------------------------------------------------------------------------
# Aggregation


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("token-mean", 2.5),  # (1 + 2 + 3 + 4) / 4 tokens
        ("seq-mean-token-mean", 3.0),  # (6 / 3 + 4 / 1) / 2 sequences
        ("seq-mean-token-sum", 5.0),  # (6 + 4) / 2
        ("seq-mean-token-sum-norm", 1.25),  # (6 / 4 + 4 / 4) / 2 with norm_length 4
    ],
)
def test_aggregate_loss_modes_by_hand(mode, expected):
    # Row 3 has no valid token (a dropped sample): it must not count as a sequence, and its inf/nan are never read.
    loss_mat = torch.tensor([[1.0, 2.0, 3.0], [4.0, math.inf, math.nan], [9.0, 9.0, math.inf]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    norm_length = 4 if mode == "seq-mean-token-sum-norm" else None
    assert aggregate_loss(loss_mat, mask, mode, norm_length).item() == pytest.approx(expected)


def test_aggregate_loss_errors():
    with pytest.raises(ValueError, match=r"Unknown loss_agg_mode 'mean'; expected one of \('token-mean'"):
        aggregate_loss(torch.zeros(1, 1), torch.ones(1, 1), "mean")
    with pytest.raises(ValueError, match="norm_length must be given for 'seq-mean-token-sum-norm' and only for it"):
        aggregate_loss(torch.zeros(1, 1), torch.ones(1, 1), "seq-mean-token-sum-norm")


# ---------------------------------------------------------------------------------------------------------------
# PPO policy loss


def _single_token(ratio, advantage, **kwargs):
    """Loss, gradient w.r.t. the log-prob, and metrics for one token with the given ratio and advantage."""
    log_probs = torch.tensor([[math.log(ratio)]], dtype=torch.float64, requires_grad=True)
    old = torch.zeros(1, 1, dtype=torch.float64)
    loss, metrics = policy_loss(log_probs, old, torch.tensor([[advantage]], dtype=torch.float64), **kwargs)
    loss.backward()
    return loss.item(), log_probs.grad.item(), {k: v.item() for k, v in metrics.items()}


@pytest.mark.parametrize(
    ("ratio", "advantage", "kwargs", "expected_loss", "expected_grad", "clipped"),
    [
        # A > 0, r = 1.5 above 1 + 0.2: min(1.5, 1.2) * 1 -> loss -1.2, clipped, no gradient.
        (1.5, 1.0, {}, -1.2, 0.0, 1.0),
        # A < 0, r = 1.5: min(-1.5, -1.2) = -1.5 -> loss 1.5, unclipped; d(-r A)/d log r = -r A = 1.5.
        (1.5, -1.0, {}, 1.5, 1.5, 0.0),
        # A < 0, r = 0.5 below 1 - 0.2: min(-0.5, -0.8) = -0.8 -> loss 0.8, clipped, no gradient.
        (0.5, -1.0, {}, 0.8, 0.0, 1.0),
        # A > 0, r = 0.5: min(0.5, 0.8) = 0.5 -> loss -0.5, unclipped, gradient -r A = -0.5.
        (0.5, 1.0, {}, -0.5, -0.5, 0.0),
        # Clip-higher (DAPO): eps_high 0.6 lets r = 1.5 through for A = 2: loss -3, gradient -3.
        (1.5, 2.0, {"eps_clip_high": 0.6}, -3.0, -3.0, 0.0),
        # ... while the low side still clips at 0.8: r = 0.5, A = -2 -> loss 1.6.
        (0.5, -2.0, {"eps_clip_high": 0.6}, 1.6, 0.0, 1.0),
    ],
)
def test_ppo_clipping_by_hand(ratio, advantage, kwargs, expected_loss, expected_grad, clipped):
    loss, grad, metrics = _single_token(ratio, advantage, **kwargs)
    assert loss == pytest.approx(expected_loss)
    assert grad == pytest.approx(expected_grad)
    assert metrics["clipfrac"] == clipped
    assert metrics["ratio_mean"] == pytest.approx(ratio)
    # approx_kl is the k3 estimate of KL(old || new): r - 1 - log r.
    assert metrics["approx_kl"] == pytest.approx(ratio - 1 - math.log(ratio))


def test_dual_clip_by_hand():
    # A = -1, r = 5, c = 3: PPO would give max(5, 1.2) = 5; dual clip caps it at c |A| = 3, with no gradient.
    loss, grad, metrics = _single_token(5.0, -1.0, dual_clip=3.0)
    assert (loss, grad, metrics["dual_clipfrac"]) == (pytest.approx(3.0), 0.0, 1.0)
    # r = 2 stays under the cap: loss 2, gradient -r A = 2.
    loss, grad, metrics = _single_token(2.0, -1.0, dual_clip=3.0)
    assert (loss, grad, metrics["dual_clipfrac"]) == (pytest.approx(2.0), pytest.approx(2.0), 0.0)
    # A > 0 is never dual-clipped: r = 5 is clipped at 1.2 as usual.
    loss, _, metrics = _single_token(5.0, 1.0, dual_clip=3.0)
    assert (loss, metrics["dual_clipfrac"]) == (pytest.approx(-1.2), 0.0)


@pytest.mark.parametrize("importance_sampling_level", ["token", "sequence"])
def test_advantages_per_sequence_broadcast_and_padding_is_ignored(importance_sampling_level):
    torch.manual_seed(0)
    log_probs = torch.randn(3, 4)
    old = log_probs + 0.1 * torch.randn(3, 4)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    advantages = torch.randn(3)
    level = {"importance_sampling_level": importance_sampling_level}
    per_seq, _ = policy_loss(log_probs, old, advantages, mask, **level)
    per_token, _ = policy_loss(log_probs, old, advantages[:, None].expand(3, 4), mask, **level)
    torch.testing.assert_close(per_seq, per_token)
    # -inf log-probs in padding change nothing, not even the gradient.
    padded = log_probs.masked_fill(~mask.bool(), -math.inf).requires_grad_()
    loss, _ = policy_loss(padded, old, advantages, mask, **level)
    torch.testing.assert_close(loss, per_seq)
    loss.backward()
    assert torch.isfinite(padded.grad).all()


# ---------------------------------------------------------------------------------------------------------------
# GSPO


def test_gspo_uses_the_sequence_ratio_for_every_token_by_hand():
    # Token ratios 1.1 and 0.9: s = exp(mean log r) = sqrt(0.99) = 0.994987, inside [0.8, 1.2]. With A = 1 each
    # token's loss is -s, so the loss is -0.994987 and each token's gradient is -s / 2 (its own ratio plays no part:
    # plain PPO would give -1.1 / 2 and -0.9 / 2).
    log_probs = torch.tensor([[math.log(1.1), math.log(0.9)]], dtype=torch.float64, requires_grad=True)
    loss, metrics = policy_loss(
        log_probs, torch.zeros(1, 2, dtype=torch.float64), torch.ones(1), importance_sampling_level="sequence"
    )
    loss.backward()
    s = math.sqrt(0.99)
    assert loss.item() == pytest.approx(-s)
    torch.testing.assert_close(log_probs.grad, torch.full((1, 2), -s / 2, dtype=torch.float64))
    # The ratio metrics describe the ratio the objective clips: the sequence ratio, not the token ratios 1.1 / 0.9.
    assert metrics["ratio_max"].item() == pytest.approx(s)
    assert metrics["ratio_min"].item() == pytest.approx(s)


def test_gspo_gradient_equals_the_sequence_level_objective():
    # GSPO's objective is per sequence: J = mean_i min(s_i A_i, clip(s_i) A_i), s_i = exp(mean_t log r_it).
    # Written per token with the stop-gradient trick and seq-mean-token-mean aggregation, value and gradient must
    # be exactly those of J, padding included, for clipped and unclipped sequences alike.
    torch.manual_seed(3)
    batch, num_actions = 6, 5
    old = torch.randn(batch, num_actions, dtype=torch.float64)
    log_probs = (old + 0.3 * torch.randn(batch, num_actions, dtype=torch.float64)).requires_grad_()
    advantages = torch.randn(batch, dtype=torch.float64)
    mask = torch.ones(batch, num_actions, dtype=torch.bool)
    mask[1, 3:] = False
    mask[4, 1:] = False
    loss, _ = policy_loss(
        log_probs,
        old,
        advantages,
        mask,
        eps_clip_low=0.05,
        importance_sampling_level="sequence",
        loss_agg_mode="seq-mean-token-mean",
    )
    (grad,) = torch.autograd.grad(loss, log_probs)

    reference = log_probs.detach().clone().requires_grad_()
    seq_log_ratio = ((reference - old) * mask).sum(-1) / mask.sum(-1)
    s = seq_log_ratio.exp()
    objective = torch.min(s * advantages, s.clamp(0.95, 1.05) * advantages).mean()
    (ref_grad,) = torch.autograd.grad(-objective, reference)
    torch.testing.assert_close(loss, -objective, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-12)
    assert (ref_grad == 0).any() and (ref_grad != 0).any()  # both clipped and unclipped sequences occur


# ---------------------------------------------------------------------------------------------------------------
# CPG (clipped policy gradient, LightRFT's use_cpg_loss / CPGD)


@pytest.mark.parametrize(
    ("ratio", "advantage", "expected_loss", "expected_grad", "clipped"),
    [
        # A > 0: the log-ratio is capped at log 1.2. r = 1.5 -> loss -1 * log 1.2 = -0.182322, no gradient.
        (1.5, 1.0, -math.log(1.2), 0.0, 1.0),
        # r = 1.1 under the cap, A = 2: loss -2 log 1.1; gradient -A = -2 (w.r.t. log pi, not -A r as in PPO).
        (1.1, 2.0, -2 * math.log(1.1), -2.0, 0.0),
        # A < 0: the log-ratio is floored at log 0.8. r = 0.5 -> loss -(-1) * log 0.8 = -0.223144, no gradient.
        (0.5, -1.0, math.log(0.8), 0.0, 1.0),
        # r = 3 with A < 0 is not bounded above (no PPO-style cap there): loss log 3, gradient 1.
        (3.0, -1.0, math.log(3.0), 1.0, 0.0),
    ],
)
def test_cpg_by_hand(ratio, advantage, expected_loss, expected_grad, clipped):
    loss, grad, metrics = _single_token(ratio, advantage, use_cpg_loss=True)
    assert loss == pytest.approx(expected_loss)
    assert grad == pytest.approx(expected_grad)
    assert metrics["clipfrac"] == clipped


def test_cpg_gradient_equals_lightrft_formula():
    # LightRFT's documented CPG: -A * clamp(log_probs, max=old + log(1 + eps)) where A > 0, else
    # -A * clamp(log_probs, min=old + log(1 - eps)), token-mean. Ours subtracts the constant old log-prob inside,
    # so the gradients must agree exactly and ours = LightRFT + mean(A * old).
    torch.manual_seed(4)
    old = torch.randn(4, 6, dtype=torch.float64)
    log_probs = (old + 0.3 * torch.randn(4, 6, dtype=torch.float64)).requires_grad_()
    advantages = torch.randn(4, 6, dtype=torch.float64)
    mask = torch.rand(4, 6) > 0.2
    loss, _ = policy_loss(log_probs, old, advantages, mask, use_cpg_loss=True)
    (grad,) = torch.autograd.grad(loss, log_probs)

    reference = log_probs.detach().clone().requires_grad_()
    clipped = torch.where(
        advantages > 0,
        torch.clamp(reference, max=old + math.log(1.2)),
        torch.clamp(reference, min=old + math.log(0.8)),
    )
    ref_loss = (-clipped * advantages * mask).sum() / mask.sum()
    (ref_grad,) = torch.autograd.grad(ref_loss, reference)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-12)
    constant = (advantages * old * mask).sum() / mask.sum()
    torch.testing.assert_close(loss, ref_loss.detach() + constant, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# Entropy mask, metrics, dtypes, argument errors


def test_entropy_mask_restricts_the_loss_not_the_metrics():
    # Tokens with advantage 1 and ratio 1: each contributes -1. Entropy mask keeps 1 of the 3 valid tokens.
    log_probs = torch.zeros(1, 4, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0]])
    entropy_mask = torch.tensor([[0, 1, 0, 1]])
    loss, metrics = policy_loss(log_probs, torch.zeros(1, 4), torch.ones(1), mask, entropy_mask=entropy_mask)
    loss.backward()
    assert loss.item() == pytest.approx(-1.0)
    torch.testing.assert_close(log_probs.grad, torch.tensor([[0.0, -1.0, 0.0, 0.0]]))
    assert metrics["entropy_mask_frac"].item() == pytest.approx(1 / 3)


@pytest.mark.parametrize("loss_agg_mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_policy_loss_dtypes_agree_with_float64(loss_agg_mode, dtype):
    torch.manual_seed(5)
    old = torch.randn(3, 5, dtype=torch.float64)
    log_probs = old + 0.2 * torch.randn(3, 5, dtype=torch.float64)
    advantages = torch.randn(3, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    norm_length = 5 if loss_agg_mode == "seq-mean-token-sum-norm" else None
    kwargs = {"mask": mask, "loss_agg_mode": loss_agg_mode, "norm_length": norm_length, "dual_clip": 3.0}
    reference, _ = policy_loss(log_probs, old, advantages, **kwargs)
    loss, metrics = policy_loss(log_probs.to(dtype), old.to(dtype), advantages.to(dtype), **kwargs)
    tol = 1e-6 if dtype == torch.float32 else 3e-2
    assert loss.item() == pytest.approx(reference.item(), abs=tol)
    assert all(torch.isfinite(v) for v in metrics.values())


def test_policy_loss_argument_errors():
    args = (torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1))
    with pytest.raises(ValueError, match=r"dual_clip must be > 1"):
        policy_loss(*args, dual_clip=1.0)
    with pytest.raises(ValueError, match=r"eps_clip_low must be in \[0, 1\), got 1.5"):
        policy_loss(*args, eps_clip_low=1.5)
    with pytest.raises(ValueError, match=r"eps_clip_high must be >= 0, got -0.1"):
        policy_loss(*args, eps_clip_high=-0.1)
    with pytest.raises(ValueError, match=r"Unknown importance_sampling_level 'seq'; expected one of"):
        policy_loss(*args, importance_sampling_level="seq")
    with pytest.raises(ValueError, match="use_cpg_loss clips the token log-ratio itself"):
        policy_loss(*args, use_cpg_loss=True, dual_clip=3.0)
    with pytest.raises(ValueError, match="use_cpg_loss clips the token log-ratio itself"):
        policy_loss(*args, use_cpg_loss=True, importance_sampling_level="sequence")


# ---------------------------------------------------------------------------------------------------------------
# Value loss


def test_value_loss_by_hand():
    values = torch.tensor([[1.5, 0.0]], requires_grad=True)
    old_values, returns = torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0]])
    mask = torch.tensor([[1, 0]])
    # Unclipped: 0.5 * (1.5 - 2)^2 = 0.125, gradient (1.5 - 2) = -0.5.
    loss, _ = value_loss(values, old_values, returns, mask)
    assert loss.item() == pytest.approx(0.125)
    # value_clip 0.2: clipped value 1.2, (1.2 - 2)^2 = 0.64 > 0.25 -> 0.5 * 0.64 = 0.32 (pessimistic), and the
    # clipped branch has no gradient w.r.t. values.
    loss, metrics = value_loss(values, old_values, returns, mask, value_clip=0.2)
    loss.backward()
    assert loss.item() == pytest.approx(0.32)
    assert metrics["vf_clipfrac"].item() == 1.0
    torch.testing.assert_close(values.grad, torch.zeros(1, 2))


def test_value_loss_explained_variance_by_hand():
    returns = torch.tensor([[1.0, 2.0, 3.0]])
    # A perfect critic explains all variance (1); predicting the mean return explains none (0).
    _, perfect = value_loss(returns.clone(), returns, returns)
    _, constant = value_loss(torch.full((1, 3), 2.0), returns, returns)
    assert perfect["explained_variance"].item() == pytest.approx(1.0)
    assert constant["explained_variance"].item() == pytest.approx(0.0)
    assert constant["values_mean"].item() == pytest.approx(2.0)


# ---------------------------------------------------------------------------------------------------------------
# LM loss and high-entropy selection


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lm_loss_matches_cross_entropy_with_gradients(dtype):
    torch.manual_seed(6)
    logits = torch.randn(2, 6, 11, dtype=dtype, requires_grad=True)
    labels = torch.randint(0, 11, (2, 6))
    labels[0, :3] = -100  # a prompt whose tokens carry no loss
    loss, metrics = lm_loss(logits, labels)
    reference = F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(loss, reference)
    torch.testing.assert_close(
        torch.autograd.grad(loss, logits)[0], torch.autograd.grad(reference, logits)[0], rtol=1e-5, atol=1e-7
    )
    assert metrics["num_tokens"].item() == 8  # 10 shifted labels, 2 of them ignored


def test_lm_loss_without_any_label_is_zero():
    loss, metrics = lm_loss(torch.randn(1, 3, 5), torch.full((1, 3), -100))
    assert loss.item() == 0 and metrics["num_tokens"].item() == 0


def test_high_entropy_mask_by_hand():
    entropy = torch.tensor([[0.1, 0.9, 0.5], [0.7, 0.3, 99.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    # Valid entropies sorted: 0.1, 0.3, 0.5, 0.7, 0.9. The 0.5 quantile is 0.5: keep 0.9, 0.5 and 0.7 (the masked 99
    # is never chosen).
    expected = torch.tensor([[False, True, True], [True, False, False]])
    assert torch.equal(high_entropy_mask(entropy, mask, 0.5), expected)
    # The 0.8 quantile (top_entropy_quantile=0.2) is 0.7 + 0.2 * (0.9 - 0.7) = 0.74: keep 0.9 alone.
    assert torch.equal(high_entropy_mask(entropy, mask, 0.8), torch.tensor([[False, True, False], [False] * 3]))
    # Equal entropies at the cutoff are all kept.
    assert high_entropy_mask(torch.ones(2, 2), torch.ones(2, 2), 0.5).all()


def test_trl_clip_ratios_by_hand():
    # Ratios around a [0.8, 1.2] trust region, one token each. TRL counts a token as low-clipped when its ratio is
    # below 1 - eps with a negative advantage, high-clipped when above 1 + eps with a positive one.
    ratio = torch.tensor([[0.5, 0.5, 1.5, 1.5, 1.0, 0.7]])
    advantages = torch.tensor([[-1.0, 1.0, 1.0, -1.0, 1.0, -2.0]])
    mask = torch.tensor([[True, True, True, True, True, False]])  # the last token is padding
    _, metrics = policy_loss(ratio.log(), torch.zeros_like(ratio), advantages, mask)
    assert metrics["clip_ratio/low_mean"].item() == pytest.approx(1 / 5)
    assert metrics["clip_ratio/high_mean"].item() == pytest.approx(1 / 5)
    assert metrics["clip_ratio/region_mean"].item() == pytest.approx(2 / 5)


def test_sequence_weight_drops_a_sequence_but_keeps_the_normaliser():
    log_ratio = torch.tensor([[0.1, -0.2, 0.0], [0.3, 0.1, -0.1]])
    advantages = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    full, _ = policy_loss(log_ratio, torch.zeros_like(log_ratio), advantages, mask, loss_agg_mode="token-mean")
    kept, _ = policy_loss(
        log_ratio, torch.zeros_like(log_ratio), advantages, mask, sequence_weight=torch.tensor([[1.0], [0.0]])
    )
    # Token-mean over all 5 valid tokens, with the second sequence's 3 tokens contributing 0.
    ratio = log_ratio.exp()
    first = -torch.min(ratio[0, :2], ratio[0, :2].clamp(0.8, 1.2)).sum()
    assert kept.item() == pytest.approx(first.item() / 5, abs=1e-6)
    assert full.item() != pytest.approx(kept.item())


def _one_token(log_prob, old_log_prob, advantage, **kwargs):
    log_probs = torch.tensor([[log_prob]], dtype=torch.float64, requires_grad=True)
    loss, metrics = policy_loss(
        log_probs, torch.tensor([[old_log_prob]], dtype=torch.float64), torch.tensor([[advantage]]), **kwargs
    )
    loss.backward()
    return loss.item(), log_probs.grad.item(), metrics


@pytest.mark.parametrize(("log_ratio", "advantage"), [(0.5, 1.0), (-0.3, -2.0), (2.0, 0.5)])
def test_cispo_by_hand(log_ratio, advantage):
    log_prob, cap = -1.2, 1.5
    loss, grad, metrics = _one_token(log_prob, log_prob - log_ratio, advantage, surrogate="cispo", eps_clip_high=cap)
    weight = min(math.exp(log_ratio), cap)  # the clipped importance weight, detached
    assert loss == pytest.approx(-weight * advantage * log_prob)
    assert grad == pytest.approx(-weight * advantage)  # never 0: CISPO keeps every token's gradient
    assert metrics["clipfrac"].item() == float(math.exp(log_ratio) > cap)


@pytest.mark.parametrize(("log_ratio", "advantage"), [(0.4, 1.0), (-0.3, -2.0), (0.0, 0.7)])
def test_sapo_by_hand(log_ratio, advantage):
    tau = 1.0 if advantage > 0 else 1.05
    loss, grad, _ = _one_token(-0.7, -0.7 - log_ratio, advantage, surrogate="sapo", sapo_temperatures=(1.0, 1.05))
    r = math.exp(log_ratio)
    gate = 1 / (1 + math.exp(-tau * (r - 1)))
    assert loss == pytest.approx(-gate * 4 / tau * advantage)
    # d/dlog pi of sigmoid(tau (r - 1)) * 4 / tau = 4 sigma (1 - sigma) r; on-policy the gradient is -A, as PPO's.
    assert grad == pytest.approx(-advantage * 4 * gate * (1 - gate) * r)


def test_vespo_by_hand():
    log_probs = torch.tensor([[-0.5, -1.0, -2.0], [-0.3, -0.4, -9.0]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-0.6, -0.8, -2.0], [-0.3, -0.1, 0.0]], dtype=torch.float64)
    advantages = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    loss, _ = policy_loss(
        log_probs, old, advantages, mask, surrogate="vespo", loss_agg_mode="token-mean", vespo_gamma=(2, 3, 3, 2)
    )
    expected = 0.0
    for row, (k, lam) in enumerate([(2, 3), (3, 2)]):
        tokens = int(mask[row].sum())
        log_w = sum(log_probs[row, t].item() - old[row, t].item() for t in range(tokens))
        phi = math.exp(lam + k * log_w - lam * math.exp(log_w))
        expected += sum(-phi * advantages[row, 0].item() * log_probs[row, t].item() for t in range(tokens))
    assert loss.item() == pytest.approx(expected / 5)


def test_other_surrogates_refuse_the_clip_options():
    with pytest.raises(ValueError, match="has its own clipping"):
        policy_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1), surrogate="sapo", dual_clip=3.0)
    with pytest.raises(ValueError, match="Unknown surrogate 'ppo'"):
        policy_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1), surrogate="ppo")


def test_high_entropy_mask_is_trls_get_high_entropy_mask():
    # TRL's own method is the reference (on one process its gather is the identity).
    from types import SimpleNamespace

    from accelerate import Accelerator
    from trl import GRPOTrainer

    trl_trainer = SimpleNamespace(accelerator=Accelerator(cpu=True))
    generator = torch.Generator().manual_seed(0)
    entropies = torch.rand(3, 7, generator=generator) * 2
    entropies[1, 2] = entropies[0, 4]  # a tie, kept on both sides of the cutoff alike
    mask = torch.rand(3, 7, generator=generator) > 0.3
    for threshold in (0.0, 0.2, 0.5, 0.8, 1.0):
        expected = GRPOTrainer.get_high_entropy_mask(trl_trainer, entropies, mask, threshold)
        got = high_entropy_mask(entropies, mask, threshold)
        assert torch.equal(got, expected), threshold
    assert 0 < int(high_entropy_mask(entropies, mask, 0.8).sum()) < int(mask.sum())  # the cut does cut
    assert not high_entropy_mask(entropies, torch.zeros_like(mask), 0.5).any()
    # The population decides the cutoff: all tokens above the other processes' top entropy are kept, none below.
    assert torch.equal(
        high_entropy_mask(entropies, mask, 1.0, population=torch.tensor([10.0])), torch.zeros_like(mask)
    )
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\]"):
        high_entropy_mask(entropies, mask, 1.5)
