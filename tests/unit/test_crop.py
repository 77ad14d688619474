"""`CropEnvironment`: the crop tool of visual agents, against PIL's own crop of the box computed by hand."""

import numpy as np
import pytest
from PIL import Image

from rft_trl.rollout.crop import CropEnvironment


def gradient_image(width: int = 200, height: int = 100) -> Image.Image:
    """Each pixel's red channel is its column and its green channel its row: a crop shows where it was cut."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[..., 0] = np.arange(width)[None, :]
    pixels[..., 1] = np.arange(height)[:, None]
    return Image.fromarray(pixels)


def test_crop_cuts_the_box_in_thousandths_of_the_image():
    environment = CropEnvironment(min_side=1)
    environment.reset(image=gradient_image(), answer="unused")
    (block,) = environment.crop(x1=250, y1=500, x2=500, y2=1000)
    assert block["type"] == "image"
    region = np.asarray(block["image"])
    # Columns 50..99 and rows 50..99 of the 200 x 100 image.
    assert region.shape == (50, 50, 3)
    assert (region[0, 0, 0], region[0, 0, 1], region[-1, -1, 0], region[-1, -1, 1]) == (50, 50, 99, 99)


def test_a_small_crop_is_enlarged_to_the_minimum_side():
    environment = CropEnvironment(min_side=56)
    environment.reset(images=[gradient_image()])
    (block,) = environment.crop(0, 0, 50, 100)  # 10 x 10 pixels
    assert block["image"].size == (56, 56)
    environment.reset(image=gradient_image())
    (block,) = environment.crop(0, 0, 1000, 1000)  # large enough already: as cut
    assert block["image"].size == (200, 100)


@pytest.mark.parametrize("box", [(500, 0, 500, 10), (0, 0, 1001, 10), (-1, 0, 10, 10), (10, 20, 5, 30)])
def test_a_bad_box_is_an_error_the_model_reads(box):
    # The tool loop answers a raising tool with {"error": ...}: the message is the model's feedback.
    environment = CropEnvironment()
    environment.reset(image=gradient_image())
    with pytest.raises(ValueError, match="need 0 <= x1 < x2 <= 1000 and 0 <= y1 < y2 <= 1000"):
        environment.crop(*box)


def test_a_row_without_an_image_is_refused():
    with pytest.raises(ValueError, match="needs an `image`"):
        CropEnvironment().reset(prompt="no image here")
