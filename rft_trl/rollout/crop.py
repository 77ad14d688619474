"""
A crop tool for visual agents ("thinking with images"): an environment whose `crop` returns a region of the sample's
image, enlarged, for the policy to look at closer.

`CropEnvironment` has TRL's environment shape (pass the class as `environment_factory`): each sample's instance is
reset with its dataset row and keeps the row's image (`image`, or the first of `images`); its public method `crop` is
the sample's tool. Coordinates are relative, 0 to 1000 on each axis, as Qwen2.5-VL and Qwen3-VL write boxes, so that
they do not depend on the size the processor resizes the image to.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from ..data.media import load_image

__all__ = ["CropEnvironment"]

SCALE = 1000  # coordinates run from 0 to SCALE on each axis


class CropEnvironment:
    """
    One sample's image and a `crop` tool over it.

    Args:
        min_side (`int`, *optional*, defaults to `56`): the smallest side a crop is returned at; a smaller crop is
            enlarged (keeping its aspect ratio) so that the processor gives it at least a few tokens.
    """

    def __init__(self, min_side: int = 56):
        self.min_side = min_side
        self.image: Image.Image | None = None

    def reset(self, image: Any = None, images: list | None = None, **row) -> None:
        """Keep the row's image (`image`, or the first of `images`), in any form a media column takes."""
        source = image if image is not None else (images or [None])[0]
        if source is None:
            raise ValueError("CropEnvironment needs an `image` (or `images`) column: it crops the row's image.")
        self.image = load_image(source)

    def crop(self, x1: int, y1: int, x2: int, y2: int) -> list:
        """
        Zoom into a region of the image to see it in more detail.

        Args:
            x1: Left edge of the region, 0 (the image's left) to 1000 (its right).
            y1: Top edge of the region, 0 (the image's top) to 1000 (its bottom).
            x2: Right edge of the region, greater than x1, at most 1000.
            y2: Bottom edge of the region, greater than y1, at most 1000.
        """
        if self.image is None:
            raise RuntimeError("crop before reset: the environment has no image yet.")
        if not (0 <= x1 < x2 <= SCALE and 0 <= y1 < y2 <= SCALE):
            raise ValueError(
                f"need 0 <= x1 < x2 <= {SCALE} and 0 <= y1 < y2 <= {SCALE}, got ({x1}, {y1}, {x2}, {y2})."
            )
        width, height = self.image.size
        box = (
            int(x1 * width / SCALE),
            int(y1 * height / SCALE),
            max(int(x1 * width / SCALE) + 1, round(x2 * width / SCALE)),
            max(int(y1 * height / SCALE) + 1, round(y2 * height / SCALE)),
        )
        region = self.image.crop(box)
        shortest = min(region.size)
        if shortest < self.min_side:
            factor = self.min_side / shortest
            region = region.resize((round(region.width * factor), round(region.height * factor)), Image.BICUBIC)
        return [{"type": "image", "image": region}]
