"""
Benchmark B6: step time of `PPOTrainerVL` / TRL's `GRPOTrainer` on the same tiny Qwen2.5-VL, data, seed and forced
completion length, and equal loss and grad-norm when both are fed identical injected completions.

    PYTHONPATH=. python bench/b6_vs_trl.py                       # ~30 s: 7 interleaved repetitions + equality
    PYTHONPATH=. python bench/b6_vs_trl.py --packing --repetitions 7 --completion-length 64

Timing. Each repetition builds both trainers fresh (same seed, so the same weights and prompts) and trains each for
`--steps` optimizer steps, ours then TRL's; the first step of each run is a warm-up and is dropped. Per repetition,
the ratio of the two runs' median step times is taken (they ran back to back, under the same load); the result is
the median ratio over repetitions, with its range. Wall time is the headline; CPU time (`time.process_time`, one
thread) is printed too because it is far less sensitive to other processes on a shared machine. See
`bench/common.py` for the settings both sides share.

Equality. Both trainers train one step on a dataset whose rows are all the same prompt (so the order in which each
trainer draws them does not matter), with the model's `generate` replaced by one that returns the same fixed
completions on both sides: different lengths, each ending in EOS, so that the token-mean loss is not trivially 0.
The logged `loss` and pre-clipping `grad_norm` of that step must agree to 1e-6 (relative for the grad-norm).
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
from common import (
    Setup,
    build_ours,
    build_trl,
    dataset_for,
    interleaved,
    load_note,
    markdown_table,
    median_of,
    paired_ratio,
    quiet,
    timed_run,
)
from datasets import Dataset


def injected_generate(model, completions: torch.Tensor):
    """A `generate` for `model` that appends `completions[:B]` to the prompts instead of sampling."""

    def generate(input_ids=None, **kwargs):
        return torch.cat([input_ids, completions[: input_ids.shape[0]].to(input_ids.device)], dim=1)

    model.generate = generate


def fixed_completions(setup: Setup, eos_id: int, pad_id: int, vocab_size: int) -> torch.Tensor:
    """`[N, L]` completions: random ordinary tokens, sample i ending with EOS after `L - 1 - (i % L)` tokens."""
    generator = torch.Generator().manual_seed(1234)
    length = setup.completion_length
    tokens = torch.randint(10, vocab_size // 2, (setup.samples, length), generator=generator)  # [N, L]
    for i in range(setup.samples):
        end = length - 1 - (3 * i) % length
        tokens[i, end] = eos_id
        tokens[i, end + 1 :] = pad_id
    return tokens


def equality(setup: Setup) -> dict:
    """One step of each trainer on identical injected completions: their loss and grad-norm."""
    one_prompt = dataset_for(setup, rows=1)[0]
    dataset = Dataset.from_list([one_prompt] * (4 * setup.samples))
    single = setup.but(steps=1)
    results = {}
    for name, build in (("ours", build_ours), ("trl", build_trl)):
        trainer = build(single, dataset=dataset)
        model = trainer.actor.hf_model if name == "ours" else trainer.model
        tokenizer = trainer.processing_class.tokenizer
        completions = fixed_completions(single, tokenizer.eos_token_id, tokenizer.pad_token_id, len(tokenizer))
        injected_generate(model, completions)
        trainer.train()
        log = next(entry for entry in trainer.state.log_history if "loss" in entry)
        results[name] = {"loss": log["loss"], "grad_norm": log["grad_norm"]}
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repetitions", type=int, default=7)
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per run (the first is a warm-up)")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--completion-length", type=int, default=32)
    parser.add_argument("--packing", action="store_true", help="our packing_samples=True (TRL pads)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="on both sides (TRL's default)")
    parser.add_argument(
        "--micro-rollout-batch-size",
        type=int,
        help="ours: sequences per generate call (default: the whole rollout, as TRL generates its batch at once)",
    )
    parser.add_argument("--skip-equality", action="store_true")
    args = parser.parse_args(argv)
    quiet()
    setup = Setup(
        prompts=args.prompts,
        n=args.n,
        completion_length=args.completion_length,
        steps=args.steps,
        packing=args.packing,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    print(f"B6 {setup}\n{load_note()}")
    ours_overrides = {}
    if args.micro_rollout_batch_size:
        ours_overrides["micro_rollout_batch_size"] = args.micro_rollout_batch_size

    def build_ours_here(setup, **kwargs):
        return build_ours(setup, **kwargs, **ours_overrides)

    results = interleaved(
        {"ours": lambda: timed_run(build_ours_here, setup), "trl": lambda: timed_run(build_trl, setup)},
        args.repetitions,
    )
    rows = []
    for clock in ("wall", "cpu"):
        ratio, low, high = paired_ratio(results["ours"][clock], results["trl"][clock])
        ours, trl = median_of(results["ours"][clock]), median_of(results["trl"][clock])
        rows.append([clock, ours, trl, ratio, f"{low:.3f}-{high:.3f}"])
    print(markdown_table(["clock", "ours s/step", "TRL s/step", "ours / TRL (median)", "range"], rows))
    if not args.skip_equality:
        values = equality(setup)
        ours, trl = values["ours"], values["trl"]
        loss_diff = abs(ours["loss"] - trl["loss"])
        norm_diff = abs(ours["grad_norm"] - trl["grad_norm"]) / max(abs(trl["grad_norm"]), 1e-12)
        print(
            markdown_table(
                ["", "ours", "TRL", "difference"],
                [
                    ["loss", ours["loss"], trl["loss"], f"{loss_diff:.2e} (abs)"],
                    ["grad_norm", ours["grad_norm"], trl["grad_norm"], f"{norm_diff:.2e} (rel)"],
                ],
            )
        )
        equal = loss_diff <= 1e-6 and norm_diff <= 1e-6
        print(f"equal to 1e-6: {equal}")
    print(f"{load_note()}; per-run medians: ours {[round(statistics.median(r), 4) for r in results['ours']['wall']]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
