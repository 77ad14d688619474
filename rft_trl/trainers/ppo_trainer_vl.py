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

import copy
import importlib.util
import logging
import math
import os
import tempfile
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

import torch
from accelerate.utils import broadcast_object_list, gather_object
from datasets import Dataset, IterableDataset
from peft import PeftModel
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, Sampler
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
)
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import ModelOutput
from trl.models.utils import prepare_deepspeed
from trl.trainer.utils import disable_dropout_in_model, print_prompt_completions_sample

from ..core import high_entropy_mask
from ..data.collator import PromptCollator
from ..data.media import load_image
from ..data.multimodal import probe_processor
from ..data.rows import IndexedRows, IndexedStream, ReplacementRows
from ..models.actor import Actor
from ..models.media_encodings import MediaEncodings
from ..models.reward_model import SequenceClassificationReward
from ..models.utils import cast_lm_head_to_fp32, check_supported
from ..models.verification import verify_model
from ..rewards import RewardScorer
from ..rollout import iter_checkpoint_weights
from .builders import build_actor, build_critic, load_processing_class, load_reward_models
from .checkpointing import (
    REFERENCE_NAME,
    CheckpointError,
    check_resumable,
    load_checkpoint_weights,
    load_rft_state,
    read_safetensors,
    remove_partial_checkpoints,
    resolve_resume_checkpoint,
    rotate_checkpoints,
    save_rft_state,
    staged_checkpoint,
    write_trainer_checkpoint,
)
from .evaluation import evaluate_rollouts
from .experience_maker import ExperienceMaker, Rollout
from .fingerprint import fingerprint_difference, weights_fingerprint
from .guards import GuardedOptimizer, NonFiniteGuard, guard_optimizer_and_scheduler, redact_token_arguments
from .kl_controller import AdaptiveKLController, EntropyController, FixedKLController
from .metrics import merge_rollout_metrics
from .model_card import write_model_card
from .objective import actor_objective, critic_objective, off_policy_sequence_mask
from .policy_and_value import PolicyAndValue
from .progress import ReadablePrinterCallback, ReadableProgressCallback
from .replay_buffer import NaiveReplayBuffer
from .rft_config import RFTConfig
from .sampling import PromptRows, RolloutSampler, RolloutStream, is_stream
from .sft import build_sft_batch, sft_loss
from .trainer_hooks import check_trainer_hooks, unwrapped_for_generation

logger = logging.getLogger(__name__)


class _EMACallback(TrainerCallback):
    """After each optimizer step: ema = beta * ema + (1 - beta) * actor, over the actor's trainable weights."""

    def __init__(self, trainer: PPOTrainerVL):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        # A step skipped for a non-finite gradient left the weights as they were: nothing to average.
        if not self.trainer._nonfinite_guard.skip_step:
            self.trainer._update_ema()


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
        if train_dataset is None:
            raise ValueError("`train_dataset` is required: the prompt rows the rollouts are generated from.")
        self._check_streams(train_dataset, eval_dataset, args)
        if args.packing_samples and actor.hf_model.config._attn_implementation != "flash_attention_2":
            # Packing removes padding tokens, but sdpa/eager attend over the whole packed row (block-diagonal
            # mask): the attention work grows with the pack's length squared (docs/benchmarks.md, B2/B6).
            logger.warning(
                "packing_samples=True without flash_attention_2: no padding is computed, but attention runs over "
                "the whole packed row, which is usually slower than padding on %s.",
                actor.hf_model.config._attn_implementation,
            )
        critic = build_critic(critic, actor, args)
        funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        funcs = [f for f in funcs if f is not None]
        if reward_model is not None:
            funcs.append(reward_model)
        if args.remote_rm_url:
            funcs.append(args.remote_rm_url)
        if not funcs:
            raise ValueError(
                "No reward source provided: pass reward_funcs (functions, reward-model ids or http(s) URLs), or the "
                "seed's reward_model / remote_rm_url."
            )
        self.reward_funcs, self.reward_processing_classes = load_reward_models(funcs, reward_processing_classes, args)
        self.reward_scorer = RewardScorer(
            [
                SequenceClassificationReward(func, tokenizer, args.chat_template_kwargs)
                if isinstance(func, PreTrainedModel)
                else func
                for func, tokenizer in zip(self.reward_funcs, self.reward_processing_classes)
            ],
            reward_weights=args.reward_weights,
            reward_recipe=args.reward_recipe,
            reward_fn_label_map=args.reward_fn_label_map,
            max_reward_failure_rate=args.max_reward_failure_rate,
        )
        self.media_kinds = layout.media_kinds
        self.collator = PromptCollator(
            processing_class,
            prompt_max_len=args.prompt_max_len,
            layout=layout,
            max_skip_fraction=args.max_skipped_fraction,
            chat_template_kwargs=args.chat_template_kwargs,
        )
        # Rows standing in for a training batch whose every row was skipped; set with the train dataloader.
        self._replacement_rows: ReplacementRows | None = None
        # Replacement passes begun before this run (restored from a checkpoint by `_restore_rft_state`).
        self._replacement_passes = 0
        self.kl_ctl = (
            AdaptiveKLController(args.init_kl_coef, args.kl_target, args.kl_horizon)
            if args.kl_target
            else FixedKLController(args.init_kl_coef)
        )
        self.entropy_controller = EntropyController(
            args.entropy_coef,
            adaptive=args.use_adaptive_entropy,
            target=args.entropy_target,
            delta=args.entropy_coef_delta,
            minimum=args.entropy_coef_min,
            maximum=args.entropy_coef_max,
        )
        if args.ptx_coef > 0 and ptx_dataset is None:
            raise ValueError("ptx_coef > 0 needs a ptx_dataset (rows with `prompt` and `completion`).")
        self.ptx_dataset = ptx_dataset
        self._ptx_position = 0
        self._ema_model = ema_model
        self._ema_state: dict[str, torch.Tensor] | None = None
        self._metrics: dict[str, list[torch.Tensor]] = defaultdict(list)  # name -> [value, weight] per micro-batch
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
        self._peft = isinstance(actor.model, PeftModel)
        self._reference = initial_model
        # Set when training starts (`train`): see `_fingerprint_reference`.
        self._reference_fingerprint: dict[str, list[float]] | None = None
        self._completions_table: list[dict] = []
        self._completion_rewards: dict[str, list[float]] = {}
        self._completion_prompts: list = []
        self._completions_table_logged = True

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
        # One readable line per log on the console instead of the Trainer's dict dumps (report_to gets the dicts).
        for default, readable in (
            (ProgressCallback, ReadableProgressCallback),
            (PrinterCallback, ReadablePrinterCallback),
        ):
            if any(type(callback) is default for callback in self.callback_handler.callbacks):
                self.remove_callback(default)
                self.add_callback(readable)
        # The loss is a mean over the micro-batch's tokens or samples (`loss_type`), never a sum for the Trainer to
        # divide by a token count: the Trainer scales it for gradient accumulation (TRL sets the same).
        self.model_accepts_loss_kwargs = False
        # TRL's attribute: whether the policy returns a router load-balancing loss (mixture-of-experts models).
        self.aux_loss_enabled = bool(getattr(actor.hf_model.config.get_text_config(), "output_router_logits", False))
        self._place_reward_models()
        self._aux_loss_coef = self._resolve_aux_loss_coef()
        self._missing_aux_loss_warned = False
        self._check_deepspeed_saving()
        self._reference_fn = self._build_reference(initial_model, model if isinstance(model, str) else None)
        # TRL's attribute: the reference policy's transformers model (None without a separate reference model).
        self.ref_model = self._reference.hf_model if isinstance(self._reference, Actor) else None
        if args.sync_ref_model:
            # Imported here: trl.trainer.callbacks imports the optional integrations (wandb...).
            from trl.trainer.callbacks import SyncRefModelCallback

            self._check_sync_ref_model()
            self.add_callback(SyncRefModelCallback(ref_model=self.ref_model, accelerator=self.accelerator))
        if args.enable_ema:
            self.add_callback(_EMACallback(self))
        self.rollout_engine = self._build_rollout_engine(actor, processing_class) if args.use_vllm else None
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
        if args.verify_model:
            self._verify_model()

    def _verify_model(self) -> None:
        """`verify_model`: the policy's log-probs through rft_trl against its own forward, before any step."""
        if is_deepspeed_zero3_enabled():
            # The policy is partitioned until DeepSpeed's engine starts with training; its forward cannot run here.
            logger.info("verify_model: not run under ZeRO-3 (the policy is partitioned before training starts).")
            return
        # A cache of its own: the run's cache and its counts start clean.
        encodings = MediaEncodings(self.actor.model) if self.experience_maker.media_encodings is not None else None
        verify_model(self.actor, self.collator, packing=self.actor.packing_samples, media_encodings=encodings)

    @property
    def reward_func_names(self) -> list[str]:
        """The reward functions' names, as in the metrics (TRL's attribute)."""
        return list(self.reward_scorer.names)

    # ------------------------------------------------------------------------------------------------ building

    @staticmethod
    def _check_streams(train_dataset, eval_dataset, args: RFTConfig) -> None:
        """TRL's rules for streaming (iterable) datasets: no batch dispatching; one loader worker for training."""
        eval_sets = eval_dataset.values() if isinstance(eval_dataset, dict) else [eval_dataset]
        if not (is_stream(train_dataset) or any(is_stream(d) for d in eval_sets)):
            return
        if args.accelerator_config.dispatch_batches:
            raise ValueError(
                "Iterable datasets require `dispatch_batches=False`: every process reads its own share of the stream "
                "(batches are raw prompt rows, which Accelerate cannot dispatch). Drop dispatch_batches from "
                "accelerator_config."
            )
        if is_stream(train_dataset) and args.dataloader_num_workers > 0:
            # Each worker would read the whole stream, repeating prompts and splitting rollouts across workers.
            logger.warning(
                "dataloader_num_workers=%d set to 0: a streaming training set is read by one loader process.",
                args.dataloader_num_workers,
            )
            args.dataloader_num_workers = 0

    def _build_rollout_engine(self, actor: Actor, processing_class):
        """The vLLM engine of `use_vllm=True` (`vllm_mode` colocate or server)."""
        from ..rollout.vllm import VLLMColocateEngine, VLLMServerEngine

        args = self.args
        tokenizer = self.collator.tokenizer
        common = {
            "tokenizer": tokenizer,
            "eos_token_id": actor.hf_model.generation_config.eos_token_id or tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "suppressed_token_ids": actor.media_token_ids if args.suppress_media_tokens else [],
            "structured_outputs_regex": args.vllm_structured_outputs_regex,
            "audio_sampling_rate": self.collator.sampling_rate,
            "chat_template_kwargs": args.chat_template_kwargs,
        }
        if args.vllm_mode == "server":
            return VLLMServerEngine(
                base_url=args.vllm_server_url(),
                timeout=args.vllm_server_timeout,
                sync_dir=args.vllm_weight_sync_dir,
                need_log_probs=True,
                is_main_process=self.accelerator.is_main_process,
                **common,
            )
        num_processes, tp = self.accelerator.num_processes, args.vllm_tensor_parallel_size
        if num_processes % tp:
            raise ValueError(
                f"vllm_tensor_parallel_size={tp} must divide the number of processes ({num_processes}): each group "
                "of that many processes shares one engine."
            )
        if importlib.util.find_spec("vllm") is None:
            raise ImportError(
                "use_vllm=True with vllm_mode='colocate' needs vLLM in this environment: `pip install rft_trl[vllm]` "
                "(on a CPU machine, `bash scripts/setup_vllm.sh` builds vLLM's CPU environment; see the README)."
            )
        tp_group = None
        if tp > 1:
            # Consecutive processes form a group ([0, 1], [2, 3], ... for 2), as TRL's colocate mode does.
            tp_group, _ = torch.distributed.new_subgroups_by_enumeration(
                [list(range(start, start + tp)) for start in range(0, num_processes, tp)]
            )
        dtype = next(actor.hf_model.parameters()).dtype
        llm_kwargs = {
            "dtype": str(dtype).removeprefix("torch."),
            # Each engine samples its own prompts: its own seed, the same on the processes that share it.
            "seed": args.seed + self.accelerator.process_index // tp,
            "tensor_parallel_size": tp,
            "gpu_memory_utilization": args.vllm_gpu_memory_utilization,
            "max_model_len": args.vllm_max_model_length,
            "model_impl": args.vllm_model_impl,
            "enable_sleep_mode": args.vllm_enable_sleep_mode,
            "enforce_eager": args.vllm_enforce_eager,
            "trust_remote_code": args.model_kwargs()["trust_remote_code"],
        }
        path = self._engine_model_path(actor, processing_class)
        engine = VLLMColocateEngine(path, llm_kwargs, num_processes=num_processes, tp_group=tp_group, **common)
        self.accelerator.wait_for_everyone()
        return engine

    def _engine_model_path(self, actor: Actor, processing_class) -> str:
        """
        Where a colocated engine loads the model from: the policy's own directory or Hub id, else (a model built in
        memory) its config, processor and weights written once (by the main process) to a temporary directory, the
        weights under their checkpoint names (LoRA merged in, gathered under ZeRO-3, where every process takes part).
        Either way the engine's weights are replaced by the policy's before the first rollout.
        """
        model = actor.model
        base = model.get_base_model() if isinstance(model, PeftModel) else model
        source = base.config._name_or_path
        if source and (os.path.isfile(os.path.join(source, "config.json")) or not os.path.exists(source)):
            return source  # a model directory, or a Hub id
        weights = iter_checkpoint_weights(model)
        path = None
        if not self.accelerator.is_main_process:
            if any(hasattr(parameter, "ds_id") for parameter in model.parameters()):
                deque(weights, maxlen=0)  # ZeRO-3: take part in each module's gathering, keep nothing
        else:
            path = tempfile.mkdtemp(prefix="rft_trl_vllm_model_")
            config = copy.deepcopy(base.config)
            config.architectures = [type(base).__name__]  # what save_pretrained records, and vLLM reads
            config.save_pretrained(path)
            if base.generation_config is not None:
                base.generation_config.save_pretrained(path)
            processing_class.save_pretrained(path)
            tensors = {name: tensor.contiguous() for name, tensor in weights}
            save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
        return broadcast_object_list([path])[0]

    def _gather_for_rollout(self) -> bool:
        """Whether a rollout gathers the whole ZeRO-3 model first: for HF generation, as ds3_gather_for_generation."""
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

    def _build_reference(self, initial_model: nn.Module | None, model_path: str | None) -> Callable | None:
        if self.args.init_kl_coef == 0 and initial_model is None:
            return None
        if initial_model is not None:
            reference = (
                initial_model
                if isinstance(initial_model, Actor)
                else Actor(
                    initial_model,
                    **self.args.model_kwargs(from_path=False),
                    **self.args.log_prob_kwargs(),
                )
            )
        elif self._peft:
            # With an adapter, the base model under it *is* the reference: disable the adapter for the forward.
            def adapter_disabled(*args, **kwargs):
                with self.actor.model.disable_adapter():
                    return self.actor(*args, **kwargs)

            return adapter_disabled
        elif self._zero3_partitioned(self.actor):
            # A ZeRO-3 partitioned actor cannot be copied (each rank holds a shard): load the reference again.
            if model_path is None:
                raise ValueError(
                    "Under ZeRO-3 the KL reference is loaded from the policy's checkpoint, but the policy was given "
                    "as an already partitioned model object: pass the model as a path, or pass initial_model."
                )
            reference = Actor(
                model_path,
                **self.args.model_kwargs(),
                **self.args.log_prob_kwargs(),
            )
        else:
            reference = copy.deepcopy(self.actor)
        if self.args.cast_lm_head_to_fp32:
            cast_lm_head_to_fp32(reference.hf_model)  # a no-op on a copy of the (cast) policy
        # The KL compares the two policies over the tokens the rollout can sample.
        reference.suppressed_token_ids = list(self.actor.suppressed_token_ids)
        reference.requires_grad_(False)
        reference.eval()
        if self.args.disable_dropout:
            disable_dropout_in_model(reference)
        if self.is_deepspeed_enabled:
            # TRL's way: an inference engine of the same ZeRO stage (3: sharded like the policy; below: whole), whose
            # hooks gather the shards for the reference forward.
            self._reference_engine = prepare_deepspeed(reference, self.accelerator)
        self._reference = reference.to(self.accelerator.device)
        return self._reference

    def _check_sync_ref_model(self) -> None:
        """TRL's conditions for `sync_ref_model`, and ours (the reference must be a model of its own, saved whole)."""
        if self.args.init_kl_coef == 0.0:
            raise ValueError(
                "You passed `sync_ref_model=True` while `beta=0.0`: the reference model is not used, so there is "
                "nothing to synchronize. Set `sync_ref_model=False`, or a non-zero `beta`."
            )
        if self._peft:
            raise ValueError(
                "`sync_ref_model=True` with a PEFT model is not supported: the reference is the base model under the "
                "adapter, not a model of its own to mix weights into. Use full fine-tuning, or sync_ref_model=False."
            )
        if self.critic is not None:
            raise ValueError(
                "`sync_ref_model=True` with a critic is not supported: the trained module holds the critic's weights "
                "too, which have no counterpart in the reference."
            )
        if is_deepspeed_zero3_enabled():
            raise ValueError(
                "`sync_ref_model=True` under ZeRO-3 is not supported: the synced reference is saved whole in each "
                "checkpoint (for an exact resume), which a partitioned reference cannot be."
            )

    def _place_reward_models(self) -> None:
        """Put the sequence-classification reward models where they run, as TRL does: a DeepSpeed inference engine
        of the training's ZeRO stage, else the accelerator's device, in eval mode."""
        for func in self.reward_scorer.reward_funcs:
            if isinstance(func, SequenceClassificationReward):
                if self.is_deepspeed_enabled:
                    func.model = prepare_deepspeed(func.model, self.accelerator)
                else:
                    func.model = self.accelerator.prepare_model(
                        func.model, evaluation_mode=True, device_placement=True
                    )
        self.reward_funcs = [
            func.model if isinstance(func, SequenceClassificationReward) else original
            for func, original in zip(self.reward_scorer.reward_funcs, self.reward_funcs)
        ]

    def _resolve_aux_loss_coef(self) -> float:
        """
        The weight of an MoE router's load-balancing loss: TRL's `router_aux_loss_coef`, else the seed's
        `aux_loss_coef`, else (TRL's default) the model config's own coefficient, 0 when it declares none.
        """
        text_config = self.actor.hf_model.config.get_text_config()
        if self.args.router_aux_loss_coef is not None:
            if self.args.aux_loss_coef and self.args.aux_loss_coef != self.args.router_aux_loss_coef:
                raise ValueError(
                    f"router_aux_loss_coef={self.args.router_aux_loss_coef} contradicts its seed name aux_loss_coef="
                    f"{self.args.aux_loss_coef}; set only one."
                )
            coef = self.args.router_aux_loss_coef
            if coef and "output_router_logits" not in text_config.to_dict():
                raise ValueError(
                    f"router_aux_loss_coef={coef}, but {type(self.actor.hf_model).__name__} returns no router logits "
                    "(not a mixture of experts): there is no auxiliary loss to weight."
                )
            return coef
        if self.args.aux_loss_coef:
            return self.args.aux_loss_coef
        return text_config.to_dict().get("router_aux_loss_coef", 0.0) or 0.0

    def _router_aux_loss(self, output: ModelOutput) -> torch.Tensor | None:
        """
        The router load-balancing loss the policy's forward returned, or `None` (warned once) when it returned none.

        Not every mixture-of-experts model computes one: Llama 4's and GLM-4.6V's multimodal outputs have no
        `aux_loss` field, Llama 4's text model leaves it `None` even with `output_router_logits`, and no model
        computes one with `output_router_logits` off. `ModelOutput.get` reads an absent field and a `None` one alike
        (a `ModelOutput` holds only the fields that are set); such a model trains without the term.
        """
        aux_loss = output.get("aux_loss")
        if aux_loss is None and not self._missing_aux_loss_warned:
            self._missing_aux_loss_warned = True
            logger.warning(
                "router_aux_loss_coef=%s, but %s returned no router auxiliary loss (a %s without aux_loss; "
                "output_router_logits=%s in its text config). Training without it.",
                self._aux_loss_coef,
                type(self.actor.hf_model).__name__,
                type(output).__name__,
                self.actor.hf_model.config.get_text_config().to_dict().get("output_router_logits"),
            )
        return aux_loss

    @staticmethod
    def _zero3_partitioned(module: nn.Module) -> bool:
        if not is_deepspeed_zero3_enabled():
            return False
        from deepspeed.runtime.zero.utils import is_zero_param

        return any(is_zero_param(parameter) for parameter in module.parameters())

    def _check_deepspeed_saving(self) -> None:
        """Refuse ZeRO-3 without 16-bit gathering on save: `save_model` would write no loadable weights."""
        if not self.is_deepspeed_enabled or not is_deepspeed_zero3_enabled():
            return
        zero = self.accelerator.state.deepspeed_plugin.deepspeed_config["zero_optimization"]
        if not zero.get("stage3_gather_16bit_weights_on_model_save", False):
            raise ValueError(
                "ZeRO-3 without gathering the weights on save writes no model.safetensors that from_pretrained can "
                "load: set `zero3_save_16bit_model: true` in the accelerate config (DeepSpeed's "
                "stage3_gather_16bit_weights_on_model_save)."
            )

    def create_optimizer(self, model=None):
        """One optimizer, with the critic's parameters in their own groups at `critic_learning_rate`."""
        if self.optimizer is not None or self.critic is None:
            return super().create_optimizer(model)
        # Not super() with a critic: the parent builds one group per decay setting at `learning_rate`, and the critic
        # needs its own `critic_learning_rate`; the parent's decay rule and optimizer class are reused below.
        decay = set(self.get_decay_parameter_names(self.model))
        critic_lr = self.args.critic_learning_rate or self.args.learning_rate
        groups = []
        for prefix, lr in (("actor.", self.args.learning_rate), ("critic.", critic_lr)):
            named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad and n.startswith(prefix)]
            groups.append(
                {"params": [p for n, p in named if n in decay], "weight_decay": self.args.weight_decay, "lr": lr}
            )
            groups.append({"params": [p for n, p in named if n not in decay], "weight_decay": 0.0, "lr": lr})
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_cls([g for g in groups if g["params"]], **optimizer_kwargs)
        return self.optimizer

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
        if is_stream(self.train_dataset):
            rows = IndexedStream(self.train_dataset)
            block = self.args.rollout_batch_size * self.accelerator.num_processes
            dataset = RolloutStream(rows, block, self.args.micro_steps_per_rollout)
        else:
            rows = dataset = IndexedRows(self.train_dataset)
        self._replacement_rows = ReplacementRows(
            rows,
            self.args.seed,
            self.accelerator.process_index,
            self.accelerator.num_processes,
            passes=self._replacement_passes,
        )
        return self._get_dataloader(
            dataset=dataset,
            description="Training",
            batch_size=self.args.rollout_batch_size,
            sampler_fn=self._get_train_sampler,
            is_training=True,
        )

    # ------------------------------------------------------------------------------------------------ rollout

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
        # Under ZeRO-3, the weights are gathered once for the whole rollout (TRL's way) unless
        # ds3_gather_for_generation=False, when DeepSpeed gathers them layer by layer at every forward. A vLLM engine
        # samples with its own copy (synced module by module first), so the policy only scores: layer by layer.
        self._sync_rollout_engine()
        with (
            unwrapped_for_generation(self.model_wrapped, self.accelerator, self._gather_for_rollout()),
            self.collator.replacing_from(self._replacement_rows),
        ):
            rollout = self.experience_maker.make_experience(rows)
        if self.rollout_engine is not None:
            self.rollout_engine.sleep()
        if model_was_training:
            self.model.train()
        self._micro_batches = self._plan_micro_batches(rollout)
        self._rollout_metrics = self._gather_rollout_metrics(rollout)
        # TRL's count of tokens seen (prompts and completions, all processes); saved with the TrainerState.
        self.state.num_input_tokens_seen += int(self._rollout_metrics["rollout/tokens"])
        self._interval_rollout_metrics.append(self._rollout_metrics)
        if rollout.kl is not None:
            # The KL and sample count over all processes, so that every process moves the coefficient alike.
            self.kl_ctl.update(self._rollout_metrics["rollout/kl"], int(self._rollout_metrics["rollout/num_samples"]))
        # The last rollout's completions, for the table `log_completions` logs (and TRL's `_logs` view of them).
        self._completions_table = [
            {"step": self.state.global_step, "prompt": str(p), "completion": c, "reward": float(r)}
            for p, c, r in zip(rollout.prompts, rollout.completions, rollout.rewards.tolist())
        ]
        if self.args.log_multimodal and rollout.images is not None:
            for row, images in zip(self._completions_table, rollout.images):
                row["images"] = images
        for column, values in rollout.extra_columns.items():
            for row, value in zip(self._completions_table, values):
                row[column] = value
        self._completion_rewards = rollout.reward_components
        self._completion_prompts = rollout.prompts  # as given (chat messages stay messages), for the console table
        self._completions_table_logged = False

    @property
    def _logs(self) -> dict[str, Any]:
        """
        TRL's private view of the last rollout's completions: `prompt`, `completion`, `images` (with
        `log_multimodal`) and `extra` (the columns reward functions logged with `log_extra`).
        """
        table = self._completions_table
        extra = [
            name for name in (table[0] if table else {}) if name not in ("step", "prompt", "completion", "reward")
        ]
        return {
            "prompt": [row["prompt"] for row in table],
            "completion": [row["completion"] for row in table],
            "images": [row["images"] for row in table if "images" in row],
            "extra": {name: [row[name] for row in table] for name in extra if name != "images"},
        }

    def _plan_micro_batches(self, rollout: Rollout) -> list:
        """`max_epochs` passes over the rollout, each in a fresh seeded order, cut into training micro-batches."""
        buffer = self.replay_buffer
        buffer.clear()
        buffer.extend(self._top_up(rollout.items))
        size = buffer.sample_batch_size
        generator = torch.Generator().manual_seed(self.args.seed + self._step)
        batches = []
        for _ in range(self.args.max_epochs):
            order = torch.randperm(len(buffer), generator=generator).tolist()
            for start in range(0, len(buffer), size):
                batches.append(buffer.collate_fn([buffer[i] for i in order[start : start + size]]))
        return batches

    def _top_up(self, items: list) -> list:
        """
        The rollout's items, topped up to a full rollout with excluded copies (`valid` 0, masked out of the loss).

        A process whose collator skipped bad prompts has fewer samples, yet every process must replay
        `micro_steps_per_rollout` micro-batches: DDP and ZeRO synchronise every backward, so one process running
        fewer would leave the others waiting (and a short rollout has no micro-batch to index).
        """
        full = self.args.rollout_batch_size * self.args.n_samples_per_prompt
        topped_up = list(items)
        for i in range(full - len(items)):
            filler = copy.copy(items[i % len(items)])
            filler.info = {**filler.info, "valid": torch.zeros(())}
            topped_up.append(filler)
        return topped_up

    def _gather_rollout_metrics(self, rollout: Rollout) -> dict[str, float]:
        """Rollout metrics over all processes, merged by [`merge_rollout_metrics`]."""
        if self.accelerator.num_processes == 1:
            return dict(rollout.metrics)
        return merge_rollout_metrics(gather_object([rollout.metrics]))

    # ------------------------------------------------------------------------------------------------ update

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # Not super(): the parent's loss is the model's own (labels -> cross-entropy); this is the RL objective on an
        # experience micro-batch. The forward still runs through `model` (the DDP/DeepSpeed wrapper).
        experience = inputs
        args = self.args
        train_actor = self.state.global_step >= args.freezing_actor_steps
        train_critic = self.critic is not None
        packed_seq_lens = experience.packed_seq_lens
        sequences = torch.cat(experience.sequences)[None] if packed_seq_lens else experience.sequences
        token_fields = {
            name: torch.cat(value)[None] if packed_seq_lens else value
            for name, value in experience.token_fields.items()
        }
        media = experience.multimodal_inputs
        encodings = self.experience_maker.media_encodings
        if encodings is not None and self.critic is None and experience.multimodal_samples is not None:
            # The policy alone (a critic's backbone has an encoder of its own): each prompt's media encoded once.
            media = encodings.model_inputs(experience.multimodal_samples, sequences.device)
        common = {
            "attention_mask": None if packed_seq_lens else experience.attention_mask,
            "packed_seq_lens": packed_seq_lens,
            **token_fields,
            **media,
        }
        if self.critic is not None:
            out = model(
                sequences,
                experience.num_actions,
                temperature=args.temperature,
                return_entropy=True,  # logged as TRL's `entropy`; computed in the same pass as the log-probs
                with_actor=train_actor,
                with_values=train_critic,
                **common,
            )
        elif train_actor:
            # `model` wraps the policy itself (DDP, DeepSpeed): the actor runs its forward through the wrapper.
            log_probs, entropy, output = self.actor(
                sequences,
                experience.num_actions,
                temperature=args.temperature,
                return_entropy=True,
                return_output=True,
                wrapped_model=model,
                **common,
            )
            out = {"log_probs": log_probs, "entropy": entropy, "output": output}
        else:
            out = {}
        batch = self._padded_fields(experience, out)
        mask = batch["action_mask"] & (experience.info["valid"] > 0)[:, None]  # [B, A]
        loss = torch.zeros((), device=sequences.device)
        if train_actor:
            loss = loss + self.training_step_actor(batch, mask, out)
        if train_critic:
            loss = loss + self.training_step_critic(batch, mask)
        return (loss, out) if return_outputs else loss

    def _padded_fields(self, experience, out: dict) -> dict[str, torch.Tensor]:
        """The micro-batch's per-token fields as `[B, A]` tensors, left-padded like a padded experience."""
        names = (
            "action_mask",
            "action_log_probs",
            "base_action_log_probs",
            "advantages",
            "returns",
            "values",
            "importance_weights",
        )
        fields = {name: getattr(experience, name) for name in names}
        fields.update({f"new_{k}": v for k, v in out.items() if k in ("log_probs", "entropy", "values")})
        if experience.is_packed:
            lengths = torch.tensor(experience.num_actions)
            width = int(lengths.max())
            # Left-padded layout: row i's actions fill its last lengths[i] columns.
            layout = torch.arange(width)[None, :] >= (width - lengths)[:, None]  # [B, A]
            for name, value in list(fields.items()):
                if value is None:
                    continue
                flat = torch.cat(value) if isinstance(value, list) else value.flatten()
                layout_here = layout.to(flat.device)
                # masked_scatter is out of place, so gradients flow from the packed outputs into the padded view.
                fields[name] = flat.new_zeros(layout.shape).masked_scatter(layout_here, flat)
        fields["action_mask"] = fields["action_mask"].bool()
        return fields

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
            ptx_loss=sft_loss(self.actor, self._next_ptx_batch()) if args.ptx_coef > 0 else None,
            aux_loss=self._router_aux_loss(out["output"]) if self._aux_loss_coef else None,
            aux_loss_coef=self._aux_loss_coef,
            off_policy_mask=self.get_off_policy_mask,
        )
        for name, (value, weight) in objective.metrics.items():
            self._record(name, value, weight)
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
        """
        TRL's top-entropy token selection: the valid tokens whose entropy is at least the `threshold` quantile of
        the valid tokens' entropies over all processes (so every process cuts at the same entropy).

        Args:
            entropies (`torch.Tensor` of shape `[B, A]`): per-token entropies.
            mask (`torch.Tensor` of shape `[B, A]`): valid tokens.
            threshold (`float`): the quantile, in `[0, 1]`; `1 - top_entropy_quantile` keeps that top fraction.

        Returns:
            `torch.BoolTensor` of shape `[B, A]`, inside `mask`; all `False` when no process has a valid token.
        """
        local = entropies.detach()[mask.bool()].float()
        # Processes hold different token counts: pad to a common length with -inf, which no entropy equals.
        padded = self.accelerator.pad_across_processes(local, dim=0, pad_index=float("-inf"))
        gathered = self.accelerator.gather(padded)
        return high_entropy_mask(entropies, mask, threshold, population=gathered[torch.isfinite(gathered)])

    @staticmethod
    def get_off_policy_mask(
        advantages: torch.Tensor,
        per_token_logps: torch.Tensor,
        sampling_per_token_logps: torch.Tensor,
        mask: torch.Tensor,
        off_policy_threshold: float,
    ) -> torch.Tensor:
        """TRL's static method of this name: [`rft_trl.trainers.objective.off_policy_sequence_mask`]."""
        return off_policy_sequence_mask(
            advantages, per_token_logps, sampling_per_token_logps, mask, off_policy_threshold
        )

    def _next_ptx_batch(self) -> dict[str, Any]:
        """The next `micro_train_batch_size` rows of `ptx_dataset`, cycling through a seeded order."""
        size = self.args.micro_train_batch_size
        num_rows = len(self.ptx_dataset)
        order = torch.randperm(num_rows, generator=torch.Generator().manual_seed(self.args.seed)).tolist()
        rows = [self.ptx_dataset[order[(self._ptx_position + i) % num_rows]] for i in range(size)]
        self._ptx_position += size
        batch = build_sft_batch(self.collator, rows)
        return {k: v.to(self.accelerator.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def training_step_critic(self, batch: dict, mask: torch.Tensor) -> torch.Tensor:
        """The critic's clipped value loss on one micro-batch."""
        objective = critic_objective(batch, mask, self.args.value_clip)
        for name, (value, weight) in objective.metrics.items():
            self._record(name, value, weight)
        return objective.loss

    def _update_ema(self) -> None:
        beta = self.args.ema_beta
        params = {name: p for name, p in self.actor.named_parameters() if p.requires_grad}
        if self._ema_state is None:
            self._ema_state = {name: p.detach().clone() for name, p in params.items()}
        else:
            for name, p in params.items():
                self._ema_state[name].lerp_(p.detach(), 1 - beta)
        if self._ema_model is not None:
            target = dict(self._ema_model.named_parameters())
            for name, value in self._ema_state.items():
                target[name].data.copy_(value)

    # ------------------------------------------------------------------------------------------------ logging

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        training_step = "loss" in logs
        # As TRL: statistics not logged yet (the steps after the last logging step) join the next training log, the
        # end-of-training summary included; evaluation logs carry their own.
        pending = self._interval_rollout_metrics and not any(key.startswith("eval_") for key in logs)
        if training_step or pending:
            # Within one rollout's optimizer steps, each log repeats that rollout's statistics.
            rollouts = self._interval_rollout_metrics or [self._rollout_metrics]
            logs = {**logs, **self._aggregate_metrics(), **merge_rollout_metrics(rollouts)}
            self._interval_rollout_metrics = []
            logs["train/kl_coef"] = self.kl_ctl.value
            logs["entropy_coef"] = self.entropy_coef  # TRL's name
            logs["num_tokens"] = float(self.state.num_input_tokens_seen)
            logs["train/nonfinite_steps_skipped"] = float(self._nonfinite_guard.skipped_steps)
        super().log(logs, start_time)
        # After the metrics, so that trackers number the table after the step it shows.
        if (training_step or pending) and self.args.log_completions and not self._completions_table_logged:
            self._log_completions_table()

    def _record(self, name: str, value, weight: torch.Tensor | None = None) -> None:
        """Keep a micro-batch's metric, with the number of tokens it was computed over (1 when it is not a mean)."""
        value = torch.as_tensor(value).detach().float()
        weight = torch.ones_like(value) if weight is None else weight.detach().float().to(value.device)
        self._metrics[name].append(torch.stack([value, weight]))

    def _aggregate_metrics(self) -> dict[str, float]:
        """
        The logging interval's metrics over its micro-batches: `*_max` the largest, `*_min` the smallest, any other
        the token-weighted mean. Micro-batches without a token in the loss (every sample excluded, e.g. the fillers of
        a rollout whose bad rows were skipped) count for nothing, and a metric none of them had is not logged.

        Metrics stay tensors during the step; this is the one host read, instead of one per micro-batch.
        """
        names = [name for name, entries in self._metrics.items() if entries]
        if not names:
            return {}
        reduced = []
        for name in names:
            values, weights = torch.stack([entry.to(self.accelerator.device) for entry in self._metrics[name]]).T
            present = weights > 0
            if name.endswith("_max"):
                value = torch.where(present, values, -math.inf).max()
            elif name.endswith("_min"):
                value = torch.where(present, values, math.inf).min()
            else:
                value = (torch.where(present, values, 0.0) * weights).sum() / weights.sum().clamp(min=1e-12)
            reduced.append(torch.stack([value, weights.sum()]))
        self._metrics.clear()
        return {name: value for name, (value, total) in zip(names, torch.stack(reduced).tolist()) if total > 0}

    def _log_completions_table(self) -> None:
        """`log_completions`: TRL's console table of the last rollout (with `rich`), and a trackio / wandb table."""
        self._emit_completions(
            self._completions_table,
            self._completion_prompts,
            self._completion_rewards,
            "completions",
            extra=self._logs["extra"] or None,
        )
        self._completions_table_logged = True

    def _emit_completions(
        self, table: list[dict], prompts: list, rewards: dict[str, list[float]], name: str, extra=None
    ) -> None:
        """Print `table` as TRL's console table (with `rich`) and log it as table `name` to trackio / wandb."""
        if not self.accelerator.is_main_process or not table:
            return
        if importlib.util.find_spec("rich") is not None:
            print_prompt_completions_sample(
                prompts,
                [row["completion"] for row in table],
                rewards,
                None,
                self.state.global_step,
                self.args.num_completions_to_print,
                extra=extra,
            )
        if "trackio" in self.args.report_to:
            import trackio

            columns = [column for column in table[0] if column != "images"]
            rows = [[row.get(column) for column in columns] for row in table]
            trackio.log({name: trackio.Table(columns=columns, data=rows)})
        if "wandb" in self.args.report_to:
            import wandb

            if wandb.run is not None:
                rows = [
                    {**row, "images": [wandb.Image(load_image(image)) for image in row["images"]]}
                    if "images" in row
                    else row
                    for row in table
                ]
                wandb.log({name: wandb.Table(columns=list(rows[0]), data=[list(r.values()) for r in rows])})

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
            self._log_eval_completions(shown, metric_key_prefix)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _log_eval_completions(self, shown: list[tuple], metric_key_prefix: str) -> None:
        """The eval completions, each row once in dataset order, as the training table: console and trackers."""
        # Rows Accelerate repeated to even out the processes' last batches come back under the same key.
        rows = [row for _, row in sorted({row[0]: row for row in shown}.items())]
        table = [
            {"step": self.state.global_step, "prompt": str(prompt), "completion": completion, "reward": reward}
            for _, prompt, completion, reward, _ in rows
        ]
        rewards = {name: [row[4][name] for row in rows] for name in (rows[0][4] if rows else ())}
        prompts = [row[1] for row in rows]
        self._emit_completions(table, prompts, rewards, f"{metric_key_prefix}_completions")

    def get_eval_dataloader(self, eval_dataset=None) -> DataLoader:
        """
        The eval rows, each with its dataset index (so that rows Accelerate repeats to even out the processes' last
        batches count once). A streaming eval set is read by one loader process, for this loader only (TRL's rule).
        """
        if isinstance(eval_dataset, str):
            eval_dataset = self.eval_dataset[eval_dataset]
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError("Evaluation needs an eval_dataset: pass one to the trainer or to evaluate().")
        if not is_stream(dataset):
            return super().get_eval_dataloader(IndexedRows(dataset))
        if self.args.accelerator_config.dispatch_batches:
            raise ValueError("Iterable datasets require `dispatch_batches=False`; drop it from accelerator_config.")
        workers = self.args.dataloader_num_workers
        self.args.dataloader_num_workers = 0
        try:
            return super().get_eval_dataloader(IndexedStream(dataset))
        finally:
            self.args.dataloader_num_workers = workers

    # ------------------------------------------------------------------------------------------------ saving

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Write the actor in Hugging Face format (the LoRA adapter alone under PEFT), its processor, the critic."""
        # Not super(): the parent saves `trainer.model`'s state dict whole; with a critic that is the PolicyAndValue
        # wrapper, which from_pretrained cannot load, so the actor and the critic are written apart.
        # Every process calls this; one writes (gathering a sharded state dict, if any, happened before).
        if not self.args.should_save:
            return
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        actor_state = critic_state = None
        if state_dict is not None and self.critic is None:
            actor_state = state_dict  # `trainer.model` is the policy itself
        elif state_dict is not None:
            actor_state = {k[len("actor.model.") :]: v for k, v in state_dict.items() if k.startswith("actor.model.")}
            critic_state = {k[len("critic.") :]: v for k, v in state_dict.items() if k.startswith("critic.")}
        self.actor.model.save_pretrained(output_dir, state_dict=actor_state, safe_serialization=True)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        if self.critic is not None:
            critic_state = critic_state or self.critic.state_dict()
            os.makedirs(os.path.join(output_dir, "critic"), exist_ok=True)
            save_file(
                {k: v.detach().contiguous().cpu() for k, v in critic_state.items()},
                os.path.join(output_dir, "critic", "model.safetensors"),
            )
        # JSON, not a pickle of the arguments: `to_json_string` redacts tokens, and JSON loads without running code.
        with open(os.path.join(output_dir, "training_args.json"), "w") as f:
            f.write(self.args.to_json_string())

    def _save_checkpoint(self, model, trial) -> None:
        """Write `checkpoint-N` crash-safely: staged, committed by an atomic rename once complete, then rotated."""
        # Not super(): the parent writes straight into `checkpoint-N` (a crash leaves a partial checkpoint that
        # resuming would pick up) and rotates old checkpoints before the new one is complete. The same files are
        # written by the parent's own writers (`write_trainer_checkpoint`), into a staging directory.
        run_dir = self._get_output_dir(trial=trial)
        step = self.state.global_step
        final = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{step}")
        if step % self._optimizer_steps_per_rollout:
            logger.warning(
                "Saving %s in the middle of a rollout (%d optimizer steps each): training cannot resume from it. "
                "Set save_steps to a multiple of %d.",
                final,
                self._optimizer_steps_per_rollout,
                self._optimizer_steps_per_rollout,
            )
        save_optimizer = not (self.args.save_only_model or self.args.disable_ds_ckpt)
        # Every process's replacement passes (each draws its own), gathered on all processes; the main one writes them.
        passes = 0 if self._replacement_rows is None else self._replacement_rows.passes
        self._replacement_passes_per_process = gather_object([passes])
        with staged_checkpoint(final, self.args.should_save, self.accelerator.wait_for_everyone, step) as staging:
            write_trainer_checkpoint(self, staging, run_dir, trial, save_optimizer)
            if self.args.should_save:
                save_rft_state(staging, self._rft_state(), self._ema_state)
                if self.args.sync_ref_model:  # the reference has moved away from the initial policy: keep it
                    reference = {k: v.detach().contiguous().cpu() for k, v in self.ref_model.state_dict().items()}
                    save_file(reference, os.path.join(staging, REFERENCE_NAME))
        if self.args.push_to_hub:
            self._push_from_checkpoint(final)
        if self.args.should_save:
            rotate_checkpoints(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint, step)

    def _rft_state(self) -> dict[str, Any]:
        """What a checkpoint needs beyond the Trainer's own files to resume exactly (JSON-serialisable)."""
        return {
            "micro_step": self._step,
            "ptx_position": self._ptx_position,
            "kl_controller": self.kl_ctl.state_dict(),
            "entropy_controller": self.entropy_controller.state_dict(),
            "nonfinite": self._nonfinite_guard.state_dict(),
            "reference_fingerprint": self._reference_fingerprint,
            "replacement_passes": self._replacement_passes_per_process,
        }

    def _fingerprint_reference(self) -> dict[str, list[float]] | None:
        """
        The fingerprint of the KL reference as this run built it (`None` without a reference, or with
        `sync_ref_model`, whose checkpoints hold the reference's weights themselves).
        """
        if self._reference_fn is None or self.args.sync_ref_model:
            return None
        if self._reference is not None:
            return weights_fingerprint(self._reference)
        # PEFT: the reference is the frozen base under the adapter; what trains (the adapter) is left out.
        trainable = {name for name, parameter in self.actor.model.named_parameters() if parameter.requires_grad}
        return weights_fingerprint(self.actor.model, skip=trainable.__contains__)

    def _check_reference(self, checkpoint: str, recorded: dict[str, list[float]] | None) -> None:
        """Refuse to resume `checkpoint` against another KL reference than the one it was trained against."""
        if self._reference_fingerprint is None:
            return
        if recorded is None:
            logger.warning(
                "%s records no fingerprint of its KL reference (written before rft_trl recorded one): the reference "
                "this run built cannot be checked against the one the checkpoint was trained with.",
                checkpoint,
            )
            return
        difference = fingerprint_difference(recorded, self._reference_fingerprint)
        if difference is not None:
            raise CheckpointError(
                f"{checkpoint} was trained against another KL reference than the one this run built: {difference}. "
                "The reference is the model given to the trainer (with PEFT, the base under the adapter) before the "
                "checkpoint's weights are loaded, so a resumed run must build it as the interrupted run did (the "
                "same model, and any warm-up or preprocessing of it before the trainer). Rebuild it that way, or "
                "start a new run."
            )

    def _restore_rft_state(self, checkpoint: str) -> None:
        state, ema = load_rft_state(checkpoint, self.accelerator.device)
        self._check_reference(checkpoint, state.get("reference_fingerprint"))
        self._step = state["micro_step"]
        self._ptx_position = state["ptx_position"]
        self.kl_ctl.load_state_dict(state["kl_controller"])
        if "entropy_controller" in state:  # checkpoints written before the entropy controller have none
            self.entropy_controller.load_state_dict(state["entropy_controller"])
        self._nonfinite_guard.load_state_dict(state["nonfinite"])
        passes = state.get("replacement_passes", [])  # checkpoints written before it have none
        if len(passes) == self.accelerator.num_processes:
            self._replacement_passes = passes[self.accelerator.process_index]
        # The checkpoint ends a rollout: the next micro-step generates a fresh one.
        self._micro_batches = []
        self._ema_state = ema
        if self.args.sync_ref_model:
            path = os.path.join(checkpoint, REFERENCE_NAME)
            if not os.path.isfile(path):
                raise CheckpointError(
                    f"{checkpoint} has no {REFERENCE_NAME}: it was not written with sync_ref_model=True, so the "
                    "synced reference cannot be restored. Resume with the settings it was trained with."
                )
            self.ref_model.load_state_dict(read_safetensors(path, str(self.accelerator.device)), strict=True)
        if ema is not None and self._ema_model is not None:
            target = dict(self._ema_model.named_parameters())
            for name, value in ema.items():
                target[name].data.copy_(value)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        # Not super(): the parent loads one state dict into `trainer.model`; a checkpoint here holds the actor in its
        # family's saved format, the adapter and the critic apart, which `load_checkpoint_weights` maps back.
        # `train` has already checked the checkpoint and restored the RFT state; the Trainer calls this for weights.
        self._load_model_weights(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        # Overridden (private Trainer hook): the Trainer loads the checkpoint's file as a state dict of the module it
        # trains, but ours holds the actor in its family's saved format (and the critic and adapter apart), which
        # only our loader maps back. DeepSpeed keeps its own engine checkpoints: the Trainer's way is right there.
        if self.is_deepspeed_enabled:
            return super()._load_best_model()
        logger.info(
            "Loading the best model from %s (score %s).", self.state.best_model_checkpoint, self.state.best_metric
        )
        self._load_model_weights(self.state.best_model_checkpoint)

    def _load_model_weights(self, checkpoint: str) -> None:
        load_checkpoint_weights(checkpoint, self.actor.hf_model, self.critic, self.actor.model if self._peft else None)

    # ------------------------------------------------------------------------------------------------ robustness

    @property
    def _optimizer_steps_per_rollout(self) -> int:
        return self.args.micro_steps_per_rollout // self.args.gradient_accumulation_steps

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, ignore_keys_for_eval=None):
        """
        `Trainer.train`, resuming only from complete checkpoints.

        Args:
            resume_from_checkpoint (`str` or `bool`, *optional*):
                `True`: the newest complete checkpoint of `output_dir` (partial ones left by a crash are removed
                first); a path: that checkpoint, refused unless complete, saved at the end of a rollout and holding
                the optimizer state.
            trial, ignore_keys_for_eval: as in `Trainer.train`.

        A token given on the command line (`--hub_token`) is first replaced in `sys.argv` by its placeholder, so
        that integrations recording the command line do not store it (see [`redact_token_arguments`]).
        """
        # Before the integrations start (wandb records the command line when its run begins).
        redact_token_arguments(self.args)
        if resume_from_checkpoint not in (None, False) and self.args.should_save:
            remove_partial_checkpoints(self.args.output_dir)
        checkpoint = resolve_resume_checkpoint(resume_from_checkpoint, self.args.output_dir)
        # Before any step: what every checkpoint of this run records, and what a resume is checked against.
        self._reference_fingerprint = self._fingerprint_reference()
        if checkpoint is not None:
            check_resumable(
                checkpoint, self._optimizer_steps_per_rollout, needs_optimizer_file=not self.is_deepspeed_enabled
            )
            self._restore_rft_state(checkpoint)
        return super().train(resume_from_checkpoint=checkpoint, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval)

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

    # ------------------------------------------------------------------------------------------------ model card

    def create_model_card(
        self,
        model_name: str | None = None,
        dataset_name: str | None = None,
        tags: str | list[str] | None = None,
        finetuned_from: str | None = None,
        language: str | None = None,
        license: str | None = None,
    ) -> None:
        """
        Write `README.md` and `reward_curve.png` into `output_dir`: the card `push_to_hub` uploads with the weights.

        The card holds the final rollout and eval rewards, the reward curve, the algorithm settings and how to load
        the result; never the arguments wholesale (they may hold a token).

        Args:
            model_name (`str`, *optional*):
                The card's title; defaults to the output directory's name.
            finetuned_from (`str`, *optional*):
                The base model's Hub id; defaults to the name the model was loaded from, when it has one.
            dataset_name (`str`, *optional*), tags (`str` or `list[str]`, *optional*), language (`str`, *optional*),
            license (`str`, *optional*):
                Card metadata (TRL's `push_to_hub(dataset_name=...)` passes the first); `tags` join `rft_trl`'s own.
        """
        if self.is_world_process_zero():
            write_model_card(self, model_name, dataset_name, tags, finetuned_from, language, license)
