import math

import pytest
import torch
import torch.nn.functional as F

from rft_trl.core.logprobs import (
    entropy_from_logits,
    log_probs_and_entropy_from_hidden,
    log_probs_and_entropy_from_logits,
    log_probs_from_logits,
)


def naive_log_probs_and_entropy(logits, labels, temperature=1.0):
    """The textbook reference: full log-softmax in float32 (float64 for float64), gather, -(p log p).sum."""
    log_p = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature, dim=-1)
    return log_p.gather(-1, labels.unsqueeze(-1)).squeeze(-1), -(log_p.exp() * log_p).sum(-1)


# Tolerances per input dtype: float64 checks exactness; float32 is a few ulps of values around log V; bfloat16
# only rounds the returned gradient to 8 mantissa bits.
TOLERANCES = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2}


def test_two_token_distribution_by_hand():
    # logits [0, log 3] -> softmax = [1/4, 3/4]; log p(token 1) = log(3/4);
    # H = -(1/4 log 1/4 + 3/4 log 3/4). Doubling the logits and the temperature (2) leaves all of it unchanged.
    expected_lp = math.log(0.75)
    expected_h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    for scale in (1.0, 2.0):
        logits = torch.tensor([[0.0, scale * math.log(3.0)]], dtype=torch.float64)
        lp = log_probs_from_logits(logits, torch.tensor([1]), temperature=scale)
        h = entropy_from_logits(logits, temperature=scale)
        assert lp.item() == pytest.approx(expected_lp, abs=1e-12)
        assert h.item() == pytest.approx(expected_h, abs=1e-12)


def test_uniform_logits_give_log_vocab():
    # Equal logits: every token has probability 1/V, so log p = -log V and H = log V, at any temperature.
    logits = torch.full((2, 3, 7), 5.0)
    assert torch.allclose(
        log_probs_from_logits(logits, torch.zeros(2, 3, dtype=torch.long), 0.3), torch.full((2, 3), -math.log(7))
    )
    assert torch.allclose(entropy_from_logits(logits, 0.3), torch.full((2, 3), math.log(7)))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_size", [1, 5, 1000])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("combined", [False, True])
def test_from_logits_matches_naive_with_gradients(dtype, chunk_size, temperature, combined):
    torch.manual_seed(0)
    # A shifted slice of [B, L, V] logits, as the actor produces them: not contiguous across rows.
    full = (3 * torch.randn(3, 9, 50, dtype=torch.float64)).to(dtype)
    logits = full[:, :-1].detach().requires_grad_()
    labels = torch.randint(0, 50, (3, 8))
    reference_logits = logits.detach().clone().requires_grad_()

    if combined:
        lp, h = log_probs_and_entropy_from_logits(logits, labels, temperature, chunk_size)
    else:
        lp = log_probs_from_logits(logits, labels, temperature, chunk_size)
        h = entropy_from_logits(logits, temperature, chunk_size)
    ref_lp, ref_h = naive_log_probs_and_entropy(reference_logits, labels, temperature)

    assert lp.dtype == h.dtype == ref_lp.dtype
    assert lp.shape == h.shape == (3, 8)
    atol = TOLERANCES[torch.float32] if dtype == torch.bfloat16 else TOLERANCES[dtype]
    torch.testing.assert_close(lp, ref_lp, atol=atol, rtol=0)
    torch.testing.assert_close(h, ref_h, atol=atol, rtol=0)

    # A weighted sum of both outputs, so the log-prob and entropy backward paths are checked together.
    g_lp, g_h = torch.randn(2, 3, 8, dtype=lp.dtype)
    (grad,) = torch.autograd.grad((lp * g_lp).sum() + (h * g_h).sum(), logits)
    (ref_grad,) = torch.autograd.grad((ref_lp * g_lp).sum() + (ref_h * g_h).sum(), reference_logits)
    assert grad.dtype == dtype
    torch.testing.assert_close(grad, ref_grad, atol=TOLERANCES[dtype], rtol=TOLERANCES[dtype])


@pytest.mark.parametrize("used", ["log_probs", "entropy"])
def test_combined_from_logits_with_one_output_used(used):
    # Only one output in the graph: the other's gradient arrives as None and must be skipped, not treated as 0/nan.
    torch.manual_seed(7)
    logits = torch.randn(2, 5, 30, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 30, (2, 5))
    lp, h = log_probs_and_entropy_from_logits(logits, labels, chunk_size=3)
    ref_lp, ref_h = naive_log_probs_and_entropy(logits, labels)
    out, ref = (lp, ref_lp) if used == "log_probs" else (h, ref_h)
    (grad,) = torch.autograd.grad(out.sum(), logits)
    (ref_grad,) = torch.autograd.grad(ref.sum(), logits)
    torch.testing.assert_close(grad, ref_grad, atol=1e-10, rtol=0)


def naive_from_hidden(hidden, weight, labels, bias, temperature):
    return naive_log_probs_and_entropy(F.linear(hidden, weight, bias), labels, temperature)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("chunk_size", [1, 5, 1000])
@pytest.mark.parametrize("outputs_used", ["both", "log_probs", "entropy"])
def test_fused_from_hidden_matches_naive_with_gradients(dtype, chunk_size, outputs_used):
    torch.manual_seed(1)
    hidden = torch.randn(2, 7, 6, dtype=dtype, requires_grad=True)
    weight = torch.randn(50, 6, dtype=dtype, requires_grad=True)
    bias = torch.randn(50, dtype=dtype, requires_grad=True)
    labels = torch.randint(0, 50, (2, 7))

    lp, h = log_probs_and_entropy_from_hidden(hidden, weight, labels, bias, 0.8, chunk_size)
    ref_lp, ref_h = naive_from_hidden(hidden, weight, labels, bias, 0.8)
    atol = TOLERANCES[dtype]
    torch.testing.assert_close(lp, ref_lp, atol=atol, rtol=0)
    torch.testing.assert_close(h, ref_h, atol=atol, rtol=0)

    g_lp, g_h = torch.randn(2, 2, 7, dtype=dtype)

    def objective(a, b):
        # Leaving an output out of the graph exercises the backward's None-gradient branches.
        if outputs_used == "log_probs":
            return (a * g_lp).sum()
        if outputs_used == "entropy":
            return (b * g_h).sum()
        return (a * g_lp).sum() + (b * g_h).sum()

    grads = torch.autograd.grad(objective(lp, h), (hidden, weight, bias))
    ref_grads = torch.autograd.grad(objective(ref_lp, ref_h), (hidden, weight, bias))
    for grad, ref_grad in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref_grad, atol=atol, rtol=atol)


def test_fused_bfloat16_matches_naive_bfloat16_head():
    # A bf16 head: the reference computes the bf16 linear, upcasts, and lets autograd cast the gradient back.
    torch.manual_seed(2)
    hidden = torch.randn(9, 8).bfloat16().requires_grad_()
    weight = torch.randn(40, 8).bfloat16().requires_grad_()
    labels = torch.randint(0, 40, (9,))
    lp, h = log_probs_and_entropy_from_hidden(hidden, weight, labels, chunk_size=4)
    ref_lp, ref_h = naive_from_hidden(hidden, weight, labels, None, 1.0)
    assert lp.dtype == torch.float32
    torch.testing.assert_close(lp, ref_lp, atol=1e-5, rtol=0)
    torch.testing.assert_close(h, ref_h, atol=1e-5, rtol=0)
    grads = torch.autograd.grad(lp.sum() - 0.1 * h.sum(), (hidden, weight))
    ref_grads = torch.autograd.grad(ref_lp.sum() - 0.1 * ref_h.sum(), (hidden, weight))
    for grad, ref_grad in zip(grads, ref_grads):
        assert grad.dtype == torch.bfloat16
        # The fused path accumulates the weight gradient in float32 over chunks, the reference in one bf16 matmul.
        torch.testing.assert_close(grad.float(), ref_grad.float(), atol=5e-2, rtol=2e-2)


def test_fused_frozen_head_gives_hidden_gradient_only():
    # A LoRA-style frozen lm_head: only the hidden states need a gradient.
    torch.manual_seed(3)
    hidden = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(30, 4, dtype=torch.float64)
    labels = torch.randint(0, 30, (5,))
    lp, _ = log_probs_and_entropy_from_hidden(hidden, weight, labels, chunk_size=2)
    (grad,) = torch.autograd.grad(lp.sum(), hidden)
    ref_lp, _ = naive_from_hidden(hidden, weight, labels, None, 1.0)
    (ref_grad,) = torch.autograd.grad(ref_lp.sum(), hidden)
    torch.testing.assert_close(grad, ref_grad, atol=1e-10, rtol=0)


def _saved_tensor_sizes(fn):
    """Run fn under a saved-tensors hook and return the numel of every tensor autograd keeps for backward."""
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sizes


def test_nothing_vocabulary_sized_is_kept_for_backward():
    n, hidden_size, vocab = 16, 4, 64
    hidden = torch.randn(n, hidden_size, requires_grad=True)
    weight = torch.randn(vocab, hidden_size, requires_grad=True)
    labels = torch.randint(0, vocab, (n,))
    # Fused: the saved tensors are the inputs (hidden, weight, labels) and [N] statistics, never [N, V].
    sizes = _saved_tensor_sizes(lambda: log_probs_and_entropy_from_hidden(hidden, weight, labels, chunk_size=4))
    assert max(sizes) == vocab * hidden_size
    # From logits: the logits themselves (no float32 copy, no softmax) and [N] statistics.
    logits = torch.randn(n, vocab, requires_grad=True)
    sizes = _saved_tensor_sizes(lambda: (log_probs_from_logits(logits, labels), entropy_from_logits(logits)))
    assert sorted(sizes, reverse=True)[:3] == [n * vocab, n * vocab, n]


def test_argument_errors():
    logits = torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        log_probs_from_logits(logits, torch.zeros(2, 3, dtype=torch.long), temperature=0)
    with pytest.raises(ValueError, match="chunk_size must be >= 1, got 0"):
        entropy_from_logits(logits, chunk_size=0)
    with pytest.raises(ValueError, match=r"labels must have shape logits.shape\[:-1\] = \(2, 3\), got \(2, 2\)"):
        log_probs_from_logits(logits, torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"weight must have shape \[V, H\] with H = hidden.shape\[-1\] = 3"):
        log_probs_and_entropy_from_hidden(torch.randn(4, 3), torch.randn(5, 2), torch.zeros(4, dtype=torch.long))


def _kept_reference(logits, labels, suppressed, temperature):
    """log p and H of the softmax over the columns not in `suppressed` only (those columns dropped, not masked)."""
    vocab = logits.shape[-1]
    keep = torch.tensor([i for i in range(vocab) if i not in set(suppressed)])
    new_index = torch.full((vocab,), -1, dtype=torch.long)
    new_index[keep] = torch.arange(len(keep))
    log_p = torch.log_softmax(logits.double()[..., keep] / temperature, dim=-1)
    return log_p.gather(-1, new_index[labels].unsqueeze(-1)).squeeze(-1), -(log_p.exp() * log_p).sum(-1)


@pytest.mark.parametrize("chunk_size", [1, 1000])
@pytest.mark.parametrize("source", ["logits", "hidden"])
def test_suppressed_ids_score_the_distribution_generate_samples_from(chunk_size, source):
    from transformers.generation.logits_process import SuppressTokensLogitsProcessor, TemperatureLogitsWarper

    torch.manual_seed(0)
    vocab, temperature, suppressed = 11, 0.7, [2, 7, 9]
    hidden = torch.randn(2, 4, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(vocab, 6, dtype=torch.float64, requires_grad=True)
    logits = hidden @ weight.T  # [2, 4, V]
    labels = torch.tensor([[0, 1, 3, 4], [5, 6, 8, 10]])
    if source == "logits":
        log_probs, entropy = log_probs_and_entropy_from_logits(
            logits, labels, temperature=temperature, chunk_size=chunk_size, suppressed_ids=suppressed
        )
    else:
        log_probs, entropy = log_probs_and_entropy_from_hidden(
            hidden, weight, labels, temperature=temperature, chunk_size=chunk_size, suppressed_ids=suppressed
        )
    # Reference 1: transformers' own logits processors, as `generate(suppress_tokens=...)` applies them.
    flat = logits.detach().reshape(-1, vocab)
    processed = SuppressTokensLogitsProcessor(suppressed)(None, TemperatureLogitsWarper(temperature)(None, flat))
    expected = torch.log_softmax(processed, -1).gather(-1, labels.reshape(-1, 1)).reshape(labels.shape)
    torch.testing.assert_close(log_probs.detach(), expected, rtol=0, atol=1e-12)
    # Reference 2: the softmax over the kept columns alone, for the entropy and the gradients.
    ref_log_probs, ref_entropy = _kept_reference(logits, labels, suppressed, temperature)
    torch.testing.assert_close(entropy.detach(), ref_entropy.detach(), rtol=0, atol=1e-12)
    grads = torch.autograd.grad((log_probs * 0.3 + entropy * 1.7).sum(), (hidden, weight), retain_graph=True)
    ref_grads = torch.autograd.grad((ref_log_probs * 0.3 + ref_entropy * 1.7).sum(), (hidden, weight))
    for grad, ref in zip(grads, ref_grads):
        assert torch.isfinite(grad).all()
        torch.testing.assert_close(grad, ref, rtol=0, atol=1e-10)
    # Control: without suppression the same tokens score the full softmax, which differs.
    unsuppressed, _ = log_probs_and_entropy_from_logits(logits, labels, temperature=temperature)
    assert (unsuppressed.detach() - expected).abs().max() > 1e-2


def test_suppressed_ids_entropy_alone_and_a_suppressed_label():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]], dtype=torch.float64)
    entropy = entropy_from_logits(logits, suppressed_ids=torch.tensor([3]))
    p = torch.softmax(torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64), -1)
    assert entropy.item() == pytest.approx(-(p * p.log()).sum().item(), abs=1e-12)
    # A suppressed token has probability zero; the others are unchanged by what was never sampled.
    lp = log_probs_from_logits(logits, torch.tensor([3]), suppressed_ids=[3])
    assert lp.item() == float("-inf")
    with pytest.raises(ValueError, match=r"suppressed_ids must be token ids in \[0, 4\)"):
        log_probs_from_logits(logits, torch.tensor([0]), suppressed_ids=[4])
    with pytest.raises(ValueError, match="leaves no token"):
        log_probs_from_logits(logits, torch.tensor([0]), suppressed_ids=[0, 1, 2, 3])
