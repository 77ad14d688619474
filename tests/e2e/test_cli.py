"""The `rft-trl` command: `grpo`/`ppo` train like the example scripts, `env` reports versions."""

import importlib.metadata
import json

import pytest
import torch

from rft_trl import cli

SMALL_RUN = [
    "--num_train_samples", "8",
    "--num_eval_samples", "4",
    "--max_steps", "2",
    "--format_warmup_steps", "0",
    "--rollout_batch_size", "2",
    "--num_generations", "2",
    "--per_device_train_batch_size", "4",
    "--micro_rollout_batch_size", "4",
    "--eval_strategy", "no",
    "--logging_steps", "1",
    "--report_to", "none",
    "--reward_plot", "false",
]  # fmt: skip


def test_env_reports_the_versions_in_use(capsys):
    assert cli.main(["env"]) == 0
    out = capsys.readouterr().out
    assert f"torch version: {torch.__version__}" in out
    assert f"trl version: {importlib.metadata.version('trl')}" in out
    assert "rft_trl version: " in out and "Accelerators: " in out


@pytest.mark.parametrize(("command", "estimator"), [("grpo", "group_norm"), ("ppo", "gae")])
def test_grpo_and_ppo_train_the_demo(tmp_path, command, estimator):
    assert cli.main([command, *SMALL_RUN, "--output_dir", str(tmp_path)]) == 0
    history = json.loads((tmp_path / "log_history.json").read_text())
    assert [entry["step"] for entry in history if "loss" in entry] == [1, 2]
    config = json.loads((tmp_path / "training_args.json").read_text())
    assert config["advantage_estimator"] == estimator and config["max_steps"] == 2
    assert (tmp_path / "model.safetensors").is_file()


def test_a_yaml_config_is_read_and_flags_override_it(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("dataset_name: text\nmax_steps: 5\nlearning_rate: 0.002\n")
    assert cli.main(["grpo", "--config", str(recipe), *SMALL_RUN, "--output_dir", str(tmp_path / "out")]) == 0
    config = json.loads((tmp_path / "out" / "training_args.json").read_text())
    assert config["learning_rate"] == 0.002 and config["max_steps"] == 2  # the flag wins over the YAML


def test_unknown_commands_and_no_command_print_the_usage(capsys):
    assert cli.main(["sft"]) == 2
    assert "unknown command 'sft'" in capsys.readouterr().err
    assert cli.main([]) == 2 and "usage: rft-trl" in capsys.readouterr().out


def test_the_console_script_is_installed():
    (entry,) = importlib.metadata.entry_points(group="console_scripts", name="rft-trl")
    assert entry.value == "rft_trl.cli:main"


def test_the_demo_checkpoints_and_resumes_from_the_newest_checkpoint(tmp_path):
    """`--resume_from_checkpoint true` continues a killed run from its newest checkpoint (a rollout boundary)."""
    run = [*SMALL_RUN, "--output_dir", str(tmp_path), "--save_steps", "1", "--format_warmup_steps", "2"]
    assert cli.main(["grpo", *run]) == 0
    first = json.loads((tmp_path / "log_history.json").read_text())
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert cli.main(["grpo", *run, "--max_steps", "3", "--resume_from_checkpoint", "true"]) == 0
    resumed = json.loads((tmp_path / "log_history.json").read_text())
    steps = [entry for entry in resumed if "loss" in entry]
    assert [entry["step"] for entry in steps] == [1, 2, 3]
    # Steps 1-2 come from the checkpoint's history, unchanged; step 3 trained on from there.
    assert steps[:2] == [entry for entry in first if "loss" in entry]


def test_a_real_model_on_a_dataset_without_a_test_split_trains_with_evaluation_off(tmp_path, capsys):
    """`eval_strategy steps` and no test split: evaluation is turned off with one line, not a crash at start."""
    from rft_trl.testing import save_tiny_model

    model_dir, data_dir = tmp_path / "model", tmp_path / "data"
    save_tiny_model("qwen2", str(model_dir))
    data_dir.mkdir()
    rows = [{"prompt": f"Say the word {word}.", "answer": word} for word in ("red", "blue", "green", "cyan")]
    (data_dir / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    argv = ["grpo", "--model_name_or_path", str(model_dir), "--dataset_name", str(data_dir), "--use_cpu", "true"]
    argv += ["--bf16", "false", "--max_steps", "1", "--num_generations", "2", "--per_device_train_batch_size", "4"]
    argv += ["--max_completion_length", "4", "--eval_strategy", "steps", "--eval_steps", "1", "--report_to", "none"]
    argv += ["--reward_plot", "false", "--logging_steps", "1", "--output_dir", str(tmp_path / "out")]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert f"No evaluation split (--dataset_test_split) for {str(data_dir)!r}: evaluation is off" in out
    history = json.loads((tmp_path / "out" / "log_history.json").read_text())
    assert [entry["step"] for entry in history if "loss" in entry] == [1]
    assert not any("eval_loss" in entry or "eval_reward" in entry for entry in history)
