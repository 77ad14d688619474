"""RFTConfig: TRL aliases, contradiction errors, derived sizes and every checked field."""

import pytest
from transformers import HfArgumentParser

from rft_trl import RFTConfig
from rft_trl.trainers.rft_config import ALIASES, TRL_LOSS_TYPES


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
        ({"eps_clip_high": 0.1}, "eps_clip_high=0.1 must be >= eps_clip=0.2"),
        ({"dual_clip": 1.0}, "dual_clip=1.0 must be > 1"),
        ({"high_entropy_token_ratio": 0.0}, r"must be in \(0, 1\]"),
        ({"kl_target": 0.1}, "kl_target needs init_kl_coef > 0"),
        ({"max_reward_failure_rate": 1.5}, r"must be in \[0, 1\]"),
        ({"max_consecutive_nonfinite_steps": 0}, "must be >= 1"),
        ({"buffer_limit": 3}, "buffer_limit=3 would drop samples of the current rollout"),
        ({"ptx_coef": -1.0}, "must be >= 0"),
        ({"remove_unused_columns": True}, "remove_unused_columns must be False"),
        # Ranges, checked when the config is built and named by the alias the user may have used.
        ({"num_generations": 0}, r"n_samples_per_prompt \(num_generations\) must be >= 1, got 0"),
        ({"max_completion_length": 0}, r"generate_max_len \(max_completion_length\) must be >= 1, got 0"),
        ({"learning_rate": -1e-5}, "learning_rate must be >= 0.0, got -1e-05"),
        ({"temperature": 0.0}, r"temperature must be > 0.0, got 0.0 \(for greedy decoding use do_sample=False"),
        ({"beta": -1.0}, r"init_kl_coef \(beta\) must be >= 0.0, got -1.0"),
        ({"epsilon": -0.1}, r"eps_clip \(epsilon\) must be >= 0.0"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\], got 0.0"),
        ({"top_k": -1}, "top_k must be >= 0"),
        ({"lambd": 1.5}, r"gamma and lambd must be in \[0, 1\]"),
        ({"max_prompt_length": 0}, r"prompt_max_len \(max_prompt_length\) must be >= 1"),
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
    with caplog.at_level("WARNING", logger="rft_trl.trainers.rft_config"):
        config(importance_sampling_level="sequence", loss_type=loss_type)
    warned = "weights each sequence by its completion length" in caplog.text
    assert warned == (loss_type != "grpo")
