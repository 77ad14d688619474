"""rft_trl.data.multimodal: processor outputs sorted by shape, per-sample concat / split, and the processor probe."""

import numpy as np
import pytest
import torch
from PIL import Image

from rft_trl.data import PromptCollator, multimodal
from rft_trl.data.multimodal import (
    concat_multimodal_inputs,
    extend_token_fields,
    media_field_names,
    multimodal_shapes,
    probe_processor,
    repeat_multimodal_inputs,
    split_multimodal_inputs,
    split_processor_output,
)
from rft_trl.testing import build_tiny_model


@pytest.fixture(scope="module")
def vl_processor():
    return build_tiny_model("qwen2_5_vl")[1]


@pytest.fixture(scope="module")
def audio_processor():
    return build_tiny_model("qwen2_audio")[1]


def _image(height, width, seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8))


def _process(processor, samples, **media_kwargs):
    """Process `samples` (lists of media parts per prompt) in one call; media given flat, in prompt order."""
    texts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": kind} for kind in parts] + [{"type": "text", "text": "what?"}]}],
            add_generation_prompt=True,
            tokenize=False,
        )
        for parts in samples
    ]
    kwargs = {key: value for key, value in media_kwargs.items() if value}
    return processor(text=texts, return_tensors="pt", padding=True, **kwargs)


def media_of(output):
    return split_processor_output(output)[3]


def assert_dicts_equal(actual, expected):
    assert sorted(actual) == sorted(expected)
    for name in expected:
        assert actual[name].dtype == expected[name].dtype, name
        assert torch.equal(actual[name], expected[name]), name


# ---------------------------------------------------------------------------------------------- sorting outputs


def test_processor_output_is_sorted_by_shape(vl_processor):
    output = _process(vl_processor, [["image"], []], images=[_image(56, 56, 0)])
    input_ids, attention_mask, tokens, media = split_processor_output(output)
    assert torch.equal(input_ids, output["input_ids"]) and torch.equal(attention_mask, output["attention_mask"])
    # mm_token_type_ids has the shape of the tokens: it travels with them. The rest are media fields.
    assert list(tokens) == ["mm_token_type_ids"]
    assert sorted(media) == ["image_grid_thw", "pixel_values"]


def test_unknown_per_token_and_non_tensor_outputs_are_refused_by_name():
    ids = torch.ones(1, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="'cross_attention_mask' with one value per token .* not supported"):
        split_processor_output({"input_ids": ids, "cross_attention_mask": torch.ones(1, 5, dtype=torch.long)})
    with pytest.raises(ValueError, match="only knows how to extend integer"):
        split_processor_output({"input_ids": ids, "token_type_ids": torch.ones(1, 5)})
    with pytest.raises(ValueError, match="returned 'image_sizes' as list"):
        split_processor_output({"input_ids": ids, "image_sizes": [[56, 56]]})
    with pytest.raises(ValueError, match="returned 'scale' as Tensor"):
        split_processor_output({"input_ids": ids, "scale": torch.tensor(2.0)})


def test_a_media_field_shaped_like_the_tokens_stays_media_and_labels_are_dropped():
    # Gemma 3n's input_features_mask holds one value per mel frame: a clip with as many frames as the prompt has tokens
    # gives it the tokens' shape. Its feature extractor declares it, so it is media; PaliGemma's labels are dropped.
    ids = torch.ones(1, 5, dtype=torch.long)
    output = {"input_ids": ids, "input_features_mask": torch.ones(1, 5, dtype=torch.bool), "labels": ids}
    with pytest.raises(ValueError, match="'input_features_mask' with one value per token"):
        split_processor_output(output)  # control: by its shape alone it would be a per-token field
    _, _, tokens, media = split_processor_output(output, {"input_features_mask"})
    assert tokens == {} and list(media) == ["input_features_mask"]
    processor = build_tiny_model("gemma3n")[1]
    assert {"pixel_values", "input_features", "input_features_mask"} <= media_field_names(processor)


# --------------------------------------------------------------------------------------- concat / split, exact


@pytest.mark.parametrize("image_counts", [[2, 0, 1], [0, 0, 3], [1, 1, 1]])
def test_concat_of_samples_processed_alone_is_the_batched_processor_output(vl_processor, image_counts):
    # Images of three sizes, so each has its own grid (16, 8 and 4 patch rows) and a wrong split would show.
    images = [_image(h, w, seed) for seed, (h, w) in enumerate([(56, 56), (28, 56), (28, 28)])]
    samples = [["image"] * n for n in image_counts]
    batch = media_of(_process(vl_processor, samples, images=images))
    per_sample, start = [], 0
    for parts, count in zip(samples, image_counts):
        per_sample.append(media_of(_process(vl_processor, [parts], images=images[start : start + count])))
        start += count
    assert_dicts_equal(concat_multimodal_inputs(per_sample), batch)
    # ... and the batch splits back into exactly the samples (views, no copies).
    split = split_multimodal_inputs(batch, multimodal_shapes(per_sample))
    for piece, expected in zip(split, per_sample):
        assert_dicts_equal(piece, expected)
    if image_counts[2]:
        assert split[2]["pixel_values"].untyped_storage().data_ptr() == batch["pixel_values"].data_ptr()


def test_images_and_videos_round_trip(vl_processor):
    images = [_image(28, 56, 0), _image(56, 56, 1)]
    # A 4-frame video makes a temporal grid of 2, a 2-frame one of 1.
    videos = [[_image(28, 56, 10 + i) for i in range(4)], [_image(56, 28, 20 + i) for i in range(2)]]
    media = [{"videos": videos[:1]}, {"images": images[:1]}, {"images": images[1:], "videos": videos[1:]}]
    samples = [["video"], ["image"], ["image", "video"]]
    per_sample = [media_of(_process(vl_processor, [parts], **kwargs)) for parts, kwargs in zip(samples, media)]
    batch = media_of(_process(vl_processor, samples, images=images, videos=videos))
    assert batch["video_grid_thw"].tolist() == [[2, 2, 4], [1, 4, 2]]
    assert_dicts_equal(concat_multimodal_inputs(per_sample), batch)
    for piece, expected in zip(split_multimodal_inputs(batch, multimodal_shapes(per_sample)), per_sample):
        assert_dicts_equal(piece, expected)


def test_audio_round_trips(audio_processor):
    rng = np.random.default_rng(0)
    # Clips of 1 s and 2 s: feature_attention_mask differs per clip (100 vs 200 valid frames).
    clips = [0.1 * rng.standard_normal(16000 * seconds).astype(np.float32) for seconds in (1, 2, 1)]
    clip_counts = [1, 0, 2]
    samples = [["audio"] * n for n in clip_counts]
    batch = media_of(_process(audio_processor, samples, audio=clips, sampling_rate=16000))
    per_sample, start = [], 0
    for parts, count in zip(samples, clip_counts):
        kwargs = {"audio": clips[start : start + count], "sampling_rate": 16000} if count else {}
        per_sample.append(media_of(_process(audio_processor, [parts], **kwargs)))
        start += count
    assert_dicts_equal(concat_multimodal_inputs(per_sample), batch)
    for piece, expected in zip(split_multimodal_inputs(batch, multimodal_shapes(per_sample)), per_sample):
        assert_dicts_equal(piece, expected)


def test_trailing_sizes_pad_with_zeros_and_cut_back():
    # Patch counts per image differ (LLaVA-OneVision-like [n_images, n_patches, C, H, W]); rows stack, the other
    # dims pad with 0 to the largest, and the shapes recorded on concat cut them back.
    first = {"pixel_values": torch.ones(1, 3, 2, 2, 2), "image_sizes": torch.tensor([[40, 70]])}
    second = {"pixel_values": 2 * torch.ones(2, 5, 2, 2, 2), "image_sizes": torch.tensor([[56, 56], [28, 28]])}
    batch = concat_multimodal_inputs([first, {}, second])
    assert batch["pixel_values"].shape == (3, 5, 2, 2, 2)
    # Row 0 is the first sample's image: 3 real patches of ones, then 2 padding patches of zeros.
    assert batch["pixel_values"][0, :3].eq(1).all() and batch["pixel_values"][0, 3:].eq(0).all()
    shapes = multimodal_shapes([first, {}, second])
    assert shapes == {"pixel_values": [(1, 3, 2, 2, 2), None, (2, 5, 2, 2, 2)], "image_sizes": [(1, 2), None, (2, 2)]}
    split = split_multimodal_inputs(batch, shapes)
    assert split[1] == {}
    assert_dicts_equal(split[0], first)
    assert_dicts_equal(split[2], second)


def test_text_only_and_empty_fields():
    assert concat_multimodal_inputs([{}, {}]) == {}
    assert split_multimodal_inputs({}, multimodal_shapes([{}, {}, {}])) == []
    # Empty batch-first rows (samples without images) stay in the batch, so that the split is exact; the model call
    # leaves elementless fields out.
    empty = {"pixel_values": torch.zeros(1, 0, 3, 4, 4)}
    batch = concat_multimodal_inputs([empty, empty])
    assert batch["pixel_values"].shape == (2, 0, 3, 4, 4)
    assert_dicts_equal(split_multimodal_inputs(batch, multimodal_shapes([empty, empty]))[1], empty)


def test_layout_errors_name_the_field():
    with pytest.raises(ValueError, match="'pixel_values' differs across samples"):
        concat_multimodal_inputs([{"pixel_values": torch.ones(2, 3)}, {"pixel_values": torch.ones(2, 3, 1)}])
    with pytest.raises(ValueError, match="'pixel_values' differs across samples"):
        concat_multimodal_inputs([{"pixel_values": torch.ones(2, 3)}, {"pixel_values": torch.ones(2, 3).long()}])
    with pytest.raises(ValueError, match="'image_grid_thw' must be a tensor"):
        concat_multimodal_inputs([{"image_grid_thw": [[1, 2, 2]]}])
    batch = {"pixel_values": torch.ones(6, 3)}
    with pytest.raises(ValueError, match="'pixel_values' has 6 rows but the samples' shapes add up to 5"):
        split_multimodal_inputs(batch, {"pixel_values": [(2, 3), (3, 3)]})
    with pytest.raises(ValueError, match="no per-sample shapes"):
        split_multimodal_inputs(batch, {})
    with pytest.raises(ValueError, match="different numbers of samples"):
        split_multimodal_inputs(batch, {"pixel_values": [(6, 3)], "image_grid_thw": [None, None]})
    with pytest.raises(ValueError, match="does not fit the batch"):
        split_multimodal_inputs(batch, {"pixel_values": [(2, 3), (4, 4)]})


def test_repeat_interleaves_and_shares_storage():
    first = {"input_features": torch.randn(1, 2, 3), "feature_attention_mask": torch.ones(1, 3)}
    repeated = repeat_multimodal_inputs([first, {}], 3)
    assert [len(sample) for sample in repeated] == [2, 2, 2, 0, 0, 0]
    assert all(sample["input_features"].data_ptr() == first["input_features"].data_ptr() for sample in repeated[:3])
    # Each repeat is its own dict, so editing one leaves the others alone.
    assert len({id(sample) for sample in repeated}) == 6
    with pytest.raises(ValueError, match="n >= 1, got 0"):
        repeat_multimodal_inputs([first], 0)


def test_extend_token_fields():
    types = {"mm_token_type_ids": torch.tensor([[0, 1, 1], [1, 0, 0]])}
    # A completion's tokens are text: 0 after the prompt; left padding is 0 too.
    assert extend_token_fields(types, 5)["mm_token_type_ids"].tolist() == [[0, 1, 1, 0, 0], [1, 0, 0, 0, 0]]
    assert extend_token_fields(types, 4, side="left")["mm_token_type_ids"].tolist() == [[0, 0, 1, 1], [0, 1, 0, 0]]
    with pytest.raises(ValueError, match="has 3 columns, more than the 2 asked"):
        extend_token_fields(types, 2)


# -------------------------------------------------------------------------------------------------------- probe


def test_probe_finds_kinds_fields_token_types_and_media_tokens(vl_processor, audio_processor):
    layout = probe_processor(vl_processor)
    assert layout.media_kinds == ("image", "video")
    assert layout.fields == {
        "image": ("pixel_values", "image_grid_thw"),
        "video": ("pixel_values_videos", "video_grid_thw"),
    }
    assert layout.token_fields == ("mm_token_type_ids",) and layout.empty_rows == {}
    tokens = vl_processor.tokenizer.convert_tokens_to_ids(
        ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    )
    assert layout.media_token_ids == tuple(sorted(tokens))
    audio = probe_processor(audio_processor)
    assert audio.media_kinds == ("audio",) and audio.fields == {"audio": ("input_features", "feature_attention_mask")}
    assert audio.media_token_ids == tuple(
        sorted(audio_processor.tokenizer.convert_tokens_to_ids(["<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"]))
    )
    text = probe_processor(build_tiny_model("qwen2")[1])
    assert text.media_kinds == () and text.fields == {} and text.media_token_ids == ()


def test_a_kind_the_processor_fails_on_is_left_out_and_its_rows_refused_with_the_reason(vl_processor, monkeypatch):
    """A sub-processor the model's template cannot use (Gemma 4's audio beside an image-only model) must not stop
    image training, and a row with that kind must be refused with the processor's own error, not misprocessed."""
    real = multimodal.synthetic_media
    monkeypatch.setattr(
        multimodal, "synthetic_media", lambda kind, proc: "not a video" if kind == "video" else real(kind, proc)
    )
    layout = probe_processor(vl_processor)
    assert layout.media_kinds == ("image",) and "video" not in layout.fields
    assert "could not process a row with two videos" in layout.unusable["video"]
    collator = PromptCollator(vl_processor, layout=layout)
    frames = [Image.new("RGB", (32, 32))] * 2
    batch = collator(
        [{"prompt": "describe", "video": frames}, {"prompt": "describe", "image": Image.new("RGB", (32, 32))}]
    )
    assert len(batch) == 1 and [s.reason for s in batch.skipped] == ["unsupported_media"]
    assert "could not process a row with two videos" in batch.skipped[0].detail
    monkeypatch.setattr(multimodal, "synthetic_media", lambda kind, proc: "broken")
    with pytest.raises(ValueError, match="could not process a row with two images.*could not process a row with two"):
        probe_processor(vl_processor)


def test_a_processor_that_requires_audio_and_takes_one_per_text_is_probed_and_its_rows_collated():
    # Qwen3-ASR's __call__ requires `audio` (a text-only call raises TypeError) and, like AudioFlamingo3's, takes one
    # audio per text. The probe learns both from the processor; the collator then processes a prompt without audio
    # (audio=None) and one with a clip, and refuses a row with two clips by name, instead of crashing or refusing all.
    clip = np.sin(np.linspace(0, 800 * np.pi, 16000)).astype(np.float32)
    rows = [{"prompt": "what is it", "audios": [clip]}, {"prompt": "hello", "audios": None}]
    rows.append({"prompt": "and these", "audios": [clip, clip[:8000]]})
    for kind, required in (("qwen3_asr", ("audio",)), ("audioflamingo3", ())):
        processor = build_tiny_model(kind)[1]
        layout = probe_processor(processor)
        assert layout.media_kinds == ("audio",) and layout.unusable == {} and layout.text_only_error is None
        assert layout.fields == {"audio": ("input_features", "input_features_mask")} and layout.empty_rows == {}
        assert layout.required_arguments == required
        assert "takes one audio per prompt" in layout.one_per_prompt["audio"]
        batch = PromptCollator(processor, layout=layout)(rows)
        assert len(batch) == 2 and [s.reason for s in batch.skipped] == ["unsupported_media"]
        assert "row has 2 audios" in batch.skipped[0].detail and "must match 1:1" in batch.skipped[0].detail
        # The one clip's fields are exactly the processor's on that row alone.
        text = batch.prompt_texts[0]
        alone = media_of(processor(text=[text], audio=[clip], sampling_rate=16000, return_tensors="pt"))
        assert_dicts_equal(batch.sample_multimodal_inputs[0], alone)
        assert batch.sample_multimodal_inputs[1] == {}
        expected_media_tokens = {"qwen3_asr": ["<|audio_start|>", "<|audio_pad|>", "<|audio_end|>"]}
        expected_media_tokens["audioflamingo3"] = ["<sound>"]
        ids = processor.tokenizer.convert_tokens_to_ids(expected_media_tokens[kind])
        assert layout.media_token_ids == tuple(sorted(ids))


def test_a_processor_that_cannot_process_a_prompt_without_media_has_such_rows_refused(monkeypatch):
    # Were Qwen3-ASR's required `audio` not passed as None, its text-only call would raise: the probe must not fail
    # on it (the media tokens come from the tokenizer), and rows without audio are refused with the processor's error.
    monkeypatch.setattr(multimodal, "required_media_arguments", lambda processing_class: ())
    processor = build_tiny_model("qwen3_asr")[1]
    layout = probe_processor(processor)
    assert "could not process a prompt without media (TypeError" in layout.text_only_error
    assert layout.media_kinds == ("audio",) and len(layout.media_token_ids) == 3
    clip = np.sin(np.linspace(0, 800 * np.pi, 16000)).astype(np.float32)
    batch = PromptCollator(processor, layout=layout)(
        [{"prompt": "hi", "audios": None}, {"prompt": "x", "audio": clip}]
    )
    assert len(batch) == 1 and [s.reason for s in batch.skipped] == ["unsupported_input"]
    assert "without media" in batch.skipped[0].detail


def test_media_fields_batched_on_another_axis_are_refused_naming_the_axis():
    # MiniCPM-V 4.6 lays every image of a batch side by side on the last axis of one `pixel_values` (and its model
    # reads pixel_values[:1]); the probe finds the axis from two one-image prompts in one call and refuses the kind.
    processor = build_tiny_model("minicpmv4_6")[1]
    with pytest.raises(ValueError) as error:
        probe_processor(processor)
    assert "'pixel_values' (1, 3, 14, 896) alone, (1, 3, 14, 1792) for two: batched on axis 3 of 4" in str(error.value)
    assert "'pixel_values_videos'" in str(error.value) and "batched on axis 3 of 4" in str(error.value)
    # The batch axis is the first whose concatenation of the one-prompt field with itself is the two-prompt field.
    assert multimodal._batch_axis(torch.ones(2, 3), torch.ones(4, 3)) == 0
    assert multimodal._batch_axis(torch.ones(1, 3), torch.ones(1, 6)) == 1
    assert multimodal._batch_axis(torch.ones(1, 3), torch.zeros(2, 3)) is None
