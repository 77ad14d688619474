"""One rank of a multi-process PPOTrainerVL run on the tiny vision-language model, launched by the distributed tests.

Launched with `accelerate launch --config_file accelerate_configs/<config>.yaml tests/e2e/distributed/ppo_worker.py
--output_dir DIR [--fault KIND]`. Each rank writes to DIR:

- `rank<r>.safetensors`: the actor's parameters after training, for an exact comparison across ranks;
- `rank<r>.json`: the world size and backend, the dataset ids its reward function saw per call (in order), the rows
  its collator skipped, which parameters changed, digests of the parameters before training and after every
  optimizer step, the KL coefficient, and the Trainer's log history (rank 0 logs the metrics gathered over ranks).

Faults (`--fault`), each injected on `--fault_rank` only:

- `reward_error`: the reward function raises on the first rollout, so the reward scorer aborts that rank with a
  `RewardFailureError` while the other rank goes on into the next collective;
- `corrupt_image`: the first prompt of `--fault_rank`'s first rollout has an undecodable image, so that rank's
  collator skips it and the two ranks train on rollouts of different sizes;
- `nan_loss`: the update forwards of optimizer step `--fault_step` give NaN logits, hence a NaN loss, on that rank
  only.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

import torch
from accelerate import PartialState
from accelerate.utils import DistributedType
from datasets import Image
from safetensors.torch import save_file
from transformers import HfArgumentParser, TrainerCallback

from rft_trl import PPOTrainerVL, RFTConfig
from rft_trl.rewards.functions import completion_text
from rft_trl.testing import build_tiny_qwen2_vl, make_colour_dataset
from rft_trl.trainers.sampling import RolloutSampler

FAULTS = ("none", "reward_error", "corrupt_image", "nan_loss")
INJECTED_MESSAGE = "injected reward failure on rank"


@dataclass
class WorkerArguments:
    output_dir: str = field(metadata={"help": "Where each rank writes its parameters and record."})
    fault: str = field(default="none", metadata={"help": f"One of {', '.join(FAULTS)}."})
    fault_rank: int = field(default=1, metadata={"help": "The rank the fault is injected on."})
    fault_step: int = field(default=2, metadata={"help": "The optimizer step (1-based) `nan_loss` poisons."})
    max_steps: int = field(default=2, metadata={"help": "Optimizer steps."})
    num_rows: int = field(default=16, metadata={"help": "Dataset rows."})
    eval_rows: int = field(default=0, metadata={"help": "Eval rows to evaluate after training (0: none)."})

    def __post_init__(self):
        if self.fault not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}, got {self.fault!r}.")


def make_args(worker: WorkerArguments) -> RFTConfig:
    # The tiny settings of tests/integration/test_trainer.py: 2 prompts x 2 samples per rank and rollout, 2
    # micro-batches of 2.
    return RFTConfig(
        output_dir=worker.output_dir,
        n_samples_per_prompt=2,
        rollout_batch_size=2,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_steps=worker.max_steps,
        generate_max_len=4,
        learning_rate=1e-2,
        # An adaptive KL coefficient with a short horizon moves visibly each rollout: every rank must move it alike.
        init_kl_coef=0.05,
        kl_target=0.01,
        kl_horizon=10,
        bf16=False,
        gradient_checkpointing=False,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
        logging_steps=1,
    )


def make_dataset(worker: WorkerArguments, args: RFTConfig, num_processes: int):
    """The colour task with an `id` column; images stay encoded so that a row can carry corrupt bytes."""
    dataset = make_colour_dataset(worker.num_rows, seed=0).cast_column("image", Image(decode=False))
    dataset = dataset.add_column("id", list(range(worker.num_rows)))
    if worker.fault != "corrupt_image":
        return dataset
    # The trainer's sampler yields one block of `num_processes * rollout_batch_size` prompts per rollout, and the
    # dataloader hands the block's batch r to rank r: the first prompt of batch `fault_rank` goes to that rank.
    sampler = RolloutSampler(
        worker.num_rows,
        block_size=args.rollout_batch_size * num_processes,
        repeats=args.micro_steps_per_rollout,
        seed=args.seed,
    )
    bad_row = list(sampler)[worker.fault_rank * args.rollout_batch_size]

    def corrupt(row, index):
        if index == bad_row:
            row["image"] = {"bytes": b"these bytes are not an image", "path": None}
        return row

    return dataset.map(corrupt, with_indices=True)


def parameter_digest(model) -> str:
    """SHA-256 of a model's parameters, names and bytes in name order: equal digests mean bit-identical weights."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(param.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


class StepDigests(TrainerCallback):
    """Records the trained model's parameter digest after every optimizer step, to see which steps changed it."""

    def __init__(self):
        self.digests: list[str] = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.digests.append(parameter_digest(model))


def inject_nan_logits(trainer: PPOTrainerVL, step: int) -> None:
    """NaN logits in the update forwards of optimizer step `step` (1-based) on this rank: a NaN loss there."""

    def nan_logits(module, inputs, output):
        # Rollout forwards run without gradients; only the update's forward is poisoned.
        if torch.is_grad_enabled() and trainer.state.global_step + 1 == step:
            return output * float("nan")
        return output

    trainer.actor.hf_model.get_output_embeddings().register_forward_hook(nan_logits)


def main() -> None:
    (worker,) = HfArgumentParser(WorkerArguments).parse_args_into_dataclasses()
    args = make_args(worker)
    state = PartialState()
    rank = state.process_index
    seen_ids: list[list[int]] = []

    def length_reward(prompts, completions, id, **columns):
        """Shorter is better (dense, so every group has spread); records which prompts this rank scored."""
        if min(id) < 1000:
            seen_ids.append(list(id))
        if worker.fault == "reward_error" and rank == worker.fault_rank:
            raise RuntimeError(f"{INJECTED_MESSAGE} {rank}")
        return [1.0 / (1.0 + len(completion_text(c))) for c in completions]

    model, processor = build_tiny_qwen2_vl(seed=0)
    dataset = make_dataset(worker, args, state.num_processes)
    step_digests = StepDigests()
    trainer = PPOTrainerVL(
        model, [length_reward], args, train_dataset=dataset, processing_class=processor, callbacks=[step_digests]
    )
    if worker.fault == "nan_loss" and rank == worker.fault_rank:
        inject_nan_logits(trainer, worker.fault_step)
    before = {name: p.detach().clone() for name, p in trainer.actor.hf_model.named_parameters()}
    initial_digest = parameter_digest(trainer.model)
    trainer.train()

    eval_metrics = {}
    if worker.eval_rows:
        # Ids from 1000: their reward calls are not training rollouts and are not recorded in seen_ids.
        eval_set = make_colour_dataset(worker.eval_rows, seed=1)
        eval_set = eval_set.add_column("id", [1000 + i for i in range(worker.eval_rows)])
        eval_metrics = trainer.evaluate(eval_set)
    zero_stage = None
    if trainer.accelerator.distributed_type == DistributedType.DEEPSPEED:
        zero_stage = trainer.model_wrapped.zero_optimization_stage()
    after = {name: p.detach().contiguous().cpu() for name, p in trainer.actor.hf_model.named_parameters()}
    os.makedirs(worker.output_dir, exist_ok=True)
    save_file(after, os.path.join(worker.output_dir, f"rank{rank}.safetensors"))
    record = {
        "rank": rank,
        "world_size": state.num_processes,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "zero_stage": zero_stage,
        "seen_ids": seen_ids,
        "rows_skipped": trainer.collator.rows_skipped,
        "changed": [name for name in before if not torch.equal(before[name], after[name])],
        "initial_sha256": initial_digest,
        "step_sha256": step_digests.digests,
        "sha256": parameter_digest(trainer.model),
        "kl_coef": trainer.kl_ctl.value,
        "log_history": trainer.state.log_history,
        "eval": eval_metrics,
    }
    with open(os.path.join(worker.output_dir, f"rank{rank}.json"), "w") as f:
        json.dump(record, f)


if __name__ == "__main__":
    main()
