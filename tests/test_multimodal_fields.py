"""rft_trl.data.multimodal: per-sample split / concat of processor outputs, checked against real processors."""

import numpy as np
import pytest
import torch
from PIL import Image

from rft_trl.data.multimodal import (
    MEDIA_KINDS,
    MODALITY_FIELDS,
    MULTIMODAL_FIELDS,
    concat_multimodal_inputs,
    count_items,
    count_items_per_sample,
    extract_multimodal_inputs,
    repeat_multimodal_inputs,
    select_fields,
    split_multimodal_inputs,
)
from rft_trl.testing import build_tiny_qwen2_audio, build_tiny_qwen2_vl


@pytest.fixture(scope="module")
def vl_processor():
    return build_tiny_qwen2_vl()[1]


@pytest.fixture(scope="module")
def audio_processor():
    return build_tiny_qwen2_audio()[1]


def _image(height, width, seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8))


def _prompt(processor, parts):
    content = [{"type": kind} for kind in parts] + [{"type": "text", "text": "what is it"}]
    return processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )


def _process(processor, samples, **media_kwargs):
    """Process `samples` (lists of media parts per prompt) in one batch; media given flat, in prompt order."""
    texts = [_prompt(processor, parts) for parts in samples]
    kwargs = {key: value for key, value in media_kwargs.items() if value}
    return processor(text=texts, return_tensors="pt", padding=True, **kwargs)


def _assert_dicts_equal(actual, expected):
    assert list(actual) == list(expected)
    for name in expected:
        assert actual[name].dtype == expected[name].dtype, name
        assert torch.equal(actual[name], expected[name]), name


# Images of three sizes, so each has its own grid (16, 8 and 4 patch rows) and a wrong split would show.
IMAGE_SIZES = [(56, 56), (28, 56), (28, 28)]


@pytest.mark.parametrize("image_counts", [[2, 0, 1], [0, 0, 3], [1, 1, 1]])
def test_split_images_equals_processing_each_sample_alone(vl_processor, image_counts):
    images = [_image(h, w, seed) for seed, (h, w) in enumerate(IMAGE_SIZES)]
    samples = [["image"] * n for n in image_counts]
    batch = extract_multimodal_inputs(_process(vl_processor, samples, images=images))
    per_sample = split_multimodal_inputs(batch, {"image": image_counts})

    start = 0
    for parts, count, piece in zip(samples, image_counts, per_sample):
        alone = extract_multimodal_inputs(_process(vl_processor, [parts], images=images[start : start + count]))
        start += count
        _assert_dicts_equal(piece, alone)
        assert count_items(piece) == {"image": count, "video": 0, "audio": 0}
    _assert_dicts_equal(concat_multimodal_inputs(per_sample), batch)
    assert count_items_per_sample(per_sample) == {"image": image_counts}


def test_split_images_and_videos_equals_processing_each_sample_alone(vl_processor):
    images = [_image(28, 56, 0), _image(56, 56, 1)]
    # A 4-frame video makes a temporal grid of 2, a 2-frame one of 1.
    videos = [[_image(28, 56, 10 + i) for i in range(4)], [_image(56, 28, 20 + i) for i in range(2)]]
    samples = [["video"], ["image"], ["image", "video"]]
    item_counts = {"image": [0, 1, 1], "video": [1, 0, 1]}
    batch = extract_multimodal_inputs(_process(vl_processor, samples, images=images, videos=videos))
    assert batch["video_grid_thw"].tolist() == [[2, 2, 4], [1, 4, 2]]
    per_sample = split_multimodal_inputs(batch, item_counts)

    media = [{"videos": videos[:1]}, {"images": images[:1]}, {"images": images[1:], "videos": videos[1:]}]
    for parts, kwargs, piece in zip(samples, media, per_sample):
        _assert_dicts_equal(piece, extract_multimodal_inputs(_process(vl_processor, [parts], **kwargs)))
    _assert_dicts_equal(concat_multimodal_inputs(per_sample), batch)
    assert count_items_per_sample(per_sample) == item_counts


def test_split_audio_equals_processing_each_sample_alone(audio_processor):
    rng = np.random.default_rng(0)
    # Clips of 1 s and 2 s: feature_attention_mask differs per clip (100 vs 200 valid frames).
    clips = [0.1 * rng.standard_normal(16000 * seconds).astype(np.float32) for seconds in (1, 2, 1)]
    clip_counts = [1, 0, 2]
    samples = [["audio"] * n for n in clip_counts]
    batch = extract_multimodal_inputs(_process(audio_processor, samples, audio=clips, sampling_rate=16000))
    assert list(batch) == ["input_features", "feature_attention_mask"]
    per_sample = split_multimodal_inputs(batch, {"audio": clip_counts})

    start = 0
    for parts, count, piece in zip(samples, clip_counts, per_sample):
        kwargs = {"audio": clips[start : start + count], "sampling_rate": 16000} if count else {}
        start += count
        _assert_dicts_equal(piece, extract_multimodal_inputs(_process(audio_processor, [parts], **kwargs)))
    _assert_dicts_equal(concat_multimodal_inputs(per_sample), batch)


def test_split_by_hand_with_grids():
    # Grids 1x2x2, 1x2x4, 1x2x2 give the images 4, 8 and 4 rows of pixel_values. With counts [2, 0, 1] the first
    # sample owns rows 0..11 (4 + 8), the second none, the third rows 12..15.
    grid = torch.tensor([[1, 2, 2], [1, 2, 4], [1, 2, 2]])
    pixel_values = torch.arange(16 * 2, dtype=torch.float32).reshape(16, 2)
    per_sample = split_multimodal_inputs({"pixel_values": pixel_values, "image_grid_thw": grid}, {"image": [2, 0, 1]})
    assert torch.equal(per_sample[0]["pixel_values"], pixel_values[:12])
    assert torch.equal(per_sample[0]["image_grid_thw"], grid[:2])
    assert per_sample[1] == {}
    assert torch.equal(per_sample[2]["pixel_values"], pixel_values[12:])
    # The pieces are views of the batch tensor.
    assert per_sample[2]["pixel_values"].data_ptr() == pixel_values[12:].data_ptr()


def test_text_only_split_and_concat():
    assert split_multimodal_inputs({}, {}, num_samples=3) == [{}, {}, {}]
    assert concat_multimodal_inputs([{}, {}]) == {}
    assert count_items_per_sample([{}, {}]) == {}
    assert count_items({}) == dict.fromkeys(MEDIA_KINDS, 0)


def test_concat_drops_empty_fields():
    empty = {"pixel_values": torch.zeros(0, 4), "image_grid_thw": torch.zeros(0, 3, dtype=torch.long)}
    one = {"pixel_values": torch.ones(4, 4), "image_grid_thw": torch.tensor([[1, 2, 2]])}
    assert concat_multimodal_inputs([empty, empty]) == {}
    _assert_dicts_equal(concat_multimodal_inputs([empty, one]), one)


def test_repeat_interleaves_and_shares_storage():
    first = {"input_features": torch.randn(1, 2, 3), "feature_attention_mask": torch.ones(1, 3)}
    second = {}
    repeated = repeat_multimodal_inputs([first, second], 3)
    assert [count_items(sample)["audio"] for sample in repeated] == [1, 1, 1, 0, 0, 0]
    assert all(sample["input_features"].data_ptr() == first["input_features"].data_ptr() for sample in repeated[:3])
    # Each repeat is its own dict, so editing one leaves the others alone.
    assert len({id(sample) for sample in repeated}) == 6
    with pytest.raises(ValueError, match="n >= 1, got 0"):
        repeat_multimodal_inputs([first], 0)


def test_select_fields_per_modality():
    vision = {"pixel_values": torch.ones(4, 2), "image_grid_thw": torch.tensor([[1, 2, 2]])}
    _assert_dicts_equal(select_fields(vision, "vision"), vision)
    with pytest.raises(ValueError, match="'audio' model does not accept the multimodal fields pixel_values, image"):
        select_fields(vision, "audio")
    with pytest.raises(ValueError, match="'text' model does not accept .* it accepts none"):
        select_fields(vision, "text")
    # Fields without rows carry no media: dropped, not rejected.
    assert select_fields({"pixel_values": torch.zeros(0, 2)}, "text") == {}
    with pytest.raises(ValueError, match="Unknown modality 'smell'"):
        select_fields(vision, "smell")


def test_table_is_consistent():
    for name, spec in MULTIMODAL_FIELDS.items():
        assert spec.media in MEDIA_KINDS
        assert spec.grid is None or MULTIMODAL_FIELDS[spec.grid].grid is None, name
    accepted = [name for names in MODALITY_FIELDS.values() for name in names]
    assert sorted(accepted) == sorted(MULTIMODAL_FIELDS)


def test_extract_leaves_sequence_fields(vl_processor):
    batch = _process(vl_processor, [["image"]], images=[_image(28, 28, 0)])
    assert {"input_ids", "attention_mask", "mm_token_type_ids"} <= set(batch)
    assert list(extract_multimodal_inputs(batch)) == ["pixel_values", "image_grid_thw"]


def test_unknown_field_is_named():
    inputs = {"pixel_values": torch.ones(4, 2), "image_grid_thw": torch.tensor([[1, 2, 2]]), "depth": torch.ones(1)}
    for call in (
        lambda: split_multimodal_inputs(inputs, {"image": [1]}),
        lambda: concat_multimodal_inputs([inputs]),
        lambda: count_items(inputs),
        lambda: extract_multimodal_inputs({"input_ids": torch.ones(1, 2), **inputs}),
        lambda: select_fields(inputs, "vision"),
    ):
        with pytest.raises(ValueError, match="Unknown multimodal field 'depth'"):
            call()


def test_layout_errors_name_field_and_rows():
    grid = torch.tensor([[1, 4, 4], [1, 2, 4]])
    expected = r"'pixel_values': expected 24 rows \(2 images in 'image_grid_thw'\) but got 20"
    # 24 = 1*4*4 + 1*2*4 rows for the two grids.
    with pytest.raises(ValueError, match=expected):
        count_items({"pixel_values": torch.ones(20, 2), "image_grid_thw": grid})
    with pytest.raises(ValueError, match="'pixel_values' needs 'image_grid_thw'"):
        count_items({"pixel_values": torch.ones(20, 2)})
    with pytest.raises(ValueError, match="'feature_attention_mask' has 2 rows but 'input_features' has 3"):
        count_items({"input_features": torch.ones(3, 2, 4), "feature_attention_mask": torch.ones(2, 4)})
    with pytest.raises(ValueError, match="must be a tensor .* got list"):
        count_items({"image_grid_thw": [[1, 2, 2]]})


def test_item_count_errors():
    inputs = {"pixel_values": torch.ones(24, 2), "image_grid_thw": torch.tensor([[1, 4, 4], [1, 2, 4]])}
    with pytest.raises(ValueError, match=r"item_counts\['image'\] adds up to 3 images but the multimodal inputs hold"):
        split_multimodal_inputs(inputs, {"image": [2, 1]})
    with pytest.raises(ValueError, match="'pixel_values' holds images but item_counts has no 'image' entry"):
        split_multimodal_inputs(inputs, {"audio": [0, 0]})
    with pytest.raises(ValueError, match="adds up to 1 audio clips but the multimodal inputs hold 0"):
        split_multimodal_inputs(inputs, {"image": [1, 1], "audio": [1, 0]})
    with pytest.raises(ValueError, match="disagree on the number of samples"):
        split_multimodal_inputs(inputs, {"image": [1, 1]}, num_samples=3)
    with pytest.raises(ValueError, match="needs num_samples when item_counts is empty"):
        split_multimodal_inputs({}, {})
    with pytest.raises(ValueError, match="Unknown media kind 'images'"):
        split_multimodal_inputs(inputs, {"images": [1, 1]})
