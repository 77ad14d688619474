"""The policy of reinforcement fine-tuning: one `Actor` for text, image, video and audio language models.

The actor wraps a transformers causal (or image/audio-to-text) language model. It samples completions
([`Actor.generate`]) and scores the tokens of a completion under the current weights ([`Actor.forward`], the action
log-probabilities of PPO/GRPO). Every model family takes the same path: whatever media fields and per-token type
fields its processor returns go to the model as keywords (checked against the names its `forward` takes), and
positions are the model's own ([`rft_trl.models.inputs.ModelInputs`]). The seed's [`ActorVL`] and [`ActorAL`]
(`rft_trl.compat`) are named faces of this class with the seed's keyword names.
"""

from __future__ import annotations

import functools
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from peft import PeftConfig, PeftModel
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel, ProcessorMixin
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

from ..core.logprobs import (
    log_probs_and_entropy_from_hidden,
    log_probs_and_entropy_from_logits,
    log_probs_from_logits,
)
from ..data.multimodal import MEDIA_KINDS, is_token_field
from .fsdp import fsdp_enabled
from .inputs import ModelInputs, resolve_packing
from .packing import select_action_positions
from .utils import (
    apply_lora,
    enable_gradient_checkpointing,
    freeze_non_language_parameters,
    load_pretrained_model,
    log_trainable_parameters,
    media_token_ids,
    unwrap_model,
)

logger = logging.getLogger(__name__)

__all__ = ["FUSED_LOG_PROB_MODEL_TYPES", "Actor", "MediaTokenTypes", "media_token_type_codes", "process_sequences"]

# Model types whose logits are exactly `lm_head(last hidden states)`: every family of the model matrix
# (docs/models.md), whose fused log-probs are tested against the model's own forward. Any other model computes its
# log-probs from the logits it returns.
FUSED_LOG_PROB_MODEL_TYPES = frozenset(
    {
        "qwen2", "qwen3", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen2_audio", "qwen2_5_omni_thinker",
        "qwen3_omni_moe_thinker", "glm4v", "glm4v_moe", "gemma3", "llava", "llava_onevision", "internvl",
        "idefics3", "smolvlm", "mistral3", "phi4_multimodal", "gemma4", "glm46v", "aya_vision", "llama4",
        "qwen3_5", "qwen3_5_moe", "lfm2_vl", "qwen3_5_text", "lfm2", "qwen3_asr", "audioflamingo3",
        "paligemma", "kimi_k25", "ernie4_5_vl_moe",
    }
)  # fmt: skip
# The per-token type fields `MediaTokenTypes` rebuilds from the tokens (placeholders marked by media kind).
DERIVABLE_TOKEN_FIELDS = ("mm_token_type_ids", "token_type_ids")
# Config fields of logit post-processing after the head (Gemma-2's softcapping, Cohere's scale, Granite's scaling):
# set, the fused path would miss them.
LOGIT_POST_PROCESSING_FIELDS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def process_sequences(
    sequences: torch.Tensor,
    input_len: int,
    eos_token_id: int | list[int],
    pad_token_id: int,
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    Cut generated responses at their first end-of-sequence token and build the attention and action masks.

    For each row, the response is `sequences[:, input_len:]`. Its actions are its tokens up to and including the
    first token in `eos_token_id`; every token after that becomes `pad_token_id` and is masked out. A response
    without EOS (truncated by `max_new_tokens`) is all actions. Examples with EOS `E`, pad `P`, response width 4:

    - `a b E c` -> `a b E P`, action mask `1 1 1 0`
    - `E a E b` -> `E P P P`, action mask `1 0 0 0` (the first EOS counts)
    - `a b c d` -> unchanged, action mask `1 1 1 1`

    Args:
        sequences (`torch.LongTensor` of shape `[B, input_len + R]`):
            Prompts (left-padded) followed by the generated responses.
        input_len (`int`):
            Width of the prompt part.
        eos_token_id (`int` or `list[int]`):
            End-of-sequence id(s); any of them ends a response.
        pad_token_id (`int`):
            Id written after the end of each response.
        attention_mask (`torch.Tensor` of shape `[B, input_len]`, *optional*):
            The prompts' attention mask. Without it, prompt tokens equal to `pad_token_id` are taken as padding.

    Returns:
        `tuple[torch.LongTensor, torch.LongTensor, torch.BoolTensor]`: the cleaned `sequences` `[B, input_len + R]`
        (a new tensor), the `attention_mask` `[B, input_len + R]` and the `action_mask` `[B, R]`.
    """
    if not 0 <= input_len <= sequences.shape[1]:
        raise ValueError(f"input_len={input_len} is outside the sequence width {sequences.shape[1]}.")
    prompt, response = sequences[:, :input_len], sequences[:, input_len:]  # [B, P], [B, R]
    eos_ids = torch.as_tensor(eos_token_id, device=sequences.device).reshape(-1)
    is_eos = torch.isin(response, eos_ids)  # [B, R]
    # Tokens strictly after the first EOS are the ones with an EOS before them.
    after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0  # [B, R]
    action_mask = ~after_eos  # [B, R]
    response = response.masked_fill(after_eos, pad_token_id)
    if attention_mask is None:
        prompt_mask = prompt.ne(pad_token_id)
    else:
        if attention_mask.shape != prompt.shape:
            raise ValueError(
                f"attention_mask {tuple(attention_mask.shape)} must be the prompt's mask, shape {tuple(prompt.shape)}."
            )
        prompt_mask = attention_mask.bool()
    full_mask = torch.cat([prompt_mask, action_mask], dim=1).long()  # [B, P + R]
    return torch.cat([prompt, response], dim=1), full_mask, action_mask


@functools.cache
def media_token_type_codes() -> dict[str, int]:
    """
    The type each media kind's tokens get in a per-token type field (text is 0), as transformers' processors write
    it.

    Read off transformers' own `ProcessorMixin.create_mm_token_type_ids` (run on one token of each kind) rather
    than copied, so that the derived fields follow transformers if its convention changes.

    Returns:
        `dict[str, int]`: a distinct non-zero type per kind of `MEDIA_KINDS`.
    """
    stub = SimpleNamespace(**{f"{kind}_token_ids": [index] for index, kind in enumerate(MEDIA_KINDS)})
    (codes,) = ProcessorMixin.create_mm_token_type_ids(stub, [list(range(len(MEDIA_KINDS)))])
    codes = dict(zip(MEDIA_KINDS, (int(code) for code in codes)))
    if 0 in codes.values() or len(set(codes.values())) != len(codes):
        raise RuntimeError(f"transformers' per-token media types {codes} are not distinct and non-zero.")
    return codes


@dataclass(frozen=True)
class MediaTokenTypes:
    """
    A per-token type field (`mm_token_type_ids`, Gemma 3's `token_type_ids`) rebuilt from the token ids, as the
    family's processor marks it, from the model's config alone.

    A token whose id the config declares as a media kind's placeholder (`<kind>_token_id` or `<kind>_token_index`,
    for the kinds of `MEDIA_KINDS`) gets that kind's type ([`media_token_type_codes`]); a placeholder inside a
    `<kind>_start_token_id` ... `<kind>_end_token_id` span gets the span's kind instead (GLM-4.xV places its video
    frames as image placeholders between video boundaries), spans of later kinds winning. Every other token, a
    completion's included, is text (0), as a processor's field extended over the completion is.

    Args:
        placeholders (`dict[int, int]`):
            Placeholder token id -> type.
        spans (`tuple[tuple[int, int, int], ...]`):
            `(start id, end id, type)` of each kind with boundary tokens, applied in order.
    """

    placeholders: dict[int, int]
    spans: tuple[tuple[int, int, int], ...] = ()

    @classmethod
    def from_config(cls, config: PretrainedConfig) -> MediaTokenTypes:
        """The placeholders and spans a model's (top-level) config declares."""
        fields, codes = config.to_dict(), media_token_type_codes()
        placeholders, spans = {}, []
        for kind, code in codes.items():
            for name in (f"{kind}_token_id", f"{kind}_token_index"):
                if fields.get(name) is not None:
                    placeholders[fields[name]] = code
            start, end = fields.get(f"{kind}_start_token_id"), fields.get(f"{kind}_end_token_id")
            if start is not None and end is not None:
                spans.append((start, end, code))
        return cls(placeholders, tuple(spans))

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input_ids (`torch.LongTensor` of shape `[B, L]`): token ids; spans are followed along each row.

        Returns:
            `torch.LongTensor` of shape `[B, L]`.
        """
        types = torch.zeros_like(input_ids, dtype=torch.long)  # [B, L]
        for token_id, code in self.placeholders.items():
            types = types.masked_fill(input_ids == token_id, code)
        is_placeholder = types > 0  # [B, L]
        for start, end, code in self.spans:
            # Open spans: more starts than ends so far along the row.
            inside = (input_ids == start).cumsum(-1) > (input_ids == end).cumsum(-1)  # [B, L]
            types = types.masked_fill(inside & is_placeholder, code)
        return types


class Actor(nn.Module):
    """
    A language-model policy for reinforcement fine-tuning, for text, image, video and audio inputs.

    Args:
        pretrain_or_model (`str` or `nn.Module`):
            A checkpoint path (loaded with `AutoModelForMultimodalLM` for image/audio-text models,
            `AutoModelForCausalLM` otherwise, safetensors only) or a model instance.
        use_flash_attention_2 (`bool`, *optional*, defaults to `False`):
            Use flash-attention 2 when installed; otherwise sdpa, with a warning.
        bf16 (`bool`, *optional*, defaults to `False`):
            Load (or cast) the weights in bfloat16.
        lora_rank (`int`, *optional*, defaults to `0`):
            LoRA rank; 0 trains the full model.
        lora_alpha (`int`, *optional*, defaults to `16`):
            LoRA scaling numerator.
        lora_dropout (`float`, *optional*, defaults to `0.0`):
            Dropout on the LoRA input.
        target_modules (`list[str]` or `str`, *optional*):
            Modules LoRA adapts; by default the linear layers of the language model only (never the vision or audio
            tower).
        ds_config (`dict`, *optional*):
            DeepSpeed config; with ZeRO-3 the weights are partitioned while loading.
        device_map (`dict` or `str`, *optional*):
            Passed to `from_pretrained`.
        packing_samples (`bool`, *optional*, defaults to `False`):
            Take packed batches in `forward` (`[1, T]` sequences with `packed_seq_lens`, or an `attention_mask`
            numbering the samples) instead of padded ones. Packing is exact only where every layer keeps the samples
            apart (linear attention, convolutions and bidirectional media attention may not): [`PPOTrainerVL`] checks
            it on the model at construction; outside the trainer, call
            `rft_trl.models.verification.verify_model(actor, PromptCollator(processor), packing=True)` first.
        peft_config (`peft.PeftConfig`, *optional*):
            A complete PEFT config, used instead of the `lora_*` arguments.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Passed to `from_pretrained`.
        freeze_encoder (`bool`, *optional*, defaults to `False`):
            In full fine-tuning, freeze every parameter outside the language model and its head (vision/audio
            tower and projector). With LoRA only the adapters train anyway.
        media_token_ids (`list[int]`, *optional*):
            Token ids never to generate besides those the config declares (image/video/audio placeholders, vision
            start/end), e.g. a processor's audio begin/end tokens.
        model_init_kwargs (`dict`, *optional*):
            More `from_pretrained` arguments when `pretrain_or_model` is a path (TRL's `model_init_kwargs`).
        fused_log_probs (`bool`, *optional*, defaults to `True`):
            Compute the action log-probs (and entropies) in [`forward`] from the last hidden states and the output
            embedding, `log_prob_chunk_size` tokens at a time, so that the `[tokens, vocabulary]` logits never
            exist. Used where it is exact: the model types of `FUSED_LOG_PROB_MODEL_TYPES` with no logit
            post-processing, a plain `nn.Linear` head (not LoRA-adapted or quantized) with no forward hook (a
            pre-hook is fine), outside ZeRO-3 (whose partitioned head is only whole inside its own forward).
            Elsewhere the model's logits are used, and the reason is logged once.
        log_prob_chunk_size (`int`, *optional*, defaults to `256`):
            Tokens whose logits exist at once on the fused path (benchmark B3).
        suppressed_token_ids (`list[int]`, *optional*):
            Tokens of probability zero in what [`forward`] scores: its log-probs and entropies are those of the
            softmax over the other tokens, the distribution sampling draws from when it never emits these (HF
            `suppress_tokens`, a vLLM logit bias of -100). [`PPOTrainerVL`] sets it to [`media_token_ids`] under
            `suppress_media_tokens`, for the policy and the reference alike. By default nothing is suppressed: the
            full-vocabulary softmax, as the model's own forward gives.

    Attributes:
        modality (`str`):
            The seed's name for the inputs a face is for (what LightRFT's trainer reads): `"text"` here, `"vision"`
            for [`ActorVL`], `"audio"` for [`ActorAL`]. Every face takes every modality's fields all the same.
        token_types ([`MediaTokenTypes`]):
            Rebuilds the per-token type fields the model reads (`mm_token_type_ids`, ...) from the tokens when a
            call gives media without them, as the seed's calls do.

    Example:

    ```python
    >>> actor = Actor("Qwen/Qwen2.5-VL-3B-Instruct", bf16=True, lora_rank=16)
    >>> sequences, attention_mask, action_mask = actor.generate(**processor_batch, max_new_tokens=64, do_sample=True)
    >>> log_probs = actor(sequences, action_mask.shape[1], attention_mask, **media_and_token_type_fields)
    ```
    """

    modality: str = "text"
    # Alternative names accepted for model inputs (the seed's `audio_values`, for instance).
    field_aliases: dict[str, str] = {}

    def __init__(
        self,
        pretrain_or_model: str | nn.Module,
        use_flash_attention_2: bool = False,
        bf16: bool = False,
        lora_rank: int = 0,
        lora_alpha: int = 16,
        lora_dropout: float = 0.0,
        target_modules: list[str] | str | None = None,
        ds_config: dict | None = None,
        device_map: dict | str | None = None,
        packing_samples: bool = False,
        peft_config: PeftConfig | None = None,
        trust_remote_code: bool = False,
        freeze_encoder: bool = False,
        media_token_ids: list[int] | None = None,
        model_init_kwargs: dict | None = None,
        fused_log_probs: bool = True,
        log_prob_chunk_size: int = 256,
        suppressed_token_ids: list[int] | None = None,
    ):
        super().__init__()
        model = load_pretrained_model(
            pretrain_or_model,
            head="causal_lm",
            use_flash_attention_2=use_flash_attention_2,
            bf16=bf16,
            ds_config=ds_config,
            device_map=device_map,
            trust_remote_code=trust_remote_code,
            init_kwargs=model_init_kwargs,
        )
        if freeze_encoder and not isinstance(model, PeftModel):
            freeze_non_language_parameters(model)
        self.model = apply_lora(model, lora_rank, lora_alpha, lora_dropout, target_modules, peft_config)
        self.packing_samples = packing_samples
        self.extra_media_token_ids = list(media_token_ids or [])
        self.inputs = ModelInputs(unwrap_model(model), self.field_aliases)
        self.token_types = MediaTokenTypes.from_config(unwrap_model(model).config)
        if packing_samples:
            self.inputs.check_packable()
        self.fused_log_probs = fused_log_probs
        self.log_prob_chunk_size = log_prob_chunk_size
        self.suppressed_token_ids = list(suppressed_token_ids or [])
        self._unfused_reason_logged = False

    @property
    def config(self):
        """The transformers model's config (what DeepSpeed and TRL helpers read off a model)."""
        return self.hf_model.config

    @property
    def hf_model(self) -> PreTrainedModel:
        """The transformers model (under the PEFT wrapper, if any)."""
        return unwrap_model(self.model)

    @property
    def media_token_ids(self) -> list[int]:
        """Ids suppressed during generation: the config's media tokens and `media_token_ids`."""
        return media_token_ids(self.hf_model.config, self.extra_media_token_ids)

    # ------------------------------------------------------------------------------------------------- generate

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        suppress_media_tokens: bool = True,
        **kwargs,
    ) -> tuple[torch.LongTensor, torch.LongTensor, torch.BoolTensor]:
        """
        Sample completions and return them with the masks RL training needs.

        Args:
            input_ids (`torch.LongTensor` of shape `[B, P]`):
                Left-padded prompts.
            attention_mask (`torch.Tensor` of shape `[B, P]`, *optional*):
                The prompts' mask; all ones by default.
            suppress_media_tokens (`bool`, *optional*, defaults to `True`):
                Never sample media placeholder or boundary tokens ([`Actor.media_token_ids`]): a completion holding
                one would make the next forward fail to match media features with placeholders.
            kwargs:
                The processor's other outputs for the prompts, media fields (`pixel_values`, `image_grid_thw`,
                `input_features`, ...) and per-token type fields (`mm_token_type_ids`, `token_type_ids`, `[B, P]`;
                derived from `input_ids` by `token_types` when left out), any name the model's `forward` takes; and
                generation arguments (`max_new_tokens`, `do_sample`, `temperature`, `top_p`, `eos_token_id`,
                `pad_token_id`, `suppress_tokens`, ...).

        Returns:
            `tuple[torch.LongTensor, torch.LongTensor, torch.BoolTensor]`: `sequences` `[B, P + R]` cut after the
            first EOS ([`process_sequences`]), their `attention_mask` and the `action_mask` `[B, R]`.
        """
        inputs = {k: v for k, v in kwargs.items() if self.inputs.is_input(k)}
        missing = self._missing_token_fields(inputs)
        if missing:
            inputs.update(self._derive_token_fields(input_ids, missing, None))
        media, token_fields = self.inputs.collect(inputs)
        generation_kwargs = {k: v for k, v in kwargs.items() if not self.inputs.is_input(k)}
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        model = self.hf_model
        generation_config = model.generation_config
        eos_token_id = generation_kwargs.setdefault("eos_token_id", generation_config.eos_token_id)
        pad_token_id = generation_kwargs.setdefault("pad_token_id", generation_config.pad_token_id)
        if eos_token_id is None:
            raise ValueError("No eos_token_id: pass one or set it in the model's generation_config.")
        if pad_token_id is None:
            pad_token_id = eos_token_id if isinstance(eos_token_id, int) else eos_token_id[0]
            generation_kwargs["pad_token_id"] = pad_token_id
        if suppress_media_tokens:
            suppressed = set(generation_kwargs.get("suppress_tokens") or ()) | set(self.media_token_ids)
            generation_kwargs["suppress_tokens"] = sorted(suppressed)
        sequences = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            **token_fields,
            **media,
            **generation_kwargs,
        )
        return process_sequences(sequences, input_ids.shape[1], eos_token_id, pad_token_id, attention_mask)

    def process_sequences(
        self,
        sequences: torch.Tensor,
        input_len: int,
        eos_token_id: int | list[int],
        pad_token_id: int,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """See [`process_sequences`]."""
        return process_sequences(sequences, input_len, eos_token_id, pad_token_id, attention_mask)

    # -------------------------------------------------------------------------------------------------- forward

    def forward(
        self,
        sequences: torch.LongTensor,
        num_actions: int | list[int] | None = None,
        attention_mask: torch.Tensor | None = None,
        return_output: bool = False,
        packed_seq_lens: list[int] | None = None,
        temperature: float = 1.0,
        return_entropy: bool = False,
        wrapped_model: nn.Module | None = None,
        **model_inputs: torch.Tensor | None,
    ):
        """
        Log-probabilities of the action tokens (the completion) under the current weights.

        Args:
            sequences (`torch.LongTensor` of shape `[B, L]`, or `[1, T]` packed):
                Prompt + completion tokens; padded batches are left-padded prompts followed by right-padded
                completions, so the actions are the last `num_actions` columns.
            num_actions (`int` or `list[int]`, *optional*):
                Padded: the completion width `R`. Packed: the number of action tokens ending each sample. `None`
                (padded only) scores every next token, `[B, L - 1]`.
            attention_mask (`torch.Tensor`, *optional*):
                Padded: `[B, L]`, 1 on real tokens. Packed: ignored when `packed_seq_lens` is given, else a
                sample-numbering mask `[[1, 1, 2, 2, 2, ...]]`.
            return_output (`bool`, *optional*, defaults to `False`):
                Also return the model output (`aux_loss` for MoE models that compute one). On the fused path (see
                `fused_log_probs`) its `logits` is an empty `[B, L, 0]` tensor: the full logits are never built.
            packed_seq_lens (`list[int]`, *optional*):
                Lengths of the packed samples (requires `packing_samples=True`; such an actor also takes ordinary
                padded batches, see [`rft_trl.models.inputs.resolve_packing`]).
            temperature (`float`, *optional*, defaults to `1.0`):
                The sampling temperature; log-probs are those of `softmax(logits / temperature)`, over the tokens
                outside `suppressed_token_ids`.
            return_entropy (`bool`, *optional*, defaults to `False`):
                Also return the entropy of each action's next-token distribution (same temperature).
            wrapped_model (`nn.Module`, *optional*):
                A distributed wrapper of `self.model` (DDP, a DeepSpeed engine) to run the forward through, so that
                its gradient hooks see the call; `self.model` by default.
            model_inputs:
                The processor's other outputs, any name the model's `forward` takes (or an alias of this face):
                media fields of all samples in order (`pixel_values`, `image_grid_thw`, `image_sizes`,
                `input_features`, ...) and per-token type fields (`mm_token_type_ids`, `token_type_ids`), either
                covering `sequences` or, padded, only the prompt `[B, L - num_actions]` (extended over the
                completion as the model's `generate` extends them). A per-token type field the model reads that is
                left out while media are given (the seed's call passes `pixel_values` and `image_grid_thw` alone) is
                derived from `sequences` by `token_types`. `None` values are ignored.

        Returns:
            `torch.Tensor` of shape `[B, num_actions]` (`[1, sum(num_actions)]` packed), float32 log-probs; or a
            tuple `(log_probs, entropy)`, `(log_probs, output)` or `(log_probs, entropy, output)` according to
            `return_entropy` and `return_output`.
        """
        missing = self._missing_token_fields(model_inputs)
        if missing:
            lengths = resolve_packing(self.packing_samples, packed_seq_lens, attention_mask, num_actions)
            model_inputs = {**model_inputs, **self._derive_token_fields(sequences, missing, lengths)}
        forward_inputs, packed_seq_lens = self.inputs.for_call(
            sequences, num_actions, attention_mask, packed_seq_lens, self.packing_samples, model_inputs
        )
        model = self.model if wrapped_model is None else wrapped_model
        head = self._fusable_head()
        if head is not None:
            with self._head_scoring(head, sequences, num_actions, packed_seq_lens, temperature) as scored:
                output = model(**forward_inputs)
            results = [scored["log_probs"], scored["entropy"]] if return_entropy else [scored["log_probs"]]
        else:
            output = model(**forward_inputs)
            logits, labels = select_action_positions(output.logits, sequences, num_actions, packed_seq_lens)
            scoring = {"temperature": temperature, "suppressed_ids": self.suppressed_token_ids or None}
            if return_entropy:
                # One pass over the logits for both (and one logits-sized gradient if both are differentiated).
                results = list(log_probs_and_entropy_from_logits(logits, labels, **scoring))
            else:
                results = [log_probs_from_logits(logits, labels, **scoring)]
        if return_output:
            results.append(output)
        return results[0] if len(results) == 1 else tuple(results)

    def _missing_token_fields(self, inputs: dict) -> list[str]:
        """The per-token type fields the model reads that `inputs` lacks while giving media (none without media)."""
        given = {
            self.inputs.aliases.get(name, name)
            for name, value in inputs.items()
            if value is not None and not (isinstance(value, torch.Tensor) and value.numel() == 0)
        }
        if all(is_token_field(name) for name in given):
            return []
        return [name for name in self.inputs.token_fields if name not in given]

    def _derive_token_fields(
        self, input_ids: torch.Tensor, names: list[str], packed_seq_lens: list[int] | None
    ) -> dict[str, torch.Tensor]:
        """
        The per-token type fields `names` rebuilt from `input_ids` by `token_types`, each sample on its own (a
        packed sample's spans never run into the next).

        Raises:
            `ValueError`: when the config declares no media placeholder to derive them from, when a field is not one
            of `DERIVABLE_TOKEN_FIELDS` (ERNIE-4.5-VL's `moe_mm_token_type_ids`), when a field does not mark
            media (the model's generate types a text token after a text prompt otherwise than text: PaliGemma's
            `token_type_ids` mark its prefix), or none of the tokens is one although media are given.
        """
        fields = " and ".join(map(repr, names))
        how = (
            f"pass the processor's {fields} for the prompt (it is extended over the completion as generate extends it)"
        )
        placeholders = sorted(self.token_types.placeholders)
        if not placeholders:
            raise ValueError(
                f"{self.inputs.model_name} reads {fields} along with media, and its config declares no media "
                f"placeholder token (`<kind>_token_id` or `<kind>_token_index`) to derive it from: {how}."
            )
        # `token_types` rebuilds the placeholder marks of `mm_token_type_ids` and Gemma 3's `token_type_ids`; another
        # field marks more (ERNIE-4.5-VL's `moe_mm_token_type_ids` also marks the media's boundary tokens).
        unknown = [name for name in names if name not in DERIVABLE_TOKEN_FIELDS]
        if unknown:
            raise ValueError(
                f"{self.inputs.model_name} reads {', '.join(map(repr, unknown))} along with media, which rft_trl "
                f"cannot derive from the tokens: {how}."
            )
        text = {name: input_ids.new_zeros(1, 1) for name in names}  # one text token
        not_media = [name for name, value in self.inputs.completion_token_types(text).items() if value.any()]
        if not_media:
            raise ValueError(
                f"{self.inputs.model_name}'s generate types a generated text token otherwise than text in "
                f"{', '.join(map(repr, not_media))}: the field does not mark media, so it cannot be derived from the "
                f"tokens: {how}."
            )
        packed = packed_seq_lens is not None and sum(packed_seq_lens) == input_ids.shape[1]
        pieces = input_ids.split(packed_seq_lens, dim=1) if packed else (input_ids,)
        types = torch.cat([self.token_types(piece) for piece in pieces], dim=1)  # like input_ids
        if not types.any():
            raise ValueError(
                f"Media were given to {self.inputs.model_name}, but none of the tokens is a media placeholder its "
                f"config declares (ids {placeholders}), so {fields} cannot be derived from them: {how}."
            )
        return dict.fromkeys(names, types)

    def _fusable_head(self) -> nn.Linear | None:
        """The output embedding when the fused path is exact for this model (see `fused_log_probs`), else None."""
        if not self.fused_log_probs:
            return None
        config = self.hf_model.config
        text_config = config.get_text_config()
        head = self.hf_model.get_output_embeddings()
        reason = None
        if config.model_type not in FUSED_LOG_PROB_MODEL_TYPES:
            reason = f"model type {config.model_type!r} is not among those verified (FUSED_LOG_PROB_MODEL_TYPES)"
        elif any(getattr(text_config, name, None) not in (None, 1, 1.0) for name in LOGIT_POST_PROCESSING_FIELDS):
            reason = "the config post-processes the logits after the head (softcapping or scaling)"
        elif type(head) is not nn.Linear:
            kind = f"{type(head).__module__}.{type(head).__qualname__}"
            reason = f"the output embedding is a {kind} (LoRA-adapted or quantized), not a torch.nn.Linear"
        elif head._forward_hooks or "forward" in vars(head):
            reason = "a forward hook or a replaced forward (accelerate's device hooks) acts on the output embedding"
        elif is_deepspeed_zero3_enabled():
            reason = "under ZeRO-3 the output embedding is partitioned outside its own forward"
        elif fsdp_enabled():
            reason = "under FSDP the output embedding may be sharded outside its own forward"
        if reason is None:
            return head
        if not self._unfused_reason_logged:
            logger.info("Action log-probs from the model's full logits (not fused): %s.", reason)
            self._unfused_reason_logged = True
        return None

    @contextmanager
    def _head_scoring(self, head: nn.Linear, sequences, num_actions, packed_seq_lens, temperature: float):
        """
        While the model runs, its output embedding scores the action tokens from the hidden states it is handed,
        in chunks, instead of returning logits; it returns an empty `[B, L, 0]` tensor (what `output.logits` then
        holds). Yields the dict that receives `log_probs` and `entropy`.
        """
        scored: dict[str, torch.Tensor] = {}

        def score(hidden_states: torch.Tensor) -> torch.Tensor:
            if scored:
                raise RuntimeError("The output embedding ran twice in one forward: fused log-probs cannot tell which.")
            if hidden_states.shape[:2] != sequences.shape[:2]:
                raise RuntimeError(
                    f"The output embedding got hidden states of shape {tuple(hidden_states.shape)} for sequences of "
                    f"shape {tuple(sequences.shape)}: pass fused_log_probs=False for this model."
                )
            hidden, labels = select_action_positions(hidden_states, sequences, num_actions, packed_seq_lens)
            scored["log_probs"], scored["entropy"] = log_probs_and_entropy_from_hidden(
                hidden.to(head.weight.dtype),
                head.weight,
                labels,
                bias=head.bias,
                temperature=temperature,
                chunk_size=self.log_prob_chunk_size,
                suppressed_ids=self.suppressed_token_ids or None,
            )
            # Empty, but computed from the scores: a wrapper that searches the autograd graph from the forward's
            # outputs for the parameters in use (DDP with find_unused_parameters) finds the head's and the
            # model's through it.
            anchor = scored["log_probs"].sum() + scored["entropy"].sum()
            return anchor * hidden_states.new_zeros(*hidden_states.shape[:-1], 0)

        # An instance attribute: nn.Module.__call__ still runs the head's hooks (cast_lm_head_to_fp32) around it.
        head.forward = score
        try:
            yield scored
        finally:
            del head.forward
        if not scored:
            raise RuntimeError(
                "The model never called its output embedding: pass fused_log_probs=False for this model."
            )

    # ------------------------------------------------------------------------------------------------ utilities

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """
        Recompute activations in backward instead of storing them.

        Args:
            gradient_checkpointing_kwargs (`dict`, *optional*, defaults to `{"use_reentrant": False}`):
                Passed to `torch.utils.checkpoint.checkpoint`.
        """
        enable_gradient_checkpointing(self.model, gradient_checkpointing_kwargs)

    def gradient_checkpointing_disable(self) -> None:
        """Store activations again (the default)."""
        self.hf_model.gradient_checkpointing_disable()

    def print_trainable_parameters(self) -> tuple[int, int]:
        """
        Log the trainable and total parameter counts.

        Returns:
            `tuple[int, int]`: `(trainable, total)`.
        """
        return log_trainable_parameters(self.model)
