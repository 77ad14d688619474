"""The example scripts: their no-argument defaults parse into a valid run, and each trains end to end as launched.

The end-to-end runs are subprocesses with tiny settings (a 2-step rollout of a few short samples), as a user would
start them; what they write is checked, not just the exit code.
"""

import json
import math
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import rft_trl.scripts
from rft_trl import RFTConfig

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
RECIPES = EXAMPLES / "recipes"

# One rollout of 2 prompts x 2 samples, replayed as 2 optimizer steps of 2 samples; 4-token completions.
TINY = {
    "max_steps": 2,
    "num_train_samples": 16,
    "num_eval_samples": 4,
    "format_warmup_steps": 2,
    "num_generations": 2,
    "rollout_batch_size": 2,
    "micro_rollout_batch_size": 4,
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 1,
    "max_completion_length": 4,
    "logging_steps": 1,
    "save_strategy": "no",
    "disable_tqdm": True,
}
TINY_ARGS = [item for key, value in TINY.items() for item in (f"--{key}", str(value))]

PROCESSOR_FILES = {"processor_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}
FULL_WEIGHTS = {"model.safetensors", "config.json", "generation_config.json"}
ADAPTER = {"adapter_model.safetensors", "adapter_config.json"}


def parse_example(monkeypatch, script: str, *args: str):
    """Run an example's `__main__` block in this process with `main` replaced by a recorder; return its arguments."""
    received = []
    monkeypatch.setattr(rft_trl.scripts, "main", lambda *parsed: received.append(parsed))
    monkeypatch.setattr(sys, "argv", [script, *args])
    runpy.run_path(str(EXAMPLES / script), run_name="__main__")
    assert len(received) == 1
    return received[0]


def launch_example(script: str, args: list[str], cwd: Path) -> subprocess.Popen:
    """Start an example as a user would (`python examples/<script> ... --output_dir out`), its output to files."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with open(cwd / "stdout.txt", "w") as stdout, open(cwd / "stderr.txt", "w") as stderr:
        return subprocess.Popen(
            [sys.executable, str(EXAMPLES / script), *args, "--output_dir", str(cwd / "out")],
            cwd=cwd,
            env=env,
            stdout=stdout,
            stderr=stderr,
        )


def finish(runs: dict, name: str) -> Path:
    """Wait for a launched example, require exit status 0, and return its output directory."""
    cwd, process = runs[name]
    returncode = process.wait(timeout=600)
    assert returncode == 0, (cwd / "stderr.txt").read_text()[-4000:]
    return cwd / "out"


def check_run_outputs(output_dir: Path, expected_files: set[str]) -> dict:
    """The weights, the processor, the log and the reward curve are written; returns the saved training arguments."""
    files = {str(path.relative_to(output_dir)) for path in output_dir.rglob("*") if path.is_file()}
    assert expected_files | {"log_history.json", "reward_curve.png", "training_args.json"} <= files, files
    assert (output_dir / "reward_curve.png").read_bytes().startswith(b"\x89PNG")
    log_history = json.loads((output_dir / "log_history.json").read_text())
    rewards = [entry["reward"] for entry in log_history if "loss" in entry]
    assert len(rewards) == 2 and all(math.isfinite(r) for r in rewards), log_history
    return json.loads((output_dir / "training_args.json").read_text())


# ------------------------------------------------------------------------------------------------ defaults


@pytest.mark.parametrize(
    ("script", "dataset_name", "estimator", "max_steps"),
    [
        ("grpo_vl.py", "colour", "group_norm", 1000),
        ("grpo_text.py", "text", "group_norm", 300),
        ("grpo_audio.py", "pitch", "group_norm", 120),
        ("ppo_vl.py", "colour", "gae", 500),
    ],
)
def test_no_argument_defaults_are_the_tiny_demo(monkeypatch, script, dataset_name, estimator, max_steps):
    script_args, training_args, model_args = parse_example(monkeypatch, script)
    assert script_args.dataset_name == dataset_name
    assert model_args.model_name_or_path is None  # the built-in tiny model
    assert (training_args.advantage_estimator, training_args.max_steps) == (estimator, max_steps)
    # The shared tiny-demo settings, resolved through their TRL aliases: 16 prompts x 8 samples per rollout.
    assert (training_args.n_samples_per_prompt, training_args.rollout_batch_size) == (8, 16)
    assert (training_args.learning_rate, training_args.init_kl_coef, training_args.generate_max_len) == (1e-3, 0.1, 8)
    assert training_args.output_dir == f"outputs/{script.removesuffix('.py')}"


def test_the_agent_examples_defaults_are_the_zoom_demo(monkeypatch):
    script_args, training_args, model_args = parse_example(monkeypatch, "grpo_agent.py")
    assert model_args.model_name_or_path is None and script_args.dataset_name == "zoom"
    assert script_args.environment_factory == "rft_trl.testing.agent_tasks.ZoomEnvironment"
    assert (training_args.generate_max_len, training_args.max_tool_calling_iterations) == (120, 1)
    assert (training_args.n_samples_per_prompt, training_args.rollout_batch_size) == (8, 16)


def test_ppo_example_trains_a_critic_with_its_own_learning_rate(monkeypatch):
    _, training_args, _ = parse_example(monkeypatch, "ppo_vl.py")
    assert (training_args.critic_learning_rate, training_args.lambd, training_args.gamma) == (3e-3, 1.0, 1.0)


def test_yaml_overrides_script_defaults_and_command_line_overrides_yaml(monkeypatch, tmp_path):
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump({"learning_rate": 0.0123, "max_completion_length": 5, "max_steps": 7}))
    script_args, training_args, _ = parse_example(
        monkeypatch, "grpo_audio.py", "--config", str(config), "--max_completion_length", "3"
    )
    assert training_args.learning_rate == 0.0123  # YAML over the script's 1e-3
    assert training_args.max_steps == 7  # YAML over the script's 120
    assert training_args.generate_max_len == 3  # command line over YAML's 5
    assert script_args.dataset_name == "pitch"  # the script's default, untouched by either


@pytest.mark.parametrize("recipe", sorted(path.name for path in RECIPES.glob("*.yaml")))
def test_recipes_hold_only_known_fields(monkeypatch, recipe):
    # A recipe is named after its example: `<example>_<what>.yaml`.
    script = next(path.name for path in EXAMPLES.glob("*.py") if recipe.startswith(path.stem + "_"))
    # --use_cpu: GPU recipes ask for bf16, which TrainingArguments refuses on a machine without a GPU otherwise.
    script_args, training_args, model_args = parse_example(
        monkeypatch, script, "--config", str(RECIPES / recipe), "--use_cpu", "true"
    )
    settings = yaml.safe_load((RECIPES / recipe).read_text())
    parsed = {**vars(model_args), **vars(script_args), **vars(training_args)}
    for key, value in settings.items():
        if key != "report_to":  # TrainingArguments turns "none"/"tensorboard" into a list
            assert parsed[key] == value, key


# ------------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def example_runs(tmp_path_factory):
    """All end-to-end runs, started at once: each pays several seconds of imports, which overlap across cores."""
    yaml_dir = tmp_path_factory.mktemp("yaml")
    config = yaml_dir / "recipe.yaml"
    config.write_text(yaml.safe_dump({**TINY, "learning_rate": 0.0123, "max_completion_length": 5}))
    runs = {
        "grpo_vl": ("grpo_vl.py", TINY_ARGS),
        "grpo_audio_lora": (
            "grpo_audio.py",
            TINY_ARGS + ["--use_peft", "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj"],
        ),
        "grpo_text_yaml": ("grpo_text.py", ["--config", str(config), "--max_completion_length", "3"]),
        "ppo_vl": ("ppo_vl.py", TINY_ARGS + ["--eval_steps", "2"]),
    }
    started = {}
    for name, (script, args) in runs.items():
        cwd = yaml_dir if name == "grpo_text_yaml" else tmp_path_factory.mktemp(name)
        started[name] = (cwd, launch_example(script, args, cwd))
    yield started
    for _, process in started.values():
        if process.poll() is None:
            process.kill()
            process.wait()


def test_grpo_vl_full_fine_tuning(example_runs):
    saved_args = check_run_outputs(finish(example_runs, "grpo_vl"), FULL_WEIGHTS | PROCESSOR_FILES)
    assert saved_args["advantage_estimator"] == "group_norm"


def test_grpo_audio_with_lora(example_runs):
    output_dir = finish(example_runs, "grpo_audio_lora")
    check_run_outputs(output_dir, ADAPTER | PROCESSOR_FILES)
    # The adapter alone: the frozen base is not written again.
    assert not (output_dir / "model.safetensors").exists()
    assert json.loads((output_dir / "adapter_config.json").read_text())["r"] == 4


def test_grpo_text_from_a_yaml_config(example_runs):
    output_dir = finish(example_runs, "grpo_text_yaml")
    saved_args = check_run_outputs(output_dir, FULL_WEIGHTS | {"tokenizer.json", "tokenizer_config.json"})
    # YAML over the script's learning rate; the command line over YAML's completion length.
    assert (saved_args["learning_rate"], saved_args["generate_max_len"]) == (0.0123, 3)
    assert json.loads((output_dir / "config.json").read_text())["model_type"] == "qwen2"


def test_ppo_vl_trains_and_saves_the_critic_and_evaluates(example_runs):
    output_dir = finish(example_runs, "ppo_vl")
    saved_args = check_run_outputs(output_dir, FULL_WEIGHTS | PROCESSOR_FILES | {"critic/model.safetensors"})
    assert saved_args["advantage_estimator"] == "gae"
    log_history = json.loads((output_dir / "log_history.json").read_text())
    assert all(math.isfinite(entry["train/critic_loss"]) for entry in log_history if "loss" in entry)
    eval_rewards = [entry["eval_reward"] for entry in log_history if "eval_reward" in entry]
    assert eval_rewards and all(0.0 <= reward <= 1.0 for reward in eval_rewards)


# TRL's GRPOConfig fields that the tiny demo sets otherwise: a real model must get TRL's values, not the demo's.
DEMO_TUNED_FIELDS = (
    "learning_rate", "beta", "max_completion_length", "num_generations", "lr_scheduler_type", "logging_steps",
    "gradient_accumulation_steps", "per_device_train_batch_size", "eval_strategy", "save_steps", "bf16",
    "activation_checkpointing", "use_bias_correction_kl", "max_steps",
)  # fmt: skip


@pytest.mark.parametrize("script", ["grpo_vl.py", "grpo_text.py", "grpo_audio.py", "ppo_vl.py", "grpo_agent.py"])
def test_a_real_model_gets_trls_defaults_not_the_demos(monkeypatch, capsys, script):
    from trl import GRPOConfig

    _, training_args, model_args = parse_example(
        monkeypatch, script, "--model_name_or_path", "org/real-model", "--use_cpu", "true"
    )
    assert model_args.model_name_or_path == "org/real-model"
    trl_defaults = GRPOConfig(output_dir="x", use_cpu=True)
    for name in DEMO_TUNED_FIELDS:
        assert getattr(training_args, name) == getattr(trl_defaults, name), name
    # What the script is stays: its output directory, and PPO's critic; the demo's critic tuning does not.
    assert training_args.output_dir == f"outputs/{script.removesuffix('.py')}"
    assert training_args.advantage_estimator == ("gae" if script == "ppo_vl.py" else "group_norm")
    assert training_args.lambd == RFTConfig(output_dir="x", use_cpu=True).lambd
    first_line = "org/real-model, from RFTConfig's defaults (TRL GRPOConfig's), then the command line"
    assert first_line in capsys.readouterr().out
    # Control: the same script without a model is the tiny demo, and says so.
    _, demo_args, _ = parse_example(monkeypatch, script)
    assert (demo_args.learning_rate, demo_args.beta) == (1e-3, 0.1) != (trl_defaults.learning_rate, trl_defaults.beta)
    first_line = "from the tiny demo's defaults (rft_trl.scripts.TINY_DEMO_DEFAULTS: learning_rate 0.001"
    assert first_line in capsys.readouterr().out


def test_a_recipe_names_itself_in_the_first_line(monkeypatch, capsys):
    recipe = RECIPES / "grpo_vl_qwen2_5_vl_3b_lora.yaml"
    _, training_args, _ = parse_example(monkeypatch, "grpo_vl.py", "--config", str(recipe), "--use_cpu", "true")
    assert training_args.learning_rate == 1e-5  # the recipe's
    assert f"then the recipe {recipe}, then the command line" in capsys.readouterr().out
