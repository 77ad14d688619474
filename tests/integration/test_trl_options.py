"""TRL's GRPOConfig options in RFTConfig: every one exists with TRL's default, and each is either implemented (and
tested here) or refused with the reason; none is accepted and ignored."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from datasets import Dataset
from trl import GRPOConfig

from rft_trl import PPOTrainerVL, RFTConfig
from rft_trl.core import policy_loss
from rft_trl.data import PromptCollator
from rft_trl.rewards.functions import completion_text
from rft_trl.testing import (
    build_tiny_model,
    length_reward,
    make_colour_dataset,
    make_task_dataset,
    save_tiny_model,
    tiny_config,
)
from rft_trl.trainers.metrics import merge_rollout_metrics
from rft_trl.trainers.replay_buffer import NaiveReplayBuffer
from rft_trl.trainers.replay_buffer_utils import remove_padding_in_sequences, split_experience_batch
from rft_trl.trainers.rft_config import DEPENDENT_TRL_OPTIONS, UNSUPPORTED_TRL_OPTIONS

# Options this test file shows to act (each has a test below), and those the rest of the suite covers.
IMPLEMENTED_HERE = {
    "model_init_kwargs",
    "trust_remote_code",
    "router_aux_loss_coef",
    "disable_dropout",
    "num_generations_eval",
    "ds3_gather_for_generation",  # the ZeRO-3 tests run with its default (gathered once per rollout)
    "pad_to_multiple_of",
    "generation_batch_size",  # tests/unit/test_rft_config.py::test_trl_steps_per_generation_sizes_the_rollout
    "min_p",
    "chat_template_kwargs",
    "cache_implementation",
    "delta",
    "entropy_coef",
    "use_bias_correction_kl",
    "log_multimodal",
    "off_policy_mask_threshold",
    "multi_objective_aggregation",
    "sync_ref_model",  # tests/integration/test_trl_surface.py
    "use_adaptive_entropy",  # tests/integration/test_trl_surface.py
    "cast_lm_head_to_fp32",  # tests/integration/test_trl_surface.py
    "num_completions_to_print",  # tests/unit/test_progress.py
    "use_vllm",  # tests/e2e/test_vllm.py (real vLLM, in its own environment)
    "max_tool_calling_iterations",  # tests/integration/test_agents.py
}
# Not GRPOConfig fields but TRL's reward-function contract, tested here too: trainer_state, completion_ids,
# log_extra and log_metric keyword arguments.
# GRPOConfig fields that RFTConfig had before (aliases and shared concepts, tested in tests/unit/test_rft_config.py).
SHARED = {
    "num_generations",
    "max_completion_length",
    "max_prompt_length",
    "beta",
    "epsilon",
    "epsilon_high",
    "num_iterations",
    "loss_type",
    "scale_rewards",
    "top_entropy_quantile",
    "steps_per_generation",
    "shuffle_dataset",
    "mask_truncated_completions",
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "generation_kwargs",
    "importance_sampling_level",
    "reward_weights",
    "log_completions",
}


def make_text_trainer(tmp_path, **overrides):
    model, tokenizer = build_tiny_model("qwen2")
    args = tiny_config(str(tmp_path), **overrides)
    return PPOTrainerVL(
        model, [length_reward], args, train_dataset=make_task_dataset("text", 8), processing_class=tokenizer
    )


def trl_only_fields():
    from transformers import TrainingArguments

    base = {f.name for f in dataclasses.fields(TrainingArguments)}
    return {f.name: f for f in dataclasses.fields(GRPOConfig) if f.name not in base}


def test_every_grpo_config_field_exists_with_trls_default_and_is_classified():
    ours = {f.name: f for f in dataclasses.fields(RFTConfig)}
    for name, trl_field in trl_only_fields().items():
        assert name in ours, f"RFTConfig lacks GRPOConfig.{name}"
        if name not in SHARED:
            trl_default = (
                trl_field.default if trl_field.default is not dataclasses.MISSING else trl_field.default_factory()
            )
            assert ours[name].default == trl_default, (name, ours[name].default, trl_default)
        classified = (
            name in SHARED
            or name in IMPLEMENTED_HERE
            or name in UNSUPPORTED_TRL_OPTIONS
            or name in DEPENDENT_TRL_OPTIONS
        )
        assert classified, f"GRPOConfig.{name} is neither implemented, refused nor dependent: classify it"


@pytest.mark.parametrize("name", sorted(UNSUPPORTED_TRL_OPTIONS))
def test_unsupported_options_are_refused_with_the_reason(tmp_path, name):
    default = {f.name: f.default for f in dataclasses.fields(RFTConfig)}[name]
    value = {bool: not default, type(None): 3, str: "normalize_then_sum"}.get(type(default), 3)
    if name == "transformers_continuous_batching_config":
        value = {"max_batch_tokens": 64}
    with pytest.raises(
        ValueError, match=f"{name}=.* is not supported by PPOTrainerVL: {UNSUPPORTED_TRL_OPTIONS[name][:20]}"
    ):
        tiny_config(str(tmp_path), **{name: value})


def test_dependent_options_alone_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"vllm_mode='server' only acts with use_vllm=True"):
        tiny_config(str(tmp_path), vllm_mode="server")
    with pytest.raises(ValueError, match="entropy_target=0.5 only acts with use_adaptive_entropy=True"):
        tiny_config(str(tmp_path), entropy_target=0.5)
    with pytest.raises(ValueError, match="packing_samples=True has no padding to size"):
        tiny_config(str(tmp_path), pad_to_multiple_of=8, packing_samples=True)
    assert tiny_config(str(tmp_path), pad_to_multiple_of="auto").pad_to_multiple_of is None
    assert tiny_config(str(tmp_path), pad_to_multiple_of="8").pad_to_multiple_of == 8
    with pytest.raises(ValueError, match="delta=1.0 caps the importance ratio"):
        tiny_config(str(tmp_path), delta=1.0)


# ---------------------------------------------------------------------------------------------------- loading


def test_model_init_kwargs_and_trust_remote_code_reach_loading(tmp_path, monkeypatch):
    path = save_tiny_model("qwen2_5_vl", str(tmp_path / "model"))
    from rft_trl.models import utils as model_utils

    calls = []
    real = model_utils.AutoModelForMultimodalLM

    class Spy:
        @staticmethod
        def from_pretrained(name, **kwargs):
            calls.append(kwargs)
            return real.from_pretrained(name, **{**kwargs, "trust_remote_code": False})

    monkeypatch.setattr(model_utils, "AutoModelForMultimodalLM", Spy)
    args = tiny_config(str(tmp_path / "out"), model_init_kwargs={"dtype": "bfloat16"}, trust_remote_code=True)
    processor = build_tiny_model("qwen2_5_vl")[1]
    trainer = PPOTrainerVL(
        path, [length_reward], args, train_dataset=make_colour_dataset(4), processing_class=processor
    )
    assert calls[0]["dtype"] == torch.bfloat16 and calls[0]["trust_remote_code"] is True
    assert next(trainer.actor.parameters()).dtype == torch.bfloat16
    # A built model takes no loading arguments (as in TRL).
    model, _ = build_tiny_model("qwen2_5_vl")
    with pytest.raises(ValueError, match="model_init_kwargs apply when the model is given as a path"):
        PPOTrainerVL(model, [length_reward], args, train_dataset=make_colour_dataset(4), processing_class=processor)


def test_processing_class_is_loaded_from_the_models_path(tmp_path):
    path = save_tiny_model("qwen2_5_vl", str(tmp_path / "model"))
    from transformers import AutoModelForMultimodalLM

    model = AutoModelForMultimodalLM.from_pretrained(path)  # an object, no processing_class: TRL loads it by name
    trainer = PPOTrainerVL(
        model, [length_reward], tiny_config(str(tmp_path / "out")), train_dataset=make_colour_dataset(4)
    )
    assert type(trainer.processing_class).__name__ == "Qwen2VLProcessor"
    built, _ = build_tiny_model("qwen2_5_vl")
    with pytest.raises(ValueError, match="was not loaded from a path"):
        PPOTrainerVL(built, [length_reward], tiny_config(str(tmp_path / "out")), train_dataset=make_colour_dataset(4))


def test_disable_dropout_zeroes_every_dropout_of_policy_and_reference(tmp_path):
    model, processor = build_tiny_model("qwen2_5_vl")
    # The tiny model's attention dropout is functional; a Dropout module stands for the ones real models have.
    model.model.language_model.layers[0].extra_dropout = torch.nn.Dropout(0.1)
    args = tiny_config(str(tmp_path), disable_dropout=True, beta=0.1)
    trainer = PPOTrainerVL(
        model, [length_reward], args, train_dataset=make_colour_dataset(4), processing_class=processor
    )
    dropouts = [
        m for net in (trainer.actor, trainer._reference) for m in net.modules() if isinstance(m, torch.nn.Dropout)
    ]
    assert dropouts and all(m.p == 0 for m in dropouts)


# ------------------------------------------------------------------------------------------------- rollouts


def test_sampling_options_reach_generate(tmp_path):
    args = tiny_config(str(tmp_path), min_p=0.05, cache_implementation="dynamic")
    kwargs = args.sampling_kwargs()
    assert kwargs["min_p"] == 0.05 and kwargs["cache_implementation"] == "dynamic"
    assert "min_p" not in tiny_config(str(tmp_path)).sampling_kwargs()


def test_chat_template_kwargs_reach_the_template():
    _, processor = build_tiny_model("qwen2_5_vl")
    processor.chat_template = processor.chat_template.replace(
        "<|im_start|>assistant\n",
        "<|im_start|>assistant\n{% if enable_thinking is false %}<think></think>{% endif %}",
    )
    rows = [{"prompt": [{"role": "user", "content": "Say red."}]}]
    plain = PromptCollator(processor)(rows).prompt_texts[0]
    thinking_off = PromptCollator(processor, chat_template_kwargs={"enable_thinking": False})(rows).prompt_texts[0]
    assert thinking_off == plain + "<think></think>"


def test_num_generations_eval_samples_that_many_per_prompt(tmp_path):
    model, processor = build_tiny_model("qwen2_5_vl")
    args = tiny_config(str(tmp_path), num_generations_eval=3)
    trainer = PPOTrainerVL(
        model, [length_reward], args, train_dataset=make_colour_dataset(4), processing_class=processor
    )
    metrics = trainer.evaluate(make_colour_dataset(2, seed=1))
    assert metrics["eval_num_samples"] == 6.0 and math.isfinite(metrics["eval_reward"])


def test_log_multimodal_puts_the_samples_images_in_the_completions_table(tmp_path):
    model, processor = build_tiny_model("qwen2_5_vl")
    args = tiny_config(str(tmp_path), log_completions=True, max_steps=1)
    dataset = make_colour_dataset(4)
    trainer = PPOTrainerVL(model, [length_reward], args, train_dataset=dataset, processing_class=processor)
    trainer._start_rollout([dict(dataset[0]), dict(dataset[1])])
    table = trainer._completions.table
    assert len(table) == 4 and all(len(row["images"]) == 1 for row in table)
    args = tiny_config(str(tmp_path), log_completions=True, log_multimodal=False, max_steps=1)
    trainer = PPOTrainerVL(model, [length_reward], args, train_dataset=dataset, processing_class=processor)
    trainer._start_rollout([dict(dataset[0]), dict(dataset[1])])
    assert "images" not in trainer._completions.table[0]


def test_reward_functions_get_trls_keyword_arguments(tmp_path):
    model, processor = build_tiny_model("qwen2_5_vl")
    tokenizer = processor.tokenizer
    seen = []

    def judge(prompts, completions, completion_ids, trainer_state, log_extra, log_metric, **columns):
        texts = [completion[0]["content"] for completion in completions]  # conversational prompts
        assert [tokenizer.decode(ids, skip_special_tokens=True) for ids in completion_ids] == texts
        lengths = [len(ids) for ids in completion_ids]
        seen.append((trainer_state.global_step, sum(lengths) / len(lengths)))
        log_extra("num_tokens", lengths)
        log_metric("judge/mean_tokens", sum(lengths) / len(lengths))
        return [float(n) for n in lengths]

    args = tiny_config(str(tmp_path), log_completions=True, max_steps=2)
    dataset = make_colour_dataset(8)
    trainer = PPOTrainerVL(model, [judge], args, train_dataset=dataset, processing_class=processor)
    trainer._start_rollout([dict(dataset[0]), dict(dataset[1])])
    table = trainer._completions.table
    assert [row["num_tokens"] for row in table] == [row["reward"] for row in table]
    seen.clear()
    trainer.train()
    assert [step for step, _ in seen] == [0, 1]  # the TrainerState of the step each rollout was made for
    logged = [entry["judge/mean_tokens"] for entry in trainer.state.log_history if "loss" in entry]
    assert logged == pytest.approx([mean for _, mean in seen])


def test_metrics_carry_trls_names_and_values(tmp_path):
    model, tokenizer = build_tiny_model("qwen2")
    args = tiny_config(str(tmp_path), generate_max_len=3, beta=0.1, max_steps=2, temperature=1.5)
    dataset = make_task_dataset("text", 8)
    trainer = PPOTrainerVL(model, [length_reward], args, train_dataset=dataset, processing_class=tokenizer)
    rollout = trainer.experience_maker.make_experience([dict(dataset[i]) for i in range(2)])
    # By hand from the samples: lengths, and truncation (no EOS within max_completion_length).
    eos = trainer.experience_maker.eos_token_id
    lengths, ended = [], []
    for item in rollout.items:
        completion = item.sequences[-item.action_mask.shape[0] :][item.action_mask]
        lengths.append(len(completion))
        ended.append(completion[-1].item() == eos)
    terminated = [n for n, done in zip(lengths, ended) if done] or [0]
    metrics = rollout.metrics
    assert metrics["completions/mean_length"] == pytest.approx(sum(lengths) / len(lengths))
    assert (metrics["completions/min_length"], metrics["completions/max_length"]) == (min(lengths), max(lengths))
    assert metrics["completions/clipped_ratio"] == pytest.approx(1 - sum(ended) / len(ended))
    assert metrics["completions/mean_terminated_length"] == pytest.approx(sum(terminated) / len(terminated))
    assert metrics["completions/max_terminated_length"] == max(terminated)
    rewards = rollout.rewards  # length_reward alone, weight 1
    assert metrics["reward"] == pytest.approx(rewards.mean().item())
    assert metrics["reward_std"] == pytest.approx(rewards.std().item())
    assert metrics["rewards/length_reward/mean"] == pytest.approx(rewards.mean().item())
    groups = rewards.view(-1, args.num_generations)
    assert metrics["frac_reward_zero_std"] == pytest.approx((groups.std(-1) == 0).float().mean().item())

    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry][-1]
    trl_names = {
        "reward", "reward_std", "frac_reward_zero_std", "rewards/length_reward/mean", "rewards/length_reward/std",
        "completions/mean_length", "completions/clipped_ratio", "kl", "entropy", "clip_ratio/low_mean",
        "clip_ratio/low_min", "clip_ratio/high_mean", "clip_ratio/high_max", "clip_ratio/region_mean",
    }  # fmt: skip
    assert trl_names <= set(logged), trl_names - set(logged)
    assert logged["kl"] > 0 and logged["entropy"] > 0


def test_merge_rollout_metrics_by_hand():
    merged = merge_rollout_metrics(
        [
            {"reward": 1.0, "completions/min_length": 3, "completions/max_length": 5, "rollout/num_samples": 8},
            {"reward": 0.0, "completions/min_length": 2, "completions/max_length": 7, "rollout/num_samples": 8,
             "data/skipped/missing_file": 1.0},
        ]
    )  # fmt: skip
    assert merged == {
        "reward": 0.5,
        "completions/min_length": 2,
        "completions/max_length": 7,
        "rollout/num_samples": 16,
        "data/skipped/missing_file": 1.0,
    }


def test_rollout_metrics_are_averaged_over_the_logging_interval(tmp_path):
    model, tokenizer = build_tiny_model("qwen2")
    args = tiny_config(str(tmp_path), max_steps=4, logging_steps=2, temperature=1.5)
    trainer = PPOTrainerVL(
        model, [length_reward], args, train_dataset=make_task_dataset("text", 16), processing_class=tokenizer
    )
    made = []
    score_rollout = trainer.experience_maker.score_rollout

    def recording(generated, metrics):
        rollout = score_rollout(generated, metrics)
        made.append(rollout.metrics["reward"])
        return rollout

    trainer.experience_maker.score_rollout = recording
    trainer.train()
    logged = [entry["reward"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(made) == 4 and made[0] != made[1]
    assert logged == pytest.approx([(made[0] + made[1]) / 2, (made[2] + made[3]) / 2])


def test_entropy_bonus_is_the_gap_between_trls_policy_loss_and_the_loss(tmp_path):
    # TRL's policy_loss is the loss before the entropy bonus, so (policy_loss - loss) / entropy = entropy_coef on a
    # step of one micro-batch.
    model, tokenizer = build_tiny_model("qwen2")
    args = tiny_config(str(tmp_path), max_steps=2, entropy_coef=0.5, beta=0.1)
    trainer = PPOTrainerVL(
        model, [length_reward], args, train_dataset=make_task_dataset("text", 8), processing_class=tokenizer
    )
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2
    for entry in logs:
        assert (entry["policy_loss"] - entry["loss"]) / entry["entropy"] == pytest.approx(0.5, rel=1e-3)


def test_trls_trainer_attributes_and_required_dataset(tmp_path):
    model, tokenizer = build_tiny_model("qwen3_vl_moe")
    args = tiny_config(str(tmp_path))
    with pytest.raises(ValueError, match="`train_dataset` is required"):
        PPOTrainerVL(model, [length_reward], args, processing_class=tokenizer)
    dataset = make_colour_dataset(4)
    model.config.get_text_config().output_router_logits = True
    trainer = PPOTrainerVL(model, [length_reward], args, train_dataset=dataset, processing_class=tokenizer)
    assert trainer.aux_loss_enabled is True
    text_model, text_tokenizer = build_tiny_model("qwen2")
    dataset = make_task_dataset("text", 4)
    trainer = PPOTrainerVL(text_model, [length_reward], args, train_dataset=dataset, processing_class=text_tokenizer)
    assert trainer.aux_loss_enabled is False
    assert trainer.reward_func_names == ["length_reward"]


def test_high_entropy_mask_cuts_at_the_quantile_of_the_valid_tokens(tmp_path):
    trainer = make_text_trainer(tmp_path)
    entropies = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.7, 0.8, 0.9, 1.0, 1.1, 1.2]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    valid = entropies[mask.bool()].numpy()
    for threshold in (0.0, 0.5, 0.8, 1.0):
        cutoff = float(np.quantile(valid, threshold))  # numpy's linear interpolation, as torch.quantile's
        expected = (entropies >= cutoff) & mask.bool()
        assert torch.equal(trainer.get_high_entropy_mask(entropies, mask, threshold), expected)
    assert not trainer.get_high_entropy_mask(entropies, torch.zeros_like(mask), 0.5).any()
    # top_entropy_quantile=0.2 keeps the top 20%: 2 of the 10 valid tokens here.
    assert int(trainer.get_high_entropy_mask(entropies, mask, 1 - 0.2).sum()) == 2


def test_off_policy_mask_drops_only_divergent_negative_sequences():
    current = torch.zeros(4, 3)
    sampled = torch.tensor([[0.5, 0.5, 9.0], [0.5, 0.5, 0.5], [0.1, 0.1, 0.1], [float("nan"), 0.9, 0.9]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 1], [1, 1, 1]])
    advantages = torch.tensor([[-1.0], [1.0], [-1.0], [-1.0]])
    keep = PPOTrainerVL.get_off_policy_mask(advantages, current, sampled, mask, off_policy_threshold=0.3)
    # Row 0: mean 0.5 over its 2 valid tokens (the 9.0 is padding) with A < 0 -> dropped; row 1: A > 0 -> kept;
    # row 2: mean 0.1 -> kept; row 3: the NaN counts as 0, mean 0.6 -> dropped.
    assert keep.tolist() == [[0], [1], [1], [0]]
    per_token = advantages.expand(4, 3).clone()
    per_token[:, 2] = 0.0  # padding carries no advantage
    assert torch.equal(PPOTrainerVL.get_off_policy_mask(per_token, current, sampled, mask, 0.3), keep)


def test_off_policy_mask_threshold_is_applied_in_training(tmp_path, monkeypatch):
    calls = []
    original = PPOTrainerVL.get_off_policy_mask

    def recording(*args, **kwargs):
        keep = original(*args, **kwargs)
        calls.append((args[-1], keep))
        return keep

    monkeypatch.setattr(PPOTrainerVL, "get_off_policy_mask", staticmethod(recording))
    trainer = make_text_trainer(tmp_path, off_policy_mask_threshold=0.25, num_iterations=2, max_steps=2)
    trainer.train()
    assert calls and all(threshold == 0.25 for threshold, _ in calls)


@pytest.mark.parametrize("loss_type", ["luspo", "cispo", "sapo", "vespo"])
def test_every_trl_loss_type_trains(tmp_path, loss_type):
    kwargs = {"epsilon_high": 5.0} if loss_type == "cispo" else {}
    trainer = make_text_trainer(tmp_path, loss_type=loss_type, max_steps=2, learning_rate=0.05, **kwargs)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2 and all(math.isfinite(entry["loss"]) for entry in logs)
    assert any(not torch.equal(p, before[name]) for name, p in trainer.model.named_parameters() if name in before)


def test_scale_rewards_batch_divides_by_the_batch_std(tmp_path):
    trainer = make_text_trainer(tmp_path, scale_rewards="batch", temperature=1.5)
    rows = [dict(trainer.train_dataset[i]) for i in range(2)]
    rollout = trainer.experience_maker.make_experience(rows)
    rewards = rollout.rewards.double()
    n = trainer.args.num_generations
    group_means = rewards.view(-1, n).mean(-1).repeat_interleave(n)
    expected = (rewards - group_means) / (rewards.std() + 1e-4)  # TRL's epsilon (advantage_std_eps)
    got = torch.stack([item.advantages[item.action_mask][0] for item in rollout.items]).double()
    assert rewards.std() > 0
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_pad_to_multiple_of_widens_the_update_batches_without_changing_log_probs(tmp_path):
    model, processor = build_tiny_model("qwen2_5_vl")
    args = tiny_config(
        str(tmp_path), pad_to_multiple_of=16, per_device_train_batch_size=4, gradient_accumulation_steps=1
    )
    dataset = make_colour_dataset(4)
    trainer = PPOTrainerVL(model, [length_reward], args, train_dataset=dataset, processing_class=processor)
    trainer._start_rollout([dict(dataset[0]), dict(dataset[1])])
    padded = trainer._micro_batches[0]
    plain = NaiveReplayBuffer(4).collate_fn(remove_padding_in_sequences(split_experience_batch(padded)))
    assert padded.sequences.shape[1] % 16 == 0 and padded.sequences.shape[1] > plain.sequences.shape[1]
    for experience in (padded, plain):
        assert experience.attention_mask.shape == experience.sequences.shape
    with torch.no_grad():
        log_probs = [
            trainer.actor(
                e.sequences,
                e.action_mask.shape[1],
                attention_mask=e.attention_mask,
                **e.token_fields,
                **e.multimodal_inputs,
            )
            for e in (padded, plain)
        ]
    torch.testing.assert_close(log_probs[0], log_probs[1], rtol=0, atol=1e-5)
    trainer.train()
    assert all(math.isfinite(h["loss"]) for h in trainer.state.log_history if "loss" in h)


def test_normalize_then_sum_matches_trls_formula(tmp_path):
    """GDPO by hand, with numpy: per function (x - group mean) / (group std + 1e-4), weighted sum, then the same over
    the whole batch; a function returning None for a sample adds nothing to that sample's sum."""
    seen = {}

    def chars(completions, **kwargs):
        scores = [float(len(completion_text(c))) for c in completions]
        seen.setdefault("chars", []).extend(scores)
        return scores

    def vowels_or_none(completions, **kwargs):
        seen["vowels"] = [
            None if i % 3 == 0 else float(sum(ch in "aeiou" for ch in completion_text(c)))
            for i, c in enumerate(completions)
        ]
        return seen["vowels"]

    model, tokenizer = build_tiny_model("qwen2")
    args = tiny_config(
        str(tmp_path),
        multi_objective_aggregation="normalize_then_sum",
        reward_weights=[0.7, 0.3],
        n_samples_per_prompt=3,
        rollout_batch_size=2,
        per_device_train_batch_size=3,
        generate_max_len=8,
        temperature=1.5,
    )
    dataset = make_task_dataset("text", 8)
    trainer = PPOTrainerVL(model, [chars, vowels_or_none], args, train_dataset=dataset, processing_class=tokenizer)
    rollout = trainer.experience_maker.make_experience([dict(dataset[i]) for i in range(2)])

    total = np.zeros(6)
    for values, weight in ((seen["chars"], 0.7), (seen["vowels"], 0.3)):
        for group in (range(0, 3), range(3, 6)):
            scored = [i for i in group if values[i] is not None]
            column = np.array([values[i] for i in scored])
            std = column.std(ddof=1) if len(scored) > 1 else 0.0
            for i, x in zip(scored, column):
                total[i] += weight * (x - column.mean()) / (std + 1e-4)
    expected = (total - total.mean()) / (total.std(ddof=1) + 1e-4)
    got = [item.advantages[item.action_mask][0].item() for item in rollout.items]
    assert np.abs(total).max() > 0.1
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    # The logged reward stays the weighted sum of the raw rewards (TRL's).
    raw = [0.7 * c + 0.3 * (v or 0.0) for c, v in zip(seen["chars"], seen["vowels"])]
    assert rollout.metrics["reward"] == pytest.approx(np.mean(raw), rel=1e-5)


def test_normalize_then_sum_needs_a_group_estimator():
    with pytest.raises(ValueError, match="normalize_then_sum.*advantage_estimator='rloo'"):
        RFTConfig("out", multi_objective_aggregation="normalize_then_sum", advantage_estimator="rloo", use_cpu=True)
    with pytest.raises(ValueError, match="is not one of 'sum_then_normalize', 'normalize_then_sum'"):
        RFTConfig("out", multi_objective_aggregation="mean", use_cpu=True)


# ------------------------------------------------------------------------------------------------------ loss


def test_delta_caps_the_unclipped_ratio():
    # ratio = e^1 = 2.718 with advantage -1: the surrogates are -2.718 (unclipped) and -1.2 (clipped at 1 + 0.2);
    # PPO takes -min(...) = 2.718. With delta = 1.5 the unclipped ratio is capped at 1.5: loss = max(1.5, 1.2) = 1.5.
    log_probs, old = torch.tensor([[1.0]]), torch.tensor([[0.0]])
    advantages = torch.tensor([[-1.0]])
    plain, _ = policy_loss(log_probs, old, advantages, eps_clip_low=0.2)
    capped, _ = policy_loss(log_probs, old, advantages, eps_clip_low=0.2, ratio_cap=1.5)
    assert plain.item() == pytest.approx(math.e) and capped.item() == pytest.approx(1.5)


def _one_micro_batch(trainer, **overrides):
    """A synthetic micro-batch: 2 samples of 3 action tokens, log-probs that moved away from the rollout's."""
    new = torch.tensor([[-1.0, -0.5, -2.0], [-0.3, -1.2, -0.7]], requires_grad=True)
    batch = {
        "new_log_probs": new,
        "action_log_probs": torch.tensor([[-1.2, -0.4, -2.1], [-0.3, -1.0, -0.9]]),
        "base_action_log_probs": torch.tensor([[-0.9, -0.6, -1.8], [-0.5, -1.1, -0.6]]),
        "advantages": torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]]),
        "new_entropy": torch.tensor([[0.5, 1.0, 1.5], [2.0, 0.1, 0.3]]),
        **overrides,
    }
    mask = torch.ones(2, 3, dtype=torch.bool)
    return batch, mask


def test_entropy_bonus_and_bias_corrected_kl_match_a_hand_computation(tmp_path):
    model, processor = build_tiny_model("qwen2")
    base = dict(beta=0.1, max_steps=1)
    trainers = {
        key: PPOTrainerVL(
            build_tiny_model("qwen2")[0],
            [length_reward],
            tiny_config(str(tmp_path / key), **base, **overrides),
            train_dataset=Dataset.from_list([{"prompt": "x"}] * 4),
            processing_class=processor,
        )
        for key, overrides in {
            "plain": {"use_bias_correction_kl": False},
            "corrected": {"use_bias_correction_kl": True},
            "entropy": {"use_bias_correction_kl": False, "entropy_coef": 0.25},
        }.items()
    }
    out = {"output": type("Output", (), {"aux_loss": None})()}
    losses = {}
    for key, trainer in trainers.items():
        batch, mask = _one_micro_batch(trainer)
        losses[key] = trainer.training_step_actor(batch, mask, out).item()
    batch, _ = _one_micro_batch(None)
    new, old, ref = batch["new_log_probs"].detach(), batch["action_log_probs"], batch["base_action_log_probs"]
    k3 = torch.exp(ref - new) - (ref - new) - 1  # the k3 estimator, per token
    ratio = torch.exp(new - old)
    # Only the KL term differs between "plain" and "corrected": beta * (mean(k3 * ratio) - mean(k3)).
    assert losses["corrected"] - losses["plain"] == pytest.approx(
        0.1 * ((k3 * ratio).mean() - k3.mean()).item(), abs=1e-6
    )
    # The entropy bonus: - entropy_coef * mean entropy over the loss tokens.
    mean_entropy = batch["new_entropy"].mean().item()
    assert losses["entropy"] - losses["plain"] == pytest.approx(-0.25 * mean_entropy, abs=1e-6)


def test_router_aux_loss_coefficient_resolution(tmp_path):
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    _, tokenizer = build_tiny_model("qwen2")
    config = Qwen2MoeConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, moe_intermediate_size=32,
        shared_expert_intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
        num_experts=4, num_experts_per_tok=2, output_router_logits=True, router_aux_loss_coef=0.02,
    )  # fmt: skip

    def trainer(**overrides):
        return PPOTrainerVL(
            Qwen2MoeForCausalLM(config),
            [length_reward],
            tiny_config(str(tmp_path), **overrides),
            train_dataset=Dataset.from_list([{"prompt": "x"}] * 4),
            processing_class=tokenizer,
        )

    assert trainer()._router_aux_loss.coef == 0.02  # TRL's default: the model config's coefficient
    assert trainer(router_aux_loss_coef=0.5)._router_aux_loss.coef == 0.5
    assert trainer(aux_loss_coef=0.3)._router_aux_loss.coef == 0.3  # the seed's name
    text_model, _ = build_tiny_model("qwen2")
    with pytest.raises(ValueError, match="returns no router logits"):
        PPOTrainerVL(
            text_model,
            [length_reward],
            tiny_config(str(tmp_path), router_aux_loss_coef=0.5),
            train_dataset=Dataset.from_list([{"prompt": "x"}] * 4),
            processing_class=tokenizer,
        )
