"""Metrics and the completions table reach trackio and wandb end to end: a real local trackio store (no server) and a
real offline wandb run (its files on disk, as `wandb sync` would upload them); both are in the dev extra. That no
secret reaches wandb's files is checked in tests/e2e/test_secrets.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

TRAIN = """
import json, sys
from rft_trl import PPOTrainerVL
from rft_trl.testing import build_tiny_model, length_reward, make_task_dataset, tiny_config
out = sys.argv[1]
model, tokenizer = build_tiny_model("qwen2")
args = tiny_config(out, report_to=[sys.argv[2]], project="rft-trl-test", run_name="tiny", log_completions=True)
dataset, eval_dataset = make_task_dataset("text", 8), make_task_dataset("text", 5, seed=1)
trainer = PPOTrainerVL(
    model, [length_reward], args, train_dataset=dataset, eval_dataset=eval_dataset, processing_class=tokenizer
)
trainer.train()
trainer.evaluate()
json.dump(trainer.state.log_history, open(out + "/history.json", "w"))
"""

READ = """
import json
from trackio import SQLiteStorage
runs, logs = SQLiteStorage.get_runs("rft-trl-test"), SQLiteStorage.get_logs("rft-trl-test", "tiny")
print(json.dumps({"runs": runs, "logs": logs}))
"""


def run(code: str, env: dict, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_trackio_gets_the_training_metrics_and_the_completions_table(tmp_path):
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "store"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    out.mkdir()
    run(TRAIN, env, str(out), "trackio")
    stored = json.loads(run(READ, env).strip().splitlines()[-1])
    assert stored["runs"] == ["tiny"]
    history = [entry for entry in json.loads((out / "history.json").read_text()) if "loss" in entry]
    metrics = [entry for entry in stored["logs"] if "train/reward" in entry]
    assert len(metrics) == len(history) == 2
    for logged, entry in zip(metrics, history):
        for name in ("reward", "loss", "entropy", "num_tokens", "completions/mean_length"):
            assert logged[f"train/{name}"] == pytest.approx(entry[name], rel=1e-6), name
    tables = [entry["completions"] for entry in stored["logs"] if "completions" in entry]
    assert len(tables) == 2  # one per training log (a new rollout each step)
    rows = tables[-1]["_value"]
    assert len(rows) == 4 and {"prompt", "completion", "reward", "step"} <= set(rows[0])
    assert [row["step"] for row in rows] == [1] * 4
    # Evaluation: each of the 5 eval rows once, their mean reward the logged eval_reward.
    (eval_table,) = [entry["eval_completions"]["_value"] for entry in stored["logs"] if "eval_completions" in entry]
    eval_reward = next(
        entry["eval_reward"] for entry in json.loads((out / "history.json").read_text()) if "eval_reward" in entry
    )
    assert len(eval_table) == 5
    assert sum(row["reward"] for row in eval_table) / 5 == pytest.approx(eval_reward, rel=1e-6)


def wandb_records(path: Path):
    """
    The records of an offline wandb run file (`run-*.wandb`, what `wandb sync` uploads): a 7-byte header, then the
    LevelDB log format (32 KiB blocks; each chunk a 4-byte checksum, 2-byte length and 1-byte type: 1 a whole
    record, 2/3/4 its first/middle/last piece) around `Record` protobufs.
    """
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    index, pending = 7, b""
    while index + 7 <= len(data):
        space = 32768 - index % 32768
        if space < 7:  # a block's tail too short for a chunk header is padding
            index += space
            continue
        length, kind = int.from_bytes(data[index + 4 : index + 6], "little"), data[index + 6]
        chunk, index = data[index + 7 : index + 7 + length], index + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def test_an_offline_wandb_run_gets_the_training_metrics_config_and_completions_tables(tmp_path):
    wandb_dir = tmp_path / "wandb"
    env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(wandb_dir),
        "WANDB_CONFIG_DIR": str(wandb_dir / "config"),
        "WANDB_CACHE_DIR": str(wandb_dir / "cache"),
        "WANDB_PROJECT": "rft-trl-test",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    out = tmp_path / "out"
    out.mkdir()
    run(TRAIN, env, str(out), "wandb")
    (run_dir,) = (wandb_dir / "wandb").glob("offline-run-*")
    (run_file,) = run_dir.glob("run-*.wandb")
    logged, config = [], {}
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            entry = {}
            for item in record.history.item:
                # A logged dict (a table's reference) arrives one leaf per item, under its key path.
                *parents, leaf = list(item.nested_key) or [item.key]
                target = entry
                for parent in parents:
                    target = target.setdefault(parent, {})
                target[leaf] = json.loads(item.value_json)
            logged.append(entry)
        elif kind == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
    history = json.loads((out / "history.json").read_text())
    # Each training log, under transformers' `train/` prefix.
    steps = [entry for entry in history if "loss" in entry]
    metrics = [entry for entry in logged if "train/reward" in entry]
    assert len(metrics) == len(steps) == 2
    for entry, step in zip(metrics, steps):
        for name in (
            "reward",
            "loss",
            "entropy",
            "num_tokens",
            "completions/mean_length",
            "rewards/length_reward/mean",
        ):
            assert entry[f"train/{name}"] == pytest.approx(step[name], rel=1e-6), name
    (evaluation,) = [entry for entry in logged if "eval/reward" in entry]
    eval_reward = next(entry["eval_reward"] for entry in history if "eval_reward" in entry)
    assert evaluation["eval/reward"] == pytest.approx(eval_reward, rel=1e-6)
    # The training arguments are the run's config.
    assert config["learning_rate"] == pytest.approx(1e-2) and config["num_generations"] == 2
    # One completions table per training log (4 samples each), one of the eval completions (each of the 5 rows once).
    tables = [entry["completions"] for entry in logged if "completions" in entry]
    assert len(tables) == 2 and all(table["_type"] == "table-file" and table["nrows"] == 4 for table in tables)
    (eval_table,) = [entry["eval_completions"] for entry in logged if "eval_completions" in entry]
    table = json.loads((run_dir / "files" / eval_table["path"]).read_text())
    assert {"step", "prompt", "completion", "reward"} <= set(table["columns"]) and len(table["data"]) == 5
    assert sum(row[table["columns"].index("reward")] for row in table["data"]) / 5 == pytest.approx(
        eval_reward, rel=1e-6
    )
