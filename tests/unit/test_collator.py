"""Tests for rft_trl.data.collator.PromptCollator on the tiny Qwen2-VL, Qwen2-Audio and Qwen2 processing classes."""

import logging

import numpy as np
import pytest
import soundfile
import soxr
import torch
from datasets import Dataset
from datasets import Image as ImageFeature
from PIL import Image
from torch.utils.data import DataLoader
from transformers import Qwen2VLImageProcessor

from rft_trl.data.collator import (
    BadSampleError,
    PromptBatch,
    PromptCollator,
    SkippedRow,
    TooManyBadSamplesError,
)
from rft_trl.testing import build_tiny_qwen2, build_tiny_qwen2_audio, build_tiny_qwen2_vl

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"


@pytest.fixture(scope="module")
def vl_processor():
    return build_tiny_qwen2_vl(seed=0)[1]


@pytest.fixture(scope="module")
def audio_processor():
    return build_tiny_qwen2_audio(seed=0)[1]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_qwen2(seed=0)[1]


def _image(colour=RED, size=(56, 56)):
    return Image.new("RGB", size, colour)


def _user(*parts):
    return [{"role": "user", "content": list(parts)}]


def _text(text):
    return {"type": "text", "text": text}


def _rendered(processor, messages):
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


# ------------------------------------------------------------------------------------------------ construction


def test_media_kinds_come_from_the_processing_class(vl_processor, audio_processor, tokenizer):
    assert PromptCollator(vl_processor).media_kinds == ("image", "video")
    assert PromptCollator(audio_processor).media_kinds == ("audio",)
    assert PromptCollator(tokenizer).media_kinds == ()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"on_bad_sample": "ignore"}, "on_bad_sample must be 'skip' or 'raise'"),
        ({"max_skip_fraction": 1.5}, "max_skip_fraction must lie in"),
        ({"min_rows_for_skip_fraction": 0}, "min_rows_for_skip_fraction must be at least 1"),
        ({"prompt_max_len": 0}, "prompt_max_len must be positive"),
        ({"audio_too_long": "drop"}, "audio_too_long must be"),
    ],
)
def test_bad_arguments_raise(vl_processor, kwargs, message):
    with pytest.raises(ValueError, match=message):
        PromptCollator(vl_processor, **kwargs)


def test_tokenizer_without_pad_token_raises():
    tokenizer = build_tiny_qwen2(seed=0)[1]
    tokenizer.pad_token = None
    with pytest.raises(ValueError, match="no pad token"):
        PromptCollator(tokenizer)


# ------------------------------------------------------------------------------------------------------ vision


def test_vision_batch_matches_a_direct_processor_call(vl_processor):
    rows = [
        {"prompt": "What colour?", "image": _image(RED), "answer": "red"},
        {
            "prompt": _user({"type": "image"}, {"type": "image"}, _text("Same colour?")),
            "images": [_image(GREEN), _image(BLUE, (28, 28))],
            "answer": "no",
        },
        {"prompt": _user(_text("No picture here.")), "answer": "none"},
    ]
    batch = PromptCollator(vl_processor)(rows)
    assert isinstance(batch, PromptBatch) and len(batch) == 3

    # The string prompt got its image part inserted before the text.
    texts = [
        _rendered(vl_processor, _user({"type": "image"}, _text("What colour?"))),
        _rendered(vl_processor, rows[1]["prompt"]),
        _rendered(vl_processor, rows[2]["prompt"]),
    ]
    assert batch.prompt_texts == texts
    assert texts[0] == f"{SYSTEM}<|im_start|>user\n{IMAGE}What colour?<|im_end|>\n<|im_start|>assistant\n"

    # Independent reference: one batched, left-padded processor call on the same texts and images.
    images = [_image(RED), _image(GREEN), _image(BLUE, (28, 28))]
    reference = vl_processor(text=texts, images=images, return_tensors="pt", padding=True, padding_side="left")
    torch.testing.assert_close(batch.input_ids, reference["input_ids"])
    torch.testing.assert_close(batch.attention_mask, reference["attention_mask"])
    assert set(batch.multimodal_inputs) == {"pixel_values", "image_grid_thw"}
    torch.testing.assert_close(batch.multimodal_inputs["pixel_values"], reference["pixel_values"])
    torch.testing.assert_close(batch.multimodal_inputs["image_grid_thw"], reference["image_grid_thw"])

    # 56x56 -> 4x4 patches; 28x28 -> 2x2.
    assert batch.multimodal_inputs["image_grid_thw"].tolist() == [[1, 4, 4], [1, 4, 4], [1, 2, 2]]
    per_sample = batch.sample_multimodal_inputs
    assert per_sample[1]["pixel_values"].shape == (16 + 4, 1176) and per_sample[2] == {}
    # The per-token types of the processor, left-padded like the prompts.
    torch.testing.assert_close(batch.token_fields["mm_token_type_ids"], reference["mm_token_type_ids"])

    assert batch.prompts[1] is rows[1]["prompt"] and batch.prompts[0] == "What colour?"
    # Reward functions get every column, the media ones with the rows' own values (TRL's contract).
    assert batch.columns["answer"] == ["red", "no", "none"]
    assert batch.columns["image"] == [rows[0]["image"], None, None]
    assert batch.columns["images"] == [None, rows[1]["images"], None]
    assert batch.skipped == []


def test_left_padding(vl_processor):
    batch = PromptCollator(vl_processor)([{"prompt": "x", "image": _image()}, {"prompt": "short"}])
    lengths = batch.attention_mask.sum(dim=1).tolist()
    width = batch.input_ids.shape[1]
    assert width == max(lengths) and lengths[1] < lengths[0]
    # Padding sits on the left: the last column is always a real token.
    assert batch.attention_mask[:, -1].tolist() == [1, 1]
    pad = vl_processor.tokenizer.pad_token_id
    assert batch.input_ids[1, : width - lengths[1]].eq(pad).all()
    assert batch.attention_mask[1, : width - lengths[1]].eq(0).all()
    # The plain-string prompt without media is used verbatim.
    assert batch.prompt_texts[1] == "short"
    assert batch.input_ids[1, width - lengths[1] :].tolist() == vl_processor.tokenizer("short")["input_ids"]


def test_media_repairs_are_counted_and_processed_images_are_bounded(vl_processor):
    rows = [
        {"prompt": "tiny", "image": Image.new("RGB", (1, 1), RED)},
        {"prompt": "huge", "image": Image.new("RGBA", (3000, 2000), BLUE)},
        {"prompt": "grey", "image": np.full((56, 56), 100, np.uint8)},
    ]
    collator = PromptCollator(vl_processor)
    batch = collator(rows)
    # 1x1 upscaled to 28x28 -> 2x2 patches; 3000x2000 downscaled to 68x45 (scale sqrt(3136 / 6e6)), which the
    # processor rounds to 56x56 -> 4x4 patches.
    assert batch.multimodal_inputs["image_grid_thw"].tolist() == [[1, 2, 2], [1, 4, 4], [1, 4, 4]]
    assert collator.pop_repair_counts() == {
        "data/repaired/image_alpha_flattened": 1,
        # The grey [H, W] array is a mode "L" image.
        "data/repaired/image_converted_rgb": 1,
        "data/repaired/image_downscaled": 1,
        "data/repaired/image_upscaled": 1,
    }
    assert collator.pop_repair_counts() == {}


def test_images_from_files_and_datasets_feature_in_a_streaming_dataset(vl_processor, tmp_path):
    paths = []
    for i, colour in enumerate((RED, GREEN, BLUE, RED, GREEN)):
        paths.append(str(tmp_path / f"{i}.png"))
        _image(colour).save(paths[-1])
    dataset = Dataset.from_dict(
        {
            "prompt": [f"Colour {i}?" for i in range(5)],
            "image": paths,
            "answer": ["red", "green", "blue", "red", "green"],
            "id": [f"q{i}" for i in range(5)],
        }
    ).cast_column("image", ImageFeature())
    streaming = dataset.to_iterable_dataset()
    collator = PromptCollator(vl_processor)
    batches = list(DataLoader(streaming, batch_size=2, collate_fn=collator))
    assert [len(batch) for batch in batches] == [2, 2, 1]
    assert [answer for batch in batches for answer in batch.columns["answer"]] == dataset["answer"]
    assert [row_id for batch in batches for row_id in batch.columns["id"]] == dataset["id"]
    # Same pixels as the map-style dataset and as the files read directly.
    direct = PromptCollator(vl_processor)([{"prompt": "Colour 0?", "image": paths[0]}, dataset[1]])
    torch.testing.assert_close(batches[0].multimodal_inputs["pixel_values"], direct.multimodal_inputs["pixel_values"])
    assert collator.processor_calls == 5 and collator.media_processed == {"image": 5}


def test_video_rows(vl_processor, tmp_path):
    gif = tmp_path / "clip.gif"
    first, *rest = [_image(colour) for colour in (RED, GREEN, BLUE, RED)]
    first.save(gif, save_all=True, append_images=rest, duration=100)
    video_prompt = _user({"type": "video"}, _text("Moving?"))
    rows = [
        {"prompt": video_prompt, "video": [_image(RED)] * 4},
        {"prompt": video_prompt, "video": np.zeros((4, 56, 56, 3), np.uint8)},
        {"prompt": "Moving?", "video": str(gif)},
        {"prompt": video_prompt, "videos": [[_image(RED), _image(RED, (60, 56))]], "id": "bad"},
    ]
    collator = PromptCollator(vl_processor)
    batch = collator(rows)
    assert len(batch) == 3
    # 4 frames of 56x56: temporal patches of 2 frames -> t = 2; 56 / 14 = 4 patches per side.
    assert batch.multimodal_inputs["video_grid_thw"].tolist() == [[2, 4, 4]] * 3
    assert [sample["video_grid_thw"].shape[0] for sample in batch.sample_multimodal_inputs] == [1, 1, 1]
    assert batch.skipped == [
        SkippedRow("bad", "inconsistent_frames", "video frames have different sizes [(56, 56), (60, 56)]", "videos")
    ]


# ------------------------------------------------------------------------------------------------------- audio


def _tone(frequency, rate, seconds):
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def test_audio_rows_are_resampled_and_match_a_direct_processor_call(audio_processor, tmp_path):
    path = tmp_path / "tone.wav"
    soundfile.write(path, _tone(220, 16000, 0.5), 16000, subtype="FLOAT")
    stereo_8k = np.stack([_tone(440, 8000, 1.0), _tone(440, 8000, 1.0)])
    rows = [
        {"prompt": "High or low?", "audio": {"array": stereo_8k, "sampling_rate": 8000}},
        {
            "prompt": _user({"type": "audio"}, {"type": "audio"}, _text("Same?")),
            "audios": [str(path), path.read_bytes()],
        },
    ]
    collator = PromptCollator(audio_processor)
    batch = collator(rows)
    assert [sample["input_features"].shape[0] for sample in batch.sample_multimodal_inputs] == [1, 2]
    assert batch.multimodal_inputs["input_features"].shape == (3, 32, 200)
    # Reference: the processor on 16 kHz mono clips made by hand (channel mean, then soxr, librosa's default
    # resampler; test_media checks the resampling itself against scipy).
    clips = [soxr.resample(stereo_8k.mean(axis=0), 8000, 16000, quality="HQ"), _tone(220, 16000, 0.5)]
    clips.append(clips[1])
    texts = [_rendered(audio_processor, _user({"type": "audio"}, _text("High or low?"))), batch.prompt_texts[1]]
    reference = audio_processor(
        text=texts, audio=clips, sampling_rate=16000, return_tensors="pt", padding=True, padding_side="left"
    )
    torch.testing.assert_close(batch.input_ids, reference["input_ids"])
    torch.testing.assert_close(batch.multimodal_inputs["feature_attention_mask"], reference["feature_attention_mask"])
    torch.testing.assert_close(batch.multimodal_inputs["input_features"], reference["input_features"])
    assert collator.pop_repair_counts() == {"data/repaired/audio_downmixed": 1, "data/repaired/audio_resampled": 1}


def test_audio_longer_than_the_window_is_truncated_or_rejected(audio_processor, caplog):
    # The tiny feature extractor's window is 2 s = 32000 samples; 3 s is too long.
    row = {"prompt": "High?", "audio": _tone(440, 16000, 3.0), "id": "long"}
    truncating = PromptCollator(audio_processor)
    with caplog.at_level(logging.WARNING):
        batch = truncating([row])
    assert len(batch) == 1 and "3.00 s, above the 2.00 s window" in caplog.text
    assert truncating.pop_repair_counts() == {"data/repaired/audio_truncated": 1}
    # The truncated clip fills the window: all 200 feature frames are attended.
    assert batch.multimodal_inputs["feature_attention_mask"].sum().item() == 200

    rejecting = PromptCollator(audio_processor, audio_too_long="reject", max_skip_fraction=1.0)
    assert len(rejecting([row])) == 0
    assert rejecting.pop_skip_counts() == {"data/skipped/audio_too_long": 1}


def test_bad_audio_rows_are_skipped_by_reason(audio_processor):
    rows = [
        {"prompt": "a", "audio": np.zeros(0, np.float32)},
        {"prompt": "b", "audio": np.array([0.1, np.nan] * 100, np.float32)},
        {"prompt": "c", "audio": _tone(440, 16000, 0.1)},
    ]
    collator = PromptCollator(audio_processor, max_skip_fraction=1.0)
    batch = collator(rows)
    assert len(batch) == 1 and batch.prompts == ["c"]
    assert [(entry.row, entry.reason) for entry in batch.skipped] == [(0, "empty_audio"), (1, "nan_audio")]
    assert collator.pop_skip_counts() == {"data/skipped/empty_audio": 1, "data/skipped/nan_audio": 1}


# -------------------------------------------------------------------------------------------------------- text


def test_text_rows_use_the_tokenizer_chat_template(tokenizer):
    messages = [{"role": "user", "content": "Say red."}]
    rows = [{"prompt": messages, "label": 1}, {"prompt": "raw text", "label": 0}]
    batch = PromptCollator(tokenizer)(rows)
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert batch.prompt_texts == [rendered, "raw text"]
    assert batch.multimodal_inputs == {} and batch.sample_multimodal_inputs == [{}, {}]
    assert batch.columns == {"label": [1, 0]}
    length = int(batch.attention_mask[0].sum())
    assert batch.input_ids[0, -length:].tolist() == tokenizer(rendered, add_special_tokens=False)["input_ids"]


def test_media_rows_for_a_text_model_are_never_kept_without_their_media(tokenizer):
    collator = PromptCollator(tokenizer, max_skip_fraction=1.0)
    batch = collator([{"prompt": "What colour?", "image": _image()}, {"prompt": "ok"}])
    assert batch.prompts == ["ok"]
    assert batch.skipped[0].reason == "unsupported_media"
    assert "row has 1 image(s)" in batch.skipped[0].detail


def test_chat_prompt_with_string_content_gets_its_media_parts_as_in_trl(vl_processor):
    # TRL's prepare_multimodal_messages: the first user turn with string content gets the image parts before its
    # text; the system turn before it and the turns after it are left as they are.
    prompt = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Which is brighter?"},
        {"role": "assistant", "content": "Show me."},
        {"role": "user", "content": "Here."},
    ]
    batch = PromptCollator(vl_processor)([{"prompt": prompt, "images": [_image(), _image(GREEN)]}])
    structured = [
        prompt[0],
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, _text("Which is brighter?")]},
        *prompt[2:],
    ]
    assert batch.prompt_texts == [_rendered(vl_processor, structured)]
    assert batch.prompts == [prompt]  # the reward functions see the row's own prompt


# ------------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "row, reason, detail",
    [
        (
            {"prompt": _user({"type": "image"}, {"type": "image"}, _text("x")), "images": [_image()]},
            "media_mismatch",
            "prompt has 2 image part(s) but the row has 1 image(s)",
        ),
        ({"prompt": _user(_text("x")), "image": _image()}, "media_mismatch", "prompt has 0 image part(s)"),
        ({"prompt": "x", "image": _image(), "images": [_image()]}, "media_mismatch", "both 'image' and 'images'"),
        ({"prompt": "x", "images": _image()}, "unsupported_input", "column 'images' must hold a list"),
        ({"prompt": "x", "images": [_image(), None]}, "missing_image", "column 'images' holds None"),
        ({"prompt": "x", "image": "/no/such/file.png"}, "missing_file", "does not exist"),
        ({"prompt": "x", "audio": np.zeros(10)}, "unsupported_media", "cannot process audios"),
        ({"prompt": {"text": "x"}}, "bad_prompt", "prompt must be a string or a non-empty list"),
        ({"prompt": []}, "bad_prompt", "prompt must be a string or a non-empty list"),
        ({"prompt": [{"content": "x"}]}, "bad_prompt", "needs 'role' and 'content'"),
        ({"prompt": [{"role": "user", "content": 3}]}, "bad_prompt", "content must be a string or a list of parts"),
        # Placeholder tokens typed into the text: two image slots for one image, caught by the processor.
        ({"prompt": f"{IMAGE} x", "image": _image()}, "processor_error", "<|image_pad|>"),
    ],
)
def test_bad_rows_are_named_and_explained(vl_processor, row, reason, detail):
    collator = PromptCollator(vl_processor, on_bad_sample="raise")
    good = {"prompt": "fine", "id": "ok"}
    with pytest.raises(BadSampleError) as info:
        collator([good, {**row, "id": "q7"}])
    assert info.value.reason == reason and detail in info.value.detail
    assert str(info.value).startswith(f"Row 1 (id='q7') is unusable ({reason}): ")


def test_rows_without_an_id_are_named_by_position(vl_processor):
    collator = PromptCollator(vl_processor, on_bad_sample="raise")
    collator([{"prompt": "a"}, {"prompt": "b"}])
    with pytest.raises(BadSampleError, match=r"^Row 3 is unusable \(missing_file\)"):
        collator([{"prompt": "c"}, {"prompt": "d", "image": "/missing.png"}])


def test_id_column_is_configurable(vl_processor):
    collator = PromptCollator(vl_processor, id_column="uid", max_skip_fraction=1.0)
    batch = collator([{"prompt": "x", "image": "/missing.png", "uid": 17, "id": "not-this"}])
    assert batch.skipped[0].row == 17
    with pytest.raises(BadSampleError, match=r"^Row 0 \(uid=17\) is unusable"):
        PromptCollator(vl_processor, id_column="uid", on_bad_sample="raise")(
            [{"prompt": "x", "image": b"", "uid": 17}]
        )


def test_a_row_without_prompt_column_is_a_schema_error(vl_processor):
    with pytest.raises(KeyError, match="need a 'prompt' column; this row has \\['image', 'question'\\]"):
        PromptCollator(vl_processor)([{"question": "x", "image": _image()}])


def test_prompt_too_long_is_rejected_not_truncated(vl_processor):
    # The image row is 30 tokens (the 56x56 image alone expands to 4 pad tokens); the text row is 4.
    rows = [{"prompt": "What colour?", "image": _image(), "id": "img"}, {"prompt": "short", "id": "txt"}]
    full = PromptCollator(vl_processor)(rows)
    lengths = full.attention_mask.sum(dim=1).tolist()
    assert lengths == [30, 4]
    collator = PromptCollator(vl_processor, prompt_max_len=29, max_skip_fraction=1.0)
    batch = collator(rows)
    assert batch.prompts == ["short"] and batch.multimodal_inputs == {}
    assert batch.skipped == [
        SkippedRow("img", "prompt_too_long", "prompt has 30 tokens after media expansion, above prompt_max_len=29")
    ]
    # At the limit, kept whole: the placeholder run is intact.
    kept = PromptCollator(vl_processor, prompt_max_len=30)(rows)
    torch.testing.assert_close(kept.input_ids, full.input_ids)
    image_pad = vl_processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int(kept.input_ids[0].eq(image_pad).sum()) == 4


# --------------------------------------------------------------------------------------------- skip accounting


def test_skips_are_counted_by_reason_and_logged(vl_processor, caplog):
    collator = PromptCollator(vl_processor)
    rows = [
        {"prompt": "a", "image": "/missing/a.png", "id": "a"},
        {"prompt": "b"},
        {"prompt": _user({"type": "image"}, _text("c"))},
        {"prompt": "d", "image": "/missing/d.png"},
    ]
    with caplog.at_level(logging.WARNING, logger="rft_trl.data.collator"):
        batch = collator(rows)
    assert batch.prompts == ["b"]
    assert [entry.row for entry in batch.skipped] == ["a", 2, 3]
    assert "Row 0 (id='a') skipped (missing_file)" in caplog.text
    assert "Row 2 skipped (media_mismatch): prompt has 1 image part(s) but the row has 0 image(s)" in caplog.text
    assert collator.pop_skip_counts() == {"data/skipped/media_mismatch": 1, "data/skipped/missing_file": 2}
    assert collator.pop_skip_counts() == {}
    assert (collator.rows_seen, collator.rows_skipped) == (4, 3)


def test_skip_limit_counts_cumulatively_from_a_floor(vl_processor):
    bad = {"prompt": "x", "image": "/missing.png"}
    good = {"prompt": "y"}
    # Defaults: 10% of at least 32 rows. Three bad rows in the first four: 3 / 32 = 0.094, allowed.
    collator = PromptCollator(vl_processor)
    assert len(collator([bad, bad, bad, good])) == 1
    # A fourth: 4 / 32 = 0.125 > 0.1.
    with pytest.raises(TooManyBadSamplesError, match=r"4 of 5 rows skipped, above max_skip_fraction=0.1"):
        collator([bad])

    # Without the floor the fraction is plain: 1 / 4 = 0.25 <= 0.3 passes, then 3 / 8 = 0.375 aborts.
    collator = PromptCollator(vl_processor, max_skip_fraction=0.3, min_rows_for_skip_fraction=1)
    assert len(collator([bad, good, good, good])) == 3
    with pytest.raises(TooManyBadSamplesError, match="3 of 8 rows skipped") as info:
        collator([bad, bad, good, good])
    # The message names the rows of the batch that crossed the line, by position.
    assert "Latest: 4: missing_file: image file '/missing.png' does not exist; 5: missing_file" in str(info.value)


def test_an_all_skipped_batch_is_empty_when_allowed(vl_processor):
    batch = PromptCollator(vl_processor, max_skip_fraction=1.0)([{"prompt": "x", "image": b""}])
    assert len(batch) == 0 and batch.input_ids.shape == (0, 0) and batch.attention_mask.shape == (0, 0)
    assert batch.multimodal_inputs == {} and batch.sample_multimodal_inputs == [] and batch.columns == {}
    assert batch.skipped[0].reason == "empty_file"


# ----------------------------------------------------------------------------------------- processor accounting


def test_each_row_and_medium_goes_through_the_processor_exactly_once(vl_processor, monkeypatch):
    # Count what really reaches the image processor, independently of the collator's own counters.
    seen = []
    original = Qwen2VLImageProcessor.__call__

    def spy(self, images, *args, **kwargs):
        # Images come nested per row ([[a, b]]): count the images, not the rows.
        seen.append(sum(len(row) if isinstance(row, list) else 1 for row in images))
        return original(self, images, *args, **kwargs)

    collator = PromptCollator(vl_processor)  # before the spy: its construction probes the processor
    monkeypatch.setattr(Qwen2VLImageProcessor, "__call__", spy)
    rows = [
        {"prompt": "one", "image": _image()},
        {"prompt": _user({"type": "image"}, {"type": "image"}, _text("two")), "images": [_image(), _image()]},
        {"prompt": "none"},
        {"prompt": "bad", "image": "/missing.png"},
    ]
    batch = collator(rows)
    assert len(batch) == 3
    # The bad row never reaches the processor; each kept row once; each image once.
    assert collator.processor_calls == 3
    assert collator.media_processed == {"image": 3}
    assert sum(seen) == 3
    unique_media = sum(
        sample.get("image_grid_thw", torch.zeros(0)).shape[0] for sample in batch.sample_multimodal_inputs
    )
    assert collator.media_processed["image"] / unique_media == 1.0
