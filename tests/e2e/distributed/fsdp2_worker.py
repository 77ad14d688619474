"""One rank of the FSDP2 checks on the CPU, launched by tests/e2e/distributed/test_fsdp2.py on 2 gloo processes.

    python -m torch.distributed.run --nproc_per_node 2 tests/e2e/distributed/fsdp2_worker.py --output_dir DIR

Accelerate does not enable FSDP without an accelerator (RFTConfig refuses such a launch), but torch's FSDP2 runs on
gloo: this worker shards the tiny Qwen2.5-VL with `fully_shard` as Accelerate's `TRANSFORMER_BASED_WRAP` does (each
`_no_split_modules` block, then the root), and checks rft_trl's reads of sharded weights against an unsharded copy
that every rank keeps:

- one optimizer step on each rank's own batch: the sharded model's weights, as the rollout engine's weight sync sends
  them (`iter_checkpoint_weights`), against the copy stepped on both ranks' batches (FSDP averages the gradients);
- the same for the weights' fingerprint (`weights_fingerprint`, what checkpoints record of the KL reference), and for
  the model saved from its gathered full state dict (as the Trainer's `save_model` does under FSDP, within
  `original_classes` as `save_policy` writes) and loaded back with `from_pretrained`;
- a LoRA model sharded: the merged weights the sync sends, against the unsharded LoRA model's;
- greedy generation on each rank's own prompt, each rank stopping at a different step (transformers keeps the sharded
  model's ranks in lockstep), against the copy's generation.

Each rank writes `rank<r>.json` with the largest differences found, and a control: what reading the parameters as
they are (each rank's shards) would have sent.
"""

from __future__ import annotations

import json
import os
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForMultimodalLM, HfArgumentParser

from rft_trl.models.fsdp import original_classes
from rft_trl.rollout import iter_checkpoint_weights
from rft_trl.testing import build_tiny_model
from rft_trl.trainers.fingerprint import weights_fingerprint

BATCH, LENGTH, NEW_TOKENS, LR = 2, 8, 6, 0.5


@dataclass
class WorkerArguments:
    output_dir: str = field(metadata={"help": "Where each rank writes its record."})


def shard(model: torch.nn.Module, mesh) -> torch.nn.Module:
    """`fully_shard` each of the model's `_no_split_modules` blocks, then the whole model (Accelerate's wrapping)."""
    block_names = set(model._no_split_modules)
    for module in list(model.modules())[1:]:
        if type(module).__name__ in block_names:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def max_difference(sent: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> float:
    """The largest absolute difference between two weight dicts; infinite when names or shapes differ."""
    if sent.keys() != expected.keys():
        return float("inf")
    if any(sent[name].shape != expected[name].shape for name in expected):
        return float("inf")
    return max((sent[name].float() - expected[name].float()).abs().max().item() for name in expected)


def batch_of(rank: int, vocab: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(100 + rank)
    return torch.randint(0, vocab, (BATCH, LENGTH), generator=generator)  # (BATCH, LENGTH)


def step_on(model: torch.nn.Module, batches: list[torch.Tensor]) -> None:
    """One SGD step of an unsharded model on the mean of the batches' losses."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    (sum(model(input_ids=ids, labels=ids).loss for ids in batches) / len(batches)).backward()
    optimizer.step()
    model.eval()


def save(model: torch.nn.Module, output_dir: str, restore_classes: bool) -> str:
    """
    `save_pretrained` of the sharded model with its gathered full state dict (as the Trainer's `save_model` under
    FSDP), on rank 0; `restore_classes`: within `original_classes`, as rft_trl saves. Returns `output_dir`.
    """
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() == 0:
        with original_classes(model) if restore_classes else nullcontext():
            model.save_pretrained(output_dir, state_dict=state)
    dist.barrier()
    return output_dir


def saved_names(output_dir: str) -> list[str]:
    return sorted(load_file(os.path.join(output_dir, "model.safetensors")))


def check_training_step(mesh, rank: int, world: int, output_dir: str) -> dict:
    model, _ = build_tiny_model("qwen2_5_vl")
    model.train()
    vocab = model.config.get_text_config().vocab_size
    shard(model, mesh)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    ids = batch_of(rank, vocab)
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    model.eval()
    # The copy: the mean of every rank's loss, as FSDP averages the ranks' gradients. The control: this rank's alone.
    copy, own = build_tiny_model("qwen2_5_vl")[0], build_tiny_model("qwen2_5_vl")[0]
    step_on(copy, [batch_of(r, vocab) for r in range(world)])
    step_on(own, [ids])

    initial = dict(iter_checkpoint_weights(build_tiny_model("qwen2_5_vl")[0]))
    expected = dict(iter_checkpoint_weights(copy))
    sent = dict(iter_checkpoint_weights(model))
    local_shards = {name: p.detach().to_local() for name, p in model.named_parameters()}
    fingerprint, expected_fingerprint = weights_fingerprint(model), weights_fingerprint(copy)
    saved = save(model, os.path.join(output_dir, "saved"), restore_classes=True)
    unrestored = save(model, os.path.join(output_dir, "saved_unrestored"), restore_classes=False)
    if rank == 0:
        copy.save_pretrained(os.path.join(output_dir, "copy"))
    dist.barrier()
    reloaded = AutoModelForMultimodalLM.from_pretrained(saved).state_dict()
    return {
        "step_moved_weights": max_difference(expected, initial),
        "sync_after_step": max_difference(sent, expected),
        "control_own_batch_only": max_difference(sent, dict(iter_checkpoint_weights(own))),
        "control_local_shards": max_difference(local_shards, dict(copy.named_parameters())),
        "saved_reloaded": max_difference(reloaded, copy.state_dict()),
        "saved_names_as_unsharded": saved_names(saved) == saved_names(os.path.join(output_dir, "copy")),
        "control_saved_names_without_original_classes": saved_names(unrestored)
        == saved_names(os.path.join(output_dir, "copy")),
        "fingerprint_after_step": max(
            abs(a - b) / max(abs(b), 1e-12)
            for name in expected_fingerprint
            for a, b in zip(fingerprint[name], expected_fingerprint[name], strict=True)
        ),
        "fingerprint_names_equal": fingerprint.keys() == expected_fingerprint.keys(),
    }


def check_lora(mesh) -> dict:
    # init_lora_weights=False: B is random, so the merged delta is not zero and the check sees it.
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    torch.manual_seed(0)
    model = get_peft_model(build_tiny_model("qwen2_5_vl")[0], config)
    torch.manual_seed(0)
    copy = get_peft_model(build_tiny_model("qwen2_5_vl")[0], config)
    expected = dict(iter_checkpoint_weights(copy))
    base = dict(iter_checkpoint_weights(build_tiny_model("qwen2_5_vl")[0]))
    shard(model.get_base_model(), mesh)
    sent = dict(iter_checkpoint_weights(model))
    return {"lora_delta": max_difference(expected, base), "lora_sync": max_difference(sent, expected)}


def check_generation(mesh, rank: int) -> dict:
    model, _ = build_tiny_model("qwen2_5_vl")
    copy, _ = build_tiny_model("qwen2_5_vl")
    model.eval(), copy.eval()
    vocab = model.config.get_text_config().vocab_size
    prompt = batch_of(rank, vocab)[:1, :4]
    kwargs = {"max_new_tokens": NEW_TOKENS, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        free = copy.generate(prompt, **kwargs)[0, 4:]
    # Rank 0 stops at its 2nd new token (made its EOS), rank 1 runs to NEW_TOKENS: the sharded ranks must still make
    # the same forwards, each gathering shards from the other.
    eos = int(free[1]) if rank == 0 else None
    if eos is not None and int(free[0]) == eos:
        eos = None  # a repeated first token would stop it at once: then rank 0 runs to the end too
    kwargs["eos_token_id"] = eos
    with torch.no_grad():
        expected = copy.generate(prompt, **kwargs)[0, 4:].tolist()
        shard(model, mesh)
        generated = model.generate(prompt, **kwargs)[0, 4:].tolist()
    return {"generated": generated, "expected_generation": expected}


def main() -> None:
    (worker,) = HfArgumentParser(WorkerArguments).parse_args_into_dataclasses()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    record = {"rank": rank, "world_size": world}
    record.update(check_training_step(mesh, rank, world, worker.output_dir))
    record.update(check_lora(mesh))
    record.update(check_generation(mesh, rank))
    os.makedirs(worker.output_dir, exist_ok=True)
    with open(os.path.join(worker.output_dir, f"rank{rank}.json"), "w") as f:
        json.dump(record, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
