"""What [`PPOTrainerVL`] builds around the policy before training: the reward scorer, the KL reference, the rollout
engine and the controllers, each from the run's one settings path ([`RFTConfig`]), and the checks that refuse a
configuration the run could not honour."""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
import tempfile
from collections import deque
from collections.abc import Callable
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, broadcast_object_list
from datasets import Dataset
from peft import PeftModel
from safetensors.torch import save_file
from torch import nn
from transformers import PreTrainedModel, TrainerCallback
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from trl.chat_template_utils import (
    add_response_schema,
    get_training_chat_template,
    is_chat_template_prefix_preserving,
    supports_tool_calling,
)
from trl.models.utils import prepare_deepspeed
from trl.trainer.utils import disable_dropout_in_model

from ..data.collator import PromptCollator
from ..data.multimodal import ProcessorLayout
from ..models.actor import Actor
from ..models.fsdp import fsdp_enabled
from ..models.media_encodings import MediaEncodings
from ..models.reward_model import SequenceClassificationReward
from ..models.utils import cast_lm_head_to_fp32
from ..models.verification import verify_model
from ..rewards import RewardScorer
from ..rollout import Environments, MultiTurn, ToolBox, iter_checkpoint_weights
from ..rollout.observations import check_observation_kind
from .builders import load_reward_models
from .fsdp import shard_reference
from .kl_controller import AdaptiveKLController, EntropyController, FixedKLController
from .rft_config import RFTConfig
from .sampling import is_stream

__all__ = [
    "Reference",
    "build_collator",
    "build_controllers",
    "build_multi_turn",
    "build_reference",
    "build_reward_scorer",
    "build_rollout_engine",
    "environment_rows",
    "check_packing_attention",
    "check_rollout_func",
    "check_deepspeed_saving",
    "check_streams",
    "check_sync_ref_model",
    "place_reward_models",
    "resolve_aux_loss_coef",
    "sync_ref_model_callback",
    "verify_policy",
    "zero3_partitioned",
]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ rewards


def build_reward_scorer(
    reward_funcs: Any,
    reward_model: Callable | None,
    args: RFTConfig,
    reward_processing_classes: Any,
    environments: Environments | None = None,
) -> tuple[list, list, RewardScorer]:
    """
    The run's reward sources (TRL's `reward_funcs`, the seed's `reward_model` and `remote_rm_url`, and the
    environments' `get_reward`, named after their class) and the scorer that combines them.

    Returns:
        `tuple`: the reward functions (models loaded from their paths), one tokenizer per function (`None` for those
        that are not models), and the [`RewardScorer`].
    """
    funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
    funcs = [f for f in funcs if f is not None]
    if reward_model is not None:
        funcs.append(reward_model)
    if args.remote_rm_url:
        funcs.append(args.remote_rm_url)
    if environments is not None and environments.reward_functions:
        if isinstance(reward_processing_classes, (list, tuple)):  # one per function: none for the environments'
            reward_processing_classes = [*reward_processing_classes, *[None] * len(environments.reward_functions)]
        elif reward_processing_classes is not None and len(funcs) == 1:
            reward_processing_classes = [reward_processing_classes, *[None] * len(environments.reward_functions)]
        funcs.extend(environments.reward_functions)
    weights = args.reward_weights
    if (
        environments is not None
        and weights is not None
        and len(weights) == len(funcs) - len(environments.reward_functions)
    ):
        weights = [*weights, *[1.0] * len(environments.reward_functions)]  # TRL's: an environment's reward weighs 1
    if not funcs:
        raise ValueError(
            "No reward source provided: pass reward_funcs (functions, reward-model ids or http(s) URLs), the seed's "
            "reward_model / remote_rm_url, or an environment_factory whose environment defines `get_reward`."
        )
    funcs, tokenizers = load_reward_models(funcs, reward_processing_classes, args)
    scorer = RewardScorer(
        [
            SequenceClassificationReward(func, tokenizer, args.chat_template_kwargs)
            if isinstance(func, PreTrainedModel)
            else func
            for func, tokenizer in zip(funcs, tokenizers)
        ],
        reward_weights=weights,
        reward_recipe=args.reward_recipe,
        reward_fn_label_map=args.reward_fn_label_map,
        max_reward_failure_rate=args.max_reward_failure_rate,
    )
    return funcs, tokenizers, scorer


def place_reward_models(scorer: RewardScorer, reward_funcs: list, accelerator: Accelerator, deepspeed: bool) -> list:
    """
    Put the sequence-classification reward models where they run, as TRL does: a DeepSpeed inference engine of the
    training's ZeRO stage, else the accelerator's device, in eval mode.

    Returns:
        `list`: `reward_funcs` with each model replaced by the placed one (TRL's `trainer.reward_funcs`).
    """
    for func in scorer.reward_funcs:
        if isinstance(func, SequenceClassificationReward):
            if deepspeed:
                func.model = prepare_deepspeed(func.model, accelerator)
            else:
                func.model = accelerator.prepare_model(func.model, evaluation_mode=True, device_placement=True)
    return [
        func.model if isinstance(func, SequenceClassificationReward) else original
        for func, original in zip(scorer.reward_funcs, reward_funcs)
    ]


def build_controllers(args: RFTConfig) -> tuple[AdaptiveKLController | FixedKLController, EntropyController]:
    """The KL coefficient's controller (adaptive with `kl_target`) and the entropy bonus's."""
    kl = (
        AdaptiveKLController(args.init_kl_coef, args.kl_target, args.kl_horizon)
        if args.kl_target
        else FixedKLController(args.init_kl_coef)
    )
    entropy = EntropyController(
        args.entropy_coef,
        adaptive=args.use_adaptive_entropy,
        target=args.entropy_target,
        delta=args.entropy_coef_delta,
        minimum=args.entropy_coef_min,
        maximum=args.entropy_coef_max,
    )
    return kl, entropy


def resolve_aux_loss_coef(hf_model: nn.Module, args: RFTConfig) -> float:
    """
    The weight of an MoE router's load-balancing loss: TRL's `router_aux_loss_coef`, else the seed's
    `aux_loss_coef`, else (TRL's default) the model config's own coefficient, 0 when it declares none.
    """
    text_config = hf_model.config.get_text_config()
    if args.router_aux_loss_coef is not None:
        if args.aux_loss_coef and args.aux_loss_coef != args.router_aux_loss_coef:
            raise ValueError(
                f"router_aux_loss_coef={args.router_aux_loss_coef} contradicts its seed name aux_loss_coef="
                f"{args.aux_loss_coef}; set only one."
            )
        coef = args.router_aux_loss_coef
        if coef and "output_router_logits" not in text_config.to_dict():
            raise ValueError(
                f"router_aux_loss_coef={coef}, but {type(hf_model).__name__} returns no router logits "
                "(not a mixture of experts): there is no auxiliary loss to weight."
            )
        return coef
    if args.aux_loss_coef:
        return args.aux_loss_coef
    return text_config.to_dict().get("router_aux_loss_coef", 0.0) or 0.0


def environment_rows(environments: Environments | None, args: RFTConfig) -> Dataset:
    """
    The training rows when an environment owns the data (no `train_dataset`; its `reset` gives each prompt, as in
    TRL): one rollout's worth of empty prompts over all processes, cycled, `max_steps` setting the run's length.
    """
    if environments is None:
        raise ValueError("`train_dataset` is required unless an `environment_factory` owns the data.")
    if environments.routed:
        raise ValueError(
            "A dict environment_factory (several environments) requires a `train_dataset` with an `environment` "
            "column to route each row to its environment. Give a dataset, or a single environment factory."
        )
    if args.max_steps <= 0:
        raise ValueError(
            "Without a train_dataset (the environment owns the data and its reset returns the prompt), max_steps must "
            "be set to a positive number: it is the length of the run."
        )
    rows = args.rollout_batch_size * args.world_size
    return Dataset.from_dict({"prompt": [[{"role": "user", "content": ""}]] * rows})


# ------------------------------------------------------------------------------------------------ reference


class Reference:
    """
    The KL reference of a run: `log_probs` scores actions (`None` without a KL term), `module` is the reference's
    own [`Actor`] when it has one (not with PEFT, whose reference is the base under the adapter), and `engine` the
    DeepSpeed inference engine wrapping it under DeepSpeed.
    """

    def __init__(self, log_probs: Callable | None, module: Actor | None = None, engine: Any = None):
        self.log_probs, self.module, self.engine = log_probs, module, engine


def build_reference(
    actor: Actor,
    initial_model: nn.Module | None,
    model_path: str | None,
    args: RFTConfig,
    accelerator: Accelerator,
    deepspeed: bool,
) -> Reference:
    """
    The reference policy of the KL term: `initial_model` when given; with PEFT, the actor with its adapter disabled
    (no memory cost); under ZeRO-3, the policy loaded again from `model_path`; else a frozen copy of the actor, sharded
    under FSDP. It scores under the actor's distribution (the same suppressed tokens), frozen, in eval mode.
    """
    if args.init_kl_coef == 0 and initial_model is None:
        return Reference(None, initial_model)
    if initial_model is not None:
        reference = (
            initial_model
            if isinstance(initial_model, Actor)
            else Actor(initial_model, **args.model_kwargs(from_path=False), **args.log_prob_kwargs())
        )
    elif isinstance(actor.model, PeftModel):
        # With an adapter, the base model under it *is* the reference: disable the adapter for the forward.
        def adapter_disabled(*call_args, **kwargs):
            with actor.model.disable_adapter():
                return actor(*call_args, **kwargs)

        return Reference(adapter_disabled)
    elif zero3_partitioned(actor):
        # A ZeRO-3 partitioned actor cannot be copied (each rank holds a shard): load the reference again.
        if model_path is None:
            raise ValueError(
                "Under ZeRO-3 the KL reference is loaded from the policy's checkpoint, but the policy was given "
                "as an already partitioned model object: pass the model as a path, or pass initial_model."
            )
        reference = Actor(model_path, **args.model_kwargs(), **args.log_prob_kwargs())
    else:
        reference = copy.deepcopy(actor)
    if args.cast_lm_head_to_fp32:
        cast_lm_head_to_fp32(reference.hf_model)  # a no-op on a copy of the (cast) policy
    # The KL compares the two policies over the tokens the rollout can sample.
    reference.suppressed_token_ids = list(actor.suppressed_token_ids)
    reference.requires_grad_(False)
    reference.eval()
    if args.disable_dropout:
        disable_dropout_in_model(reference)
    # TRL's way under DeepSpeed: an inference engine of the same ZeRO stage (3: sharded like the policy; below:
    # whole), whose hooks gather the shards for the reference forward.
    engine = prepare_deepspeed(reference, accelerator) if deepspeed else None
    reference = reference.to(accelerator.device)
    if accelerator.distributed_type == DistributedType.FSDP:
        # TRL's way under FSDP: the reference sharded like the policy (it is copied above, before Accelerate shards
        # the policy when training starts).
        shard_reference(reference.hf_model, accelerator)
    return Reference(reference, reference, engine)


def zero3_partitioned(module: nn.Module) -> bool:
    """Whether `module`'s parameters are partitioned by DeepSpeed ZeRO-3."""
    if not is_deepspeed_zero3_enabled():
        return False
    from deepspeed.runtime.zero.utils import is_zero_param

    return any(is_zero_param(parameter) for parameter in module.parameters())


# ------------------------------------------------------------------------------------------------ rollout engine


def build_rollout_engine(
    actor: Actor, processing_class: Any, collator: PromptCollator, args: RFTConfig, accelerator: Accelerator
):
    """The vLLM engine of `use_vllm=True` (`vllm_mode` colocate or server); `None` samples with the policy's own
    `generate`."""
    if not args.use_vllm:
        return None
    from ..rollout.vllm import VLLMColocateEngine
    from ..rollout.vllm_server import VLLMServerEngine

    tokenizer = collator.tokenizer
    common = {
        "tokenizer": tokenizer,
        "eos_token_id": actor.hf_model.generation_config.eos_token_id or tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "suppressed_token_ids": actor.media_token_ids if args.suppress_media_tokens else [],
        "structured_outputs_regex": args.vllm_structured_outputs_regex,
        "audio_sampling_rate": collator.sampling_rate,
        "chat_template_kwargs": args.chat_template_kwargs,
    }
    if args.vllm_mode == "server":
        return VLLMServerEngine(
            base_url=args.vllm_server_url(),
            timeout=args.vllm_server_timeout,
            sync_dir=args.vllm_weight_sync_dir,
            need_log_probs=True,
            is_main_process=accelerator.is_main_process,
            seed=args.seed + accelerator.process_index,  # one server, each process's own prompts and seeds
            **common,
        )
    num_processes, tp = accelerator.num_processes, args.vllm_tensor_parallel_size
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
        "seed": args.seed + accelerator.process_index // tp,
        "tensor_parallel_size": tp,
        "gpu_memory_utilization": args.vllm_gpu_memory_utilization,
        "max_model_len": args.vllm_max_model_length,
        "model_impl": args.vllm_model_impl,
        "enable_sleep_mode": args.vllm_enable_sleep_mode,
        "enforce_eager": args.vllm_enforce_eager,
        "trust_remote_code": args.model_kwargs()["trust_remote_code"],
    }
    path = engine_model_path(actor, processing_class, accelerator)
    engine = VLLMColocateEngine(
        path,
        llm_kwargs,
        num_processes=num_processes,
        tp_group=tp_group,
        seed=args.seed + accelerator.process_index,  # each process's prompts their own seeds, also within a group
        **common,
    )
    accelerator.wait_for_everyone()
    return engine


def engine_model_path(actor: Actor, processing_class: Any, accelerator: Accelerator) -> str:
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
    if not accelerator.is_main_process:
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


# ------------------------------------------------------------------------------------------------ checks


def check_rollout_func(
    rollout_func: Callable | None, media_kinds: tuple[str, ...], tools: list, async_rollouts: bool = False
) -> bool:
    """Whether the run has TRL's `rollout_func`, refusing the settings it cannot serve."""
    if rollout_func is None:
        return False
    if not callable(rollout_func):
        raise TypeError(f"rollout_func must be callable, got {type(rollout_func).__name__}.")
    if media_kinds:
        raise ValueError(
            f"rollout_func with a {'/'.join(media_kinds)} processor is not supported: it returns token ids only, and "
            "the trainer would score them without the prompts' media. Use it with a text model."
        )
    if tools:
        raise ValueError(
            "rollout_func with tools or an environment_factory is not supported: the rollout function runs the "
            "whole rollout; give its tool or environment turns as env_mask instead."
        )
    if async_rollouts:
        raise ValueError(
            "rollout_func with async_rollouts=True is not supported: the rollout function would run in a background "
            "thread beside the update, with the trainer it is given. Set async_rollouts=False."
        )
    logger.warning("rollout_func is experimental in TRL, as here: its contract may change.")
    return True


def check_streams(train_dataset, eval_dataset, args: RFTConfig) -> None:
    """TRL's rules for streaming (iterable) datasets: no batch dispatching; one loader worker for training. And ours:
    no `async_rollouts`, whose next rollout's rows are read off the sampler before the dataloader hands them over."""
    eval_sets = eval_dataset.values() if isinstance(eval_dataset, dict) else [eval_dataset]
    if args.async_rollouts and is_stream(train_dataset):
        raise ValueError(
            "async_rollouts=True needs a map-style training set: the next rollout's rows are read ahead of the "
            "dataloader, which a stream cannot do. Load the dataset without streaming, or set async_rollouts=False."
        )
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


def sync_ref_model_callback(
    args: RFTConfig, peft: bool, critic: nn.Module | None, ref_model: nn.Module, accelerator: Accelerator
) -> TrainerCallback:
    """TRL's `SyncRefModelCallback` for `sync_ref_model`, after checking it can act ([`check_sync_ref_model`])."""
    # Imported here: trl.trainer.callbacks imports the optional integrations (wandb...).
    from trl.trainer.callbacks import SyncRefModelCallback

    check_sync_ref_model(args, peft, critic)
    return SyncRefModelCallback(ref_model=ref_model, accelerator=accelerator)


def check_sync_ref_model(args: RFTConfig, peft: bool, critic: nn.Module | None) -> None:
    """TRL's conditions for `sync_ref_model`, and ours (the reference must be a model of its own, saved whole)."""
    if args.init_kl_coef == 0.0:
        raise ValueError(
            "You passed `sync_ref_model=True` while `beta=0.0`: the reference model is not used, so there is "
            "nothing to synchronize. Set `sync_ref_model=False`, or a non-zero `beta`."
        )
    if peft:
        raise ValueError(
            "`sync_ref_model=True` with a PEFT model is not supported: the reference is the base model under the "
            "adapter, not a model of its own to mix weights into. Use full fine-tuning, or sync_ref_model=False."
        )
    if critic is not None:
        raise ValueError(
            "`sync_ref_model=True` with a critic is not supported: the trained module holds the critic's weights "
            "too, which have no counterpart in the reference."
        )
    if is_deepspeed_zero3_enabled() or fsdp_enabled():
        raise ValueError(
            "`sync_ref_model=True` under ZeRO-3 or FSDP is not supported: the synced reference is saved whole in each "
            "checkpoint (for an exact resume), which a sharded reference cannot be."
        )


def check_deepspeed_saving(accelerator: Accelerator, deepspeed: bool) -> None:
    """Refuse ZeRO-3 without 16-bit gathering on save: `save_model` would write no loadable weights."""
    if not deepspeed or not is_deepspeed_zero3_enabled():
        return
    zero = accelerator.state.deepspeed_plugin.deepspeed_config["zero_optimization"]
    if not zero.get("stage3_gather_16bit_weights_on_model_save", False):
        raise ValueError(
            "ZeRO-3 without gathering the weights on save writes no model.safetensors that from_pretrained can "
            "load: set `zero3_save_16bit_model: true` in the accelerate config (DeepSpeed's "
            "stage3_gather_16bit_weights_on_model_save)."
        )


def check_packing_attention(actor: Actor, args: RFTConfig) -> None:
    """Warn when packing runs without flash_attention_2, where it is usually slower than padding."""
    implementation = actor.hf_model.config._attn_implementation
    if args.packing_samples and implementation != "flash_attention_2":
        # Packing removes padding tokens, but sdpa/eager attend over the whole packed row (block-diagonal mask): the
        # attention work grows with the pack's length squared (docs/benchmarks.md, B2/B6).
        logger.warning(
            "packing_samples=True without flash_attention_2: no padding is computed, but attention runs over the "
            "whole packed row, which is usually slower than padding on %s.",
            implementation,
        )


def verify_policy(actor: Actor, collator: PromptCollator, media_encodings: bool) -> None:
    """
    `verify_model`: the policy's log-probs through rft_trl against its own forward, before any step (padded, packed
    when packing, the encoder-output cache when the run caches).
    """
    if is_deepspeed_zero3_enabled():
        # The policy is partitioned until DeepSpeed's engine starts with training; its forward cannot run here.
        logger.info("verify_model: not run under ZeRO-3 (the policy is partitioned before training starts).")
        return
    # A cache of its own: the run's cache and its counts start clean.
    encodings = MediaEncodings(actor.model) if media_encodings else None
    verify_model(actor, collator, packing=actor.packing_samples, media_encodings=encodings)


def build_collator(
    processing_class: Any,
    layout: ProcessorLayout,
    args: RFTConfig,
    multi_turn: MultiTurn | None,
    environments: Environments | None,
) -> PromptCollator:
    """
    The run's prompt collator. With tools, prompts are rendered with their schemas (and a prefix-preserving template
    where needed); routed environments render each row with its own environment's tools.

    The tool loop processes its tool turns with the collator (the loaders and processor call of a prompt); each media
    kind a tool may answer with is checked to compose exactly on this processor
    ([`~rft_trl.rollout.observations.check_observation_kind`]).
    """
    collator = PromptCollator(
        processing_class,
        prompt_max_len=args.prompt_max_len,
        layout=layout,
        max_skip_fraction=args.max_skipped_fraction,
        chat_template_kwargs=multi_turn.chat_template_kwargs if multi_turn else args.chat_template_kwargs,
        row_tools=environments.tools_for if environments and multi_turn else None,
    )
    if multi_turn is not None:
        multi_turn.process = collator.process_text
        for kind in layout.media_kinds:
            reason = check_observation_kind(
                kind,
                processing_class,
                collator.process_text,
                multi_turn.completion_token_types,
                multi_turn.eos_token_id,
                multi_turn.chat_template_kwargs,
            )
            multi_turn.observation_kinds[kind] = reason
            if reason is None:
                logger.info("Tools may answer with %s: it composes exactly on this processor.", kind)
            else:
                logger.warning("A tool answering with %s will be refused: %s.", kind, reason)
    return collator


def build_multi_turn(
    tools: list[Callable] | None,
    environments: Environments | None,
    processing_class: Any,
    media_kinds: tuple[str, ...],
    actor: Actor,
    args: RFTConfig,
) -> MultiTurn | None:
    """
    The tool loop of `tools=` (TRL's agent API), or `None` without tools.

    The chat template must render a whole tool-calling exchange (TRL's `supports_tool_calling`) and keep earlier
    turns unchanged when later ones follow (`is_chat_template_prefix_preserving`), since tool turns are appended as
    token ids; a template that is not gets TRL's training template for the family, or is refused. Tool calls are
    parsed with the response schema TRL's `add_response_schema` sets for known templates. With `environments`, each
    sample calls the standalone `tools` and its own environment's methods through its own [`ToolBox`] (several
    environments may name a method alike).
    """
    standalone = list(tools or [])
    if not (environments.all_tools if environments is not None else standalone):
        return None
    name = type(processing_class).__name__
    if args.use_vllm and media_kinds:
        raise ValueError(
            f"tools with use_vllm=True and a {'/'.join(media_kinds)} processor ({name}) are not supported yet: a "
            "later turn's context goes to vLLM as token ids, without the media of the prompt and the tool answers. "
            "Set use_vllm=False (the policy's own generate samples every turn with its media)."
        )
    if args.use_vllm and args.vllm_mode == "colocate" and args.vllm_tensor_parallel_size > 1:
        raise ValueError(
            f"tools with vllm_tensor_parallel_size={args.vllm_tensor_parallel_size} are not supported yet: the "
            "processes sharing an engine generate together, and each runs as many tool turns as its own completions "
            "call for. Set vllm_tensor_parallel_size=1 (each process its own engine), or vllm_mode='server'."
        )
    if not supports_tool_calling(processing_class):
        raise ValueError(
            f"The chat template of {name} cannot render a tool-calling conversation (user -> assistant with "
            "tool_calls -> tool): give the tokenizer a template that renders tool calls and tool messages."
        )
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    if getattr(tokenizer, "response_template", None) is None and getattr(tokenizer, "response_schema", None) is None:
        add_response_schema(processing_class)
    kwargs = {**(args.chat_template_kwargs or {}), "tools": standalone}
    if not is_chat_template_prefix_preserving(processing_class):
        try:
            kwargs["chat_template"] = get_training_chat_template(processing_class)
        except ValueError as error:
            raise ValueError(
                f"The chat template of {name} renders an assistant turn differently once a tool turn follows it, so "
                f"a tool turn cannot be appended as token ids, and TRL has no prefix-preserving training template "
                f"for it ({error}). Give the tokenizer a prefix-preserving chat template."
            ) from error
    generation_config = actor.hf_model.generation_config
    return MultiTurn(
        tokenizer=tokenizer,
        processing_class=processing_class,
        toolbox=ToolBox(standalone),
        max_iterations=args.max_tool_calling_iterations,
        max_completion_length=args.generate_max_len,
        max_model_len=actor.hf_model.config.get_text_config().max_position_embeddings,
        eos_token_id=generation_config.eos_token_id or tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        chat_template_kwargs=kwargs,
        completion_token_types=actor.inputs.completion_token_types,
    )
