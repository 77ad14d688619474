"""
How the cost of a `PPOTrainerVL` step grows with the work: step time and peak memory against prompts per step,
completion length, images per prompt and audio clip length, on the tiny models (CPU, one thread).

    PYTHONPATH=. python bench/scaling.py                       # ~2.5 min; table + docs/benchmarks_scaling.png
    PYTHONPATH=. python bench/scaling.py --axes completion --plot ""

Every point runs in its own forked process (so that memory freed by an earlier point cannot hide a later one's
growth): a trainer is built, trains `--steps` optimizer steps (one rollout of `prompts x 8` completions of exactly
`L` tokens each, one micro-batch, float32, padded layout), and the first step is a warm-up. Reported per point:
the median wall and CPU time of the other steps and the training peak memory: the kernel's resident-set high-water
mark (`VmHWM`, reset through `/proc/self/clear_refs` when training starts) minus the resident set of the built
trainer (model, reference, data) at that moment, i.e. what rollouts, activations, gradients and optimizer state add.
It is measured on the whole run because freed memory stays resident in the allocator: once the warm-up step has
touched its peak, later steps reuse those pages. Defaults besides the varied axis: 2 prompts x 8, L = 32, one
56x56 image (4 image tokens) or a 1 s clip. The tiny audio model's window is 2 s: longer clips would be truncated.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys

from common import Setup, StepClock, build_ours, load_note, markdown_table, quiet

AXES = {
    "prompts": ("prompts per step", [8, 16, 32, 64], lambda v: dict(prompts=v)),
    "completion": ("completion length (tokens)", [16, 32, 64, 128, 256], lambda v: dict(completion_length=v)),
    "images": ("images per prompt", [1, 2, 3, 4], lambda v: dict(images_per_prompt=v)),
    "audio": ("audio clip length (s)", [1.0, 1.5, 2.0], lambda v: dict(task="pitch", audio_seconds=v)),
}


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


class MemoryClock(StepClock):
    """Step times, plus the resident-set high-water mark of the training run over the built trainer's resident set."""

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux >= 4.0: VmHWM := VmRSS
        self.rss_before = _status_kib("VmRSS")

    def training_peak_mib(self) -> float:
        return (_status_kib("VmHWM") - self.rss_before) / 1024


def _measure(setup: Setup, queue) -> None:
    quiet()
    clock = MemoryClock()
    build_ours(setup, callbacks=[clock]).train()
    wall, cpu = clock.step_times()
    process_peak = _status_kib("VmHWM") / 1024
    queue.put((statistics.median(wall), statistics.median(cpu), clock.training_peak_mib(), process_peak))


def measure(setup: Setup) -> tuple[float, float, float, float]:
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=_measure, args=(setup, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.4))
    axes = [axes] if len(results) == 1 else list(axes)
    for ax, (axis, points) in zip(axes, results.items()):
        label = AXES[axis][0]
        values = [p[0] for p in points]
        ax.plot(values, [p[1] for p in points], "o-", color="tab:blue", label="step time (s, wall)")
        ax.set_xlabel(label)
        ax.set_ylabel("seconds per step", color="tab:blue")
        ax.set_ylim(bottom=0)
        twin = ax.twinx()
        twin.plot(values, [p[3] for p in points], "s--", color="tab:red", label="training peak memory (MiB)")
        twin.set_ylabel("training peak memory (MiB)", color="tab:red")
        twin.set_ylim(bottom=0)
        ax.set_title(label)
    fig.suptitle("PPOTrainerVL step cost on the tiny models (CPU, 1 thread)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--axes", nargs="+", default=list(AXES), choices=list(AXES))
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per point (the first is a warm-up)")
    parser.add_argument("--plot", default="docs/benchmarks_scaling.png", help="PNG path; empty for none")
    args = parser.parse_args(argv)
    quiet()
    print(f"Scaling\n{load_note()}")
    base = Setup(steps=args.steps)
    results, rows = {}, []
    for axis in args.axes:
        label, values, changes = AXES[axis]
        results[axis] = []
        for value in values:
            wall, cpu, training_peak, process_peak = measure(base.but(**changes(value)))
            results[axis].append((value, wall, cpu, training_peak, process_peak))
            rows.append([label, value, wall, cpu, training_peak, process_peak])
    print(
        markdown_table(
            ["axis", "value", "step wall (s)", "step CPU (s)", "training peak memory (MiB)", "process peak RSS (MiB)"],
            rows,
        )
    )
    print(load_note())
    if args.plot:
        plot(results, args.plot)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
