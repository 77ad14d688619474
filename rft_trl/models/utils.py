"""Loading, LoRA, freezing and forward-input building shared by the actor, the critic and the reward model.

The three model wrappers differ only in their head (language-model head, value head, score head); how a checkpoint
is loaded, which layers LoRA adapts, which tower is frozen and how positions are numbered for padded and packed
batches is decided here, once.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping

import torch
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMultimodalLM,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.integrations.deepspeed import HfDeepSpeedConfig, is_deepspeed_available
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING,
    MODEL_FOR_MULTIMODAL_LM_MAPPING,
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING,
)
from transformers.utils import is_flash_attn_2_available

from ..core import compute_approx_kl as compute_approx_kl  # re-exported: the seed's lightrft.models.utils name
from ..core import masked_mean as masked_mean  # re-exported: the seed's lightrft.models.utils name
from ..data.multimodal import select_fields
from .packing import (
    mm_token_type_ids_from_sequences,
    packed_position_ids,
    packed_seq_lens_from_sample_ids,
    pad_packed,
    position_ids_from_attention_mask,
    unpack_values,
)

logger = logging.getLogger(__name__)

# Models whose rotary embedding is M-RoPE: vision tokens get (temporal, height, width) positions computed by the
# model's `get_rope_index`, text tokens get the same index on all three axes. Listed explicitly (and tested) rather
# than detected, because a wrong guess silently scrambles the image layout.
MROPE_MODEL_TYPES = frozenset({"qwen2_vl", "qwen2_5_vl"})

# Config fields (top level) that hold the ids of media placeholder and boundary tokens. A completion that contains one
# of them breaks the next forward ("Image features and image tokens do not match"), so generation suppresses them.
MEDIA_TOKEN_CONFIG_FIELDS = (
    "image_token_id",
    "image_token_index",
    "video_token_id",
    "video_token_index",
    "vision_start_token_id",
    "vision_end_token_id",
    "audio_token_id",
    "audio_token_index",
    "audio_start_token_id",
    "audio_end_token_id",
)

MODALITIES = ("text", "vision", "audio")


def infer_modality(config: PretrainedConfig) -> str:
    """
    The modality of a model, from its config class: `"vision"` for image-text-to-text models, `"audio"` for other
    multimodal language models, `"text"` otherwise.

    Args:
        config (`PretrainedConfig`):
            The model's config.

    Returns:
        `str`: one of `"text"`, `"vision"`, `"audio"`.
    """
    if type(config) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING:
        return "vision"
    if type(config) in MODEL_FOR_MULTIMODAL_LM_MAPPING:
        return "audio"
    return "text"


def resolve_attn_implementation(use_flash_attention_2: bool) -> str:
    """
    `"flash_attention_2"` when asked for and importable, else `"sdpa"` (with a warning when it was asked for).
    """
    if not use_flash_attention_2:
        return "sdpa"
    if is_flash_attn_2_available():
        return "flash_attention_2"
    logger.warning(
        "use_flash_attention_2=True but flash-attn is not installed (or no CUDA device is visible); using sdpa "
        "attention instead. Install it with `pip install rft_trl[flash-attn]`."
    )
    return "sdpa"


def load_pretrained_model(
    pretrain_or_model: str | nn.Module,
    head: str = "causal_lm",
    use_flash_attention_2: bool = False,
    bf16: bool = False,
    ds_config: dict | None = None,
    device_map: dict | str | None = None,
    trust_remote_code: bool = False,
    num_labels: int = 1,
) -> PreTrainedModel:
    """
    Load a checkpoint with the right auto class, or prepare a model that is already built.

    Args:
        pretrain_or_model (`str` or `nn.Module`):
            A local path or Hub id, or a model instance. An instance is used as is: only `bf16` (cast) and
            `use_flash_attention_2` (switch when installed) apply to it; the loading arguments (`head`,
            `ds_config`, `device_map`, `trust_remote_code`, `num_labels`) concern paths only.
        head (`str`, *optional*, defaults to `"causal_lm"`):
            `"causal_lm"`: a language model (`AutoModelForMultimodalLM` for image/audio-text models,
            `AutoModelForCausalLM` otherwise). `"sequence_classification"`: `AutoModelForSequenceClassification`.
            `"backbone"`: the model without any head (`AutoModel`), e.g. `Qwen2VLModel`; the checkpoint may hold
            any head, which is left out.
        use_flash_attention_2 (`bool`, *optional*, defaults to `False`):
            Use flash-attention 2 when installed; otherwise sdpa with a warning.
        bf16 (`bool`, *optional*, defaults to `False`):
            Load (or cast) the weights in bfloat16; float32 otherwise.
        ds_config (`dict`, *optional*):
            DeepSpeed config. With ZeRO stage 3 the weights are partitioned while loading, which needs DeepSpeed.
        device_map (`dict` or `str`, *optional*):
            Passed to `from_pretrained`.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Passed to `from_pretrained`.
        num_labels (`int`, *optional*, defaults to `1`):
            Number of outputs of a sequence-classification head.

    Returns:
        `PreTrainedModel`: the model.
    """
    if head not in ("causal_lm", "sequence_classification", "backbone"):
        raise ValueError(f"Unknown head {head!r}; use 'causal_lm', 'sequence_classification' or 'backbone'.")
    attn_implementation = resolve_attn_implementation(use_flash_attention_2)
    if isinstance(pretrain_or_model, nn.Module):
        model = pretrain_or_model
        if use_flash_attention_2:
            model.set_attn_implementation(attn_implementation)
        return model.to(torch.bfloat16) if bf16 else model

    zero3 = ds_config is not None and ds_config.get("zero_optimization", {}).get("stage") == 3
    if zero3 and not is_deepspeed_available():
        raise ImportError("ds_config asks for ZeRO stage 3, which needs DeepSpeed: `pip install rft_trl[deepspeed]`.")
    # Alive during from_pretrained only: its presence makes transformers load the weights already partitioned.
    zero3_loading = HfDeepSpeedConfig(ds_config) if zero3 else None

    config = AutoConfig.from_pretrained(pretrain_or_model, trust_remote_code=trust_remote_code)
    if head == "sequence_classification":
        auto_class = AutoModelForSequenceClassification
    elif head == "backbone":
        auto_class = AutoModel
    elif type(config) in MODEL_FOR_MULTIMODAL_LM_MAPPING:
        auto_class = AutoModelForMultimodalLM
    else:
        auto_class = AutoModelForCausalLM
    extra = {"num_labels": num_labels} if head == "sequence_classification" else {}
    model = auto_class.from_pretrained(
        pretrain_or_model,
        dtype=torch.bfloat16 if bf16 else torch.float32,
        attn_implementation=attn_implementation,
        device_map=device_map,
        trust_remote_code=trust_remote_code,
        use_safetensors=True,
        **extra,
    )
    del zero3_loading
    return model


def has_sequence_classification_head(config: PretrainedConfig) -> bool:
    """Whether transformers has an `AutoModelForSequenceClassification` class for this config."""
    return type(config) in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING


def unwrap_model(model: nn.Module) -> PreTrainedModel:
    """The transformers model under a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


def _language_model_prefix(model: PreTrainedModel) -> tuple[str, nn.Module]:
    decoder = model.get_decoder()
    for name, module in model.named_modules():
        if module is decoder:
            return name, decoder
    raise ValueError(f"{type(model).__name__}.get_decoder() is not a submodule of the model.")


def language_model_lora_targets(model: PreTrainedModel) -> str:
    """
    A PEFT `target_modules` regex selecting the linear layers of the language model only.

    Vision and audio towers often reuse the same layer names (`gate_proj`, `up_proj`, ...), so matching on names
    alone would adapt them too; the regex is anchored on the language model's module path.

    Args:
        model (`PreTrainedModel`):
            The model (not PEFT-wrapped).

    Returns:
        `str`: a regex that `re.fullmatch`es the qualified names of the language model's `nn.Linear` modules.
    """
    prefix, decoder = _language_model_prefix(model)
    leaves = sorted({name.rsplit(".", 1)[-1] for name, m in decoder.named_modules() if isinstance(m, nn.Linear)})
    if not leaves:
        raise ValueError(f"The language model of {type(model).__name__} has no nn.Linear layer to adapt with LoRA.")
    head = rf"{re.escape(prefix)}\." if prefix else ""
    return rf"{head}(?:.*\.)?(?:{'|'.join(map(re.escape, leaves))})"


def freeze_non_language_parameters(model: PreTrainedModel) -> int:
    """
    Freeze every parameter outside the language model and its output head: the vision or audio tower and its
    projector.

    Args:
        model (`PreTrainedModel`):
            The model (not PEFT-wrapped); modified in place.

    Returns:
        `int`: the number of parameters frozen (0 for a text-only model).
    """
    _, decoder = _language_model_prefix(model)
    keep = {id(p) for p in decoder.parameters()}
    output = model.get_output_embeddings()
    if output is not None:
        keep |= {id(p) for p in output.parameters()}
    frozen = 0
    for param in model.parameters():
        if id(param) not in keep and param.requires_grad:
            param.requires_grad_(False)
            frozen += param.numel()
    return frozen


def apply_lora(
    model: PreTrainedModel,
    lora_rank: int = 0,
    lora_alpha: int = 16,
    lora_dropout: float = 0.0,
    target_modules: list[str] | str | None = None,
    peft_config: PeftConfig | None = None,
    task_type: str = "CAUSAL_LM",
    modules_to_save: list[str] | None = None,
) -> nn.Module:
    """
    Wrap `model` with LoRA adapters, or return it unchanged when neither `lora_rank > 0` nor `peft_config` is given.

    Args:
        model (`PreTrainedModel`):
            The model to adapt.
        lora_rank (`int`, *optional*, defaults to `0`):
            LoRA rank; 0 disables LoRA (unless `peft_config` is given).
        lora_alpha (`int`, *optional*, defaults to `16`):
            LoRA scaling numerator.
        lora_dropout (`float`, *optional*, defaults to `0.0`):
            Dropout on the LoRA input.
        target_modules (`list[str]` or `str`, *optional*):
            Modules to adapt; by default the language model's linear layers ([`language_model_lora_targets`]).
        peft_config (`peft.PeftConfig`, *optional*):
            A complete PEFT config, used as is; exclusive with `lora_rank > 0`.
        task_type (`str`, *optional*, defaults to `"CAUSAL_LM"`):
            PEFT task type of the config built from `lora_rank`.
        modules_to_save (`list[str]`, *optional*):
            Modules trained in full and saved with the adapter (a value or score head).

    Returns:
        `nn.Module`: a `peft.PeftModel`, or `model` itself.
    """
    if peft_config is not None and lora_rank > 0:
        raise ValueError("Pass either peft_config or lora_rank > 0, not both.")
    if lora_rank < 0:
        raise ValueError(f"lora_rank must be >= 0, got {lora_rank}.")
    if peft_config is None and lora_rank == 0:
        return model
    if peft_config is None:
        peft_config = LoraConfig(
            task_type=task_type,
            r=lora_rank,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            target_modules=target_modules if target_modules is not None else language_model_lora_targets(model),
            modules_to_save=modules_to_save,
            bias="none",
        )
    elif isinstance(peft_config, LoraConfig) and peft_config.target_modules is None:
        # PEFT knows no default targets for multimodal architectures (e.g. Qwen2-VL): use the language model's
        # linear layers, as for `lora_rank`, instead of failing.
        peft_config = dataclasses.replace(peft_config, target_modules=language_model_lora_targets(model))
    return get_peft_model(model, peft_config)


def media_token_ids(config: PretrainedConfig, extra: list[int] | None = None) -> list[int]:
    """
    Ids of the media placeholder / boundary tokens a model's config declares, plus `extra`.

    Args:
        config (`PretrainedConfig`):
            The model's (top-level) config; the fields of [`MEDIA_TOKEN_CONFIG_FIELDS`] it sets are read.
        extra (`list[int]`, *optional*):
            More ids, e.g. a processor's audio begin/end tokens that the config does not record.

    Returns:
        `list[int]`: sorted, without duplicates.
    """
    fields = config.to_dict()
    ids = {fields[name] for name in MEDIA_TOKEN_CONFIG_FIELDS if fields.get(name) is not None}
    return sorted(ids | set(extra or ()))


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """`(trainable, total)` parameter counts, each shared parameter counted once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def log_trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """Log `trainable params: ... || all params: ... || trainable%: ...` and return `(trainable, total)`."""
    trainable, total = count_parameters(model)
    logger.info(
        "trainable params: %s || all params: %s || trainable%%: %.4f",
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / max(total, 1),
    )
    return trainable, total


def enable_gradient_checkpointing(model: nn.Module, gradient_checkpointing_kwargs: dict | None = None) -> None:
    """
    Turn on gradient checkpointing of a (possibly PEFT-wrapped) transformers model.

    Args:
        model (`nn.Module`):
            A `PreTrainedModel` or a `PeftModel` around one.
        gradient_checkpointing_kwargs (`dict`, *optional*, defaults to `{"use_reentrant": False}`):
            Passed to `torch.utils.checkpoint.checkpoint`.
    """
    kwargs = {"use_reentrant": False} if gradient_checkpointing_kwargs is None else gradient_checkpointing_kwargs
    if isinstance(model, PeftModel):
        # With frozen embeddings no input of a reentrant checkpoint requires grad, and the adapters inside it would
        # get none: make the embedding output require grad.
        unwrap_model(model).enable_input_require_grads()
    unwrap_model(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def collect_multimodal_inputs(
    modality: str, multimodal_inputs: Mapping[str, torch.Tensor | None], aliases: Mapping[str, str] | None = None
) -> dict[str, torch.Tensor]:
    """
    The multimodal keyword arguments of a call, renamed from their aliases, without `None`s, checked against the
    fields the modality accepts.

    Args:
        modality (`str`):
            `"text"`, `"vision"` or `"audio"`.
        multimodal_inputs (`Mapping[str, torch.Tensor | None]`):
            The keyword arguments; `None` values are dropped (callers pass every field of every modality).
            `mm_token_type_ids` is dropped too: it is rebuilt from the full sequences.
        aliases (`Mapping[str, str]`, *optional*):
            Alternative names, e.g. `{"audio_values": "input_features"}`.

    Returns:
        `dict[str, torch.Tensor]`: what the model receives as keywords.
    """
    aliases = aliases or {}
    collected = {}
    for name, value in multimodal_inputs.items():
        if value is None or name == "mm_token_type_ids":
            continue
        name = aliases.get(name, name)
        if name in collected:
            raise ValueError(f"{name!r} was given twice (once under an alias).")
        collected[name] = value
    return select_fields(collected, modality)


def build_forward_inputs(
    model: PreTrainedModel,
    sequences: torch.Tensor,
    attention_mask: torch.Tensor | None,
    packed_seq_lens: list[int] | None,
    multimodal_inputs: Mapping[str, torch.Tensor],
) -> dict:
    """
    Keyword arguments of a training forward of `model` (a causal LM or its backbone) on a padded or packed batch.

    Padded (`packed_seq_lens=None`): positions count the attended tokens, so left-padded rows see the positions
    `generate` gave them. Packed: no attention mask; positions restart at 0 for every sample, which makes
    transformers attend within samples only (a block-diagonal mask for sdpa/eager, the varlen kernel for
    flash-attention). M-RoPE models get their 3D positions from their own `get_rope_index`, per sample, with the
    modality types rebuilt from the tokens (prompt and completion); packed, the 1D text positions are prepended as a
    fourth row, the transformers convention that marks sample boundaries.

    Args:
        model (`PreTrainedModel`):
            The (unwrapped) transformers model that will run the forward; its config decides M-RoPE.
        sequences (`torch.LongTensor` of shape `[B, L]` or `[1, T]`):
            Token ids.
        attention_mask (`torch.Tensor` of shape `[B, L]`, *optional*):
            Padded only: 1 on real tokens. `None` means no padding.
        packed_seq_lens (`list[int]`, *optional*):
            Packed only: the length of each sample.
        multimodal_inputs (`Mapping[str, torch.Tensor]`):
            Multimodal fields of all samples, in sample order.

    Returns:
        `dict`: `input_ids`, `attention_mask`, `position_ids`, `use_cache=False` and the multimodal fields.
    """
    if packed_seq_lens is not None:
        if sequences.shape[0] != 1 or sequences.shape[1] != sum(packed_seq_lens):
            raise ValueError(
                f"Packed sequences must have shape [1, sum(packed_seq_lens)] = [1, {sum(packed_seq_lens)}], "
                f"got {tuple(sequences.shape)}."
            )
        text_positions = packed_position_ids(packed_seq_lens, device=sequences.device)  # [1, T]
        if model.config.model_type in MROPE_MODEL_TYPES:
            # One get_rope_index call over the samples laid out as a right-padded batch: it walks the image/video
            # grids in sample order, which is the order of the packed multimodal fields.
            as_batch = pad_packed(sequences, packed_seq_lens)  # [N, max_len]
            mask = pad_packed(torch.ones_like(sequences), packed_seq_lens)  # [N, max_len]
            rope = _mrope_position_ids(model, as_batch, mask, multimodal_inputs)  # [3, N, max_len]
            rope = rope[:, mask.bool()].unsqueeze(1)  # [3, 1, T]
            position_ids = torch.cat([text_positions.unsqueeze(0), rope], dim=0)  # [4, 1, T]
        else:
            position_ids = text_positions
        attention_mask = None
    else:
        if attention_mask is None:
            attention_mask = torch.ones_like(sequences)
        if attention_mask.shape != sequences.shape:
            raise ValueError(
                f"attention_mask {tuple(attention_mask.shape)} must have the shape of sequences "
                f"{tuple(sequences.shape)}."
            )
        if model.config.model_type in MROPE_MODEL_TYPES:
            position_ids = _mrope_position_ids(model, sequences, attention_mask, multimodal_inputs)  # [3, B, L]
        else:
            position_ids = position_ids_from_attention_mask(attention_mask)  # [B, L]
    return {
        "input_ids": sequences,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "use_cache": False,
        **multimodal_inputs,
    }


def generation_inputs(model: PreTrainedModel, input_ids: torch.Tensor) -> dict:
    """
    Keyword inputs `generate` needs besides the ids, the mask and the multimodal fields: the per-token modality
    types of the prompt for M-RoPE models (rebuilt from the tokens), nothing for other models.
    """
    if model.config.model_type not in MROPE_MODEL_TYPES:
        return {}
    config = model.config
    types = mm_token_type_ids_from_sequences(input_ids, config.image_token_id, config.video_token_id)
    return {"mm_token_type_ids": types}


def _mrope_position_ids(
    model: PreTrainedModel,
    sequences: torch.Tensor,
    attention_mask: torch.Tensor,
    multimodal_inputs: Mapping[str, torch.Tensor],
) -> torch.Tensor:
    config = model.config
    mm_token_type_ids = mm_token_type_ids_from_sequences(sequences, config.image_token_id, config.video_token_id)
    position_ids, _ = model.base_model.get_rope_index(
        sequences,
        mm_token_type_ids=mm_token_type_ids,
        image_grid_thw=multimodal_inputs.get("image_grid_thw"),
        video_grid_thw=multimodal_inputs.get("video_grid_thw"),
        second_per_grid_ts=multimodal_inputs.get("second_per_grid_ts"),
        attention_mask=attention_mask,
    )
    return position_ids  # [3, B, L]


def resolve_packing(
    packing_samples: bool,
    packed_seq_lens: list[int] | None,
    attention_mask: torch.Tensor | None,
) -> list[int] | None:
    """
    The packed sample lengths of a forward call, or `None` for a padded batch.

    A model built with `packing_samples=True` takes packed batches only: `packed_seq_lens`, or, following the
    OpenRLHF convention, an `attention_mask` numbering the samples (`[[1, 1, 2, 2, 2, ...]]`).
    """
    if not packing_samples:
        if packed_seq_lens is not None:
            raise ValueError("packed_seq_lens was given to a model built with packing_samples=False.")
        return None
    if packed_seq_lens is not None:
        return list(packed_seq_lens)
    if attention_mask is None:
        raise ValueError("A packed forward needs packed_seq_lens or a sample-numbering attention_mask.")
    return packed_seq_lens_from_sample_ids(attention_mask)


def unpacking_samples(values: torch.Tensor, lengths: list[int]) -> list[torch.Tensor]:
    """
    Split per-token values of packed samples into one tensor per sample (the seed's name for
    [`rft_trl.models.packing.unpack_values`]).

    Args:
        values (`torch.Tensor` of shape `[1, T]` or `[T]`):
            Packed values, e.g. per-token KL of several samples laid end to end.
        lengths (`list[int]`):
            Length of each sample, summing to `T`.

    Returns:
        `list[torch.Tensor]`: views of shapes `[n_i]`.
    """
    return unpack_values(values.unsqueeze(0) if values.dim() == 1 else values, lengths)
