"""
Benchmark B4: host-device synchronisations per optimizer step, for 1, 2 and 4 micro-batches per step.

    PYTHONPATH=. python bench/b4_host_syncs.py                   # ~30 s: PPOTrainerVL and TRL, call sites listed
    PYTHONPATH=. python bench/b4_host_syncs.py --packing --beta 0.05 --max-epochs 2

There is no GPU here, so the synchronisations are counted where they are requested: for the measured steps of a
warmed-up trainer, every host read of a tensor's value is intercepted, that is `Tensor.item`, `.tolist`, `.cpu`,
`.numpy`, `__array__` (numpy conversion), `__bool__` (tensor truthiness, `if t > 0:`), `__float__`, `__int__`,
`__index__`, and the ops whose output size depends on the data and which therefore wait for the device on CUDA:
boolean-mask indexing `t[mask]`, `nonzero`, `masked_select`, `unique`. Each read is attributed to its call site (the
first stack frame outside torch) and to a phase:

- `generate`: inside the transformers `generate` call (its per-token stopping check), common to every HF-based
  trainer;
- `rollout`: the rest of the rollout (experience making: collation, scoring, advantages, metrics);
- `update`: everything else: the micro-batches' forward/loss/backward, gradient clipping, the optimizer step and
  the logging of the step's metrics.

and to an owner by the call site's file: the RL trainer (`rft_trl` or `trl`), `transformers.Trainer` (and
Accelerate), the model's own code (`transformers/models/...` and its helpers: M-RoPE indices, vision windows; the
same for any trainer that runs this model), the processor, or the `generate` loop. The headline is the trainer's
reads in the update phase, the part a trainer controls and the one that repeats per micro-batch.

This is an upper bound of what `torch.cuda.set_sync_debug_mode("warn")` would report on a GPU: on CPU every tensor
lives on the host, so a read of a tensor that would also stay on the host on a GPU (e.g. one built with
`torch.tensor(python_list)` and never moved) is counted too; the per-site table lets a reader strike those. Steps are
delimited by the Trainer's `on_step_end`; the first step is a warm-up; the Trainer logs after `on_step_end`, so each
measured window holds one rollout, its micro-batches, one optimizer step and one logging call.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections import Counter

import torch
from common import Setup, build_ours, build_trl, load_note, markdown_table, quiet
from torch.overrides import TorchFunctionMode
from transformers import TrainerCallback

READ_METHODS = ("item", "tolist", "cpu", "numpy", "__array__", "__bool__", "__float__", "__int__", "__index__")
DATA_DEPENDENT_FUNCTIONS = ("nonzero", "masked_select", "unique")
TORCH_DIR = os.path.dirname(torch.__file__)


def _is_bool_mask(index) -> bool:
    if isinstance(index, tuple):
        return any(_is_bool_mask(part) for part in index)
    return isinstance(index, torch.Tensor) and index.dtype == torch.bool


class SyncCounter(TrainerCallback):
    """Counts host reads of tensor values while `active`, keyed by (phase, kind, call site)."""

    def __init__(self):
        self.events: Counter = Counter()
        self.active = False
        self.phase = "update"
        self.steps_seen = 0
        self.measured_steps = 0
        self.total_steps = 0

    # ---- steps
    def on_train_begin(self, args, state, control, **kwargs):
        self.total_steps = args.max_steps

    def on_step_end(self, args, state, control, **kwargs):
        self.steps_seen += 1
        if self.active:
            self.measured_steps += 1
        # Warm-up: the first step is not counted; after the last one, teardown is not counted either.
        self.active = 1 <= self.steps_seen < self.total_steps

    # ---- phases
    @contextlib.contextmanager
    def phase_of(self, phase: str):
        previous, self.phase = self.phase, phase
        try:
            yield
        finally:
            self.phase = previous

    def wrap_phase(self, owner, name: str, phase: str) -> None:
        original = getattr(owner, name)

        def wrapped(*args, **kwargs):
            with self.phase_of(phase):
                return original(*args, **kwargs)

        setattr(owner, name, wrapped)

    # ---- reads
    def record(self, name: str, args: tuple) -> None:
        if name in READ_METHODS:
            kind = f".{name}"
        elif name in DATA_DEPENDENT_FUNCTIONS:
            kind = name
        elif name == "__getitem__" and len(args) > 1 and _is_bool_mask(args[1]):
            kind = "t[bool mask]"
        else:
            return
        frame = sys._getframe(2)
        while frame is not None and frame.f_code.co_filename.startswith((TORCH_DIR, __file__)):
            frame = frame.f_back
        site = "?" if frame is None else f"{_short(frame.f_code.co_filename)}:{frame.f_lineno} {frame.f_code.co_name}"
        self.events[(self.phase, kind, site)] += 1

    @contextlib.contextmanager
    def watching(self):
        with _ReadMode(self):
            yield self

    def per_step(self) -> Counter:
        """Reads per optimizer step, keyed by (phase, owner of the call site)."""
        totals: Counter = Counter()
        for (phase, _, site), count in self.events.items():
            totals[(phase, owner_of(site))] += count / self.measured_steps
        return totals

    def sites(self, owners: tuple[str, ...]) -> list[tuple[str, str, str, str, float]]:
        rows = [
            (phase, owner_of(site), kind, site, count / self.measured_steps)
            for (phase, kind, site), count in self.events.items()
            if owner_of(site) in owners
        ]
        return sorted(rows, key=lambda row: (row[0], row[1], -row[4], row[3]))


class _ReadMode(TorchFunctionMode):
    """Sees every torch function and tensor method call (a call made while handling one is not seen again)."""

    def __init__(self, counter: SyncCounter):
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if self.counter.active:
            self.counter.record(func.__name__, args)
        return func(*args, **(kwargs or {}))


OWNERS = (
    # (path marker, owner): the first match wins.
    ("/rft_trl/", "ours"),
    ("/trl/", "TRL"),
    ("/transformers/trainer", "Trainer"),
    ("/transformers/generation/", "generate"),
    ("/transformers/processing_utils", "processor"),
    ("/transformers/models/", "model"),  # modeling and processing code of the model family
    ("/transformers/", "model"),  # vision_utils, masking_utils, import_utils: helpers of the modeling code
    ("/accelerate/", "Trainer"),
)


def owner_of(site: str) -> str:
    path = "/" + site
    if "/transformers/models/" in path and "/processing_" in path:
        return "processor"
    return next((owner for marker, owner in OWNERS if marker in path), "other")


def _short(path: str) -> str:
    for marker in ("/rft_trl/", "/transformers/", "/accelerate/", "/trl/", "/bench/", "/torch/"):
        if marker in path:
            return marker.strip("/") + "/" + path.split(marker, 1)[1]
    return os.path.basename(path)


def count(build, setup: Setup, **overrides) -> SyncCounter:
    counter = SyncCounter()
    trainer = build(setup, callbacks=[counter], **overrides)
    if build is build_ours:
        counter.wrap_phase(trainer, "_start_rollout", "rollout")
        model = trainer.actor.model
    else:
        counter.wrap_phase(trainer, "_generate_and_score_completions", "rollout")
        model = trainer.model
    counter.wrap_phase(model, "generate", "generate")
    with counter.watching():
        trainer.train()
    return counter


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--micro-batches", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per run (the first is a warm-up)")
    parser.add_argument("--completion-length", type=int, default=8)
    parser.add_argument("--packing", action="store_true")
    parser.add_argument("--beta", type=float, default=0.0, help="ours only: a KL term and its reference forward")
    parser.add_argument("--max-epochs", type=int, default=1, help="ours only: > 1 adds the old-log-prob forward")
    parser.add_argument("--no-trl", action="store_true")
    parser.add_argument("--sites-for", type=int, default=2, help="list call sites for this micro-batch count")
    args = parser.parse_args(argv)
    quiet()
    base = Setup(
        prompts=2,
        n=4,
        completion_length=args.completion_length,
        steps=args.steps,
        packing=args.packing,
        beta=args.beta,
        max_epochs=args.max_epochs,
    )
    print(f"B4 {base}\n{load_note()}")
    rows, site_tables = [], {}
    for micro_batches in args.micro_batches:
        setup = base.but(micro_batches=micro_batches)
        sides = [("PPOTrainerVL", build_ours, "ours")]
        if not args.no_trl and setup.beta == 0 and setup.max_epochs == 1:
            sides.append(("TRL GRPOTrainer", build_trl, "TRL"))
        for name, build, own in sides:
            counter = count(build, setup)
            per_step = counter.per_step()
            trainer_update = per_step[("update", own)] + per_step[("update", "Trainer")]
            trainer_rollout = per_step[("rollout", own)] + per_step[("rollout", "Trainer")]
            others = {
                owner: sum(v for (_, o), v in per_step.items() if o == owner)
                for owner in ("model", "processor", "generate")
            }
            rows.append(
                [
                    name,
                    micro_batches,
                    trainer_update,
                    per_step[("update", own)],
                    per_step[("update", "Trainer")],
                    trainer_rollout,
                    others["model"],
                    others["processor"],
                    others["generate"],
                ]
            )
            if micro_batches == args.sites_for:
                site_tables[name] = counter.sites((own, "Trainer"))
    header = [
        "trainer",
        "micro-batches / step",
        "update: trainer reads / step",
        "of which the RL trainer's",
        "of which transformers.Trainer's",
        "rollout: trainer reads / step",
        "model code (any trainer)",
        "processor",
        "generate loop",
    ]
    print(markdown_table(header, rows))
    for name, sites in site_tables.items():
        print(f"\n{name}, {args.sites_for} micro-batches: the trainer's call sites (reads per optimizer step)")
        print(markdown_table(["phase", "owner", "read", "call site", "per step"], [list(row) for row in sites]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
