"""`PPOTrainerVL`: PPO, GRPO and kin for text, image, video and audio policies, on `transformers.Trainer`.

The Trainer owns the loop: optimizer and scheduler, gradient accumulation, Accelerate (DDP, DeepSpeed ZeRO),
checkpoint rotation, `report_to` integrations, progress bars and `push_to_hub`. This class only overrides hooks:

- the train dataloader yields one rollout's prompt rows, repeated once per training micro-batch of that rollout
  (the rows are plain dicts: repeating them costs nothing, and media are processed once per rollout);
- `_prepare_inputs` generates and scores a rollout when a new one starts, and otherwise hands out the next
  micro-batch of the current rollout (`max_epochs` shuffled passes over its samples);
- `compute_loss` is the actor's policy loss (+ KL, MoE aux and ptx terms) and the critic's value loss;
- `log` adds the rollout and training metrics under `rollout/`, `train/` and `data/`.

LightRFT's method names map onto this as: `fit` -> `train`, `ppo_train` -> the micro-batches of one rollout
(`_prepare_inputs` + `training_step`), `training_step_actor` / `training_step_critic` -> the two halves of
`compute_loss`, `save_logs_and_checkpoints` -> the Trainer's own logging and saving, `evaluate` -> `evaluate`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import torch
from datasets import Dataset, IterableDataset
from peft import PeftModel
from torch import nn
from torch.utils.data import DataLoader, Sampler
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..data.multimodal import probe_processor
from ..data.rows import ReplacementRows
from ..models.actor import Actor
from ..models.utils import check_supported
from ..rollout import Environments
from .async_rollouts import AsyncRollouts, build_async_rollouts, close_async_rollouts
from .builders import build_actor, build_critic, load_processing_class
from .checkpointing import (
    check_staged_save,
    kill_point,
    load_checkpoint_weights,
    point_to_best_checkpoint,
    rotate_checkpoints,
    save_policy,
    staged_checkpoint,
)
from .completions import CompletionsLog
from .ema import ActorEMA
from .evaluation import evaluate_rollouts
from .experience_maker import ExperienceMaker
from .fsdp import check_fsdp
from .guards import GuardedOptimizer, NonFiniteGuard, guard_optimizer_and_scheduler, redact_token_arguments
from .metrics import MetricRecorder, gather_rollout_metrics, merge_rollout_metrics
from .model_card import write_model_card
from .objective import (
    RouterAuxLoss,
    actor_objective,
    critic_objective,
    global_high_entropy_mask,
    off_policy_sequence_mask,
    padded_fields,
)
from .policy_and_value import PolicyAndValue, actor_and_critic_groups, micro_batch_forward
from .progress import use_readable_console
from .replay_buffer import NaiveReplayBuffer, plan_micro_batches, top_up
from .rft_config import RFTConfig
from .run_state import gather_run_state, prepare_resume, save_run_state
from .sampling import PromptRows, RolloutSampler, eval_rows, is_stream, training_rows
from .setup import (
    build_collator,
    build_controllers,
    build_multi_turn,
    build_reference,
    build_reward_scorer,
    build_rollout_engine,
    check_deepspeed_saving,
    check_packing_attention,
    check_rollout_func,
    check_streams,
    environment_rows,
    place_reward_models,
    resolve_aux_loss_coef,
    sync_ref_model_callback,
    verify_policy,
)
from .sft import PtxBatches, sft_loss
from .trainer_hooks import check_trainer_hooks, unwrapped_for_generation

logger = logging.getLogger(__name__)


class PPOTrainerVL(Trainer):
    """
    Reinforcement fine-tuning trainer for any modality: GRPO-style group estimators or PPO with a critic (GAE).

    Drop-in for TRL's `GRPOTrainer`: `PPOTrainerVL(model, reward_funcs, args, train_dataset, eval_dataset,
    processing_class, peft_config, callbacks)` with an [`RFTConfig`] (which takes `GRPOConfig`'s names).

    Args:
        model (`str`, `PreTrainedModel` or [`Actor`]):
            The policy: a checkpoint path, a transformers model or an actor. Its processor decides the modality.
        reward_funcs (`Callable`, `str` or `list` of them, *optional*):
            Reward functions with TRL's contract `f(prompts, completions, **columns) -> list[float | None]`,
            reward-model wrappers with that `__call__`, `http(s)://` URLs of remote reward models, or (as in TRL)
            sequence-classification reward models: a model id or path, or the loaded model, scored on the texts
            with their `reward_processing_classes` ([`SequenceClassificationReward`]).
        args ([`RFTConfig`], *optional*):
            Configuration; defaults to `RFTConfig("outputs")`.
        train_dataset, eval_dataset (`datasets.Dataset`, *optional*):
            Prompt rows: `prompt`, media columns, and extra columns for the reward functions.
        processing_class (`ProcessorMixin` or `PreTrainedTokenizerBase`, *optional*):
            The processor (vision/audio) or tokenizer (text); loaded from `model` when it is a path.
        peft_config (`peft.PeftConfig`, *optional*):
            LoRA config; the adapter-disabled base then serves as the reference, at no memory cost.
        callbacks (`list[TrainerCallback]`, *optional*):
            Extra Trainer callbacks.
        optimizers (`tuple`, *optional*):
            `(optimizer, scheduler)`, built by the Trainer when not given; the critic is a parameter group of the
            same optimizer with `critic_learning_rate`.
        critic (`nn.Module` or `str`, *optional*):
            The value model for `advantage_estimator="gae"`; built from the actor's weights when that estimator is
            chosen and none is given.
        reward_model (`Callable`, *optional*):
            A reward model with the TRL reward contract, appended to `reward_funcs` (seed argument).
        initial_model (`Actor` or `PreTrainedModel`, *optional*):
            The reference policy for the KL term; by default a frozen copy of the actor (or, with PEFT, the actor
            with its adapter disabled).
        ema_model (`Actor`, *optional*):
            Receives the moving average of the actor's weights when `enable_ema` is set.
        ptx_dataset (`datasets.Dataset`, *optional*):
            Rows with `prompt` and `completion` for the supervised ptx loss (`ptx_coef > 0`).
        reward_processing_classes (`PreTrainedTokenizerBase` or `list`, *optional*):
            TRL's: the tokenizers of the reward models in `reward_funcs` (one per function, `None` for the others; a
            single one for a single function); loaded from each model's path when not given.
        tools (`list[Callable]`, *optional*):
            TRL's: functions the model may call (sync or async; schemas from their type hints and docstrings), whose
            results join the completion as tool turns, never trained on (`rft_trl.rollout.tools`). Text models.
        environment_factory (`Callable` or `dict[str, Callable]`, *optional*):
            TRL's: one environment per sample (reset with its row; methods as tools; `get_reward` a reward source),
            a dict routing rows by their `environment` column (`rft_trl.rollout.environments`).
        rollout_func (`Callable`, *optional*):
            TRL's `rollout_func(prompts, trainer)`: the user's own generation, called with each sample's prompt.
    """

    _tag_names = ["rft_trl", "ppo", "grpo"]

    def __init__(
        self,
        model: str | PreTrainedModel | Actor,
        reward_funcs: Callable | str | list | None = None,
        args: RFTConfig | None = None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset: Dataset | None = None,
        processing_class: Any = None,
        peft_config: Any = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple = (None, None),
        critic: nn.Module | str | None = None,
        reward_model: Callable | None = None,
        initial_model: nn.Module | None = None,
        ema_model: nn.Module | None = None,
        ptx_dataset: Dataset | None = None,
        reward_processing_classes: PreTrainedTokenizerBase | list | None = None,
        tools: list[Callable] | None = None,
        environment_factory: Callable | dict[str, Callable] | None = None,
        rollout_func: Callable | None = None,
    ):
        args = args or RFTConfig("outputs")
        check_trainer_hooks()
        # A family rft_trl refuses is named before its processor is loaded or probed (Voxtral's fails the probe first).
        check_supported(model.hf_model if isinstance(model, Actor) else model, args.trust_remote_code)
        if processing_class is None:
            processing_class = load_processing_class(model, args)
        # What the processor takes and returns, decided once: the collator, the actor and the logs use it.
        layout = probe_processor(processing_class)
        actor = build_actor(model, layout, args, peft_config)
        actor.inputs.check_processor(layout, type(processing_class).__name__)
        environments = Environments(environment_factory, tools or []) if environment_factory is not None else None
        train_dataset = train_dataset if train_dataset is not None else environment_rows(environments, args)
        check_streams(train_dataset, eval_dataset, args)
        check_packing_attention(actor, args)
        critic = build_critic(critic, actor, args)
        self.reward_funcs, self.reward_processing_classes, self.reward_scorer = build_reward_scorer(
            reward_funcs, reward_model, args, reward_processing_classes, environments
        )
        self.media_kinds = layout.media_kinds
        # TRL's attributes: every tool, and (private, read by its tests) tools by environment and instance pools.
        self.tools = environments.all_tools if environments else list(tools or [])
        self._env_tools, self._environment_pool = environments.trl_views() if environments else (None, None)
        multi_turn = build_multi_turn(tools, environments, processing_class, layout.media_kinds, actor, args)
        self.collator = build_collator(processing_class, layout, args, multi_turn, environments)
        # Rows standing in for a training batch whose every row was skipped; set with the train dataloader.
        self._replacement_rows: ReplacementRows | None = None
        # Replacement passes begun before this run (restored from a checkpoint by `restore_run_state`).
        self._replacement_passes = 0
        self._async_rollouts: AsyncRollouts | None = None  # `async_rollouts`: set with the train dataloader
        self.kl_ctl, self.entropy_controller = build_controllers(args)
        if args.ptx_coef > 0 and ptx_dataset is None:
            raise ValueError("ptx_coef > 0 needs a ptx_dataset (rows with `prompt` and `completion`).")
        self.ptx_dataset = ptx_dataset
        self._ptx = PtxBatches(ptx_dataset, self.collator, args.micro_train_batch_size, args.seed)
        self._metrics = MetricRecorder()
        self._rollout_metrics: dict[str, float] = {}
        # The rollouts since the last training log, merged into it (TRL averages over the logging interval).
        self._interval_rollout_metrics: list[dict[str, float]] = []
        self._micro_batches: list = []
        self.replay_buffer = NaiveReplayBuffer(
            args.micro_train_batch_size,
            args.buffer_limit,
            args.buffer_cpu_offload,
            args.packing_samples,
            pad_to_multiple_of=args.pad_to_multiple_of,
        )
        self._step = 0
        self._nonfinite_guard = NonFiniteGuard(args.max_consecutive_nonfinite_steps)
        self._ema = ActorEMA(actor, args.ema_beta, ema_model, self._nonfinite_guard)
        self._peft = isinstance(actor.model, PeftModel)
        # Set when training starts (`train`): see `reference_fingerprint`.
        self._reference_fingerprint: dict[str, list[float]] | None = None
        # Where the Trainer writes while `_save_checkpoint` stages a checkpoint (see `_get_output_dir`).
        self._staging_dir: str | None = None

        super().__init__(
            # As in TRL: the policy the user gave (or built from the path, or wrapped by PEFT) is `trainer.model`.
            model=actor.model if critic is None else PolicyAndValue(actor, critic),
            args=args,
            data_collator=PromptRows,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        self.actor, self.critic = actor, critic
        self._completions = CompletionsLog(args, self.accelerator.is_main_process)
        use_readable_console(self)
        # The loss is a mean over the micro-batch's tokens or samples (`loss_type`), never a sum for the Trainer to
        # divide by a token count: the Trainer scales it for gradient accumulation (TRL sets the same).
        self.model_accepts_loss_kwargs = False
        # TRL's attribute: whether the policy returns a router load-balancing loss (mixture-of-experts models).
        self.aux_loss_enabled = bool(getattr(actor.hf_model.config.get_text_config(), "output_router_logits", False))
        self.reward_funcs = place_reward_models(
            self.reward_scorer, self.reward_funcs, self.accelerator, self.is_deepspeed_enabled
        )
        self._router_aux_loss = RouterAuxLoss(actor.hf_model, resolve_aux_loss_coef(actor.hf_model, args))
        check_deepspeed_saving(self.accelerator, self.is_deepspeed_enabled)
        check_fsdp(self.accelerator, args, critic)
        reference = build_reference(
            actor,
            initial_model,
            model if isinstance(model, str) else None,
            args,
            self.accelerator,
            self.is_deepspeed_enabled,
        )
        self._reference_fn, self._reference = reference.log_probs, reference.module
        self._reference_engine = reference.engine  # DeepSpeed's inference engine, if any, kept with the trainer
        # TRL's attribute: the reference policy's transformers model (None without a separate reference model).
        self.ref_model = self._reference.hf_model if isinstance(self._reference, Actor) else None
        if args.sync_ref_model:
            self.add_callback(sync_ref_model_callback(args, self._peft, critic, self.ref_model, self.accelerator))
        if args.enable_ema:
            self.add_callback(self._ema)
        self.rollout_engine = build_rollout_engine(actor, processing_class, self.collator, args, self.accelerator)
        self.experience_maker = ExperienceMaker(
            actor=actor,
            collator=self.collator,
            reward_scorer=self.reward_scorer,
            args=args,
            reference_log_probs=self._reference_fn,
            critic=critic,
            kl_coef=lambda: self.kl_ctl.value,
            device=self.accelerator.device,
            engine=self.rollout_engine,
        )
        # One optimizer step per rollout means every micro-batch sees the weights that generated it: the update's
        # own detached log-probs are the rollout policy's, and the extra forward is skipped.
        self.experience_maker.need_old_log_probs = args.micro_steps_per_rollout != args.gradient_accumulation_steps
        self.experience_maker.reduce_sum = lambda tensor: self.accelerator.reduce(tensor, reduction="sum")
        self.experience_maker.multi_turn, self.experience_maker.environments = multi_turn, environments
        if check_rollout_func(rollout_func, layout.media_kinds, self.tools, args.async_rollouts):
            self.experience_maker.rollout_func = lambda prompts: rollout_func(prompts, self)
        if args.verify_model:
            verify_policy(self.actor, self.collator, self.experience_maker.media_encodings is not None)

    @property
    def reward_func_names(self) -> list[str]:
        """The reward functions' names, as in the metrics (TRL's attribute)."""
        return list(self.reward_scorer.names)

    @property
    def reward_weights(self) -> torch.Tensor:
        """TRL's attribute: each reward function's weight."""
        return torch.tensor(self.reward_scorer.reward_weights)

    @property
    def environments(self) -> list | None:
        """TRL's attribute: the last rollout's environment instances, one per sample (`None` without environments)."""
        return self.experience_maker.last_environments

    # ------------------------------------------------------------------------------------------------ data

    def _get_train_sampler(self, train_dataset=None) -> Sampler:
        # Not super(): the parent's random sampler draws single rows; a rollout needs blocks of prompts, each block
        # served once per micro-step of the rollout (see RolloutSampler).
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return RolloutSampler(
            len(dataset),
            block_size=self.args.rollout_batch_size * self.accelerator.num_processes,
            repeats=self.args.micro_steps_per_rollout,
            shuffle=self.args.shuffle_dataset,
            seed=self.args.seed,
        )

    def get_train_dataloader(self):
        # Rows are read one by one with their dataset index, so that a bad media item costs its row (see
        # rft_trl.data.rows); a batch whose every row is bad is replaced with rows drawn from the same set.
        block = self.args.rollout_batch_size * self.accelerator.num_processes
        dataset, rows = training_rows(self.train_dataset, block, self.args.micro_steps_per_rollout)
        process, processes = self.accelerator.process_index, self.accelerator.num_processes
        self._replacement_rows = ReplacementRows(rows, self.args.seed, process, processes, self._replacement_passes)
        if self.experience_maker.dynamic_sampling is not None:  # refills rollouts from the same rows
            self.experience_maker.dynamic_sampling.draw_from(rows, self.args.seed, process, processes)
        if self.args.async_rollouts:
            self._async_rollouts = build_async_rollouts(self, rows, self._get_train_sampler(dataset))
        return self._get_dataloader(
            dataset=dataset,
            description="Training",
            batch_size=self.args.rollout_batch_size,
            sampler_fn=self._get_train_sampler,
            is_training=True,
        )

    # ------------------------------------------------------------------------------------------------ rollout

    def _gather_for_rollout(self) -> bool:
        """Whether a rollout gathers the whole ZeRO-3 model first (TRL's way, for HF generation; else DeepSpeed gathers
        layer by layer at every forward). vLLM samples with its own synced copy: the policy only scores, layerwise."""
        return self.args.ds3_gather_for_generation and self.rollout_engine is None

    def _sync_rollout_engine(self) -> None:
        """Send the policy's weights to the rollout engine when they changed since its last sync (vLLM)."""
        engine = self.rollout_engine
        if engine is None:
            return
        engine.wake_up()
        model = self.accelerator.unwrap_model(self.model_wrapped)
        if isinstance(model, PolicyAndValue):
            model = model.actor.model
        if engine.sync_weights(model, self.state.global_step):
            self.accelerator.wait_for_everyone()

    def _prepare_inputs(self, rows: PromptRows) -> Any:
        # Not super(): the parent only moves tensors to the device; here the batch is raw prompt rows, turned into a
        # rollout once per rollout and served one training micro-batch per call (already on the device).
        if self._step % self.args.micro_steps_per_rollout == 0 or not self._micro_batches:
            self._start_rollout(rows.rows)
        micro_batch = self._micro_batches[self._step % self.args.micro_steps_per_rollout]
        self._step += 1
        return micro_batch.to_device(self.accelerator.device)

    def _start_rollout(self, rows: list[dict]) -> None:
        model_was_training = self.model.training
        self.model.eval()
        self.experience_maker.trainer_state = self.state
        step, ahead = self.state.global_step, self._async_rollouts
        sampled, async_metrics = ahead.take(rows, step, int(self.state.epoch or 0)) if ahead else (None, {})
        self._sync_rollout_engine()  # (and see _gather_for_rollout for ZeRO-3)
        with unwrapped_for_generation(self.model_wrapped, self.accelerator, self._gather_for_rollout()):
            with self.collator.replacing_from(self._replacement_rows):
                generated, sampling_metrics = self.experience_maker.sample_rollout(rows, step, sampled)
            if ahead is not None:  # the next rollout samples from these weights while this one trains
                ahead.launch_next(step, self.state, self.args)
            rollout = self.experience_maker.score_rollout(generated, {**sampling_metrics, **async_metrics})
        if self.rollout_engine is not None and ahead is None:
            self.rollout_engine.sleep()
        if model_was_training:
            self.model.train()
        full = self.args.rollout_batch_size * self.args.n_samples_per_prompt
        self._micro_batches = plan_micro_batches(
            self.replay_buffer, top_up(rollout.items, full), self.args.max_epochs, self.args.seed + self._step
        )
        self._rollout_metrics = gather_rollout_metrics(rollout.metrics, self.accelerator.num_processes)
        # TRL's count of tokens seen (prompts and completions, all processes); saved with the TrainerState.
        self.state.num_input_tokens_seen += int(self._rollout_metrics["rollout/tokens"])
        self._interval_rollout_metrics.append(self._rollout_metrics)
        if rollout.kl is not None:
            # The KL and sample count over all processes, so that every process moves the coefficient alike.
            self.kl_ctl.update(self._rollout_metrics["rollout/kl"], int(self._rollout_metrics["rollout/num_samples"]))
        # The last rollout's completions, for the table `log_completions` logs (and TRL's `_logs` view of them).
        self._completions.record_rollout(rollout, self.state.global_step)

    @property
    def _logs(self) -> dict[str, Any]:
        """TRL's private view of the last rollout's completions (see [`CompletionsLog.trl_logs`])."""
        return self._completions.trl_logs()

    # ------------------------------------------------------------------------------------------------ update

    def create_optimizer(self, model=None):
        """One optimizer, with the critic's parameters in their own groups at `critic_learning_rate`."""
        if self.optimizer is not None or self.critic is None:
            return super().create_optimizer(model)
        # Not super() with a critic: the parent builds one group per decay setting at `learning_rate`, and the critic
        # needs its own `critic_learning_rate`; the parent's decay rule and optimizer class are reused.
        decay = set(self.get_decay_parameter_names(self.model))
        groups = actor_and_critic_groups(self.model, decay, self.args)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # Not super(): the parent's loss is the model's own (labels -> cross-entropy); this is the RL objective on an
        # experience micro-batch. The forward still runs through `model` (the DDP/DeepSpeed wrapper).
        experience = inputs
        train_actor = self.state.global_step >= self.args.freezing_actor_steps
        train_critic = self.critic is not None
        out = micro_batch_forward(
            model,
            self.actor,
            experience,
            self.args.temperature,
            with_actor=train_actor,
            with_values=train_critic,
            media_encodings=self.experience_maker.media_encodings if self.critic is None else None,
        )
        batch = padded_fields(experience, out)
        mask = batch["action_mask"] & (experience.info["valid"] > 0)[:, None]  # [B, A]
        loss = torch.zeros((), device=mask.device)
        if train_actor:
            loss = loss + self.training_step_actor(batch, mask, out)
        if train_critic:
            loss = loss + self.training_step_critic(batch, mask)
        return (loss, out) if return_outputs else loss

    def training_step_actor(self, batch: dict, mask: torch.Tensor, out: dict) -> torch.Tensor:
        """The actor's loss on one micro-batch: clipped policy loss + KL + MoE aux (+ ptx) - entropy bonus."""
        args = self.args
        entropy_mask = None
        if args.high_entropy_token_ratio is not None and args.high_entropy_token_ratio < 1.0:
            entropy_mask = self.get_high_entropy_mask(batch["new_entropy"], mask, 1 - args.high_entropy_token_ratio)
        controller = self.entropy_controller
        objective = actor_objective(
            batch,
            mask,
            args,
            kl_coef=self.kl_ctl.value,
            entropy_coef=controller.applied() if controller.enabled else None,
            entropy_mask=entropy_mask,
            ptx_loss=sft_loss(self.actor, self._ptx.next(self.accelerator.device)) if args.ptx_coef > 0 else None,
            aux_loss=self._router_aux_loss(out["output"]) if self._router_aux_loss.coef else None,
            aux_loss_coef=self._router_aux_loss.coef,
            off_policy_mask=self.get_off_policy_mask,
        )
        for name, (value, weight) in objective.metrics.items():
            self._metrics.record(name, value, weight)
        acting = objective.acting_mask
        if acting is not None and self.model.training:  # not during evaluation's loss
            controller.observe(torch.where(acting, batch["new_entropy"], 0.0).sum(), acting.sum())
            if self.accelerator.sync_gradients:
                controller.step(lambda t: self.accelerator.reduce(t, reduction="sum"))
        return objective.loss

    @property
    def entropy_coef(self) -> float:
        """The entropy-bonus coefficient now (TRL's attribute; it moves with `use_adaptive_entropy`)."""
        return self.entropy_controller.value

    def get_high_entropy_mask(self, entropies: torch.Tensor, mask: torch.Tensor, threshold: float) -> torch.Tensor:
        """TRL's top-entropy token selection, over all processes (see [`global_high_entropy_mask`])."""
        return global_high_entropy_mask(entropies, mask, threshold, self.accelerator)

    # TRL's static method of this name, with its signature (a subclass may override it).
    get_off_policy_mask = staticmethod(off_policy_sequence_mask)

    def training_step_critic(self, batch: dict, mask: torch.Tensor) -> torch.Tensor:
        """The critic's clipped value loss on one micro-batch."""
        objective = critic_objective(batch, mask, self.args.value_clip)
        for name, (value, weight) in objective.metrics.items():
            self._metrics.record(name, value, weight)
        return objective.loss

    # ------------------------------------------------------------------------------------------------ logging

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        training_step = "loss" in logs
        # As TRL: statistics not logged yet (the steps after the last logging step) join the next training log, the
        # end-of-training summary included; evaluation logs carry their own.
        pending = self._interval_rollout_metrics and not any(key.startswith("eval_") for key in logs)
        if training_step or pending:
            # Within one rollout's optimizer steps, each log repeats that rollout's statistics.
            rollouts = self._interval_rollout_metrics or [self._rollout_metrics]
            logs = {**logs, **self._metrics.aggregate(self.accelerator.device), **merge_rollout_metrics(rollouts)}
            self._interval_rollout_metrics = []
            logs["train/kl_coef"] = self.kl_ctl.value
            logs["entropy_coef"] = self.entropy_coef  # TRL's name
            logs["num_tokens"] = float(self.state.num_input_tokens_seen)
            logs["train/nonfinite_steps_skipped"] = float(self._nonfinite_guard.skipped_steps)
        super().log(logs, start_time)
        # After the metrics, so that trackers number the table after the step it shows.
        if (training_step or pending) and self.args.log_completions:
            self._completions.log_rollout(self.state.global_step)

    # ------------------------------------------------------------------------------------------------ evaluation

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """
        Greedy-decode one completion per eval prompt, score it, and log the rewards under TRL's names.

        Every eval row is counted once: with several processes, Accelerate pads the last batch with repeated rows,
        which are dropped by their dataset index before any statistic.

        Returns:
            `dict[str, float]`: with `prefix = metric_key_prefix` (`"eval"`, as `Trainer.evaluate`):
            `{prefix}_reward` and `{prefix}_reward_std` (the combined reward over the samples it is defined for),
            `{prefix}_rewards/<name>/mean` and `/std` per reward function, `{prefix}_completions/mean_length`,
            `{prefix}_reward_failures` and `{prefix}_num_samples`. `metric_for_best_model="reward"` reads
            `{prefix}_reward`.
        """
        # Not super(): the parent's loop runs `prediction_step` on tensors; evaluation here generates completions and
        # scores them. It keeps the parent's contract: the eval dataloader, `{prefix}_*` metrics, `log`, and the
        # `on_evaluate` callbacks.
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if isinstance(dataset, str):  # a name of a dict of eval sets, as Trainer.evaluate takes it
            dataset = self.eval_dataset[dataset]
        if isinstance(dataset, dict):
            metrics = {}
            for name, subset in dataset.items():
                metrics.update(self.evaluate(subset, ignore_keys, f"{metric_key_prefix}_{name}"))
            return metrics
        metrics, shown = evaluate_rollouts(self, dataset, metric_key_prefix)
        self.log(metrics)
        if self.args.log_completions:
            self._completions.log_eval(shown, self.state.global_step, metric_key_prefix)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def get_eval_dataloader(self, eval_dataset=None) -> DataLoader:
        """
        The eval rows, each with its dataset index (so that rows Accelerate repeats to even out the processes' last
        batches count once). A streaming eval set is read by one loader process, for this loader only (TRL's rule).
        """
        if isinstance(eval_dataset, str):
            eval_dataset = self.eval_dataset[eval_dataset]
        rows = eval_rows(eval_dataset if eval_dataset is not None else self.eval_dataset, self.args)
        workers = self.args.dataloader_num_workers
        self.args.dataloader_num_workers = 0 if is_stream(rows) else workers
        try:
            return super().get_eval_dataloader(rows)
        finally:
            self.args.dataloader_num_workers = workers

    # ------------------------------------------------------------------------------------------------ saving

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Write the actor in Hugging Face format (the LoRA adapter alone under PEFT), its processor, the critic."""
        # Not super(): the parent saves `trainer.model`'s state dict whole (with a critic, the PolicyAndValue wrapper
        # from_pretrained cannot load) and pickles the arguments; the actor and critic are written apart, the arguments
        # as JSON. Every process calls this; one writes (gathering a sharded state dict, if any, happened before).
        if not self.args.should_save:
            return
        output_dir = output_dir or self.args.output_dir
        save_policy(output_dir, self.actor, self.critic, self.processing_class, self.args, state_dict)
        if self._staging_dir is not None:
            kill_point("after_weights", self.state.global_step)

    def _save_checkpoint(self, model, trial) -> None:
        """Write `checkpoint-N` crash-safely: the Trainer's own save into a staging directory, committed atomically."""
        # super() writes `checkpoint-N` under `_get_output_dir`, which points into a staging directory for the
        # duration of the call (see `_get_output_dir`): a crash then leaves no partial `checkpoint-N` for a resume to
        # pick up. Pushing and rotating wait for the commit (`_push_from_checkpoint`, `rotate_checkpoints`).
        run_dir = self._get_output_dir(trial=trial)
        step = self.state.global_step
        final = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{step}")
        gather_run_state(self, final)
        # The best checkpoint is this one or an earlier one that rotation kept; the Trainer looks in the staging one.
        point_to_best_checkpoint(self.state, self.args.save_strategy, run_dir)
        with staged_checkpoint(final, self.args.should_save, self.accelerator.wait_for_everyone, step) as staging:
            self._staging_dir = os.path.dirname(staging)
            try:
                kill_point("before_weights", step)
                super()._save_checkpoint(model, trial)
            finally:
                self._staging_dir = None
            check_staged_save(self.state, staging, final, self.args.should_save)
            if self.args.should_save:
                save_run_state(self, staging)
        if self.args.push_to_hub:
            self._push_from_checkpoint(final)
        if self.args.should_save:
            rotate_checkpoints(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint, step)

    def _get_output_dir(self, trial) -> str:
        # The run directory, except while `_save_checkpoint` has the Trainer write a checkpoint: then the staging
        # directory, so that the Trainer's writers fill `tmp-checkpoint-N/checkpoint-N` (and its rotation, which
        # counts complete and incomplete checkpoints alike, only sees that one).
        return self._staging_dir if self._staging_dir is not None else super()._get_output_dir(trial)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        # Deferred while the checkpoint is staged: the Hub's copy must be the committed checkpoint, marker included.
        if self._staging_dir is None:
            super()._push_from_checkpoint(checkpoint_folder)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        # Not super() (but under FSDP, where Accelerate's loader fills the shards from the Trainer's own full state
        # dict): the parent loads one state dict into `trainer.model`; ours holds the actor in its family's format,
        # the adapter and critic apart, which `load_checkpoint_weights` maps back (`train` restored the RFT state).
        if self.is_fsdp_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        self._load_model_weights(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        # Overridden (private Trainer hook): the Trainer loads the checkpoint's file as a state dict of the module it
        # trains, but ours holds the actor in its family's saved format (and the critic and adapter apart), which
        # only our loader maps back. DeepSpeed and FSDP keep their own checkpoints: the Trainer's way is right there.
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._load_best_model()
        logger.info(
            "Loading the best model from %s (score %s).", self.state.best_model_checkpoint, self.state.best_metric
        )
        self._load_model_weights(self.state.best_model_checkpoint)

    def _load_model_weights(self, checkpoint: str) -> None:
        load_checkpoint_weights(checkpoint, self.actor.hf_model, self.critic, self.actor.model if self._peft else None)

    # ------------------------------------------------------------------------------------------------ robustness

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, ignore_keys_for_eval=None):
        """
        `Trainer.train`, resuming only from complete checkpoints: `resume_from_checkpoint=True` takes the newest
        complete one of `output_dir`, a path must be complete, saved at the end of a rollout with the optimizer state
        (see [`prepare_resume`]). A `--hub_token` on the command line is first replaced in `sys.argv` by a placeholder,
        so that integrations recording the command line do not store it ([`redact_token_arguments`]).
        """
        # Before the integrations start (wandb records the command line when its run begins).
        redact_token_arguments(self.args)
        checkpoint = prepare_resume(self, resume_from_checkpoint)
        try:
            return super().train(checkpoint, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval)
        finally:
            close_async_rollouts(self)

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        """The Trainer's scheduler; the optimizer is final by now, so both are wrapped to skip non-finite steps."""
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        if self.is_deepspeed_enabled:
            # DeepSpeed steps inside `backward`, before the gradient norm reaches `_get_grad_norm`: there DeepSpeed
            # itself skips a step whose global gradient norm is not finite (its ZeRO optimizers check it, on every
            # rank alike), Accelerate then holds the scheduler back, and the guard counts the skip and aborts after
            # max_consecutive_nonfinite_steps (tests/distributed: the NaN test under ZeRO-2).
            return scheduler
        self.optimizer, self.lr_scheduler = guard_optimizer_and_scheduler(
            self.optimizer, scheduler, self._nonfinite_guard
        )
        return self.lr_scheduler

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._nonfinite_guard.observe_loss(loss)
        return loss

    def _get_grad_norm(self, model, grad_norm=None):
        # Called once per optimizer step, right before `optimizer.step()`: the guard decides here, identically on
        # every process, whether the wrapped optimizer and scheduler skip this step.
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        if not self.is_deepspeed_enabled and not isinstance(self.optimizer, GuardedOptimizer):
            # create_scheduler wraps the optimizer once Accelerate has prepared it; a Trainer that creates the
            # scheduler earlier would leave the guard deciding with nothing to skip.
            raise RuntimeError(
                "The non-finite step guard is not in place: the optimizer was not wrapped when the scheduler was "
                f"created ({type(self.optimizer).__name__}). This transformers version orders them differently from "
                "the one rft_trl pins; install that one."
            )
        self._nonfinite_guard.decide(grad_norm, self.accelerator.reduce, step=self.state.global_step + 1)
        return grad_norm

    def create_model_card(
        self,
        model_name: str | None = None,
        dataset_name: str | None = None,
        tags: str | list[str] | None = None,
        finetuned_from: str | None = None,
        language: str | None = None,
        license: str | None = None,
    ) -> None:
        """The model card `push_to_hub` uploads with the weights (see [`write_model_card`])."""
        if self.is_world_process_zero():
            write_model_card(self, model_name, dataset_name, tags, finetuned_from, language, license)
