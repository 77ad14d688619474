"""The seed's names for the math (lightrft.models.loss / .utils, the trainer's KL controllers), used as the seed's
ppo_trainer_vl.py uses them."""

import pytest
import torch
import torch.nn.functional as F

from rft_trl.core import policy_loss, value_loss
from rft_trl.models.loss import GPTLMLoss, PolicyLoss, ValueLoss
from rft_trl.models.utils import compute_approx_kl, masked_mean, unpacking_samples
from rft_trl.trainers.kl_controller import AdaptiveKLController, FixedKLController


def _rollout(seed=0):
    torch.manual_seed(seed)
    old = torch.randn(3, 5)
    log_probs = (old + 0.3 * torch.randn(3, 5)).requires_grad_()
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    return log_probs, old, torch.randn(3, 5), mask


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"use_cpg_loss": True},
        {"eps_clip_high": 0.28, "dual_clip": 3.0, "loss_agg_mode": "seq-mean-token-mean"},
        {"importance_sampling_level": "sequence", "loss_agg_mode": "seq-mean-token-sum-norm", "norm_length": 8},
    ],
)
def test_policy_loss_module_is_the_pure_function(kwargs):
    log_probs, old, advantages, mask = _rollout()
    entropy_mask = torch.rand(3, 5) > 0.3
    module = PolicyLoss(0.1, **kwargs)
    assert module.get_last_stats() == {}
    # The seed's call: actor_loss_fn(log_probs, old_log_probs, advantages, action_mask=..., entropy_mask=...).
    loss = module(log_probs, old, advantages, action_mask=mask, entropy_mask=entropy_mask)
    core_kwargs = {("eps_clip_low" if k == "eps_clip" else k): v for k, v in kwargs.items()}
    expected, metrics = policy_loss(log_probs, old, advantages, mask, 0.1, entropy_mask=entropy_mask, **core_kwargs)
    torch.testing.assert_close(loss, expected)
    stats = module.get_last_stats()
    assert stats == {name: value.item() for name, value in metrics.items()}
    assert all(isinstance(v, float) for v in stats.values())
    assert {"clipfrac", "approx_kl", "ratio_mean"} <= stats.keys()


def test_value_loss_module_is_the_pure_function():
    torch.manual_seed(1)
    values, old_values, returns = torch.randn(3, 2, 4).unbind(0)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    module = ValueLoss(0.2)
    # The seed's call: critic_loss_fn(values, old_values, returns, action_mask=...).
    loss = module(values, old_values, returns, action_mask=mask)
    expected, metrics = value_loss(values, old_values, returns, mask, value_clip=0.2)
    torch.testing.assert_close(loss, expected)
    assert module.get_last_stats() == {name: value.item() for name, value in metrics.items()}


def test_gpt_lm_loss_as_the_seed_builds_its_ptx_labels():
    # The seed masks padding with the class attribute: torch.where(attention_mask, inputs, IGNORE_INDEX).
    assert GPTLMLoss.IGNORE_INDEX == -100
    torch.manual_seed(2)
    inputs = torch.randint(0, 13, (2, 7))
    attention_mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    labels = torch.where(attention_mask.bool(), inputs, GPTLMLoss.IGNORE_INDEX)
    logits = torch.randn(2, 7, 13)
    loss = GPTLMLoss()(logits, labels)
    # Hugging Face's causal-LM loss: shift, then mean cross-entropy over non-ignored labels (6 + 3 tokens).
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 13), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(loss, expected)


def test_kl_bookkeeping_as_in_the_seed_trainer():
    # Padded batch: kl_mean = masked_mean(kl, action_mask, dim=-1). Packed batch: unpacking_samples(kl, num_actions)
    # then one mean per sample. Both must give the same per-sample KL for the same tokens.
    torch.manual_seed(3)
    num_actions = [3, 1, 2]
    log_probs, base = torch.randn(2, 6).unbind(0)
    padded_lp = torch.zeros(3, 3)
    padded_base = torch.zeros(3, 3)
    mask = torch.zeros(3, 3, dtype=torch.bool)
    start = 0
    for i, n in enumerate(num_actions):
        padded_lp[i, :n], padded_base[i, :n], mask[i, :n] = log_probs[start : start + n], base[start : start + n], True
        start += n
    kl = compute_approx_kl(padded_lp, padded_base, mask, kl_estimator="k3")
    padded_means = masked_mean(kl, mask, dim=-1)
    packed_kl = compute_approx_kl(log_probs[None], base[None], kl_estimator="k3")  # [1, 6]
    packed_means = torch.stack([each.mean() for each in unpacking_samples(packed_kl, num_actions)])
    torch.testing.assert_close(padded_means, packed_means)
    with pytest.raises(ValueError, match="lengths sum to 5 but the packed row holds 6 tokens"):
        unpacking_samples(packed_kl, [3, 2])


def test_fixed_kl_controller():
    controller = FixedKLController(0.01)
    controller.update(current=100.0, n_steps=1000)
    assert controller.value == 0.01
    restored = FixedKLController(0.5)
    restored.load_state_dict(controller.state_dict())
    assert restored.value == 0.01


def test_adaptive_kl_controller_by_hand():
    controller = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10000)
    # KL 9 vs target 6: error 9 / 6 - 1 = 0.5, clipped to 0.2; value *= 1 + 0.2 * 1000 / 10000 = 1.02 -> 0.102.
    controller.update(current=9.0, n_steps=1000)
    assert controller.value == pytest.approx(0.102)
    # KL 5.4: error -0.1; value *= 1 - 0.1 * 2000 / 10000 = 0.98 -> 0.09996.
    controller.update(current=5.4, n_steps=2000)
    assert controller.value == pytest.approx(0.09996)
    # KL far below target: error clipped at -0.2; value *= 1 - 0.2 * 0.5 = 0.9.
    controller.update(current=0.0, n_steps=5000)
    assert controller.value == pytest.approx(0.089964)


def test_adaptive_kl_controller_resumes_exactly():
    kls = [7.5, 3.0, 6.6, 12.0, 0.1]
    uninterrupted = AdaptiveKLController(0.05, 6.0, 500)
    for kl in kls:
        uninterrupted.update(kl, 64)
    first = AdaptiveKLController(0.05, 6.0, 500)
    for kl in kls[:2]:
        first.update(kl, 64)
    resumed = AdaptiveKLController(0.05, 6.0, 500)
    resumed.load_state_dict(first.state_dict())
    for kl in kls[2:]:
        resumed.update(kl, 64)
    assert resumed.value == uninterrupted.value  # bit-exact, not approximately
    with pytest.raises(ValueError, match="Checkpoint was saved with target=6.0, horizon=500"):
        AdaptiveKLController(0.05, 3.0, 500).load_state_dict(first.state_dict())


def test_adaptive_kl_controller_errors():
    with pytest.raises(ValueError, match="target must be > 0, got 0"):
        AdaptiveKLController(0.1, 0, 100)
    with pytest.raises(ValueError, match="horizon must be > 0, got 0"):
        AdaptiveKLController(0.1, 1.0, 0)
