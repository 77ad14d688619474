"""The policy's weights under the names of its checkpoint, as a rollout engine loads them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext

import torch
from torch import nn

from ..models.fsdp import full_tensor, original_classes


def _gathered(parameters: list[nn.Parameter]):
    """
    Under DeepSpeed ZeRO-3, gather a module's own partitioned parameters for reading (those not gathered already, e.g.
    by an enclosing `unwrap_model_for_generation`); otherwise do nothing.
    """
    partitioned = [parameter for parameter in parameters if hasattr(parameter, "ds_id")]
    if not partitioned:
        return nullcontext()
    import deepspeed
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    missing = [parameter for parameter in partitioned if parameter.ds_status == ZeroParamStatus.NOT_AVAILABLE]
    return deepspeed.zero.GatheredParameters(missing, modifier_rank=None) if missing else nullcontext()


def _checkpoint_name(name: str) -> str | None:
    """A PEFT-wrapped parameter's name in the base model's checkpoint; `None` for adapter-only parameters."""
    parts = iter(name.split("."))
    cleaned = []
    for part in parts:
        if part.startswith("lora_") or part == "original_module":
            return None
        if part == "modules_to_save":
            next(parts, None)  # the adapter's name follows
        elif part != "base_layer":
            cleaned.append(part)
    return ".".join(cleaned)


def iter_checkpoint_weights(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """
    Yield the model's parameters under their checkpoint names, one module at a time.

    - A PEFT model yields its base model's parameters with every active LoRA adapter merged in (computed aside,
      `base + delta`, the model itself untouched), and the active copy of each `modules_to_save` module; adapter
      parameters are not yielded. Other PEFT tuners are refused.
    - Under DeepSpeed ZeRO-3, each module's parameters are gathered while it is read and released after; under FSDP2,
      each parameter's shards are gathered into a full tensor as it is read: the whole model is never gathered at
      once, and every rank must iterate alike. Every yielded tensor is a detached copy.

    Names (and, for families whose loading fuses or splits tensors, shapes) are those `save_pretrained` writes:
    transformers' reversal of its loading conversions is applied module by module. Tied parameters are yielded once,
    under the first name (`named_parameters` order).
    """
    base = model
    peft = False
    if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):
        from peft.tuners.lora import LoraLayer

        tuners = {type(config).__name__ for config in model.peft_config.values()}
        if tuners - {"LoraConfig"}:
            raise ValueError(
                f"Rollout engine weight sync merges LoRA adapters; this model has {sorted(tuners)} adapters. Use a "
                "LoRA adapter, or train without PEFT."
            )
        base = model.get_base_model()
        peft = True
    to_checkpoint = _checkpoint_layout(base)
    seen: set[int] = set()
    for module_name, module in base.named_modules():
        own = [(name, p) for name, p in module.named_parameters(recurse=False) if id(p) not in seen]
        if not own:
            continue
        with _gathered([p for _, p in own]):
            delta = None
            if peft and module_name.endswith("base_layer"):
                parent = base.get_submodule(module_name.rsplit(".", 1)[0])
                if isinstance(parent, LoraLayer) and not parent.merged:
                    delta = _lora_delta(parent)
            weights = {}
            for name, parameter in own:
                seen.add(id(parameter))
                full = f"{module_name}.{name}" if module_name else name
                if peft:
                    full = _checkpoint_name(full)
                    if full is None:
                        continue
                value = full_tensor(parameter.detach())
                if delta is not None and name == "weight":
                    value = value + delta.to(value.dtype)
                weights[full] = value.clone()
            yield from to_checkpoint(weights).items()


def _checkpoint_layout(model: nn.Module):
    """
    How parameters are renamed (and split or fused) from the model's runtime layout to the layout `save_pretrained`
    writes: transformers' own reversal of its loading conversions. A family whose modules moved (Qwen2-Audio's
    `model.language_model.*` saved as `language_model.model.*`) is then named as its checkpoints are, which is what
    an engine built for that family's checkpoints loads.

    The conversions are collected once per sync, here: for a model not loaded by `from_pretrained`,
    `revert_weight_conversion` collects them on each call, a walk over all modules, which, called module by module,
    made one sync of a Qwen2.5-VL-3B-sized layout (825 parameters, tiny widths) take 1.2 s on the CPU instead of 0.3 s.
    """
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        return lambda weights: weights
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import PrefixChange, revert_weight_conversion

    recorded = getattr(model, "_weight_conversions", None)  # set by from_pretrained
    conversions = recorded
    if conversions is None:
        # What `revert_weight_conversion` collects for a model built in memory: the family's mapping without its
        # legacy renamings and prefix changes. It is attached to the model for the duration of each call.
        with original_classes(model):  # looked up by class name, which FSDP2 changes
            conversions = [
                conversion
                for conversion in get_model_conversion_mapping(model, add_legacy=False)
                if not isinstance(conversion, PrefixChange)
            ]
    if not conversions:
        return lambda weights: weights  # nothing to revert: the runtime names are the checkpoint's
    if recorded is not None:
        return lambda weights: revert_weight_conversion(model, weights)

    def revert(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        model._weight_conversions = conversions
        try:
            return revert_weight_conversion(model, weights)
        finally:
            del model._weight_conversions

    return revert


def _lora_delta(layer) -> torch.Tensor | None:
    """
    The sum of the active adapters' weight deltas of a LoRA layer, its adapters gathered under ZeRO-3; under FSDP2 the
    delta of the sharded adapters is itself sharded, and gathered here.
    """
    adapters = [name for name in layer.active_adapters if name in layer.lora_A]
    if not adapters:
        return None
    parameters = [p for name in adapters for p in (*layer.lora_A[name].parameters(), *layer.lora_B[name].parameters())]
    with _gathered(parameters), torch.no_grad():
        return full_tensor(sum(layer.get_delta_weight(name) for name in adapters))
