"""Bad media in `datasets` media columns (decoded or not, nested, None) cost their rows, never the run: each is
skipped and counted under data/skipped/<reason>, logged with its dataset index and column, a batch of only bad rows is
replaced, and the skip limit still stops a run whose data are mostly bad, naming the columns and reasons."""

import io
import json
import logging

import numpy as np
import pytest
import soundfile
import torch
from datasets import Audio, Dataset, Features, List, Value, Video
from datasets import Image as ImageFeature
from PIL import Image

from rft_trl import PPOTrainerVL
from rft_trl.data import PromptCollator, TooManyBadSamplesError
from rft_trl.data.rows import MEDIA_ERRORS, ROW_INDEX, IndexedRows, IndexedStream
from rft_trl.testing import (
    build_tiny_model,
    build_tiny_qwen2_audio,
    build_tiny_qwen2_vl,
    make_colour_dataset,
    tiny_config,
)

COLOUR_FEATURES = make_colour_dataset(2).features
BAD = {1: "corrupt_image", 2: "missing_file", 3: "missing_image"}  # dataset index -> the reason it is skipped for
GOOD = {0, 4, 5, 6, 7}


def _png(colour=(200, 20, 20)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (56, 56), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _colour_rows(num_rows: int) -> list[dict]:
    return [{**row, "uid": index} for index, row in enumerate(make_colour_dataset(num_rows, seed=0))]


def _bad_values(tmp_path) -> dict[int, object]:
    """A corrupt file, a missing file and None, by the dataset index they go to (see BAD)."""
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"these bytes are not an image")
    return {1: str(corrupt), 2: str(tmp_path / "missing.png"), 3: None}


def _dataset(tmp_path, column: str, num_rows: int = 8, bad: dict[int, object] | None = None) -> Dataset:
    """
    The colour task with a `uid` column and the values of `bad` put into the media column: `"image"` (a decoded
    `Image()`), `"image_undecoded"` (`Image(decode=False)`: {"bytes", "path"} dicts) or `"images"` (`List(Image())`).
    """
    rows = _colour_rows(num_rows)
    bad = _bad_values(tmp_path) if bad is None else bad
    for index, value in bad.items():
        rows[index]["image"] = value
    features = {**COLOUR_FEATURES, "uid": Value("int64")}
    if column == "images":
        for row in rows:
            image = row.pop("image")
            row["images"] = None if image is None else [image]
        del features["image"]
        features["images"] = List(ImageFeature())
    dataset = Dataset.from_list(rows, features=Features(features))
    if column == "image_undecoded":
        dataset = dataset.cast_column("image", ImageFeature(decode=False))
    return dataset


class RecordingReward:
    """length_reward's dense signal, recording the `uid` of every row it scores (the rows that trained)."""

    __name__ = "recording_reward"

    def __init__(self):
        self.uids: set[int] = set()

    def __call__(self, prompts, completions, uid, **columns):
        # The data pipeline's own keys (dataset index, decoding errors) never reach reward functions.
        assert ROW_INDEX not in columns and MEDIA_ERRORS not in columns
        self.uids.update(uid)
        return [1.0 / (1.0 + len(str(completion))) for completion in completions]


def _train(tmp_path, dataset, **overrides):
    model, processor = build_tiny_model("qwen2_5_vl")
    # 2 prompts per rollout, in dataset order: rollouts read rows [0, 1], [2, 3], [4, 5], [6, 7], one per step.
    args = tiny_config(str(tmp_path / "out"), shuffle_dataset=False, max_steps=4, **overrides)
    reward = RecordingReward()
    trainer = PPOTrainerVL(model, [reward], args, train_dataset=dataset, processing_class=processor)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    changed = [
        name for name, p in trainer.model.named_parameters() if p.requires_grad and not torch.equal(p, before[name])
    ]
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    return logs, reward.uids, changed


def _skip_totals(logs) -> dict[str, float]:
    totals: dict[str, float] = {}
    for entry in logs:
        for name, value in entry.items():
            if name.startswith("data/skipped/"):
                totals[name] = totals.get(name, 0.0) + value
    return totals


@pytest.mark.parametrize(
    "column, streaming",
    [("image", False), ("image", True), ("image_undecoded", False), ("images", False)],
    ids=["image-feature", "image-feature-streaming", "image-decode-false", "list-of-images"],
)
def test_bad_media_are_skipped_counted_and_named_and_the_run_trains_to_the_end(tmp_path, caplog, column, streaming):
    # Row 1 (a corrupt file) shares its rollout with a good row; rows 2 and 3 (a missing file, None) fill a rollout
    # on their own, which is replaced by rows drawn from the training set.
    dataset = _dataset(tmp_path, column)
    if streaming:
        dataset = dataset.to_iterable_dataset()
    with caplog.at_level(logging.WARNING, logger="rft_trl.data.collator"):
        logs, trained_uids, changed = _train(tmp_path, dataset)
    assert len(logs) == 4, "the run stopped early"
    for entry in logs:
        assert np.isfinite(entry["loss"]) and np.isfinite(entry["reward"])
    name = "images" if column == "images" else "image"
    assert _skip_totals(logs) == {f"data/skipped/{reason}": 1.0 for reason in BAD.values()}
    for index, reason in BAD.items():
        assert f"Dataset index {index} skipped ({reason}): column {name!r}: " in caplog.text
    assert "Every row of this batch of 2 was skipped (missing_file, missing_image)" in caplog.text
    # Control: every good row trained, the neighbour of the corrupt one included, and no bad one did.
    assert GOOD <= trained_uids and not trained_uids & set(BAD)
    assert changed, "no trainable parameter changed"


@pytest.mark.parametrize(
    "max_skipped_fraction, message",
    [
        # 2 of (at least) 32 rows skipped is within 0.5: the batch is replaced, but the replacements are all bad too.
        (0.5, r"Every row of a batch of 2 was skipped, and so were the 2 replacement rows"),
        # 2 of 32 is above 0.05: the skip limit stops the run at the first bad batch.
        (0.05, r"2 of 2 rows skipped, above max_skip_fraction=0.05"),
    ],
)
def test_a_run_of_only_bad_rows_stops_naming_columns_and_reasons(tmp_path, max_skipped_fraction, message):
    bad = {**_bad_values(tmp_path), 0: b"not an image either"}
    dataset = _dataset(tmp_path, "image", num_rows=4, bad=bad)
    model, processor = build_tiny_model("qwen2_5_vl")
    args = tiny_config(str(tmp_path / "out"), shuffle_dataset=False, max_skipped_fraction=max_skipped_fraction)
    trainer = PPOTrainerVL(model, [RecordingReward()], args, train_dataset=dataset, processing_class=processor)
    with pytest.raises(TooManyBadSamplesError, match=message) as info:
        trainer.train()
    assert "column 'image': corrupt_image" in str(info.value)


# ------------------------------------------------------------------------------------------ rows, one by one


def test_a_decoding_failure_leaves_the_column_undecoded_and_named(tmp_path):
    dataset = _dataset(tmp_path, "image", num_rows=4)
    rows = IndexedRows(dataset)
    good, corrupt, missing, empty = (rows[i] for i in range(4))
    assert isinstance(good["image"], Image.Image) and MEDIA_ERRORS not in good and good[ROW_INDEX] == 0
    assert corrupt["image"] == {"bytes": None, "path": str(tmp_path / "corrupt.png")}
    assert corrupt[MEDIA_ERRORS] == {
        "image": f"UnidentifiedImageError: cannot identify image file {corrupt['image']['path']!r}"
    }
    assert missing[MEDIA_ERRORS]["image"].startswith("FileNotFoundError")
    assert empty["image"] is None and MEDIA_ERRORS not in empty  # None decodes to None: the collator names it
    # A stream is read undecoded and decoded row by row: the bad rows do not end it.
    streamed = list(IndexedStream(dataset.to_iterable_dataset()))
    assert [row[ROW_INDEX] for row in streamed] == [0, 1, 2, 3]
    assert [sorted(row.get(MEDIA_ERRORS, {})) for row in streamed] == [[], ["image"], ["image"], []]


def test_a_read_that_fails_for_another_reason_still_raises():
    dataset = Dataset.from_dict(
        {"prompt": ["x"], "image": [_png()]}, features=Features(prompt=Value("string"), image=ImageFeature())
    )

    def broken(batch):
        raise RuntimeError("the user's transform is broken")

    with pytest.raises(RuntimeError, match="the user's transform is broken"):
        IndexedRows(dataset.with_transform(broken))[0]
    with pytest.raises(IndexError):
        IndexedRows(dataset)[1]
    # Every media column decodes when read alone: the failure lay elsewhere, and the row's own error is raised.
    with pytest.raises(OSError, match="the disk is gone"):
        IndexedRows(_FailingReads(dataset.data, info=dataset.info.copy()))[0]


class _FailingReads(Dataset):
    """A dataset whose reads fail for a reason that is not its media (its undecoded arrow reads work)."""

    def __getitem__(self, key):
        if self.format["type"] != "arrow":
            raise OSError("the disk is gone")
        return super().__getitem__(key)


def test_audio_and_video_features_decode_here_when_datasets_cannot(tmp_path, caplog):
    # torchcodec, which datasets decodes Audio() and Video() with, is not installed: every read fails in datasets and
    # the collator's own loaders (soundfile; Pillow for GIF frames) read the undecoded values: counted repairs. A
    # missing file is a skip naming its column.
    wav, gif = tmp_path / "tone.wav", tmp_path / "clip.gif"
    soundfile.write(wav, (0.1 * np.sin(np.arange(1600) / 5)).astype(np.float32), 16000)
    frames = [Image.new("RGB", (56, 56), colour) for colour in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100)
    cases = [
        ("audio", Audio(), str(wav), build_tiny_qwen2_audio(seed=0)[1], "audio"),
        ("video", Video(), str(gif), build_tiny_qwen2_vl(seed=0)[1], "video"),
    ]
    for column, feature, path, processor, kind in cases:
        dataset = Dataset.from_dict(
            {"prompt": ["Describe it."] * 2, column: [path, str(tmp_path / f"missing.{column}")]}
        ).cast_column(column, feature)
        rows = IndexedRows(dataset)
        collator = PromptCollator(processor, max_skip_fraction=1.0)
        with caplog.at_level(logging.WARNING, logger="rft_trl.data.collator"):
            batch = collator([rows[0], rows[1]])
        assert len(batch) == 1 and batch.kept == [0]
        # (GIF frames also have their transparency flattened: a repair of their own.)
        assert collator.pop_repair_counts()[f"data/repaired/{kind}_decoded_by_rft_trl"] == 1
        assert [(entry.row, entry.reason, entry.column) for entry in batch.skipped] == [(1, "missing_file", column)]
        assert f"Dataset index 1 skipped (missing_file): column {column!r}: " in caplog.text


def test_an_eval_batch_of_only_bad_rows_is_left_out_and_counted(tmp_path, caplog):
    # Eval batches of 2 in dataset order: [0, 1], [2, 3] (a missing file and None: nothing to generate), [4, 5], ...
    model, processor = build_tiny_model("qwen2_5_vl")
    args = tiny_config(str(tmp_path / "out"), per_device_eval_batch_size=2)
    reward = RecordingReward()
    trainer = PPOTrainerVL(
        model, [reward], args, train_dataset=make_colour_dataset(4), eval_dataset=_dataset(tmp_path, "image"),
        processing_class=processor,
    )  # fmt: skip
    with caplog.at_level(logging.WARNING):
        metrics = trainer.evaluate()
    assert "Evaluation: Every row of this batch was skipped as bad input" in caplog.text
    assert "missing_file in column 'image'" in caplog.text and "missing_image in column 'image'" in caplog.text
    assert {name: value for name, value in metrics.items() if "skipped" in name} == {
        f"eval_data/skipped/{reason}": 1.0 for reason in BAD.values()
    }
    # Control: the other batches were evaluated, every good row and no bad one.
    assert reward.uids == GOOD and np.isfinite(metrics["eval_reward"])


def test_a_resume_draws_the_same_replacement_rows_as_the_uninterrupted_run(tmp_path):
    """Two all-bad batches, one before the checkpoint and one after: the second is replaced by the same rows."""
    bad = _bad_values(tmp_path)
    dataset = _dataset(tmp_path, "image", bad={2: bad[2], 3: bad[3], 6: bad[2], 7: bad[3]})

    def run(output_dir, resume=None):
        model, processor = build_tiny_model("qwen2_5_vl")
        args = tiny_config(output_dir, shuffle_dataset=False, max_steps=4, save_strategy="steps", save_steps=2)
        reward = RecordingReward()
        trainer = PPOTrainerVL(model, [reward], args, train_dataset=dataset, processing_class=processor)
        trainer.train(resume_from_checkpoint=resume)
        return [entry for entry in trainer.state.log_history if "loss" in entry and entry["step"] > 2], reward.uids

    uninterrupted, _ = run(str(tmp_path / "a"))
    checkpoint = tmp_path / "a" / "checkpoint-2"
    assert json.loads((checkpoint / "rft_state.json").read_text())["replacement_passes"] == [1]
    resumed, resumed_uids = run(str(tmp_path / "b"), resume=str(checkpoint))
    assert resumed == uninterrupted
    # Control: a checkpoint without the passes (as before they were recorded) replaces step 4's batch with the first
    # pass's rows again, and the run after the checkpoint differs.
    state = json.loads((checkpoint / "rft_state.json").read_text())
    del state["replacement_passes"]
    (checkpoint / "rft_state.json").write_text(json.dumps(state))
    marker = json.loads((checkpoint / "checkpoint_complete.json").read_text())  # the sizes it lists must hold
    marker["files"]["rft_state.json"] = (checkpoint / "rft_state.json").stat().st_size
    (checkpoint / "checkpoint_complete.json").write_text(json.dumps(marker))
    forgetful, forgetful_uids = run(str(tmp_path / "c"), resume=str(checkpoint))
    assert forgetful_uids != resumed_uids and forgetful != uninterrupted
