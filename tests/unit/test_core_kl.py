import math

import pytest
import torch

from rft_trl.core import KL_ESTIMATORS, compute_approx_kl


def test_estimators_by_hand():
    # pi(token) = 0.5, pi_base(token) = 0.25, so log r = log 2 = 0.693147:
    # k1 = log 2; k2 = (log 2)^2 / 2 = 0.240227; k3 = exp(-log 2) - 1 + log 2 = 0.5 - 1 + 0.693147 = 0.193147.
    log_probs = torch.tensor([[math.log(0.5)]], dtype=torch.float64)
    log_probs_base = torch.tensor([[math.log(0.25)]], dtype=torch.float64)
    expected = {"k1": math.log(2), "k2": math.log(2) ** 2 / 2, "k3": 0.5 - 1 + math.log(2)}
    for name, value in expected.items():
        assert compute_approx_kl(log_probs, log_probs_base, kl_estimator=name).item() == pytest.approx(
            value, abs=1e-12
        )


def test_k1_and_k3_are_unbiased_and_k2_matches_second_order():
    # Monte-Carlo over tokens sampled from pi: the mean of k1 and k3 must approach KL(pi || pi_base) =
    # sum p log(p / q). A sign or direction slip (e.g. exp(+log r) in k3) estimates a different quantity and fails.
    torch.manual_seed(0)
    p = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    q = torch.tensor([0.4, 0.4, 0.2], dtype=torch.float64)
    true_kl = (p * (p / q).log()).sum().item()
    tokens = torch.multinomial(p, 400_000, replacement=True).view(1, -1)
    log_p, log_q = p.log()[tokens], q.log()[tokens]
    for name in ("k1", "k3"):
        assert compute_approx_kl(log_p, log_q, kl_estimator=name).mean().item() == pytest.approx(true_kl, abs=3e-3)
    # k2 is biased: here E[(log r)^2 / 2] = 0.7 * 0.5596^2 / 2 + 0.3 * 0.6931^2 / 2 = 0.1817 versus KL 0.1838.
    k2 = compute_approx_kl(log_p, log_q, kl_estimator="k2")
    assert (k2 >= 0).all()
    assert k2.mean().item() == pytest.approx((p * (p / q).log().square() / 2).sum().item(), abs=3e-3)


@pytest.mark.parametrize("kl_estimator", KL_ESTIMATORS)
def test_masked_positions_are_zero_even_with_infinite_log_probs(kl_estimator):
    # Padding may carry -inf log-probs; the masked result and the gradient must stay finite.
    log_probs = torch.tensor([[-1.0, -2.0, -math.inf]], requires_grad=True)
    log_probs_base = torch.tensor([[-1.5, -2.0, -math.inf]])
    mask = torch.tensor([[True, True, False]])
    kl = compute_approx_kl(log_probs, log_probs_base, mask, kl_estimator)
    assert kl[0, 2].item() == 0 and kl[0, 1].item() == 0  # masked, and equal log-probs
    kl.sum().backward()
    assert torch.isfinite(log_probs.grad).all()
    assert log_probs.grad[0, 2].item() == 0


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [(torch.bfloat16, torch.float32), (torch.float32, torch.float32), (torch.float64, torch.float64)],
)
def test_output_dtype_is_at_least_float32(dtype, expected):
    log_probs = torch.tensor([[-1.0, -0.5]]).to(dtype)
    kl = compute_approx_kl(log_probs, log_probs - 0.25, kl_estimator="k3")
    assert kl.dtype == expected
    # log r = 0.25 exactly representable: k3 = exp(-0.25) - 1 + 0.25.
    torch.testing.assert_close(kl, torch.full((1, 2), math.exp(-0.25) - 0.75, dtype=expected), rtol=0, atol=1e-6)


def test_unknown_estimator():
    with pytest.raises(ValueError, match=r"Unknown kl_estimator 'k4'; expected one of \('k1', 'k2', 'k3'\)"):
        compute_approx_kl(torch.zeros(1, 1), torch.zeros(1, 1), kl_estimator="k4")
