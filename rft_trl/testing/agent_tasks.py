"""A synthetic agent task a VLM can only solve through a tool that returns an image: TRL's `environment_factory` shape.

The zoom task: an image of four regions (quadrants), each with a small dot of its own colour on a noisy grey
background; the question asks the colour of one region's dot. The image is far larger than the tiny processor's pixel
bound, so the full view is shrunk about 8 times and a dot is a faint tint of under one pixel: the answer cannot be
read off it. The environment's tool `zoom()` returns the 6x6 pixels around the asked region's dot, enlarged, in which
the dot fills four ninths of the view. A policy must call `zoom`, then name the colour it sees.

`zoom_warmup_rows` gives the supervised rows of a format warm-up (the tool call, and a random colour after the tool's
answer), so that RL starts at chance (1/4) rather than at a policy that never calls tools: what RL must learn is to
read the colour off the tool's image.
"""

from __future__ import annotations

import numpy as np
from datasets import Dataset, Features, Image, Value
from PIL import Image as PILImage

from .vocabulary import COLOUR_RGB

ZOOM_COLOURS = ["red", "green", "blue", "yellow"]
ZOOM_IMAGE_SIZE = 448  # 8 times the tiny Qwen-VL processors' 56x56 pixel bound
ZOOM_DOT = 4  # the dot's side, in pixels of the full image
ZOOM_VIEW = 56  # the side of what `crop` returns
ZOOM_QUESTION = "What colour is the dot in region {region}? Call zoom, then answer with one word."
ZOOM_FEATURES = Features(
    {
        "prompt": [{"role": Value("string"), "content": [{"type": Value("string"), "text": Value("string")}]}],
        "image": Image(),
        "region": Value("int64"),
        "answer": Value("string"),
        "dots": [Value("int64")],  # each region's dot: [top, left] pairs laid end to end
    }
)


def _zoom_image(colours: list[str], rng: np.random.Generator) -> tuple[PILImage.Image, list[int]]:
    """The noisy grey image with one dot per region (quadrant, row-major), each at a random spot of its region."""
    size, half = ZOOM_IMAGE_SIZE, ZOOM_IMAGE_SIZE // 2
    pixels = rng.integers(100, 140, size=(size, size, 3), dtype=np.int64)
    dots = []
    for region, colour in enumerate(colours):
        top = (region // 2) * half + int(rng.integers(8, half - 8 - ZOOM_DOT))
        left = (region % 2) * half + int(rng.integers(8, half - 8 - ZOOM_DOT))
        pixels[top : top + ZOOM_DOT, left : left + ZOOM_DOT] = COLOUR_RGB[colour]
        dots += [top, left]
    return PILImage.fromarray(pixels.astype(np.uint8), mode="RGB"), dots


def make_zoom_dataset(num_samples: int = 64, seed: int = 0) -> Dataset:
    """
    The zoom task.

    Args:
        num_samples (`int`, *optional*, defaults to `64`):
            Number of rows; the answers are balanced over the four colours and the asked regions drawn at random.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the images, the colours' order per image and the asked regions.

    Returns:
        `Dataset`: columns `prompt` (one user message with an image part), `image`, `region` (0 to 3), `answer` (the
        asked dot's colour) and `dots` (where each region's dot is, for the environment).
    """
    rng = np.random.default_rng(seed)
    rows = {name: [] for name in ZOOM_FEATURES}
    for index in range(num_samples):
        answer = ZOOM_COLOURS[index % len(ZOOM_COLOURS)]
        region = int(rng.integers(0, 4))
        others = [colour for colour in ZOOM_COLOURS if colour != answer]
        colours = [others[i] for i in rng.permutation(3)]
        colours.insert(region, answer)  # every region's dot has its own colour
        image, dots = _zoom_image(colours, rng)
        question = ZOOM_QUESTION.format(region=region)
        rows["prompt"].append([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}])
        rows["image"].append(image)
        rows["region"].append(region)
        rows["answer"].append(answer)
        rows["dots"].append(dots)
    order = rng.permutation(num_samples).tolist()
    return Dataset.from_dict(
        {name: [values[i] for i in order] for name, values in rows.items()}, features=ZOOM_FEATURES
    )


def zoom_view(image: PILImage.Image, dots: list[int], region: int) -> PILImage.Image:
    """The 6x6 pixels around a region's dot, enlarged to 56x56 (the dot fills its middle, four ninths of the view)."""
    top, left = dots[2 * region], dots[2 * region + 1]
    margin = 1
    box = (left - margin, top - margin, left + ZOOM_DOT + margin, top + ZOOM_DOT + margin)
    return image.convert("RGB").crop(box).resize((ZOOM_VIEW, ZOOM_VIEW), PILImage.NEAREST)


class ZoomEnvironment:
    """
    One zoom-task episode (TRL's environment shape): reset with its row; `zoom` is the policy's tool. Score it with
    `rft_trl.rewards.accuracy_reward` (the last message, the policy's answer, against the `answer` column).
    """

    def __init__(self):
        self.image, self.dots, self.region = None, None, None

    def reset(self, image, dots, region, **row) -> None:
        self.image, self.dots, self.region = image, list(dots), region

    def zoom(self) -> list:
        """
        Zoom into the region the question asks about.
        """
        return [{"type": "image", "image": zoom_view(self.image, self.dots, self.region)}]


ZOOM_CALL = (
    '<tool_call>\n{"name": "zoom", "arguments": {}}\n</tool_call>'  # as the tiny (Qwen-style) template writes it
)


def zoom_warmup_rows(dataset: Dataset, seed: int = 0) -> list[dict]:
    """
    Supervised rows of the format warm-up: per row, the call of `zoom`; and, after the tool's answer, a random colour
    (the answer's format, not its content, which RL must learn from the view).
    """
    rng = np.random.default_rng(seed)
    rows = []
    for row in dataset:
        rows.append({"prompt": row["prompt"], "image": row["image"], "completion": ZOOM_CALL})
        call = {"type": "function", "function": {"name": "zoom", "arguments": {}}}
        view = zoom_view(row["image"], row["dots"], row["region"])
        prompt = [
            *row["prompt"],
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "name": "zoom", "content": [{"type": "image"}]},
        ]
        colour = ZOOM_COLOURS[int(rng.integers(0, len(ZOOM_COLOURS)))]
        rows.append({"prompt": prompt, "images": [row["image"], view], "completion": colour})
    return rows
