"""Metrics and the completions table reach trackio end to end (a real local trackio store, no server; trackio is in
the dev extra). wandb's offline run files are checked in tests/test_secrets.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

TRAIN = """
import json, sys
from rft_trl import PPOTrainerVL
from rft_trl.testing import build_tiny_model, length_reward, make_task_dataset, tiny_config
out = sys.argv[1]
model, tokenizer = build_tiny_model("qwen2")
args = tiny_config(out, report_to=["trackio"], project="rft-trl-test", run_name="tiny", log_completions=True)
dataset = make_task_dataset("text", 8)
trainer = PPOTrainerVL(model, [length_reward], args, train_dataset=dataset, processing_class=tokenizer)
trainer.train()
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
    run(TRAIN, env, str(out))
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
