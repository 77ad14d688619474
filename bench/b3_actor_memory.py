"""
Benchmark B3: peak memory of `ActorVL.forward` + backward at a Qwen2.5-sized vocabulary (V = 151,936), with the
fused log-probs (the default) and with the model's full logits (`fused_log_probs=False`), side by side.

    PYTHONPATH=. python bench/b3_actor_memory.py                 # N in {1024, 2048, 4096}, ~2 min
    PYTHONPATH=. python bench/b3_actor_memory.py --tokens 2048

The call measured is the one the trainer makes in every pass of a step: `actor(sequences, num_actions,
attention_mask, return_entropy=True, **multimodal)` on a padded batch, then `sum(g1 * log p) + sum(g2 * H)` (fixed
random `g1`, `g2`: both outputs differentiated, as with an entropy bonus) back-propagated to every parameter. The
model is the tiny Qwen2.5-VL of `rft_trl.testing` (hidden size 64, two layers) with its vocabulary widened to
151,936 rows (random weights), so that the `[N, V]` logits dominate as they do at the head of a real model. The
batch is 2 samples, each one 56x56 image and a question through the tiny processor, followed by N / 2 random
completion tokens: N action tokens in all.

Memory is the exact peak of live tensor bytes above what was live when the call began, replayed from the
allocation and free events that `torch.profiler(profile_memory=True)` records for torch's CPU allocator (on CPU
there is no `max_memory_allocated`), in units of one float32 `[N, V]` tensor (`4 N V` bytes, 1.24 GB at N = 2048).
The parameter gradients (the widened embedding and head among them) are part of both peaks.

Exactness: the fused log-probs, entropies and every parameter gradient against the full-logit path, as the largest
absolute difference.
"""

from __future__ import annotations

import argparse
import gc
import time

import torch
from b3_logprob_memory import allocation_peak
from torch.profiler import ProfilerActivity, profile
from transformers import Qwen2_5_VLForConditionalGeneration

from rft_trl import ActorVL
from rft_trl.data import PromptCollator
from rft_trl.testing import build_tiny_model, make_colour_dataset

VOCAB = 151_936


def widened_model(seed: int = 0):
    """The tiny Qwen2.5-VL with a 151,936-row vocabulary, and its processor."""
    model, processor = build_tiny_model("qwen2_5_vl", seed=seed)
    config = model.config
    config.vocab_size = config.get_text_config().vocab_size = VOCAB
    torch.manual_seed(seed)
    return Qwen2_5_VLForConditionalGeneration(config), processor


def batch(processor, num_tokens: int, seed: int = 0):
    """Two image prompts, each followed by num_tokens / 2 random completion tokens."""
    prompts = PromptCollator(processor)(list(make_colour_dataset(2, seed=seed)))
    generator = torch.Generator().manual_seed(seed)
    completions = torch.randint(1000, VOCAB, (2, num_tokens // 2), generator=generator)
    sequences = torch.cat([prompts.input_ids, completions], dim=1)
    attention_mask = torch.cat([prompts.attention_mask, torch.ones_like(completions)], dim=1)
    fields = {**prompts.token_fields, **prompts.multimodal_inputs}
    return sequences, attention_mask, completions.shape[1], fields


def run(actor: ActorVL, sequences, attention_mask, num_actions, fields, grad_weights):
    """One forward + backward; returns log-probs, entropies, parameter gradients, seconds, peak bytes."""
    actor.model.zero_grad(set_to_none=True)
    gc.collect()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        log_probs, entropy = actor(sequences, num_actions, attention_mask, return_entropy=True, **fields)
        ((log_probs * grad_weights[0]).sum() + (entropy * grad_weights[1]).sum()).backward()
    seconds = time.perf_counter() - start
    peak = allocation_peak(prof)
    grads = {name: p.grad.clone() for name, p in actor.model.named_parameters() if p.grad is not None}
    return log_probs.detach(), entropy.detach(), grads, seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--chunk-size", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(2)

    model, processor = widened_model()
    fused = ActorVL(model, log_prob_chunk_size=args.chunk_size)
    full = ActorVL(model, fused_log_probs=False)
    print(f"tiny Qwen2.5-VL, V = {VOCAB}, float32, torch {torch.__version__}; memory in float32 [N, V] units\n")
    print("| N | `ActorVL.forward` path | peak | time (s) | max abs diff to full logits (log p, H, grads) |")
    print("| --- | --- | --- | --- | --- |")
    for num_tokens in args.tokens:
        sequences, attention_mask, num_actions, fields = batch(processor, num_tokens)
        grad_weights = torch.randn(2, *sequences[:, -num_actions:].shape, generator=torch.Generator().manual_seed(1))
        unit = 4 * num_tokens * VOCAB
        assert fused._fusable_head() is not None and full._fusable_head() is None
        results = {}
        for name, actor in (("full logits", full), ("fused", fused)):
            results[name] = run(actor, sequences, attention_mask, num_actions, fields, grad_weights)
        lp, ent, grads, _, _ = results["full logits"]
        for name, (f_lp, f_ent, f_grads, seconds, peak) in results.items():
            diff = "-"
            if name == "fused":
                grad_diff = max((f_grads[k] - grads[k]).abs().max().item() for k in grads)
                diff = f"{(f_lp - lp).abs().max():.1e}, {(f_ent - ent).abs().max():.1e}, {grad_diff:.1e}"
            print(f"| {num_tokens} | {name} | {peak / unit:.3f} | {seconds:.1f} | {diff} |", flush=True)
        del results, lp, ent, grads


if __name__ == "__main__":
    main()
