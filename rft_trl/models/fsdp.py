"""
What the model code needs to know about PyTorch FSDP2 (`fully_shard`, launched through Accelerate's `fsdp_version: 2`).

Under FSDP2 each rank holds a shard of every parameter (a `DTensor`) outside the forward of the module that owns it;
inside that forward the parameter is whole. Anything that reads a parameter outside its module's forward (weight sync
to a rollout engine, fingerprints, a fused LM head) must gather it, on every rank alike: gathering is a collective.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

__all__ = ["fsdp_enabled", "full_tensor", "original_classes"]


def fsdp_enabled() -> bool:
    """
    Whether this process was launched for FSDP (`accelerate launch` with `distributed_type: FSDP`).

    Read from the launcher's environment, as transformers reads the DeepSpeed config: the models are built before the
    Trainer creates its `Accelerator`. The trainer checks afterwards that the Accelerator agrees
    ([`~rft_trl.trainers.fsdp.check_fsdp`]).
    """
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """
    The whole value of `tensor`: an FSDP2 shard (`DTensor`) is gathered from every rank, which each rank must then call
    in the same order; any other tensor (including a parameter FSDP2 holds unsharded at the moment) is returned as is.
    """
    if isinstance(tensor, DTensor):
        return tensor.full_tensor()
    return tensor


@contextmanager
def original_classes(model: nn.Module) -> Iterator[nn.Module]:
    """
    For the duration of the block, every FSDP2-sharded module of `model` has its class from before `fully_shard`.

    `fully_shard` gives each module it shards a class of its own (`FSDPQwen2_5_VLForConditionalGeneration`), and
    transformers looks a model's checkpoint conversions up by class name: a sharded model built in memory would be
    saved, and its weights synced, under its runtime names instead of its checkpoint's. Nothing may run the model's
    forward inside the block (FSDP's own methods are out of reach there).
    """
    swapped = []
    for module in model.modules():
        if isinstance(module, FSDPModule):
            sharded = type(module)
            module.__class__ = next(cls for cls in sharded.__mro__ if not issubclass(cls, FSDPModule))
            swapped.append((module, sharded))
    try:
        yield model
    finally:
        for module, sharded in swapped:
            module.__class__ = sharded
