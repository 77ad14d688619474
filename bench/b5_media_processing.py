"""
Benchmark B5: media items run through the image/video/audio processor per optimizer step / unique media per step.

    PYTHONPATH=. python bench/b5_media_processing.py            # ~30 s: image, 2 images/prompt, video, audio; TRL

Both trainers are instrumented from the outside, the same way: the processor class's `__call__` is wrapped for the
run, and every call adds the media it was handed (`images`, `videos`, `audio`) to the current step's count; the
unique media of the step are the distinct contents among them (hashed bytes, so a re-decoded copy of the same image
counts as the same medium). The ratio is processed / unique over all steps of a run. `PPOTrainerVL`'s own counters
(`PromptCollator.processor_calls`, `media_processed`) are printed beside it as a cross-check. A ratio of 1.0 means
each medium was processed once per step, however many completions were sampled from its prompt; repeating a prompt
`n_samples_per_prompt` times before processing gives `n` per processor call that sees the media.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import sys

import numpy as np
from common import Setup, build_ours, build_trl, load_note, markdown_table, quiet
from PIL import Image
from transformers import TrainerCallback


def _digest(item) -> str:
    if isinstance(item, Image.Image):
        return hashlib.sha1(item.tobytes()).hexdigest()
    if isinstance(item, (list, tuple)):  # a video as frames
        return hashlib.sha1("".join(_digest(frame) for frame in item).encode()).hexdigest()
    return hashlib.sha1(np.ascontiguousarray(np.asarray(item)).tobytes()).hexdigest()


def _leaves(value) -> list:
    """Images may come as a flat list or one list per sample."""
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], (list, tuple)):
        return [leaf for sub in value for leaf in _leaves(sub)]
    return list(value) if isinstance(value, (list, tuple)) else [value]


class MediaCounter(TrainerCallback):
    """Counts media handed to the processor, per optimizer step."""

    def __init__(self):
        self.processed = 0
        self.calls = 0
        self.unique: set[str] = set()
        self.steps: list[tuple[int, int, int]] = []  # (processed, unique, calls) per step

    def record(self, kwargs: dict) -> None:
        items = []
        if kwargs.get("images") is not None:
            items += _leaves(kwargs["images"])
        for name in ("videos", "audio"):
            if kwargs.get(name) is not None:
                value = kwargs[name]
                items += list(value) if isinstance(value, (list, tuple)) else [value]
        self.processed += len(items)
        self.calls += 1
        self.unique.update(_digest(item) for item in items)

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append((self.processed, len(self.unique), self.calls))
        self.processed, self.unique, self.calls = 0, set(), 0

    @contextlib.contextmanager
    def watching(self, processor_class: type):
        original = processor_class.__call__

        def counting_call(processor, *args, **kwargs):
            self.record(kwargs)
            return original(processor, *args, **kwargs)

        processor_class.__call__ = counting_call
        try:
            yield self
        finally:
            processor_class.__call__ = original


def measure(build, setup: Setup) -> dict:
    counter = MediaCounter()
    trainer = build(setup, callbacks=[counter])
    with counter.watching(type(trainer.processing_class)):
        trainer.train()
    processed, unique, calls = (sum(values) for values in zip(*counter.steps))
    result = {"steps": len(counter.steps), "processed": processed, "unique": unique, "calls": calls}
    if build is build_ours:
        result["collator"] = f"{trainer.collator.processor_calls} calls, {dict(trainer.collator.media_processed)}"
    return result


CASES = {
    "image": dict(task="colour"),
    "2 images/prompt": dict(task="colour", images_per_prompt=2),
    "video": dict(task="video"),
    "audio": dict(task="pitch"),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--completion-length", type=int, default=8)
    args = parser.parse_args(argv)
    quiet()
    base = Setup(prompts=args.prompts, n=args.n, completion_length=args.completion_length, steps=args.steps)
    print(f"B5 prompts/step={base.prompts}, n={base.n}, steps={base.steps}\n{load_note()}")
    rows = []
    for case, changes in CASES.items():
        setup = base.but(**changes)
        sides = [("PPOTrainerVL", build_ours)]
        if setup.task == "colour":  # TRL's GRPOTrainer takes image columns only
            sides.append(("TRL GRPOTrainer", build_trl))
        for name, build in sides:
            result = measure(build, setup)
            rows.append(
                [
                    case,
                    name,
                    result["calls"] / result["steps"],
                    result["processed"] / result["steps"],
                    result["unique"] / result["steps"],
                    result["processed"] / result["unique"],
                    result.get("collator", ""),
                ]
            )
    print(
        markdown_table(
            [
                "media",
                "trainer",
                "processor calls / step",
                "media processed / step",
                "unique / step",
                "processed / unique",
                "our collator counters",
            ],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
