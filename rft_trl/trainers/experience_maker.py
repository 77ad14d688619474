"""Rollouts: prompts in, scored and advantaged experience out, for every modality through one path.

A rollout takes the rows of `rollout_batch_size` prompts and

1. collates them once (chat template, media processing: one processor call per unique prompt);
2. samples `n_samples_per_prompt` completions per prompt with the actor, in chunks of `micro_rollout_batch_size`,
   each sample carrying its prompt's multimodal inputs by reference (no copies, no re-processing);
3. scores the completions with the reward functions (failed rewards exclude a sample, they never score 0);
4. computes the rollout policy's log-probs (when the update is off-policy), the reference's and the critic's
   values, all in the same chunks;
5. turns rewards into advantages with the configured estimator, KL to the reference either folded into the reward
   (PPO) or left to the loss (GRPO);
6. returns the samples as replay-buffer items plus the rollout's metrics.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..core import (
    compute_advantages,
    compute_approx_kl,
    masked_mean,
    normalize_then_sum_scores,
    rollout_importance_weights,
    rollout_mismatch_metrics,
)
from ..data.collator import PromptBatch, PromptCollator, SkippedRow
from ..data.multimodal import concat_multimodal_inputs, repeat_multimodal_inputs
from ..models.actor import Actor
from ..models.media_encodings import MediaEncodings
from ..rewards import RewardScorer
from ..rollout import (
    Environments,
    HFEngine,
    MultiTurn,
    RolloutEngine,
    ToolBox,
    run_tool_turns,
)
from ..rollout.custom import run_rollout_func
from .batching import BufferItem
from .dynamic_sampling import DynamicSampling
from .metrics import rollout_metrics, sampled_mask, value_metrics
from .rft_config import RFTConfig

logger = logging.getLogger(__name__)


class EmptyBatchError(ValueError):
    """Every row of a batch was skipped as bad input: there is nothing to generate from (`skipped` says why)."""

    def __init__(self, skipped: list[SkippedRow]):
        causes = sorted({(row.reason, row.column or "-") for row in skipped})
        described = ", ".join(f"{reason} in column {column!r}" for reason, column in causes)
        super().__init__(
            f"Every row of this batch was skipped as bad input (rows {[row.row for row in skipped]}: {described})."
        )
        self.skipped = skipped


@dataclass
class Rollout:
    """
    One rollout's samples and statistics.

    Args:
        items (`list[BufferItem]`): one per sample, unpadded, in prompt-major order (prompt 0's samples first).
        metrics (`dict[str, float]`): `rollout/*` and `data/*` metrics.
        completions (`list[str]`): decoded completions, for logging.
        prompts (`list`): the prompt of each sample.
        rewards (`torch.Tensor` of shape `[N]`): combined rewards, NaN where excluded.
        kl (`float`, *optional*): the rollout policy's mean KL to the reference.
        images (`list`, *optional*): each sample's images (its row's `image` or `images`), for logging.
        extra_columns (`dict[str, list]`): the columns reward functions logged with ``log_extra``, for logging.
        reward_components (`dict[str, list[float]]`): each reward function's raw scores (NaN where it did not
            score), for logging.
    """

    items: list[BufferItem]
    metrics: dict[str, float]
    completions: list[str]
    prompts: list
    rewards: torch.Tensor
    kl: float | None = None
    images: list | None = None
    extra_columns: dict[str, list] = field(default_factory=dict)
    reward_components: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class Sampled:
    """A rollout's first generation round ([`ExperienceMaker.sample`]): what `generate_and_score` returned, and the
    collator's counts of the rows it skipped or repaired."""

    generated: tuple
    counts: dict[str, int]


class ExperienceMaker:
    """
    Turns prompt rows into scored experience (LightRFT's `NaiveExperienceMakerVL`, one class for all modalities).

    Args:
        actor ([`Actor`]): the policy (any modality).
        collator ([`PromptCollator`]): renders and processes prompts.
        reward_scorer ([`RewardScorer`]): the combined reward functions.
        args ([`RFTConfig`]): sizes, sampling and algorithm settings.
        reference_log_probs (`Callable`, *optional*): `f(sequences, num_actions, attention_mask, **mm) -> [B, A]`
            log-probs under the reference policy; `None` when no KL is used.
        critic (`nn.Module`, *optional*): returns values `[B, A]` with the actor's forward signature.
        kl_coef (`Callable[[], float]`): current KL coefficient (the controller's value).
        device (`torch.device`): where the models run.
        engine ([`RolloutEngine`], *optional*): what samples the completions; the actor's own `generate`
            ([`HFEngine`]) by default.
    """

    def __init__(
        self,
        actor: Actor,
        collator: PromptCollator,
        reward_scorer: RewardScorer,
        args: RFTConfig,
        reference_log_probs: Callable | None,
        critic: nn.Module | None,
        kl_coef: Callable[[], float],
        device: torch.device,
        engine: RolloutEngine | None = None,
    ):
        self.actor = actor
        self.collator = collator
        self.reward_scorer = reward_scorer
        self.args = args
        self.reference_log_probs = reference_log_probs
        self.critic = critic
        self.kl_coef = kl_coef
        self.device = device
        tokenizer = collator.tokenizer
        self.tokenizer = tokenizer
        self.eos_token_id = actor.hf_model.generation_config.eos_token_id or tokenizer.eos_token_id
        self.pad_token_id = tokenizer.pad_token_id
        # The policy's and a reference model's encoder outputs, computed once per prompt's media (see MediaEncodings).
        self.media_encodings = MediaEncodings(actor.model) if args.cache_encoder_outputs else None
        self.reference_encodings = (
            MediaEncodings(reference_log_probs.model)
            if args.cache_encoder_outputs and isinstance(reference_log_probs, Actor)
            else None
        )
        self.engine = engine or HFEngine(
            actor,
            args.micro_rollout_batch_size,
            device,
            args.suppress_media_tokens,
            self.pad_token_id,
            media_encodings=self.media_encodings,
        )
        # Set by the trainer with `tools`: the multi-turn loop run after each rollout's first turn.
        self.multi_turn: MultiTurn | None = None
        # Set by the trainer with `environment_factory`: one environment instance per sample.
        self.environments: Environments | None = None
        self.last_environments: list | None = None  # the last rollout's instances, one per sample
        # Set by the trainer with TRL's `rollout_func`: the user's own rollout, called with each sample's prompt.
        self.rollout_func: Callable[[list], dict] | None = None
        # Set by the trainer: False when the update is strictly on-policy and reuses its own log-probs.
        self.need_old_log_probs = True
        # Set by the trainer: its `TrainerState`, passed to reward functions as TRL does.
        self.trainer_state = None
        # DAPO's dynamic sampling: drops the groups whose rewards do not spread and refills the rollout.
        self.dynamic_sampling = (
            DynamicSampling(
                args.n_samples_per_prompt, args.rollout_batch_size, args.dynamic_sampling_max_rounds, self.pad_token_id
            )
            if args.dynamic_sampling
            else None
        )
        # Set by the trainer: sums a tensor over all processes (the identity on one process).
        self.reduce_sum: Callable[[torch.Tensor], torch.Tensor] = lambda tensor: tensor

    @torch.no_grad()
    def generate_and_score(self, rows: list[dict], n: int, sampling_kwargs: dict) -> tuple[dict, list[str], list, Any]:
        """
        Collate the rows, sample `n` completions per kept prompt and score them.

        Returns:
            `tuple`: the samples (`sequences`, `attention_mask`, `action_mask` `[N, A]`, `completion_ids`,
            `token_fields` `[N, P + A]`, per-sample `multimodal_inputs`, and `kept_rows`: the position in `rows` of
            each kept prompt), the decoded completions, each sample's prompt, and the [`RewardOutput`].
        """
        if self.rollout_func is not None:
            return self._custom_rollout(rows, n)
        instances = None
        if self.environments is not None:
            # One environment instance per sample, reset with its row (whose observation may extend the prompt):
            # each of a prompt's n samples is collated on its own and sampled once; the layout stays prompt-major.
            rows = [row for row in rows for _ in range(n)]
            instances = self.environments.draw(rows)
            rows = self.environments.reset(instances, rows)
        batch = self.collator(rows)
        if len(batch) == 0:
            raise EmptyBatchError(batch.skipped)
        if instances is not None:
            if len(batch) != len(rows):
                raise ValueError(
                    f"Rows of an environment rollout were skipped as bad input ({batch.skipped}): each sample is its "
                    "environment's episode, so every sample of the batch must be kept. Fix the rows."
                )
            samples = self._generate(batch, 1, sampling_kwargs, instances)
            samples["kept_rows"] = [position // n for position in batch.kept[::n]]
            samples["environments"] = instances  # [N]: what `trainer.environments` shows of the rollout trained
        else:
            samples = self._generate(batch, n, sampling_kwargs)
            samples["kept_rows"] = batch.kept
        repeat = 1 if instances is not None else n  # samples per collated row
        single = batch.columns.get("image") or [None] * len(batch)
        several = batch.columns.get("images") or [None] * len(batch)
        observed = [sample.get("image", []) for sample in samples.get("observations") or [{}] * len(batch) * repeat]
        if any(value is not None for value in [*single, *several]) or any(observed):
            per_row = [[one] if one is not None else list(many or []) for one, many in zip(single, several)]
            # For the completions table: each sample's prompt images, then those its tool turns returned.
            samples["images"] = [
                images + tool_images
                for images, tool_images in zip([images for images in per_row for _ in range(repeat)], observed)
            ]
        completions = self.tokenizer.batch_decode(
            torch.where(samples["action_mask"], samples["completion_ids"], self.pad_token_id),
            skip_special_tokens=True,
        )
        prompts = [p for p in batch.prompts for _ in range(repeat)]
        columns = {name: [v for v in values for _ in range(repeat)] for name, values in batch.columns.items()}
        if instances is not None:
            columns["environments"] = instances  # TRL's: reward functions see each sample's environment
        # TRL passes each completion's token ids (without padding) too; like TRL's, it shadows a column of that name.
        columns["completion_ids"] = [
            ids[mask].tolist() for ids, mask in zip(samples["completion_ids"], samples["action_mask"])
        ]
        # TRL's contract: conversational prompts get conversational completions, plain prompts plain strings; a
        # multi-turn completion is its messages (assistant turns with their tool calls, and the tool turns).
        if "conversations" in samples:
            scored = samples["conversations"]
        else:
            scored = [
                [{"role": "assistant", "content": text}] if isinstance(prompt, list) else text
                for prompt, text in zip(prompts, completions)
            ]
        rewards = self.reward_scorer(prompts, scored, trainer_state=self.trainer_state, **columns)
        return samples, completions, prompts, rewards

    def _custom_rollout(self, rows: list[dict], n: int) -> tuple[dict, list[str], list, Any]:
        """[`generate_and_score`] with TRL's `rollout_func` ([`~rft_trl.rollout.custom.run_rollout_func`])."""
        generation, prompts, columns = run_rollout_func(self.rollout_func, rows, n, self.pad_token_id)
        width = generation.sequences.shape[1]
        samples = {
            "sequences": generation.sequences.to(self.device),
            "attention_mask": generation.attention_mask.to(self.device),
            "action_mask": generation.action_mask.to(self.device),
            "completion_ids": generation.sequences[:, width - generation.action_mask.shape[1] :].to(self.device),
            "token_fields": {},
            "multimodal_inputs": [{} for _ in prompts],
            "kept_rows": list(range(len(rows))),
        }
        if generation.log_probs is not None:
            samples["rollout_log_probs"] = generation.log_probs.to(self.device)
        if generation.tool_mask is not None:
            samples["tool_mask"] = generation.tool_mask.to(self.device)
        completions = self.tokenizer.batch_decode(
            torch.where(samples["action_mask"], samples["completion_ids"], self.pad_token_id), skip_special_tokens=True
        )
        scored = [
            [{"role": "assistant", "content": text}] if isinstance(prompt, list) else text
            for prompt, text in zip(prompts, completions)
        ]
        rewards = self.reward_scorer(prompts, scored, trainer_state=self.trainer_state, **columns)
        return samples, completions, prompts, rewards

    def clear_encodings(self) -> None:
        """Forget the cached encoder outputs: new media, and the weights may have changed since they were computed."""
        for encodings in (self.media_encodings, self.reference_encodings):
            if encodings is not None:
                encodings.clear()

    @torch.no_grad()
    def sample(self, rows: list[dict], step: int) -> Sampled:
        """
        The first generation round of the rollout trained from optimizer step `step`: sampled, decoded and rewarded,
        with the collator's counts of skipped and repaired rows. What [`AsyncRollouts`] runs in its background
        thread: it touches the collator, the engine and the reward functions, none of the encoder caches.
        """
        self.engine.seed_rollout(step)
        generated = self.generate_and_score(rows, self.args.n_samples_per_prompt, self.args.sampling_kwargs())
        return Sampled(generated, {**self.collator.pop_skip_counts(), **self.collator.pop_repair_counts()})

    @torch.no_grad()
    def sample_rollout(self, rows: list[dict], step: int, sampled: Sampled | None = None) -> tuple[tuple, dict]:
        """
        The generated samples of one rollout of `rows` (one dataset row per prompt), trained from optimizer step
        `step`, and their sampling metrics: `sampled` (its first round, generated ahead) or a round sampled now,
        then dynamic sampling's rounds.
        """
        self.clear_encodings()
        if sampled is None:
            sampled = self.sample(rows, step)
        generated, metrics = sampled.generated, dict(sampled.counts)
        if self.dynamic_sampling is not None:  # groups whose rewards spread, topped up from new prompts
            n, sampling = self.args.n_samples_per_prompt, self.args.sampling_kwargs()
            self.engine.seed_rollout(step, stream=2)  # the same seeds whether the first round was sampled ahead
            generated, filled = self.dynamic_sampling.fill(
                generated,
                functools.partial(self.generate_and_score, n=n, sampling_kwargs=sampling),
                lambda tensor: self.reduce_sum(tensor.to(self.device)),
            )
            counts = {**self.collator.pop_skip_counts(), **self.collator.pop_repair_counts()}
            metrics = {name: metrics.get(name, 0) + counts.get(name, 0) for name in {*metrics, *counts}} | filled
        self.last_environments = generated[0].get("environments")
        return generated, {name: float(value) for name, value in metrics.items()}

    @torch.no_grad()
    def score_rollout(self, generated: tuple, sampling_metrics: dict) -> Rollout:
        """Score and advantage the samples of [`sample_rollout`], with its metrics."""
        rollout = self.experience_from(*generated, self.args.n_samples_per_prompt)
        rollout.metrics.update(sampling_metrics)
        return rollout

    @torch.no_grad()
    def make_experience(self, rows: list[dict], step: int = 0) -> Rollout:
        """Generate, score and advantage one rollout of `rows` (one dataset row per prompt), trained from optimizer
        step `step` (which seeds a vLLM engine's sampling)."""
        return self.score_rollout(*self.sample_rollout(rows, step))

    @torch.no_grad()
    def experience_from(self, samples: dict, completions: list[str], prompts: list, rewards_out, n: int) -> Rollout:
        """
        Score and advantage generated samples ([`generate_and_score`]'s outputs, `n` consecutive samples per
        prompt): the second half of [`make_experience`], also used on evaluation completions.
        """
        metrics = {}
        scored = self._score(samples)
        importance_weights = None
        if "rollout_log_probs" in samples:
            importance_weights, mismatch = self._rollout_correction(samples, scored["old_log_probs"])
            metrics.update(mismatch)
        advantages, returns, kl_stats = self._advantages(
            samples, scored, rewards_out.rewards, rewards_out.valid, n, rewards_out.components
        )
        trained = rewards_out.valid.to(samples["action_mask"].device)
        if self.args.mask_truncated_completions:
            trained = trained & ~self._truncated(samples)
        items = self._items(samples, scored, advantages, returns, rewards_out, trained, importance_weights)
        if self.media_encodings is not None and not self.media_encodings.frozen:
            self.media_encodings.clear()  # the update changes the encoder: its outputs serve no later pass
        metrics.update(rewards_out.metrics())
        metrics.update(rollout_metrics(samples, rewards_out, kl_stats, n, self._truncated(samples)))
        if scored["values"] is not None:
            metrics.update(value_metrics(scored["values"], returns, samples["action_mask"], rewards_out.valid))
        return Rollout(
            items,
            metrics,
            completions,
            prompts,
            rewards_out.rewards,
            kl=kl_stats.get("kl"),
            images=samples.get("images"),
            extra_columns=rewards_out.extra_columns,
            reward_components={name: scores.tolist() for name, scores in rewards_out.components.items()},
        )

    def _generate(self, batch: PromptBatch, n: int, sampling_kwargs: dict, environments: list | None = None) -> dict:
        generation = self.engine.generate(batch, n, sampling_kwargs)
        turns = None
        if self.multi_turn is not None:
            toolboxes = None
            if environments is not None:  # each sample calls its own environment instance's methods
                toolboxes = [ToolBox(self.environments.tools_of(instance)) for instance in environments]
            plain = [i for i, prompt in enumerate(batch.prompts) if not isinstance(prompt, list)]
            if plain:
                raise ValueError(
                    f"tools need conversational prompts (a list of chat messages), but the prompt of the batch's row "
                    f"{plain[0]} is plain text: the tool turns are rendered by the chat template."
                )
            turns = run_tool_turns(self.engine, batch, generation, n, sampling_kwargs, self.multi_turn, toolboxes)
            generation = turns.generation
        prompt_len = batch.input_ids.shape[1]
        width = generation.sequences.shape[1]
        samples = {
            "sequences": generation.sequences.to(self.device),  # [N, P + A]
            "attention_mask": generation.attention_mask.to(self.device),  # [N, P + A]
            "action_mask": generation.action_mask.to(self.device),  # [N, A]
            "completion_ids": generation.sequences[:, prompt_len:].to(self.device),  # [N, A]
            # A completion's tokens get the types the model's own generate gives them (text for most families,
            # PaliGemma's causal suffix), whichever engine generated them.
            "token_fields": {
                k: v.to(self.device)
                for k, v in (
                    generation.token_fields
                    if generation.token_fields is not None
                    else self.actor.inputs.extend_token_fields(
                        {name: value.repeat_interleave(n, dim=0) for name, value in batch.token_fields.items()}, width
                    )
                ).items()
            },  # each [N, P + A]
            "multimodal_inputs": (
                generation.multimodal_inputs
                if generation.multimodal_inputs is not None
                else repeat_multimodal_inputs(batch.sample_multimodal_inputs, n)
            ),
        }
        if generation.log_probs is not None:
            samples["rollout_log_probs"] = generation.log_probs.to(self.device)  # [N, A], the engine's
        if turns is not None:
            samples["tool_mask"] = generation.tool_mask.to(self.device)  # [N, A], 1 where the model sampled
            samples["conversations"] = turns.conversations
            samples["observations"] = generation.observations
            samples["tool_calls"], samples["tool_failures"] = turns.calls, turns.failures
        return samples

    def _forward_in_chunks(
        self, model: Callable, samples: dict, encodings: MediaEncodings | None = None
    ) -> torch.Tensor:
        """
        Per-action outputs `[N, A]` of `model` over the rollout, `micro_rollout_batch_size` rows at a time, given the
        encoder outputs of `encodings` (`model`'s own) where there are.
        """
        chunk = self.args.micro_rollout_batch_size
        num_rows, width = samples["action_mask"].shape
        outputs = []
        for start in range(0, num_rows, chunk):
            rows = slice(start, start + chunk)
            per_sample = samples["multimodal_inputs"][rows]
            if encodings is not None:
                mm = encodings.model_inputs(per_sample, self.device)
            else:
                mm = {k: v.to(self.device) for k, v in concat_multimodal_inputs(per_sample).items()}
            sequences, attention_mask = samples["sequences"][rows], samples["attention_mask"][rows]
            tokens = {k: v[rows] for k, v in samples["token_fields"].items()}
            if self.args.packing_samples:
                outputs.append(
                    self._packed_forward(model, sequences, attention_mask, samples["action_mask"][rows], tokens, mm)
                )
            else:
                outputs.append(model(sequences, width, attention_mask, **tokens, **mm))
        return torch.cat(outputs)

    @staticmethod
    def _packed_forward(model, sequences, attention_mask, action_mask, token_fields, mm) -> torch.Tensor:
        """
        The rows' real tokens laid end to end (no padding computed), outputs scattered back to `[B, A]`.

        Each row is `[left pad | prompt | completion | right pad]` with `attention_mask` 1 exactly on prompt and
        completion, and the completion's first `action_mask.sum()` tokens are its actions.
        """
        keep = attention_mask.bool()
        packed = sequences[keep][None]  # [1, T]
        tokens = {name: value[keep][None] for name, value in token_fields.items()}  # each [1, T]
        lengths = keep.sum(-1).tolist()
        num_actions = action_mask.sum(-1).tolist()
        values = model(packed, num_actions, None, packed_seq_lens=lengths, **tokens, **mm)  # [1, sum(num_actions)]
        out = torch.zeros(action_mask.shape, dtype=values.dtype, device=values.device)  # [B, A]
        out[action_mask.bool()] = values.flatten()
        return out

    def _score(self, samples: dict) -> dict:
        scored = {"old_log_probs": None, "base_log_probs": None, "values": None}
        temperature = self.args.temperature
        # With an engine's own log-probs (vLLM), the trainer's are always recomputed, as in TRL: the update's ratio is
        # taken against them, and their difference to the engine's is the mismatch to measure and correct.
        if self.need_old_log_probs or "rollout_log_probs" in samples:
            scored["old_log_probs"] = self._forward_in_chunks(
                lambda *a, **k: self.actor(*a, temperature=temperature, **k), samples, self.media_encodings
            )
        if self.reference_log_probs is not None:
            scored["base_log_probs"] = self._forward_in_chunks(
                lambda *a, **k: self.reference_log_probs(*a, temperature=temperature, **k),
                samples,
                self.reference_encodings,
            )
        if self.critic is not None:
            scored["values"] = self._forward_in_chunks(self.critic, samples)
        return scored

    def _rollout_correction(self, samples: dict, log_probs: torch.Tensor) -> tuple[torch.Tensor | None, dict]:
        """The importance-sampling weights `[N, A]` (`None` without the correction) and the mismatch metrics."""
        args = self.args
        mask = sampled_mask(samples)
        rollout_log_probs = samples["rollout_log_probs"]
        weights = None
        if args.vllm_importance_sampling_correction:
            weights = rollout_importance_weights(
                log_probs,
                rollout_log_probs,
                mask,
                mode=args.vllm_importance_sampling_mode,
                clip_min=args.vllm_importance_sampling_clip_min,
                clip_max=args.vllm_importance_sampling_clip_max,
            )
        metrics = rollout_mismatch_metrics(
            log_probs, rollout_log_probs, mask, weights, args.vllm_importance_sampling_mode
        )
        return weights, metrics

    def _advantages(
        self,
        samples: dict,
        scored: dict,
        rewards: torch.Tensor,
        valid: torch.Tensor,
        group_size: int,
        components: dict[str, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        action_mask = samples["action_mask"]
        base, old = scored["base_log_probs"], scored["old_log_probs"]
        stats = {}
        kl = None
        if base is not None:
            # The KL of the rollout policy to the reference, for the controller and the logs; with an on-policy
            # update `old` is not computed and the update's own log-probs are taken as the rollout policy's.
            policy = (
                old
                if old is not None
                else self._forward_in_chunks(
                    lambda *a, **k: self.actor(*a, temperature=self.args.temperature, **k),
                    samples,
                    self.media_encodings,
                )
            )
            sampled = sampled_mask(samples)  # the KL of the policy's own tokens, never of inserted tool turns
            kl = compute_approx_kl(policy, base, sampled, kl_estimator=self.args.kl_estimator)  # [N, A]
            stats["kl"] = masked_mean(kl, sampled & valid[:, None].to(action_mask.device)).item()
        baselined = self.args.multi_objective_aggregation == "normalize_then_sum"
        if baselined:
            rewards = self._normalize_then_sum(components, valid, group_size)
        advantages, returns = compute_advantages(
            self.args.advantage_estimator,
            rewards.to(action_mask.device).nan_to_num(0.0),
            action_mask,
            group_size=group_size,
            values=scored["values"] if self.args.advantage_estimator == "gae" else None,
            # PPO-style: the KL to the reference is a per-token reward penalty; GRPO-style it is a loss term.
            kl=None if self.args.use_kl_loss else kl,
            kl_coef=0.0 if self.args.use_kl_loss else self.kl_coef(),
            gamma=self.args.gamma,
            lambd=self.args.lambd,
            valid=valid.to(action_mask.device),
            eps=self.args.advantage_std_eps,
            reward_std=self._batch_reward_std(rewards, valid)
            if self.args.scale_rewards == "batch" and not baselined
            else None,
            baselined=baselined,
        )
        return advantages, returns, stats

    def _normalize_then_sum(self, components: dict[str, torch.Tensor], valid: torch.Tensor, group_size: int):
        """
        TRL's `normalize_then_sum` (GDPO): each function's rewards normalised per group, weighted and summed, then
        normalised over the whole batch (all processes): the samples' advantages.
        """
        weights = torch.tensor(self.reward_scorer.reward_weights, dtype=torch.float64)
        eps = self.args.advantage_std_eps
        summed = normalize_then_sum_scores(
            torch.stack(list(components.values()), -1).double(), weights, group_size, eps=eps
        )
        mean, std = self._batch_mean_std(summed, valid)
        return ((summed - mean) / (std + eps)).float()

    def _batch_reward_std(self, rewards: torch.Tensor, valid: torch.Tensor) -> float:
        """The unbiased standard deviation of the valid rewards over all processes (TRL's `scale_rewards="batch"`)."""
        return self._batch_mean_std(rewards, valid)[1]

    def _batch_mean_std(self, values: torch.Tensor, valid: torch.Tensor) -> tuple[float, float]:
        """The mean and unbiased standard deviation (0 below two values) of the valid `values` over all processes."""
        kept = values[valid.to(values.device)].double()
        local = torch.stack([kept.sum(), kept.square().sum(), torch.tensor(float(kept.numel()), dtype=torch.float64)])
        total, squares, count = self.reduce_sum(local.to(self.device)).tolist()
        mean = total / max(count, 1.0)
        std = math.sqrt(max((squares - total * mean) / (count - 1), 0.0)) if count > 1 else 0.0
        return mean, std

    def _truncated(self, samples: dict) -> torch.Tensor:
        """`[N]` bool: completions that reached `generate_max_len` without an EOS (cut off, not finished)."""
        action_mask, completion = samples["action_mask"], samples["completion_ids"]
        lengths = action_mask.sum(-1)  # [N]
        last = completion.gather(1, (lengths - 1).clamp(min=0)[:, None]).squeeze(1)  # [N]
        eos = torch.as_tensor(self.eos_token_id, device=last.device).flatten()
        return (lengths >= self.args.generate_max_len) & ~torch.isin(last, eos)

    def _items(
        self,
        samples: dict,
        scored: dict,
        advantages: torch.Tensor,
        returns: torch.Tensor,
        rewards_out,
        trained: torch.Tensor,
        importance_weights: torch.Tensor | None = None,
    ) -> list[BufferItem]:
        """
        One unpadded item per row. Row i is `[left pad | prompt | actions | right pad]`, its actions a prefix of its
        completion (cut after the first EOS), so its tokens are `sequences[i, P - prompt_len_i : P + actions_i]` and
        its action fields `[:actions_i]`, where `P` is the prompt width.
        """
        action_mask, attention_mask = samples["action_mask"], samples["attention_mask"]
        prompt_width = attention_mask.shape[1] - action_mask.shape[1]
        response_length = action_mask.sum(-1)  # [N]
        total_length = attention_mask.sum(-1)  # [N]
        prompt_length = attention_mask[:, :prompt_width].sum(-1)  # [N]
        # Every row's bounds in one host read: reading them row by row would synchronise with the device per sample.
        bounds = torch.stack([prompt_length, response_length], dim=1).tolist()  # [N, 2]
        items = []
        for i, (prompt_len, num_actions) in enumerate(bounds):
            tokens = slice(prompt_width - prompt_len, prompt_width + num_actions)

            def actions(t, i=i, num_actions=num_actions):
                return None if t is None else t[i, :num_actions]

            info = {
                "reward": rewards_out.rewards[i],  # NaN for an excluded sample, never 0
                # An excluded sample (failed reward, or truncated with mask_truncated_completions) keeps its tokens;
                # the loss masks it out by this flag.
                "valid": trained[i].float(),
                "response_length": response_length[i].float(),
                "total_length": total_length[i].float(),
            }
            items.append(
                BufferItem(
                    sequences=samples["sequences"][i, tokens],
                    action_log_probs=actions(scored["old_log_probs"]),
                    base_action_log_probs=actions(scored["base_log_probs"]),
                    values=actions(scored["values"]),
                    returns=actions(returns),
                    advantages=actions(advantages),
                    attention_mask=attention_mask[i, tokens],
                    action_mask=actions(action_mask),
                    importance_weights=actions(importance_weights),
                    tool_mask=actions(samples.get("tool_mask")),
                    info=info,
                    multimodal_inputs=samples["multimodal_inputs"][i],
                    token_fields={name: value[i, tokens] for name, value in samples["token_fields"].items()},
                )
            )
        return items
