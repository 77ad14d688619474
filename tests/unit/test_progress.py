"""The console shows one readable line per log and, with log_completions, a completions table (TRL's)."""

import pytest
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from rft_trl import PPOTrainerVL
from rft_trl.testing import build_tiny_model, length_reward, make_task_dataset, tiny_config
from rft_trl.trainers.progress import ReadablePrinterCallback, ReadableProgressCallback, format_log_line


def test_a_training_log_is_one_line_with_the_numbers_that_matter():
    logs = {
        "loss": 0.01234,
        "reward": 0.625,
        "reward_std": 0.25,
        "rewards/accuracy/mean": 0.5,
        "rewards/format/mean": 1.0,
        "kl": 0.0123,
        "entropy": 1.5,
        "completions/mean_length": 6.25,
        "clip_ratio/region_mean": 0.0,
        "rollout/reward_failures": 2.0,
        "learning_rate": 1e-5,
    }
    line = format_log_line(logs, step=40, max_steps=1000, seconds_per_step=1.314, tokens_per_second=812.4)
    assert line == (
        "step 40/1000 · reward 0.625 ± 0.25 (accuracy 0.5, format 1) · kl 0.0123 · entropy 1.5 · len 6.25 · "
        "clipped 0 · loss 0.0123 · reward failures 2 · 1.31 s/step · 812 tok/s"
    )
    assert (
        format_log_line({"eval_reward": 0.9, "eval_loss": 0.0}, 250, 1000)
        == "eval step 250/1000 · reward 0.9 · loss 0"
    )
    assert format_log_line({"train_runtime": 12.5, "total_flos": 0.0}, 3, 3) == "step 3/3 · train_runtime 12.5"


def test_the_trainer_prints_lines_not_dicts_and_a_completions_table(tmp_path, capsys):
    model, tokenizer = build_tiny_model("qwen2")

    def half(completions, **kwargs):
        return [0.5] * len(completions)

    args = tiny_config(str(tmp_path), log_completions=True, num_completions_to_print=2, disable_tqdm=True)
    trainer = PPOTrainerVL(
        model, [length_reward, half], args, train_dataset=make_task_dataset("text", 8), processing_class=tokenizer
    )
    callbacks = [type(c) for c in trainer.callback_handler.callbacks]
    assert ReadablePrinterCallback in callbacks and PrinterCallback not in callbacks
    trainer.train()
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("step ")]
    assert lines[0].startswith("step 1/2 · reward ") and "(length_reward " in lines[0] and ", half 0.5)" in lines[0]
    assert lines[1].endswith(" tok/s")  # from the second log on: tokens since the previous one, per second
    assert "{'loss'" not in out and "'reward':" not in out  # no dict dumps
    assert "Step 1" in out and "length_reward" in out and "Completion" in out  # TRL's rich table


def test_with_a_progress_bar_the_readable_callback_replaces_the_default(tmp_path):
    model, tokenizer = build_tiny_model("qwen2")
    args = tiny_config(str(tmp_path), disable_tqdm=False)
    trainer = PPOTrainerVL(
        model, [length_reward], args, train_dataset=make_task_dataset("text", 8), processing_class=tokenizer
    )
    callbacks = [type(c) for c in trainer.callback_handler.callbacks]
    assert ReadableProgressCallback in callbacks and ProgressCallback not in callbacks


def test_num_tokens_counts_every_prompt_and_completion_token_of_each_rollout(tmp_path):
    model, tokenizer = build_tiny_model("qwen2")
    dataset = make_task_dataset("text", 8)
    trainer = PPOTrainerVL(
        model, [length_reward], tiny_config(str(tmp_path)), train_dataset=dataset, processing_class=tokenizer
    )
    trainer._start_rollout([dict(dataset[0]), dict(dataset[1])])
    first = sum(int(batch.attention_mask.sum()) for batch in trainer._micro_batches)
    assert first > 0 and trainer.state.num_input_tokens_seen == first
    trainer._start_rollout([dict(dataset[2]), dict(dataset[3])])
    second = sum(int(batch.attention_mask.sum()) for batch in trainer._micro_batches)
    assert trainer.state.num_input_tokens_seen == first + second
    trainer.state.num_input_tokens_seen = 0
    trainer.train()
    logged = [entry["num_tokens"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 2 and 0 < logged[0] < logged[1] == trainer.state.num_input_tokens_seen


def test_evaluation_prints_its_line_and_each_eval_completion_once(tmp_path, capsys, monkeypatch):
    import rft_trl.trainers.completions as trainer_module

    tables = []
    print_table = trainer_module.print_prompt_completions_sample
    monkeypatch.setattr(
        trainer_module,
        "print_prompt_completions_sample",
        lambda *args, **kwargs: tables.append(args) or print_table(*args, **kwargs),
    )
    model, tokenizer = build_tiny_model("qwen2")
    args = tiny_config(str(tmp_path), log_completions=True, num_completions_to_print=None, disable_tqdm=True)
    eval_dataset = make_task_dataset("text", 3, seed=1)

    def half(completions, **kwargs):
        return [0.5] * len(completions)

    trainer = PPOTrainerVL(
        model,
        [length_reward, half],
        args,
        train_dataset=make_task_dataset("text", 8),
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
    )
    metrics = trainer.evaluate()
    out = capsys.readouterr().out
    (line,) = [line for line in out.splitlines() if line.startswith("eval step ")]
    reward = metrics["eval_reward"]
    assert (
        line.startswith(f"eval step 0 · reward {reward:.3g} ± ")
        and "(length_reward " in line
        and ", half 0.5)" in line
    )
    # TRL's table of the eval completions: every eval row once, in dataset order, with its reward.
    ((prompts, completions, rewards, _, step, _),) = tables
    assert prompts == eval_dataset["prompt"] and len(completions) == 3 and step == 0
    assert rewards["half"] == [0.5] * 3
    assert sum(rewards["length_reward"]) / 3 + 0.5 == pytest.approx(reward, rel=1e-6)
    assert "length_reward" in out and "Completion" in out
