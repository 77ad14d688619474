"""
The recipes in `examples/recipes/` never rot: each runs, as its header says, through `rft-trl` with `--tiny` (its
model replaced by the tiny model of its family, its dataset by a synthetic task of the same modality, 2 steps), with
every other setting as written. The data options the recipes use (column renames, a prompt template, reward
functions by name or import path) and the family check are tested here too.
"""

import json
import re
from pathlib import Path

import pytest
import yaml
from datasets import Dataset
from transformers import AutoConfig

from rft_trl import cli
from rft_trl.scripts import ScriptArguments, format_dataset, load_reward_funcs
from rft_trl.testing import save_tiny_model

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "examples" / "recipes").glob("*.yaml"))
# What --tiny replaces or cuts; every other recipe setting must reach the run as written.
REPLACED_BY_TINY = {
    "model_name_or_path", "dataset_name", "dataset_train_split", "dataset_test_split", "prompt_column",
    "answer_column", "prompt_template", "max_steps", "max_completion_length", "save_strategy", "report_to",
    "output_dir", "num_eval_samples", "reward_model_name_or_path", "push_to_hub", "logging_steps", "save_steps",
}  # fmt: skip
NOT_IN_TRAINING_ARGS = {
    "tiny_model_kind", "tiny_dataset_name", "reward_funcs", "format_warmup_steps", "use_peft", "lora_r",
    "environment_factory", "tools",
    "lora_alpha", "lora_target_modules", "num_train_samples", "num_eval_samples", "reward_plot",
}  # fmt: skip


def settings(recipe: Path) -> dict:
    return yaml.safe_load(recipe.read_text())


@pytest.mark.parametrize("recipe", RECIPES, ids=[path.stem for path in RECIPES])
def test_every_recipe_runs_two_steps_on_its_tiny_family_stand_in(recipe, tmp_path):
    values = settings(recipe)
    command = "ppo" if recipe.stem.startswith("ppo_") else "grpo"
    out = tmp_path / "out"
    argv = [command, "--config", str(recipe), "--tiny", "--use_cpu", "true", "--output_dir", str(out)]
    assert cli.main([*argv, "--report_to", "none", "--reward_plot", "false", "--logging_steps", "1"]) == 0

    history = json.loads((out / "log_history.json").read_text())
    steps = [entry for entry in history if "loss" in entry and "eval_loss" not in entry]
    trained = json.loads((out / "training_args.json").read_text())
    # Two rollouts of the recipe's own batch layout, checkpointed after each where the recipe saves.
    samples_per_rollout = trained["rollout_batch_size"] * trained["num_generations"] * trained["num_iterations"]
    steps_per_rollout = samples_per_rollout // (
        trained["per_device_train_batch_size"] * trained["gradient_accumulation_steps"]
    )
    assert [entry["step"] for entry in steps] == list(range(1, 2 * steps_per_rollout + 1))
    saves = values.get("save_strategy", "steps") != "no"
    expected_checkpoints = [f"checkpoint-{steps_per_rollout}", f"checkpoint-{2 * steps_per_rollout}"] if saves else []
    assert sorted(path.name for path in out.glob("checkpoint-*")) == expected_checkpoints
    # Each of the recipe's reward functions scored every rollout, none of them failing.
    for name in values.get("reward_funcs", ["accuracy_reward", "format_reward"]):
        assert f"rewards/{name}/mean" in steps[0], name
        assert steps[0][f"rollout/reward_failures/{name}"] == 0
    # The recipe's own settings ran as written.
    for key, value in values.items():
        if key not in REPLACED_BY_TINY | NOT_IN_TRAINING_ARGS:
            assert trained[key] == value, key
    assert trained["max_steps"] == 2 * steps_per_rollout
    # What it saves: the adapter (LoRA) or the whole model, and the critic of a PPO recipe.
    files = {path.name for path in out.iterdir()}
    assert ("adapter_model.safetensors" in files) == bool(values.get("use_peft"))
    assert ("model.safetensors" in files) != bool(values.get("use_peft"))
    assert (out / "critic").is_dir() == (values.get("advantage_estimator") == "gae")
    if values.get("use_peft"):
        adapter = json.loads((out / "adapter_config.json").read_text())
        assert adapter["r"] == values["lora_r"]
        assert sorted(adapter["target_modules"]) == sorted(values["lora_target_modules"])


REAL_MODEL_RECIPES = [path for path in RECIPES if "model_name_or_path" in settings(path)]


@pytest.mark.parametrize("recipe", REAL_MODEL_RECIPES, ids=[path.stem for path in REAL_MODEL_RECIPES])
def test_real_model_recipes_say_how_to_launch_them_and_what_they_need(recipe):
    text = recipe.read_text()
    (config,) = re.findall(r"accelerate launch --config_file (accelerate_configs/\S+\.yaml)", text)
    assert (ROOT / config).is_file()
    assert "-m rft_trl.cli " in text and f"--config examples/recipes/{recipe.name}" in text
    assert re.search(r"^# GPUs: .*\d+ GB", text, re.MULTILINE), "the GPU count and memory are stated"
    assert "--tiny --use_cpu true" in text
    # The tiny stand-in is of the real model's family (the kinds are transformers' model types).
    assert settings(recipe)["tiny_model_kind"]


def test_a_recipe_naming_another_family_than_its_model_is_refused(tmp_path):
    model = save_tiny_model("qwen2_vl", str(tmp_path / "qwen2_vl"))
    assert AutoConfig.from_pretrained(model).model_type == "qwen2_vl"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model_name_or_path: {model}\ntiny_model_kind: qwen2_5_vl\ndataset_name: colour\n")
    with pytest.raises(ValueError, match=r"tiny_model_kind='qwen2_5_vl' but .* is a 'qwen2_vl' model"):
        cli.main(["grpo", "--config", str(recipe), "--use_cpu", "true", "--output_dir", str(tmp_path / "out")])


def test_tiny_needs_the_recipe_family(tmp_path):
    with pytest.raises(ValueError, match="--tiny needs the recipe's family: set tiny_model_kind"):
        cli.main(["grpo", "--tiny", "--output_dir", str(tmp_path)])


def test_columns_are_renamed_and_the_template_fills_plain_prompts():
    rows = Dataset.from_dict({"problem": ["How many?", "Which?"], "solution": ["<answer>3</answer>", "red"]})
    args = ScriptArguments(
        dataset_name="mine", prompt_column="problem", answer_column="solution", prompt_template="{prompt} Be brief."
    )
    formatted = format_dataset(rows, args)
    assert formatted.column_names == ["prompt", "answer"]
    assert formatted["prompt"] == ["How many? Be brief.", "Which? Be brief."]
    assert formatted["answer"] == ["<answer>3</answer>", "red"]


@pytest.mark.parametrize(
    ("columns", "options", "message"),
    [
        ({"question": ["q"], "answer": ["a"]}, {}, "has no 'prompt' column .* --prompt_column"),
        ({"prompt": ["q"], "answer": ["a"]}, {"answer_column": "solution"}, "answer_column='solution' is not a col"),
        ({"prompt": ["q"], "answer": ["a"], "solution": ["b"]}, {"answer_column": "solution"}, "has both 'solution'"),
        ({"prompt": ["q"], "answer": ["a"]}, {"prompt_template": "no field"}, "must contain a '\\{prompt\\}' field"),
        (
            {"prompt": [[{"role": "user", "content": "q"}]], "answer": ["a"]},
            {"prompt_template": "{prompt}!"},
            "row 0: prompt_template applies to plain-string prompts",
        ),
    ],
)
def test_bad_column_options_are_refused_by_name(columns, options, message):
    with pytest.raises(ValueError, match=message):
        format_dataset(Dataset.from_dict(columns), ScriptArguments(dataset_name="mine", **options))


def test_column_options_on_a_synthetic_task_are_refused():
    from rft_trl.scripts import load_data

    with pytest.raises(ValueError, match="prompt_column apply to a `datasets` dataset"):
        load_data(ScriptArguments(dataset_name="colour", prompt_column="problem"), seed=0)


def test_reward_funcs_by_name_or_import_path():
    from rft_trl.rewards import accuracy_reward, think_format_reward

    funcs = load_reward_funcs(ScriptArguments(reward_funcs=["think_format_reward", "rft_trl.rewards.accuracy_reward"]))
    assert funcs == [think_format_reward, accuracy_reward]
    assert load_reward_funcs(ScriptArguments(reward_model_name_or_path="my/rm"))[0] == "my/rm"
    with pytest.raises(ValueError, match="Unknown reward function 'accuracy'"):
        load_reward_funcs(ScriptArguments(reward_funcs=["accuracy"]))
    with pytest.raises(ValueError, match="Cannot import reward function 'rft_trl.rewards.nope'"):
        load_reward_funcs(ScriptArguments(reward_funcs=["rft_trl.rewards.nope"]))
