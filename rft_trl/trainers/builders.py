"""Building what a run trains and scores with, each from the run's one settings path ([`RFTConfig.model_kwargs`]):
the processor, the policy ([`Actor`]), the critic and TRL's reward models given by path."""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import AutoProcessor, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from trl.trainer.utils import disable_dropout_in_model

from ..data.multimodal import ProcessorLayout
from ..models.actor import Actor
from ..models.critic import Critic
from ..models.fsdp import fsdp_enabled
from ..models.utils import cast_lm_head_to_fp32, load_pretrained_model, unwrap_model
from .rft_config import RFTConfig

__all__ = ["build_actor", "build_critic", "load_processing_class", "load_reward_models"]


def load_processing_class(model, args: RFTConfig):
    """The processor (or tokenizer) saved with the model: from its path, or from the path a model object was
    loaded from (as TRL does)."""
    if isinstance(model, str):
        source = model
    else:
        hf_model = model.hf_model if isinstance(model, Actor) else unwrap_model(model)
        source = hf_model.config._name_or_path
        if not source:
            raise ValueError(
                f"{type(hf_model).__name__} was not loaded from a path, so its processor cannot be found: pass "
                "processing_class (the model's processor or tokenizer)."
            )
    return AutoProcessor.from_pretrained(source, trust_remote_code=args.trust_remote_code)


def load_reward_models(
    funcs: list, reward_processing_classes: Any, args: RFTConfig
) -> tuple[list, list[PreTrainedTokenizerBase | None]]:
    """
    TRL's reward models: an entry that is a model id or local path (not an http(s) URL) is loaded as
    `AutoModelForSequenceClassification.from_pretrained(..., num_labels=1)` with the run's model settings
    ([`RFTConfig.model_kwargs`]: dtype, `model_init_kwargs`, `trust_remote_code`); each model gets
    its tokenizer from `reward_processing_classes` (one per reward function, or a single one for a single
    function) or from the model's own path.

    Returns:
        `tuple`: the reward functions with the models loaded, and one tokenizer per function (`None` for those
        that are not models).
    """
    funcs = list(funcs)
    for index, func in enumerate(funcs):
        if isinstance(func, str) and not func.startswith(("http://", "https://")):
            settings = args.model_kwargs()
            funcs[index] = load_pretrained_model(
                func,
                head="sequence_classification",
                num_labels=1,
                bf16=settings["bf16"],
                trust_remote_code=settings["trust_remote_code"],
                init_kwargs=settings["model_init_kwargs"],
            )
    if reward_processing_classes is None:
        tokenizers = [None] * len(funcs)
    elif isinstance(reward_processing_classes, (list, tuple)):
        tokenizers = list(reward_processing_classes)
    else:
        tokenizers = [reward_processing_classes]
    if len(tokenizers) != len(funcs):
        raise ValueError(
            f"The number of reward processing classes ({len(tokenizers)}) must match the number of reward "
            f"functions ({len(funcs)}): one per function (None for the functions that are not models)."
        )
    for index, (func, tokenizer) in enumerate(zip(funcs, tokenizers)):
        if isinstance(func, PreTrainedModel):
            if tokenizer is None:
                source = func.config._name_or_path
                if not source:
                    raise ValueError(
                        f"reward model {index} ({type(func).__name__}) was not loaded from a path, so its "
                        "tokenizer cannot be found: pass it in reward_processing_classes."
                    )
                tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=args.trust_remote_code)
            tokenizers[index] = tokenizer
        elif tokenizer is not None:
            raise ValueError(
                f"reward_processing_classes[{index}] is given, but reward function {index} is not a "
                "sequence-classification model, which alone uses one: pass None at that position."
            )
    return funcs, tokenizers


def build_actor(model, layout: ProcessorLayout, args: RFTConfig, peft_config) -> Actor:
    if isinstance(model, Actor):
        if args.model_init_kwargs:
            raise ValueError("model_init_kwargs apply when the model is given as a path; this actor is built.")
        # A built actor keeps its own log-prob settings; fused_log_probs=False turns the fused path off.
        model.fused_log_probs = model.fused_log_probs and args.fused_log_probs
        # Never sample the tokens media bring into a prompt, whatever the actor was built with.
        model.extra_media_token_ids = sorted(set(model.extra_media_token_ids) | set(layout.media_token_ids))
        actor = model
    else:
        actor = Actor(
            model,
            peft_config=peft_config,
            packing_samples=args.packing_samples,
            freeze_encoder=args.freeze_encoder,
            media_token_ids=list(layout.media_token_ids),
            **args.model_kwargs(),  # a built model with model_init_kwargs is refused, as in TRL
            **args.log_prob_kwargs(),
        )
    # Actions are scored under the distribution they are sampled from: what generation never emits has
    # probability zero in the rollout's, the reference's and the update's log-probs alike.
    never_sampled = set((args.generation_kwargs or {}).get("suppress_tokens") or ())
    if args.suppress_media_tokens:
        never_sampled |= set(actor.media_token_ids)
    actor.suppressed_token_ids = sorted(never_sampled)
    if args.disable_dropout:
        disable_dropout_in_model(actor)
    if args.cast_lm_head_to_fp32:
        if is_deepspeed_zero3_enabled():
            raise ValueError("cast_lm_head_to_fp32=True is not supported under ZeRO-3 (a partitioned LM head).")
        if fsdp_enabled():
            raise ValueError(
                "cast_lm_head_to_fp32=True is not supported under FSDP: FSDP2 shards the head with the embeddings as "
                "one group, whose parameters must share one dtype. Set cast_lm_head_to_fp32=False."
            )
        cast_lm_head_to_fp32(actor.hf_model)
    return actor


def build_critic(critic, actor: Actor, args: RFTConfig) -> nn.Module | None:
    if critic is not None and args.advantage_estimator != "gae":
        raise ValueError(
            f"A critic is only used by advantage_estimator='gae' (got {args.advantage_estimator!r}); drop the "
            f"critic or set advantage_estimator='gae'."
        )
    if isinstance(critic, nn.Module):
        return critic
    if critic is None and args.advantage_estimator != "gae":
        return None
    # GAE needs values: a critic initialised from the given path, or else from the actor's weights.
    return Critic(
        critic if isinstance(critic, str) else actor,
        packing_samples=args.packing_samples,
        freeze_encoder=args.freeze_encoder,
        **args.model_kwargs(from_path=isinstance(critic, str)),
    )
