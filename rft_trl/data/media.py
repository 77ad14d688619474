"""Load images, videos and audio from every form a dataset row may hold them in, and make each repair explicit.

Rows reach the collator from `datasets.Dataset`, streaming `datasets.IterableDataset` or plain lists, so one image may
be a PIL image, a `datasets.Image()` dict (`{"bytes", "path"}`), a path, raw bytes or an array; audio may be a
`{"array", "sampling_rate"}` dict, an array, a path or bytes (`datasets.Audio()` decoding needs torchcodec, which is
not always importable, so audio is decoded here with soundfile).

Every loader returns one canonical form (RGB `PIL.Image.Image` for images, a list of them for a video, mono float32
`numpy.ndarray` at the requested rate for audio) or raises [`MediaError`] with a short `reason` code that ends up in
the `data/skipped/<reason>` metrics. What can be repaired without guessing (colour modes, 16-bit depth, alpha,
sizes outside the processor's bounds, stereo, sample rate, overlong audio) is repaired, logged at debug level and,
when the caller passes a `repairs` list, recorded there as a short code so that repairs can be counted too.

Videos: with no PyAV or torchcodec installed there is no offline decoder for MP4/WebM/AVI here, so a video is a
list of frames, a `[T, H, W, C]` array, a directory of frame images (sorted by file name) or an animated
GIF/WebP/PNG/TIFF file decoded with Pillow. Other video files are rejected with reason `"unsupported_video_format"`.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import soxr
import torch
from PIL import Image, ImageSequence, UnidentifiedImageError
from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

logger = logging.getLogger(__name__)

# Suffixes Pillow decodes as multi-frame animations; anything else that is a file and not a directory of frames
# would need a video codec library.
ANIMATED_IMAGE_SUFFIXES = (".gif", ".webp", ".png", ".apng", ".tif", ".tiff")
# Qwen2-VL's `smart_resize` refuses images whose long side exceeds 200 times the short side.
QWEN_VL_MAX_ASPECT_RATIO = 200.0
_MEDIA_EXTENSIONS_HINT = "pass a list of frames, a [T, H, W, C] array, a directory of frame images or a GIF"


class MediaError(ValueError):
    """
    A media item that cannot be used. `reason` is a short code (`"missing_file"`, `"corrupt_image"`,
    `"empty_audio"`, `"nan_audio"`, ...) used for metric names; `detail` says what was found.
    """

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageBounds:
    """
    Pixel-count bounds an image (or each video frame) is brought into before the processor sees it.

    Args:
        min_pixels (`int`, *optional*):
            Images with fewer pixels are upscaled (aspect ratio kept) to at least this many.
        max_pixels (`int`, *optional*):
            Images with more pixels are downscaled (aspect ratio kept) to at most this many, so the processor never
            resizes a huge image itself.
        max_aspect_ratio (`float`, *optional*):
            Images whose long side exceeds this multiple of the short side are rejected with reason
            `"extreme_aspect_ratio"`: padding or cropping them would invent or drop content.
    """

    min_pixels: int | None = None
    max_pixels: int | None = None
    max_aspect_ratio: float | None = None


def image_bounds_from_processor(processor: object | None) -> ImageBounds:
    """
    Read the pixel bounds of an image or video processor.

    Qwen2-VL / Qwen2.5-VL processors store `min_pixels` and `max_pixels` as `size["shortest_edge"]` and
    `size["longest_edge"]`; other processors resize to a fixed size themselves and get no bounds.

    Why not leave the sizing to the processor: the loaded image is what the rollout keeps (`PromptBatch.sample_media`,
    handed to vLLM and to the completions table), so bounding it bounds that memory; and the processor alone gives
    other token counts (its resize floors to whole patches after scaling down to `max_pixels`: a 3000x2000 image under
    bounds 784/3136 gets a 2x4 patch grid alone, 4x4 after this pre-shrink to 68x45; transformers 5.25). Why by
    class: `size["shortest_edge"]` and `size["longest_edge"]` are pixel counts only in this lineage; elsewhere they
    are edge lengths (LLaVA, Idefics3, Mistral3), so no generic reading of `size` exists.

    Args:
        processor (`BaseImageProcessor` or `BaseVideoProcessor`, *optional*):
            The image or video processor; `None` gives no bounds.

    Returns:
        [`ImageBounds`]
    """
    if isinstance(processor, (Qwen2VLImageProcessor, Qwen2VLVideoProcessor)):
        return ImageBounds(
            min_pixels=processor.size["shortest_edge"],
            max_pixels=processor.size["longest_edge"],
            max_aspect_ratio=QWEN_VL_MAX_ASPECT_RATIO,
        )
    return ImageBounds()


def _repair(repairs: list[str] | None, code: str, detail: str) -> None:
    logger.debug("media repair %s: %s", code, detail)
    if repairs is not None:
        repairs.append(code)


def _check_file(path: Path, kind: str) -> None:
    if not path.exists():
        raise MediaError("missing_file", f"{kind} file {str(path)!r} does not exist")
    if path.is_file() and path.stat().st_size == 0:
        raise MediaError("empty_file", f"{kind} file {str(path)!r} has zero bytes")


def _reject_url(value: str, kind: str) -> None:
    if value.startswith(("http://", "https://")):
        raise MediaError("unsupported_input", f"{kind} {value!r} is a URL; remote media are not fetched, download it")


# ----------------------------------------------------------------------------------------------------------- images


def _media_source(source: str | os.PathLike | bytes, kind: str) -> tuple[str, io.BytesIO | Path]:
    """A medium's name for messages and what to read it from: bytes (never empty) or a local file (never a URL)."""
    if isinstance(source, (bytes, bytearray)):
        if len(source) == 0:
            raise MediaError("empty_file", f"{kind} bytes are empty")
        return "<bytes>", io.BytesIO(source)
    _reject_url(str(source), kind)
    path = Path(source)
    _check_file(path, kind)
    return str(path), path


def _open_image(source: str | os.PathLike | bytes) -> Image.Image:
    """Open and fully decode an image file or bytes, turning every decoder failure into a `MediaError`."""
    name, stream = _media_source(source, "image")
    try:
        image = Image.open(stream)
        # `open` only reads the header; `load` decodes, which is where truncated files fail.
        image.load()
    except Image.DecompressionBombError as error:
        raise MediaError("image_too_large", f"{name}: {error}") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise MediaError("corrupt_image", f"{name} cannot be decoded: {error}") from error
    return image


def _integer_to_uint8(array: np.ndarray, repairs: list[str] | None) -> np.ndarray:
    """Map integer pixels to 8 bits: uint8 as is, uint16 by 257 (65535 -> 255), other ints by their range."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    low, high = int(array.min()), int(array.max())
    if low < 0 or high > 65535:
        raise MediaError("bad_pixel_range", f"integer pixels span [{low}, {high}], outside [0, 65535]")
    # uint16 is 16-bit whatever its values; wider ints (Pillow's mode "I") carry no depth, so their range decides.
    if array.dtype == np.uint16 or high > 255:
        _repair(repairs, "image_16bit_scaled", f"{array.dtype} pixels up to {high} divided by 257")
        return np.rint(array.astype(np.float64) / 257.0).astype(np.uint8)
    return array.astype(np.uint8)


def _float_to_uint8(array: np.ndarray, repairs: list[str] | None) -> np.ndarray:
    """Map float pixels to 8 bits: [0, 1] is scaled by 255, [0, 255] is taken as already scaled."""
    if not np.isfinite(array).all():
        raise MediaError("nan_image", "image contains NaN or infinite pixels")
    low, high = float(array.min()), float(array.max())
    if low >= 0.0 and high <= 1.0:
        return np.rint(array * 255.0).astype(np.uint8)
    if low >= 0.0 and high <= 255.0:
        _repair(repairs, "image_float_255", f"float pixels span [{low:g}, {high:g}]; taken as 0-255")
        return np.rint(array).astype(np.uint8)
    raise MediaError("bad_pixel_range", f"float pixels span [{low:g}, {high:g}], outside [0, 1] and [0, 255]")


def _array_to_image(array: np.ndarray, repairs: list[str] | None) -> Image.Image:
    """Turn an `[H, W]`, `[H, W, C]` or `[C, H, W]` array (C in 1, 3, 4) into a PIL image."""
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        _repair(repairs, "image_channels_first", f"array of shape {array.shape} moved to channels-last")
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))):
        raise MediaError("bad_image_shape", f"array of shape {tuple(array.shape)} is not [H, W] or [H, W, 1|3|4]")
    if array.size == 0:
        raise MediaError("bad_image_shape", f"array of shape {tuple(array.shape)} has no pixels")
    if np.issubdtype(array.dtype, np.floating):
        array = _float_to_uint8(array, repairs)
    elif np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
        array = _integer_to_uint8(array, repairs)
    else:
        raise MediaError("unsupported_input", f"image array of dtype {array.dtype}")
    return Image.fromarray(np.ascontiguousarray(array))


def _to_rgb(image: Image.Image, repairs: list[str] | None) -> Image.Image:
    """Convert any Pillow mode to RGB without clipping 16-bit or float data and without dropping alpha blindly."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        # Pillow's own convert("RGB") clips 16-bit values at 255 instead of scaling them. "I;16*" modes are 16-bit
        # whatever their values; mode "I" (32-bit) carries no depth, so its range decides (see `_integer_to_uint8`).
        dtype = np.float64 if mode == "F" else np.uint16 if mode.startswith("I;16") else np.int64
        return _array_to_image(np.asarray(image).astype(dtype), repairs).convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent pixels often hold arbitrary colour; flatten on white, which is what viewers show.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        _repair(repairs, "image_alpha_flattened", f"mode {mode} composited on white")
        return Image.alpha_composite(background, rgba).convert("RGB")
    _repair(repairs, "image_converted_rgb", f"mode {mode} converted to RGB")
    return image.convert("RGB")


def _bounded_size(width: int, height: int, bounds: ImageBounds) -> tuple[int, int]:
    pixels = width * height
    if bounds.min_pixels is not None and pixels < bounds.min_pixels:
        scale = math.sqrt(bounds.min_pixels / pixels)
        return math.ceil(width * scale), math.ceil(height * scale)
    if bounds.max_pixels is not None and pixels > bounds.max_pixels:
        scale = math.sqrt(bounds.max_pixels / pixels)
        return max(1, math.floor(width * scale)), max(1, math.floor(height * scale))
    return width, height


def _check_aspect_ratio(width: int, height: int, bounds: ImageBounds) -> None:
    ratio = max(width, height) / min(width, height)
    if bounds.max_aspect_ratio is not None and ratio > bounds.max_aspect_ratio:
        raise MediaError(
            "extreme_aspect_ratio",
            f"image of {width}x{height} has aspect ratio {ratio:.0f}, above the processor's limit "
            f"{bounds.max_aspect_ratio:g}",
        )


def _resize(image: Image.Image, size: tuple[int, int], repairs: list[str] | None) -> Image.Image:
    if size == image.size:
        return image
    code = "image_upscaled" if size[0] * size[1] > image.size[0] * image.size[1] else "image_downscaled"
    _repair(repairs, code, f"{image.size[0]}x{image.size[1]} resized to {size[0]}x{size[1]}")
    # reducing_gap first shrinks by an integer factor, which keeps downscaling a huge image fast.
    return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)


def _decode_image(value: object, repairs: list[str] | None) -> Image.Image:
    """Any supported image form -> a decoded PIL image of any mode."""
    if isinstance(value, Image.Image):
        try:
            # Lazily opened images (e.g. from `datasets.Image()`) decode here; a truncated file fails now.
            value.load()
        except (OSError, SyntaxError, ValueError) as error:
            raise MediaError("corrupt_image", f"PIL image cannot be decoded: {error}") from error
        return value
    if isinstance(value, dict):
        # `datasets.Image(decode=False)` rows: bytes win over path, as in `datasets` itself.
        if value.get("bytes") is not None:
            return _open_image(value["bytes"])
        if value.get("path") is not None:
            return _open_image(value["path"])
        raise MediaError("unsupported_input", f"image dict with keys {sorted(value)} has neither bytes nor path")
    if isinstance(value, (str, os.PathLike, bytes, bytearray)):
        return _open_image(value)
    if isinstance(value, torch.Tensor):
        return _array_to_image(value.detach().cpu().numpy(), repairs)
    if isinstance(value, np.ndarray):
        return _array_to_image(value, repairs)
    raise MediaError("unsupported_input", f"cannot read an image from {type(value).__name__}")


def load_image(value: object, bounds: ImageBounds | None = None, repairs: list[str] | None = None) -> Image.Image:
    """
    Load one image as an RGB PIL image inside `bounds`.

    Args:
        value (`PIL.Image.Image`, `dict`, `str`, `os.PathLike`, `bytes`, `numpy.ndarray` or `torch.Tensor`):
            The image: a PIL image of any mode; a `datasets.Image()` dict `{"bytes", "path"}`; a file path; encoded
            bytes; or an `[H, W]`, `[H, W, C]` or `[C, H, W]` array (C in 1, 3, 4) of uint8, 16-bit or wider
            integers (scaled by 257), bool, or floats in [0, 1] (or [0, 255]).
        bounds ([`ImageBounds`], *optional*):
            Pixel bounds to resize into (see [`image_bounds_from_processor`]); none by default.
        repairs (`list[str]`, *optional*):
            If given, a short code is appended for each repair made (`"image_converted_rgb"`,
            `"image_alpha_flattened"`, `"image_16bit_scaled"`, `"image_upscaled"`, `"image_downscaled"`, ...).

    Returns:
        `PIL.Image.Image`: an RGB image; the input itself when no repair was needed.

    Raises:
        [`MediaError`]: reasons `"missing_file"`, `"empty_file"`, `"corrupt_image"`, `"image_too_large"`,
        `"nan_image"`, `"bad_pixel_range"`, `"bad_image_shape"`, `"extreme_aspect_ratio"`, `"unsupported_input"`.
    """
    bounds = ImageBounds() if bounds is None else bounds
    image = _to_rgb(_decode_image(value, repairs), repairs)
    _check_aspect_ratio(*image.size, bounds)
    return _resize(image, _bounded_size(*image.size, bounds), repairs)


# ----------------------------------------------------------------------------------------------------------- videos


def _video_file_frames(path: Path) -> list[Image.Image]:
    if path.is_dir():
        files = sorted(child for child in path.iterdir() if child.is_file() and not child.name.startswith("."))
        if not files:
            raise MediaError("empty_video", f"frame directory {str(path)!r} holds no files")
        return [_open_image(file) for file in files]
    if path.suffix.lower() not in ANIMATED_IMAGE_SUFFIXES:
        raise MediaError(
            "unsupported_video_format",
            f"{str(path)!r}: no {path.suffix or 'extensionless'} video decoder is available (PyAV and torchcodec are "
            f"not installed); {_MEDIA_EXTENSIONS_HINT}",
        )
    return _animation_frames(_open_image(path), str(path))


def _animation_frames(animation: Image.Image, name: str) -> list[Image.Image]:
    try:
        # Seeking composites each GIF/APNG frame onto the previous ones; copy before the next seek overwrites it.
        return [
            frame.convert("RGBA") if frame.mode == "P" else frame.copy() for frame in ImageSequence.Iterator(animation)
        ]
    except (OSError, EOFError, ValueError) as error:
        raise MediaError("corrupt_video", f"{name}: frame cannot be decoded: {error}") from error


def _decode_video(value: object) -> list[object]:
    """Any supported video form -> a list of frames, each still in any `load_image` form."""
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return _animation_frames(_open_image(value["bytes"]), "<bytes>")
        if value.get("path") is not None:
            value = value["path"]
        else:
            raise MediaError("unsupported_input", f"video dict with keys {sorted(value)} has neither bytes nor path")
    if isinstance(value, (str, os.PathLike)):
        _reject_url(str(value), "video")
        path = Path(value)
        _check_file(path, "video")
        return list(_video_file_frames(path))
    if isinstance(value, (bytes, bytearray)):
        return _animation_frames(_open_image(value), "<bytes>")
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        if value.ndim not in (3, 4):
            raise MediaError("bad_video_shape", f"video array of shape {tuple(value.shape)} is not [T, H, W(, C)]")
        return list(value)
    if isinstance(value, Sequence):
        return list(value)
    raise MediaError("unsupported_input", f"cannot read a video from {type(value).__name__}")


def load_video(
    value: object, bounds: ImageBounds | None = None, repairs: list[str] | None = None
) -> list[Image.Image]:
    """
    Load one video as a list of RGB PIL frames of one size inside `bounds`.

    Args:
        value (`list`, `numpy.ndarray`, `torch.Tensor`, `str`, `os.PathLike`, `bytes` or `dict`):
            The video: a list of frames (each in any form [`load_image`] accepts); a `[T, H, W, C]` or `[T, H, W]`
            array; a directory of frame images (sorted by file name, so zero-pad the numbers); an animated
            GIF/WebP/PNG/TIFF path or its bytes; or a `{"bytes", "path"}` dict. MP4 and other codec-based files are
            rejected (no offline decoder here).
        bounds ([`ImageBounds`], *optional*):
            Per-frame pixel bounds; every frame gets the size chosen for the first.
        repairs (`list[str]`, *optional*):
            If given, each repair code is appended once per video (not per frame).

    Returns:
        `list[PIL.Image.Image]`: the frames, all RGB and of one size.

    Raises:
        [`MediaError`]: the reasons of [`load_image`] (per frame) and `"empty_video"`, `"inconsistent_frames"`
        (frames of different sizes), `"corrupt_video"`, `"unsupported_video_format"`, `"bad_video_shape"`.
    """
    bounds = ImageBounds() if bounds is None else bounds
    frame_repairs: list[str] = []
    frames = [_to_rgb(_decode_image(frame, frame_repairs), frame_repairs) for frame in _decode_video(value)]
    if not frames:
        raise MediaError("empty_video", "video has no frames")
    sizes = sorted({frame.size for frame in frames})
    if len(sizes) > 1:
        raise MediaError("inconsistent_frames", f"video frames have different sizes {sizes}")
    _check_aspect_ratio(*frames[0].size, bounds)
    target = _bounded_size(*frames[0].size, bounds)
    frames = [_resize(frame, target, frame_repairs) for frame in frames]
    for code in dict.fromkeys(frame_repairs):
        _repair(repairs, code, f"applied to the frames of a {len(frames)}-frame video")
    return frames


# ------------------------------------------------------------------------------------------------------------ audio


def _read_audio_file(source: str | os.PathLike | bytes) -> tuple[np.ndarray, int]:
    name, stream = _media_source(source, "audio")
    try:
        # always_2d keeps one layout, [samples, channels], for the downmix below.
        array, rate = soundfile.read(stream, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as error:
        raise MediaError("corrupt_audio", f"{name} cannot be decoded: {error}") from error
    return array, int(rate)


def _decode_audio(value: object, sampling_rate: int) -> tuple[np.ndarray, int]:
    """Any supported audio form -> (array of any dtype and layout, its sampling rate)."""
    if isinstance(value, dict):
        if value.get("array") is not None:
            # A dict without a rate is taken at the target rate, like a bare array.
            rate = value.get("sampling_rate")
            return _as_array(value["array"]), sampling_rate if rate is None else int(rate)
        if value.get("bytes") is not None:
            return _read_audio_file(value["bytes"])
        if value.get("path") is not None:
            return _read_audio_file(value["path"])
        raise MediaError("unsupported_input", f"audio dict with keys {sorted(value)} has no array, bytes or path")
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], (int, np.integer)):
        return _as_array(value[0]), int(value[1])
    if isinstance(value, (str, os.PathLike, bytes, bytearray)):
        return _read_audio_file(value)
    return _as_array(value), sampling_rate


def _as_array(value: object) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, (np.ndarray, list)):
        return np.asarray(value)
    raise MediaError("unsupported_input", f"cannot read audio from {type(value).__name__}")


def _to_mono_float(array: np.ndarray, repairs: list[str] | None) -> np.ndarray:
    if array.ndim not in (1, 2):
        raise MediaError("bad_audio_shape", f"audio of shape {tuple(array.shape)} is not [samples] or 2-D")
    if np.issubdtype(array.dtype, np.integer):
        # PCM integers: the full scale of the type maps to [-1, 1); unsigned PCM is centred on its midpoint.
        info = np.iinfo(array.dtype)
        offset = (int(info.max) + 1) // 2 if info.min == 0 else 0
        _repair(repairs, "audio_int_scaled", f"{array.dtype} PCM scaled to [-1, 1)")
        array = (array.astype(np.float64) - offset) / float(int(info.max) + 1 - offset)
    elif not np.issubdtype(array.dtype, np.floating):
        raise MediaError("unsupported_input", f"audio array of dtype {array.dtype}")
    if array.ndim == 2:
        # soundfile gives [samples, channels], librosa and torchaudio [channels, samples]; channels are few.
        channel_axis = 0 if array.shape[0] < array.shape[1] else 1
        if array.shape[channel_axis] > 8:
            raise MediaError("bad_audio_shape", f"audio of shape {array.shape} has no recognisable channel axis")
        if array.shape[channel_axis] > 1:
            _repair(repairs, "audio_downmixed", f"{array.shape[channel_axis]} channels averaged to mono")
        array = array.mean(axis=channel_axis)
    return array.astype(np.float32)


def load_audio(
    value: object,
    sampling_rate: int,
    max_samples: int | None = None,
    too_long: str = "truncate",
    repairs: list[str] | None = None,
) -> np.ndarray:
    """
    Load one audio clip as a mono float32 waveform at `sampling_rate`.

    Args:
        value (`dict`, `numpy.ndarray`, `torch.Tensor`, `list`, `tuple`, `str`, `os.PathLike` or `bytes`):
            The clip: a `{"array", "sampling_rate"}` dict (decoded `datasets.Audio()`), a `{"bytes", "path"}` dict
            (undecoded), an `(array, sampling_rate)` tuple, a bare array taken to be at `sampling_rate`, a file path
            or encoded bytes (decoded with soundfile). Arrays may be 1-D or 2-D with up to 8 channels on either
            axis; integer PCM is scaled to [-1, 1).
        sampling_rate (`int`):
            The rate to return, the feature extractor's `sampling_rate`. Other rates are resampled with soxr's
            high-quality filter (librosa's default resampler, called directly to skip librosa's slow import).
        max_samples (`int`, *optional*):
            Longest clip kept, in samples at `sampling_rate` (the feature extractor's `n_samples`, its window).
        too_long (`str`, *optional*, defaults to `"truncate"`):
            What to do with a longer clip: `"truncate"` keeps its start and logs a warning (a repair,
            `"audio_truncated"`), `"reject"` raises a [`MediaError`] with reason `"audio_too_long"`.
        repairs (`list[str]`, *optional*):
            If given, a short code is appended for each repair made (`"audio_downmixed"`, `"audio_resampled"`,
            `"audio_int_scaled"`, `"audio_truncated"`).

    Returns:
        `numpy.ndarray`: float32 waveform of shape `[num_samples]`.

    Raises:
        [`MediaError`]: reasons `"missing_file"`, `"empty_file"`, `"corrupt_audio"`, `"empty_audio"`, `"nan_audio"`,
        `"audio_too_long"`, `"bad_audio_shape"`, `"unsupported_input"`.
    """
    if too_long not in ("truncate", "reject"):
        raise ValueError(f"too_long must be 'truncate' or 'reject', got {too_long!r}.")
    array, rate = _decode_audio(value, sampling_rate)
    if array.size == 0:
        raise MediaError("empty_audio", f"audio of shape {tuple(array.shape)} has no samples")
    array = _to_mono_float(array, repairs)
    # Checked before resampling, whose filter would smear one bad sample over its neighbours.
    if not np.isfinite(array).all():
        raise MediaError(
            "nan_audio", f"{int((~np.isfinite(array)).sum())} of {array.size} samples are NaN or infinite"
        )
    if rate <= 0:
        raise MediaError("unsupported_input", f"sampling rate {rate} is not positive")
    if rate != sampling_rate:
        _repair(repairs, "audio_resampled", f"{rate} Hz resampled to {sampling_rate} Hz")
        array = soxr.resample(array, rate, sampling_rate, quality="HQ").astype(np.float32)
    if max_samples is not None and array.shape[0] > max_samples:
        seconds = f"{array.shape[0] / sampling_rate:.2f} s, above the {max_samples / sampling_rate:.2f} s window"
        if too_long == "reject":
            raise MediaError("audio_too_long", f"audio lasts {seconds}")
        logger.warning("Audio lasts %s; truncated to the window.", seconds)
        _repair(repairs, "audio_truncated", f"audio of {seconds} truncated")
        array = array[:max_samples]
    return array
