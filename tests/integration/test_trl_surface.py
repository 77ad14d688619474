"""TRL's GRPOTrainer surface: `trainer.model` is the user's policy, streaming training and eval sets, `eval_loss`."""

import pytest
import torch
from datasets import Dataset, IterableDatasetDict
from peft import LoraConfig, PeftModel

from rft_trl import PPOTrainerVL
from rft_trl.testing import build_tiny_model, length_reward, make_task_dataset, tiny_config
from rft_trl.trainers.kl_controller import EntropyController
from rft_trl.trainers.run_state import restore_run_state
from rft_trl.trainers.sampling import RolloutStream
from rft_trl.trainers.trainer_hooks import check_trainer_hooks


def text_trainer(
    tmp_path, train_dataset=None, reward=length_reward, eval_dataset=None, peft_config=None, eos_boost=1.0, **args
):
    model, tokenizer = build_tiny_model("qwen2")
    with torch.no_grad():  # a larger EOS row makes completions end early, at lengths that vary
        model.lm_head.weight[model.generation_config.eos_token_id] *= eos_boost
    return PPOTrainerVL(
        model,
        [reward],
        tiny_config(str(tmp_path / "out"), **args),
        train_dataset=make_task_dataset("text", 8) if train_dataset is None else train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
    ), model


# ------------------------------------------------------------------------------------------------ trainer.model


def test_trainer_model_is_the_policy_the_user_gave(tmp_path):
    trainer, model = text_trainer(tmp_path)
    assert trainer.model is model
    names = {name for name, _ in model.named_parameters()}
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    assert set(before) == names  # no wrapper prefix: TRL-style parameter checks address the model's own names
    trainer.train()
    changed = [name for name, p in trainer.model.named_parameters() if not torch.equal(p, before[name])]
    assert "model.embed_tokens.weight" in changed or "lm_head.weight" in changed


def test_trainer_model_is_the_peft_model_with_its_config(tmp_path):
    trainer, _ = text_trainer(tmp_path, peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert isinstance(trainer.model, PeftModel)
    assert "default" in trainer.model.peft_config
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    for name, p in trainer.model.named_parameters():
        if "lora_B" in name:
            assert not torch.equal(p, before[name]), f"{name} did not train"
        elif "lora_" not in name:
            assert torch.equal(p, before[name]), f"frozen {name} changed"


def test_with_a_critic_the_model_is_policy_and_value(tmp_path):
    trainer, model = text_trainer(tmp_path, advantage_estimator="gae")
    assert trainer.model.actor.model is model and trainer.model.critic is trainer.critic


# ------------------------------------------------------------------------------------------------ streaming


def test_rollout_stream_repeats_whole_blocks_and_drops_the_last_partial_one():
    rows = [{"i": i} for i in range(10)]
    stream = RolloutStream(rows, block_size=4, repeats=2)
    assert [row["i"] for row in stream] == [0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7, 4, 5, 6, 7]
    with pytest.raises(ValueError, match="ended after 3 rows, fewer than one rollout needs \\(4 prompts"):
        list(RolloutStream(rows[:3], block_size=4, repeats=1))


def test_streaming_training_equals_map_style_training(tmp_path):
    """The same rows in the same order, streamed or indexed, give the same rollouts and the same updates."""
    dataset = make_task_dataset("text", 8)
    logs = {}
    for kind, train in (("map", dataset), ("stream", dataset.to_iterable_dataset())):
        trainer, _ = text_trainer(tmp_path / kind, train, shuffle_dataset=False, max_steps=3)
        trainer.train()
        logs[kind] = [(h["loss"], h["reward"]) for h in trainer.state.log_history if "loss" in h]
    assert len(logs["map"]) == 3
    assert logs["stream"] == logs["map"]


def test_streaming_training_reads_with_one_worker_and_refuses_dispatching(tmp_path):
    stream = make_task_dataset("text", 8).to_iterable_dataset()
    trainer, _ = text_trainer(tmp_path, stream, dataloader_num_workers=2)
    assert trainer.args.dataloader_num_workers == 0
    assert trainer.args.accelerator_config.dispatch_batches is False
    with pytest.raises(ValueError, match="Iterable datasets require `dispatch_batches=False`"):
        text_trainer(tmp_path, stream, accelerator_config={"dispatch_batches": True})


# ------------------------------------------------------------------------------------------------ evaluation


def test_eval_loss_is_the_training_objective_on_the_eval_completions(tmp_path):
    """`eval_loss` by hand: with 2 samples per prompt, ratio 1 and loss_type='dapo', -sum(A_i L_i) / sum(L_i)."""
    seen = []

    def recording_reward(prompts, completions, completion_ids, **kwargs):
        rewards = [float(len(ids) % 3) + 0.1 * len(prompts[i]) for i, ids in enumerate(completion_ids)]
        seen.append((rewards, [len(ids) for ids in completion_ids]))
        return rewards

    eval_set = make_task_dataset("text", 2)
    trainer, _ = text_trainer(
        tmp_path,
        reward=recording_reward,
        num_generations_eval=2,
        loss_type="dapo",
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        generate_max_len=8,
        eos_boost=20.0,
    )
    metrics = trainer.evaluate(eval_set)
    ((rewards, lengths),) = seen
    rewards, lengths = torch.tensor(rewards, dtype=torch.float64), torch.tensor(lengths, dtype=torch.float64)
    groups = rewards.view(2, 2)
    advantages = ((groups - groups.mean(-1, keepdim=True)) / (groups.std(-1, keepdim=True) + 1e-4)).flatten()
    expected = -(advantages * lengths).sum() / lengths.sum()
    assert expected.abs() > 1e-3  # lengths differ within a group: a loss that only a wrong sum would miss
    assert metrics["eval_loss"] == pytest.approx(expected.item(), abs=1e-5)
    assert not any(
        name.startswith("train/") for name in trainer._metrics.aggregate(trainer.accelerator.device)
    )  # training logs untouched


def test_evaluate_takes_dicts_and_streams_like_datasets(tmp_path):
    eval_set = make_task_dataset("text", 3)
    trainer, _ = text_trainer(tmp_path, dataloader_num_workers=2)
    plain = trainer.evaluate(eval_set)
    streamed = trainer.evaluate(eval_set.to_iterable_dataset())
    for name in ("eval_loss", "eval_reward", "eval_num_samples", "eval_completions/mean_length"):
        assert streamed[name] == pytest.approx(plain[name]), name
    assert trainer.get_eval_dataloader(eval_set.to_iterable_dataset()).num_workers == 0
    assert trainer.get_eval_dataloader(eval_set).num_workers == 2  # the one-worker rule is scoped to streams
    assert trainer.args.dataloader_num_workers == 2
    both = trainer.evaluate(
        IterableDatasetDict({"a": eval_set.to_iterable_dataset(), "b": eval_set.to_iterable_dataset()})
    )
    assert both["eval_a_loss"] == pytest.approx(plain["eval_loss"])
    assert both["eval_b_reward"] == pytest.approx(plain["eval_reward"])


def test_evaluate_without_any_eval_set_says_so(tmp_path):
    trainer, _ = text_trainer(tmp_path, train_dataset=Dataset.from_list([{"prompt": f"p{i}"} for i in range(4)]))
    with pytest.raises(ValueError, match="Evaluation needs an eval_dataset"):
        trainer.evaluate()


# ------------------------------------------------------------------------------------------------ sync_ref_model


def test_sync_ref_model_mixes_the_policy_into_the_reference_and_saves_it(tmp_path):
    """TR-DPO by hand: at step 2 (ref_model_sync_steps=2) reference = 0.6 * policy + 0.4 * initial weights."""
    settings = {"beta": 0.1, "sync_ref_model": True, "ref_model_sync_steps": 2, "save_strategy": "steps"}
    trainer, model = text_trainer(tmp_path, save_steps=2, **settings)
    assert trainer.ref_model is not None and trainer.ref_model is not model
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    policy = dict(model.named_parameters())
    for name, reference in trainer.ref_model.named_parameters():
        torch.testing.assert_close(reference, 0.6 * policy[name] + 0.4 * initial[name], rtol=0, atol=1e-6)
    assert any(not torch.equal(policy[n], initial[n]) for n in initial)

    fresh, _ = text_trainer(tmp_path / "fresh", **settings)
    restore_run_state(fresh, str(tmp_path / "out" / "checkpoint-2"))
    for (name, restored), (_, saved) in zip(fresh.ref_model.named_parameters(), trainer.ref_model.named_parameters()):
        assert torch.equal(restored, saved), name


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"beta": 0.0}, "while `beta=0.0`"),
        ({"beta": 0.1, "advantage_estimator": "gae"}, "with a critic is not supported"),
    ],
)
def test_sync_ref_model_refuses_what_it_cannot_sync(tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):
        text_trainer(tmp_path, sync_ref_model=True, **settings)


def test_sync_ref_model_refuses_peft(tmp_path):
    with pytest.raises(ValueError, match="with a PEFT model is not supported"):
        text_trainer(tmp_path, peft_config=LoraConfig(r=4, target_modules=["q_proj"]), sync_ref_model=True, beta=0.1)


# ------------------------------------------------------------------------------------------------ logs


def test_statistics_of_unlogged_steps_join_the_end_of_training_log(tmp_path):
    """As TRL: with logging_steps=2 and 3 steps, step 3's statistics appear in the final summary (with train_loss)."""
    trainer, _ = text_trainer(tmp_path, max_steps=3, logging_steps=2)
    trainer.train()
    step_logs = [h for h in trainer.state.log_history if "loss" in h]
    summary = trainer.state.log_history[-1]
    assert [h["step"] for h in step_logs] == [2]
    assert "train_loss" in summary and "reward" in summary and "policy_loss" in summary
    assert summary["entropy_coef"] == 0.0


def test_trls_logs_view_holds_the_last_rollouts_completions_and_extra_columns(tmp_path):
    def tagged(completions, log_extra, **kwargs):
        log_extra("tag", [f"t{i}" for i in range(len(completions))])
        return [1.0 / (1 + i) for i in range(len(completions))]

    trainer, _ = text_trainer(tmp_path, reward=tagged, max_steps=1)
    trainer.train()
    logs = trainer._logs
    assert len(logs["completion"]) == 4 and len(logs["prompt"]) == 4
    assert logs["extra"]["tag"] == ["t0", "t1", "t2", "t3"]
    assert logs["images"] == []


# ------------------------------------------------------------------------------------------------ entropy control


def test_entropy_controller_by_hand():
    controller = EntropyController(0.01, adaptive=True, target=1.0, delta=0.005, minimum=0.0, maximum=0.02)
    assert controller.applied() == 0.0  # no entropy measured yet: the bonus waits
    reduce = lambda stats: stats  # one process  # noqa: E731
    for entropy_sum, tokens, expected, applied in [
        (4.0, 8.0, 0.015, 0.015),  # mean 0.5 <= 1: up
        (6.0, 4.0, 0.010, 0.0),  # mean 1.5 > 1: down, and the bonus is off while above the target
        (1.0, 4.0, 0.015, 0.015),
        (1.0, 4.0, 0.020, 0.020),
        (1.0, 4.0, 0.020, 0.020),  # capped at the maximum
    ]:
        controller.observe(torch.tensor(entropy_sum / 2), torch.tensor(tokens / 2))  # two micro-batches per step
        controller.observe(torch.tensor(entropy_sum / 2), torch.tensor(tokens / 2))
        controller.step(reduce)
        assert controller.value == pytest.approx(expected)
        assert controller.applied() == pytest.approx(applied)
    fixed = EntropyController(0.1)
    fixed.observe(torch.tensor(9.0), torch.tensor(1.0))
    fixed.step(reduce)
    assert fixed.applied() == 0.1 and fixed.enabled and not EntropyController(0.0).enabled


def test_adaptive_entropy_moves_once_per_optimizer_step(tmp_path):
    """TRL's check: with entropy_target above any entropy, +delta per optimizer step (2 micro-batches each)."""
    trainer, _ = text_trainer(
        tmp_path,
        max_steps=3,
        entropy_coef=0.01,
        use_adaptive_entropy=True,
        entropy_target=15.0,
        entropy_coef_delta=0.005,
    )
    assert trainer.args.gradient_accumulation_steps == 2
    trainer.train()
    assert trainer.entropy_coef == pytest.approx(0.025)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["entropy_coef"] for h in logs] == pytest.approx([0.015, 0.02, 0.025])
    # Step 1 applies no bonus (no entropy measured before it); step 2 applies 0.015 * entropy.
    assert logs[0]["loss"] == pytest.approx(logs[0]["policy_loss"], abs=1e-6)
    bonus = logs[1]["policy_loss"] - logs[1]["loss"]
    assert bonus == pytest.approx(0.015 * logs[1]["entropy"], rel=0.3)


# ------------------------------------------------------------------------------------------------ fp32 LM head


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_cast_lm_head_to_fp32_computes_the_logits_in_fp32(tmp_path, tied):
    model, tokenizer = build_tiny_model("qwen2")
    if tied:
        model.config.tie_word_embeddings = True
        model.lm_head.weight = model.get_input_embeddings().weight
    model.to(torch.bfloat16)
    args = tiny_config(str(tmp_path), cast_lm_head_to_fp32=True, beta=0.1)
    trainer = PPOTrainerVL(
        model, [length_reward], args, train_dataset=make_task_dataset("text", 8), processing_class=tokenizer
    )
    assert model.lm_head.weight.dtype == torch.float32
    reference = trainer.ref_model
    assert reference.lm_head.weight.dtype == torch.float32 and reference.lm_head.weight is not model.lm_head.weight
    ids = torch.tensor([[5, 17, 42, 9, 3, 77]])
    with torch.no_grad():
        output = model(input_ids=ids, output_hidden_states=True)
        hidden = output.hidden_states[-1]
        assert hidden.dtype == torch.bfloat16  # the body stays bf16 (tied: the embedding output too)
        expected = hidden.float() @ model.lm_head.weight.T  # the fp32 head on fp32 hidden states, by hand
        assert output.logits.dtype == torch.float32
        torch.testing.assert_close(output.logits, expected, rtol=0, atol=1e-5)
        log_probs = trainer.actor(ids, 3)
    by_hand = torch.log_softmax(expected[:, -4:-1], -1).gather(-1, ids[:, -3:, None]).squeeze(-1)
    torch.testing.assert_close(log_probs, by_hand, rtol=0, atol=1e-5)
    trainer.train()  # trains in bf16 with the fp32 head; the reference keeps its own head
    assert not torch.equal(reference.lm_head.weight, model.lm_head.weight)


def test_cast_lm_head_to_fp32_refuses_an_adapter_on_the_head(tmp_path):
    with pytest.raises(ValueError, match="lm_head carries a PEFT adapter"):
        text_trainer(
            tmp_path,
            peft_config=LoraConfig(r=4, target_modules=["q_proj", "lm_head"]),
            cast_lm_head_to_fp32=True,
        )


# ------------------------------------------------------------------------------------------------ Trainer hooks


def test_a_missing_trainer_hook_is_refused_by_name():
    from transformers import Trainer

    check_trainer_hooks(Trainer)  # the installed transformers has them all

    class Renamed(Trainer):
        _push_from_checkpoint = None  # as if a release had renamed it

    with pytest.raises(
        RuntimeError, match=r"lacks methods PPOTrainerVL builds on: _push_from_checkpoint \(crash-safe"
    ):
        check_trainer_hooks(Renamed)
