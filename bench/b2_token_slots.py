"""
Benchmark B2: token slots the model computes / real tokens, over all forward passes of a step (old log-probs,
reference, values, update), padded vs packed.

    PYTHONPATH=. python bench/b2_token_slots.py            # ~1 min: synthetic GRPO-shaped mix + real rollouts
    PYTHONPATH=. python bench/b2_token_slots.py --synthetic-only --micro-batch-sizes 8 32

Two measurements:

1. **Synthetic GRPO-shaped length mix** (no model): 64 prompts x 8 samples, prompt lengths ~ N(450, 150) clipped to
   [64, 1024], response lengths lognormal (median 120, sigma 0.8) clipped to [1, 1024]. Samples are turned into
   `BufferItem`s and collated with `rft_trl.trainers.batching.make_experience_batch` in shuffled
   micro-batches (as the trainer does) with `packing_samples` False and True; a batch's slots are what its forward
   would compute: `B x width` padded, the sum of lengths packed. The rollout passes (old log-probs, reference)
   run in chunks of `micro_rollout_batch_size` rows that carry the generation layout, padded to the rollout's widest
   prompt and widest completion. Static shapes (every forward at `prompt_max_len + generate_max_len`, as compiled
   or graph-captured engines do) are given for comparison. One step = old log-probs + reference (rollout) + the
   update over the same samples.
2. **Real rollouts of `PPOTrainerVL`** on the tiny image, audio and text models: `Actor.forward` and
   `Critic.forward` are wrapped to record, for every call, the slots (`sequences.numel()`) and the real tokens
   (the attention mask's ones when padded, `sum(packed_seq_lens)` packed), by pass. Completion lengths vary
   because EOS gets a logit bias (`sequence_bias`) during generation; with `beta > 0` the reference pass runs, with
   `max_epochs = 2` the old-log-prob pass runs, and `--estimator gae` adds the critic's passes.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

import numpy as np
import torch
from common import Setup, build_ours, load_note, markdown_table, quiet

from rft_trl.models.actor import Actor
from rft_trl.models.critic import Critic
from rft_trl.trainers.batching import BufferItem, make_experience_batch

# ---------------------------------------------------------------------------------------------- synthetic mix


def grpo_lengths(
    prompts: int, n: int, seed: int, prompt_max: int, completion_max: int
) -> tuple[np.ndarray, np.ndarray]:
    """Prompt length per prompt `[prompts]` and completion length per sample `[prompts * n]`."""
    rng = np.random.default_rng(seed)
    prompt = np.clip(np.rint(rng.normal(450, 150, size=prompts)), 64, prompt_max).astype(int)
    completion = np.clip(np.rint(rng.lognormal(np.log(120), 0.8, size=prompts * n)), 1, completion_max).astype(int)
    return prompt, completion


def _item(prompt_len: int, completion_len: int) -> BufferItem:
    length = prompt_len + completion_len
    actions = torch.zeros(completion_len)
    return BufferItem(
        sequences=torch.ones(length, dtype=torch.long),
        action_log_probs=actions,
        base_action_log_probs=actions,
        values=None,
        returns=actions,
        advantages=actions,
        attention_mask=torch.ones(length, dtype=torch.long),
        action_mask=torch.ones(completion_len, dtype=torch.bool),
        info={},
    )


def synthetic(
    micro_batch_sizes: list[int], rollout_chunk: int, seed: int, prompt_max: int = 1024, completion_max: int = 1024
) -> list[list]:
    prompts, n = 64, 8
    prompt, completion = grpo_lengths(prompts, n, seed, prompt_max, completion_max)
    sample_prompt = np.repeat(prompt, n)  # [N]
    real = int((sample_prompt + completion).sum())
    # Rollout passes (old log-probs, reference): prompt-major chunks in the generation layout.
    rollout_padded = 0
    width = prompt.max() + completion.max()
    for start in range(0, prompts * n, rollout_chunk):
        rollout_padded += min(rollout_chunk, prompts * n - start) * width
    items = [_item(p, c) for p, c in zip(sample_prompt.tolist(), completion.tolist())]
    order = np.random.default_rng(seed + 1).permutation(len(items))
    rows, attention_rows = [], []
    real_pairs = int(((sample_prompt + completion) ** 2).sum())
    for size in micro_batch_sizes:
        update = {}
        pairs = {"padded": 0, "packed, block mask": 0}
        for packing in (False, True):
            slots = 0
            for start in range(0, len(items), size):
                batch = make_experience_batch([items[i] for i in order[start : start + size]], packing_samples=packing)
                if packing:
                    packed = sum(s.numel() for s in batch.sequences)
                    slots += packed
                    pairs["packed, block mask"] += packed**2
                else:
                    slots += batch.sequences.numel()
                    pairs["padded"] += batch.sequences.shape[0] * batch.sequences.shape[1] ** 2
            update[packing] = slots
        attention_rows.append([size, pairs["padded"] / real_pairs, pairs["packed, block mask"] / real_pairs, 1.0])
        static = (prompt_max + completion_max) * len(items)
        # A step: two rollout passes (old log-probs, reference) and one update pass over the same samples.
        rows.append(
            [
                size,
                rollout_padded / real,
                update[False] / real,
                (2 * rollout_padded + update[False]) / (3 * real),
                (2 * real + update[True]) / (3 * real),
                static / real,
            ]
        )
    return rows, attention_rows, prompt, completion


# ---------------------------------------------------------------------------------------------- real rollouts


class SlotRecorder:
    """Wraps `Actor.forward` and `Critic.forward` (class-wide) to record slots and real tokens per pass."""

    def __init__(self):
        self.slots: dict[str, int] = defaultdict(int)
        self.real: dict[str, int] = defaultdict(int)
        self.roles: dict[int, str] = {}

    def __enter__(self):
        self._saved = [(Actor, Actor.forward), (Critic, Critic.forward)]
        for owner, original in self._saved:
            owner.forward = self._wrap(original)
        return self

    def __exit__(self, *exc):
        for owner, original in self._saved:
            owner.forward = original

    def _wrap(self, original):
        recorder = self

        def forward(module, sequences, num_actions=None, attention_mask=None, *args, **kwargs):
            packed = kwargs.get("packed_seq_lens")
            if packed is not None:
                real = sum(packed)
            elif attention_mask is not None and sequences.shape[0] == 1 and attention_mask.max() > 1:
                real = int((attention_mask > 0).sum())  # packed, samples numbered in the mask
            elif attention_mask is not None:
                real = int(attention_mask.sum())
            else:
                real = sequences.numel()
            role = recorder.roles.get(id(module), type(module).__name__)
            phase = "update" if torch.is_grad_enabled() else "rollout"
            name = f"{phase}: {role}"
            recorder.slots[name] += sequences.numel()
            recorder.real[name] += real
            return original(module, sequences, num_actions, attention_mask, *args, **kwargs)

        return forward


def real_rollouts(task: str, packing: bool, estimator: str, steps: int) -> dict[str, tuple[int, int]]:
    setup = Setup(
        task=task,
        prompts=4,
        n=4,
        completion_length=48,
        micro_batches=2,
        steps=steps,
        packing=packing,
        beta=0.05,
        max_epochs=2,
    )
    trainer = build_ours(setup, advantage_estimator=estimator, micro_rollout_batch_size=8)
    eos = trainer.collator.tokenizer.eos_token_id
    # Varied completion lengths: EOS gets a logit bonus (about 1 in 15 tokens), and no minimum length.
    trainer.args.generation_kwargs = {"sequence_bias": {(eos,): 3.0}}
    recorder = SlotRecorder()
    recorder.roles[id(trainer.actor)] = "actor"
    if trainer._reference is not None:
        recorder.roles[id(trainer._reference)] = "reference"
    if trainer.critic is not None:
        recorder.roles[id(trainer.critic)] = "critic"
    with recorder:
        trainer.train()
    return {name: (recorder.slots[name], recorder.real[name]) for name in recorder.slots}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--micro-batch-sizes", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--rollout-chunk", type=int, default=8, help="micro_rollout_batch_size of the synthetic mix")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--synthetic-only", action="store_true")
    parser.add_argument("--tasks", nargs="+", default=["colour", "pitch", "text"])
    parser.add_argument("--estimator", default="group_norm", help="gae adds the critic's passes")
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args(argv)
    quiet()
    print(f"B2\n{load_note()}")
    rows, attention_rows, prompt, completion = synthetic(args.micro_batch_sizes, args.rollout_chunk, args.seed)
    print(
        f"\nSynthetic GRPO-shaped mix: 64 prompts x 8, prompt mean {prompt.mean():.0f} (sd {prompt.std():.0f}), "
        f"completion mean {completion.mean():.0f} / median {np.median(completion):.0f} / max {completion.max()}; "
        f"slots / real tokens:"
    )
    print(
        markdown_table(
            [
                "micro_train_batch_size",
                "rollout passes, padded",
                "update, padded to batch max",
                "step, padded",
                "step, packed",
                "static shapes",
            ],
            rows,
        )
    )
    print(
        "\nAttention score pairs of the update pass / real (sum of L_i^2): token slots count the projections and MLP; "
        "attention work is quadratic. A pack attended through a block-diagonal mask (sdpa, eager) computes T^2 for "
        "its T tokens; the varlen kernel of flash-attention computes each sample's own L_i^2."
    )
    print(
        markdown_table(
            ["micro_train_batch_size", "padded", "packed, block mask (sdpa/eager)", "packed, varlen (flash-attn)"],
            attention_rows,
        )
    )
    if args.synthetic_only:
        return 0
    table = []
    for task in args.tasks:
        for packing in (False, True):
            passes = real_rollouts(task, packing, args.estimator, args.steps)
            total_slots = sum(s for s, _ in passes.values())
            total_real = sum(r for _, r in passes.values())
            detail = ", ".join(f"{name} {s / r:.3f}" for name, (s, r) in sorted(passes.items()))
            table.append([task, "packed" if packing else "padded", total_slots / total_real, total_real, detail])
    print(f"\nReal rollouts of PPOTrainerVL ({args.estimator}, beta 0.05, max_epochs 2, 16 samples, micro-batch 8):")
    print(markdown_table(["task", "layout", "slots / real (all passes)", "real tokens", "per pass"], table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
