"""Small synthetic tasks as `datasets.Dataset`, each with an `answer` column that a rule reward can check.

| builder | media | question | answers |
| --- | --- | --- | --- |
| `make_colour_dataset` | one 56x56 image with a coloured square | colour of the square | 8 colours |
| `make_grounding_dataset` | two squares of different colours, one per half | colour of the left one | 8 colours |
| `make_pattern_dataset` | a striped square of any colour, either orientation | stripe frequency | high / low |
| `make_video_dataset` | 4 frames with a dot | is the dot moving | moving / static |
| `make_pitch_dataset` | a 1 s tone at 16 kHz | is the tone high or low | high / low |
| `make_text_dataset` | none | which word follows | 6 words |

Prompts are chat messages in the conversational format TRL uses, so the same rows work with TRL's GRPOTrainer.
"""

from __future__ import annotations

import numpy as np
from datasets import Dataset, Features, Image, Sequence, Value
from PIL import Image as PILImage

from .agent_tasks import ZOOM_COLOURS, make_zoom_dataset, zoom_warmup_rows
from .vocabulary import COLOUR_RGB, COLOURS, FREQUENCIES, MOTIONS, PITCH_HZ, PITCHES, STRIPE_PERIOD, TEXT_WORDS

IMAGE_SIZE = 56
COLOUR_QUESTION = "What colour is the square? Answer with one word."
# Columns of the one-image tasks.
IMAGE_TASK_FEATURES = Features(
    {
        "prompt": [{"role": Value("string"), "content": [{"type": Value("string"), "text": Value("string")}]}],
        "image": Image(),
        "answer": Value("string"),
    }
)
GROUNDING_QUESTION = "What colour is the left square? Answer with one word."
PATTERN_QUESTION = "Is the stripe frequency high or low? Answer with one word."
STRIPE_COLOURS = [colour for colour in COLOURS if colour != "black"]  # stripes on black
VIDEO_QUESTION = "Is the dot moving or static? Answer with one word."
PITCH_QUESTION = "Is the tone high or low? Answer with one word."


def _user_prompt(media_type: str | None, question: str) -> list[dict]:
    content = [{"type": media_type}] if media_type else []
    content.append({"type": "text", "text": question})
    return [{"role": "user", "content": content}]


def _balanced(choices: list[str], num_samples: int, rng: np.random.Generator) -> list[str]:
    """`num_samples` answers taking the choices in turn (balanced), shuffled."""
    answers = [choices[i % len(choices)] for i in range(num_samples)]
    return [answers[i] for i in rng.permutation(num_samples)]


def colour_square_image(colour: str, rng: np.random.Generator, size: int = IMAGE_SIZE) -> PILImage.Image:
    """A grey, lightly noisy background with a square of `colour` covering about half the image at a random spot."""
    background = rng.integers(100, 140, size=(size, size, 3), dtype=np.int64)
    side = size // 2 + int(rng.integers(0, size // 4))
    top, left = (int(v) for v in rng.integers(0, size - side + 1, size=2))
    pixels = background.copy()
    pixels[top : top + side, left : left + side] = COLOUR_RGB[colour]
    return PILImage.fromarray(pixels.astype(np.uint8), mode="RGB")


def make_colour_dataset(num_samples: int = 64, seed: int = 0) -> Dataset:
    """
    The colour task: an image with a coloured square; the answer is the colour's name.

    Args:
        num_samples (`int`, *optional*, defaults to `64`):
            Number of rows; colours are balanced (round-robin) and shuffled.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the image noise, square placement and order.

    Returns:
        `Dataset`: columns `prompt` (chat messages with one image part), `image` (`datasets.Image`) and `answer`.
    """
    rng = np.random.default_rng(seed)
    answers = _balanced(COLOURS, num_samples, rng)
    features = IMAGE_TASK_FEATURES
    rows = {
        "prompt": [_user_prompt("image", COLOUR_QUESTION) for _ in answers],
        "image": [colour_square_image(colour, rng) for colour in answers],
        "answer": answers,
    }
    return Dataset.from_dict(rows, features=features)


def two_squares_image(left: str, right: str, rng: np.random.Generator, size: int = IMAGE_SIZE) -> PILImage.Image:
    """A grey, lightly noisy background with a square of `left` in the left half and one of `right` in the right."""
    pixels = rng.integers(100, 140, size=(size, size, 3), dtype=np.int64)
    half = size // 2
    for colour, offset in ((left, 0), (right, half)):
        side = half // 2 + int(rng.integers(0, half // 4))
        top = int(rng.integers(0, size - side + 1))
        left_edge = offset + int(rng.integers(0, half - side + 1))
        pixels[top : top + side, left_edge : left_edge + side] = COLOUR_RGB[colour]
    return PILImage.fromarray(pixels.astype(np.uint8), mode="RGB")


def make_grounding_dataset(num_samples: int = 64, seed: int = 0, image_size: int = IMAGE_SIZE) -> Dataset:
    """
    The grounding task: an image with two squares of different colours, one in each half; the answer is the colour
    of the left one. Reading the colours is not enough (naming one of the two scores 1/2): the answer depends on
    where each colour is, which only the vision tower's spatial features tell.

    Args:
        num_samples (`int`, *optional*, defaults to `64`):
            Number of rows; left colours are balanced (round-robin) and shuffled, right colours drawn among the
            other seven.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the image noise, square placement, right colours and order.
        image_size (`int`, *optional*, defaults to `56`):
            Side of the square images in pixels (the tiny Qwen2.5-VL sees 28 x 28 pixels per image token: 4 tokens
            at 56, 16 at 112).

    Returns:
        `Dataset`: columns `prompt` (chat messages with one image part), `image` (`datasets.Image`) and `answer`.
    """
    rng = np.random.default_rng(seed)
    answers = _balanced(COLOURS, num_samples, rng)
    rights = [str(rng.choice([c for c in COLOURS if c != left])) for left in answers]
    features = IMAGE_TASK_FEATURES
    rows = {
        "prompt": [_user_prompt("image", GROUNDING_QUESTION) for _ in answers],
        "image": [two_squares_image(left, right, rng, image_size) for left, right in zip(answers, rights)],
        "answer": answers,
    }
    return Dataset.from_dict(rows, features=features)


def make_pattern_dataset(num_samples: int = 64, seed: int = 0, image_size: int = IMAGE_SIZE) -> Dataset:
    """
    The pattern task: an image with a striped square, stripes of one of the 7 colours other than black on black,
    horizontal or vertical; the answer is their spatial frequency, `"high"` (a 4-pixel period) or `"low"` (14 pixels,
    the tiny models' patch side). Neither the colour nor the orientation says anything about the answer: only the
    texture, which the vision tower's features tell, does. The stripes are in phase with the image's pixel grid (a
    low-frequency stripe covers one half of each patch it crosses), so that a tiny vision tower can tell them apart.

    Args:
        num_samples (`int`, *optional*, defaults to `64`):
            Number of rows; answers alternate (balanced) and are shuffled, colours and orientations drawn at random.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the image noise, colours, orientations, square placement and order.
        image_size (`int`, *optional*, defaults to `56`):
            Side of the square images in pixels (the tiny Qwen2.5-VL sees 28 x 28 pixels per image token: 4 tokens
            at 56, 16 at 112).

    Returns:
        `Dataset`: columns `prompt` (chat messages with one image part), `image` (`datasets.Image`) and `answer`.
    """
    rng = np.random.default_rng(seed)
    answers = _balanced(FREQUENCIES, num_samples, rng)
    images = []
    for answer in answers:
        pixels = rng.integers(100, 140, size=(image_size, image_size, 3), dtype=np.int64)
        side = image_size // 2 + int(rng.integers(0, image_size // 4))
        top, left = (int(v) for v in rng.integers(0, image_size - side + 1, size=2))
        period = STRIPE_PERIOD[answer]
        if rng.integers(0, 2):  # horizontal stripes
            stripes = np.repeat(((np.arange(side) + top) % period < period // 2)[:, None], side, axis=1)
        else:
            stripes = np.repeat(((np.arange(side) + left) % period < period // 2)[None, :], side, axis=0)
        colour = np.array(COLOUR_RGB[STRIPE_COLOURS[int(rng.integers(0, len(STRIPE_COLOURS)))]])
        pixels[top : top + side, left : left + side] = np.where(stripes[..., None], colour, 0)
        images.append(PILImage.fromarray(pixels.astype(np.uint8), mode="RGB"))
    rows = {"prompt": [_user_prompt("image", PATTERN_QUESTION) for _ in answers], "image": images, "answer": answers}
    return Dataset.from_dict(rows, features=IMAGE_TASK_FEATURES)


def _dot_frames(moving: bool, rng: np.random.Generator, num_frames: int, size: int) -> list[PILImage.Image]:
    radius = size // 8
    y, x = (int(v) for v in rng.integers(radius, size - radius, size=2))
    step = int(rng.choice([-1, 1])) * (size // (2 * num_frames))
    frames = []
    for t in range(num_frames):
        cx = int(np.clip(x + (step * t if moving else 0), radius, size - radius - 1))
        pixels = np.full((size, size, 3), 30, dtype=np.uint8)
        pixels[y - radius : y + radius, cx - radius : cx + radius] = (250, 250, 250)
        frames.append(PILImage.fromarray(pixels, mode="RGB"))
    return frames


def make_video_dataset(num_samples: int = 32, seed: int = 0, num_frames: int = 4) -> Dataset:
    """
    The motion task: a few frames of a white dot that moves sideways or stays put; the answer is `moving`/`static`.

    Returns:
        `Dataset`: columns `prompt` (one video part), `video` (a list of `datasets.Image` frames) and `answer`.
    """
    rng = np.random.default_rng(seed)
    answers = _balanced(MOTIONS, num_samples, rng)
    features = Features(
        {
            "prompt": [{"role": Value("string"), "content": [{"type": Value("string"), "text": Value("string")}]}],
            "video": Sequence(Image()),
            "answer": Value("string"),
        }
    )
    rows = {
        "prompt": [_user_prompt("video", VIDEO_QUESTION) for _ in answers],
        "video": [_dot_frames(answer == "moving", rng, num_frames, IMAGE_SIZE) for answer in answers],
        "answer": answers,
    }
    return Dataset.from_dict(rows, features=features)


def tone(frequency: float, seconds: float, sampling_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A sine tone with random phase and amplitude, plus a little noise, as float32 in [-1, 1]."""
    t = np.arange(int(seconds * sampling_rate)) / sampling_rate
    amplitude = rng.uniform(0.3, 0.8)
    wave = amplitude * np.sin(2 * np.pi * frequency * t + rng.uniform(0, 2 * np.pi))
    return (wave + rng.normal(0, 0.01, size=t.shape)).astype(np.float32)


def make_pitch_dataset(
    num_samples: int = 32, seed: int = 0, seconds: float = 1.0, sampling_rate: int = 16000
) -> Dataset:
    """
    The pitch task: a pure tone, high (2.4 kHz) or low (300 Hz); the answer is `high`/`low`.

    Audio is stored as `{"array", "sampling_rate"}` structs rather than a `datasets.Audio` feature, whose decoding
    needs torchcodec.

    Returns:
        `Dataset`: columns `prompt` (one audio part), `audio` and `answer`.
    """
    rng = np.random.default_rng(seed)
    answers = _balanced(PITCHES, num_samples, rng)
    features = Features(
        {
            "prompt": [{"role": Value("string"), "content": [{"type": Value("string"), "text": Value("string")}]}],
            "audio": {"array": Sequence(Value("float32")), "sampling_rate": Value("int64")},
            "answer": Value("string"),
        }
    )
    rows = {
        "prompt": [_user_prompt("audio", PITCH_QUESTION) for _ in answers],
        "audio": [
            {"array": tone(PITCH_HZ[a], seconds, sampling_rate, rng), "sampling_rate": sampling_rate} for a in answers
        ],
        "answer": answers,
    }
    return Dataset.from_dict(rows, features=features)


def make_text_dataset(num_samples: int = 32, seed: int = 0) -> Dataset:
    """
    The text task: words form a cycle (apple, river, stone, cloud, tiger, piano); the answer is the word that follows
    the one in the question.

    Returns:
        `Dataset`: columns `prompt` (text-only chat messages) and `answer`.
    """
    rng = np.random.default_rng(seed)
    words = [TEXT_WORDS[int(i)] for i in rng.integers(0, len(TEXT_WORDS), size=num_samples)]
    successor = {w: TEXT_WORDS[(i + 1) % len(TEXT_WORDS)] for i, w in enumerate(TEXT_WORDS)}
    rows = {
        "prompt": [_user_prompt(None, f"Which word follows {w}? Answer with one word.") for w in words],
        "answer": [successor[w] for w in words],
    }
    return Dataset.from_dict(rows)


TASK_BUILDERS = {
    "colour": make_colour_dataset,
    "grounding": make_grounding_dataset,
    "pattern": make_pattern_dataset,
    "video": make_video_dataset,
    "pitch": make_pitch_dataset,
    "text": make_text_dataset,
    "zoom": make_zoom_dataset,
}

# The words a synthetic task's answers are drawn from (a format warm-up answers at random from them).
TASK_ANSWERS = {
    "colour": COLOURS,
    "grounding": COLOURS,
    "pattern": FREQUENCIES,
    "video": MOTIONS,
    "pitch": PITCHES,
    "text": TEXT_WORDS,
    "zoom": ZOOM_COLOURS,
}

# An agent task's format warm-up rows (its tool call, then a random answer after the tool's), by task.
TASK_WARMUP_ROWS = {"zoom": zoom_warmup_rows}


def make_task_dataset(task: str, num_samples: int, seed: int = 0) -> Dataset:
    """
    Build one of the synthetic tasks by name: `"colour"`, `"grounding"`, `"pattern"`, `"video"`, `"pitch"` or
    `"text"`.
    """
    if task not in TASK_BUILDERS:
        raise ValueError(f"Unknown synthetic task {task!r}; choose one of {', '.join(TASK_BUILDERS)}.")
    return TASK_BUILDERS[task](num_samples=num_samples, seed=seed)
