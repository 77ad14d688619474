"""
Offline rebuilds of TRL's `trl-internal-testing/zen*` test datasets: the same configs, columns, feature types and
splits (19 rows split 17 / 2 without shuffling), with prompts from the Zen of Python (PEP 20).

The text prompts are TRL's (one test compares batches with them); the chat prompts are our own questions, since the
tests rely only on their schema (a `prompt` column of chat messages, an `image` or `images` column), the split names
and the row count.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict, Features, Image, List, Value

# TRL's generators split with `train_test_split(test_size=0.1, shuffle=False)`: 17 train rows, 2 test rows.
TEST_SIZE = 0.1
# Random RGB images of 32 to 63 pixels a side, as TRL's image datasets.
IMAGE_SIDES = (32, 64)
IMAGE_SEED = 0

MESSAGE = List({"content": Value("string"), "role": Value("string")})
PART_MESSAGE = List({"content": List({"text": Value("string"), "type": Value("string")}), "role": Value("string")})

# The opening words of each of PEP 20's 19 aphorisms, which a `standard_prompt_only` row asks a model to continue:
# TRL's own cuts, since `test_prepare_input_called_with_correct_data` compares generation batches with these strings.
PREFIXES = [
    "Beautiful is better than",
    "Explicit is",
    "Simple is better",
    "Complex",
    "Flat is better than",
    "Sparse is better",
    "Readability",
    "Special cases aren't special",
    "Although practicality beats",
    "Errors should never",
    "Unless explicitly",
    "In the face of ambiguity, refuse",
    "There should be one-- and preferably",
    "Although that way may not be obvious at first unless you're",
    "Now is",
    "Although never is often",
    "If the implementation is hard to explain,",
    "If the implementation is easy",
    "Namespaces are one honking great",
]


def _question(prefix: str) -> str:
    return f"How does this line of the Zen of Python go on: {prefix!r}?"


def _images(rng: np.random.Generator, count: int) -> list[np.ndarray]:
    sides = rng.integers(*IMAGE_SIDES, size=(count, 2))
    return [rng.uniform(0.0, 255.0, size=(h, w, 3)).astype(np.uint8) for h, w in sides]


def _split(dataset: Dataset) -> DatasetDict:
    return dataset.train_test_split(test_size=TEST_SIZE, shuffle=False)


def standard_prompt_only() -> DatasetDict:
    """`zen` / `standard_prompt_only`: a `prompt` column of plain text."""
    return _split(Dataset.from_dict({"prompt": PREFIXES}))


def conversational_prompt_only() -> DatasetDict:
    """`zen` / `conversational_prompt_only`: a `prompt` column of one user message with string content."""
    prompts = [[{"role": "user", "content": _question(prefix)}] for prefix in PREFIXES]
    return _split(Dataset.from_dict({"prompt": prompts}, features=Features(prompt=MESSAGE)))


def image_conversational_prompt_only() -> DatasetDict:
    """`zen-image` / `conversational_prompt_only`: one user message with string content, and one `image` per row."""
    rng = np.random.default_rng(IMAGE_SEED)
    data = {
        "prompt": [[{"role": "user", "content": _question(prefix)}] for prefix in PREFIXES],
        "image": _images(rng, len(PREFIXES)),
    }
    return _split(Dataset.from_dict(data, features=Features(prompt=MESSAGE, image=Image())))


def multi_image_conversational_prompt_only() -> DatasetDict:
    """
    `zen-multi-image` / `conversational_prompt_only`: one user message whose content parts are one or two
    `{"type": "image"}` placeholders around the text, and the row's `images`, one per placeholder, in order.
    """
    rng = np.random.default_rng(IMAGE_SEED)
    # Image placeholders before, after and around the text, and two in a row: the layouts a processor must handle.
    layouts = [("image", "text"), ("text", "image"), ("image", "text", "image"), ("image", "image", "text")]
    prompts, images = [], []
    for index, prefix in enumerate(PREFIXES):
        layout = layouts[index % len(layouts)]
        parts = [
            {"type": "text", "text": _question(prefix)} if part == "text" else {"type": "image"} for part in layout
        ]
        prompts.append([{"role": "user", "content": parts}])
        images.append(_images(rng, layout.count("image")))
    data = {"prompt": prompts, "images": images}
    return _split(Dataset.from_dict(data, features=Features(prompt=PART_MESSAGE, images=List(Image()))))


# Hub id -> config name -> builder.
DATASETS: dict[str, dict[str, Callable[[], DatasetDict]]] = {
    "trl-internal-testing/zen": {
        "standard_prompt_only": standard_prompt_only,
        "conversational_prompt_only": conversational_prompt_only,
    },
    "trl-internal-testing/zen-image": {"conversational_prompt_only": image_conversational_prompt_only},
    "trl-internal-testing/zen-multi-image": {"conversational_prompt_only": multi_image_conversational_prompt_only},
}


def dataset_folder(root: Path, hub_id: str, config_name: str) -> Path:
    """Where [`write_datasets`] saves one config: `root/org--name/config_name` (a `DatasetDict.save_to_disk`)."""
    return root / hub_id.replace("/", "--") / config_name


def write_datasets(root: Path, hub_id: str) -> list[str]:
    """
    Build every config of the stand-in dataset `hub_id` and save each with `save_to_disk` under `root`.

    Args:
        root (`Path`):
            The folder the harness plugin reads stand-in datasets from.
        hub_id (`str`):
            A key of [`DATASETS`].

    Returns:
        `list[str]`: the config names written.
    """
    for config_name, build in DATASETS[hub_id].items():
        build().save_to_disk(str(dataset_folder(root, hub_id, config_name)))
    return list(DATASETS[hub_id])
