"""RFTConfig: TRL aliases, contradiction errors, derived sizes and every checked field."""

import logging
import math
import re
import warnings

import pytest
import torch
from transformers import HfArgumentParser

from rft_trl import RFTConfig
from rft_trl.trainers.rft_config import ALIASES, FIELD_RANGES, TRL_LOSS_TYPES


def config(**kwargs):
    kwargs.setdefault("output_dir", "unused")
    kwargs.setdefault("use_cpu", True)
    return RFTConfig(**kwargs)


@pytest.mark.parametrize("ours,theirs,default", ALIASES)
def test_alias_pairs_share_one_value(ours, theirs, default):
    assert getattr(config(), ours) == default == getattr(config(), theirs)
    value = {"n_samples_per_prompt": 4, "max_epochs": 2}.get(ours, 0.3 if isinstance(default, float) else 7)
    if ours == "high_entropy_token_ratio" or ours == "eps_clip_high":
        value = 0.5
    extra = {"n_samples_per_prompt": {"per_device_train_batch_size": 8}}.get(ours, {})
    by_theirs = config(**{theirs: value}, **extra)
    by_ours = config(**{ours: value}, **extra)
    assert getattr(by_theirs, ours) == value == getattr(by_ours, theirs)
    with pytest.raises(ValueError, match=f"{ours}=.* contradicts its TRL alias {theirs}="):
        config(**{ours: value, theirs: value * 2}, **extra)


@pytest.mark.parametrize("loss_type,mode", list(TRL_LOSS_TYPES.items()))
def test_trl_loss_type_maps_to_aggregation(loss_type, mode):
    assert config(loss_type=loss_type).loss_agg_mode == mode
    other = "seq-mean-token-sum" if mode != "seq-mean-token-sum" else "token-mean"
    with pytest.raises(ValueError, match="contradicts"):
        config(loss_type=loss_type, loss_agg_mode=other)


@pytest.mark.parametrize(
    "scale,estimator", [("group", "group_norm"), (True, "group_norm"), ("none", "dr_grpo"), (False, "dr_grpo")]
)
def test_trl_scale_rewards_maps_to_estimator(scale, estimator):
    assert config(scale_rewards=scale).advantage_estimator == estimator


def test_unsupported_trl_values_are_rejected_with_the_fix():
    with pytest.raises(ValueError, match="scale_rewards='row' is not supported"):
        config(scale_rewards="row")
    with pytest.raises(ValueError, match="loss_type='ppo' is not supported"):
        config(loss_type="ppo")
    with pytest.raises(ValueError, match=r"loss_type='sapo' has its own clipping; delta=3.0 only apply"):
        config(loss_type="sapo", delta=3.0)
    with pytest.raises(ValueError, match="contradicts"):
        config(scale_rewards="group", advantage_estimator="rloo")


def test_rollout_size_defaults_to_trl_generation_batch():
    # TRL: per_device_train_batch_size * steps_per_generation completions per generation = 16 / 8 = 2 prompts.
    args = config(per_device_train_batch_size=8, gradient_accumulation_steps=2, num_generations=8)
    assert args.rollout_batch_size == 2
    assert args.micro_train_batch_size == 8
    # 2 prompts * 8 samples * 1 epoch / 8 per micro-batch = 2 micro-batches per rollout.
    assert args.micro_steps_per_rollout == 2
    assert config(rollout_batch_size=4, per_device_train_batch_size=4, max_epochs=2).micro_steps_per_rollout == 16


def test_micro_train_batch_size_is_per_device_train_batch_size():
    assert config(micro_train_batch_size=16).per_device_train_batch_size == 16
    with pytest.raises(ValueError, match="micro_train_batch_size=16 contradicts per_device_train_batch_size=4"):
        config(micro_train_batch_size=16, per_device_train_batch_size=4)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"per_device_train_batch_size": 4}, "not a multiple of n_samples_per_prompt=8"),
        (
            {"rollout_batch_size": 1, "n_samples_per_prompt": 3, "per_device_train_batch_size": 2},
            "not a multiple of micro_train_batch_size",
        ),
        ({"advantage_estimator": "ppo"}, "advantage_estimator='ppo' is not one of"),
        ({"loss_agg_mode": "mean"}, "loss_agg_mode='mean' is not one of"),
        ({"kl_estimator": "k4"}, "kl_estimator='k4' is not one of"),
        ({"importance_sampling_level": "batch"}, "importance_sampling_level='batch' is not one of"),
        ({"n_samples_per_prompt": 1, "per_device_train_batch_size": 1}, "set n_samples_per_prompt >= 2"),
        ({"kl_target": 0.1}, "kl_target needs init_kl_coef > 0"),
        ({"buffer_limit": 3}, "buffer_limit=3 would drop samples of the current rollout"),
        ({"remove_unused_columns": True}, "remove_unused_columns must be False"),
        (
            {"use_adaptive_entropy": True, "entropy_coef_min": 0.5, "entropy_coef_max": 0.1},
            "entropy_coef_min=0.5 is above entropy_coef_max=0.1",
        ),
        ({"max_staleness": 2}, "max_staleness=2 bounds the lag of rollouts generated ahead"),
        ({"async_rollouts": True}, "transformers' generate cannot do"),
        (
            {"async_rollouts": True, "use_vllm": True, "vllm_enable_sleep_mode": True},
            "cannot sleep then: set vllm_enable_sleep_mode=False",
        ),
        (
            {"async_rollouts": True, "use_vllm": True, "vllm_tensor_parallel_size": 2},
            "tensor-parallel colocated engine is not supported",
        ),
        (
            {"async_rollouts": True, "use_vllm": True, "max_epochs": 2},
            "a rollout feeds 2 optimizer steps, so one sampled ahead lags its policy by 2 steps, beyond "
            "max_staleness=1. Set max_staleness >= 2",
        ),
    ],
)
def test_invalid_values_raise_with_a_fix(kwargs, message):
    with pytest.raises(ValueError, match=message):
        config(**kwargs)


def test_single_sample_estimators_accept_one_sample():
    args = config(advantage_estimator="gae", n_samples_per_prompt=1, per_device_train_batch_size=1)
    assert args.rollout_batch_size == 1


def test_disable_ds_ckpt_saves_weights_only():
    assert config(disable_ds_ckpt=True).save_only_model is True
    assert config().save_only_model is False


def test_sampling_kwargs_follow_fields_then_generation_kwargs():
    args = config(temperature=0.7, top_p=0.9, top_k=5, max_completion_length=12, generation_kwargs={"top_p": 0.5})
    kwargs = args.sampling_kwargs()
    assert kwargs["temperature"] == 0.7 and kwargs["top_k"] == 5 and kwargs["max_new_tokens"] == 12
    assert kwargs["top_p"] == 0.5 and kwargs["do_sample"] is True
    assert config(top_k=0).sampling_kwargs()["top_k"] is None


def test_cli_parses_trl_and_seed_names():
    parser = HfArgumentParser(RFTConfig)
    (args,) = parser.parse_args_into_dataclasses(
        [
            "--output_dir",
            "x",
            "--use_cpu",
            "--num_generations",
            "4",
            "--beta",
            "0.04",
            "--epsilon_high",
            "0.28",
            "--per_device_train_batch_size",
            "4",
            "--kl_estimator",
            "k2",
        ]
    )
    assert (args.n_samples_per_prompt, args.init_kl_coef, args.eps_clip_high, args.kl_estimator) == (
        4,
        0.04,
        0.28,
        "k2",
    )


def test_pickled_config_carries_no_token():
    import pickle

    args = config(hub_token="hf_sentinel_123", push_to_hub=False)
    restored = pickle.loads(pickle.dumps(args))
    assert args.hub_token == "hf_sentinel_123"
    assert restored.hub_token == "<REDACTED>"
    assert b"hf_sentinel_123" not in pickle.dumps(args)


def test_trl_steps_per_generation_sizes_the_rollout():
    # TRL: 4 completions per micro-batch x 4 steps per generation = 16 completions = 2 prompts x 8.
    args = config(per_device_train_batch_size=4, steps_per_generation=4, num_generations=8)
    assert args.rollout_batch_size == 2 and args.micro_steps_per_rollout == 4
    with pytest.raises(ValueError, match="rollout_batch_size and steps_per_generation all size the rollout"):
        config(per_device_train_batch_size=4, steps_per_generation=4, rollout_batch_size=2)
    # TRL's generation_batch_size counts completions over all processes (one here): 32 = 4 prompts x 8.
    args = config(per_device_train_batch_size=4, generation_batch_size=32, num_generations=8)
    assert args.rollout_batch_size == 4 and args.micro_steps_per_rollout == 8
    with pytest.raises(ValueError, match="generation_batch_size=12 must be a multiple of processes"):
        config(per_device_train_batch_size=4, generation_batch_size=12, num_generations=8)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_sequence_level_ratios_with_a_token_summed_loss_warn(loss_type, caplog):
    with caplog.at_level("WARNING", logger="rft_trl.trainers.config_trl"):
        config(importance_sampling_level="sequence", loss_type=loss_type)
    warned = "weights each sequence by its completion length" in caplog.text
    assert warned == (loss_type != "grpo")


# Every field with a range: (the name passed, a value out of range, a value in range (the control), what the error
# names the field, the range, other settings the field needs). A TRL alias is given by its TRL name, and the error
# names both. The in-range values include TRL's edge values: beta 0, top_k -1 (vLLM's "disabled"), epsilon_high below
# epsilon, top_entropy_quantile 0, num_completions_to_print 0.
VLLM = {"use_vllm": True}
VLLM_SERVER = {"use_vllm": True, "vllm_mode": "server"}
RANGE_CASES = [
    # Batch layout; the good values keep the rollout a whole number of optimizer steps (8 completions per prompt).
    ("per_device_train_batch_size", 0, 16, "per_device_train_batch_size", ">= 1", {}),
    ("micro_train_batch_size", 0, 16, "micro_train_batch_size", ">= 1", {}),
    ("per_device_eval_batch_size", 0, 1, "per_device_eval_batch_size", ">= 1", {}),
    ("gradient_accumulation_steps", 0, 2, "gradient_accumulation_steps", ">= 1", {}),
    ("steps_per_generation", 0, 2, "steps_per_generation", ">= 1", {}),
    ("generation_batch_size", 0, 16, "generation_batch_size", ">= 1", {}),
    ("rollout_batch_size", 0, 2, "rollout_batch_size", ">= 1", {}),
    ("micro_rollout_batch_size", 0, 1, "micro_rollout_batch_size", ">= 1", {}),
    ("num_generations", 0, 4, "n_samples_per_prompt (num_generations)", ">= 1", {}),
    ("num_generations_eval", 0, 2, "num_generations_eval", ">= 1", {}),
    ("max_prompt_length", 0, 1, "prompt_max_len (max_prompt_length)", ">= 1", {}),
    ("max_completion_length", 0, 1, "generate_max_len (max_completion_length)", ">= 1", {}),
    ("num_iterations", 0, 2, "max_epochs (num_iterations)", ">= 1", {}),
    ("pad_to_multiple_of", 0, 64, "pad_to_multiple_of", ">= 1", {}),
    ("log_prob_chunk_size", 0, 1, "log_prob_chunk_size", ">= 1", {}),
    ("buffer_limit", -1, 8, "buffer_limit", ">= 0", {}),
    ("dynamic_sampling_max_rounds", -1, 0, "dynamic_sampling_max_rounds", ">= 0", {"dynamic_sampling": True}),
    ("max_staleness", -1, 0, "max_staleness", ">= 0", {"async_rollouts": True, "use_vllm": True}),
    # Sampling
    ("temperature", 0.0, 0.7, "temperature", "> 0", {}),
    ("top_p", 0.0, 1.0, "top_p", "in (0, 1]", {}),
    ("top_k", -2, -1, "top_k", ">= -1", {}),
    ("min_p", 1.5, 0.0, "min_p", "in [0, 1]", {}),
    ("repetition_penalty", 0.0, 1.2, "repetition_penalty", "> 0", {}),
    # Algorithm
    ("learning_rate", -1e-5, 0.0, "learning_rate", ">= 0", {}),
    ("critic_learning_rate", -1.0, 0.0, "critic_learning_rate", ">= 0", {}),
    ("gamma", -0.1, 1.0, "gamma", "in [0, 1]", {}),
    ("lambd", 1.5, 0.0, "lambd", "in [0, 1]", {}),
    ("epsilon", 1.0, 0.0, "eps_clip (epsilon)", "in [0, 1)", {}),
    ("epsilon_high", -0.1, 0.1, "eps_clip_high (epsilon_high)", ">= 0", {}),
    ("dual_clip", 1.0, 3.0, "dual_clip", "> 1", {}),
    ("value_clip", 0.0, 0.5, "value_clip", "> 0", {}),
    ("advantage_clip", 0.0, 5.0, "advantage_clip", "> 0", {}),
    ("advantage_std_eps", 0.0, 1e-6, "advantage_std_eps", "> 0", {}),
    ("top_entropy_quantile", 1.5, 0.0, "high_entropy_token_ratio (top_entropy_quantile)", "in [0, 1]", {}),
    ("off_policy_mask_threshold", -0.1, 0.0, "off_policy_mask_threshold", ">= 0", {}),
    ("sapo_temperature_neg", 0.0, 2.0, "sapo_temperature_neg", "> 0", {"loss_type": "sapo"}),
    ("sapo_temperature_pos", 0.0, 2.0, "sapo_temperature_pos", "> 0", {"loss_type": "sapo"}),
    ("vespo_k_pos", -1.0, 0.0, "vespo_k_pos", ">= 0", {"loss_type": "vespo"}),
    ("vespo_lambda_pos", -1.0, 0.0, "vespo_lambda_pos", ">= 0", {"loss_type": "vespo"}),
    ("vespo_k_neg", -1.0, 0.0, "vespo_k_neg", ">= 0", {"loss_type": "vespo"}),
    ("vespo_lambda_neg", -1.0, 0.0, "vespo_lambda_neg", ">= 0", {"loss_type": "vespo"}),
    ("entropy_coef", -0.1, 0.1, "entropy_coef", ">= 0", {}),
    ("entropy_coef_min", -0.1, 0.5, "entropy_coef_min", ">= 0", {"use_adaptive_entropy": True}),
    ("entropy_coef_max", -0.1, 0.0, "entropy_coef_max", ">= 0", {"use_adaptive_entropy": True}),
    ("entropy_coef_delta", -0.1, 0.0, "entropy_coef_delta", ">= 0", {"use_adaptive_entropy": True}),
    ("entropy_target", -0.1, 0.0, "entropy_target", ">= 0", {"use_adaptive_entropy": True}),
    ("delta", 1.0, 2.0, "delta", "> 1", {}),
    # KL and reference
    ("beta", -1.0, 0.0, "init_kl_coef (beta)", ">= 0", {}),
    ("kl_target", 0.0, 0.1, "kl_target", "> 0", {"beta": 0.1}),
    ("kl_horizon", 0, 1, "kl_horizon", ">= 1", {}),
    ("ref_model_mixup_alpha", 1.5, 1.0, "ref_model_mixup_alpha", "in [0, 1]", {"sync_ref_model": True}),
    ("ref_model_sync_steps", 0, 1, "ref_model_sync_steps", ">= 1", {"sync_ref_model": True}),
    # Models
    ("freezing_actor_steps", -2, 10, "freezing_actor_steps", ">= -1", {}),
    ("ema_beta", 1.5, 1.0, "ema_beta", "in [0, 1]", {}),
    ("ptx_coef", -1.0, 0.5, "ptx_coef", ">= 0", {}),
    ("aux_loss_coef", -1.0, 0.5, "aux_loss_coef", ">= 0", {}),
    ("router_aux_loss_coef", -1.0, 0.0, "router_aux_loss_coef", ">= 0", {}),
    ("max_tool_calling_iterations", -1, 0, "max_tool_calling_iterations", ">= 0", {}),
    # Rewards, robustness, logging
    ("max_reward_failure_rate", 1.5, 1.0, "max_reward_failure_rate", "in [0, 1]", {}),
    ("max_skipped_fraction", -0.1, 0.0, "max_skipped_fraction", "in [0, 1]", {}),
    ("max_consecutive_nonfinite_steps", 0, 1, "max_consecutive_nonfinite_steps", ">= 1", {}),
    ("num_completions_to_print", -1, 0, "num_completions_to_print", ">= 0", {}),
    # vLLM
    ("vllm_gpu_memory_utilization", 0.0, 1.0, "vllm_gpu_memory_utilization", "in (0, 1]", VLLM),
    ("vllm_max_model_length", 0, 1024, "vllm_max_model_length", ">= 1", VLLM),
    ("vllm_tensor_parallel_size", 0, 1, "vllm_tensor_parallel_size", ">= 1", VLLM),
    ("vllm_server_port", 0, 65535, "vllm_server_port", "in [1, 65535]", VLLM_SERVER),
    ("vllm_server_timeout", 0.0, 10.0, "vllm_server_timeout", "> 0", VLLM_SERVER),
    ("vllm_importance_sampling_clip_max", 0.0, 2.0, "vllm_importance_sampling_clip_max", "> 0", VLLM),
    ("vllm_importance_sampling_clip_min", -0.1, 0.5, "vllm_importance_sampling_clip_min", ">= 0", VLLM),
    ("vllm_importance_sampling_cap", 0.0, 2.0, "vllm_importance_sampling_cap", "> 0", VLLM),
]


def test_range_cases_cover_every_checked_field():
    aliases = {theirs: ours for ours, theirs, _ in ALIASES}
    # delta is checked with the other TRL options, in its own words (see the case's message below).
    assert {aliases.get(case[0], case[0]) for case in RANGE_CASES} == {*FIELD_RANGES, "delta"}


@pytest.mark.parametrize(
    ("name", "bad", "good", "shown", "allowed", "needs"), RANGE_CASES, ids=[c[0] for c in RANGE_CASES]
)
def test_out_of_range_values_are_refused_at_construction(name, bad, good, shown, allowed, needs):
    if name == "delta":
        message = f"delta={bad} caps the importance ratio from above: it must be {allowed}."
    else:
        message = f"{shown} must be {allowed}, got {bad}"
    with pytest.raises(ValueError, match=re.escape(message)):
        config(**{name: bad}, **needs)
    assert getattr(config(**{name: good}, **needs), name) == good


def test_per_device_train_batch_size_zero_is_a_value_error_not_a_zero_division():
    with pytest.raises(ValueError, match=re.escape("per_device_train_batch_size must be >= 1, got 0.")):
        config(per_device_train_batch_size=0)


def test_nan_is_out_of_every_range():
    with pytest.raises(ValueError, match="learning_rate must be >= 0, got nan"):
        config(learning_rate=math.nan)


def test_range_messages_say_what_edge_values_mean():
    with pytest.raises(ValueError, match=re.escape("temperature must be > 0, got 0.0 (for greedy decoding use")):
        config(temperature=0.0)
    with pytest.raises(ValueError, match=re.escape("top_k must be >= -1, got -2 (0 or -1 disables top-k).")):
        config(top_k=-2)
    assert config(top_k=-1).sampling_kwargs()["top_k"] is None


# ---------------------------------------------------------------------------------------------------------------
# No warning from our own defaults
# ---------------------------------------------------------------------------------------------------------------

# What transformers and torch print when a setting of ours is stale or useless on the machine.
OWN_SETTING_WARNINGS = re.compile(r"`gradient_checkpointing` is deprecated|'pin_memory' argument is set as true")


def own_setting_warnings(**kwargs):
    """
    The warnings about our settings (FutureWarning included, which pytest's config ignores) that building the config
    and iterating a DataLoader with its pin-memory setting emit. Without use_cpu, as the examples run: transformers
    turns pinning off by itself under use_cpu.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        args = config(use_cpu=False, bf16=False, **kwargs)
        list(torch.utils.data.DataLoader([torch.zeros(1)], pin_memory=args.dataloader_pin_memory))
    return [str(w.message) for w in caught if OWN_SETTING_WARNINGS.search(str(w.message))]


def test_defaults_emit_no_warning_about_our_own_settings():
    assert own_setting_warnings() == []
    args = config(use_cpu=False, bf16=False)
    # TRL's default, under transformers' current name; the deprecated name mirrors it.
    assert args.activation_checkpointing is True and args.gradient_checkpointing is True
    assert args.dataloader_pin_memory is torch.accelerator.is_available()
    assert config(activation_checkpointing=False).gradient_checkpointing is False


def test_deprecated_gradient_checkpointing_still_applies_and_warns():
    # The control: the filter sees transformers' warning when the deprecated name is given, which it still honours.
    assert config(gradient_checkpointing=False).activation_checkpointing is False
    assert any(
        "`gradient_checkpointing` is deprecated" in w for w in own_setting_warnings(gradient_checkpointing=True)
    )


@pytest.mark.skipif(torch.accelerator.is_available(), reason="torch only warns about pinning without an accelerator")
def test_pin_memory_control_warns_without_an_accelerator():
    # The control for pin_memory: a DataLoader that pins on this machine draws the warning the defaults avoid.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        list(torch.utils.data.DataLoader([torch.zeros(1)], pin_memory=True))
    assert any(OWN_SETTING_WARNINGS.search(str(w.message)) for w in caught)


def test_the_deprecated_gradient_checkpointing_given_over_the_new_name_is_applied_and_both_are_named(caplog):
    # transformers keeps the new name and drops the old one silently; our defaults use the new name, so the old one
    # given over them is the user's word (e.g. `--gradient_checkpointing true` on the tiny demo).
    with caplog.at_level(logging.WARNING, logger="rft_trl.trainers.rft_config"):
        args = RFTConfig(output_dir="x", use_cpu=True, activation_checkpointing=False, gradient_checkpointing=True)
    assert args.activation_checkpointing is True and args.gradient_checkpointing is True
    assert "gradient_checkpointing=True applies" in caplog.text
    caplog.clear()
    # Control: agreeing names, or one name alone, say nothing.
    with caplog.at_level(logging.WARNING, logger="rft_trl.trainers.rft_config"):
        args = RFTConfig(output_dir="x", use_cpu=True, activation_checkpointing=False, gradient_checkpointing=False)
    assert args.activation_checkpointing is False and "applies" not in caplog.text
