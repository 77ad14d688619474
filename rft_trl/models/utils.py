"""Loading, LoRA, freezing and forward-input building shared by the actor, the critic and the reward model.

The three model wrappers differ only in their head (language-model head, value head, score head); how a checkpoint
is loaded, which layers LoRA adapts, which tower is frozen and how positions are numbered for padded and packed
batches is decided here, once.
"""

from __future__ import annotations

import dataclasses
import functools
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
    AutoModelForPreTraining,
    AutoModelForSequenceClassification,
    GenerationMixin,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.integrations.deepspeed import HfDeepSpeedConfig, is_deepspeed_available
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING,
    MODEL_FOR_MULTIMODAL_LM_MAPPING,
    MODEL_FOR_PRETRAINING_MAPPING,
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING,
)
from transformers.utils import is_flash_attn_2_available

from ..core import compute_approx_kl as compute_approx_kl  # re-exported: the seed's lightrft.models.utils name
from ..core import masked_mean as masked_mean  # re-exported: the seed's lightrft.models.utils name
from .packing import unpack_values

logger = logging.getLogger(__name__)

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


def resolve_attn_implementation(use_flash_attention_2: bool) -> str | None:
    """
    `"flash_attention_2"` when asked for and importable; otherwise `None`, transformers' default for the family
    (sdpa where the family supports it, eager where not, e.g. GPT-OSS), with a warning when flash was asked for.
    """
    if not use_flash_attention_2:
        return None
    if is_flash_attn_2_available():
        return "flash_attention_2"
    logger.warning(
        "use_flash_attention_2=True but flash-attn is not installed (or no CUDA device is visible); using the "
        "model's default attention (sdpa where supported) instead. Install it with `pip install rft_trl[flash-attn]`."
    )
    return None


def load_pretrained_model(
    pretrain_or_model: str | nn.Module,
    head: str = "causal_lm",
    use_flash_attention_2: bool = False,
    bf16: bool = False,
    ds_config: dict | None = None,
    device_map: dict | str | None = None,
    trust_remote_code: bool = False,
    num_labels: int = 1,
    init_kwargs: dict | None = None,
) -> PreTrainedModel:
    """
    Load a checkpoint with the right auto class, or prepare a model that is already built.

    Args:
        pretrain_or_model (`str` or `nn.Module`):
            A local path or Hub id, or a model instance. An instance is used as is: only `bf16` (cast) and
            `use_flash_attention_2` (switch when installed) apply to it; the loading arguments (`head`,
            `ds_config`, `device_map`, `trust_remote_code`, `num_labels`) concern paths only.
        head (`str`, *optional*, defaults to `"causal_lm"`):
            `"causal_lm"`: a language model (`AutoModelForMultimodalLM` for image/audio-text models, the thinker
            alone for an Omni checkpoint, `AutoModelForCausalLM` otherwise). `"sequence_classification"`:
            `AutoModelForSequenceClassification`.
            `"backbone"`: the model without any head (`AutoModel`), e.g. `Qwen2VLModel`; the checkpoint may hold
            any head, which is left out.
        use_flash_attention_2 (`bool`, *optional*, defaults to `False`):
            Use flash-attention 2 when installed; otherwise (with a warning when asked for) the family's default
            attention (sdpa where supported).
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
        init_kwargs (`dict`, *optional*):
            More `from_pretrained` keyword arguments (TRL's `model_init_kwargs`), over the ones above; `dtype` may be
            a name (`"bfloat16"`) or `"auto"`. Paths only.

    Returns:
        `PreTrainedModel`: the model.
    """
    if head not in ("causal_lm", "sequence_classification", "backbone"):
        raise ValueError(f"Unknown head {head!r}; use 'causal_lm', 'sequence_classification' or 'backbone'.")
    attn_implementation = resolve_attn_implementation(use_flash_attention_2)
    if isinstance(pretrain_or_model, nn.Module):
        if init_kwargs:
            raise ValueError(
                "model_init_kwargs apply when the model is given as a path; this model is already built. Build it "
                "with those arguments yourself, or pass its path."
            )
        model = pretrain_or_model
        if attn_implementation is not None:
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
    elif getattr(config, "thinker_config", None) is not None:
        # An Omni checkpoint (Qwen2.5-Omni, Qwen3-Omni) holds a thinker (the multimodal LM that RL trains) beside
        # speech parts with no training forward; the thinker's class loads its weights alone from the same files.
        auto_class = MODEL_FOR_MULTIMODAL_LM_MAPPING[type(config.thinker_config)]
    elif type(config) in MODEL_FOR_MULTIMODAL_LM_MAPPING:
        auto_class = AutoModelForMultimodalLM
    elif type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING and _generates(MODEL_FOR_PRETRAINING_MAPPING, config):
        # transformers files some generating multimodal classes under pretraining only (AudioFlamingo3's).
        auto_class = AutoModelForPreTraining
    else:
        auto_class = AutoModelForCausalLM
    extra = {"num_labels": num_labels} if head == "sequence_classification" else {}
    kwargs = {
        "dtype": torch.bfloat16 if bf16 else torch.float32,
        **({"attn_implementation": attn_implementation} if attn_implementation is not None else {}),
        "device_map": device_map,
        "trust_remote_code": trust_remote_code,
        "use_safetensors": True,
        **extra,
        **(init_kwargs or {}),
    }
    if isinstance(kwargs["dtype"], str) and kwargs["dtype"] != "auto":
        kwargs["dtype"] = getattr(torch, kwargs["dtype"])  # TRL's model_init_kwargs name dtypes as strings
    model = auto_class.from_pretrained(pretrain_or_model, **kwargs)
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
    # A Linear subclass with its own forward is no linear layer to PEFT (Llama 4's MoE router returns its scores and
    # logits as a tuple, which a LoRA wrapper cannot add to). A Linear in a list is named with its list (Gemma 3n's
    # `altup_projections.0`): its index alone would also match the decoder layer of that index.
    leaves = sorted(
        {
            ".".join(name.split(".")[-2:]) if name.rsplit(".", 1)[-1].isdigit() else name.rsplit(".", 1)[-1]
            for name, m in decoder.named_modules()
            if isinstance(m, nn.Linear) and type(m).forward is nn.Linear.forward
        }
    )
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


def _floating_inputs_to_fp32(module: nn.Module, args: tuple) -> tuple:
    return tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)


def _output_to_dtype(dtype: torch.dtype, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return output.to(dtype)


def cast_lm_head_to_fp32(model: PreTrainedModel) -> None:
    """
    TRL's `cast_lm_head_to_fp32`: the output embedding is made float32 and fed float32 hidden states, so the logits
    are computed in float32 whatever the model's dtype. With tied embeddings the input embedding (the same weight)
    keeps returning the model's dtype. Done with module hooks, so a `copy.deepcopy` of the model (the reference)
    computes with its own head.

    Raises:
        `ValueError`: when the head carries a PEFT adapter (TRL refuses it too) or the model has no output embedding.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"cast_lm_head_to_fp32: {type(model).__name__} has no output embedding (LM head) to cast.")
    if isinstance(head, BaseTunerLayer):
        raise ValueError(
            "`cast_lm_head_to_fp32=True` is not supported when the lm_head carries a PEFT adapter (e.g. "
            "`target_modules` includes `lm_head`). Remove `lm_head` from the adapter's target modules, or set "
            "`cast_lm_head_to_fp32=False`."
        )
    if head.weight.dtype == torch.float32 and head._forward_pre_hooks:
        return  # already cast (a reference copied from a cast policy)
    dtype = head.weight.dtype
    embedding = model.get_input_embeddings()
    tied = embedding is not None and embedding.weight is head.weight
    head.float()
    head.register_forward_pre_hook(_floating_inputs_to_fp32)
    if tied and dtype != torch.float32:
        embedding.register_forward_hook(functools.partial(_output_to_dtype, dtype))


# Families transformers can build that rft_trl refuses, with the reason (docs/models.md lists them). Every other
# family goes through the one generic path; those of the model matrix are verified against their own forward.
UNSUPPORTED_MODEL_TYPES = {
    "phi4_multimodal": (
        "transformers marks its vision encoder's attention as causal, so an image's features change with the other "
        "images padded beside it in a batch (log-probs moved by ~0.5 in a test); generation and training would see "
        "different features"
    ),
    "voxtral": (
        "its processor takes audio only through apply_chat_template with mistral_common's tokenizer "
        "(MistralCommonBackend), while rft_trl renders the prompt and calls processor(text, audio=...), which "
        "VoxtralProcessor refuses; a VoxtralProcessor.__call__ that takes audio would make it work (mistral_common "
        "1.13 installs from PyPI, but pins numpy<2.4 on Python <= 3.12, and would not change that call)"
    ),
    "granite_speech": (
        "its feature extractor needs torchaudio (2.11.1 from PyPI imports beside torch 2.14.1 and computes the "
        "features), and it has not been verified against its own forward: a tiny builder in the model matrix with "
        "torchaudio installed would make it work"
    ),
}


def check_supported(model: PreTrainedModel | str, trust_remote_code: bool = False) -> None:
    """
    Refuse a model family rft_trl knows it cannot train correctly.

    Args:
        model (`PreTrainedModel` or `str`):
            The model (PEFT-wrapped or not), or its path, whose config alone is read (no weights).
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Passed to `AutoConfig.from_pretrained` for a path.

    Raises:
        `ValueError`: naming the family and the reason, for the families of `UNSUPPORTED_MODEL_TYPES`.
    """
    if isinstance(model, str):
        config = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
        name = (config.architectures or [config.model_type])[0]
    else:
        config, name = unwrap_model(model).config, type(unwrap_model(model)).__name__
    model_types = {config.model_type, config.get_text_config().model_type}
    for model_type in sorted(model_types & set(UNSUPPORTED_MODEL_TYPES)):
        reason = UNSUPPORTED_MODEL_TYPES[model_type]
        raise ValueError(
            f"{name} ({model_type}) is not supported by rft_trl: {reason}. See docs/models.md for the supported "
            "families."
        )


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


def _generates(mapping: Mapping, config: PretrainedConfig) -> bool:
    """Whether an auto mapping of transformers has a class for `config` that generates."""
    return type(config) in mapping and issubclass(mapping[type(config)], GenerationMixin)
