"""Each prompt's images and videos through the encoder once per rollout: transformers' `mm_encoder_outputs`.

A rollout gives every prompt `n` samples, and the same prompt's media reach the model in every pass of the rollout:
generation (`n` times, once per sample), the rollout policy's and the reference's log-probs (`n` times each) and the
update (`n` times per epoch). [`MediaEncodings`] encodes a prompt's media once, with the model's own
`get_image_features` / `get_video_features` on that sample's media fields, and hands each batch the encoder outputs
of its samples laid end to end as the model's `mm_encoder_outputs` input, in place of the raw pixels. Transformers'
models take those outputs in place of encoding the pixels themselves; positions, placeholders and grids stay with the
model (the grid fields are still passed). The outputs are reused for as long as the encoder's weights cannot change:
the no-grad passes of a rollout, and its update while the encoder is frozen; a training encoder is run once per
prompt in each update batch, with gradients.

A sample is recognised by the identity of its media tensors: the collator processes each prompt's media once, and
the `n` samples of a prompt share those tensors through every pass (`repeat_multimodal_inputs`, the replay buffer's
items). The cache holds the tensors it keyed, so an identity cannot be reused by another tensor while it is cached,
and it is cleared at every rollout.

Used where it is exact: the model types of `ENCODER_OUTPUT_MODEL_TYPES`, checked against each model's own forward in
`tests/integration/test_model_matrix.py`; elsewhere (another model type, a model whose forward takes no
`mm_encoder_outputs` such as Qwen2-Audio, DeepSpeed ZeRO-3, whose ranks must make the same module calls) it steps aside
and says why once.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext

import torch
from torch import nn
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from transformers.utils import ModelOutput

from ..data.multimodal import concat_multimodal_inputs
from .fsdp import fsdp_enabled
from .utils import unwrap_model

__all__ = ["ENCODER_OUTPUT_MODEL_TYPES", "MediaEncodings"]

logger = logging.getLogger(__name__)

# Model types whose forward, given `mm_encoder_outputs` concatenated sample by sample, equals their own forward on the
# pixels (tests/integration/test_model_matrix.py).
ENCODER_OUTPUT_MODEL_TYPES = frozenset(
    {
        "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen2_5_omni_thinker", "qwen3_omni_moe_thinker",
        "glm4v", "glm4v_moe", "gemma3", "llava", "llava_onevision", "internvl", "idefics3", "smolvlm", "mistral3",
        "qwen3_5", "qwen3_5_moe", "lfm2_vl",
        "gemma4", "glm46v", "aya_vision", "llama4", "kimi_k25", "ernie4_5_vl_moe", "paligemma",
    }
)  # fmt: skip
MODALITIES = ("image", "video")


class MediaEncodings:
    """
    A model's encoder outputs per unique sample media, for one rollout's passes.

    - **No-grad passes** (generation, the rollout policy's log-probs, the reference's): each unique sample's media are
      encoded once and the output is reused until [`clear`].
    - **Passes with gradients** (the update): while the encoder is frozen (no parameter its calls touch requires a
      gradient, and none of the modules they call drops out), the cached outputs serve as in a no-grad pass, since no
      gradient could reach the encoder and its outputs cannot change; otherwise each unique sample's media are
      encoded once per batch, with gradients (the samples of one prompt share that output, and their gradients add
      up in it), and nothing is kept.

    Args:
        model (`nn.Module`):
            The model (a transformers model, or a PEFT model around one).

    Attributes:
        reason (`str` or `None`): why it steps aside (then [`model_inputs`] only concatenates), `None` when in use.
        encoder_calls (`int`): how many times an encoder ran (one per unique sample media and modality), in total.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.encoder_calls = 0
        self._entries: dict[tuple, tuple[tuple[torch.Tensor, ...], ModelOutput]] = {}
        # Per modality, the encoder (the model's own `get_<modality>_features`) and its parameter names.
        self._encoders: dict[str, tuple[Callable, tuple[str, ...]]] = {}
        self._owner: nn.Module | None = None
        # Per modality, the parameters its encoder's first call touched and whether a module it called drops out.
        self._parameters: dict[str, list[nn.Parameter]] = {}
        self._dropout: dict[str, bool] = {}
        base = unwrap_model(model)
        model_type = getattr(getattr(base, "config", None), "model_type", None)
        forward = inspect.signature(base.forward).parameters if hasattr(base, "forward") else {}
        if model_type not in ENCODER_OUTPUT_MODEL_TYPES:
            self.reason = f"model type {model_type!r} is not among those verified (ENCODER_OUTPUT_MODEL_TYPES)"
        elif "mm_encoder_outputs" not in forward:
            self.reason = f"{type(base).__name__}.forward takes no mm_encoder_outputs"
        elif is_deepspeed_zero3_enabled():
            self.reason = "under DeepSpeed ZeRO-3 every rank must run the same encoder calls"
        elif fsdp_enabled():
            self.reason = "under FSDP every rank must run the same encoder calls (each gathers its shards)"
        else:
            self.reason = None
            self._owner = base.base_model
            for modality in MODALITIES:
                encoder = getattr(self._owner, f"get_{modality}_features", None)
                if encoder is not None:
                    names = [name for name in inspect.signature(encoder).parameters if name != "kwargs"]
                    self._encoders[modality] = (encoder, tuple(names))
        if self.reason is not None:
            logger.info("Media are encoded in every pass (no encoder-output cache): %s.", self.reason)

    @property
    def frozen(self) -> bool:
        """
        Whether the encoders' outputs cannot change: no parameter their calls touched requires a gradient and no
        module they called drops out (`False` before their first call).
        """
        if not self._parameters or any(self._dropout.values()):
            return False
        return not any(p.requires_grad for parameters in self._parameters.values() for p in parameters)

    def clear(self) -> None:
        """Forget every encoder output (at the start of a rollout: new media, and the weights may have changed)."""
        self._entries.clear()

    def model_inputs(self, per_sample: Sequence[Mapping[str, torch.Tensor]], device: torch.device) -> dict:
        """
        The media keyword arguments of a batch of samples on `device`: [`concat_multimodal_inputs`] of their media
        fields, with each modality's raw pixels replaced by `mm_encoder_outputs`, each unique sample's encoder output
        laid end to end in batch order (cached or not, see the class).

        Args:
            per_sample (`Sequence[Mapping[str, torch.Tensor]]`):
                The batch's samples' media dicts, in batch order.
            device (`torch.device`):
                Where the model runs.

        Returns:
            `dict`: keyword arguments for the model (or `Actor.forward` / `Actor.generate`).
        """
        outputs, replaced = {}, set()
        if self.reason is None:
            cached = not torch.is_grad_enabled() or self.frozen
            entries = self._entries if cached else {}  # training encoder: shared within this batch only
            for modality, (encoder, names) in self._encoders.items():
                raw = names[0]  # the pixels: the encoder's first parameter (`pixel_values`, `pixel_values_videos`)
                pieces = [
                    self._encode(modality, encoder, names, sample, device, entries)
                    for sample in per_sample
                    if sample.get(raw) is not None and sample[raw].numel() > 0
                ]
                if pieces:
                    outputs[modality] = _concatenate(pieces)
                    replaced.add(raw)
        # The replaced pixels are neither concatenated nor moved to the device.
        kept = [{name: value for name, value in sample.items() if name not in replaced} for sample in per_sample]
        batch = {name: value.to(device) for name, value in concat_multimodal_inputs(kept).items()}
        if outputs:
            batch["mm_encoder_outputs"] = outputs
        return batch

    def _encode(
        self,
        modality: str,
        encoder: Callable,
        names: tuple[str, ...],
        sample: Mapping,
        device: torch.device,
        entries: dict,
    ) -> ModelOutput:
        fields = tuple(sample[name] for name in names if name in sample)
        key = (modality, *(id(field) for field in fields))
        entry = entries.get(key)
        if entry is not None and all(a is b for a, b in zip(entry[0], fields)):
            return entry[1]
        # Media content in the dtype of the tower that encodes it, as `ModelInputs.collect` gives the model's forward
        # (float32 pixels meet Kimi-K2.5's bfloat16 patch embedding otherwise); integer grids and 1-D fields as given.
        dtype = self._tower_dtype(modality)
        arguments = {
            name: sample[name].to(device, dtype)
            if sample[name].is_floating_point() and sample[name].dim() > 1
            else sample[name].to(device)
            for name in names
            if name in sample
        }
        with torch.no_grad() if entries is self._entries else nullcontext():
            if modality in self._parameters:
                output = encoder(**arguments, return_dict=True)
            else:
                output = self._first_call(modality, self._owner, encoder, arguments)
        self.encoder_calls += 1
        entries[key] = (fields, output)
        return output

    def _tower_dtype(self, modality: str) -> torch.dtype:
        """The dtype of the tower transformers names for `modality` (`get_encoder`), else of the model."""
        base = unwrap_model(self.model)
        tower = base.get_encoder(modality)
        module = base if tower is None or tower is base else tower
        return next(p.dtype for p in module.parameters() if p.is_floating_point())

    def _first_call(self, modality: str, owner: nn.Module, encoder, arguments: dict) -> ModelOutput:
        """
        Call the encoder, noting the parameters it touched (those of every module it calls and the owner's own) and
        whether any module it calls drops out (a `Dropout` module, or an attention's `dropout`/`attention_dropout`
        rate above 0).
        """
        touched = [owner]
        hook = nn.modules.module.register_module_forward_hook(lambda module, args, output: touched.append(module))
        try:
            output = encoder(**arguments, return_dict=True)
        finally:
            hook.remove()
        parameters = {id(p): p for module in touched for p in module.parameters(recurse=False)}
        self._parameters[modality] = list(parameters.values())
        self._dropout[modality] = any(_drops_out(module) for module in touched)
        return output


def _drops_out(module: nn.Module) -> bool:
    if isinstance(module, nn.Dropout):
        return module.p > 0
    rates = (getattr(module, name, None) for name in ("dropout", "attention_dropout"))
    return any(isinstance(rate, float) and rate > 0 for rate in rates)


def _concatenate(outputs: list[ModelOutput]) -> ModelOutput:
    """
    Encoder outputs of samples laid end to end, as the encoder gives them for the samples' concatenated media. Only
    what a forward reads of them is carried, the two fields transformers' own generation expands per sample
    (`GenerationMixin._expand_multimodal_outputs`): `pooler_output` (a tensor along its first dimension, or one
    tensor per item) and `deepstack_features` (per layer, the same way).
    """
    merged = {"pooler_output": _join([output.pooler_output for output in outputs])}
    deepstack = [getattr(output, "deepstack_features", None) for output in outputs]
    if deepstack[0] is not None:
        merged["deepstack_features"] = [
            _join([value[layer] for value in deepstack]) for layer in range(len(deepstack[0]))
        ]
    return type(outputs[0])(**merged)


def _join(values: list):
    if isinstance(values[0], torch.Tensor):
        return torch.cat(values)
    return [item for value in values for item in value]
