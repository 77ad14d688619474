"""The model conformance matrix: every family rft_trl supports, through the one code path, against its own forward.

One row per tiny family of `rft_trl.testing` (real architecture, real processor, random weights). For each:

- generation never emits the tokens media bring into a prompt, even when the policy prefers them;
- the actor's padded action log-probs equal the model's own forward on each sample alone (processor called on that
  sample, no position ids, the per-token types the model's own `generate` gave the completion, full-vocabulary
  log-softmax), to 1e-5, for every media kind the processor takes and for
  image + audio in one sample (Omni);
- packed log-probs equal the model's own forward on each sample alone to 1e-5, or packing is refused at construction
  (by name, or by `verify_model` with the measured difference);
- the critic's values equal its value head on its backbone's own forward of each sample alone, or the critic is
  refused by name (a family without a headless model);
- LoRA trains only the adapter, and with the adapter disabled the log-probs are exactly the base model's;
- two GRPO steps through `PPOTrainerVL`, padded and packed, change the parameters and log finite metrics.

A new family is a builder in `rft_trl.testing.families` and nothing else: it joins every row here.
"""

import copy
import math

import numpy as np
import pytest
import torch
from datasets import Dataset
from PIL import Image
from transformers import (
    GraniteSpeechConfig,
    GraniteSpeechForConditionalGeneration,
    Qwen3ASRProcessor,
    VoxtralConfig,
    VoxtralForConditionalGeneration,
    VoxtralProcessor,
)

from rft_trl import PPOTrainerVL
from rft_trl.data import PromptCollator, probe_processor, split_processor_output
from rft_trl.data.multimodal import concat_multimodal_inputs, media_field_names, repeat_multimodal_inputs
from rft_trl.models import Actor, Critic
from rft_trl.models.actor import LOGIT_POST_PROCESSING_FIELDS
from rft_trl.models.media_encodings import ENCODER_OUTPUT_MODEL_TYPES, MediaEncodings
from rft_trl.models.packing import pack_sequences
from rft_trl.models.verification import ModelVerificationError, generated_token_fields, verify_model
from rft_trl.testing import TINY_MODEL_KINDS, build_tiny_model, length_reward, tiny_config
from rft_trl.testing.families.common import family_tokenizer, whisper_feature_extractor

# The policy families: the reward model has no LM head, and the refused families have their own test.
KINDS = [kind for kind in TINY_MODEL_KINDS if kind not in ("qwen2_reward", "phi4_multimodal", "minicpmv4_6")]
COMPLETION_TOKENS = 5


def _image(colour, size=(56, 56)):
    pixels = np.full((size[1], size[0], 3), colour, dtype=np.uint8)
    pixels[size[1] // 4 : size[1] // 2, size[0] // 4 : size[0] // 2] = 255 - np.array(colour, dtype=np.uint8)
    return Image.fromarray(pixels)


def _video(seed):
    return [_image((20 * t + seed, 60, 120)) for t in range(4)]


def _clip(rate, seconds, frequency):
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def _row(processor, parts: dict[str, list], question="What is shown?") -> dict:
    """A dataset row whose prompt holds a chat part per media item, media in the plural columns."""
    content = [{"type": kind} for kind in ("image", "video", "audio") for _ in parts.get(kind, [])]
    row = {"prompt": [{"role": "user", "content": [*content, {"type": "text", "text": question}]}]}
    # Every row has every media column (None when empty): datasets.Dataset.from_list takes its columns from the
    # first row.
    for kind, column in (("image", "images"), ("video", "videos"), ("audio", "audios")):
        row[column] = parts.get(kind) or None
    return row


def batches_for(processor, layout) -> list[list[dict]]:
    """
    Rows covering every media kind the processor takes (its probed `layout`): one item, none (where the processor
    takes a prompt without media), two of different sizes (in one row, or in two rows for a kind the processor takes
    one of per prompt), and mixes.
    """
    batches = _batches_for(processor, layout)
    if not layout.media_kinds or layout.text_only_error is None:
        return batches
    # PaliGemma's processor needs an image in every call: its rows without media are left out.
    media_rows = [
        [row for row in rows if any(row[column] for column in ("images", "videos", "audios"))] for rows in batches
    ]
    return [rows for rows in media_rows if rows]


def _batches_for(processor, layout) -> list[list[dict]]:
    kinds = layout.media_kinds
    rate = processor.feature_extractor.sampling_rate if "audio" in kinds else 16000
    batches = []
    if "image" in kinds:
        two = [_image((200, 30, 30)), _image((30, 30, 200), (42, 70))]
        batches.append([_row(processor, {"image": [two[1]]}), _row(processor, {}), _row(processor, {"image": two})])
    if "video" in kinds:
        batches.append([_row(processor, {"video": [_video(0)]}), _row(processor, {})])
    if "audio" in kinds:
        clips = [_clip(rate, 1.0, 300.0), _clip(rate, 0.5, 2400.0)]
        two = [{"audio": clips[1:]}] if "audio" in layout.one_per_prompt else [{"audio": clips}]
        batches.append([_row(processor, parts) for parts in [{"audio": clips[:1]}, {}, *two]])
    if "image" in kinds and "audio" in kinds:
        mixed = {"image": [_image((30, 200, 30))], "audio": [_clip(rate, 1.0, 600.0)]}
        batches.append([_row(processor, mixed), _row(processor, {"audio": [_clip(rate, 0.5, 300.0)]})])
    if not kinds:
        batches.append([_row(processor, {}, "Say red."), _row(processor, {}, "Which word follows apple?")])
    return batches


def alone_inputs(processor, row) -> dict:
    """The processor on one row alone, called directly (the reference does not go through rft_trl's collator)."""
    text = processor.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
    kwargs = {}
    if row.get("images"):
        kwargs["images"] = [row["images"]]
    if row.get("videos"):
        kwargs["videos"] = row["videos"]
    if row.get("audios"):
        kwargs["audio"] = row["audios"]
        kwargs["sampling_rate"] = processor.feature_extractor.sampling_rate
    if isinstance(processor, Qwen3ASRProcessor) and not kwargs:
        kwargs["audio"] = None  # its processor requires `audio` in every call
    if kwargs:
        return processor(text=[text], return_tensors="pt", **kwargs)
    return processor(text=[text], return_tensors="pt")


def alone_with_completion(model, processor, row, completion):
    """
    The row alone followed by `completion`: the sequence, the per-token types the model's own `generate` gave it (made
    to generate `completion`, see `generated_token_fields`) and the media fields.
    """
    ids, mask, tokens, media = split_processor_output(alone_inputs(processor, row), media_field_names(processor))
    sequence = torch.cat([ids, completion[None]], dim=1)
    if tokens:
        tokens = generated_token_fields(
            model, {"input_ids": ids, "attention_mask": mask, **tokens, **media}, completion
        )
        # A field generate keeps at the prompt's width is read on the prompt only (ERNIE-4.5-VL's
        # moe_mm_token_type_ids: its later forwards get none, read as text): text (0) over the completion.
        tokens = {k: torch.nn.functional.pad(v, (0, sequence.shape[1] - v.shape[1])) for k, v in tokens.items()}
    return sequence, tokens, media


@torch.no_grad()
def own_forward_log_probs(model, processor, row, completion) -> torch.Tensor:
    """Log-probs of `completion` from the model's own forward on the row alone: no position ids, full softmax."""
    sequence, tokens, media = alone_with_completion(model, processor, row, completion)
    logits = model(input_ids=sequence, attention_mask=torch.ones_like(sequence), **tokens, **media).logits
    log_probs = logits[0, :-1].float().log_softmax(-1).gather(-1, sequence[0, 1:, None])[:, 0]
    return log_probs[-completion.shape[0] :]


def rollout(actor, collator, rows, **generation):
    batch = collator(rows)
    assert len(batch) == len(rows), batch.skipped
    torch.manual_seed(0)
    sequences, attention_mask, action_mask = actor.generate(
        batch.input_ids,
        attention_mask=batch.attention_mask,
        max_new_tokens=COMPLETION_TOKENS,
        do_sample=True,
        **batch.token_fields,
        **batch.multimodal_inputs,
        **generation,
    )
    fields = {**actor.inputs.extend_token_fields(batch.token_fields, sequences.shape[1]), **batch.multimodal_inputs}
    return batch, sequences, attention_mask, action_mask, fields


def setup(kind, **actor_kwargs):
    model, processor = build_tiny_model(kind)
    layout = probe_processor(processor)
    collator = PromptCollator(processor, layout=layout)
    actor = Actor(model, media_token_ids=list(layout.media_token_ids), **actor_kwargs)
    return model, processor, layout, collator, actor


# ------------------------------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("kind", KINDS)
def test_padded_log_probs_equal_the_models_own_forward(kind):
    model, processor, layout, collator, actor = setup(kind)
    # Every family of the matrix takes the fused path (log-probs from hidden states, no [tokens, vocabulary] logits),
    # but one whose config post-processes the logits after the head (Gemma 3n's softcapping).
    text_config = model.config.get_text_config()
    if any(getattr(text_config, name, None) not in (None, 1, 1.0) for name in LOGIT_POST_PROCESSING_FIELDS):
        assert actor._fusable_head() is None
    else:
        assert actor._fusable_head() is model.get_output_embeddings()
    for rows in batches_for(processor, layout):
        batch, sequences, attention_mask, action_mask, fields = rollout(actor, collator, rows)
        log_probs = actor(sequences, action_mask.shape[1], attention_mask, **fields)
        prompt_width = batch.input_ids.shape[1]
        for i, row in enumerate(rows):
            actions = int(action_mask[i].sum())
            completion = sequences[i, prompt_width : prompt_width + actions]
            expected = own_forward_log_probs(model, processor, row, completion)
            torch.testing.assert_close(log_probs[i, :actions], expected, atol=1e-5, rtol=0, msg=f"{kind} row {i}")


@pytest.mark.parametrize("kind", KINDS)
def test_encoder_outputs_computed_once_equal_the_pixels_or_step_aside(kind):
    # A rollout's no-grad passes hand the model each unique sample's encoder output (computed once, transformers'
    # `mm_encoder_outputs`) in place of the pixels: greedy generation and log-probs equal those on the pixels, and the
    # encoder ran once per sample with media over both passes; a family outside the verified set is named and left on
    # its pixels.
    model, processor, layout, collator, actor = setup(kind)
    cache = MediaEncodings(model)
    visual = {"image", "video"} & set(layout.media_kinds)
    if model.config.model_type not in ENCODER_OUTPUT_MODEL_TYPES:
        assert cache.reason is not None and model.config.model_type in cache.reason or not visual, cache.reason
        return
    assert cache.reason is None
    for rows in batches_for(processor, layout):
        batch = collator(rows)
        per_sample = repeat_multimodal_inputs(batch.sample_multimodal_inputs, 2)
        input_ids = batch.input_ids.repeat_interleave(2, dim=0)
        attention_mask = batch.attention_mask.repeat_interleave(2, dim=0)
        token_fields = {name: value.repeat_interleave(2, dim=0) for name, value in batch.token_fields.items()}
        calls = cache.encoder_calls
        results = []
        with torch.no_grad():
            for media in (concat_multimodal_inputs(per_sample), cache.model_inputs(per_sample, torch.device("cpu"))):
                sequences, mask, action_mask = actor.generate(
                    input_ids, attention_mask=attention_mask, max_new_tokens=COMPLETION_TOKENS, do_sample=False,
                    **token_fields, **media,
                )  # fmt: skip
                fields = {**actor.inputs.extend_token_fields(token_fields, sequences.shape[1]), **media}
                results.append((sequences, actor(sequences, action_mask.shape[1], mask, **fields)))
        torch.testing.assert_close(results[1][0], results[0][0], atol=0, rtol=0, msg=kind)
        torch.testing.assert_close(results[1][1], results[0][1], atol=1e-6, rtol=0, msg=kind)
        with_media = [
            row for row in rows if any(row.get(column) for column in ("images", "videos") if column[:-1] in visual)
        ]
        assert cache.encoder_calls - calls == len(with_media), kind
    cache.clear()


@pytest.mark.parametrize("kind", KINDS)
def test_packed_equals_each_sample_alone_or_is_refused(kind):
    model, processor, layout, collator, padded_actor = setup(kind)
    try:
        packed_actor = Actor(padded_actor.model, packing_samples=True)
    except ValueError as error:
        # Refused by name, with the fix; never silently wrong.
        assert type(model).__name__ in str(error) and "packing_samples=False" in str(error)
        return
    largest = 0.0
    for rows in batches_for(processor, layout):
        batch, sequences, attention_mask, action_mask, fields = rollout(padded_actor, collator, rows)
        packed, lengths = pack_sequences(sequences, attention_mask)
        for name in collator.layout.token_fields:
            fields[name] = pack_sequences(fields[name], attention_mask)[0]
        num_actions = action_mask.sum(-1).tolist()
        log_probs = packed_actor(packed, num_actions, packed_seq_lens=lengths, **fields)[0].split(num_actions)
        prompt_width = batch.input_ids.shape[1]
        for i, row in enumerate(rows):
            completion = sequences[i, prompt_width : prompt_width + num_actions[i]]
            expected = own_forward_log_probs(model, processor, row, completion)
            largest = max(largest, float((log_probs[i] - expected).abs().max()))
    if largest > 1e-5:
        # A family whose packed samples are not kept apart is refused when the trainer is built (verify_model).
        with pytest.raises(ModelVerificationError, match=rf"{type(model).__name__} gives packed log-probs"):
            verify_model(packed_actor, collator, packing=True)


@pytest.mark.parametrize("kind", KINDS)
def test_critic_values_equal_its_backbones_own_forward(kind):
    # The critic (PPO with GAE) reads its value head at the states the actions are taken in, on the same positions.
    model, processor, layout, collator, actor = setup(kind)
    try:
        critic = Critic(model)
    except ValueError as error:
        # A family without a headless model in transformers (Llama 4) is refused by name, with the fix.
        assert type(model).__name__ in str(error) and "other than 'gae'" in str(error)
        return
    rows = batches_for(processor, layout)[0]
    batch, sequences, attention_mask, action_mask, fields = rollout(actor, collator, rows)
    values = critic(sequences, action_mask.shape[1], attention_mask, **fields)
    prompt_width = batch.input_ids.shape[1]
    for i, row in enumerate(rows):
        actions = int(action_mask[i].sum())
        completion = sequences[i, prompt_width : prompt_width + actions]
        sequence, tokens, media = alone_with_completion(model, processor, row, completion)
        with torch.no_grad():
            hidden = critic.hf_backbone(
                input_ids=sequence, attention_mask=torch.ones_like(sequence), **tokens, **media
            ).last_hidden_state
            expected = critic.value_head(hidden[0, -actions - 1 : -1]).squeeze(-1)
        torch.testing.assert_close(values[i, :actions], expected, atol=1e-5, rtol=0, msg=f"{kind} row {i}")


# ----------------------------------------------------------------------------------------------- generation


@pytest.mark.parametrize("kind", KINDS)
def test_generation_never_emits_media_tokens(kind):
    model, processor, layout, collator, actor = setup(kind)
    if not layout.media_kinds:
        assert layout.media_token_ids == ()  # a text-only family has no media tokens to emit
        return
    media_ids = torch.tensor(layout.media_token_ids)

    def prefer_media_tokens(module, inputs, logits):
        logits = logits.clone()
        logits[..., media_ids] += 100.0
        return logits

    model.get_output_embeddings().register_forward_hook(prefer_media_tokens)
    rows = batches_for(processor, layout)[0]
    prompt_width = collator(rows).input_ids.shape[1]
    unsuppressed = rollout(actor, collator, rows, suppress_media_tokens=False)[1][:, prompt_width:]
    # Without suppression the policy emits nothing but media tokens: the check below can fail.
    assert torch.isin(unsuppressed, media_ids).all()
    _, sequences, attention_mask, action_mask, fields = rollout(actor, collator, rows)
    assert not torch.isin(sequences[:, prompt_width:], media_ids).any()
    # ... and the rollout can be scored (a stray placeholder would break the media/token count check).
    assert torch.isfinite(actor(sequences, action_mask.shape[1], attention_mask, **fields)).all()


# ---------------------------------------------------------------------------------------------------- LoRA


@pytest.mark.parametrize("kind", KINDS)
def test_lora_trains_the_adapter_only_and_disables_exactly(kind):
    model, processor, layout, collator, base = setup(kind)
    actor = Actor(copy.deepcopy(model), lora_rank=4, lora_alpha=8)
    trainable = [name for name, p in actor.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in actor.named_parameters():
            if "lora_B" in name:  # B starts at 0 (the identity): make the adapter change the model
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    _, sequences, attention_mask, action_mask, fields = rollout(base, collator, batches_for(processor, layout)[0])
    width = action_mask.shape[1]
    reference = base(sequences, width, attention_mask, **fields)
    assert not torch.allclose(actor(sequences, width, attention_mask, **fields), reference)
    with actor.model.disable_adapter():
        torch.testing.assert_close(actor(sequences, width, attention_mask, **fields), reference, atol=1e-6, rtol=0)


# -------------------------------------------------------------------------------------------------- training


def trainable_snapshot(module):
    return {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("kind", KINDS)
def test_two_grpo_steps_change_the_parameters(tmp_path, kind, packing):
    model, processor = build_tiny_model(kind)
    layout = probe_processor(processor)
    rows = [row for rows in batches_for(processor, layout) for row in rows]
    args = tiny_config(str(tmp_path / "out"), packing_samples=packing, freeze_encoder=False)
    try:
        trainer = PPOTrainerVL(
            model, [length_reward], args, train_dataset=Dataset.from_list(rows * 2), processing_class=processor
        )
    except ValueError as error:
        assert packing and "packing_samples=False" in str(error)
        return
    before = trainable_snapshot(trainer.model)
    trainer.train()
    after = trainable_snapshot(trainer.model)
    assert any(not torch.equal(before[name], after[name]) for name in before), "no trainable parameter changed"
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2
    for entry in logs:
        for key in ("reward", "train/policy_loss", "train/clipfrac"):
            assert math.isfinite(entry[key]), (key, entry)


# ------------------------------------------------------------------------------------------------- refusals


def test_refused_families_are_named_with_the_reason(tmp_path):
    model, processor = build_tiny_model("phi4_multimodal")
    with pytest.raises(ValueError, match=r"Phi4MultimodalForCausalLM \(phi4_multimodal\) is not supported .* causal"):
        Actor(model)
    with pytest.raises(ValueError, match="is not supported by rft_trl"):
        PPOTrainerVL(model, [length_reward], tiny_config(str(tmp_path)), processing_class=processor)


def test_a_processor_that_does_not_fit_the_model_is_refused_at_construction(tmp_path):
    model, _ = build_tiny_model("qwen2_5_vl")
    audio_processor = build_tiny_model("qwen2_audio")[1]
    with pytest.raises(
        ValueError,
        match=r"Qwen2AudioProcessor returns 'input_features' \(audio\), 'feature_attention_mask' \(audio\), which "
        r"Qwen2_5_VLForConditionalGeneration.forward does not take",
    ):
        PPOTrainerVL(model, [length_reward], tiny_config(str(tmp_path)), processing_class=audio_processor)


# Tiny text and audio towers for the refused speech families (refused before any weight or processor is used).
TINY_TEXT = {"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1}
TINY_TEXT |= {"num_attention_heads": 2, "num_key_value_heads": 1}


def tiny_voxtral():
    audio = {"num_mel_bins": 32, "intermediate_size": 32, "hidden_size": 16, "num_hidden_layers": 1}
    audio |= {"num_attention_heads": 2, "max_source_positions": 100}
    config = VoxtralConfig(audio_config=audio, text_config={"model_type": "llama", **TINY_TEXT}, audio_token_id=5)
    return VoxtralForConditionalGeneration(config)


def tiny_granite_speech():
    encoder = {"input_dim": 32, "num_layers": 1, "hidden_dim": 16, "feedforward_mult": 2, "num_heads": 2}
    encoder |= {"dim_head": 8, "output_dim": 8}
    projector = {"model_type": "blip_2_qformer", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}
    projector |= {"intermediate_size": 32, "encoder_hidden_size": 16}
    config = GraniteSpeechConfig(
        encoder_config=encoder,
        projector_config=projector,
        text_config={"model_type": "granite", **TINY_TEXT},
        audio_token_id=5,
    )
    return GraniteSpeechForConditionalGeneration(config)


def test_voxtral_is_refused_by_name_before_its_processor_is_probed(tmp_path):
    # Beside its own processor (which takes no audio in __call__) the trainer used to fail inside the layout probe
    # with the processor's error; the refusal names the model, the reason and what would make it work.
    model = tiny_voxtral()
    tokenizer = family_tokenizer(0, ["[AUDIO]"], audio="[AUDIO]")
    processor = VoxtralProcessor(feature_extractor=whisper_feature_extractor(), tokenizer=tokenizer)
    message = (
        r"VoxtralForConditionalGeneration \(voxtral\) is not supported by rft_trl: its processor takes audio only "
        r"through apply_chat_template .* a VoxtralProcessor.__call__ that takes audio would make it work"
    )
    with pytest.raises(ValueError, match=message):
        PPOTrainerVL(model, [length_reward], tiny_config(str(tmp_path / "out")), processing_class=processor)
    with pytest.raises(ValueError, match=message):
        Actor(model)


def test_granite_speech_is_refused_by_name_before_its_processor_is_loaded(tmp_path):
    # Its processor cannot be built without torchaudio: the model (or its path, whose config alone is read) is refused
    # before the trainer looks for one.
    model = tiny_granite_speech()
    message = (
        r"GraniteSpeechForConditionalGeneration \(granite_speech\) is not supported by rft_trl: its feature "
        r"extractor needs torchaudio .* a tiny builder in the model matrix with torchaudio installed would make it "
        r"work"
    )
    with pytest.raises(ValueError, match=message):
        PPOTrainerVL(model, [length_reward], tiny_config(str(tmp_path / "out")))
    with pytest.raises(ValueError, match=message):
        Actor(model)
    model.save_pretrained(tmp_path / "granite")
    with pytest.raises(ValueError, match=message):
        PPOTrainerVL(str(tmp_path / "granite"), [length_reward], tiny_config(str(tmp_path / "out")))


def test_a_processor_batching_media_on_another_axis_is_refused_at_construction(tmp_path):
    # MiniCPM-V 4.6's processor lays two prompts' images side by side on the last axis of one pixel_values, and its
    # model reads only pixel_values[:1]: samples concatenated on the first axis would lose every image but the first.
    model, processor = build_tiny_model("minicpmv4_6")
    with pytest.raises(
        ValueError,
        match=r"MiniCPMV4_6Processor batches the image fields of two prompts otherwise than one after the other on "
        r"the first axis \('pixel_values' \(1, 3, 14, 896\) alone, \(1, 3, 14, 1792\) for two: batched on axis 3 "
        r"of 4\)",
    ):
        PPOTrainerVL(model, [length_reward], tiny_config(str(tmp_path / "out")), processing_class=processor)
    # The refusal is warranted: the first-axis concatenation of two samples processed alone fails in the model.
    collator_rows = [
        _row(processor, {"image": [_image((200, 30, 30))]}),
        _row(processor, {"image": [_image((9, 9, 9))]}),
    ]
    alone = [split_processor_output(alone_inputs(processor, row)) for row in collator_rows]
    input_ids = torch.cat([ids for ids, *_ in alone])
    with pytest.raises(RuntimeError, match="must match the size of tensor"):
        model(input_ids=input_ids, **concat_multimodal_inputs([media for *_, media in alone]))
