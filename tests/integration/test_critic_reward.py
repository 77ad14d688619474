"""Critic (value head on the actor's backbone) and RewardModel (+ its TRL reward-function face), every modality."""

import copy
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from rft_trl.data.multimodal import extend_token_fields, is_token_field
from rft_trl.models.actor import Actor, process_sequences
from rft_trl.models.actor_al import ActorAL
from rft_trl.models.actor_vl import ActorVL
from rft_trl.models.critic import Critic
from rft_trl.models.packing import pack_sequences
from rft_trl.models.reward_model import RewardModel, RewardModelFunction
from rft_trl.testing import build_tiny_model, save_tiny_model

ACTOR_CLASSES = {"qwen2_vl": ActorVL, "qwen2_5_vl": ActorVL, "qwen2_audio": ActorAL, "qwen2": Actor}
SEQUENCE_FIELDS = ("input_ids", "attention_mask")
EOS, PAD = 402, 403


def _batch(kind, processing_class):
    """Three prompts for the multimodal models (media, text only, media), two for the text model."""
    if kind in ("qwen2_vl", "qwen2_5_vl"):
        messages = [
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}],
            [{"role": "user", "content": "Answer with one word."}],
            [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Two?"}]}],
        ]
        images = [Image.new("RGB", (56, 56), c) for c in ((255, 0, 0), (0, 255, 0))]
        images.append(Image.new("RGB", (28, 56), (0, 0, 255)))
        texts = [processing_class.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in messages]
        return processing_class(text=texts, images=images, return_tensors="pt", padding=True)
    if kind == "qwen2_audio":
        part = [{"type": "audio"}, {"type": "text", "text": "High or low?"}]
        messages = [[{"role": "user", "content": part}], [{"role": "user", "content": "Hi"}]]
        messages.append([{"role": "user", "content": part}])
        texts = [processing_class.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in messages]
        rng = np.random.default_rng(0)
        clips = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (16000, 8000)]
        return processing_class(text=texts, audio=clips, sampling_rate=16000, return_tensors="pt", padding=True)
    return processing_class(["The answer is red.", "What colour"], return_tensors="pt", padding=True)


def _rollout(batch, lengths):
    """Random completions of the given lengths, each ended by EOS, masks from process_sequences."""
    generator = torch.Generator().manual_seed(0)
    completions = torch.randint(30, 200, (len(lengths), max(lengths) + 1), generator=generator)
    for row, length in enumerate(lengths):
        completions[row, length] = EOS
    sequences = torch.cat([batch["input_ids"], completions], dim=1)
    return process_sequences(sequences, batch["input_ids"].shape[1], EOS, PAD, batch["attention_mask"])


def _setup(kind):
    model, processing_class = build_tiny_model(kind)
    batch = _batch(kind, processing_class)
    multimodal = {k: v for k, v in batch.items() if k not in SEQUENCE_FIELDS}
    lengths = [3, 5, 1][: batch["input_ids"].shape[0]]
    return model, processing_class, batch, multimodal, _rollout(batch, lengths)


def _value_head_from_lm_head(critic, actor, token):
    # With the value head set to row `token` of the LM head, a value is that token's logit at the same position.
    with torch.no_grad():
        critic.value_head.weight.copy_(actor.hf_model.get_output_embeddings().weight[token : token + 1])
        critic.value_head.bias.zero_()


# ----------------------------------------------------------------------------------------------------- critic


@pytest.mark.parametrize("kind", ["qwen2_vl", "qwen2_5_vl", "qwen2_audio", "qwen2"])
def test_critic_values_line_up_with_actor_logits_and_train(kind):
    model, _, _, multimodal, (sequences, attention_mask, action_mask) = _setup(kind)
    # The actor's full logits are the reference here: not the fused path, which never builds them.
    actor = ACTOR_CLASSES[kind](model, fused_log_probs=False)
    critic = Critic(actor)
    # A deep copy: the critic trains its own backbone.
    assert not {id(p) for p in critic.parameters()} & {id(p) for p in actor.parameters()}
    n = action_mask.shape[1]
    _value_head_from_lm_head(critic, actor, token=7)
    _, output = actor(sequences, n, attention_mask, return_output=True, **multimodal)
    values = critic(sequences, n, attention_mask, **multimodal)
    assert values.shape == action_mask.shape and values.dtype == torch.float32
    torch.testing.assert_close(values, output.logits[:, -n - 1 : -1, 7], atol=1e-5, rtol=0)
    # num_actions=None: the values of every position but the last.
    assert critic(sequences, None, attention_mask, **multimodal).shape == (sequences.shape[0], sequences.shape[1] - 1)

    critic.train()
    values, backbone_output = critic(sequences, n, attention_mask, return_output=True, **multimodal)
    assert backbone_output.last_hidden_state.shape[:2] == sequences.shape
    ((values - 1.0) ** 2 * action_mask).sum().backward()
    assert critic.value_head.weight.grad.abs().sum() > 0
    decoder_grads = [p.grad for p in critic.hf_backbone.get_decoder().parameters()]
    assert all(g is not None for g in decoder_grads)


@pytest.mark.parametrize("kind", ["qwen2_5_vl", "qwen2_audio"])
def test_critic_packed_equals_padded(kind):
    model, _, _, multimodal, (sequences, attention_mask, action_mask) = _setup(kind)
    critic = Critic(model)
    padded = critic(sequences, action_mask.shape[1], attention_mask, **multimodal)
    critic.packing_samples = True
    packed, lens = pack_sequences(sequences, attention_mask)
    # Per-token fields travel with the tokens: extended over the completions (0, text), then packed alike.
    multimodal = dict(multimodal)
    for name, value in multimodal.items():
        if is_token_field(name):
            full = extend_token_fields({name: value}, sequences.shape[1])[name]
            multimodal[name] = pack_sequences(full, attention_mask)[0]
    values = critic(packed, action_mask.sum(-1).tolist(), packed_seq_lens=lens, **multimodal)
    torch.testing.assert_close(values[0], padded[action_mask], atol=1e-5, rtol=0)


def test_critic_from_lora_actor_merges_the_adapter():
    model, _, _, multimodal, (sequences, attention_mask, action_mask) = _setup("qwen2_vl")
    actor = ActorVL(model, lora_rank=4, fused_log_probs=False)  # its full logits are the reference
    with torch.no_grad():
        for name, param in actor.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    critic = Critic(actor)
    assert not any("lora_" in name for name, _ in critic.named_parameters())
    n = action_mask.shape[1]
    _value_head_from_lm_head(critic, actor, token=11)
    _, output = actor(sequences, n, attention_mask, return_output=True, **multimodal)
    values = critic(sequences, n, attention_mask, **multimodal)
    torch.testing.assert_close(values, output.logits[:, -n - 1 : -1, 11], atol=1e-5, rtol=0)
    with actor.model.disable_adapter():
        _, base_output = actor(sequences, n, attention_mask, return_output=True, **multimodal)
    assert not torch.allclose(values, base_output.logits[:, -n - 1 : -1, 11], atol=1e-3)


def test_critic_lora_freezing_checkpointing_and_loading(tmp_path, caplog):
    model, _ = build_tiny_model("qwen2_vl")
    full = Critic(model, freeze_encoder=True)
    frozen = {name for name, p in full.named_parameters() if not p.requires_grad}
    assert frozen and all(".visual." in name for name in frozen)
    assert all(p.requires_grad for p in Critic(model).parameters())  # the default

    lora = Critic(model, lora_rank=2)
    trainable = [name for name, p in lora.named_parameters() if p.requires_grad]
    assert "value_head.weight" in trainable and "value_head.bias" in trainable
    assert all("lora_" in name or name.startswith("value_head.") for name in trainable)
    assert not any(".visual." in name for name in trainable)
    with caplog.at_level(logging.INFO, logger="rft_trl.models.utils"):
        trainable_count, total = lora.print_trainable_parameters()
    assert trainable_count == sum(p.numel() for p in lora.parameters() if p.requires_grad) < total
    assert "trainable params" in caplog.text
    lora.gradient_checkpointing_enable()
    assert lora.hf_backbone.is_gradient_checkpointing
    lora.gradient_checkpointing_disable()
    assert not lora.hf_backbone.is_gradient_checkpointing

    # From a path: the backbone is loaded without the LM head, weights as saved.
    path = save_tiny_model("qwen2_vl", str(tmp_path / "vl"))
    loaded = Critic(path)
    assert type(loaded.backbone).__name__ == "Qwen2VLModel"
    for name, param in model.base_model.state_dict().items():
        assert torch.equal(loaded.backbone.state_dict()[name], param), name


def test_critic_checks_fields_against_its_backbone():
    model, _, _, multimodal, (sequences, attention_mask, action_mask) = _setup("qwen2_audio")
    critic = Critic(build_tiny_model("qwen2")[0])
    assert "input_features" in Critic(model).inputs.accepted
    with pytest.raises(ValueError, match="Qwen2Model.forward takes no 'input_features'"):
        critic(sequences, action_mask.shape[1], attention_mask, **multimodal)


# ----------------------------------------------------------------------------------------------- reward model


def test_reward_model_matches_sequence_classification_at_last_token():
    model, tokenizer = build_tiny_model("qwen2_reward")
    reward_model = RewardModel(model)
    texts = ["The answer is red.", "blue", "What colour is the square?"]
    # Reference: each text alone, no padding; transformers' head reads the last token.
    alone = torch.cat([model(**tokenizer(text, return_tensors="pt")).logits[:, 0] for text in texts])
    for side in ("left", "right"):
        tokenizer.padding_side = side
        batch = tokenizer(texts, return_tensors="pt", padding=True)
        scores = reward_model(batch["input_ids"], batch["attention_mask"])
        assert scores.shape == (3,) and scores.dtype == torch.float32
        torch.testing.assert_close(scores, alone, atol=1e-5, rtol=0)
    tokenizer.padding_side = "left"
    scores, output = reward_model(batch["input_ids"], return_output=True)
    assert output.last_hidden_state.shape[:2] == batch["input_ids"].shape


@pytest.mark.parametrize("kind", ["qwen2_vl", "qwen2_audio"])
def test_multimodal_reward_model_new_head_padding_invariant(kind, caplog):
    model, processor, batch, multimodal, _ = _setup(kind)
    with caplog.at_level(logging.WARNING, logger="rft_trl.models.reward_model"):
        reward_model = RewardModel(model)
    assert "randomly initialised score head" in caplog.text
    assert ("pixel_values" if kind == "qwen2_vl" else "input_features") in reward_model.inputs.accepted
    scores = reward_model(batch["input_ids"], batch["attention_mask"], **multimodal)
    assert scores.shape == (3,)
    # The text-only middle row scored alone (no padding, no media) gives the same score.
    alone = processor(text=[processor.decode(batch["input_ids"][1][batch["attention_mask"][1].bool()])])
    alone_score = reward_model(torch.tensor(alone["input_ids"]))
    torch.testing.assert_close(scores[1:2], alone_score, atol=1e-5, rtol=0)
    scores.sum().backward()
    assert reward_model.score.weight.grad is not None


def test_reward_model_from_paths_and_head_check(tmp_path, caplog):
    text_path = save_tiny_model("qwen2_reward", str(tmp_path / "rm"))
    reference, _ = build_tiny_model("qwen2_reward")
    loaded = RewardModel(text_path)
    assert torch.equal(loaded.score.weight, reference.score.weight)
    vl_path = save_tiny_model("qwen2_vl", str(tmp_path / "vl"))
    with caplog.at_level(logging.WARNING, logger="rft_trl.models.reward_model"):
        vl = RewardModel(vl_path)
    assert type(vl.backbone).__name__ == "Qwen2VLModel" and "randomly initialised" in caplog.text
    two_labels = copy.deepcopy(reference)
    two_labels.score = torch.nn.Linear(64, 2, bias=False)
    with pytest.raises(ValueError, match="needs one output, this score head has 2"):
        RewardModel(two_labels)


# ---------------------------------------------------------------------------------- reward-function face


def test_reward_function_text_matches_forward_and_batches():
    model, tokenizer = build_tiny_model("qwen2_reward")
    reward_model = RewardModel(model)
    prompts = ["What colour is the square? ", "Is the tone high or low? ", "Say hi. "]
    completions = ["red", "The answer is low.", "hi"]
    reward = RewardModelFunction(reward_model, tokenizer, batch_size=2)
    scores = reward(prompts, completions, answer=["red", "low", "hi"], trainer_state=[None] * 3)
    assert isinstance(scores, list) and len(scores) == 3 and all(isinstance(s, float) for s in scores)
    expected = [
        reward_model(tokenizer(p + c, return_tensors="pt", add_special_tokens=False)["input_ids"]).item()
        for p, c in zip(prompts, completions)
    ]
    assert scores == pytest.approx(expected, abs=1e-5)
    assert RewardModelFunction(reward_model, tokenizer, batch_size=8)(prompts, completions) == pytest.approx(scores)
    assert reward.__name__ == "reward_model"
    # Conversational prompts go through the chat template, the completion as the assistant's turn.
    chat = [[{"role": "user", "content": p}] for p in prompts]
    chat_scores = reward(chat, [[{"role": "assistant", "content": c}] for c in completions])
    assert chat_scores == pytest.approx(reward(chat, completions))
    rendered = tokenizer.apply_chat_template(chat[0] + [{"role": "assistant", "content": "red"}], tokenize=False)
    first = reward_model(tokenizer(rendered, return_tensors="pt", add_special_tokens=False)["input_ids"]).item()
    assert chat_scores[0] == pytest.approx(first, abs=1e-5)


def test_reward_function_errors():
    model, tokenizer = build_tiny_model("qwen2_reward")
    reward = RewardModelFunction(RewardModel(model), tokenizer)
    with pytest.raises(ValueError, match="Got 2 prompts but 1 completions"):
        reward(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="need a processor, not a tokenizer"):
        reward(["a"], ["b"], image=[Image.new("RGB", (56, 56))])
    with pytest.raises(ValueError, match="plain-string prompt needs a plain-string completion"):
        reward(["a"], [[{"role": "assistant", "content": "b"}]])
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        RewardModelFunction(RewardModel(model), tokenizer, batch_size=0)


def test_reward_function_images_and_audio_columns():
    vl_model, vl_processor = build_tiny_model("qwen2_vl")
    reward_model = RewardModel(vl_model)
    prompts = [
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}],
        [{"role": "user", "content": "No image here."}],
        [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Two?"}]}],
    ]
    red, green, blue = (Image.new("RGB", (56, 56), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255)))
    completions = ["red", "ok", "green and blue"]
    reward = RewardModelFunction(reward_model, vl_processor, batch_size=2)
    scores = reward(prompts, completions, images=[[red], [], [green, blue]])
    # The same images as numpy arrays (a form the media loader accepts) give the same scores, in batches of one.
    as_arrays = [[np.asarray(red)], None, [np.asarray(green), np.asarray(blue)]]
    assert RewardModelFunction(reward_model, vl_processor, 1)(prompts, completions, images=as_arrays) == pytest.approx(
        scores, abs=1e-5
    )
    # Reference: processor + forward by hand.
    texts = [
        vl_processor.apply_chat_template(p + [{"role": "assistant", "content": c}], tokenize=False)
        for p, c in zip(prompts, completions)
    ]
    batch = vl_processor(text=texts, images=[red, green, blue], return_tensors="pt", padding=True)
    multimodal = {k: v for k, v in batch.items() if k not in SEQUENCE_FIELDS}
    expected = reward_model(batch["input_ids"], batch["attention_mask"], **multimodal)
    assert scores == pytest.approx(expected.tolist(), abs=1e-5)
    # One image per row through the "image" column.
    single = reward(prompts[:1], completions[:1], image=[red])
    assert single == pytest.approx(scores[:1], abs=1e-5)

    audio_model, audio_processor = build_tiny_model("qwen2_audio")
    audio_reward = RewardModelFunction(RewardModel(audio_model), audio_processor)
    part = [{"type": "audio"}, {"type": "text", "text": "High or low?"}]
    clip = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    audio_scores = audio_reward(
        [[{"role": "user", "content": part}], [{"role": "user", "content": "Hi"}]],
        ["high", "hello"],
        audio=[{"array": clip, "sampling_rate": 16000}, None],
    )
    assert len(audio_scores) == 2 and all(np.isfinite(audio_scores))
    # The dict form and the bare array at the processor's rate are the same clip.
    again = audio_reward([[{"role": "user", "content": part}]], ["high"], audio=[clip])
    assert again == pytest.approx(audio_scores[:1], abs=1e-5)
