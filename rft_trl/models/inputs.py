"""What a model's `forward` takes, and how rft_trl builds it: [`ModelInputs`] sorts the processor's fields against the
model's own `forward` signature (no list of field names), asks the model for its positions and its completion token
types, and lays a batch out padded or packed ([`resolve_packing`]).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

import torch
from transformers import (
    GenerationMixin,
    PreTrainedModel,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING,
    MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING,
    MODEL_FOR_MULTIMODAL_LM_MAPPING,
    MODEL_FOR_PRETRAINING_MAPPING,
)
from transformers.utils import ModelOutput

from ..data.multimodal import MEDIA_KINDS, ProcessorLayout, extend_token_fields, is_token_field
from .packing import packed_seq_lens_from_sample_ids, pad_packed
from .utils import _generates, check_supported


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
