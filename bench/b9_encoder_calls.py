"""
Benchmark B9: images through the vision tower per rollout / unique images per rollout, and the step time, with
`PPOTrainerVL`'s encoder-output cache (`cache_encoder_outputs=True`, the default) against encoding the pixels in
every pass (`False`), side by side.

    PYTHONPATH=. python bench/b9_encoder_calls.py                      # ~3 min: 448 px images (256 image tokens)
    PYTHONPATH=. python bench/b9_encoder_calls.py --image-size 112 --repetitions 1

What runs is `PPOTrainerVL.train()` on the tiny Qwen2.5-VL, its processor keeping `--image-size` pixel images (the
grounding task's two squares), 4 prompts x 8 samples per rollout, 16-token completions, replayed as 2 optimizer steps
of 16 samples (so the rollout policy's log-probs are computed, as in any off-policy update), `beta=0` (TRL's
default: no reference; `--beta` adds one). The vision tower is instrumented from the outside: a forward pre-hook adds
the images of every call (the rows of its `grid_thw`). Unique images per rollout: one per prompt. Both settings of
`freeze_encoder` run: frozen, the update reuses the rollout's encoder outputs; trained (the default, as TRL), the
update encodes each prompt once per micro-batch with gradients. Step time: the median wall time per rollout (its two
optimizer steps) after a warm-up rollout, the two sides interleaved, the ratio per repetition's back-to-back pair.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile

from common import StepClock, load_note, markdown_table, paired_ratio, quiet

from rft_trl import PPOTrainerVL, RFTConfig
from rft_trl.testing import build_tiny_model, count_tower_images, length_reward, make_grounding_dataset

PROMPTS, SAMPLES, LENGTH = 4, 8, 16
STEPS_PER_ROLLOUT = 2


def run(image_size: int, freeze_encoder: bool, cache: bool, rollouts: int, beta: float) -> dict:
    """One training run: images encoded per rollout (policy and reference) and wall seconds per timed rollout."""
    model, processor = build_tiny_model("qwen2_5_vl", seed=0)
    processor.image_processor.size.longest_edge = image_size * image_size
    args = RFTConfig(
        output_dir=tempfile.mkdtemp(prefix="b9_"),
        rollout_batch_size=PROMPTS,
        n_samples_per_prompt=SAMPLES,
        micro_rollout_batch_size=SAMPLES,
        per_device_train_batch_size=PROMPTS * SAMPLES // (2 * STEPS_PER_ROLLOUT),
        gradient_accumulation_steps=2,
        generate_max_len=LENGTH,
        generation_kwargs={"min_new_tokens": LENGTH},
        max_steps=rollouts * STEPS_PER_ROLLOUT,
        learning_rate=1e-5,
        beta=beta,
        freeze_encoder=freeze_encoder,
        cache_encoder_outputs=cache,
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )
    clock = StepClock()
    trainer = PPOTrainerVL(
        model,
        [length_reward],
        args,
        train_dataset=make_grounding_dataset(PROMPTS * rollouts, image_size=image_size),
        processing_class=processor,
        callbacks=[clock],
    )
    counts = count_tower_images(trainer)
    trainer.train()
    wall, _ = clock.step_times(skip=STEPS_PER_ROLLOUT)
    per_rollout = [sum(wall[i : i + STEPS_PER_ROLLOUT]) for i in range(0, len(wall), STEPS_PER_ROLLOUT)]
    tokens = int(trainer.experience_maker.collator([make_grounding_dataset(1, image_size=image_size)[0]])
                 .multimodal_inputs["image_grid_thw"].prod()) // 4  # fmt: skip
    return {
        "policy": counts["policy"] / (PROMPTS * rollouts),
        "reference": counts["reference"] / (PROMPTS * rollouts),
        "seconds": per_rollout,
        "image_tokens": tokens,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--rollouts", type=int, default=4, help="per run, the first a warm-up")
    parser.add_argument("--repetitions", type=int, default=2)
    parser.add_argument("--beta", type=float, default=0.0)
    options = parser.parse_args(argv)
    quiet()
    rows = []
    for freeze_encoder in (True, False):
        results = {True: [], False: []}
        for _ in range(options.repetitions):
            for cache in (True, False):
                results[cache].append(run(options.image_size, freeze_encoder, cache, options.rollouts, options.beta))
        ratio, low, high = paired_ratio([r["seconds"] for r in results[True]], [r["seconds"] for r in results[False]])
        for cache in (True, False):
            first = results[cache][0]
            rows.append(
                [
                    "frozen" if freeze_encoder else "trained",
                    "cached" if cache else "pixels",
                    first["policy"],
                    first["reference"] if options.beta > 0 else "-",
                    statistics.median(t for r in results[cache] for t in r["seconds"]),
                    f"{ratio:.3f} ({low:.3f}-{high:.3f})" if cache else "1",
                ]
            )
    print(
        f"B9: {PROMPTS} prompts x {SAMPLES} samples per rollout, {options.image_size} px images "
        f"({first['image_tokens']} image tokens), {LENGTH}-token completions, {STEPS_PER_ROLLOUT} optimizer steps per "
        f"rollout, beta {options.beta}; {load_note()}"
    )
    print(
        markdown_table(
            [
                "encoder",
                "path",
                "policy images encoded / unique images, per rollout",
                "reference's",
                "s / rollout",
                "time ratio cached / pixels",
            ],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
