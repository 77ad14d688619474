"""
Benchmark B1: CPU time per optimizer step of `PPOTrainerVL` (and of TRL's `GRPOTrainer`, the reference) over a
minimal generate + forward + backward + AdamW loop doing the same work on identical token counts.

    PYTHONPATH=. python bench/b1_step_overhead.py                  # ~30 s: tiny Qwen2.5-VL, 7 repetitions
    PYTHONPATH=. python bench/b1_step_overhead.py --task pitch     # tiny Qwen2-Audio (no TRL: it has no audio path)
    PYTHONPATH=. python bench/b1_step_overhead.py --packing --micro-batches 2

The minimal loop is what any GRPO step must do, written out with nothing else: one processor call on the step's
unique prompts, their tensors repeated `n` times, one `generate` of exactly `L` tokens, decoding, the reward, the
`r - mean_group` advantages, one forward over prompt + completion, log-softmax of the completion tokens, the
on-policy token-mean loss, backward, gradient clipping at 1.0 and an AdamW step. It trains the same parameters as the
trainers (vision/audio tower frozen). The trainers run with the settings of `bench/common.py` (one rollout per step,
completion length forced on every side, float32, logging every step). Overhead = trainer CPU seconds per step /
minimal-loop CPU seconds per step; the runs are interleaved (ours, TRL, minimal, ours, ...), the first step of each run
is dropped, and the median over repetitions of the per-repetition ratio is reported with its range.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from common import (
    TASK_MODELS,
    Setup,
    build_ours,
    build_trl,
    completion_text,
    dataset_for,
    interleaved,
    length_reward,
    load_note,
    markdown_table,
    median_of,
    paired_ratio,
    quiet,
    timed_run,
)
from torch import nn

from rft_trl.models.utils import freeze_non_language_parameters
from rft_trl.testing import build_tiny_model

MEDIA_COLUMNS = {"colour": "image", "pitch": "audio", "text": None}


class MinimalLoop:
    """The bare GRPO step on the tiny model of `setup.task`; `run()` returns its (wall, cpu) step times."""

    def __init__(self, setup: Setup):
        self.setup = setup
        self.model, self.processor = build_tiny_model(TASK_MODELS[setup.task], seed=setup.seed)
        freeze_non_language_parameters(self.model)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-5, weight_decay=0.0)
        self.dataset = dataset_for(setup)
        self.tokenizer = self.processor.tokenizer if setup.task != "text" else self.processor
        # A sampled media placeholder would break the next forward (the trainers suppress them too).
        config = self.model.config
        placeholder = {"colour": "image_token_id", "pitch": "audio_token_index"}.get(setup.task)
        self.suppress = [config.to_dict()[placeholder]] if placeholder else []
        self.generator = torch.Generator().manual_seed(setup.seed)

    def _encode(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        """One processor call for the unique prompts, then every tensor repeated for the `n` samples of a prompt."""
        n = self.setup.n
        template = self.processor.apply_chat_template
        texts = [template(r["prompt"], add_generation_prompt=True, tokenize=False) for r in rows]
        media = MEDIA_COLUMNS[self.setup.task]
        if media == "image":
            encoded = self.processor(text=texts, images=[r["image"] for r in rows], return_tensors="pt", padding=True)
        elif media == "audio":
            # Per prompt: a batched call would pad the features to the longest clip rather than to the extractor's
            # window, and the audio-token count would no longer match. The task's prompts have equal lengths.
            parts = [
                self.processor(text=[t], audio=[r["audio"]["array"]], sampling_rate=16000, return_tensors="pt")
                for t, r in zip(texts, rows)
            ]
            encoded = {name: torch.cat([part[name] for part in parts]) for name in parts[0]}
        else:
            encoded = self.processor(texts, return_tensors="pt", padding=True, padding_side="left")
        repeated = {}
        for name, value in encoded.items():
            if name == "pixel_values":  # [prompts * patches, D], equal-size images: repeat each image's block
                value = value.view(len(rows), -1, value.shape[-1]).repeat_interleave(n, 0).flatten(0, 1)
            else:
                value = value.repeat_interleave(n, 0)
            repeated[name] = value
        return repeated

    def step(self, rows: list[dict]) -> None:
        setup = self.setup
        inputs = self._encode(rows)
        prompt_len = inputs["input_ids"].shape[1]
        self.model.eval()
        with torch.no_grad():
            sequences = self.model.generate(
                **inputs,
                do_sample=True,
                max_new_tokens=setup.completion_length,
                min_new_tokens=setup.completion_length,
                suppress_tokens=self.suppress or None,
                pad_token_id=self.tokenizer.pad_token_id,
            )  # [N, P + L]
        completions = sequences[:, prompt_len:]  # [N, L]
        texts = self.tokenizer.batch_decode(completions, skip_special_tokens=True)
        rewards = torch.tensor(length_reward(None, [completion_text(t) for t in texts])).view(-1, setup.n)
        advantages = (rewards - rewards.mean(-1, keepdim=True)).view(-1, 1)  # [N, 1]
        self.model.train()
        forward = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
        forward["attention_mask"] = nn.functional.pad(inputs["attention_mask"], (0, completions.shape[1]), value=1)
        if "mm_token_type_ids" in inputs:
            forward["mm_token_type_ids"] = nn.functional.pad(inputs["mm_token_type_ids"], (0, completions.shape[1]))
        logits = self.model(input_ids=sequences, **forward).logits[:, prompt_len - 1 : -1]  # [N, L, V]
        log_probs = torch.log_softmax(logits.float(), -1).gather(-1, completions[..., None]).squeeze(-1)  # [N, L]
        loss = -(advantages * torch.exp(log_probs - log_probs.detach())).mean()
        loss.backward()
        nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def run(self) -> tuple[list[float], list[float]]:
        order = torch.randperm(len(self.dataset), generator=self.generator).tolist()
        wall, cpu = [], []
        for step in range(self.setup.steps):
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            rows = [self.dataset[i] for i in order[step * self.setup.prompts : (step + 1) * self.setup.prompts]]
            self.step(rows)
            wall.append(time.perf_counter() - start_wall)
            cpu.append(time.process_time() - start_cpu)
        return wall[1:], cpu[1:]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="colour", choices=sorted(MEDIA_COLUMNS))
    parser.add_argument("--repetitions", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per run (the first is a warm-up)")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--completion-length", type=int, default=32)
    parser.add_argument("--micro-batches", type=int, default=1)
    parser.add_argument("--packing", action="store_true")
    parser.add_argument("--no-trl", action="store_true", help="skip the TRL reference")
    args = parser.parse_args(argv)
    quiet()
    setup = Setup(
        task=args.task,
        prompts=args.prompts,
        n=args.n,
        completion_length=args.completion_length,
        micro_batches=args.micro_batches,
        steps=args.steps,
        packing=args.packing,
    )
    print(f"B1 {setup}\n{load_note()}")
    sides = {"ours": lambda: timed_run(build_ours, setup)}
    if args.task == "colour" and not args.no_trl:
        sides["trl"] = lambda: timed_run(build_trl, setup)
    sides["minimal"] = lambda: MinimalLoop(setup).run()
    results = interleaved(sides, args.repetitions)
    rows = []
    for name in sides:
        if name == "minimal":
            continue
        for clock in ("cpu", "wall"):
            ratio, low, high = paired_ratio(results[name][clock], results["minimal"][clock])
            rows.append(
                [
                    name,
                    clock,
                    median_of(results[name][clock]),
                    median_of(results["minimal"][clock]),
                    ratio,
                    f"{low:.3f}-{high:.3f}",
                ]
            )
    print(markdown_table(["trainer", "clock", "trainer s/step", "minimal s/step", "overhead (median)", "range"], rows))
    print(load_note())
    return 0


if __name__ == "__main__":
    sys.exit(main())
