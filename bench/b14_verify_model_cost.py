"""
Benchmark B14: the cost of `verify_model` (the check, at construction, of the policy's log-probs against its own
forward on each sample alone) beside the first optimizer step it precedes, side by side in one run.

    PYTHONPATH=. python bench/b14_verify_model_cost.py                  # ~1 min on 2 CPU cores
    PYTHONPATH=. python bench/b14_verify_model_cost.py --kinds qwen2_5_vl --repetitions 5

What runs, per tiny family: `PPOTrainerVL(..., verify_model=False)` is built, then `rft_trl.models.verification.
verify_model` is timed on its actor and collator (padded, packed with `--packing`, the encoder cache where in use),
then `trainer.train()` for one optimizer step of the demo's rollout (16 prompts x 8 samples, 8-token completions;
one rollout, its generation included). The ratio is the verification's time over the first step's, per repetition.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

from common import markdown_table, quiet

from rft_trl import PPOTrainerVL, RFTConfig
from rft_trl.models.verification import ModelVerificationError, verify_model
from rft_trl.testing import build_tiny_model, length_reward, make_task_dataset

TASK_OF_KIND = {"qwen2": "text", "qwen2_audio": "pitch"}


def measure(kind: str, packing: bool) -> tuple[float, float | None]:
    """
    Seconds of `verify_model` and of the first optimizer step (one rollout of 16 x 8, and its update); `None` for the
    step when `verify_model` refuses the run (packing a model that leaks across samples), which then does not train.
    """
    model, processor = build_tiny_model(kind, seed=0)
    args = RFTConfig(
        output_dir=tempfile.mkdtemp(prefix="b14_"),
        num_generations=8,
        rollout_batch_size=16,
        per_device_train_batch_size=128,
        gradient_accumulation_steps=1,
        max_completion_length=8,
        max_steps=1,
        packing_samples=packing,
        verify_model=False,
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        logging_steps=1,
    )
    dataset = make_task_dataset(TASK_OF_KIND.get(kind, "colour"), 64, seed=0)
    trainer = PPOTrainerVL(model, [length_reward], args, train_dataset=dataset, processing_class=processor)
    start = time.perf_counter()
    try:
        verify_model(
            trainer.actor, trainer.collator, packing=packing, media_encodings=trainer.experience_maker.media_encodings
        )
    except ModelVerificationError:
        return time.perf_counter() - start, None
    verified = time.perf_counter() - start
    start = time.perf_counter()
    trainer.train()
    return verified, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", nargs="+", default=["qwen2", "qwen2_5_vl", "qwen2_audio", "gemma3"])
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--packing", action="store_true")
    options = parser.parse_args(argv)
    quiet()
    rows = []
    for kind in options.kinds:
        runs = [measure(kind, options.packing) for _ in range(options.repetitions)]
        verified = statistics.median(v for v, _ in runs)
        if any(s is None for _, s in runs):
            rows.append([kind, f"{verified:.3f}", "refused by verify_model", "-"])
            continue
        step = statistics.median(s for _, s in runs)
        ratio = statistics.median(v / s for v, s in runs)
        rows.append([kind, f"{verified:.3f}", f"{step:.2f}", f"{100 * ratio:.1f}%"])
    headers = ["family", "verify_model (s)", "first step (s)", "verify / first step"]
    sys.stdout.write(markdown_table(headers, rows) + "\n")


if __name__ == "__main__":
    main()
