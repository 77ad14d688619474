"""The one Actor (and its ActorVL / ActorAL faces) on the tiny offline Qwen2-VL, Qwen2.5-VL, Qwen2-Audio and Qwen2."""

import copy
import logging

import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel
from PIL import Image
from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

from rft_trl.data.multimodal import extend_token_fields, is_token_field
from rft_trl.models import utils as model_utils
from rft_trl.models.actor import Actor, process_sequences
from rft_trl.models.actor_al import ActorAL
from rft_trl.models.actor_vl import ActorVL
from rft_trl.models.packing import pack_sequences
from rft_trl.testing import MEDIA_PLACEHOLDER_TOKENS, build_tiny_model, save_tiny_model

EOS, PAD = 2, 0

# ------------------------------------------------------------------------------------------- process_sequences


@pytest.mark.parametrize(
    "response, expected_response, expected_action_mask",
    [
        # EOS in the middle: kept and scored, everything after becomes pad and is masked.
        ([5, 6, EOS, 7], [5, 6, EOS, PAD], [1, 1, 1, 0]),
        # No EOS (cut by max_new_tokens): the whole response is actions.
        ([5, 6, 7, 8], [5, 6, 7, 8], [1, 1, 1, 1]),
        # EOS as the first token: that token alone is the action.
        ([EOS, 5, 6, 7], [EOS, PAD, PAD, PAD], [1, 0, 0, 0]),
        # Several EOS: the first one counts.
        ([5, EOS, EOS, 6], [5, EOS, PAD, PAD], [1, 1, 0, 0]),
        # EOS as the last token: nothing to cut.
        ([5, 6, 7, EOS], [5, 6, 7, EOS], [1, 1, 1, 1]),
        # Generate's own padding after EOS stays padding.
        ([5, EOS, PAD, PAD], [5, EOS, PAD, PAD], [1, 1, 0, 0]),
    ],
)
def test_process_sequences_edge_cases(response, expected_response, expected_action_mask):
    prompt = [PAD, 9, 9]  # left-padded prompt of width 3
    sequences = torch.tensor([prompt + response])
    original = sequences.clone()
    out, attention_mask, action_mask = process_sequences(sequences, 3, EOS, PAD)
    assert out.tolist() == [prompt + expected_response]
    assert action_mask.dtype == torch.bool and action_mask.tolist() == [[bool(x) for x in expected_action_mask]]
    # Attention: prompt padding masked, then exactly the actions.
    assert attention_mask.tolist() == [[0, 1, 1] + expected_action_mask]
    assert torch.equal(sequences, original)  # the input is not modified


def test_process_sequences_batch_eos_list_and_prompt_mask():
    # Two EOS ids (e.g. <|im_end|> and <|endoftext|>): whichever comes first ends the response.
    sequences = torch.tensor([[4, 4, 5, 3, 6], [4, 4, 2, 5, 6]])
    out, attention_mask, action_mask = process_sequences(sequences, 2, [2, 3], PAD)
    assert out.tolist() == [[4, 4, 5, 3, PAD], [4, 4, 2, PAD, PAD]]
    assert action_mask.tolist() == [[True, True, False], [True, False, False]]
    # pad == eos (common for base models): the first EOS is still an action; given a prompt mask, a prompt token
    # equal to the pad id is kept as a real token.
    sequences = torch.tensor([[PAD, 7, PAD, 5, PAD, PAD]])
    prompt_mask = torch.tensor([[0, 1, 1]])
    out, attention_mask, action_mask = process_sequences(sequences, 3, PAD, PAD, attention_mask=prompt_mask)
    assert action_mask.tolist() == [[True, True, False]]
    assert attention_mask.tolist() == [[0, 1, 1, 1, 1, 0]]
    # Without the prompt mask, the in-prompt pad id is taken for padding.
    assert process_sequences(sequences, 3, PAD, PAD)[1].tolist() == [[0, 1, 0, 1, 1, 0]]


def test_process_sequences_errors():
    with pytest.raises(ValueError, match="outside the sequence width"):
        process_sequences(torch.zeros(1, 3, dtype=torch.long), 4, EOS, PAD)
    with pytest.raises(ValueError, match="must be the prompt's mask"):
        process_sequences(torch.zeros(1, 3, dtype=torch.long), 2, EOS, PAD, attention_mask=torch.ones(1, 3))


# ----------------------------------------------------------------------------------------------------- inputs


def _image(colour, size=(56, 56)):
    return Image.new("RGB", size, colour)


def _vision_batch(processor, with_video=False):
    """Three prompts: one image, text only, two images (of different sizes) [, and one video]."""
    messages = [
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the square?"}]}],
        [{"role": "user", "content": "Is the tone high or low?"}],
        [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Two?"}]}],
    ]
    images = [_image((255, 0, 0)), _image((0, 255, 0)), _image((0, 0, 255), (28, 56))]
    kwargs = {"images": images}
    if with_video:
        messages.append([{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Moving?"}]}])
        frames = np.random.default_rng(0).integers(0, 255, (4, 56, 56, 3), dtype=np.uint8)
        kwargs["videos"] = [frames]
    texts = [processor.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in messages]
    return processor(text=texts, return_tensors="pt", padding=True, **kwargs)


def _audio_batch(processor):
    """Three prompts: a 1 s clip, text only, a 0.5 s clip."""
    rng = np.random.default_rng(0)
    audio_part = [{"type": "audio"}, {"type": "text", "text": "Is the tone high or low?"}]
    messages = [
        [{"role": "user", "content": audio_part}],
        [{"role": "user", "content": "Answer with one word."}],
        [{"role": "user", "content": audio_part}],
    ]
    texts = [processor.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in messages]
    clips = [rng.standard_normal(16000).astype(np.float32) * 0.1, rng.standard_normal(8000).astype(np.float32) * 0.1]
    return processor(text=texts, audio=clips, sampling_rate=16000, return_tensors="pt", padding=True)


def _text_batch(tokenizer):
    return tokenizer(["The answer is red.", "What colour"], return_tensors="pt", padding=True)


ACTOR_CLASSES = {"qwen2_vl": ActorVL, "qwen2_5_vl": ActorVL, "qwen2_audio": ActorAL, "qwen2": Actor}


def _setup(kind, with_video=False, **actor_kwargs):
    model, processing_class = build_tiny_model(kind)
    if kind in ("qwen2_vl", "qwen2_5_vl"):
        batch = _vision_batch(processing_class, with_video)
    elif kind == "qwen2_audio":
        batch = _audio_batch(processing_class)
    else:
        batch = _text_batch(processing_class)
    # Everything the processor returned beyond the tokens: media fields and per-token type fields.
    multimodal = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
    return ACTOR_CLASSES[kind](model, **actor_kwargs), batch, multimodal


def batch_token_fields(fields):
    return {name: value for name, value in fields.items() if is_token_field(name)}


def _rollout(batch, completion_lengths, vocab_low=30, vocab_high=200, seed=0):
    """Prompts followed by random completions of the given lengths, each ended by EOS (402), as generate leaves
    them: right-padded after EOS. Returns process_sequences' (sequences, attention_mask, action_mask)."""
    generator = torch.Generator().manual_seed(seed)
    width = max(completion_lengths) + 1
    completions = torch.randint(vocab_low, vocab_high, (len(completion_lengths), width), generator=generator)
    for row, length in enumerate(completion_lengths):
        completions[row, length] = 402
    sequences = torch.cat([batch["input_ids"], completions], dim=1)
    return process_sequences(sequences, batch["input_ids"].shape[1], 402, 403, batch["attention_mask"])


# ------------------------------------------------------------------------------- generate, forward, backward


@pytest.mark.parametrize("kind", ["qwen2_vl", "qwen2_5_vl", "qwen2_audio", "qwen2"])
def test_generate_forward_backward(kind):
    actor, batch, multimodal = _setup(kind)
    torch.manual_seed(0)
    sequences, attention_mask, action_mask = actor.generate(
        batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=6, do_sample=True, **multimodal
    )
    prompt_len = batch["input_ids"].shape[1]
    assert sequences.shape[0] == batch["input_ids"].shape[0] and sequences.shape[1] <= prompt_len + 6
    assert torch.equal(sequences[:, :prompt_len], batch["input_ids"])
    # The masks are process_sequences' of what was generated (idempotent on its own output).
    again = process_sequences(sequences, prompt_len, 402, 403, batch["attention_mask"])
    assert torch.equal(again[0], sequences) and torch.equal(again[2], action_mask)
    assert torch.equal(attention_mask[:, prompt_len:].bool(), action_mask)

    actor.train()
    log_probs = actor(sequences, action_mask.shape[1], attention_mask, **multimodal)
    assert log_probs.shape == action_mask.shape and log_probs.dtype == torch.float32
    assert torch.isfinite(log_probs).all() and (log_probs <= 0).all()
    (-(log_probs * action_mask).sum()).backward()
    lm_head = actor.hf_model.get_output_embeddings().weight
    assert lm_head.grad is not None and lm_head.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["qwen2_vl", "qwen2_5_vl", "qwen2_audio", "qwen2"])
def test_forward_matches_generate_scores_on_left_padded_prompts(kind):
    # Greedy generation records the logits it chose from; the forward on prompt + completion must give the same
    # log-probs. For the VL models this checks the M-RoPE positions (image grids, left padding), for all the
    # left-padding positions and the media features.
    actor, batch, multimodal = _setup(kind)
    model = actor.hf_model
    ids, mask = batch["input_ids"], batch["attention_mask"]
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        **multimodal,
        max_new_tokens=5,
        min_new_tokens=5,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        suppress_tokens=actor.media_token_ids,
    )
    completion = out.sequences[:, ids.shape[1] :]
    expected = torch.stack(out.logits, 1).log_softmax(-1).gather(-1, completion.unsqueeze(-1)).squeeze(-1)
    full_mask = torch.cat([mask, torch.ones_like(completion)], dim=1)
    log_probs = actor(out.sequences, completion.shape[1], full_mask, **multimodal)
    torch.testing.assert_close(log_probs, expected, atol=1e-5, rtol=0)


def test_temperature_entropy_output_and_all_tokens():
    actor, batch, multimodal = _setup("qwen2_vl")
    sequences, attention_mask, action_mask = _rollout(batch, [3, 5, 1])
    num_actions = action_mask.shape[1]
    log_probs, entropy, output = actor(
        sequences, num_actions, attention_mask, temperature=0.7, return_entropy=True, return_output=True, **multimodal
    )
    # The fused path never builds the logits: output.logits is empty.
    assert output.logits.shape == (*sequences.shape, 0)
    # Naive reference from the model's own logits: log_softmax(logits / T) at the action tokens, -(p log p).sum.
    unfused = ActorVL(actor.model, fused_log_probs=False)
    unfused_log_probs, unfused_output = unfused(
        sequences, num_actions, attention_mask, temperature=0.7, return_output=True, **multimodal
    )
    log_p = (unfused_output.logits[:, -num_actions - 1 : -1].float() / 0.7).log_softmax(-1)
    torch.testing.assert_close(log_probs, log_p.gather(-1, sequences[:, -num_actions:, None]).squeeze(-1))
    torch.testing.assert_close(unfused_log_probs, log_probs)
    torch.testing.assert_close(entropy, -(log_p.exp() * log_p).sum(-1))
    # Each return flag alone.
    assert isinstance(actor(sequences, num_actions, attention_mask, **multimodal), torch.Tensor)
    lp, out = actor(sequences, num_actions, attention_mask, return_output=True, **multimodal)
    assert out.logits.shape[:2] == sequences.shape
    lp, ent = actor(sequences, num_actions, attention_mask, return_entropy=True, **multimodal)
    assert ent.shape == lp.shape == action_mask.shape
    # num_actions=None scores every next token; its last columns are the action log-probs.
    every = actor(sequences, None, attention_mask, **multimodal)
    assert every.shape == (3, sequences.shape[1] - 1)
    torch.testing.assert_close(every[:, -num_actions:], lp)


@pytest.mark.parametrize("kind", ["qwen2_5_vl", "qwen2_audio", "qwen2"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fused_log_probs_entropy_and_gradients_equal_the_full_logits(kind, temperature):
    # The fused path (hidden states -> log-probs in chunks of 4 tokens) against the model's own logits, gradients of
    # every parameter included (the head, tied to the input embedding in the tiny Qwen2, among them).
    actor, batch, multimodal = _setup(kind, log_prob_chunk_size=4)
    unfused = ACTOR_CLASSES[kind](actor.model, fused_log_probs=False)
    sequences, attention_mask, action_mask = _rollout(batch, [3, 5, 1][: len(batch["input_ids"])])
    weights = torch.linspace(-1.0, 1.0, action_mask.numel()).reshape(action_mask.shape)
    results = []
    for scorer in (actor, unfused):
        actor.model.zero_grad()
        log_probs, entropy = scorer(
            sequences, action_mask.shape[1], attention_mask, temperature=temperature, return_entropy=True, **multimodal
        )
        ((log_probs * weights).sum() + (entropy * weights.flip(-1)).sum()).backward()
        grads = {n: p.grad.clone() for n, p in actor.model.named_parameters() if p.grad is not None}
        results.append((log_probs.detach(), entropy.detach(), grads))
    (fused_lp, fused_ent, fused_grads), (full_lp, full_ent, full_grads) = results
    torch.testing.assert_close(fused_lp, full_lp, atol=1e-5, rtol=0)
    torch.testing.assert_close(fused_ent, full_ent, atol=1e-5, rtol=0)
    assert fused_grads.keys() == full_grads.keys() and fused_grads
    for name in full_grads:
        torch.testing.assert_close(fused_grads[name], full_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_fused_log_probs_fall_back_to_the_logits_where_they_would_not_be_exact(caplog):
    # LoRA on the head: the head is a LoRA layer, whose low-rank path a plain weight would miss.
    from peft import LoraConfig

    actor, batch, multimodal = _setup("qwen2", peft_config=LoraConfig(r=4, target_modules=["q_proj", "lm_head"]))
    sequences, attention_mask, action_mask = _rollout(batch, [3, 5, 1][: len(batch["input_ids"])])
    with caplog.at_level("INFO", logger="rft_trl.models.actor"):
        log_probs, output = actor(sequences, action_mask.shape[1], attention_mask, return_output=True)
    assert output.logits.shape[-1] == actor.hf_model.config.vocab_size
    assert "not fused): the output embedding is a peft.tuners.lora.layer.Linear" in caplog.text
    # A config with logit softcapping, or a model type not verified.
    actor, *_ = _setup("qwen2")
    actor.hf_model.config.final_logit_softcapping = 30.0
    assert actor._fusable_head() is None
    actor, *_ = _setup("qwen2")
    actor.hf_model.config.model_type = "my_family"
    assert actor._fusable_head() is None
    # A forward hook on the head (one that changes the logits would be skipped).
    actor, *_ = _setup("qwen2")
    actor.hf_model.get_output_embeddings().register_forward_hook(lambda module, inputs, output: output)
    assert actor._fusable_head() is None
    actor, *_ = _setup("qwen2")
    assert actor._fusable_head() is actor.hf_model.get_output_embeddings()


# ------------------------------------------------------------------------------------------ packed == padded


def _check_packed_equals_padded(kind, with_video=False, completion_lengths=(3, 5, 1)):
    actor, batch, multimodal = _setup(kind, with_video=with_video, packing_samples=True)
    padded_actor = ACTOR_CLASSES[kind](actor.model)
    sequences, attention_mask, action_mask = _rollout(batch, list(completion_lengths))
    padded = padded_actor(sequences, action_mask.shape[1], attention_mask, **multimodal)
    packed, lens = pack_sequences(sequences, attention_mask)
    num_actions = action_mask.sum(-1).tolist()
    # Per-token fields travel with the tokens: extended over the completions (0, text), then packed alike.
    multimodal = dict(multimodal)
    for name, value in extend_token_fields(batch_token_fields(multimodal), sequences.shape[1]).items():
        multimodal[name] = pack_sequences(value, attention_mask)[0]
    packed_log_probs = actor(packed, num_actions, packed_seq_lens=lens, **multimodal)
    assert packed_log_probs.shape == (1, sum(num_actions))
    # Action tokens of a padded row are its first sum(action_mask) completion columns.
    expected = padded[action_mask]
    torch.testing.assert_close(packed_log_probs[0], expected, atol=1e-5, rtol=0)
    # OpenRLHF's sample-numbering attention mask gives the same.
    sample_ids = torch.cat([torch.full((n,), i + 1) for i, n in enumerate(lens)]).unsqueeze(0)
    torch.testing.assert_close(actor(packed, num_actions, sample_ids, **multimodal), packed_log_probs)
    return actor, padded_actor


@pytest.mark.parametrize("kind", ["qwen2_vl", "qwen2_5_vl"])
def test_packed_equals_padded_images(kind):
    # Sample 0 holds one image, sample 1 none, sample 2 two images of different sizes.
    _check_packed_equals_padded(kind)


def test_packed_equals_padded_video_and_images():
    _check_packed_equals_padded("qwen2_5_vl", with_video=True, completion_lengths=(3, 5, 1, 4))


def test_packed_equals_padded_audio_and_text():
    _check_packed_equals_padded("qwen2_audio")
    _check_packed_equals_padded("qwen2", completion_lengths=(4, 2))


def test_packed_requires_packing_samples_and_list_num_actions():
    actor, batch, multimodal = _setup("qwen2")
    sequences, attention_mask, action_mask = _rollout(batch, [2, 3])
    packed, lens = pack_sequences(sequences, attention_mask)
    with pytest.raises(ValueError, match="packing_samples=False"):
        actor(packed, [1, 1], packed_seq_lens=lens)
    actor.packing_samples = True
    with pytest.raises(ValueError, match="num_actions as a list"):
        actor(packed, 2, packed_seq_lens=lens)
    with pytest.raises(ValueError, match="needs packed_seq_lens or a sample-numbering attention_mask"):
        actor(packed, [1, 1])
    with pytest.raises(ValueError, match="must have shape \\[1, sum\\(packed_seq_lens\\)\\]"):
        actor(packed, [1, 1], packed_seq_lens=[lens[0], lens[1] + 1])


# ---------------------------------------------------------------------------------------- media suppression


@pytest.mark.parametrize("kind", ["qwen2_5_vl", "qwen2_audio"])
def test_generate_never_emits_media_tokens(kind):
    actor, batch, multimodal = _setup(kind)
    config = actor.hf_model.config
    favoured = config.image_token_id if kind == "qwen2_5_vl" else config.audio_token_index

    def favour_placeholder(module, inputs, logits):
        # A policy that loves the placeholder: +100 on its logit at every step.
        logits = logits.clone()
        logits[..., favoured] += 100.0
        return logits

    actor.hf_model.lm_head.register_forward_hook(favour_placeholder)
    kwargs = {"max_new_tokens": 4, "do_sample": False, **multimodal}
    ids, mask = batch["input_ids"], batch["attention_mask"]
    unsuppressed = actor.generate(ids, attention_mask=mask, suppress_media_tokens=False, **kwargs)
    # Without suppression the greedy policy emits only the placeholder: the test can fail.
    assert (unsuppressed[0][:, batch["input_ids"].shape[1] :] == favoured).all()
    sequences, attention_mask, action_mask = actor.generate(ids, attention_mask=mask, **kwargs)
    completion = sequences[:, batch["input_ids"].shape[1] :]
    assert not torch.isin(completion, torch.tensor(actor.media_token_ids)).any()
    # ... and the rollout can be scored (a placeholder would break the media/token count check).
    assert torch.isfinite(actor(sequences, action_mask.shape[1], attention_mask, **multimodal)).all()


def test_media_token_ids_from_config_and_extra():
    model, processor = build_tiny_model("qwen2_audio")
    tokenizer = processor.tokenizer
    # The audio config records only <|AUDIO|>; the processor's begin/end tokens come in as extra ids.
    assert ActorAL(model).media_token_ids == [tokenizer.convert_tokens_to_ids("<|AUDIO|>")]
    extra = tokenizer.convert_tokens_to_ids(MEDIA_PLACEHOLDER_TOKENS)
    assert ActorAL(model, media_token_ids=extra).media_token_ids == sorted(extra)
    vl_model, vl_processor = build_tiny_model("qwen2_vl")
    vision = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    assert ActorVL(vl_model).media_token_ids == sorted(vl_processor.tokenizer.convert_tokens_to_ids(vision))
    assert Actor(build_tiny_model("qwen2")[0]).media_token_ids == []


# --------------------------------------------------------------------------------- multimodal field checking


def test_multimodal_fields_are_checked_per_modality_and_aliases_work():
    actor, batch, multimodal = _setup("qwen2_audio")
    sequences, attention_mask, action_mask = _rollout(batch, [2, 3, 1])
    n = action_mask.shape[1]
    reference = actor(sequences, n, attention_mask, **multimodal)
    # The seeds' audio_values is the processor's input_features.
    aliased = actor(
        sequences,
        n,
        attention_mask,
        audio_values=multimodal["input_features"],
        feature_attention_mask=multimodal["feature_attention_mask"],
    )
    torch.testing.assert_close(aliased, reference)
    with pytest.raises(ValueError, match="given twice"):
        actor(sequences, n, attention_mask, audio_values=multimodal["input_features"], **multimodal)
    # None-valued fields are ignored (callers may pass every field), a field the model does not take is refused.
    assert torch.equal(actor(sequences, n, attention_mask, pixel_values=None, **multimodal), reference)
    with pytest.raises(ValueError, match="Qwen2AudioForConditionalGeneration.forward takes no 'pixel_values'"):
        actor(sequences, n, attention_mask, pixel_values=torch.zeros(4, 1176), **multimodal)
    text_actor = Actor(build_tiny_model("qwen2")[0])
    with pytest.raises(ValueError, match="Qwen2ForCausalLM.forward takes no 'input_features'"):
        text_actor(sequences, n, attention_mask, **multimodal)


# ------------------------------------------------------------------------------------------- freezing, LoRA


def test_freeze_encoder_freezes_towers_only():
    vl_model, _ = build_tiny_model("qwen2_vl")
    frozen = {name for name, p in ActorVL(vl_model, freeze_encoder=True).named_parameters() if not p.requires_grad}
    assert frozen and all(".visual." in name for name in frozen)
    assert all(p.requires_grad for p in ActorVL(build_tiny_model("qwen2_vl")[0]).parameters())  # the default
    audio = ActorAL(build_tiny_model("qwen2_audio")[0], freeze_encoder=True)
    frozen = {name.split(".")[2] for name, p in audio.named_parameters() if not p.requires_grad}
    assert frozen == {"audio_tower", "multi_modal_projector"}
    trainable, total = audio.print_trainable_parameters()
    assert trainable == sum(p.numel() for p in audio.parameters() if p.requires_grad) < total


def _randomise_lora(model, seed=0):
    # LoRA starts as the identity (B = 0); make the adapter change the model.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)


def test_lora_adapts_language_model_only_and_disables_exactly(tmp_path):
    model, processor = build_tiny_model("qwen2_5_vl")
    base = ActorVL(copy.deepcopy(model))
    actor = ActorVL(model, lora_rank=4, lora_alpha=8)
    assert isinstance(actor.model, PeftModel)
    trainable = [name for name, p in actor.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    # Adapters on the language model's linear layers only: the vision tower's MLP shares the names gate/up/down_proj.
    assert not any(".visual." in name for name in trainable)
    assert any("mlp.gate_proj.lora_A" in name for name in trainable)

    _randomise_lora(actor.model)
    batch = _vision_batch(processor)
    multimodal = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
    sequences, attention_mask, action_mask = _rollout(batch, [3, 2, 4])
    n = action_mask.shape[1]
    base_log_probs = base(sequences, n, attention_mask, **multimodal)
    adapted = actor(sequences, n, attention_mask, **multimodal)
    assert not torch.allclose(adapted, base_log_probs)
    with actor.model.disable_adapter():
        assert torch.equal(actor(sequences, n, attention_mask, **multimodal), base_log_probs)

    # Generation runs through the PEFT wrapper with the media fields.
    rollout = actor.generate(
        batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=3, **multimodal
    )
    assert rollout[2].shape[1] <= 3

    # Saved adapter + a fresh base model reproduce the adapted policy.
    actor.model.save_pretrained(tmp_path / "adapter")
    reloaded = ActorVL(PeftModel.from_pretrained(copy.deepcopy(base.model), tmp_path / "adapter"))
    torch.testing.assert_close(reloaded(sequences, n, attention_mask, **multimodal), adapted, atol=1e-6, rtol=0)


def _adapted_layers(actor):
    # "...self_attn.q_proj.lora_A.default.weight" -> "q_proj"
    return {name.split(".")[-4] for name, p in actor.named_parameters() if p.requires_grad}


def test_peft_config_and_lora_argument_errors():
    model, _ = build_tiny_model("qwen2")
    actor = Actor(model, peft_config=LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    assert _adapted_layers(actor) == {"q_proj"}
    with pytest.raises(ValueError, match="either peft_config or lora_rank > 0"):
        Actor(build_tiny_model("qwen2")[0], lora_rank=2, peft_config=LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="lora_rank must be >= 0"):
        Actor(build_tiny_model("qwen2")[0], lora_rank=-1)
    # Explicit target modules are used as given.
    actor = Actor(build_tiny_model("qwen2")[0], lora_rank=2, target_modules=["v_proj"])
    assert _adapted_layers(actor) == {"v_proj"}


# ----------------------------------------------------------------------------- checkpointing, logging, MoE


@pytest.mark.parametrize("lora_rank, reentrant", [(0, False), (4, True)])
def test_gradient_checkpointing_gives_the_same_gradients(lora_rank, reentrant):
    actor, batch, multimodal = _setup("qwen2_vl", lora_rank=lora_rank)
    if lora_rank:
        _randomise_lora(actor.model)
    sequences, attention_mask, action_mask = _rollout(batch, [3, 2, 4])
    actor.train()

    def gradients():
        actor.zero_grad()
        actor(sequences, action_mask.shape[1], attention_mask, **multimodal).sum().backward()
        return {name: p.grad.clone() for name, p in actor.named_parameters() if p.requires_grad}

    reference = gradients()
    actor.gradient_checkpointing_enable({"use_reentrant": reentrant})
    assert actor.hf_model.is_gradient_checkpointing
    checkpointed = gradients()
    assert reference.keys() == checkpointed.keys()
    for name in reference:
        torch.testing.assert_close(checkpointed[name], reference[name], atol=1e-6, rtol=1e-5)
    actor.gradient_checkpointing_disable()
    assert not actor.hf_model.is_gradient_checkpointing


def test_print_trainable_parameters_logs_and_returns(caplog):
    actor = Actor(build_tiny_model("qwen2")[0], lora_rank=2)
    with caplog.at_level(logging.INFO, logger="rft_trl.models.utils"):
        trainable, total = actor.print_trainable_parameters()
    # Qwen2 layer: q (64->64), k and v (64->32), o (64->64), gate/up (64->128), down (128->64); LoRA rank 2 adds
    # 2 * (in + out) per linear: 2 * (128 + 96 + 96 + 128 + 192 + 192 + 192) = 2048 per layer, 2 layers.
    assert trainable == 4096
    assert total == sum(p.numel() for p in actor.parameters())
    assert f"trainable params: {trainable:,} || all params: {total:,}" in caplog.text


def test_moe_aux_loss_passes_through():
    config = Qwen2MoeConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_experts=4,
        num_experts_per_tok=2,
        output_router_logits=True,
    )
    torch.manual_seed(0)
    actor = Actor(Qwen2MoeForCausalLM(config))
    sequences = torch.randint(0, 64, (2, 7))
    log_probs, output = actor(sequences, 3, return_output=True)
    assert log_probs.shape == (2, 3)
    # Switch-style balance loss num_experts * sum_i(f_i * P_i), f_i the share of top-k slots and P_i the mean router
    # probability of expert i: an even router gives 4 * 4 * (2/4 * 1/4) = top_k = 2, and a random-init router is
    # nearly even.
    assert output.aux_loss.ndim == 0 and output.aux_loss.item() == pytest.approx(2.0, abs=0.2)
    (log_probs.sum() + output.aux_loss).backward()


# ---------------------------------------------------------------------------------------------- loading


@pytest.mark.parametrize(
    "kind, actor_class, model_class",
    [
        ("qwen2_vl", ActorVL, "Qwen2VLForConditionalGeneration"),
        ("qwen2_audio", ActorAL, "Qwen2AudioForConditionalGeneration"),
        ("qwen2", Actor, "Qwen2ForCausalLM"),
    ],
)
def test_load_from_path(tmp_path, kind, actor_class, model_class):
    path = save_tiny_model(kind, str(tmp_path / kind))
    actor = actor_class(path)
    assert type(actor.hf_model).__name__ == model_class
    reference, _ = build_tiny_model(kind)
    for (name, loaded), (_, built) in zip(actor.hf_model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(loaded, built), name
    bf16 = actor_class(path, bf16=True)
    assert next(bf16.parameters()).dtype == torch.bfloat16


def test_loading_arguments_reach_from_pretrained(tmp_path, monkeypatch):
    path = save_tiny_model("qwen2_vl", str(tmp_path / "vl"))
    calls = []
    real = model_utils.AutoModelForMultimodalLM

    class SpyAutoClass:
        @staticmethod
        def from_pretrained(name, **kwargs):
            calls.append(kwargs)
            return real.from_pretrained(name, **kwargs)

    monkeypatch.setattr(model_utils, "AutoModelForMultimodalLM", SpyAutoClass)
    actor = ActorVL(path, bf16=True, device_map={"": "cpu"}, trust_remote_code=True)
    # No attn_implementation: transformers picks the family's default (sdpa here; eager where a family lacks sdpa).
    assert actor.hf_model.config._attn_implementation == "sdpa"
    assert calls == [
        {
            "dtype": torch.bfloat16,
            "device_map": {"": "cpu"},
            "trust_remote_code": True,
            "use_safetensors": True,
        }
    ]


def test_flash_attention_falls_back_to_sdpa_with_a_warning(tmp_path, caplog):
    path = save_tiny_model("qwen2", str(tmp_path / "qwen2"))
    with caplog.at_level(logging.WARNING, logger="rft_trl.models.utils"):
        actor = Actor(path, use_flash_attention_2=True)
    assert actor.hf_model.config._attn_implementation == "sdpa"
    assert "flash-attn is not installed" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rft_trl.models.utils"):
        Actor(path)
    assert "flash-attn" not in caplog.text


def test_ds_config_and_safetensors_only(tmp_path, monkeypatch):
    path = save_tiny_model("qwen2", str(tmp_path / "qwen2"))
    # ZeRO-2 needs nothing at load time.
    assert Actor(path, ds_config={"zero_optimization": {"stage": 2}}).hf_model is not None
    monkeypatch.setattr(model_utils, "is_deepspeed_available", lambda: False)
    with pytest.raises(ImportError, match="ZeRO stage 3, which needs DeepSpeed"):
        Actor(path, ds_config={"zero_optimization": {"stage": 3}})
    # A checkpoint with pickle weights only is refused.
    model, tokenizer = build_tiny_model("qwen2")
    bin_path = tmp_path / "bin"
    bin_path.mkdir()
    model.config.save_pretrained(bin_path)
    torch.save(model.state_dict(), bin_path / "pytorch_model.bin")
    with pytest.raises(OSError, match="safetensors"):
        Actor(str(bin_path))


def test_a_packing_actor_also_takes_a_padded_batch():
    # The seed's actor built with packing_samples=True is still called with ordinary padded batches (evaluation,
    # reference passes): a 0/1 attention mask and an int num_actions mean padded.
    actor, batch, multimodal = _setup("qwen2_5_vl", packing_samples=True)
    padded_actor = ActorVL(actor.model)
    sequences, attention_mask, action_mask = _rollout(batch, [3, 5, 1][: len(batch["input_ids"])])
    expected = padded_actor(sequences, action_mask.shape[1], attention_mask, **multimodal)
    torch.testing.assert_close(actor(sequences, action_mask.shape[1], attention_mask, **multimodal), expected)


def test_seed_signatures_name_the_vision_and_audio_fields():
    import inspect

    vision = ["pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"]
    for method in (ActorVL.forward, ActorVL.generate, ActorAL.forward):
        assert all(name in inspect.signature(method).parameters for name in vision), method
    forward = list(inspect.signature(ActorAL.forward).parameters)
    # The seed's order: sequences, num_actions, attention_mask, the vision fields, return_output, packed_seq_lens,
    # audio_values.
    seed_order = ["sequences", "num_actions", "attention_mask", *vision, "return_output", "packed_seq_lens"]
    assert forward[1 : 1 + len(seed_order)] == seed_order
    assert list(inspect.signature(ActorVL.forward).parameters)[1 : 1 + len(seed_order)] == seed_order
    assert forward.index("audio_values") == forward.index("packed_seq_lens") + 1
    assert list(inspect.signature(ActorAL.generate).parameters)[:3] == ["self", "input_ids", "audio_values"]
