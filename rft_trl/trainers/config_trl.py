"""
TRL `GRPOConfig`'s names on [`RFTConfig`]: the aliases of our fields, what `loss_type` and `scale_rewards` select, and
the GRPOConfig options refused (not implemented, or set without the option they act with). It changes when TRL's
config does; `docs/config_mapping.md` lists every name.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from ..core.importance_sampling import IMPORTANCE_SAMPLING_MODES

if TYPE_CHECKING:
    from .rft_config import RFTConfig

logger = logging.getLogger(__name__)

# TRL GRPOConfig `loss_type` -> our `loss_agg_mode`. TRL's "dapo" normalises by the active tokens of the whole
# accumulated batch and "bnpo" by those of the micro-batch; with our token-mean over a micro-batch both reduce to the
# same rule when micro-batches carry equal token counts, which is why both map to token-mean.
TRL_LOSS_TYPES = {
    "grpo": "seq-mean-token-mean",
    "bnpo": "token-mean",
    "dapo": "token-mean",
    "dr_grpo": "seq-mean-token-sum-norm",
    "luspo": "seq-mean-token-sum",
    "cispo": "token-mean",
    "sapo": "seq-mean-token-mean",
    "vespo": "token-mean",
}
# TRL loss types whose per-token objective is not the clipped ratio (`rft_trl.core.policy_loss`'s `surrogate`).
TRL_LOSS_SURROGATES = {"cispo": "cispo", "sapo": "sapo", "vespo": "vespo"}

# GRPOConfig options rft_trl does not implement: accepted at TRL's default only, refused otherwise with the reason.
UNSUPPORTED_TRL_OPTIONS: dict[str, str] = {
    "log_unique_prompts": "the completions table logs every prompt",
    "log_completions_hub_repo": "completions are not uploaded to the Hub",
    "use_transformers_continuous_batching": "transformers' continuous batching is not supported",
    "transformers_continuous_batching_config": "transformers' continuous batching is not supported",
    "use_transformers_paged": "transformers' continuous batching is not supported",
}

# GRPOConfig options that act only together with another setting (as in TRL): set alone they would do nothing.
DEPENDENT_TRL_OPTIONS: dict[str, str] = {
    **dict.fromkeys(
        [
            "vllm_mode",
            "vllm_model_impl",
            "vllm_enable_sleep_mode",
            "vllm_structured_outputs_regex",
            "vllm_server_base_url",
            "vllm_server_host",
            "vllm_server_port",
            "vllm_server_timeout",
            "vllm_group_port",
            "vllm_gpu_memory_utilization",
            "vllm_max_model_length",
            "vllm_tensor_parallel_size",
            "vllm_importance_sampling_correction",
            "vllm_importance_sampling_mode",
            "vllm_importance_sampling_clip_max",
            "vllm_importance_sampling_clip_min",
            "vllm_importance_sampling_cap",
            "vllm_weight_sync_dir",
            "vllm_enforce_eager",
        ],
        "use_vllm=True",
    ),
    **dict.fromkeys(["sapo_temperature_neg", "sapo_temperature_pos"], "loss_type='sapo'"),
    **dict.fromkeys(["vespo_k_pos", "vespo_lambda_pos", "vespo_k_neg", "vespo_lambda_neg"], "loss_type='vespo'"),
    **dict.fromkeys(["ref_model_mixup_alpha", "ref_model_sync_steps"], "sync_ref_model=True"),
    **dict.fromkeys(
        ["entropy_coef_min", "entropy_coef_max", "entropy_coef_delta", "entropy_target"], "use_adaptive_entropy=True"
    ),
}

# TRL GRPOConfig `scale_rewards` -> our `advantage_estimator`.
TRL_SCALE_REWARDS = {"group": "group_norm", "batch": "group_norm", "none": "dr_grpo"}

# (our field, TRL GRPOConfig field, default). Both start as None so that a value given under either name is seen,
# and a contradictory pair is rejected; the default applies when neither is given.
ALIASES: tuple[tuple[str, str, Any], ...] = (
    ("n_samples_per_prompt", "num_generations", 8),
    ("generate_max_len", "max_completion_length", 512),
    ("prompt_max_len", "max_prompt_length", 512),
    ("init_kl_coef", "beta", 0.0),
    ("eps_clip", "epsilon", 0.2),
    ("eps_clip_high", "epsilon_high", None),
    ("max_epochs", "num_iterations", 1),
    ("high_entropy_token_ratio", "top_entropy_quantile", None),
)


def resolve_trl_names(args: RFTConfig) -> None:
    """
    Give each of our fields and its TRL alias one value (a contradictory pair is refused, the default applies when
    neither is given), and set `loss_agg_mode` and `advantage_estimator` from TRL's `loss_type` and `scale_rewards`.

    Args:
        args ([`RFTConfig`]): the config being built, from its `__post_init__`; its fields are set in place.
    """
    for ours, theirs, default in ALIASES:
        mine, other = getattr(args, ours), getattr(args, theirs)
        if mine is not None and other is not None and mine != other:
            raise ValueError(f"{ours}={mine} contradicts its TRL alias {theirs}={other}; set only one.")
        value = default if mine is None and other is None else (mine if mine is not None else other)
        setattr(args, ours, value)
        setattr(args, theirs, value)

    if args.loss_type is not None:
        if args.loss_type not in TRL_LOSS_TYPES:
            raise ValueError(f"loss_type={args.loss_type!r} is not supported; use one of {list(TRL_LOSS_TYPES)}.")
        mapped = TRL_LOSS_TYPES[args.loss_type]
        if args.loss_agg_mode is not None and args.loss_agg_mode != mapped:
            raise ValueError(
                f"loss_type={args.loss_type!r} means loss_agg_mode={mapped!r}, which contradicts "
                f"loss_agg_mode={args.loss_agg_mode!r}; set only one."
            )
        args.loss_agg_mode = mapped
    args.loss_agg_mode = args.loss_agg_mode or "token-mean"
    if args.policy_surrogate != "clip":
        extras = {"delta": args.delta, "dual_clip": args.dual_clip, "use_cpg_loss": args.use_cpg_loss or None}
        given = [f"{name}={value!r}" for name, value in extras.items() if value is not None]
        if given:
            raise ValueError(
                f"loss_type={args.loss_type!r} has its own clipping; {', '.join(given)} only apply to the clipped "
                "ratio objective (loss_type 'grpo', 'bnpo', 'dapo', 'dr_grpo' or 'luspo')."
            )
    token_summed = args.loss_agg_mode in ("token-mean", "seq-mean-token-sum-norm")
    if args.importance_sampling_level == "sequence" and args.loss_type == "vespo":
        logger.warning(
            "VESPO computes sequence-level importance weights itself: leave importance_sampling_level='token'."
        )
    elif args.importance_sampling_level == "sequence" and token_summed:
        shown = f"loss_type={args.loss_type!r}" if args.loss_type else f"loss_agg_mode={args.loss_agg_mode!r}"
        logger.warning(
            "With importance_sampling_level='sequence', %s sums per-token contributions, which effectively "
            "weights each sequence by its completion length instead of optimizing the per-sequence objective. "
            "For the GSPO paper's setup, use loss_type='grpo' (loss_agg_mode='seq-mean-token-mean').",
            shown,
        )

    if args.scale_rewards is not None:
        scale = {True: "group", False: "none", "true": "group", "false": "none"}.get(
            args.scale_rewards, args.scale_rewards
        )
        if scale not in TRL_SCALE_REWARDS:
            raise ValueError(
                f"scale_rewards={args.scale_rewards!r} is not supported; use 'group', 'batch' or 'none' (or pick "
                "an advantage_estimator directly)."
            )
        mapped = TRL_SCALE_REWARDS[scale]
        if args.advantage_estimator is not None and args.advantage_estimator != mapped:
            raise ValueError(
                f"scale_rewards={args.scale_rewards!r} means advantage_estimator={mapped!r}, which contradicts "
                f"advantage_estimator={args.advantage_estimator!r}; set only one."
            )
        args.advantage_estimator = mapped
        args.scale_rewards = scale
    args.advantage_estimator = args.advantage_estimator or "group_norm"


def check_trl_options(args: RFTConfig) -> None:
    """
    Refuse the GRPOConfig options rft_trl does not implement, and those that would act on nothing.

    Args:
        args ([`RFTConfig`]): the config being built; a `pad_to_multiple_of` given as a string is parsed in place.
    """
    defaults = {f.name: f.default for f in dataclasses.fields(args)}
    if isinstance(args.pad_to_multiple_of, str):
        if args.pad_to_multiple_of.lower() not in ("auto", "none", "null"):
            args.pad_to_multiple_of = int(args.pad_to_multiple_of)  # from the command line
        else:
            # TRL's "auto" pads only on AWS Neuron, which rft_trl does not run on.
            args.pad_to_multiple_of = None
    if args.pad_to_multiple_of is not None and args.packing_samples:
        raise ValueError("pad_to_multiple_of pads padded batches; packing_samples=True has no padding to size.")
    for name, reason in UNSUPPORTED_TRL_OPTIONS.items():
        if getattr(args, name) != defaults[name]:
            raise ValueError(f"{name}={getattr(args, name)!r} is not supported by PPOTrainerVL: {reason}.")
    enabled = {
        "use_vllm=True": args.use_vllm,
        "loss_type='sapo'": args.loss_type == "sapo",
        "loss_type='vespo'": args.loss_type == "vespo",
        "sync_ref_model=True": args.sync_ref_model,
        "use_adaptive_entropy=True": args.use_adaptive_entropy,
    }
    for name, needs in DEPENDENT_TRL_OPTIONS.items():
        if getattr(args, name) != defaults[name] and not enabled[needs]:
            raise ValueError(f"{name}={getattr(args, name)!r} only acts with {needs}, which is not set.")
    if args.model_init_kwargs is not None and not isinstance(args.model_init_kwargs, dict):
        raise ValueError(f"model_init_kwargs must be a dict, got {type(args.model_init_kwargs).__name__}.")
    if args.delta is not None and args.delta <= 1.0:
        raise ValueError(f"delta={args.delta} caps the importance ratio from above: it must be > 1.")
    if args.use_vllm:
        check_vllm_options(args, defaults)


def check_vllm_options(args: RFTConfig, defaults: dict) -> None:
    """
    TRL's vLLM options: the modes and values rft_trl implements, each other one refused with its reason.

    Args:
        args ([`RFTConfig`]): the config being built, with `use_vllm=True`; the deprecated
            `vllm_importance_sampling_cap` is copied into `vllm_importance_sampling_clip_max`.
        defaults (`dict`): every field's default, by name.
    """
    if args.vllm_mode not in ("colocate", "server"):
        raise ValueError(f"vllm_mode must be 'colocate' or 'server', got {args.vllm_mode!r}.")
    if args.vllm_importance_sampling_cap is not None:
        logger.warning(
            "vllm_importance_sampling_cap is deprecated (as in TRL): use vllm_importance_sampling_clip_max."
        )
        args.vllm_importance_sampling_clip_max = args.vllm_importance_sampling_cap
    if args.vllm_importance_sampling_mode not in IMPORTANCE_SAMPLING_MODES:
        raise ValueError(
            f"vllm_importance_sampling_mode must be one of {IMPORTANCE_SAMPLING_MODES}, got "
            f"{args.vllm_importance_sampling_mode!r}."
        )
    low, high = args.vllm_importance_sampling_clip_min, args.vllm_importance_sampling_clip_max
    if low is not None and high is not None and low > high:
        raise ValueError(f"vllm_importance_sampling_clip_min={low} is above vllm_importance_sampling_clip_max={high}.")
    if args.vllm_importance_sampling_correction and args.loss_type == "vespo":
        raise ValueError(
            "loss_type='vespo' with vllm_importance_sampling_correction is not implemented (TRL folds the ratio "
            "into VESPO's sequence weight); set vllm_importance_sampling_correction=False."
        )
    if args.vllm_group_port != defaults["vllm_group_port"]:
        raise ValueError(
            "vllm_group_port is TRL's NCCL weight-transfer port; rft_trl sends weights to the server through "
            "vllm_weight_sync_dir (a file the server loads), so there is no such group to place."
        )
    if args.cache_implementation is not None:
        raise ValueError("cache_implementation is an option of transformers' generate, which use_vllm=True replaces.")
    if args.vllm_model_impl not in ("vllm", "transformers"):
        raise ValueError(f"vllm_model_impl must be 'vllm' or 'transformers', got {args.vllm_model_impl!r}.")
    if args.vllm_mode == "colocate":
        for name in ("vllm_server_base_url", "vllm_server_host", "vllm_server_port", "vllm_weight_sync_dir"):
            if getattr(args, name) != defaults[name]:
                raise ValueError(f"{name} is a server-mode option; vllm_mode is 'colocate'.")
    else:
        launch_options = {
            "vllm_gpu_memory_utilization": "--gpu-memory-utilization",
            "vllm_tensor_parallel_size": "--tensor-parallel-size",
            "vllm_max_model_length": "--max-model-len",
            "vllm_model_impl": "--model-impl",
            "vllm_enable_sleep_mode": "--enable-sleep-mode",
            "vllm_enforce_eager": "--enforce-eager",
        }
        for name, flag in launch_options.items():
            if getattr(args, name) != defaults[name]:
                raise ValueError(
                    f"{name} configures a colocated engine; with vllm_mode='server' pass `{flag}` to `vllm serve`."
                )
