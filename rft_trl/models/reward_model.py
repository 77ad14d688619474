"""A scalar reward model, and its face as a TRL-style reward function.

[`RewardModel`] is a backbone and a linear score head read at the last attended token of each sequence:

- from a sequence-classification checkpoint or model (`Qwen2ForSequenceClassification`, ...): its backbone and its
  `score` head;
- from a vision- or audio-language model, which transformers has no sequence-classification class for: its backbone
  and a new score head (trained by the caller, or loaded with `load_state_dict`).

[`RewardModelFunction`] makes one callable as `reward(prompts, completions, **columns) -> list[float]` (TRL's
reward-function contract): it renders the texts, loads the media columns, runs the processor and scores in batches.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, PreTrainedTokenizerBase, ProcessorMixin
from trl.data_utils import apply_chat_template

from ..data.media import image_bounds_from_processor, load_audio, load_image, load_video
from ..data.multimodal import media_field_names, split_processor_output
from .inputs import ModelInputs
from .utils import has_sequence_classification_head, load_pretrained_model, unwrap_model

logger = logging.getLogger(__name__)

# The dataset columns the reward model reads (with a processor); every other column is ignored.
_MEDIA_COLUMNS = ("image", "images", "video", "audio")

__all__ = ["RewardModel", "RewardModelFunction", "SequenceClassificationReward"]


class RewardModel(nn.Module):
    """
    A scalar reward model for text, image, video and audio inputs.

    Args:
        pretrain_or_model (`str` or `nn.Module`):
            A checkpoint path or a model. A sequence-classification model with one label keeps its `score` head;
            any other (multimodal) language model gets a new, randomly initialised score head, with a warning.
            Model instances are used as they are (not copied).
        use_flash_attention_2 (`bool`, *optional*, defaults to `False`):
            Use flash-attention 2 when installed; otherwise sdpa, with a warning.
        bf16 (`bool`, *optional*, defaults to `False`):
            Load (or cast) the weights in bfloat16.
        ds_config (`dict`, *optional*):
            DeepSpeed config; with ZeRO-3 the weights are partitioned while loading.
        device_map (`dict` or `str`, *optional*):
            Passed to `from_pretrained`.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Passed to `from_pretrained`.
    """

    def __init__(
        self,
        pretrain_or_model: str | nn.Module,
        use_flash_attention_2: bool = False,
        bf16: bool = False,
        ds_config: dict | None = None,
        device_map: dict | str | None = None,
        trust_remote_code: bool = False,
    ):
        super().__init__()
        load_kwargs = {
            "use_flash_attention_2": use_flash_attention_2,
            "bf16": bf16,
            "ds_config": ds_config,
            "device_map": device_map,
            "trust_remote_code": trust_remote_code,
        }
        if isinstance(pretrain_or_model, str):
            config = AutoConfig.from_pretrained(pretrain_or_model, trust_remote_code=trust_remote_code)
            if has_sequence_classification_head(config):
                model = load_pretrained_model(pretrain_or_model, head="sequence_classification", **load_kwargs)
            else:
                model = load_pretrained_model(pretrain_or_model, head="backbone", **load_kwargs)
        else:
            model = load_pretrained_model(unwrap_model(pretrain_or_model), **load_kwargs)

        if "score" in dict(model.named_children()):
            if model.score.out_features != 1:
                raise ValueError(f"A reward model needs one output, this score head has {model.score.out_features}.")
            self.backbone = model.base_model
            self.score = model.score
        else:
            self.backbone = model.base_model
            hidden_size = model.config.get_text_config().hidden_size
            parameter = next(model.parameters())
            self.score = nn.Linear(hidden_size, 1, bias=False, device=parameter.device, dtype=parameter.dtype)
            nn.init.normal_(self.score.weight, std=1 / (hidden_size + 1))
            logger.warning(
                "%s has no sequence-classification head: its reward model uses a new, randomly initialised score "
                "head. Train it or load its weights before scoring.",
                type(model).__name__,
            )
        self.inputs = ModelInputs(self.backbone)

    def forward(
        self,
        sequences: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        return_output: bool = False,
        **model_inputs: torch.Tensor | None,
    ):
        """
        The score of each sequence, read at its last attended token.

        Args:
            sequences (`torch.LongTensor` of shape `[B, L]`):
                Token ids, padded on either side.
            attention_mask (`torch.Tensor` of shape `[B, L]`, *optional*):
                1 on real tokens; all ones by default.
            return_output (`bool`, *optional*, defaults to `False`):
                Also return the backbone output.
            model_inputs:
                The processor's media and per-token type fields (any name the backbone's `forward` takes), of all
                samples in order; `None` values are ignored.

        Returns:
            `torch.Tensor` of shape `[B]`, float32 scores; or `(scores, output)`.
        """
        media, token_fields = self.inputs.collect(model_inputs)
        if attention_mask is None:
            attention_mask = torch.ones_like(sequences)
        output = self.backbone(**self.inputs.forward_inputs(sequences, attention_mask, None, media, token_fields))
        positions = torch.arange(sequences.shape[1], device=sequences.device)  # [L]
        last = (positions * attention_mask.bool()).argmax(-1)  # [B], the rightmost attended token
        hidden = output.last_hidden_state[torch.arange(sequences.shape[0], device=sequences.device), last]  # [B, H]
        scores = self.score(hidden).squeeze(-1).float()  # [B]
        return (scores, output) if return_output else scores


class RewardModelFunction:
    """
    A [`RewardModel`] behind TRL's reward-function contract, `reward(prompts, completions, **columns) -> list[float]`.

    Each prompt and completion is rendered into one text: conversational prompts (lists of chat messages, possibly
    with `{"type": "image" | "video" | "audio"}` parts) with the processor's chat template, the completion as the
    assistant's message; plain-string prompts are concatenated with the completion. Media come from the columns
    `image` (one per sample), `images` (a list per sample), `video` and `audio` (one per sample, or `None`), in any
    form `rft_trl.data.media` loads.

    Args:
        reward_model ([`RewardModel`]):
            The model; scored in eval mode, without gradients, on the device of its parameters.
        processing_class (`ProcessorMixin` or `PreTrainedTokenizerBase`):
            A processor for multimodal models, or a tokenizer for text models.
        batch_size (`int`, *optional*, defaults to `8`):
            Samples scored per forward.
    """

    def __init__(
        self,
        reward_model: RewardModel,
        processing_class: ProcessorMixin | PreTrainedTokenizerBase,
        batch_size: int = 8,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.reward_model = reward_model
        self.processing_class = processing_class
        self.batch_size = batch_size
        self.__name__ = "reward_model"

    def __call__(self, prompts: list, completions: list, **columns: Any) -> list[float]:
        """
        Score every `(prompt, completion)` pair.

        Args:
            prompts (`list[str]` or `list[list[dict]]`):
                Prompts, as strings or chat messages.
            completions (`list[str]` or `list[list[dict]]`):
                Completions, as strings or chat messages (the assistant's turn).
            columns:
                Other dataset columns, one value per sample; `image`, `images`, `video` and `audio` are read, the
                rest ignored.

        Returns:
            `list[float]`: one score per sample.
        """
        if len(prompts) != len(completions):
            raise ValueError(f"Got {len(prompts)} prompts but {len(completions)} completions.")
        scores: list[float] = []
        for start in range(0, len(prompts), self.batch_size):
            rows = range(start, min(start + self.batch_size, len(prompts)))
            texts = [self._render(prompts[i], completions[i]) for i in rows]
            media = {name: [columns[name][i] for i in rows] for name in _MEDIA_COLUMNS if name in columns}
            inputs = self._process(texts, media)
            scores.extend(self._score(inputs))
        return scores

    def _render(self, prompt: str | list[dict], completion: str | list[dict]) -> str:
        if isinstance(prompt, str):
            if not isinstance(completion, str):
                raise ValueError("A plain-string prompt needs a plain-string completion.")
            return prompt + completion
        if isinstance(completion, str):
            completion = [{"role": "assistant", "content": completion}]
        return self.processing_class.apply_chat_template(list(prompt) + list(completion), tokenize=False)

    def _process(self, texts: list[str], columns: dict[str, list]) -> dict:
        if not isinstance(self.processing_class, ProcessorMixin):
            media = [name for name in _MEDIA_COLUMNS if name in columns]
            if any(value is not None for name in media for value in columns[name]):
                raise ValueError(f"Media columns {media} need a processor, not a tokenizer.")
            return dict(self.processing_class(texts, return_tensors="pt", padding=True, add_special_tokens=False))
        media_kwargs = self._media(columns)
        return dict(self.processing_class(text=texts, return_tensors="pt", padding=True, **media_kwargs))

    def _media(self, columns: dict[str, list]) -> dict:
        processor = self.processing_class
        kwargs: dict = {}
        images = [value for value in columns.get("image", []) if value is not None]
        images += [value for values in columns.get("images", []) for value in values or []]
        videos = [value for value in columns.get("video", []) if value is not None]
        if images:
            bounds = image_bounds_from_processor(processor.image_processor)
            kwargs["images"] = [load_image(value, bounds) for value in images]
        if videos:
            bounds = image_bounds_from_processor(processor.video_processor)
            kwargs["videos"] = [load_video(value, bounds) for value in videos]
        clips = [value for value in columns.get("audio", []) if value is not None]
        if clips:
            sampling_rate = processor.feature_extractor.sampling_rate
            kwargs["audio"] = [load_audio(clip, sampling_rate) for clip in clips]
            kwargs["sampling_rate"] = sampling_rate
        return kwargs

    @torch.no_grad()
    def _score(self, inputs: dict) -> list[float]:
        model = self.reward_model
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        input_ids, attention_mask, token_fields, media = split_processor_output(
            inputs, media_field_names(self.processing_class)
        )
        fields = {name: value.to(device) for name, value in {**token_fields, **media}.items()}
        scores = model(input_ids.to(device), attention_mask.to(device), **fields)
        model.train(was_training)
        return scores.tolist()


class SequenceClassificationReward:
    """
    A Hugging Face sequence-classification model with one label behind the reward-function contract, scored as TRL's
    `GRPOTrainer` scores a reward model: each prompt and completion become one text (conversations through the
    tokenizer's chat template, with TRL's `apply_chat_template`; plain strings concatenated), right-padded and
    tokenized without special tokens, and the reward is the model's own logit (`logits[:, 0]`).

    This is what `reward_funcs` entries that are a model id, a local path or a sequence-classification model become
    in [`PPOTrainerVL`]; it reads only the texts (use [`RewardModelFunction`] to score with the samples' media).

    Args:
        model (`PreTrainedModel`): a `*ForSequenceClassification` model with `num_labels=1`; scored in eval mode,
            without gradients, on the device of its parameters.
        processing_class (`PreTrainedTokenizerBase`): its tokenizer; the model's `pad_token_id` is set to the
            tokenizer's (to the EOS token when it has none), as the model reads the last token before padding.
        chat_template_kwargs (`dict`, *optional*): extra keyword arguments of the chat template.
    """

    def __init__(
        self,
        model: nn.Module,
        processing_class: PreTrainedTokenizerBase,
        chat_template_kwargs: dict | None = None,
    ):
        num_labels = getattr(model.config, "num_labels", None)
        if num_labels != 1:
            raise ValueError(
                f"{type(model).__name__} has num_labels={num_labels}; a reward model needs one (load it with "
                "AutoModelForSequenceClassification.from_pretrained(..., num_labels=1))"
            )
        if processing_class.pad_token_id is None:
            processing_class.pad_token = processing_class.eos_token
        model.config.get_text_config().pad_token_id = processing_class.pad_token_id
        model.requires_grad_(False)
        self.model = model
        self.processing_class = processing_class
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        # TRL's name for a reward model: the last part of the id it was loaded from.
        self.__name__ = (getattr(model.config, "_name_or_path", "") or type(model).__name__).rstrip("/").split("/")[-1]

    def __call__(self, prompts: list, completions: list, **columns: Any) -> list[float]:
        """
        Score every `(prompt, completion)` pair.

        Args:
            prompts (`list[str]` or `list[list[dict]]`): prompts, as strings or chat messages.
            completions (`list[str]` or `list[list[dict]]`): completions, as strings or chat messages.
            columns: the other dataset columns; not read.

        Returns:
            `list[float]`: one score per sample.
        """
        if len(prompts) != len(completions):
            raise ValueError(f"Got {len(prompts)} prompts but {len(completions)} completions.")
        if not prompts:
            return []
        if isinstance(prompts[0], list):
            template_kwargs = self.chat_template_kwargs
            conversations = [{"messages": list(p) + list(c)} for p, c in zip(prompts, completions)]
            texts = [apply_chat_template(x, self.processing_class, **template_kwargs)["text"] for x in conversations]
        else:
            texts = [p + c for p, c in zip(prompts, completions)]
        inputs = self.processing_class(
            text=texts, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False
        )
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        with torch.inference_mode():
            logits = self.model(**inputs.to(device)).logits[:, 0]
        self.model.train(was_training)
        return logits.float().tolist()
