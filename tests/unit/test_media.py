"""Tests for rft_trl.data.media: every input form, every repair, every rejection reason, on real files."""

import io
import logging

import numpy as np
import pytest
import soundfile
import torch
from datasets import Audio, Dataset
from datasets import Image as ImageFeature
from PIL import Image
from scipy.signal import resample_poly
from transformers import Qwen2VLImageProcessor

from rft_trl.data.media import (
    ImageBounds,
    MediaError,
    image_bounds_from_processor,
    load_audio,
    load_image,
    load_video,
)

# The tiny Qwen2-VL processor's bounds: 28x28 = 784 to 56x56 = 3136 pixels.
QWEN_BOUNDS = ImageBounds(min_pixels=784, max_pixels=3136, max_aspect_ratio=200.0)
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _wav_bytes(samples: np.ndarray, rate: int, subtype: str = "FLOAT") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def _reason(call) -> str:
    with pytest.raises(MediaError) as info:
        call()
    return info.value.reason


# ------------------------------------------------------------------------------------------------- image: forms


def test_rgb_pil_image_is_returned_untouched():
    image = Image.new("RGB", (40, 30), RED)
    repairs = []
    assert load_image(image, QWEN_BOUNDS, repairs) is image
    assert repairs == []


def test_image_from_path_str_pathlike_bytes_and_dict(tmp_path):
    path = tmp_path / "red.png"
    Image.new("RGB", (32, 32), RED).save(path)
    for value in (path, str(path), path.read_bytes(), {"bytes": None, "path": str(path)}):
        image = load_image(value)
        assert image.mode == "RGB" and image.size == (32, 32)
        assert image.getpixel((5, 5)) == RED
    # A dict holding both takes the bytes, as `datasets` does: the path may no longer exist.
    assert load_image({"bytes": path.read_bytes(), "path": "/gone.png"}).getpixel((0, 0)) == RED


def test_image_from_datasets_image_feature_decoded_and_undecoded(tmp_path):
    paths = []
    for i, colour in enumerate((RED, BLUE)):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.new("RGB", (30, 20), colour).save(paths[-1])
    dataset = Dataset.from_dict({"image": paths}).cast_column("image", ImageFeature())
    assert isinstance(dataset[0]["image"], Image.Image)
    assert [load_image(row["image"]).getpixel((0, 0)) for row in dataset] == [RED, BLUE]
    raw = dataset.cast_column("image", ImageFeature(decode=False))
    assert set(raw[1]["image"]) == {"bytes", "path"}
    assert load_image(raw[1]["image"]).getpixel((0, 0)) == BLUE


@pytest.mark.parametrize(
    "array, expected",
    [
        # uint8 HWC passes through.
        (np.full((4, 5, 3), (10, 20, 30), np.uint8), (10, 20, 30)),
        # HW grayscale becomes three equal channels.
        (np.full((4, 5), 77, np.uint8), (77, 77, 77)),
        # HW1 likewise.
        (np.full((4, 5, 1), 9, np.uint8), (9, 9, 9)),
        # Float in [0, 1]: 0.5 * 255 = 127.5 rounds (half to even) to 128.
        (np.full((4, 5, 3), 0.5, np.float32), (128, 128, 128)),
        # bool: True is white.
        (np.ones((4, 5), bool), (255, 255, 255)),
    ],
)
def test_image_from_numpy(array, expected):
    image = load_image(array)
    assert image.mode == "RGB" and image.size == (5, 4)
    assert image.getpixel((0, 0)) == expected


def test_image_from_channels_first_array_and_tensor():
    chw = np.zeros((3, 4, 6), np.uint8)
    chw[2] = 200  # blue plane
    repairs = []
    image = load_image(chw, repairs=repairs)
    assert image.size == (6, 4) and image.getpixel((0, 0)) == (0, 0, 200)
    assert repairs == ["image_channels_first"]
    assert load_image(torch.from_numpy(chw)).getpixel((3, 2)) == (0, 0, 200)


def test_float_image_in_0_255_is_taken_as_scaled_and_counted():
    repairs = []
    image = load_image(np.full((2, 2, 3), 200.0), repairs=repairs)
    assert image.getpixel((0, 0)) == (200, 200, 200)
    assert repairs == ["image_float_255"]


# ------------------------------------------------------------------------------------------------- image: modes


@pytest.mark.parametrize("value, expected", [(65535, 255), (257 * 100, 100), (0, 0), (300, 1)])
def test_16bit_png_is_scaled_not_clipped(tmp_path, value, expected):
    # 16 -> 8 bits divides by 257 (65535 / 255) and rounds: 300 / 257 = 1.17 -> 1. Pillow's own
    # convert("RGB") would clip 25700 to 255 instead of giving 100.
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((8, 8), value, np.uint16)).save(path)
    with Image.open(path) as opened:
        assert opened.mode == "I;16"
    repairs = []
    image = load_image(path, repairs=repairs)
    assert image.getpixel((0, 0)) == (expected,) * 3
    assert repairs == ["image_16bit_scaled"]


def test_16bit_array_and_mode_i_image():
    assert load_image(np.full((2, 2, 3), 514, np.uint16)).getpixel((0, 0)) == (2, 2, 2)
    # A dark 16-bit image stays 16-bit: uint16 value 255 is 255 / 257 -> 1, not 255.
    assert load_image(np.full((2, 2), 255, np.uint16)).getpixel((0, 0)) == (1, 1, 1)
    # Mode "I" (32-bit) carries no depth: values above 255 are read as 16-bit, values within 0-255 as 8-bit.
    assert load_image(Image.fromarray(np.full((2, 2), 65535, np.int32))).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(Image.fromarray(np.full((2, 2), 40, np.int32))).getpixel((0, 0)) == (40, 40, 40)


def test_cmyk_is_converted():
    # C=0, M=255, Y=255, K=0 is pure red: R = 255 - C, G = 255 - M, B = 255 - Y.
    repairs = []
    image = load_image(Image.new("CMYK", (3, 3), (0, 255, 255, 0)), repairs=repairs)
    assert image.mode == "RGB" and image.getpixel((1, 1)) == RED
    assert repairs == ["image_converted_rgb"]


def test_cmyk_jpeg_file(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=100)
    red, green, blue = load_image(path).getpixel((8, 8))
    assert red > 240 and green < 15 and blue < 15


def test_rgba_is_flattened_on_white():
    rgba = Image.new("RGBA", (3, 1))
    rgba.putpixel((0, 0), (255, 0, 0, 0))  # fully transparent red -> the white background
    rgba.putpixel((1, 0), (0, 0, 255, 255))  # opaque blue stays blue
    rgba.putpixel((2, 0), (255, 0, 0, 128))  # half red over white: G = B = 255 * (1 - 128/255) = 127
    repairs = []
    image = load_image(rgba, repairs=repairs)
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((1, 0)) == BLUE
    red, green, blue = image.getpixel((2, 0))
    assert red == 255 and abs(green - 127) <= 1 and abs(blue - 127) <= 1
    assert repairs == ["image_alpha_flattened"]


def test_la_p_and_bilevel_modes(tmp_path):
    # LA: grey 100, transparent -> white.
    assert load_image(Image.new("LA", (2, 2), (100, 0))).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(Image.new("LA", (2, 2), (100, 255))).getpixel((0, 0)) == (100, 100, 100)
    # P without transparency: the palette colour.
    palette = Image.new("RGB", (4, 4), GREEN).convert("P")
    repairs = []
    assert load_image(palette, repairs=repairs).getpixel((0, 0)) == GREEN
    assert repairs == ["image_converted_rgb"]
    # P with a transparent index, written and read back as GIF: flattened on white.
    gif = tmp_path / "t.gif"
    palette.save(gif, transparency=palette.getpixel((0, 0)))
    repairs = []
    assert load_image(gif, repairs=repairs).getpixel((0, 0)) == (255, 255, 255)
    assert repairs == ["image_alpha_flattened"]
    # 1-bit: 1 is white, 0 is black.
    bilevel = Image.new("1", (2, 1))
    bilevel.putpixel((1, 0), 1)
    image = load_image(bilevel)
    assert image.getpixel((0, 0)) == (0, 0, 0) and image.getpixel((1, 0)) == (255, 255, 255)


def test_float_mode_f_image():
    assert load_image(Image.fromarray(np.full((2, 2), 0.2, np.float32))).getpixel((0, 0)) == (51, 51, 51)


# ------------------------------------------------------------------------------------------------- image: sizes


def test_bounds_read_from_qwen_processor_and_absent_elsewhere():
    processor = Qwen2VLImageProcessor(size={"shortest_edge": 784, "longest_edge": 3136}, patch_size=14, merge_size=2)
    assert image_bounds_from_processor(processor) == QWEN_BOUNDS
    assert image_bounds_from_processor(None) == ImageBounds()


def test_one_pixel_image_is_upscaled_to_the_minimum():
    repairs = []
    image = load_image(Image.new("RGB", (1, 1), BLUE), QWEN_BOUNDS, repairs)
    # sqrt(784 / 1) = 28 per side.
    assert image.size == (28, 28) and image.getpixel((14, 14)) == BLUE
    assert repairs == ["image_upscaled"]
    # Without bounds nothing changes.
    assert load_image(Image.new("RGB", (1, 1))).size == (1, 1)


def test_huge_image_is_downscaled_within_max_pixels(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("RGB", (4000, 3000), GREEN).save(path)
    repairs = []
    image = load_image(path, QWEN_BOUNDS, repairs)
    width, height = image.size
    # scale = sqrt(3136 / 12e6) = 0.016166; floor(4000 * s) = 64, floor(3000 * s) = 48; 64 * 48 = 3072 <= 3136.
    assert (width, height) == (64, 48) and width * height <= 3136
    assert image.getpixel((10, 10)) == GREEN
    assert repairs == ["image_downscaled"]


def test_extreme_aspect_ratio_is_rejected():
    with pytest.raises(MediaError, match="aspect ratio 300") as info:
        load_image(Image.new("RGB", (300, 1)), QWEN_BOUNDS)
    assert info.value.reason == "extreme_aspect_ratio"
    assert load_image(Image.new("RGB", (300, 1))).size == (300, 1)


# -------------------------------------------------------------------------------------------- image: rejections


def test_bad_image_files_raise_with_reason(tmp_path):
    missing = tmp_path / "missing.png"
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image at all" * 10)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(_png_bytes(Image.effect_noise((64, 64), 50).convert("RGB"))[:400])

    with pytest.raises(MediaError, match="missing.png' does not exist") as info:
        load_image(str(missing))
    assert info.value.reason == "missing_file" and "does not exist" in info.value.detail
    assert _reason(lambda: load_image(empty)) == "empty_file"
    assert _reason(lambda: load_image(b"")) == "empty_file"
    assert _reason(lambda: load_image(garbage)) == "corrupt_image"
    assert _reason(lambda: load_image(garbage.read_bytes())) == "corrupt_image"
    assert _reason(lambda: load_image(truncated)) == "corrupt_image"
    # A lazily opened PIL image (what `datasets` hands over) fails when decoded, not later in the processor.
    assert _reason(lambda: load_image(Image.open(truncated))) == "corrupt_image"
    assert _reason(lambda: load_image({"bytes": None, "path": None})) == "unsupported_input"
    assert _reason(lambda: load_image("https://example.com/cat.png")) == "unsupported_input"
    assert _reason(lambda: load_image(42)) == "unsupported_input"


@pytest.mark.parametrize(
    "array, reason",
    [
        (np.full((2, 2, 3), np.nan, np.float32), "nan_image"),
        (np.full((2, 2, 3), np.inf), "nan_image"),
        (np.full((2, 2, 3), 300.0), "bad_pixel_range"),
        (np.full((2, 2, 3), -1.0), "bad_pixel_range"),
        (np.full((2, 2), -5, np.int32), "bad_pixel_range"),
        (np.zeros((2, 2, 5), np.uint8), "bad_image_shape"),
        (np.zeros((2, 2, 2, 3), np.uint8), "bad_image_shape"),
        (np.zeros((0, 4, 3), np.uint8), "bad_image_shape"),
        (np.zeros((2, 2), np.complex64), "unsupported_input"),
    ],
)
def test_bad_arrays_raise_with_reason(array, reason):
    assert _reason(lambda: load_image(array)) == reason


def test_decompression_bomb_is_rejected(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    Image.new("RGB", (100, 100)).save(path)
    # Pillow refuses images above twice MAX_IMAGE_PIXELS; lower the limit instead of writing a giant file.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert _reason(lambda: load_image(path)) == "image_too_large"


def test_media_error_message():
    error = MediaError("corrupt_image", "x.png cannot be decoded")
    assert str(error) == "corrupt_image: x.png cannot be decoded"
    assert isinstance(error, ValueError)


# ----------------------------------------------------------------------------------------------------- video


def _frames(*colours, size=(8, 6)):
    return [Image.new("RGB", size, colour) for colour in colours]


def test_video_from_frame_list_array_and_tensor():
    frames = load_video(_frames(RED, GREEN, BLUE))
    assert [frame.getpixel((0, 0)) for frame in frames] == [RED, GREEN, BLUE]
    array = np.zeros((4, 6, 8, 3), np.uint8)
    array[:, :, :, 1] = np.arange(4)[:, None, None] * 50
    frames = load_video(array)
    assert len(frames) == 4 and frames[0].size == (8, 6)
    assert [frame.getpixel((0, 0))[1] for frame in frames] == [0, 50, 100, 150]
    assert len(load_video(torch.from_numpy(array))) == 4
    # [T, H, W] grayscale frames.
    assert load_video(np.full((2, 6, 8), 9, np.uint8))[1].getpixel((0, 0)) == (9, 9, 9)
    # Frames given as arrays and files mix freely.
    assert len(load_video([np.zeros((6, 8, 3), np.uint8), _png_bytes(_frames(RED)[0])])) == 2


def test_video_from_gif_file_bytes_and_dict(tmp_path):
    path = tmp_path / "clip.gif"
    first, *rest = _frames(RED, GREEN, BLUE, RED)
    first.save(path, save_all=True, append_images=rest, duration=100, loop=0)
    expected = [RED, GREEN, BLUE, RED]
    for value in (path, str(path), path.read_bytes(), {"bytes": path.read_bytes(), "path": None}, {"path": path}):
        frames = load_video(value)
        assert [frame.getpixel((0, 0)) for frame in frames] == expected
        assert {frame.mode for frame in frames} == {"RGB"}


def test_video_from_frame_directory(tmp_path):
    # Sorted by name: 000, 001, 002 whatever the creation order.
    for name, colour in (("002.png", BLUE), ("000.png", RED), ("001.png", GREEN)):
        _frames(colour)[0].save(tmp_path / name)
    assert [frame.getpixel((0, 0)) for frame in load_video(tmp_path)] == [RED, GREEN, BLUE]


def test_video_bounds_resize_every_frame_and_count_repairs_once():
    repairs = []
    frames = load_video(
        _frames(RED, GREEN, size=(400, 300)) + [Image.new("RGBA", (400, 300), BLUE)], QWEN_BOUNDS, repairs
    )
    # Same arithmetic as a 4000x3000 image, one tenth: 400 * 0.16166 = 64.66 -> 64, 300 * 0.16166 -> 48.
    assert {frame.size for frame in frames} == {(64, 48)}
    assert sorted(repairs) == ["image_alpha_flattened", "image_downscaled"]


def test_bad_videos_raise_with_reason(tmp_path):
    mp4 = tmp_path / "clip.mp4"
    mp4.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100)
    with pytest.raises(MediaError, match="no .mp4 video decoder") as info:
        load_video(mp4)
    assert info.value.reason == "unsupported_video_format"
    empty_dir = tmp_path / "frames"
    empty_dir.mkdir()
    assert _reason(lambda: load_video(empty_dir)) == "empty_video"
    assert _reason(lambda: load_video([])) == "empty_video"
    assert _reason(lambda: load_video(tmp_path / "nope.gif")) == "missing_file"
    with pytest.raises(MediaError, match=r"different sizes \[\(8, 6\), \(9, 6\)\]") as info:
        load_video(_frames(RED) + _frames(RED, size=(9, 6)))
    assert info.value.reason == "inconsistent_frames"
    assert _reason(lambda: load_video(np.zeros((6, 8), np.uint8))) == "bad_video_shape"
    assert _reason(lambda: load_video([b"garbage"])) == "corrupt_image"
    assert _reason(lambda: load_video(7)) == "unsupported_input"
    assert _reason(lambda: load_video(_frames(RED, size=(300, 1)), QWEN_BOUNDS)) == "extreme_aspect_ratio"


# ----------------------------------------------------------------------------------------------------- audio


def _tone(frequency: float, rate: int, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def test_audio_from_dict_array_tensor_list_and_tuple():
    tone = _tone(440, 16000, 0.1)
    for value in (
        {"array": tone, "sampling_rate": 16000},
        {"array": tone},
        tone.astype(np.float64),
        torch.from_numpy(tone),
        tone.tolist(),
        (tone, 16000),
    ):
        repairs = []
        audio = load_audio(value, 16000, repairs=repairs)
        assert audio.dtype == np.float32 and audio.shape == (1600,)
        np.testing.assert_allclose(audio, tone, atol=1e-7)
        assert repairs == []


def test_audio_from_path_bytes_and_undecoded_datasets_audio(tmp_path):
    tone = _tone(440, 16000, 0.25)
    path = tmp_path / "tone.wav"
    soundfile.write(path, tone, 16000, subtype="PCM_16")
    # 16-bit PCM quantises to 1 / 32768.
    for value in (path, str(path), path.read_bytes()):
        np.testing.assert_allclose(load_audio(value, 16000), tone, atol=1 / 32768)
    flac = tmp_path / "tone.flac"
    soundfile.write(flac, tone, 16000)
    np.testing.assert_allclose(load_audio(flac, 16000), tone, atol=1 / 32768)
    dataset = Dataset.from_dict({"audio": [str(path)]}).cast_column("audio", Audio(decode=False))
    row = dataset[0]["audio"]
    assert set(row) == {"bytes", "path"}
    np.testing.assert_allclose(load_audio(row, 16000), tone, atol=1 / 32768)


@pytest.mark.parametrize("layout", ["channels_last", "channels_first"])
def test_stereo_is_downmixed_to_the_channel_mean(layout):
    left = np.full(1000, 0.6, np.float32)
    right = np.full(1000, -0.2, np.float32)
    stereo = np.stack([left, right], axis=1 if layout == "channels_last" else 0)
    repairs = []
    audio = load_audio(stereo, 16000, repairs=repairs)
    # (0.6 + -0.2) / 2 = 0.2
    np.testing.assert_allclose(audio, np.full(1000, 0.2), atol=1e-7)
    assert repairs == ["audio_downmixed"]


def test_stereo_file_is_downmixed(tmp_path):
    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.stack([np.full(800, 0.5), np.full(800, 0.1)], axis=1), 8000, subtype="FLOAT")
    repairs = []
    audio = load_audio(path, 8000, repairs=repairs)
    np.testing.assert_allclose(audio, np.full(800, 0.3), atol=1e-6)
    assert repairs == ["audio_downmixed"]


def test_integer_pcm_is_scaled():
    # int16 full scale is 32768: 16384 -> 0.5, -32768 -> -1. uint8 is centred on 128: 192 -> 0.5.
    np.testing.assert_allclose(load_audio(np.array([16384, -32768], np.int16), 16000), [0.5, -1.0])
    np.testing.assert_allclose(load_audio(np.array([192, 128], np.uint8), 16000), [0.5, 0.0])
    repairs = []
    load_audio(np.array([1, 2], np.int32), 16000, repairs=repairs)
    assert repairs == ["audio_int_scaled"]


def test_resampling_keeps_the_tone_frequency():
    # A 440 Hz tone, 1 s at 8 kHz, resampled to 16 kHz: 16000 samples whose spectrum (1 Hz bins over 1 s) peaks
    # at bin 440.
    repairs = []
    audio = load_audio({"array": _tone(440, 8000), "sampling_rate": 8000}, 16000, repairs=repairs)
    assert audio.shape == (16000,) and audio.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(audio))
    assert int(np.argmax(spectrum)) == 440
    assert repairs == ["audio_resampled"]
    # Against an independent polyphase resampler, away from the filter edges.
    reference = resample_poly(_tone(440, 8000).astype(np.float64), 2, 1)
    assert np.corrcoef(audio[500:-500], reference[500:-500])[0, 1] > 0.999
    # Amplitude kept: the tone's peak stays 0.5.
    assert abs(np.abs(audio[500:-500]).max() - 0.5) < 0.01


def test_wav_at_another_rate_is_resampled(tmp_path):
    path = tmp_path / "tone44k.wav"
    soundfile.write(path, _tone(1000, 44100), 44100)
    audio = load_audio(path, 16000)
    assert audio.shape == (16000,)
    assert int(np.argmax(np.abs(np.fft.rfft(audio)))) == 1000


def test_too_long_audio_is_truncated_with_a_warning_or_rejected(caplog):
    audio = np.ones(40000, np.float32)
    repairs = []
    with caplog.at_level(logging.WARNING, logger="rft_trl.data.media"):
        kept = load_audio(audio, 16000, max_samples=32000, repairs=repairs)
    assert kept.shape == (32000,)
    assert repairs == ["audio_truncated"]
    assert "2.50 s, above the 2.00 s window" in caplog.text
    with pytest.raises(MediaError, match="2.50 s") as info:
        load_audio(audio, 16000, max_samples=32000, too_long="reject")
    assert info.value.reason == "audio_too_long"
    # The limit is applied after resampling: 1.5 s at 8 kHz is 24000 samples at 16 kHz, under 32000.
    assert load_audio((np.ones(12000, np.float32), 8000), 16000, max_samples=32000).shape == (24000,)
    with pytest.raises(ValueError, match="too_long must be"):
        load_audio(audio, 16000, too_long="drop")


def test_bad_audio_raises_with_reason(tmp_path):
    assert _reason(lambda: load_audio(np.zeros(0, np.float32), 16000)) == "empty_audio"
    assert _reason(lambda: load_audio({"array": [], "sampling_rate": 16000}, 16000)) == "empty_audio"
    silent = tmp_path / "zero_frames.wav"
    soundfile.write(silent, np.zeros(0, np.float32), 16000)
    assert _reason(lambda: load_audio(silent, 16000)) == "empty_audio"
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    assert _reason(lambda: load_audio(empty, 16000)) == "empty_file"
    assert _reason(lambda: load_audio(b"", 16000)) == "empty_file"
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF not really a wave file" * 4)
    assert _reason(lambda: load_audio(garbage, 16000)) == "corrupt_audio"
    assert _reason(lambda: load_audio(garbage.read_bytes(), 16000)) == "corrupt_audio"
    assert _reason(lambda: load_audio(tmp_path / "none.wav", 16000)) == "missing_file"

    with pytest.raises(MediaError, match="1 of 3 samples are NaN or infinite") as info:
        load_audio(np.array([0.1, np.nan, 0.2], np.float32), 16000)
    assert info.value.reason == "nan_audio"
    assert _reason(lambda: load_audio(np.array([np.inf, 0.0]), 16000)) == "nan_audio"
    # NaN is caught before resampling would smear it.
    assert _reason(lambda: load_audio((np.array([0.0, np.nan] * 100), 8000), 16000)) == "nan_audio"

    assert _reason(lambda: load_audio(np.zeros((2, 2, 10)), 16000)) == "bad_audio_shape"
    assert _reason(lambda: load_audio(np.zeros((20, 30)), 16000)) == "bad_audio_shape"
    assert _reason(lambda: load_audio({"sampling_rate": 16000}, 16000)) == "unsupported_input"
    assert _reason(lambda: load_audio(np.array(["a"]), 16000)) == "unsupported_input"
    assert _reason(lambda: load_audio(3.0, 16000)) == "unsupported_input"
    assert _reason(lambda: load_audio((np.ones(4), 0), 16000)) == "unsupported_input"


def test_wav_bytes_roundtrip_helper_matches_file_decoding(tmp_path):
    # Bytes and files go through the same decoder: identical samples.
    tone = _tone(300, 16000, 0.05)
    path = tmp_path / "a.wav"
    path.write_bytes(_wav_bytes(tone, 16000))
    np.testing.assert_array_equal(load_audio(path, 16000), load_audio(_wav_bytes(tone, 16000), 16000))
