"""The value model of PPO: a language-model backbone with a scalar value head, for every modality."""

from __future__ import annotations

import copy
import logging

import torch
from peft import PeftConfig, PeftModel
from torch import nn
from transformers import PreTrainedModel

from .actor import Actor
from .inputs import ModelInputs
from .packing import select_action_positions
from .utils import (
    apply_lora,
    enable_gradient_checkpointing,
    freeze_non_language_parameters,
    load_pretrained_model,
    log_trainable_parameters,
    unwrap_model,
)

logger = logging.getLogger(__name__)

__all__ = ["Critic", "backbone_of"]


def backbone_of(pretrain_or_model: str | nn.Module, **load_kwargs) -> PreTrainedModel:
    """
    The headless transformers model (`Qwen2Model`, `Qwen2VLModel`, `Qwen2AudioModel`, ...) to put a head on.

    Args:
        pretrain_or_model (`str` or `nn.Module`):
            A checkpoint path (any head in it is left out), an [`Actor`], or a transformers model (PEFT-wrapped or
            not). Models are deep-copied, so the head trains its own copy of the weights; LoRA adapters are merged
            into the copy.
        load_kwargs:
            Passed to [`load_pretrained_model`] (`use_flash_attention_2`, `bf16`, `ds_config`, `device_map`,
            `trust_remote_code`, `init_kwargs`).

    Returns:
        `PreTrainedModel`: the backbone.
    """
    if isinstance(pretrain_or_model, str):
        return load_pretrained_model(pretrain_or_model, head="backbone", **load_kwargs)
    model = pretrain_or_model.model if isinstance(pretrain_or_model, Actor) else pretrain_or_model
    if isinstance(model, PeftModel):
        backbone = copy.deepcopy(model).merge_and_unload().base_model
    else:
        backbone = copy.deepcopy(model.base_model)
    return load_pretrained_model(backbone, head="backbone", **load_kwargs)


class Critic(nn.Module):
    """
    A value model: the backbone of a (multimodal) language model and a linear value head, one value per token.

    The value of action `t` is read at the position whose logits predict token `t` (the state the action is taken
    in), so values line up with [`Actor.forward`]'s log-probs, padded or packed.

    Args:
        pretrain_or_model (`str` or `nn.Module`):
            A checkpoint path (policy or reward model), an [`Actor`] or a transformers model; models are deep-copied
            (see [`backbone_of`]).
        use_flash_attention_2 (`bool`, *optional*, defaults to `False`):
            Use flash-attention 2 when installed; otherwise sdpa, with a warning.
        bf16 (`bool`, *optional*, defaults to `False`):
            Load (or cast) the weights in bfloat16.
        lora_rank (`int`, *optional*, defaults to `0`):
            LoRA rank on the backbone; 0 trains the full backbone. The value head is always trained in full.
        lora_alpha (`int`, *optional*, defaults to `16`):
            LoRA scaling numerator.
        lora_dropout (`float`, *optional*, defaults to `0.0`):
            Dropout on the LoRA input.
        target_modules (`list[str]` or `str`, *optional*):
            Modules LoRA adapts; by default the language model's linear layers.
        ds_config (`dict`, *optional*):
            DeepSpeed config; with ZeRO-3 the weights are partitioned while loading.
        device_map (`dict` or `str`, *optional*):
            Passed to `from_pretrained`.
        packing_samples (`bool`, *optional*, defaults to `False`):
            Take packed batches in `forward`, as [`Actor`] does.
        peft_config (`peft.PeftConfig`, *optional*):
            A complete PEFT config, used instead of the `lora_*` arguments.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Passed to `from_pretrained`.
        freeze_encoder (`bool`, *optional*, defaults to `False`):
            In full fine-tuning, freeze the vision or audio tower and its projector.
        model_init_kwargs (`dict`, *optional*):
            More `from_pretrained` arguments when `pretrain_or_model` is a path (TRL's `model_init_kwargs`).
    """

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
        model_init_kwargs: dict | None = None,
    ):
        super().__init__()
        backbone = backbone_of(
            pretrain_or_model,
            use_flash_attention_2=use_flash_attention_2,
            bf16=bf16,
            ds_config=ds_config,
            device_map=device_map,
            trust_remote_code=trust_remote_code,
            init_kwargs=model_init_kwargs,
        )
        if backbone.get_output_embeddings() is not None:
            # transformers has no headless class for some families (Llama 4: AutoModel builds the language model with
            # its head), and their output carries logits, not the last hidden state the value head reads.
            raise ValueError(
                f"{type(backbone).__name__} ({backbone.config.model_type}) has no model without its language-model "
                "head in transformers, so a critic cannot read its last hidden state; train it with an advantage "
                "estimator other than 'gae'."
            )
        if freeze_encoder:
            freeze_non_language_parameters(backbone)
        hidden_size = backbone.config.get_text_config().hidden_size
        self.backbone = apply_lora(
            backbone, lora_rank, lora_alpha, lora_dropout, target_modules, peft_config, task_type="FEATURE_EXTRACTION"
        )
        self.inputs = ModelInputs(backbone)
        if packing_samples:
            self.inputs.check_packable()
        self.packing_samples = packing_samples
        parameter = next(backbone.parameters())
        self.value_head = nn.Linear(hidden_size, 1, device=parameter.device, dtype=parameter.dtype)  # [H] -> [1]
        # Small initial values keep the first value-loss gradients from swamping the backbone (OpenRLHF's choice).
        nn.init.normal_(self.value_head.weight, std=1 / (hidden_size + 1))
        nn.init.zeros_(self.value_head.bias)

    @property
    def hf_backbone(self) -> PreTrainedModel:
        """The transformers backbone (under the PEFT wrapper, if any)."""
        return unwrap_model(self.backbone)

    def forward(
        self,
        sequences: torch.LongTensor,
        num_actions: int | list[int] | None = None,
        attention_mask: torch.Tensor | None = None,
        return_output: bool = False,
        packed_seq_lens: list[int] | None = None,
        **model_inputs: torch.Tensor | None,
    ):
        """
        Values of the states in which the action tokens are taken.

        Args:
            sequences (`torch.LongTensor` of shape `[B, L]`, or `[1, T]` packed):
                Prompt + completion tokens, laid out as for [`Actor.forward`].
            num_actions (`int` or `list[int]`, *optional*):
                Padded: the completion width. Packed: the action count of each sample. `None` (padded only): the
                values of positions `0 .. L - 2`.
            attention_mask (`torch.Tensor`, *optional*):
                As for [`Actor.forward`].
            return_output (`bool`, *optional*, defaults to `False`):
                Also return the backbone output.
            packed_seq_lens (`list[int]`, *optional*):
                Lengths of the packed samples (requires `packing_samples=True`).
            model_inputs:
                Media and per-token type fields, as for [`Actor.forward`]; `None` values are ignored.

        Returns:
            `torch.Tensor` of shape `[B, num_actions]` (`[1, sum(num_actions)]` packed), float32 values; or
            `(values, output)` with `return_output=True`.
        """
        forward_inputs, packed_seq_lens = self.inputs.for_call(
            sequences, num_actions, attention_mask, packed_seq_lens, self.packing_samples, model_inputs
        )
        output = self.backbone(**forward_inputs)
        hidden, _ = select_action_positions(output.last_hidden_state, sequences, num_actions, packed_seq_lens)
        values = self.value_head(hidden).squeeze(-1).float()  # [B, A]
        return (values, output) if return_output else values

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Recompute backbone activations in backward; see [`Actor.gradient_checkpointing_enable`]."""
        enable_gradient_checkpointing(self.backbone, gradient_checkpointing_kwargs)

    def gradient_checkpointing_disable(self) -> None:
        """Store activations again (the default)."""
        self.hf_backbone.gradient_checkpointing_disable()

    def print_trainable_parameters(self) -> tuple[int, int]:
        """Log the trainable and total parameter counts and return `(trainable, total)`."""
        return log_trainable_parameters(self)
