"""`RFTConfig`: every hyperparameter of PPO/GRPO-style training, as a `transformers.TrainingArguments` subclass."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

from ..core.advantages import ADVANTAGE_ESTIMATORS
from ..core.losses import LOSS_AGG_MODES
from .config_checks import FIELD_RANGES, check_ranges, check_values, resolve_rollout_size
from .config_trl import (
    ALIASES,
    DEPENDENT_TRL_OPTIONS,
    TRL_LOSS_SURROGATES,
    TRL_LOSS_TYPES,
    UNSUPPORTED_TRL_OPTIONS,
    check_trl_options,
    resolve_trl_names,
)

# The tables live beside their checks (`config_checks`, `config_trl`); these names stay importable from here.
__all__ = [
    "ALIASES",
    "DEPENDENT_TRL_OPTIONS",
    "FIELD_RANGES",
    "TRL_LOSS_TYPES",
    "UNSUPPORTED_TRL_OPTIONS",
    "RFTConfig",
]

logger = logging.getLogger(__name__)


@dataclass
class RFTConfig(TrainingArguments):
    r"""
    Configuration of [`PPOTrainerVL`]: the fields of `transformers.TrainingArguments` plus the RL hyperparameters.

    Names follow LightRFT's `PPOTrainerVL` where `TrainingArguments` has no equivalent; TRL `GRPOConfig` names are
    accepted as aliases for the shared concepts (`num_generations`, `max_completion_length`, `beta`, `epsilon`,
    `epsilon_high`, `num_iterations`, `loss_type`, `scale_rewards`, `top_entropy_quantile`, `max_prompt_length`), so a
    TRL script runs by changing the class name. Giving both names with different values is an error. The full mapping
    is in `docs/config_mapping.md`.

    Batch sizes, per process (a prompt's samples never leave the process that generated them, so group statistics
    are local and exact):

    - `rollout_batch_size` prompts are drawn per rollout, each sampled `n_samples_per_prompt` times.
    - generation runs in chunks of `micro_rollout_batch_size` sequences.
    - the rollout is replayed for `max_epochs` PPO epochs in micro-batches of `micro_train_batch_size` sequences
      (`per_device_train_batch_size`, counted in completions as in TRL); the optimizer steps every
      `gradient_accumulation_steps` micro-batches.

    Parameters:
        > Rollout

        n_samples_per_prompt (`int`, *optional*, defaults to `8`):
            Completions sampled per prompt (a GRPO group). Alias: `num_generations`.
        rollout_batch_size (`int`, *optional*):
            Prompts per rollout per process. Defaults to `per_device_train_batch_size * gradient_accumulation_steps //
            n_samples_per_prompt`, TRL's generation batch.
        steps_per_generation (`int`, *optional*):
            TRL's way to size the rollout: `per_device_train_batch_size * steps_per_generation` completions, i.e.
            `rollout_batch_size = per_device_train_batch_size * steps_per_generation // n_samples_per_prompt`.
        shuffle_dataset (`bool`, *optional*, defaults to `True`):
            Draw the prompts in a seeded random order (reshuffled each epoch); `False` keeps the dataset's order.
        mask_truncated_completions (`bool`, *optional*, defaults to `False`):
            Exclude completions that hit `generate_max_len` without an EOS from the loss (as TRL), so a cut-off
            answer is neither rewarded nor punished.
        dynamic_sampling (`bool`, *optional*, defaults to `False`):
            DAPO's dynamic sampling (https://arxiv.org/abs/2503.14476; verl's `filter_groups` on the sequence reward):
            drop the prompt groups whose rewards are all equal (no GRPO signal) and generate new prompts until the
            rollout holds `rollout_batch_size` groups with spread rewards on every process (see
            [`~rft_trl.trainers.dynamic_sampling`]). Needs `n_samples_per_prompt >= 2`.
        dynamic_sampling_max_rounds (`int`, *optional*, defaults to `10`):
            With `dynamic_sampling`: the most generation rounds per rollout, the first included (verl's
            `max_num_gen_batches`); a rollout still short after them is filled with tied groups (zero advantage,
            counted in `rollout/dynamic_sampling/tied_fillers`) where verl raises. 0: no bound.
        async_rollouts (`bool`, *optional*, defaults to `False`):
            Generate the next rollout while the current one trains (one-step off-policy, as NeMo-RL's and TRL's async
            GRPO): the vLLM engine samples it in a background thread from the weights the current rollout starts
            from, and the update weighs it by `vllm_importance_sampling_correction` against the policy lag. Needs
            `use_vllm` without `vllm_enable_sleep_mode` (see [`~rft_trl.trainers.async_rollouts`]).
        max_staleness (`int`, *optional*, defaults to `1`):
            With `async_rollouts`: the most optimizer steps a rollout's samples may lag behind the policy they train
            (TRL's async GRPO name). A rollout sampled ahead lags by the optimizer steps of one rollout, so it must
            be at least that; 0 generates every rollout in turn, exactly the synchronous run.
        micro_rollout_batch_size (`int`, *optional*, defaults to `8`):
            Sequences generated (and scored by the reference and critic) per forward.
        micro_train_batch_size (`int`, *optional*):
            Sequences per training micro-batch; the same as `per_device_train_batch_size`, which it overrides.
        prompt_max_len (`int`, *optional*, defaults to `512`):
            Longest prompt in tokens after media expansion; longer prompts are rejected. Alias: `max_prompt_length`.
        generate_max_len (`int`, *optional*, defaults to `512`):
            Longest completion in tokens. Alias: `max_completion_length` (TRL's default).
        temperature, top_p, top_k, repetition_penalty (*optional*):
            Sampling settings, as in `transformers.GenerationConfig`; `top_k` 0 (TRL's default) or -1 (vLLM's) disables
            top-k.
        generation_kwargs (`dict`, *optional*):
            Further keyword arguments for `generate`; they override the settings above.
        suppress_media_tokens (`bool`, *optional*, defaults to `True`):
            Forbid media placeholder tokens in completions: a completion that contains one breaks the next forward.
            The actions' log-probs (rollout, reference, update) are then those of the softmax without these tokens
            (and without `generation_kwargs["suppress_tokens"]`), the distribution the completions were sampled
            from, so that the vLLM importance ratio stays 1 on an unchanged policy.

        > Algorithm

        advantage_estimator (`str`, *optional*, defaults to `"group_norm"`):
            One of `"gae"` (needs a critic), `"group_norm"` (GRPO), `"dr_grpo"`, `"rloo"`, `"reinforce++"`,
            `"reinforce++-baseline"`. TRL's `scale_rewards="group"|"none"` selects `group_norm`/`dr_grpo`.
        gamma (`float`, *optional*, defaults to `1.0`), lambd (`float`, *optional*, defaults to `0.95`):
            Discount and GAE lambda.
        max_epochs (`int`, *optional*, defaults to `1`):
            PPO epochs over each rollout. Alias: `num_iterations`.
        eps_clip (`float`, *optional*, defaults to `0.2`), eps_clip_high (`float`, *optional*):
            Lower and upper clip range of the ratio; `eps_clip_high` > `eps_clip` is DAPO's clip-higher.
            Aliases: `epsilon`, `epsilon_high`.
        dual_clip (`float`, *optional*):
            Dual-clip constant c > 1 bounding the loss for negative advantages (https://arxiv.org/abs/1912.09729).
        value_clip (`float`, *optional*, defaults to `0.2`):
            Clip range of the critic's value loss; `None` disables clipping.
        importance_sampling_level (`str`, *optional*, defaults to `"token"`):
            `"sequence"` uses GSPO's sequence-level ratio (https://arxiv.org/abs/2507.18071).
        use_cpg_loss (`bool`, *optional*, defaults to `False`):
            Clipped policy gradient loss instead of PPO's clipped surrogate.
        loss_agg_mode (`str`, *optional*, defaults to `"token-mean"`):
            How token losses are averaged; TRL's `loss_type` maps onto it.
        high_entropy_token_ratio (`float`, *optional*):
            Train only on this fraction of highest-entropy tokens (https://arxiv.org/abs/2506.01939), in [0, 1]; 0
            keeps only the highest-entropy token (TRL's).
            Alias: `top_entropy_quantile`.
        advantage_clip (`float`, *optional*):
            Clamp advantages to [-advantage_clip, advantage_clip] before the loss; `None` leaves them as they are.
        advantage_std_eps (`float`, *optional*, defaults to `1e-4`):
            Added to every standard deviation advantages are divided by: the group's (or batch's) reward standard
            deviation of `group_norm` (TRL's `std + 1e-4`), TRL's `normalize_then_sum`, and the whitening of the
            `reinforce++` estimators.

        > KL and reference

        init_kl_coef (`float`, *optional*, defaults to `0.0`):
            KL coefficient; 0 loads no reference model. Alias: `beta`.
        kl_target (`float`, *optional*), kl_horizon (`int`, *optional*, defaults to `10000`):
            With a target, the adaptive controller of Ziegler et al. 2019 adjusts the coefficient.
        kl_estimator (`str`, *optional*, defaults to `"k3"`):
            `"k1"`, `"k2"` or `"k3"` (http://joschu.net/blog/kl-approx.html).
        use_kl_loss (`bool`, *optional*, defaults to `True`):
            KL as a loss term (GRPO) rather than a per-token reward penalty (PPO).

        > Models

        critic_learning_rate (`float`, *optional*):
            Learning rate of the critic's parameter group; defaults to `learning_rate`.
        freezing_actor_steps (`int`, *optional*, defaults to `-1`):
            Train only the critic for this many optimizer steps (value warm-up).
        ema_beta (`float`, *optional*, defaults to `0.992`), enable_ema (`bool`, *optional*, defaults to `False`):
            Keep an exponential moving average of the actor's trainable weights.
        ptx_coef (`float`, *optional*, defaults to `0.0`):
            Weight of the supervised (pretraining) loss on `ptx_dataset` rows.
        aux_loss_coef (`float`, *optional*, defaults to `0.0`):
            Weight of the MoE router auxiliary loss when the model returns one.
        packing_samples (`bool`, *optional*, defaults to `False`):
            Pack sequences without padding in every forward of a step (rollout scoring and update).
        freeze_encoder (`bool`, *optional*, defaults to `False`):
            In full fine-tuning, keep the vision/audio tower and its projector frozen and train the language model
            only; by default the whole model trains, as in TRL (LoRA adapts the language model only either way).
        fused_log_probs (`bool`, *optional*, defaults to `True`):
            Compute the action log-probs and entropies of every pass from the last hidden states, in chunks of
            `log_prob_chunk_size` tokens, so that the `[tokens, vocabulary]` logits never exist (see
            [`Actor`]; where that would not be exact, e.g. LoRA on the head or ZeRO-3, the logits are used).
        log_prob_chunk_size (`int`, *optional*, defaults to `256`):
            Tokens whose logits exist at once on the fused path.
        cache_encoder_outputs (`bool`, *optional*, defaults to `True`):
            Run the policy's image/video encoder once per prompt's media in a rollout's no-grad passes (generation and
            the rollout policy's log-probs), handing the model the cached outputs (transformers' `mm_encoder_outputs`)
            instead of encoding the pixels once per sample and pass (see
            [`~rft_trl.models.media_encodings.MediaEncodings`]; where it is not verified exact, or under ZeRO-3, the
            pixels are encoded as before, the reason logged). The update and the reference encode for themselves.
        verify_model (`bool`, *optional*, defaults to `True`):
            Before training, check on a tiny synthetic batch built with the run's processor that the policy's
            log-probs through rft_trl (padded; packed with `packing_samples`; with cached encoder outputs) equal the
            model's own forward on each sample alone, and refuse the model, naming the check and the measured
            difference, where they do not (see [`~rft_trl.models.verification`]). Logged once, with its cost.

        > Rewards

        reward_weights (`list[float]`, *optional*):
            One weight per reward function (TRL); defaults to 1 each.
        remote_rm_url (`str`, *optional*):
            URL of a remote reward model, added to the reward functions.
        reward_fn_label_map (`dict`, *optional*), reward_recipe (`dict`, *optional*):
            Per-label reward recipes (see `rft_trl.rewards`).
        max_reward_failure_rate (`float`, *optional*, defaults to `0.5`):
            Abort when more than this fraction of a rollout's samples fail to get a reward.

        > Robustness and checkpoints

        max_skipped_fraction (`float`, *optional*, defaults to `0.5`):
            Abort when more than this fraction of a rollout's prompts are rejected as bad input.
        max_consecutive_nonfinite_steps (`int`, *optional*, defaults to `3`):
            Abort after this many optimizer steps in a row skipped for a NaN/Inf loss or gradient.
        buffer_limit (`int`, *optional*, defaults to `0`), buffer_cpu_offload (`bool`, *optional*, defaults to `True`):
            Replay buffer size limit (0: none) and whether to keep it on the CPU.
        disable_ds_ckpt (`bool`, *optional*, defaults to `False`):
            Checkpoints hold the weights only (HF format), without optimizer, scheduler, RNG and DeepSpeed state:
            LightRFT's name for `save_only_model=True`. Such checkpoints cannot resume a run. (Checkpoints always
            hold HF-format weights, so LightRFT's `save_hf_ckpt` has no field.)
        log_completions (`bool`, *optional*, defaults to `False`):
            Log a table of sample completions at each logging step.
    """

    _VALID_DICT_FIELDS = [
        *TrainingArguments._VALID_DICT_FIELDS,
        "generation_kwargs",
        "model_init_kwargs",
        "chat_template_kwargs",
        "transformers_continuous_batching_config",
        "reward_fn_label_map",
        "reward_recipe",
    ]

    # Overridden TrainingArguments defaults, TRL GRPOConfig's: RL needs the raw columns; log every 10 steps,
    # checkpoint activations, and train in bf16 unless fp16 is set.
    logging_steps: float = field(default=10, metadata={"help": "Log every this many optimizer steps."})
    activation_checkpointing: bool | None = field(
        default=None,
        metadata={
            "help": "Recompute activations in backward to save memory; unset: True (TRL's default) unless the "
            "deprecated gradient_checkpointing is given.",
            "nargs": "?",
            "const": True,
        },
    )
    bf16: bool | None = field(
        default=None, metadata={"help": "Train in bfloat16; unset: True unless fp16 is set (TRL's default)."}
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must stay False: reward functions receive the dataset's extra columns."}
    )
    learning_rate: float = field(default=1e-6, metadata={"help": "Actor learning rate."})
    logging_nan_inf_filter: bool = field(
        default=False,
        metadata={"help": "Off: non-finite steps are skipped by the trainer's guard, and the filter syncs per batch."},
    )
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Integrations to report to."})

    # Rollout
    n_samples_per_prompt: int | None = field(default=None, metadata={"help": "Completions per prompt (default 8)."})
    num_generations: int | None = field(default=None, metadata={"help": "TRL alias of n_samples_per_prompt."})
    rollout_batch_size: int | None = field(default=None, metadata={"help": "Prompts per rollout per process."})
    steps_per_generation: int | None = field(
        default=None, metadata={"help": "TRL: micro-batches per generation; sizes the rollout instead."}
    )
    shuffle_dataset: bool = field(default=True, metadata={"help": "Draw prompts in a seeded random order."})
    mask_truncated_completions: bool = field(
        default=False, metadata={"help": "Leave completions cut at generate_max_len out of the loss."}
    )
    dynamic_sampling: bool = field(
        default=False,
        metadata={
            "help": "DAPO: drop prompt groups whose rewards are all equal and refill the rollout with new prompts."
        },
    )
    dynamic_sampling_max_rounds: int = field(
        default=10,
        metadata={"help": "Most generation rounds per dynamic-sampling rollout (the first included); 0: no bound."},
    )
    async_rollouts: bool = field(
        default=False,
        metadata={"help": "Generate the next rollout (vLLM, in a background thread) while the current one trains."},
    )
    max_staleness: int = field(
        default=1,
        metadata={"help": "async_rollouts: the most optimizer steps a sample may lag its policy; 0: synchronous."},
    )
    micro_rollout_batch_size: int = field(default=8, metadata={"help": "Sequences generated per forward."})
    micro_train_batch_size: int | None = field(
        default=None, metadata={"help": "Sequences per training micro-batch (= per_device_train_batch_size)."}
    )
    prompt_max_len: int | None = field(default=None, metadata={"help": "Longest prompt in tokens (default 512)."})
    max_prompt_length: int | None = field(default=None, metadata={"help": "TRL alias of prompt_max_len."})
    generate_max_len: int | None = field(default=None, metadata={"help": "Longest completion (default 64)."})
    max_completion_length: int | None = field(default=None, metadata={"help": "TRL alias of generate_max_len."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling threshold."})
    top_k: int = field(default=0, metadata={"help": "Top-k sampling; 0 disables it."})
    repetition_penalty: float = field(default=1.0, metadata={"help": "Repetition penalty."})
    generation_kwargs: dict | str | None = field(default=None, metadata={"help": "Extra generate() kwargs."})
    suppress_media_tokens: bool = field(default=True, metadata={"help": "Forbid media placeholders in completions."})

    # Algorithm
    advantage_estimator: str | None = field(
        default=None, metadata={"help": f"One of {', '.join(ADVANTAGE_ESTIMATORS)} (default group_norm)."}
    )
    scale_rewards: str | None = field(
        default=None, metadata={"help": "TRL: 'group' (group_norm) or 'none' (dr_grpo)."}
    )
    gamma: float = field(default=1.0, metadata={"help": "Discount factor."})
    lambd: float = field(default=0.95, metadata={"help": "GAE lambda."})
    max_epochs: int | None = field(default=None, metadata={"help": "PPO epochs per rollout (default 1)."})
    num_iterations: int | None = field(default=None, metadata={"help": "TRL alias of max_epochs."})
    eps_clip: float | None = field(default=None, metadata={"help": "Lower clip range (default 0.2)."})
    epsilon: float | None = field(default=None, metadata={"help": "TRL alias of eps_clip."})
    eps_clip_high: float | None = field(default=None, metadata={"help": "Upper clip range (clip-higher)."})
    epsilon_high: float | None = field(default=None, metadata={"help": "TRL alias of eps_clip_high."})
    dual_clip: float | None = field(default=None, metadata={"help": "Dual-clip constant (> 1)."})
    value_clip: float | None = field(default=0.2, metadata={"help": "Value loss clip range."})
    importance_sampling_level: str = field(default="token", metadata={"help": "'token' or 'sequence' (GSPO)."})
    use_cpg_loss: bool = field(default=False, metadata={"help": "Use the clipped policy gradient loss."})
    loss_agg_mode: str | None = field(
        default=None, metadata={"help": f"One of {', '.join(LOSS_AGG_MODES)} (default token-mean)."}
    )
    loss_type: str | None = field(default=None, metadata={"help": f"TRL: one of {', '.join(TRL_LOSS_TYPES)}."})
    high_entropy_token_ratio: float | None = field(default=None, metadata={"help": "Top-entropy token fraction."})
    top_entropy_quantile: float | None = field(default=None, metadata={"help": "TRL alias of the above."})
    advantage_clip: float | None = field(default=None, metadata={"help": "Clamp advantages to +-this."})
    advantage_std_eps: float = field(default=1e-4, metadata={"help": "Added to the std advantages divide by."})

    # KL and reference
    init_kl_coef: float | None = field(default=None, metadata={"help": "KL coefficient (default 0)."})
    beta: float | None = field(default=None, metadata={"help": "TRL alias of init_kl_coef."})
    kl_target: float | None = field(default=None, metadata={"help": "Target KL of the adaptive controller."})
    kl_horizon: int = field(default=10000, metadata={"help": "Horizon of the adaptive KL controller."})
    kl_estimator: str = field(default="k3", metadata={"help": "k1, k2 or k3."})
    use_kl_loss: bool = field(default=True, metadata={"help": "KL as loss (True) or reward penalty (False)."})

    # Models
    critic_learning_rate: float | None = field(default=None, metadata={"help": "Critic learning rate."})
    freezing_actor_steps: int = field(default=-1, metadata={"help": "Critic-only steps at the start."})
    ema_beta: float = field(default=0.992, metadata={"help": "EMA decay."})
    enable_ema: bool = field(default=False, metadata={"help": "Keep an EMA of the actor."})
    ptx_coef: float = field(default=0.0, metadata={"help": "Weight of the supervised ptx loss."})
    aux_loss_coef: float = field(default=0.0, metadata={"help": "Weight of the MoE auxiliary loss."})
    packing_samples: bool = field(default=False, metadata={"help": "Pack sequences without padding."})
    freeze_encoder: bool = field(
        default=False, metadata={"help": "Freeze the vision/audio tower in full fine-tuning (TRL trains it)."}
    )
    fused_log_probs: bool = field(
        default=True, metadata={"help": "Log-probs from hidden states in chunks, never the full logits."}
    )
    log_prob_chunk_size: int = field(default=256, metadata={"help": "Tokens per chunk of the fused log-probs."})
    cache_encoder_outputs: bool = field(
        default=True, metadata={"help": "Encode each prompt's images/videos once per rollout's no-grad passes."}
    )
    verify_model: bool = field(
        default=True, metadata={"help": "Check the model's log-probs against its own forward before training."}
    )

    # Rewards
    reward_weights: list[float] | None = field(default=None, metadata={"help": "Weights of the reward functions."})
    remote_rm_url: str | None = field(default=None, metadata={"help": "URL of a remote reward model."})
    reward_fn_label_map: dict | str | None = field(default=None, metadata={"help": "Label value -> recipe label."})
    reward_recipe: dict | str | None = field(default=None, metadata={"help": "Recipe label -> weighted rewards."})
    max_reward_failure_rate: float = field(default=0.5, metadata={"help": "Abort above this reward failure rate."})

    # Robustness and checkpoints
    max_skipped_fraction: float = field(default=0.5, metadata={"help": "Abort above this bad-prompt fraction."})
    max_consecutive_nonfinite_steps: int = field(default=3, metadata={"help": "Abort after this many NaN steps."})
    buffer_limit: int = field(default=0, metadata={"help": "Replay buffer size limit; 0 means none."})
    buffer_cpu_offload: bool = field(default=True, metadata={"help": "Keep the replay buffer on the CPU."})
    disable_ds_ckpt: bool = field(default=False, metadata={"help": "Skip optimizer/DeepSpeed state in checkpoints."})
    log_completions: bool = field(
        default=False,
        metadata={
            "help": "At each training log: the last rollout's completions as a console table and a wandb table."
        },
    )

    # TRL GRPOConfig options (trl 1.16 names and defaults). Those rft_trl does not implement are accepted at their
    # default only (UNSUPPORTED_TRL_OPTIONS); those that only act together with another option are refused alone
    # (DEPENDENT_TRL_OPTIONS). docs/config_mapping.md lists every one.
    model_init_kwargs: dict | str | None = field(
        default=None, metadata={"help": "from_pretrained kwargs when the model is given as a path."}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow models and processors with custom code."})
    router_aux_loss_coef: float | None = field(
        default=None, metadata={"help": "TRL: weight of the MoE load-balancing loss (default: the model config's)."}
    )
    disable_dropout: bool = field(default=False, metadata={"help": "Set every dropout of policy and reference to 0."})
    cast_lm_head_to_fp32: bool = field(
        default=False,
        metadata={"help": "Compute the logits in float32: the LM head (policy and reference) cast to fp32 (TRL's)."},
    )
    num_generations_eval: int | None = field(
        default=None, metadata={"help": "Sampled completions per eval prompt (default: one greedy completion)."}
    )
    ds3_gather_for_generation: bool = field(
        default=True, metadata={"help": "ZeRO-3: gather the policy's weights once per rollout for generation."}
    )
    pad_to_multiple_of: int | str | None = field(
        default="auto",
        metadata={
            "help": "Pad the update's batches (prompt + completion width) to a multiple of this; 'auto'/None: no "
            "padding beyond the longest sequence (TRL's 'auto' pads only on AWS Neuron)."
        },
    )
    generation_batch_size: int | None = field(
        default=None, metadata={"help": "TRL: completions per rollout over all processes; sizes the rollout."}
    )
    min_p: float | None = field(default=None, metadata={"help": "Min-p sampling threshold."})
    chat_template_kwargs: dict | None = field(
        default=None, metadata={"help": "Extra keyword arguments of apply_chat_template (e.g. enable_thinking)."}
    )
    cache_implementation: str | None = field(default=None, metadata={"help": "generate()'s cache implementation."})
    use_vllm: bool = field(
        default=False,
        metadata={"help": "Generate rollouts with vLLM (vllm_mode colocate or server), not transformers' generate."},
    )
    vllm_mode: str = field(
        default="colocate",
        metadata={"help": "'colocate': a vLLM engine in the training process; 'server': a running `vllm serve`."},
    )
    vllm_model_impl: str = field(
        default="vllm", metadata={"help": "vLLM's model implementation (vllm, transformers)."}
    )
    vllm_enable_sleep_mode: bool = field(
        default=False, metadata={"help": "Colocate: put the engine to sleep (free its memory) during the update."}
    )
    vllm_structured_outputs_regex: str | None = field(
        default=None, metadata={"help": "Constrain vLLM's completions to this regular expression."}
    )
    vllm_server_base_url: str | None = field(
        default=None, metadata={"help": "Server: its URL; replaces vllm_server_host and vllm_server_port."}
    )
    vllm_server_host: str = field(default="0.0.0.0", metadata={"help": "Server: its host."})
    vllm_server_port: int = field(default=8000, metadata={"help": "Server: its port."})
    vllm_server_timeout: float = field(
        default=240.0, metadata={"help": "Server: seconds to wait for it to answer at start."}
    )
    vllm_group_port: int = field(
        default=51216, metadata={"help": "TRL's NCCL weight-transfer port; not used (weights go through a file)."}
    )
    vllm_weight_sync_dir: str | None = field(
        default=None,
        metadata={
            "help": "Server: the directory the trainer writes weights to for the server to load (a path both see); "
            "a fresh temporary directory by default."
        },
    )
    vllm_gpu_memory_utilization: float = field(
        default=0.3, metadata={"help": "Colocate: the share of accelerator memory vLLM takes."}
    )
    vllm_max_model_length: int | None = field(
        default=None, metadata={"help": "Colocate: vLLM's context length (prompt + completion)."}
    )
    vllm_tensor_parallel_size: int = field(
        default=1,
        metadata={
            "help": "Colocate: vLLM's tensor parallelism; each group of this many processes shares one engine, "
            "sharded across them, and generates their prompts together. Must divide the number of processes."
        },
    )
    vllm_enforce_eager: bool = field(
        default=False,
        metadata={
            "help": "Colocate: run vLLM eagerly (no compilation or CUDA graphs): a faster start, slower decoding."
        },
    )
    vllm_importance_sampling_correction: bool = field(
        default=True,
        metadata={"help": "Weigh the loss by truncated importance sampling of vLLM's samples (mismatch)."},
    )
    vllm_importance_sampling_mode: str = field(
        default="sequence_mask",
        metadata={"help": "token_truncate, token_mask, sequence_truncate or sequence_mask (TRL's semantics)."},
    )
    vllm_importance_sampling_clip_max: float | None = field(
        default=3.0, metadata={"help": "Upper bound C_max of the importance sampling ratio."}
    )
    vllm_importance_sampling_clip_min: float | None = field(
        default=None, metadata={"help": "Lower bound C_min of the importance sampling ratio."}
    )
    vllm_importance_sampling_cap: float | None = field(
        default=None, metadata={"help": "Deprecated TRL alias of vllm_importance_sampling_clip_max."}
    )
    delta: float | None = field(
        default=None, metadata={"help": "Two-sided clipping: cap the unclipped ratio at delta (> 1 + epsilon)."}
    )
    sapo_temperature_neg: float = field(default=1.05, metadata={"help": "SAPO loss only (loss_type='sapo')."})
    sapo_temperature_pos: float = field(default=1.0, metadata={"help": "SAPO loss only (loss_type='sapo')."})
    vespo_k_pos: float = field(default=2.0, metadata={"help": "VESPO loss only (loss_type='vespo')."})
    vespo_lambda_pos: float = field(default=3.0, metadata={"help": "VESPO loss only (loss_type='vespo')."})
    vespo_k_neg: float = field(default=3.0, metadata={"help": "VESPO loss only (loss_type='vespo')."})
    vespo_lambda_neg: float = field(default=2.0, metadata={"help": "VESPO loss only (loss_type='vespo')."})
    multi_objective_aggregation: str = field(
        default="sum_then_normalize",
        metadata={
            "help": "How several reward functions make one advantage (TRL): 'sum_then_normalize' (weighted sum, then "
            "the estimator) or 'normalize_then_sum' (GDPO: each function normalised per group, weighted sum, then "
            "normalised over the batch; group estimators only)."
        },
    )
    sync_ref_model: bool = field(
        default=False,
        metadata={
            "help": "TR-DPO: every ref_model_sync_steps optimizer steps, reference = alpha * policy + (1 - alpha) * "
            "reference (TRL's SyncRefModelCallback). Needs beta > 0 and a full (not PEFT) policy."
        },
    )
    ref_model_mixup_alpha: float = field(default=0.6, metadata={"help": "With sync_ref_model: the alpha above."})
    ref_model_sync_steps: int = field(default=512, metadata={"help": "With sync_ref_model: steps between syncs."})
    entropy_coef: float = field(default=0.0, metadata={"help": "Entropy bonus: loss - entropy_coef * mean entropy."})
    use_adaptive_entropy: bool = field(
        default=False,
        metadata={
            "help": "Adapt entropy_coef after each optimizer step: + entropy_coef_delta when the mean token entropy "
            "was <= entropy_target, - entropy_coef_delta otherwise (within entropy_coef_min/max); the bonus acts "
            "only while the entropy is <= entropy_target (TRL's)."
        },
    )
    entropy_coef_min: float = field(default=0.0, metadata={"help": "With use_adaptive_entropy: the lower bound."})
    entropy_coef_max: float = field(default=1.0, metadata={"help": "With use_adaptive_entropy: the upper bound."})
    entropy_coef_delta: float = field(default=0.005, metadata={"help": "With use_adaptive_entropy: the step."})
    entropy_target: float = field(default=0.2, metadata={"help": "With use_adaptive_entropy: the target entropy."})
    max_tool_calling_iterations: int | None = field(
        default=None, metadata={"help": "With tools: tool-calling turns per completion at most (None: no limit)."}
    )
    off_policy_mask_threshold: float | None = field(
        default=None,
        metadata={"help": "Drop negative-advantage sequences whose mean log-ratio to the sampler exceeds this."},
    )
    use_bias_correction_kl: bool = field(
        default=True, metadata={"help": "Multiply the KL loss by the importance ratio (unbiased reverse-KL gradient)."}
    )
    log_multimodal: bool = field(default=True, metadata={"help": "Add the samples' images to the completions table."})
    num_completions_to_print: int | None = field(
        default=None,
        metadata={"help": "With log_completions: how many of the last rollout's completions the console table shows."},
    )
    log_unique_prompts: bool = field(default=False, metadata={"help": "Not supported."})
    log_completions_hub_repo: str | None = field(default=None, metadata={"help": "Not supported."})
    use_transformers_continuous_batching: bool = field(default=False, metadata={"help": "Not supported."})
    transformers_continuous_batching_config: dict | None = field(default=None, metadata={"help": "Not supported."})
    use_transformers_paged: bool = field(default=False, metadata={"help": "Not supported (deprecated in TRL)."})

    def __post_init__(self):
        resolve_trl_names(self)
        check_trl_options(self)
        check_ranges(self)
        if self.micro_train_batch_size is None:
            self.micro_train_batch_size = self.per_device_train_batch_size
        elif self.per_device_train_batch_size not in (8, self.micro_train_batch_size):
            # 8 is TrainingArguments' default: a differing value there was set on purpose.
            raise ValueError(
                f"micro_train_batch_size={self.micro_train_batch_size} contradicts per_device_train_batch_size="
                f"{self.per_device_train_batch_size}; they name the same thing, set only one."
            )
        self.per_device_train_batch_size = self.micro_train_batch_size
        if self.disable_ds_ckpt:
            self.save_only_model = True
        self._adapt_to_a_cpu_launch()
        if self.bf16 is None:
            self.bf16 = not self.fp16  # TRL's default
        both = (self.activation_checkpointing, self.gradient_checkpointing)
        if None not in both and both[0] != both[1]:
            # transformers would keep the new name and drop the deprecated one without a word. A default of ours
            # (the tiny demo's, or tiny_config's) is given under the new name, so a deprecated name given over it is
            # the user's word (`--gradient_checkpointing true` on the demo): it wins, and both are named.
            logger.warning(
                "activation_checkpointing=%s and the deprecated gradient_checkpointing=%s were both given: "
                "gradient_checkpointing=%s applies. Give only activation_checkpointing.",
                *both,
                both[1],
            )
            self.activation_checkpointing = self.gradient_checkpointing
        if self.activation_checkpointing is None and self.gradient_checkpointing is None:
            # TRL's default, given under transformers' new name: TRL's own `gradient_checkpointing=True` makes
            # transformers warn (a FutureWarning) on every run. A deprecated `gradient_checkpointing` the user gives
            # still applies, with transformers' warning.
            self.activation_checkpointing = True
        if not torch.accelerator.is_available():
            # Pinned host memory only speeds copies to an accelerator: without one, torch ignores it with a warning on
            # every DataLoader. transformers turns it off for use_cpu; a CPU-only machine is the same case.
            self.dataloader_pin_memory = False
        super().__post_init__()
        if self.accelerator_config.dispatch_batches is None:
            # Batches are raw prompt rows, which Accelerate cannot broadcast: every process reads its own share (the
            # default for map-style sets, and what a streaming set needs).
            self.accelerator_config.dispatch_batches = False
        if self.remove_unused_columns:
            raise ValueError("remove_unused_columns must be False: reward functions read the dataset's columns.")
        resolve_rollout_size(self)
        check_values(self)

    def vllm_server_url(self) -> str:
        """The vLLM server's URL (`vllm_server_base_url`, else built from host and port)."""
        if self.vllm_server_base_url is not None:
            return self.vllm_server_base_url
        return f"http://{self.vllm_server_host}:{self.vllm_server_port}"

    def _adapt_to_a_cpu_launch(self) -> None:
        """
        Make a multi-process launch on a machine without an accelerator run as one job, as launched, or refuse one
        that cannot (FSDP).

        Without this, `accelerate launch` of the shipped CPU configs starts processes that each train alone (plain
        DDP needs `use_cpu` to join the processes with gloo), or DeepSpeed runs two ranks while Accelerate counts
        one (its process group must be gloo), failing minutes later on DeepSpeed's batch-size check.
        """
        if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and not torch.accelerator.is_available():
            # Measured with accelerate 1.16 and torch 2.14 on 2 gloo processes: torch's FSDP2 shards, steps and
            # generates there, but Accelerate selects FSDP only over accelerator devices, and on the CPU sets
            # DistributedType.NO: every process would train alone, unsharded and never synchronised.
            raise ValueError(
                "FSDP needs an accelerator (GPU): on the CPU Accelerate does not enable FSDP and each process would "
                "train alone, unsharded. On the CPU launch with accelerate_configs/deepspeed_zero3_cpu.yaml (sharded) "
                "or accelerate_configs/cpu_multi_process.yaml (DDP)."
            )
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size < 2 or torch.accelerator.is_available():
            return
        if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
            if self.use_cpu:
                raise ValueError(
                    "DeepSpeed on the CPU needs use_cpu=False: with use_cpu Accelerate never selects DeepSpeed and "
                    "would silently train with plain DDP instead."
                )
            if self.ddp_backend is None:
                logger.warning("%d DeepSpeed processes without an accelerator: joining them with gloo.", world_size)
                self.ddp_backend = "gloo"
        elif not self.use_cpu:
            logger.warning("%d processes without an accelerator: training on the CPU with gloo (use_cpu).", world_size)
            self.use_cpu = True

    def __getstate__(self) -> dict:
        # The Trainer pickles its arguments (training_args.bin, uploaded by push_to_hub): never with a token in them.
        state = dict(self.__dict__)
        for name in state:
            if name.endswith("_token") and state[name] is not None:
                state[name] = "<REDACTED>"
        return state

    @property
    def micro_steps_per_rollout(self) -> int:
        """Training micro-batches replayed from one rollout: epochs x sequences / micro-batch size."""
        return self.rollout_batch_size * self.n_samples_per_prompt * self.max_epochs // self.micro_train_batch_size

    @property
    def policy_surrogate(self) -> str:
        """The per-token policy objective `loss_type` selects: `"clip"` (PPO's), `"cispo"`, `"sapo"` or `"vespo"`."""
        return TRL_LOSS_SURROGATES.get(self.loss_type, "clip")

    def model_kwargs(self, from_path: bool = True) -> dict:
        """
        How every model the trainer builds is loaded: the policy, the critic, a reloaded reference and the reward
        models ([`Actor`] / [`Critic`] keyword arguments; the vLLM engine takes the policy's dtype and this
        `trust_remote_code`). The same dtype, attention implementation (`model_init_kwargs`) and remote-code
        permission for all of them.

        Args:
            from_path (`bool`, *optional*, defaults to `True`):
                Whether the model is loaded from a path. A model derived from one already built (the critic from the
                policy) keeps what that one was loaded with, so `model_init_kwargs` is left out.
        """
        kwargs = {"bf16": self.bf16, "trust_remote_code": self.trust_remote_code}
        if from_path:
            kwargs["model_init_kwargs"] = self.model_init_kwargs
        return kwargs

    def log_prob_kwargs(self) -> dict:
        """How every actor of the run (policy and reference) computes log-probs: [`Actor`]'s keyword arguments."""
        return {"fused_log_probs": self.fused_log_probs, "log_prob_chunk_size": self.log_prob_chunk_size}

    def sampling_kwargs(self) -> dict:
        """Keyword arguments for `generate`: the sampling fields, then `generation_kwargs` on top."""
        kwargs = {
            "do_sample": True,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k if self.top_k > 0 else None,
            "repetition_penalty": self.repetition_penalty,
            "max_new_tokens": self.generate_max_len,
        }
        if self.min_p is not None:
            kwargs["min_p"] = self.min_p
        if self.cache_implementation is not None:
            kwargs["cache_implementation"] = self.cache_implementation
        return {**kwargs, **(self.generation_kwargs or {})}
