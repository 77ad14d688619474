"""Honest metrics: skipped rows leave every logged metric finite and correct, media repairs are logged and counted,
and evaluation counts every row once."""

import json
import logging
import math
import os

import torch
from datasets import Dataset, Image
from PIL import Image as PILImage

from rft_trl import PPOTrainerVL
from rft_trl.testing import build_tiny_model, length_reward, make_colour_dataset, tiny_config
from rft_trl.trainers.checkpointing import load_saved_weights
from rft_trl.trainers.metrics import eval_metrics


def colour_rows(num_rows):
    return [dict(row) for row in make_colour_dataset(num_rows, seed=0)]


def train_logs(tmp_path, rows, **overrides):
    model, processor = build_tiny_model("qwen2_5_vl")
    args = tiny_config(str(tmp_path / "out"), **overrides)
    # Undecoded images ({"bytes", "path"}): the collator loads them, so a broken one reaches it instead of failing
    # inside datasets.
    dataset = Dataset.from_list(rows).cast_column("image", Image(decode=False))
    trainer = PPOTrainerVL(model, [length_reward], args, train_dataset=dataset, processing_class=processor)
    trainer.train()
    return [entry for entry in trainer.state.log_history if "loss" in entry]


def test_a_skipped_row_leaves_every_metric_finite_and_ratio_stats_ordered(tmp_path):
    rows = colour_rows(2)
    rows[1]["image"] = b""  # an empty file: the row is skipped, its samples topped up with excluded fillers
    # One sample per micro-batch: two of the four micro-batches hold only fillers, with no token in the loss.
    (entry,) = train_logs(
        tmp_path,
        rows,
        max_steps=1,
        per_device_train_batch_size=1,
        gradient_accumulation_steps=4,
        shuffle_dataset=False,
    )
    assert entry["data/skipped/empty_file"] == 1.0
    for name, value in entry.items():
        if isinstance(value, float):
            assert math.isfinite(value), (name, value)
    assert entry["train/ratio_min"] <= entry["train/ratio_mean"] <= entry["train/ratio_max"]
    # On-policy (one optimizer step per rollout): every ratio is exactly 1, not a mean diluted by empty batches.
    assert entry["train/ratio_mean"] == 1.0 and entry["train/clipfrac"] == 0.0


def test_media_repairs_are_logged_once_and_counted(tmp_path, caplog):
    rows = colour_rows(2)
    # 8000 x 8000 is above the tiny processor's max_pixels: resized down, not rejected.
    rows[0]["image"] = PILImage.new("RGB", (8000, 8000), (200, 20, 20))
    rows[1]["image"] = PILImage.new("RGB", (8000, 8000), (20, 200, 20))
    with caplog.at_level(logging.WARNING, logger="rft_trl.data.collator"):
        (entry,) = train_logs(tmp_path, rows, max_steps=1)
    assert entry["data/repaired/image_downscaled"] == 2.0
    messages = [r.getMessage() for r in caplog.records if "media repaired" in r.getMessage()]
    # The first repair of the kind names its row by dataset index; the second is counted, not logged again.
    assert messages == [
        "Dataset index 0: media repaired (image_downscaled). Later repairs of this kind are counted in "
        "data/repaired/image_downscaled."
    ]


def test_eval_metrics_count_each_row_once():
    # Two processes, 5 rows: Accelerate pads rank 1's last batch with rows 0 and 1 again.
    rank0 = [(0, 1.0, True, 3, {"acc": 1.0}), (2, 0.0, True, 5, {"acc": 0.0}), (4, 1.0, True, 4, {"acc": 1.0})]
    rank1 = [(1, 0.0, True, 2, {"acc": 0.0}), (3, 1.0, False, 6, {"acc": math.nan}), (0, 1.0, True, 3, {"acc": 1.0})]
    metrics = eval_metrics(rank0 + rank1, "eval")
    assert metrics["eval_num_samples"] == 5.0
    assert metrics["eval_reward_failures"] == 1.0
    # Rows 0, 1, 2, 4 are valid: rewards 1, 0, 0, 1.
    assert metrics["eval_reward"] == 0.5
    assert metrics["eval_completions/mean_length"] == (3 + 2 + 5 + 6 + 4) / 5
    assert metrics["eval_rewards/acc/mean"] == 0.5


def test_evaluate_names_metrics_like_trl_and_best_model_works(tmp_path):
    model, processor = build_tiny_model("qwen2_5_vl")
    args = tiny_config(
        str(tmp_path / "out"),
        eval_strategy="steps",
        eval_steps=1,
        save_strategy="steps",
        save_steps=1,
        metric_for_best_model="reward",  # the Trainer reads eval_reward
        load_best_model_at_end=True,
    )
    trainer = PPOTrainerVL(
        model,
        [length_reward],
        args,
        train_dataset=make_colour_dataset(8, seed=0),
        eval_dataset=make_colour_dataset(3, seed=1),
        processing_class=processor,
    )
    trainer.train()
    assert trainer.state.best_model_checkpoint is not None and trainer.state.best_metric is not None
    # Each checkpoint names the best one by its committed path (the Trainer wrote it while the save was staged).
    for step in (1, 2):
        with open(tmp_path / "out" / f"checkpoint-{step}" / "trainer_state.json") as f:
            assert os.path.dirname(json.load(f)["best_model_checkpoint"]) == str(tmp_path / "out")
    # load_best_model_at_end put the best checkpoint's weights into the actor.
    best = build_tiny_model("qwen2_5_vl")[0]
    load_saved_weights(trainer.state.best_model_checkpoint, best)
    for name, value in best.state_dict().items():
        assert torch.equal(trainer.actor.hf_model.state_dict()[name], value), name
    evals = [entry for entry in trainer.state.log_history if "eval_reward" in entry]
    assert len(evals) == 2 and all(entry["eval_num_samples"] == 3.0 for entry in evals)
    # A dict of eval sets: each under its own prefix, as Trainer.evaluate names them.
    metrics = trainer.evaluate({"colours": make_colour_dataset(3, seed=1), "more": make_colour_dataset(2, seed=2)})
    assert metrics["eval_colours_num_samples"] == 3.0 and metrics["eval_more_num_samples"] == 2.0
    assert math.isfinite(metrics["eval_colours_reward"]) and "eval_more_rewards/length_reward/mean" in metrics
