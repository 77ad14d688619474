"""
Benchmark B3: peak memory of token log-probs + entropy + backward at a Qwen2.5-sized vocabulary (V = 151,936).

    PYTHONPATH=. python bench/b3_logprob_memory.py                      # N in {1024, 2048, 4096}, ~1-2 min
    PYTHONPATH=. python bench/b3_logprob_memory.py --tokens 2048 --chunk-sizes 128 256 512 1024 --methods fused
    PYTHONPATH=. python bench/b3_logprob_memory.py --exact-tokens 1024 2048 4096   # errors at every N, +1 min

The scenario is the actor's loss head: final hidden states ``[N, H]`` and the lm_head weight ``[V, H]`` are given
(and live before the measurement starts); each method computes the log-probability of N labels and the entropy of
N next-token distributions, forms ``sum(g1 * log p) + sum(g2 * H)`` with fixed random ``g1, g2``, and back-propagates
to hidden states and weight:

- ``naive``: ``logits = hidden @ W.T``, ``log_softmax``, ``gather``, ``-(p * log p).sum(-1)``, plain autograd.
- ``chunked``: the same logits, then `rft_trl.core.log_probs_and_entropy_from_logits` (chunked over rows, one
  gradient for both outputs).
- ``fused``: `rft_trl.core.log_probs_and_entropy_from_hidden`, which never builds ``[N, V]``.

How memory is measured, and why. On CPU, torch has no ``max_memory_allocated``, and tracemalloc does not see
torch's allocator. Two independent measures are taken around each run:

1. ``alloc``: the exact peak of live tensor bytes. ``torch.profiler`` with ``profile_memory=True`` records every
   allocation and free of torch's CPU allocator, with its size and time stamp; a running sum over them, in time
   order, gives the bytes allocated above what was live when the run began, and its maximum is the peak. This
   counts what torch asks for, independent of how glibc caches freed memory.
2. ``rss``: what the operating system saw. The kernel's resident-set high-water mark (``VmHWM`` in
   ``/proc/self/status``) is reset by writing ``5`` to ``/proc/self/clear_refs`` just before the run, and
   ``VmHWM - VmRSS(before)`` is read after it. It includes allocator slack and is a cross-check on (1).

Both are reported as multiples of one float32 ``[N, V]`` tensor (``4 N V`` bytes). The gradients of hidden states
and weight are part of every method's peak (they are outputs); their size is shown as ``floor``.

Exactness: every method, ``naive`` included, is compared with a float64 reference computed by plain autograd
over blocks of rows (each block's log-softmax in float64, gradients accumulated), as the largest absolute error of
log-probs, entropies, hidden-state gradient and weight gradient. A float32 log-prob near -12 has a spacing of
9.5e-7, so a few 1e-6 is float32 rounding; the float64 run at a small N (``--float64-tokens``) checks the
algorithm itself against the naive float64 computation.
"""

import argparse
import gc
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from rft_trl.core import log_probs_and_entropy_from_hidden, log_probs_and_entropy_from_logits

METHODS = ("naive", "chunked", "fused")


def _forward(method, hidden, weight, labels, temperature, chunk_size):
    if method == "naive":
        logits = F.linear(hidden, weight)  # [N, V]
        log_p = torch.log_softmax(logits / temperature, dim=-1)  # [N, V]
        return log_p.gather(-1, labels.unsqueeze(-1)).squeeze(-1), -(log_p.exp() * log_p).sum(-1)
    if method == "chunked":
        logits = F.linear(hidden, weight)  # [N, V]
        return log_probs_and_entropy_from_logits(logits, labels, temperature, chunk_size)
    if method == "fused":
        return log_probs_and_entropy_from_hidden(hidden, weight, labels, None, temperature, chunk_size)
    raise ValueError(f"Unknown method {method!r}; expected one of {METHODS}.")


def _proc_status_kib(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _reset_rss_high_water_mark():
    # Linux >= 4.0: writing 5 to clear_refs resets VmHWM to the current RSS.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def allocation_peak(prof) -> int:
    """Peak of live bytes above the start, replayed in time order from a memory profile's allocation/free events."""
    events = sorted(
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def run_one(method, hidden, weight, labels, grad_weights, temperature, chunk_size):
    """One forward+backward; returns (outputs, grads, seconds, alloc peak bytes, rss peak bytes)."""
    hidden = hidden.detach().requires_grad_()
    weight = weight.detach().requires_grad_()
    gc.collect()
    _reset_rss_high_water_mark()
    rss_before = _proc_status_kib("VmRSS")
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        log_probs, entropy = _forward(method, hidden, weight, labels, temperature, chunk_size)
        ((log_probs * grad_weights[0]).sum() + (entropy * grad_weights[1]).sum()).backward()
    seconds = time.perf_counter() - start
    rss_peak = (_proc_status_kib("VmHWM") - rss_before) * 1024
    peak = allocation_peak(prof)
    outputs = (log_probs.detach(), entropy.detach())
    return outputs, (hidden.grad, weight.grad), seconds, peak, rss_peak


def max_abs_diffs(outputs, grads, ref_outputs, ref_grads):
    return [(a.double() - b.double()).abs().max().item() for a, b in zip(outputs + grads, ref_outputs + ref_grads)]


def float64_reference(hidden, weight, labels, grad_weights, temperature, block=256):
    """Plain-autograd float64 log-probs, entropies and gradients, a block of rows at a time to bound memory."""
    hidden = hidden.double().requires_grad_()
    weight = weight.double().requires_grad_()
    grad_weights = grad_weights.double()
    log_probs, entropies = [], []
    for start in range(0, hidden.shape[0], block):
        rows = slice(start, start + block)
        log_p = torch.log_softmax(F.linear(hidden[rows], weight) / temperature, dim=-1)  # [block, V]
        lp = log_p.gather(-1, labels[rows].unsqueeze(-1)).squeeze(-1)
        ent = -(log_p.exp() * log_p).sum(-1)
        ((lp * grad_weights[0, rows]).sum() + (ent * grad_weights[1, rows]).sum()).backward()
        log_probs.append(lp.detach())
        entropies.append(ent.detach())
    return (torch.cat(log_probs), torch.cat(entropies)), (hidden.grad, weight.grad)


def float64_exactness(vocab, hidden_size, num_tokens, chunk_size, temperature):
    torch.manual_seed(1)
    hidden = torch.randn(num_tokens, hidden_size, dtype=torch.float64)
    weight = torch.randn(vocab, hidden_size, dtype=torch.float64) / hidden_size**0.5
    labels = torch.randint(0, vocab, (num_tokens,))
    grad_weights = torch.randn(2, num_tokens, dtype=torch.float64)
    ref = run_one("naive", hidden, weight, labels, grad_weights, temperature, chunk_size)
    rows = []
    for method in ("chunked", "fused"):
        res = run_one(method, hidden, weight, labels, grad_weights, temperature, chunk_size)
        rows.append((method, max(max_abs_diffs(res[0], res[1], ref[0], ref[1]))))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--hidden-size", type=int, default=64, help="H; only the matmul cost and the floor grow.")
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[256])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument(
        "--exact-tokens",
        type=int,
        nargs="*",
        default=[1024],
        help="the N at which errors against the float64 reference (~8 s per 1k tokens) are computed",
    )
    parser.add_argument("--float64-tokens", type=int, default=64, help="N of the float64 check; 0 skips it.")
    args = parser.parse_args()

    print(
        f"V = {args.vocab}, H = {args.hidden_size}, float32, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; memory in units of one float32 [N, V] tensor.\n"
    )
    print(
        "| N | method | chunk | alloc peak | rss peak | floor | time (s) | max abs error vs float64 (lp, H, dh, dW) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for num_tokens in args.tokens:
        torch.manual_seed(0)
        hidden = torch.randn(num_tokens, args.hidden_size)
        # Scaled like a trained head so that logits are O(1) and the distributions are neither flat nor one-hot.
        weight = torch.randn(args.vocab, args.hidden_size) / args.hidden_size**0.5
        labels = torch.randint(0, args.vocab, (num_tokens,))
        grad_weights = torch.randn(2, num_tokens)
        unit = 4 * num_tokens * args.vocab
        floor = 4 * (num_tokens + args.vocab) * args.hidden_size / unit
        reference = None
        if num_tokens in args.exact_tokens:
            reference = float64_reference(hidden, weight, labels, grad_weights, args.temperature)
        for method in args.methods:
            for chunk_size in args.chunk_sizes if method != "naive" else [None]:
                outputs, grads, seconds, alloc, rss = run_one(
                    method, hidden, weight, labels, grad_weights, args.temperature, chunk_size or 1
                )
                diffs = "-"
                if reference is not None:
                    diffs = ", ".join(f"{d:.1e}" for d in max_abs_diffs(outputs, grads, *reference))
                print(
                    f"| {num_tokens} | {method} | {chunk_size or '-'} | {alloc / unit:.3f} | {rss / unit:.3f} | "
                    f"{floor:.3f} | {seconds:.1f} | {diffs} |",
                    flush=True,
                )
                del outputs, grads
        del hidden, weight, reference
    if args.float64_tokens:
        print(
            f"\nfloat64 inputs, N = {args.float64_tokens}: largest absolute difference to naive float64 over "
            "log-probs, entropies and both gradients:"
        )
        for method, diff in float64_exactness(
            args.vocab, args.hidden_size, args.float64_tokens, args.chunk_sizes[0], args.temperature
        ):
            print(f"- {method}: {diff:.1e}")


if __name__ == "__main__":
    main()
