"""PPOTrainerVL end to end on the tiny models: every modality x estimator x packing trains and logs finite metrics."""

import math

import pytest
import torch

from rft_trl import Actor, PPOTrainerVL
from rft_trl.rewards import accuracy_reward
from rft_trl.testing import build_tiny_model, length_reward, make_task_dataset, tiny_config
from rft_trl.trainers.batching import BufferItem

# modality -> (tiny model kind, synthetic task)
MODALITIES = {
    "text": ("qwen2", "text"),
    "image": ("qwen2_5_vl", "colour"),
    "video": ("qwen2_vl", "video"),
    "audio": ("qwen2_audio", "pitch"),
}
ESTIMATORS = ["gae", "group_norm", "dr_grpo", "rloo", "reinforce++", "reinforce++-baseline"]


def make_args(tmp_path, **overrides):
    return tiny_config(str(tmp_path / "out"), **overrides)


def trainable_snapshot(module):
    return {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("modality", list(MODALITIES))
def test_trains_every_modality_estimator_and_packing(tmp_path, modality, estimator, packing):
    kind, task = MODALITIES[modality]
    model, processing_class = build_tiny_model(kind)
    args = make_args(tmp_path, advantage_estimator=estimator, packing_samples=packing)
    trainer = PPOTrainerVL(
        model, [length_reward], args, train_dataset=make_task_dataset(task, 8), processing_class=processing_class
    )
    before = trainable_snapshot(trainer.model)
    trainer.train()
    after = trainable_snapshot(trainer.model)
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert changed, "no trainable parameter changed"
    if estimator == "gae":
        assert any(name.startswith("critic.") for name in changed), "the critic did not train"
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2
    for entry in logs:
        for key in ("reward", "completions/mean_length", "train/policy_loss", "train/clipfrac"):
            assert math.isfinite(entry[key]), (key, entry)
        if estimator == "gae":
            assert math.isfinite(entry["train/critic_loss"])


def test_rollout_keeps_groups_and_media_per_sample(tmp_path):
    model, processor = build_tiny_model("qwen2_5_vl")
    args = make_args(tmp_path, n_samples_per_prompt=3, rollout_batch_size=2, per_device_train_batch_size=3)
    trainer = PPOTrainerVL(
        model, [accuracy_reward], args, train_dataset=make_task_dataset("colour", 4), processing_class=processor
    )
    rows = [trainer.train_dataset[i] for i in range(2)]
    calls_before = trainer.collator.processor_calls
    rollout = trainer.experience_maker.make_experience(rows)
    # One processor call per unique prompt, not per sample (benchmark B5: 1.0 per unique media).
    assert trainer.collator.processor_calls - calls_before == 2
    assert len(rollout.items) == 6
    # The training path knows one actor and one item class for every modality (the seed's faces are rft_trl.compat's).
    assert type(trainer.actor) is Actor and all(type(item) is BufferItem for item in rollout.items)
    # Samples are prompt-major: the 3 samples of a prompt share its image (the same storage, not a copy).
    first, second = rollout.items[0].multimodal_inputs, rollout.items[1].multimodal_inputs
    assert first["pixel_values"].data_ptr() == second["pixel_values"].data_ptr()
    assert not torch.equal(
        rollout.items[0].multimodal_inputs["pixel_values"], rollout.items[3].multimodal_inputs["pixel_values"]
    )
    placeholder = processor.image_token_id
    for item in rollout.items:
        # Completions never contain media placeholders (they are suppressed in generation).
        assert (item.sequences[-item.action_mask.numel() :] == placeholder).sum() == 0
        assert int(item.info["valid"]) == 1


def test_failed_rewards_exclude_samples_not_zero_them(tmp_path):
    model, tokenizer = build_tiny_model("qwen2")

    def flaky(prompts, completions, **columns):
        # Sample 1 fails (NaN); every other sample scores 1.
        return [math.nan if i == 1 else 1.0 for i in range(len(completions))]

    args = make_args(tmp_path, n_samples_per_prompt=2, rollout_batch_size=2, max_reward_failure_rate=0.5)
    trainer = PPOTrainerVL(
        model, [flaky], args, train_dataset=make_task_dataset("text", 4), processing_class=tokenizer
    )
    rollout = trainer.experience_maker.make_experience([trainer.train_dataset[i] for i in range(2)])
    valid = [int(item.info["valid"]) for item in rollout.items]
    assert valid == [1, 0, 1, 1]
    assert torch.isnan(rollout.rewards[1]) and rollout.metrics["rollout/reward_failures"] == 1.0
    # The mean reward is over valid samples only: 1.0, not 0.75.
    assert rollout.metrics["reward"] == 1.0
    # group_norm: the failed sample's group has one valid sample, so both advantages are 0.
    assert torch.all(rollout.items[1].advantages == 0)


def test_kl_reference_and_adapter_disabled_reference(tmp_path):
    from peft import LoraConfig

    model, tokenizer = build_tiny_model("qwen2")
    args = make_args(tmp_path, beta=0.1, max_steps=2)
    trainer = PPOTrainerVL(
        model,
        [length_reward],
        args,
        train_dataset=make_task_dataset("text", 8),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    # Step 1: the adapter starts as a no-op (B = 0), so policy == reference and the KL is exactly 0.
    assert logs[0]["rollout/kl"] == pytest.approx(0.0, abs=1e-6)
    assert logs[1]["kl"] > 0
    assert logs[0]["train/kl_coef"] == pytest.approx(0.1)


def test_conversational_prompts_get_conversational_completions(tmp_path):
    model, tokenizer = build_tiny_model("qwen2")
    seen = []

    def strict_trl_reward(prompts, completions, answer, **columns):
        # TRL's own reward functions index the assistant message like this.
        seen.extend(completions)
        return [float(c[0]["content"].strip() == a) for c, a in zip(completions, answer)]

    args = make_args(tmp_path, max_steps=1)
    trainer = PPOTrainerVL(
        model, [strict_trl_reward], args, train_dataset=make_task_dataset("text", 4), processing_class=tokenizer
    )
    trainer.train()
    assert seen and all(c[0]["role"] == "assistant" and isinstance(c[0]["content"], str) for c in seen)


def test_gradient_checkpointing_trains_like_without(tmp_path):
    losses = {}
    for checkpointing in (False, True):
        model, processor = build_tiny_model("qwen2_5_vl")
        args = make_args(tmp_path, max_steps=1, gradient_checkpointing=checkpointing, learning_rate=0.0)
        trainer = PPOTrainerVL(
            model, [length_reward], args, train_dataset=make_task_dataset("colour", 4), processing_class=processor
        )
        trainer.train()
        assert trainer.actor.hf_model.is_gradient_checkpointing == checkpointing
        losses[checkpointing] = [e["train/policy_loss"] for e in trainer.state.log_history if "loss" in e]
    # Same seed, same rollout, same loss: checkpointing changes memory, not numbers.
    assert losses[True] == pytest.approx(losses[False], abs=1e-6)


def test_mask_truncated_completions_leaves_cut_off_answers_out_of_the_loss(tmp_path):
    model, tokenizer = build_tiny_model("qwen2")
    # min_new_tokens = max_new_tokens: every completion is cut at the limit without an EOS.
    args = make_args(tmp_path, mask_truncated_completions=True, generation_kwargs={"min_new_tokens": 4})
    trainer = PPOTrainerVL(
        model, [length_reward], args, train_dataset=make_task_dataset("text", 4), processing_class=tokenizer
    )
    rollout = trainer.experience_maker.make_experience([trainer.train_dataset[i] for i in range(2)])
    assert all(int(item.info["valid"]) == 0 for item in rollout.items)
    # The rewards themselves are real (not failures): only the loss leaves these samples out.
    assert rollout.metrics["rollout/reward_failures"] == 0.0
    args.mask_truncated_completions = False
    rollout = trainer.experience_maker.make_experience([trainer.train_dataset[i] for i in range(2)])
    assert all(int(item.info["valid"]) == 1 for item in rollout.items)


def test_shuffle_dataset_false_keeps_the_dataset_order(tmp_path):
    model, tokenizer = build_tiny_model("qwen2")
    args = make_args(tmp_path, shuffle_dataset=False)
    trainer = PPOTrainerVL(
        model, [length_reward], args, train_dataset=make_task_dataset("text", 8), processing_class=tokenizer
    )
    sampler = trainer._get_train_sampler()
    # 2 prompts per rollout, repeated once per micro-batch (2 * 2 samples * 1 epoch / 2 per micro-batch = 2).
    assert list(sampler)[:8] == [0, 1, 0, 1, 2, 3, 2, 3]


@pytest.mark.parametrize(
    "overrides",
    [
        {"high_entropy_token_ratio": 0.5},
        {"importance_sampling_level": "sequence"},
        {"use_cpg_loss": True},
        {"dual_clip": 3.0, "eps_clip_high": 0.28},
        {"loss_type": "dr_grpo"},
        {"enable_ema": True},
        {"kl_target": 0.01, "beta": 0.1, "kl_horizon": 10},
    ],
)
def test_loss_options_train(tmp_path, overrides):
    model, tokenizer = build_tiny_model("qwen2")
    trainer = PPOTrainerVL(
        model,
        [length_reward],
        make_args(tmp_path, **overrides),
        train_dataset=make_task_dataset("text", 8),
        processing_class=tokenizer,
    )
    before = trainable_snapshot(trainer.model)
    trainer.train()
    assert any(not torch.equal(v, trainable_snapshot(trainer.model)[k]) for k, v in before.items())
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert all(math.isfinite(entry["train/policy_loss"]) for entry in logs)
    if "high_entropy_token_ratio" in overrides:
        assert all(math.isfinite(entry["entropy"]) for entry in logs)
    if overrides.get("enable_ema"):
        # The EMA moved towards the trained weights and holds every trainable parameter.
        assert set(trainer._ema.state) == {n for n, p in trainer.actor.named_parameters() if p.requires_grad}
    if "kl_target" in overrides:
        # Step 1's rollout has KL 0 (policy == reference), so the error clips to -0.2 and the adaptive controller
        # scales 0.1 by 1 - 0.2 * 4 samples / horizon 10 = 0.92.
        assert logs[0]["rollout/kl"] == pytest.approx(0.0, abs=1e-7)
        assert logs[0]["train/kl_coef"] == pytest.approx(0.092)


def test_fused_log_probs_train_like_the_full_logits(tmp_path):
    # Two steps with a KL reference and an entropy bonus, fused (the default) and through the full logits: the same
    # samples (same seed), so the same losses, KL and weights, to float32 rounding.
    runs = {}
    for fused in (True, False):
        model, tokenizer = build_tiny_model("qwen2")
        args = tiny_config(str(tmp_path / str(fused)), beta=0.05, entropy_coef=0.01, fused_log_probs=fused)
        trainer = PPOTrainerVL(
            model, [length_reward], args, train_dataset=make_task_dataset("text", 8), processing_class=tokenizer
        )
        assert (trainer.actor._fusable_head() is not None) == fused
        trainer.train()
        steps = [entry for entry in trainer.state.log_history if "loss" in entry]
        runs[fused] = (steps, {name: p.detach().clone() for name, p in trainer.model.named_parameters()})
    (fused_steps, fused_weights), (full_steps, full_weights) = runs[True], runs[False]
    assert len(fused_steps) == len(full_steps) == 2
    for fused_entry, full_entry in zip(fused_steps, full_steps):
        for key in ("loss", "kl", "entropy", "grad_norm", "reward"):
            assert fused_entry[key] == pytest.approx(full_entry[key], rel=1e-4, abs=1e-6), key
    for name, weight in full_weights.items():
        torch.testing.assert_close(fused_weights[name], weight, atol=1e-5, rtol=1e-4, msg=name)
