"""The offline tiny builders: real architectures and processors, deterministic, save/load round trip."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    MODEL_FOR_CAUSAL_LM_MAPPING,
    MODEL_FOR_MULTIMODAL_LM_MAPPING,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoModelForMultimodalLM,
    AutoModelForPreTraining,
    AutoModelForSequenceClassification,
    AutoProcessor,
    ProcessorMixin,
)

from rft_trl.data import probe_processor
from rft_trl.data.multimodal import processor_media_kinds, required_media_arguments
from rft_trl.testing import (
    COLOURS,
    MEDIA_PLACEHOLDER_TOKENS,
    SPECIAL_TOKENS,
    TINY_MODEL_KINDS,
    build_tiny_model,
    build_tiny_qwen2_audio,
    build_tiny_qwen2_vl,
    build_tiny_tokenizer,
    load_processing_class,
    make_colour_dataset,
    make_grounding_dataset,
    make_pattern_dataset,
    make_pitch_dataset,
    make_task_dataset,
    make_text_dataset,
    make_video_dataset,
    save_tiny_model,
)
from rft_trl.testing.datasets import PITCH_QUESTION


def test_tokenizer_is_deterministic_and_carries_qwen_special_tokens():
    first, second = build_tiny_tokenizer(seed=3), build_tiny_tokenizer(seed=3)
    assert first.get_vocab() == second.get_vocab()
    for token in SPECIAL_TOKENS:
        ids = first.encode(token, add_special_tokens=False)
        assert len(ids) == 1, f"{token} must be a single token, got {ids}"
    assert first.eos_token == "<|im_end|>" and first.pad_token == "<|endoftext|>"
    # Byte-level: any text round-trips, including characters absent from the training corpus.
    text = "Zebra ünïcode 123"
    assert first.decode(first.encode(text, add_special_tokens=False)) == text


def test_chat_template_renders_every_media_part():
    tokenizer = build_tiny_tokenizer()
    messages = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "video"}, {"type": "audio"}, {"type": "text", "text": "hi"}],
        }
    ]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|><|vision_start|><|video_pad|><|vision_end|>"
        "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_unknown_kind_lists_the_kinds():
    with pytest.raises(ValueError, match="Unknown tiny model kind 'nope'; choose one of qwen2_vl, qwen2_5_vl"):
        build_tiny_model("nope")


@pytest.mark.parametrize("kind", TINY_MODEL_KINDS)
def test_builders_are_deterministic(kind):
    first, processing_class = build_tiny_model(kind, seed=1)
    second, _ = build_tiny_model(kind, seed=1)
    other, _ = build_tiny_model(kind, seed=2)
    assert first.state_dict().keys() == second.state_dict().keys()
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name
    assert any(not torch.equal(a, c) for a, c in zip(first.parameters(), other.parameters()))
    assert not first.training
    if first.can_generate():  # every kind but the reward model
        tokenizer = processing_class.tokenizer if isinstance(processing_class, ProcessorMixin) else processing_class
        assert (
            first.generation_config.eos_token_id
            == tokenizer.eos_token_id
            == tokenizer.convert_tokens_to_ids("<|im_end|>")
        )
        assert tokenizer.pad_token_id is not None
        assert first.generation_config.pad_token_id == tokenizer.pad_token_id


def _media_kinds(processing_class) -> list[str]:
    """
    The media a processor takes: those of its sub-processors that rft_trl's layout probe can use. A sub-processor
    kept as released beside a chat template and model without that kind (Gemma 4's video and audio ones) is left out,
    as the probe leaves it out of training (rows holding it are refused with the processor's error).
    """
    if not isinstance(processing_class, ProcessorMixin):
        return []
    try:
        return list(probe_processor(processing_class).media_kinds)
    except ValueError:
        # The probe refuses every kind of a processor that batches media on another axis than the first (MiniCPM-V
        # 4.6): it processes each of its sub-processors' kinds, which the builder's save and reload must keep.
        return list(processor_media_kinds(processing_class))


def _processor_inputs(processing_class, media_kind: str | None) -> dict:
    """One chat prompt with a part of `media_kind` (or text only), through the processor or tokenizer."""
    content = [{"type": media_kind}] if media_kind else []
    messages = [{"role": "user", "content": [*content, {"type": "text", "text": "What is it?"}]}]
    text = processing_class.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if not isinstance(processing_class, ProcessorMixin):
        return processing_class([text], return_tensors="pt")
    rng = np.random.default_rng(0)
    media = dict.fromkeys(required_media_arguments(processing_class))  # Qwen3-ASR requires `audio`, None without
    if media_kind in ("image", "video"):
        frames = [Image.fromarray(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)) for _ in range(4)]
        media = {"images": [frames[0]]} if media_kind == "image" else {"videos": [frames]}
    elif media_kind == "audio":
        attributes = processing_class.get_attributes()
        extractor = getattr(
            processing_class, "feature_extractor" if "feature_extractor" in attributes else "audio_processor"
        )
        rate = extractor.sampling_rate
        tone = np.sin(2 * np.pi * 440 * np.arange(rate) / rate).astype(np.float32)
        media = {"audio": [tone], "sampling_rate": rate}
    return processing_class(text=[text], **media, return_tensors="pt")


def _auto_class(model):
    """The auto class rft_trl loads such a checkpoint with."""
    if not model.can_generate():
        return AutoModelForSequenceClassification
    if type(model.config) in MODEL_FOR_MULTIMODAL_LM_MAPPING:
        return AutoModelForMultimodalLM
    # AudioFlamingo3's generating class is filed under pretraining only.
    return AutoModelForCausalLM if type(model.config) in MODEL_FOR_CAUSAL_LM_MAPPING else AutoModelForPreTraining


@pytest.mark.parametrize("kind", TINY_MODEL_KINDS)
def test_save_and_reload_give_the_same_processor_outputs_and_logits(tmp_path, kind):
    model, processing_class = build_tiny_model(kind)
    path = save_tiny_model(kind, str(tmp_path / kind))
    loaded_class = load_processing_class(path)
    loaded = _auto_class(model).from_pretrained(path).eval()
    assert type(loaded) is type(model)
    tokenizer, loaded_tokenizer = processing_class, loaded_class
    if isinstance(processing_class, ProcessorMixin):  # a text model's tokenizer reloads as its family's class
        assert type(loaded_class) is type(processing_class)
        assert loaded_class.chat_template == processing_class.chat_template
        tokenizer, loaded_tokenizer = processing_class.tokenizer, loaded_class.tokenizer
    assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab()
    assert loaded_tokenizer.chat_template == tokenizer.chat_template
    assert set(loaded_tokenizer.all_special_tokens) == set(tokenizer.all_special_tokens)
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys() and all(torch.equal(state[k], loaded_state[k]) for k in state)
    # Gemma 3n's audio embedder projects one padding row (a matrix-vector product), whose CPU kernel rounds by the
    # weight's memory alignment: equal weights at two addresses give 9e-8 apart there, 4e-7 in the logits.
    atol = 1e-6 if kind == "gemma3n" else 0
    # PaliGemma's processor needs an image in every call: no text-only prompt.
    for media_kind in [*([] if kind == "paligemma" else [None]), *_media_kinds(processing_class)]:
        inputs = _processor_inputs(processing_class, media_kind)
        loaded_inputs = _processor_inputs(loaded_class, media_kind)
        assert inputs.keys() == loaded_inputs.keys(), media_kind
        for key, value in inputs.items():
            assert torch.equal(value, loaded_inputs[key]), (media_kind, key)
        with torch.no_grad():
            torch.testing.assert_close(loaded(**loaded_inputs).logits, model(**inputs).logits, rtol=0, atol=atol)


def _vision_inputs(processor, media_type, media):
    messages = [{"role": "user", "content": [{"type": media_type}, {"type": "text", "text": "colour?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    key = "images" if media_type == "image" else "videos"
    return processor(text=[text, text], **{key: media}, return_tensors="pt", padding=True)


IMAGE_KINDS = [kind for kind in TINY_MODEL_KINDS if "image" in _media_kinds(build_tiny_model(kind)[1])]


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_images_reach_the_logits(kind):
    # Two different images must move the log-probs: a vision path left dead (Gemma 3's zero-initialised projector)
    # would make any image task unlearnable.
    model, processor = build_tiny_model(kind)
    rng = np.random.default_rng(0)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    logprobs = []
    for _ in range(2):
        image = Image.fromarray(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8))
        with torch.no_grad():
            logits = model(**processor(text=[text], images=[image], return_tensors="pt")).logits
        logprobs.append(logits[0, -1].log_softmax(-1))
    assert (logprobs[0] - logprobs[1]).abs().max() > 1e-3


@pytest.mark.parametrize("version", ["2", "2.5"])
@pytest.mark.parametrize("media_type", ["image", "video"])
def test_vl_generate_forward_backward(version, media_type):
    model, processor = build_tiny_qwen2_vl(version=version)
    dataset = make_colour_dataset(2) if media_type == "image" else make_video_dataset(2)
    media = [row["image"] for row in dataset] if media_type == "image" else [row["video"] for row in dataset]
    inputs = _vision_inputs(processor, media_type, media)
    # 56x56 images: 4x4 patches of 14 px merged 2x2 -> 4 placeholder tokens each.
    placeholder = processor.image_token_id if media_type == "image" else processor.video_token_id
    per_item = 4 if media_type == "image" else 4 * 2  # 4 frames / temporal patch 2 -> 2 temporal slices
    assert (inputs["input_ids"] == placeholder).sum(-1).tolist() == [per_item, per_item]
    sequences = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert sequences.shape == (2, inputs["input_ids"].shape[1] + 4)
    model.train()
    out = model(**inputs, labels=inputs["input_ids"])
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert model.lm_head.weight.grad.abs().sum() > 0
    vision_grads = [p.grad for p in model.model.visual.parameters() if p.grad is not None]
    assert vision_grads and any(g.abs().sum() > 0 for g in vision_grads)


def test_audio_generate_forward_backward():
    model, processor = build_tiny_qwen2_audio()
    rows = make_pitch_dataset(2)
    messages = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": PITCH_QUESTION}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    audio = [np.asarray(row["audio"]["array"], dtype=np.float32) for row in rows]
    inputs = processor(text=[text, text], audio=audio, sampling_rate=16000, return_tensors="pt", padding=True)
    # 1 s of a 2 s chunk: 100 mel frames -> conv stride 2 -> 50 -> pool 2 -> 25 audio tokens.
    assert inputs["input_features"].shape == (2, 32, 200)
    assert (inputs["input_ids"] == model.config.audio_token_id).sum(-1).tolist() == [25, 25]
    sequences = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert sequences.shape[1] == inputs["input_ids"].shape[1] + 4
    model.train()
    out = model(**inputs, labels=inputs["input_ids"])
    out.loss.backward()
    assert torch.isfinite(out.loss)
    tower_grads = [p.grad for p in model.model.audio_tower.parameters() if p.grad is not None]
    assert tower_grads and any(g.abs().sum() > 0 for g in tower_grads)


@pytest.mark.parametrize("kind", ["qwen2", "qwen2_reward"])
def test_text_generate_forward_backward(kind):
    model, tokenizer = build_tiny_model(kind)
    inputs = tokenizer(["Which word follows apple?", "hi"], return_tensors="pt", padding=True)
    model.train()
    if kind == "qwen2":
        out = model(**inputs, labels=inputs["input_ids"])
        loss = out.loss
        assert model.generate(**inputs, max_new_tokens=3, do_sample=False).shape[1] == inputs["input_ids"].shape[1] + 3
    else:
        out = model(**inputs)
        assert out.logits.shape == (2, 1)
        loss = out.logits.sum()
    loss.backward()
    assert torch.isfinite(loss)


@pytest.mark.parametrize(
    "kind,auto_class", [("qwen2_5_vl", AutoModelForImageTextToText), ("qwen2", AutoModelForCausalLM)]
)
def test_save_and_load_roundtrip(tmp_path, kind, auto_class):
    path = save_tiny_model(kind, str(tmp_path / kind))
    model, _ = build_tiny_model(kind)
    loaded = auto_class.from_pretrained(path)
    processing_class = AutoProcessor.from_pretrained(path)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    tokenizer = processing_class.tokenizer if kind == "qwen2_5_vl" else processing_class
    assert tokenizer.get_vocab() == build_tiny_tokenizer().get_vocab()
    assert tokenizer.chat_template == build_tiny_tokenizer().chat_template
    assert list((tmp_path / kind).glob("*.safetensors"))


def test_media_placeholders_are_known_special_tokens():
    tokenizer = build_tiny_tokenizer()
    assert set(MEDIA_PLACEHOLDER_TOKENS) <= set(SPECIAL_TOKENS)
    assert len({tokenizer.convert_tokens_to_ids(t) for t in MEDIA_PLACEHOLDER_TOKENS}) == len(MEDIA_PLACEHOLDER_TOKENS)


def test_datasets_balanced_and_deterministic():
    colour = make_colour_dataset(16, seed=5)
    assert sorted(colour["answer"]) == sorted(COLOURS * 2)
    again = make_colour_dataset(16, seed=5)
    assert np.array_equal(np.asarray(colour[0]["image"]), np.asarray(again[0]["image"]))
    # The square's colour is present in the image: the task is solvable from pixels.
    from rft_trl.testing.vocabulary import COLOUR_RGB

    row = colour[0]
    pixels = np.asarray(row["image"]).reshape(-1, 3)
    assert (pixels == np.array(COLOUR_RGB[row["answer"]])).all(-1).mean() > 0.2
    pitch = make_pitch_dataset(4)
    spectrum = np.abs(np.fft.rfft(np.asarray(pitch[0]["audio"]["array"])))
    peak_hz = np.argmax(spectrum) * 16000 / len(pitch[0]["audio"]["array"])
    assert abs(peak_hz - (2400 if pitch[0]["answer"] == "high" else 300)) < 5
    assert make_text_dataset(4)[0]["answer"]
    assert len(make_task_dataset("video", 4)) == 4
    # Grounding: the answer's colour fills part of the left half only; another colour part of the right half.
    grounding = make_task_dataset("grounding", 16, seed=3)
    assert sorted(grounding["answer"]) == sorted(COLOURS * 2)
    larger = make_grounding_dataset(8, seed=3, image_size=112)
    for row in [*grounding, *larger]:
        pixels = np.asarray(row["image"])
        half = pixels.shape[1] // 2
        left, right = pixels[:, :half].reshape(-1, 3), pixels[:, half:].reshape(-1, 3)
        answer = np.array(COLOUR_RGB[row["answer"]])
        assert (left == answer).all(-1).mean() > 0.1 and not (right == answer).all(-1).any()
        others = [c for c in COLOURS if c != row["answer"] and (right == np.array(COLOUR_RGB[c])).all(-1).mean() > 0.1]
        assert len(others) == 1
    assert np.asarray(larger[0]["image"]).shape == (112, 112, 3)
    # Pattern: stripes of 2 (high) or 7 (low) coloured pixels on black, either way round, any colour.
    pattern = make_task_dataset("pattern", 16, seed=3)
    assert sorted(pattern["answer"]) == ["high"] * 8 + ["low"] * 8
    colours, orientations = set(), set()
    for row in [*pattern, *make_pattern_dataset(8, seed=3, image_size=112)]:
        pixels = np.asarray(row["image"]).astype(int)
        striped = (pixels == 0).all(-1) | (pixels < 100).any(-1) | (pixels >= 140).any(-1)  # off the grey background
        ys, xs = np.flatnonzero(striped.any(1)), np.flatnonzero(striped.any(0))
        square = pixels[ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1]
        assert square.shape[0] == square.shape[1] >= pixels.shape[0] // 2
        lit = ~(square == 0).all(-1)
        horizontal = (lit == lit[:, :1]).all()
        line = lit[:, 0] if horizontal else lit[0]
        runs = np.diff(np.flatnonzero(np.diff(line.astype(int))))  # lengths of the inner stripes
        assert set(runs.tolist()) == ({2} if row["answer"] == "high" else {7}), (row["answer"], runs)
        colours.add(tuple(square[lit][0]))
        orientations.add(horizontal)
    assert len(colours) > 2 and orientations == {True, False}
    with pytest.raises(ValueError, match="Unknown synthetic task 'nope'"):
        make_task_dataset("nope", 4)
