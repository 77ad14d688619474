"""
The values [`RFTConfig`] accepts: each field's range and choices, the rollout's size from TRL's or our sizing
fields, and the cross-field checks, all run when the config is built so that a bad setting fails there, named, with
its fix. It changes when a field is added.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..core.advantages import ADVANTAGE_ESTIMATORS
from ..core.kl import KL_ESTIMATORS
from ..core.losses import IMPORTANCE_SAMPLING_LEVELS, LOSS_AGG_MODES
from .config_trl import ALIASES

if TYPE_CHECKING:
    from .rft_config import RFTConfig


@dataclass(frozen=True)
class Range:
    """
    The interval a config value must lie in; a bound of `None` is unbounded.

    Args:
        low (`float`, *optional*): the lowest allowed value.
        high (`float`, *optional*): the highest allowed value.
        low_open (`bool`, *optional*, defaults to `False`): whether `low` itself is excluded.
        high_open (`bool`, *optional*, defaults to `False`): whether `high` itself is excluded.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        # Written so that NaN, which compares False with everything, is outside every range.
        above = self.low is None or value > self.low or (not self.low_open and value == self.low)
        below = self.high is None or value < self.high or (not self.high_open and value == self.high)
        return above and below

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{self.low:g}, {self.high:g}{right}"


AT_LEAST_ONE = Range(1)
NON_NEGATIVE = Range(0.0)
POSITIVE = Range(0.0, low_open=True)
UNIT_INTERVAL = Range(0.0, 1.0)

# Every config value with a range, checked when the config is built (`None`, where a field allows it, is not checked).
# The ranges are TRL GRPOConfig's where it has the field (documented there or implied by how TRL uses the value; TRL
# itself checks few of them), so that no value TRL accepts is refused: beta=0 loads no reference model, top_k 0 (TRL,
# transformers) and -1 (vLLM) disable top-k, top_entropy_quantile 0 keeps only the highest-entropy token, and
# num_completions_to_print 0 prints none. `delta` (> 1) is checked with the other TRL options.
FIELD_RANGES: dict[str, Range] = {
    # Batch layout (TrainingArguments and TRL): a 0 here ends in a ZeroDivisionError or an empty rollout.
    "per_device_train_batch_size": AT_LEAST_ONE,
    "micro_train_batch_size": AT_LEAST_ONE,
    "per_device_eval_batch_size": AT_LEAST_ONE,
    "gradient_accumulation_steps": AT_LEAST_ONE,
    "steps_per_generation": AT_LEAST_ONE,
    "generation_batch_size": AT_LEAST_ONE,
    "rollout_batch_size": AT_LEAST_ONE,
    "micro_rollout_batch_size": AT_LEAST_ONE,
    "n_samples_per_prompt": AT_LEAST_ONE,
    "num_generations_eval": AT_LEAST_ONE,
    "prompt_max_len": AT_LEAST_ONE,
    "generate_max_len": AT_LEAST_ONE,
    "max_epochs": AT_LEAST_ONE,
    "pad_to_multiple_of": AT_LEAST_ONE,
    "log_prob_chunk_size": AT_LEAST_ONE,
    "buffer_limit": Range(0),
    "dynamic_sampling_max_rounds": Range(0),
    "max_staleness": Range(0),
    # Sampling
    "temperature": POSITIVE,
    "top_p": Range(0.0, 1.0, low_open=True),
    "top_k": Range(-1),
    "min_p": UNIT_INTERVAL,
    "repetition_penalty": POSITIVE,
    # Algorithm
    "learning_rate": NON_NEGATIVE,
    "critic_learning_rate": NON_NEGATIVE,
    "gamma": UNIT_INTERVAL,
    "lambd": UNIT_INTERVAL,
    # core.losses.policy_loss clips the ratio below at 1 - eps_clip, which must stay positive.
    "eps_clip": Range(0.0, 1.0, high_open=True),
    "eps_clip_high": NON_NEGATIVE,
    "dual_clip": Range(1.0, low_open=True),
    "value_clip": POSITIVE,
    "advantage_clip": POSITIVE,
    "advantage_std_eps": POSITIVE,
    "high_entropy_token_ratio": UNIT_INTERVAL,
    "off_policy_mask_threshold": NON_NEGATIVE,
    "sapo_temperature_neg": POSITIVE,
    "sapo_temperature_pos": POSITIVE,
    "vespo_k_pos": NON_NEGATIVE,
    "vespo_lambda_pos": NON_NEGATIVE,
    "vespo_k_neg": NON_NEGATIVE,
    "vespo_lambda_neg": NON_NEGATIVE,
    "entropy_coef": NON_NEGATIVE,
    "entropy_coef_min": NON_NEGATIVE,
    "entropy_coef_max": NON_NEGATIVE,
    "entropy_coef_delta": NON_NEGATIVE,
    "entropy_target": NON_NEGATIVE,
    # KL and reference
    "init_kl_coef": NON_NEGATIVE,
    "kl_target": POSITIVE,
    "kl_horizon": AT_LEAST_ONE,
    "ref_model_mixup_alpha": UNIT_INTERVAL,
    "ref_model_sync_steps": AT_LEAST_ONE,
    # Models
    "freezing_actor_steps": Range(-1),
    "ema_beta": UNIT_INTERVAL,
    "ptx_coef": NON_NEGATIVE,
    "aux_loss_coef": NON_NEGATIVE,
    "router_aux_loss_coef": NON_NEGATIVE,
    "max_tool_calling_iterations": NON_NEGATIVE,
    # Rewards, robustness, logging
    "max_reward_failure_rate": UNIT_INTERVAL,
    "max_skipped_fraction": UNIT_INTERVAL,
    "max_consecutive_nonfinite_steps": AT_LEAST_ONE,
    "num_completions_to_print": Range(0),
    # vLLM
    "vllm_gpu_memory_utilization": Range(0.0, 1.0, low_open=True),
    "vllm_max_model_length": AT_LEAST_ONE,
    "vllm_tensor_parallel_size": AT_LEAST_ONE,
    "vllm_server_port": Range(1, 65535),
    "vllm_server_timeout": POSITIVE,
    # Before clip_max: a given cap has already been copied into clip_max (its deprecated alias).
    "vllm_importance_sampling_cap": POSITIVE,
    "vllm_importance_sampling_clip_max": POSITIVE,
    "vllm_importance_sampling_clip_min": NON_NEGATIVE,
}
# What a value at or past a bound means, where the range alone would not say.
RANGE_HINTS = {
    "temperature": "for greedy decoding use do_sample=False in generation_kwargs",
    "top_k": "0 or -1 disables top-k",
    "freezing_actor_steps": "-1: the actor trains from the start",
    "entropy_coef": "a bonus for entropy",
    "dynamic_sampling_max_rounds": "0 removes the bound",
}


def check_ranges(args: RFTConfig) -> None:
    """
    Refuse out-of-range values (`FIELD_RANGES`) when the config is built, naming the setting (and the TRL alias
    the user may have used), the range and the value, rather than letting them fail later inside transformers or
    torch (a `per_device_train_batch_size` of 0 was a ZeroDivisionError).

    Args:
        args ([`RFTConfig`]): the config being built, from its `__post_init__`.
    """
    aliases = {ours: theirs for ours, theirs, _ in ALIASES}
    for name, allowed in FIELD_RANGES.items():
        value = getattr(args, name)
        if value is None or value in allowed:
            continue
        shown = f"{name} ({aliases[name]})" if name in aliases else name
        hint = f" ({RANGE_HINTS[name]})" if name in RANGE_HINTS else ""
        raise ValueError(f"{shown} must be {allowed}, got {value}{hint}.")
    if args.entropy_coef_min > args.entropy_coef_max:
        raise ValueError(
            f"entropy_coef_min={args.entropy_coef_min} is above entropy_coef_max={args.entropy_coef_max}."
        )


def resolve_rollout_size(args: RFTConfig) -> None:
    """
    Set `rollout_batch_size` (prompts per rollout per process) from the one sizing field given (ours,
    `steps_per_generation` or `generation_batch_size`), and check that each rollout ends on an optimizer step.

    Args:
        args ([`RFTConfig`]): the config being built, from its `__post_init__`; `rollout_batch_size` is set in place.
    """
    sizers = [
        name
        for name in ("rollout_batch_size", "steps_per_generation", "generation_batch_size")
        if getattr(args, name) is not None
    ]
    if len(sizers) > 1:
        raise ValueError(
            f"{' and '.join(sizers)} all size the rollout; set only one (rollout_batch_size prompts per process = "
            "per_device_train_batch_size * steps_per_generation / n_samples_per_prompt = generation_batch_size / "
            "(processes * n_samples_per_prompt))."
        )
    if args.generation_batch_size is not None:
        # TRL: completions per rollout over all processes; rft_trl sizes it per process.
        if args.generation_batch_size % (args.world_size * args.n_samples_per_prompt):
            raise ValueError(
                f"generation_batch_size={args.generation_batch_size} must be a multiple of processes "
                f"({args.world_size}) * n_samples_per_prompt ({args.n_samples_per_prompt})."
            )
        args.rollout_batch_size = args.generation_batch_size // (args.world_size * args.n_samples_per_prompt)
    if args.rollout_batch_size is None:
        # TRL: a generation batch is per_device_train_batch_size * steps_per_generation completions, with
        # steps_per_generation defaulting to gradient_accumulation_steps.
        steps = args.steps_per_generation or args.gradient_accumulation_steps
        completions = args.per_device_train_batch_size * steps
        if completions % args.n_samples_per_prompt:
            raise ValueError(
                f"per_device_train_batch_size * steps_per_generation = {completions} completions is not a "
                f"multiple of n_samples_per_prompt={args.n_samples_per_prompt}; set rollout_batch_size (prompts "
                f"per rollout) or make the product a multiple."
            )
        args.rollout_batch_size = completions // args.n_samples_per_prompt
    per_rollout = args.rollout_batch_size * args.n_samples_per_prompt * args.max_epochs
    per_step = args.micro_train_batch_size * args.gradient_accumulation_steps
    if per_rollout % per_step:
        raise ValueError(
            f"A rollout replays rollout_batch_size * n_samples_per_prompt * max_epochs = {per_rollout} sequences, "
            f"not a multiple of micro_train_batch_size * gradient_accumulation_steps = {per_step}: choose sizes "
            f"so that each rollout ends on an optimizer step."
        )


def check_values(args: RFTConfig) -> None:
    """
    Refuse a value outside its choices, and settings that contradict each other (a group estimator with one sample
    per prompt, a KL target without a KL coefficient, a replay buffer smaller than a rollout).

    Args:
        args ([`RFTConfig`]): the config being built, from its `__post_init__`.
    """
    choices = {
        "advantage_estimator": ADVANTAGE_ESTIMATORS,
        "loss_agg_mode": LOSS_AGG_MODES,
        "kl_estimator": KL_ESTIMATORS,
        "importance_sampling_level": IMPORTANCE_SAMPLING_LEVELS,
    }
    for name, allowed in choices.items():
        if getattr(args, name) not in allowed:
            raise ValueError(f"{name}={getattr(args, name)!r} is not one of {', '.join(allowed)}.")
    if args.advantage_estimator in ("group_norm", "dr_grpo", "rloo", "reinforce++-baseline"):
        if args.n_samples_per_prompt < 2:
            raise ValueError(
                f"advantage_estimator={args.advantage_estimator!r} compares samples of a group: set "
                f"n_samples_per_prompt >= 2 (got {args.n_samples_per_prompt})."
            )
    if args.dynamic_sampling and args.n_samples_per_prompt < 2:
        raise ValueError(
            "dynamic_sampling drops the prompt groups whose rewards are all equal, and a group of one sample always "
            f"is: set n_samples_per_prompt >= 2 (got {args.n_samples_per_prompt}) or dynamic_sampling=False."
        )
    check_async_rollouts(args)
    if args.multi_objective_aggregation not in ("sum_then_normalize", "normalize_then_sum"):
        raise ValueError(
            f"multi_objective_aggregation={args.multi_objective_aggregation!r} is not one of "
            "'sum_then_normalize', 'normalize_then_sum'."
        )
    if args.multi_objective_aggregation == "normalize_then_sum":
        if args.advantage_estimator not in ("group_norm", "dr_grpo") or args.reward_recipe is not None:
            raise ValueError(
                "multi_objective_aggregation='normalize_then_sum' computes GRPO advantages from each reward "
                "function's group-normalised scores: it needs advantage_estimator 'group_norm' (or scale_rewards) "
                f"and reward_weights, not advantage_estimator={args.advantage_estimator!r} or a reward_recipe."
            )
    if args.kl_target is not None and args.init_kl_coef <= 0:
        raise ValueError("kl_target needs init_kl_coef > 0 for the adaptive controller to scale.")
    rollout_samples = args.rollout_batch_size * args.n_samples_per_prompt
    if 0 < args.buffer_limit < rollout_samples:
        raise ValueError(
            f"buffer_limit={args.buffer_limit} would drop samples of the current rollout ({rollout_samples} "
            f"samples); set 0 (no limit) or at least {rollout_samples}."
        )


def check_async_rollouts(args: RFTConfig) -> None:
    """Refuse `async_rollouts` where the next rollout cannot be sampled during the update, or would lag its policy by
    more than `max_staleness`; and `max_staleness` set without `async_rollouts` (it would bound nothing)."""
    if not args.async_rollouts:
        if args.max_staleness != 1:
            raise ValueError(
                f"max_staleness={args.max_staleness} bounds the lag of rollouts generated ahead, which only "
                "async_rollouts=True does: set async_rollouts=True or leave max_staleness out."
            )
        return
    if not args.use_vllm:
        raise ValueError(
            "async_rollouts=True samples the next rollout while the policy trains, which transformers' generate "
            "cannot do (it samples with the very weights the update changes): set use_vllm=True (vllm_mode "
            "'colocate' or 'server'), or async_rollouts=False."
        )
    if args.vllm_enable_sleep_mode:
        raise ValueError(
            "async_rollouts=True keeps the vLLM engine sampling during the update, so it cannot sleep then: set "
            "vllm_enable_sleep_mode=False, or async_rollouts=False."
        )
    if args.vllm_mode == "colocate" and args.vllm_tensor_parallel_size > 1:
        raise ValueError(
            "async_rollouts=True with a tensor-parallel colocated engine is not supported: its processes gather "
            "their prompts with collective calls, which cannot run beside the update's. Use vllm_mode='server', "
            "vllm_tensor_parallel_size=1, or async_rollouts=False."
        )
    steps = args.micro_steps_per_rollout // args.gradient_accumulation_steps
    if 0 < args.max_staleness < steps:
        raise ValueError(
            f"async_rollouts=True: a rollout feeds {steps} optimizer steps, so one sampled ahead lags its policy by "
            f"{steps} steps, beyond max_staleness={args.max_staleness}. Set max_staleness >= {steps}, fewer "
            "optimizer steps per rollout (max_epochs, gradient_accumulation_steps), or max_staleness=0 (synchronous)."
        )
