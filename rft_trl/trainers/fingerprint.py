"""
A fingerprint of a model's weights: what a checkpoint records of the KL reference it was trained against, so that a
resume against another reference (a skipped warm-up, another base model) is refused instead of training on.

The fingerprint is four float64 statistics per parameter (sum, sum of absolute values, sum of squares, and a sum
weighted by position, which a permutation changes), computed where the weights are (GPU or CPU) and small enough to
keep in a checkpoint's JSON state. Two fingerprints match when every statistic agrees to `FINGERPRINT_RTOL` of its
scale: the same weights agree to rounding (float64 sums in another reduction order), other weights differ by many
orders of magnitude more.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import nn
from torch.distributed.tensor import DTensor

# Relative agreement required of each statistic (scaled by the parameter's sum of absolute values or of squares).
FINGERPRINT_RTOL = 1e-9


@contextmanager
def _whole(parameter: nn.Parameter) -> Iterator[torch.Tensor]:
    """The parameter's full tensor; a ZeRO-3 or FSDP2 sharded one is gathered on every process while it is read."""
    if isinstance(parameter, DTensor):
        yield parameter.full_tensor()
        return
    if hasattr(parameter, "ds_id"):
        import deepspeed

        context = deepspeed.zero.GatheredParameters([parameter], modifier_rank=None)
    else:
        context = nullcontext()
    with context:
        yield parameter.data


@torch.no_grad()
def weights_fingerprint(module: nn.Module, skip: Callable[[str], bool] | None = None) -> dict[str, list[float]]:
    """
    The fingerprint of `module`'s parameters.

    Args:
        module (`nn.Module`): the model (under ZeRO-3 every process must call this: parameters are gathered).
        skip (`Callable[[str], bool]`, *optional*): parameter names to leave out (e.g. a LoRA adapter's).

    Returns:
        `dict[str, list[float]]`: per parameter name, `[sum, sum of |w|, sum of w^2, position-weighted sum]`.
    """
    fingerprint = {}
    for name, parameter in module.named_parameters():
        if skip is not None and skip(name):
            continue
        with _whole(parameter) as tensor:
            values = tensor.detach().flatten().double()  # [numel]
            weights = torch.linspace(-1.0, 1.0, values.numel(), dtype=torch.float64, device=values.device)
            stats = torch.stack([values.sum(), values.abs().sum(), values.square().sum(), (values * weights).sum()])
            fingerprint[name] = [float(x) for x in stats.cpu()]
    return fingerprint


def fingerprint_difference(saved: dict[str, list[float]], current: dict[str, list[float]]) -> str | None:
    """
    Where two fingerprints differ, in words, or `None` when they match.

    Args:
        saved (`dict[str, list[float]]`): the fingerprint a checkpoint recorded.
        current (`dict[str, list[float]]`): the fingerprint of the weights at hand.
    """
    missing, extra = sorted(set(saved) - set(current)), sorted(set(current) - set(saved))
    if missing or extra:
        return (
            f"other parameters: {len(missing)} recorded but absent (e.g. {missing[:2]}), {len(extra)} present but not "
            f"recorded (e.g. {extra[:2]})"
        )
    differing = []
    for name, (total, absolute, squares, weighted) in saved.items():
        now = current[name]
        scale = absolute + 1e-30
        error = max(
            abs(now[0] - total) / scale,
            abs(now[1] - absolute) / scale,
            abs(now[2] - squares) / (squares + 1e-30),
            abs(now[3] - weighted) / scale,
        )
        if not math.isfinite(error) or error > FINGERPRINT_RTOL:
            differing.append((error, name))
    if not differing:
        return None
    error, name = max(differing)
    return (
        f"{len(differing)} of {len(saved)} parameters differ, the most {name!r} (relative difference {error:.3g} in "
        f"its weight statistics, {FINGERPRINT_RTOL:g} allowed)"
    )
