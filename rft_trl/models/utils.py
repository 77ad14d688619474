"""Loading, LoRA, freezing and forward-input building shared by the actor, the critic and the reward model.

The three model wrappers differ only in their head (language-model head, value head, score head); how a checkpoint
is loaded, which layers LoRA adapts, which tower is frozen and how positions are numbered for padded and packed
batches is decided here, once.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
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
    MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING,
    MODEL_FOR_MULTIMODAL_LM_MAPPING,
    MODEL_FOR_PRETRAINING_MAPPING,
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING,
)
from transformers.utils import ModelOutput, is_flash_attn_2_available

from ..core import compute_approx_kl as compute_approx_kl  # re-exported: the seed's lightrft.models.utils name
from ..core import masked_mean as masked_mean  # re-exported: the seed's lightrft.models.utils name
from ..data.multimodal import MEDIA_KINDS, ProcessorLayout, extend_token_fields, is_token_field
from .packing import packed_seq_lens_from_sample_ids, pad_packed, unpack_values

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


def _generates(mapping: Mapping, config: PretrainedConfig) -> bool:
    """Whether an auto mapping of transformers has a class for `config` that generates."""
    return type(config) in mapping and issubclass(mapping[type(config)], GenerationMixin)


def position_source(model: PreTrainedModel) -> GenerationMixin:
    """
    The model whose `_prepare_position_ids_for_generation` numbers positions for `model`: `model` itself when it
    generates, otherwise (a backbone under a value or score head) its family's generating class instantiated on the
    meta device, which costs no memory. Numbering positions reads only the config, never the weights.

    Raises:
        `ValueError`: when transformers has no generating class for the model's config.
    """
    if isinstance(model, GenerationMixin):
        return model
    config = model.config
    # Last, the pretraining classes, where transformers files some generating ones (AudioFlamingo3's) and many that
    # do not generate (BERT's): only a generating class numbers positions.
    mappings = (
        MODEL_FOR_MULTIMODAL_LM_MAPPING,
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING,
        MODEL_FOR_CAUSAL_LM_MAPPING,
        MODEL_FOR_PRETRAINING_MAPPING,
    )
    for mapping in mappings:
        if _generates(mapping, config):
            with torch.device("meta"):
                return mapping[type(config)](config)
    raise ValueError(
        f"{type(model).__name__} ({config.model_type}) has no generating class in transformers to number its "
        "positions with; rft_trl cannot compute its positions for padded or packed batches."
    )


class ModelInputs:
    """
    How to call one transformers model on a padded or packed batch: which keyword inputs it takes, and its positions.

    Positions are always the model's own: what its `generate` would give the same tokens
    (`_prepare_position_ids_for_generation`: 1-D positions counting the attended tokens, or the 3-D M-RoPE
    positions of Qwen-VL, GLM-4.xV and Omni models computed by their `get_rope_index`, with the 1-D text positions
    as a leading fourth row). Packed samples are numbered each on its own and laid end to end, so positions restart
    at every sample, which is how transformers keeps packed samples from attending to each other.

    Args:
        model (`PreTrainedModel`):
            The transformers model that will run the forward (not PEFT-wrapped).
        aliases (`Mapping[str, str]`, *optional*):
            Other names accepted for model inputs, e.g. `{"audio_values": "input_features"}`.

    Attributes:
        accepted (`frozenset[str]`): the named parameters of the model's `forward`.
        token_fields (`tuple[str, ...]`): the per-token type fields among them (`mm_token_type_ids`, ...).
    """

    def __init__(self, model: PreTrainedModel, aliases: Mapping[str, str] | None = None):
        check_supported(model)
        self.model_name = type(model).__name__
        parameters = inspect.signature(model.forward).parameters.values()
        variadic = (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
        self.accepted = frozenset(p.name for p in parameters if p.kind not in variadic)
        self.token_fields = tuple(sorted(name for name in self.accepted if is_token_field(name)))
        self.aliases = dict(aliases or {})
        self._model = model
        self._positions = position_source(model)

    def check_packable(self) -> None:
        """
        Refuse packed forwards for a model whose packed samples transformers cannot keep apart by their positions.

        What the positions cannot show (a layer carrying state across samples, bidirectional attention over media
        tokens that transformers' packed masks mix up across samples, as Gemma 3's) `verify_model` measures on the
        model at hand; a name is no proof either way (Gemma 3n and PaliGemma take `token_type_ids` and pack exactly).

        Raises:
            `ValueError`: when the model numbers positions in rows without a text row to mark where samples start.
        """
        probe = torch.zeros(1, 2, dtype=torch.long)
        self.packed_position_ids(probe, [1, 1], {})

    def check_processor(self, layout: ProcessorLayout, processor_name: str) -> None:
        """
        Refuse a processor whose outputs this model does not take, naming each field and its media kind.

        Args:
            layout ([`~rft_trl.data.multimodal.ProcessorLayout`]): what the processor returns.
            processor_name (`str`): its class name, for the message.

        Raises:
            `ValueError`: when a media or per-token field of the processor is not a keyword of the model's `forward`.
        """
        unfit = [
            f"{name!r} ({kind})"
            for kind, names in layout.fields.items()
            for name in names
            if name not in self.accepted
        ]
        unfit += [f"{name!r} (per token)" for name in layout.token_fields if name not in self.accepted]
        if unfit:
            raise ValueError(
                f"{processor_name} returns {', '.join(unfit)}, which {self.model_name}.forward does not take: the "
                "processor does not fit the model. Pass the processor saved with this model."
            )

    def is_input(self, name: str) -> bool:
        """Whether `name` (or the name it aliases) is a keyword input of the model."""
        return self.aliases.get(name, name) in self.accepted

    def collect(self, inputs: Mapping[str, torch.Tensor | None]) -> tuple[dict, dict]:
        """
        Sort keyword inputs into media fields and per-token fields, renaming aliases and dropping `None`s and
        empty tensors, with media content in the dtype of the towers that encode it ([`ModelInputs.media_dtype`]).

        Returns:
            `tuple[dict, dict]`: the media fields and the per-token fields.

        Raises:
            `ValueError`: on a name the model's `forward` does not take, a name given twice (once under an alias),
            or media given without a per-token type field the model reads (its positions or attention over the
            media would silently be those of text).
        """
        media, tokens = {}, {}
        for name, value in inputs.items():
            # An empty media field means no media of its kind (a batch of text-only samples): left out. (The one
            # input that is not a tensor, `mm_encoder_outputs`, only comes with media.)
            if value is None or (isinstance(value, torch.Tensor) and value.numel() == 0):
                continue
            name = self.aliases.get(name, name)
            if name not in self.accepted:
                raise ValueError(
                    f"{self.model_name}.forward takes no {name!r}: the inputs do not fit this model (was the "
                    "processor made for another model?)."
                )
            target = tokens if is_token_field(name) else media
            if name in target:
                raise ValueError(f"{name!r} was given twice (once under an alias).")
            target[name] = value
        missing = [name for name in self.token_fields if name not in tokens]
        if media and missing:
            raise ValueError(
                f"{self.model_name} reads {', '.join(map(repr, missing))} along with media inputs: pass the "
                "processor's value (for the prompt, or extended over the completion); without it the media tokens "
                "would be placed or attended to as text."
            )
        # Processors return float32 pixels and features whatever the model's dtype, and not every tower casts them
        # (Kimi-K2.5's patch embedding meets them with bfloat16 weights and fails): media content is cast here, where
        # every forward and generate of the actor, critic and reward model gets its inputs. Only content: floating
        # fields of two or more dimensions (pixels, spectrograms). A 1-D floating field holds one number per item
        # (Qwen-Omni's `video_second_per_grid`), which positions are computed from and bfloat16 would round; integer
        # fields (grids, sizes, masks) and `mm_encoder_outputs` are never touched.
        dtype = self.media_dtype
        for name, value in media.items():
            if dtype is not None and isinstance(value, torch.Tensor) and value.is_floating_point() and value.dim() > 1:
                media[name] = value.to(dtype)
        return media, tokens

    @property
    def media_dtype(self) -> torch.dtype | None:
        """
        The dtype media content reaches the model in: that of the parameters of the towers that consume it, found by
        transformers' own `get_encoder(modality)` (the vision tower for images and videos, the audio tower), else, when
        the model names no tower there, the model's `dtype` (its first floating parameter). `None` (the inputs are left
        as they came) when its towers are in different dtypes, since which field feeds which tower is not known here.

        The towers, not the model as a whole: a model mixes dtypes where a tower does not. Modules kept in float32 by
        `_keep_in_fp32_modules_strict` (the routers of DeepSeek-V3 inside Kimi-K2.5), LoRA adapters PEFT upcasts, or
        `cast_lm_head_to_fp32` on tied embeddings (Kimi-K2.5's: the input embedding's weight turns float32 while the
        tower stays bfloat16) make `model.dtype` or the embeddings' dtype an accident. A float32 model (mixed precision
        under autocast) keeps float32 inputs. Read at every call, so a model cast after this object was built is
        followed.
        """
        towers = {
            id(tower): tower
            for tower in map(self._model.get_encoder, MEDIA_KINDS)
            if tower is not None and tower is not self._model
        }
        if not towers:
            return self._model.dtype
        dtypes = {next(p.dtype for p in tower.parameters() if p.is_floating_point()) for tower in towers.values()}
        return dtypes.pop() if len(dtypes) == 1 else None

    def completion_token_types(self, token_fields: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """
        The value the model's own `generate` gives a generated token in each per-token type field, per row.

        Read off the model's `_update_model_kwargs_for_generation` (what `generate` runs after every step to extend
        its inputs over the new token), never assumed: 0, the text type, for `mm_token_type_ids`; the prompt's last
        value for `token_type_ids` by default (text, for Gemma 3's prompts); 1, the causal suffix, for PaliGemma. A
        field the model's `generate` does not extend (it reads it on the prompt only) gets 0, the text type.
        `verify_model` checks the result against what `generate` holds after generating.

        Args:
            token_fields (`Mapping[str, torch.Tensor]`):
                The prompt's per-token fields, each `[B, P]`, left-padded (their last column is the last prompt token).

        Returns:
            `dict[str, torch.Tensor]`: per field, the value of a generated token in each row, `[B]`.
        """
        if not token_fields:
            return {}
        prompt = dict(token_fields)
        # One step: a generated token's value follows from the prompt's; every later step repeats it (the generic
        # rule repeats the last column, the others append a constant).
        updated = self._positions._update_model_kwargs_for_generation(ModelOutput(), dict(prompt), num_new_tokens=1)
        values = {}
        for name, value in prompt.items():
            extended = updated.get(name)
            if extended is None or extended.shape[-1] != value.shape[-1] + 1:
                values[name] = value.new_zeros(value.shape[0])  # [B]
            else:
                values[name] = extended[:, -1]  # [B]
        return values

    def extend_token_fields(self, token_fields: Mapping[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
        """
        The prompt's per-token fields (`[B, P]`) extended over the completion to `width` columns with the values the
        model's own `generate` gives generated tokens ([`ModelInputs.completion_token_types`]).
        """
        short = {name: value for name, value in token_fields.items() if value.shape[-1] < width}
        return extend_token_fields(token_fields, width, values=self.completion_token_types(short))

    def position_ids(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, fields: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        """
        The model's positions for a padded batch.

        Args:
            input_ids (`torch.LongTensor` of shape `[B, L]`): token ids.
            attention_mask (`torch.Tensor` of shape `[B, L]`): 1 on real tokens.
            fields (`Mapping[str, torch.Tensor]`): the media and per-token fields (per-token ones `[B, L]`).

        Returns:
            `torch.LongTensor` of shape `[B, L]`, or `[3 or 4, B, L]` for 3-D positions.
        """
        # The method generate calls to number a prompt; it reads the mask, the token types and the media grids.
        model_kwargs = {"attention_mask": attention_mask, **fields}
        return self._positions._prepare_position_ids_for_generation(input_ids, model_kwargs)

    def packed_position_ids(
        self, sequences: torch.Tensor, packed_seq_lens: list[int], fields: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        """
        The model's positions for packed samples, each numbered as if alone.

        Returns:
            `torch.LongTensor` of shape `[1, T]`, or `[4, 1, T]` for 3-D positions (the text row first).

        Raises:
            `ValueError`: when the model's 3-D positions have no text row to mark where samples start.
        """
        as_batch = pad_packed(sequences, packed_seq_lens)  # [N, max_len], right-padded
        mask = pad_packed(torch.ones_like(sequences), packed_seq_lens)  # [N, max_len]
        batch_fields = {
            name: pad_packed(value, packed_seq_lens) if is_token_field(name) else value
            for name, value in fields.items()
        }
        positions = self.position_ids(as_batch, mask, batch_fields)  # [N, max_len] or [R, N, max_len]
        if positions.dim() == 3 and positions.shape[0] != 4:
            raise ValueError(
                f"{self.model_name} numbers positions in {positions.shape[0]} rows without a text row, so packed "
                "samples cannot be told apart; train it with packing_samples=False."
            )
        return positions[..., mask.bool()].unsqueeze(-2)  # [1, T] or [4, 1, T]

    def for_call(
        self,
        sequences: torch.Tensor,
        num_actions: int | list[int] | None,
        attention_mask: torch.Tensor | None,
        packed_seq_lens: list[int] | None,
        packing_samples: bool,
        inputs: Mapping[str, torch.Tensor | None],
    ) -> tuple[dict, list[int] | None]:
        """
        The forward keywords of an actor's or critic's call, and the packed sample lengths (`None` when padded).

        Sorts `inputs` ([`ModelInputs.collect`]), decides packed or padded ([`resolve_packing`]) and builds the
        keywords ([`ModelInputs.forward_inputs`]).
        """
        media, token_fields = self.collect(inputs)
        packed_seq_lens = resolve_packing(packing_samples, packed_seq_lens, attention_mask, num_actions)
        mask = None if packed_seq_lens else attention_mask
        return self.forward_inputs(sequences, mask, packed_seq_lens, media, token_fields), packed_seq_lens

    def forward_inputs(
        self,
        sequences: torch.Tensor,
        attention_mask: torch.Tensor | None,
        packed_seq_lens: list[int] | None,
        media: Mapping[str, torch.Tensor],
        token_fields: Mapping[str, torch.Tensor],
    ) -> dict:
        """
        Keyword arguments of a training forward on a padded or packed batch.

        Padded: per-token fields cover the whole sequence `[B, L]`, or only the prompt (its first columns) as the
        processor returned them, then they are extended over the completion as the model's `generate` extends them
        ([`ModelInputs.extend_token_fields`]). Packed: no attention mask
        (positions restart per sample, and transformers attends within samples only: a block-diagonal mask for
        sdpa/eager, the varlen kernel for flash-attention); per-token fields are `[1, T]`.

        Args:
            sequences (`torch.LongTensor` of shape `[B, L]` or `[1, T]`): token ids.
            attention_mask (`torch.Tensor` of shape `[B, L]`, *optional*): padded only; `None` means no padding.
            packed_seq_lens (`list[int]`, *optional*): packed only: the length of each sample.
            media (`Mapping[str, torch.Tensor]`): media fields of all samples, in order.
            token_fields (`Mapping[str, torch.Tensor]`): per-token fields.

        Returns:
            `dict`: `input_ids`, `attention_mask`, `position_ids`, `use_cache=False`, the per-token and media fields.
        """
        if packed_seq_lens is not None:
            if sequences.shape[0] != 1 or sequences.shape[1] != sum(packed_seq_lens):
                raise ValueError(
                    f"Packed sequences must have shape [1, sum(packed_seq_lens)] = [1, {sum(packed_seq_lens)}], "
                    f"got {tuple(sequences.shape)}."
                )
            tokens = self._full_width(token_fields, sequences, packed=True)
            position_ids = self.packed_position_ids(sequences, packed_seq_lens, {**tokens, **media})
            attention_mask = None
        else:
            if attention_mask is None:
                attention_mask = torch.ones_like(sequences)
            if attention_mask.shape != sequences.shape:
                raise ValueError(
                    f"attention_mask {tuple(attention_mask.shape)} must have the shape of sequences "
                    f"{tuple(sequences.shape)}."
                )
            tokens = self._full_width(token_fields, sequences, packed=False)
            position_ids = self.position_ids(sequences, attention_mask, {**tokens, **media})
        return {
            "input_ids": sequences,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "use_cache": False,
            **tokens,
            **media,
        }

    def _full_width(
        self, token_fields: Mapping[str, torch.Tensor], sequences: torch.Tensor, packed: bool
    ) -> dict[str, torch.Tensor]:
        # Padded rows are [left padding | prompt | completion]: a field as the processor returned it for the prompt
        # covers the first columns, and a completion's tokens get what the model's generate gives them.
        batch, width = sequences.shape
        for name, value in token_fields.items():
            if (
                value.dim() != 2
                or value.shape[0] != batch
                or value.shape[1] > width
                or (packed and value.shape[1] != width)
            ):
                expected = f"[1, {width}]" if packed else f"[{batch}, {width}] or its prompt's [{batch}, <= {width}]"
                raise ValueError(f"Per-token field {name!r} has shape {tuple(value.shape)}; expected {expected}.")
        return self.extend_token_fields(token_fields, width)


def resolve_packing(
    packing_samples: bool,
    packed_seq_lens: list[int] | None,
    attention_mask: torch.Tensor | None,
    num_actions: int | list[int] | None = None,
) -> list[int] | None:
    """
    The packed sample lengths of a forward call, or `None` for a padded batch.

    A batch is packed when `packed_seq_lens` is given, or when a model built with `packing_samples=True` gets an
    `attention_mask` numbering the samples (`[[1, 1, 2, 2, 2, ...]]`, the OpenRLHF convention) or `num_actions` as
    a list (one count per packed sample). Such a model also takes ordinary padded batches: a 0/1 `attention_mask`
    with `num_actions` as an int.
    """
    if packed_seq_lens is not None:
        if not packing_samples:
            raise ValueError("packed_seq_lens was given to a model built with packing_samples=False.")
        return list(packed_seq_lens)
    if not packing_samples:
        return None
    numbered = attention_mask is not None and attention_mask.shape[0] == 1 and bool((attention_mask > 1).any())
    if not numbered and not isinstance(num_actions, (list, tuple)):
        return None
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
