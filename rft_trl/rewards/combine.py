"""Score a batch with several reward functions, combine the scores, and keep failures from becoming rewards.

A failed reward (the function raised, returned NaN, Inf or a non-number, or the wrong number of scores) excludes its
sample from the update instead of scoring it 0: a 0 would read as "wrong answer" and push the policy away from
what may have been a good completion. [`RewardOutput`] carries the NaN-marked rewards, a validity mask and the
failure counts; when too many samples fail, [`RewardFailureError`] stops the run with the first traceback.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import math
import numbers
import traceback
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from trl.trainer.utils import get_callable_name

from .errors import BatchRewardError, RewardFailureError
from .remote import RemoteRewardModel

logger = logging.getLogger(__name__)

# The dataset column whose values select a reward_recipe entry per sample.
LABEL_COLUMN = "label"
# Scores that are neither numbers nor None are quoted in failure messages up to this many characters.
_REPR_LIMIT = 80


@dataclass(frozen=True)
class RewardFailure:
    """
    One failed reward: which function, which sample, and why.

    Args:
        component (`str`): the reward function's name.
        sample_index (`int` or `None`): the sample's index in the batch, or `None` when the whole batch failed at
            once (wrong number of scores, [`BatchRewardError`]).
        error_type (`str`): the exception's class name, or ``"InvalidScore"`` for a ``None`` / non-finite /
            non-numeric score.
        message (`str`): the exception's message or a description of the invalid score.
        traceback (`str`, *optional*, defaults to `""`): the formatted traceback, when an exception was raised.
    """

    component: str
    sample_index: int | None
    error_type: str
    message: str
    traceback: str = ""

    def describe(self) -> str:
        """A readable account of the failure, with the traceback when there is one."""
        where = "the whole batch" if self.sample_index is None else f"sample {self.sample_index}"
        text = f"reward function '{self.component}' failed on {where}: {self.error_type}: {self.message}"
        return f"{text}\n{self.traceback}" if self.traceback else text


@dataclass
class RewardOutput:
    """
    The scores of one batch.

    Args:
        rewards (`torch.FloatTensor` of shape `(N,)`): the combined reward per sample, NaN where the sample is
            excluded.
        valid (`torch.BoolTensor` of shape `(N,)`): `False` where a reward function with a non-zero weight failed
            for the sample; such samples must be left out of advantages and losses.
        components (`dict[str, torch.FloatTensor]`): each reward function's raw (unweighted) scores, shape `(N,)`,
            NaN where it failed, returned None (not applicable) or, with a `reward_recipe`, where the sample's label
            does not use it.
        failures (`dict[str, int]`): per reward function, the number of samples it failed on.
        first_failure (`RewardFailure` or `None`): the first failure met in this batch.
        abstained (`torch.BoolTensor` of shape `(N,)`, *optional*): samples every function returned None for; they
            are excluded too (`valid=False`) but are not failures.
        extra_columns (`dict[str, list]`): columns the functions logged with ``log_extra``, N values each (`None`
            for the samples a column was not logged for), for the completions table.
        logged_metrics (`dict[str, float]`): scalars the functions logged with ``log_metric``, each the mean of the
            values logged for this batch.
    """

    rewards: torch.Tensor
    valid: torch.Tensor
    components: dict[str, torch.Tensor]
    failures: dict[str, int]
    first_failure: RewardFailure | None
    abstained: torch.Tensor | None = None
    extra_columns: dict[str, list] = field(default_factory=dict)
    logged_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def num_abstained(self) -> int:
        """The number of samples no reward function applied to (all returned None)."""
        return 0 if self.abstained is None else int(self.abstained.sum())

    @property
    def num_excluded(self) -> int:
        """The number of samples excluded because of a failed reward."""
        return int((~self.valid).sum()) - self.num_abstained

    def metrics(self) -> dict[str, float]:
        """
        Scalar metrics for the Trainer's ``log``.

        Returns:
            `dict[str, float]`: ``rollout/reward_failures`` (excluded samples), ``rollout/reward_failures/<name>``
            (samples each function failed on), ``rollout/reward_abstained`` (samples no function applied to),
            ``rewards/<name>/mean`` and ``rewards/<name>/std`` (TRL's names: each function's raw scores over the
            valid samples it scored; absent when there is none) and, under their own names, the metrics logged
            with ``log_metric``.
        """
        metrics = {
            "rollout/reward_failures": float(self.num_excluded),
            "rollout/reward_abstained": float(self.num_abstained),
        }
        for name, count in self.failures.items():
            metrics[f"rollout/reward_failures/{name}"] = float(count)
        for name, scores in self.components.items():
            kept = scores[self.valid & scores.isfinite()]
            if kept.numel() > 0:
                metrics[f"rewards/{name}/mean"] = kept.mean().item()
                metrics[f"rewards/{name}/std"] = kept.std().item() if kept.numel() > 1 else 0.0
        metrics.update(self.logged_metrics)
        return metrics


def reward_func_name(reward_func: Callable) -> str:
    """
    The name a reward function is logged and referred to by: ``"remote"`` for a [`RemoteRewardModel`], else TRL's
    name: its ``__name__`` (seen through ``functools.partial``; reward-model wrappers set one), else the class name
    of a callable object.
    """
    if isinstance(reward_func, RemoteRewardModel):
        return "remote"
    return get_callable_name(reward_func)


class RewardScorer:
    """
    Scores completions with a list of reward functions and combines the scores into one reward per sample.

    A reward function follows TRL's contract, ``f(prompts=..., completions=..., **columns) -> list[float | None]``:
    every dataset column other than the prompt arrives as a keyword list aligned with the completions. A callable
    object with that ``__call__`` (a reward-model wrapper) works the same way, and a string ``http(s)://...`` URL
    becomes a [`RemoteRewardModel`].

    Without a recipe the reward is TRL's weighted sum, ``sum_i reward_weights[i] * f_i``. With a recipe, each
    sample's ``label`` column selects which functions score it and with what weights, as LightRFT's
    ``reward_recipe`` does; a function is then only called on the samples whose recipe uses it.

    ``None`` means "this function does not apply to this sample" (TRL's contract): the sample's reward is the
    weighted sum of the functions that did score it, and a sample no function scored is excluded and counted
    (``rollout/reward_abstained``), with a warning. Async functions are run to completion.

    Failures never turn into rewards. A function that raises on the batch is called again sample by sample, so
    one bad sample fails alone (unless it raised [`BatchRewardError`]); a NaN or Inf score fails that sample; a
    wrong number of scores fails the whole batch for that function. A sample is excluded (``valid=False``, reward
    NaN) when any function with a non-zero weight failed on it.

    Args:
        reward_funcs (`Callable`, `str` or `list` of them): the reward functions.
        reward_weights (`list[float]`, *optional*, defaults to `None`): one weight per reward function, 1.0 each
            when `None`. Not allowed together with `reward_recipe`, which carries its own weights.
        reward_recipe (`dict[Hashable, list[tuple[str, float]]]`, *optional*, defaults to `None`): maps each value of
            the ``label`` column to the ``(reward function name, weight)`` pairs that score samples with that
            label. LightRFT's recipe entries are ``(kind, model key, weight)`` triples; here rule functions and
            models are all named reward functions, so a pair suffices. Every label met must be in the recipe
            and every reward function must be used by some label.
        reward_fn_label_map (`dict[str, int]`, *optional*, defaults to `None`): maps a name to an index in
            `reward_funcs`, as LightRFT's maps a reward type to a reward model; the names replace the derived
            ones (see [`reward_func_name`]) in recipes and metrics. It must name every reward function exactly
            once. Needed when two reward functions derive the same name (two remote models, say).
        max_reward_failure_rate (`float`, *optional*, defaults to `0.5`): the largest fraction of excluded samples
            a batch may have; above it, [`RewardFailureError`] is raised. 1.0 never raises.
    """

    def __init__(
        self,
        reward_funcs: Callable | str | Sequence[Callable | str],
        reward_weights: Sequence[float] | None = None,
        reward_recipe: Mapping[Any, Sequence[tuple[str, float]]] | None = None,
        reward_fn_label_map: Mapping[str, int] | None = None,
        max_reward_failure_rate: float = 0.5,
    ) -> None:
        funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        if not funcs:
            raise ValueError("reward_funcs is empty: pass at least one reward function")
        self.reward_funcs = [_resolve_reward_func(func) for func in funcs]
        self.names = _component_names(self.reward_funcs, reward_fn_label_map)
        if reward_recipe is not None and reward_weights is not None:
            raise ValueError(
                "pass either reward_weights or reward_recipe, not both: the recipe holds the weights per label"
            )
        self.reward_weights = _check_weights(reward_weights, len(self.reward_funcs))
        self.reward_recipe = None if reward_recipe is None else _check_recipe(reward_recipe, self.names)
        if not 0.0 <= max_reward_failure_rate <= 1.0:
            raise ValueError(f"max_reward_failure_rate must be in [0, 1], got {max_reward_failure_rate}")
        self.max_reward_failure_rate = max_reward_failure_rate

    def __call__(
        self, prompts: Sequence, completions: Sequence, trainer_state: Any = None, **columns: Sequence
    ) -> RewardOutput:
        """
        Score a batch.

        Each reward function is called as TRL calls it: ``f(prompts=..., completions=..., **columns,
        trainer_state=..., log_extra=..., log_metric=...)``, with ``log_extra(column, values)`` adding a column
        (one value per sample it was given) to the completions table and ``log_metric(name, value)`` logging a
        scalar. What a call logs is kept only if the call succeeds.

        Args:
            prompts (`list`): N prompts, strings or chat-message lists.
            completions (`list`): N completions, strings or chat-message lists.
            trainer_state (`transformers.TrainerState`, *optional*): passed to every function as is, for reward
                shaping by training progress.
            **columns (`list`): the other dataset columns (and ``completion_ids``), N values each.

        Returns:
            [`RewardOutput`]: rewards, validity, per-function scores and failures.

        Raises:
            ValueError: if the lengths disagree, or with a recipe, if the ``label`` column is missing or holds a
                label the recipe lacks.
            RewardFailureError: if more than ``max_reward_failure_rate`` of the samples are excluded.
        """
        num_samples = len(completions)
        _check_lengths(num_samples, prompts, columns)
        weights, used = self._sample_weights(columns, num_samples)
        num_funcs = len(self.reward_funcs)
        scores = torch.full((num_samples, num_funcs), float("nan"))  # [N, C]
        failed = torch.zeros((num_samples, num_funcs), dtype=torch.bool)  # [N, C]
        first_failure = None
        logs = _RewardLogs(num_samples, trainer_state)
        for index, (name, func) in enumerate(zip(self.names, self.reward_funcs)):
            sample_indices = used[:, index].nonzero().flatten().tolist()
            if not sample_indices:
                continue
            values, failed_indices, failure = _score_component(
                name, func, sample_indices, prompts, completions, columns, logs
            )
            scores[sample_indices, index] = torch.tensor(values, dtype=scores.dtype)
            failed[failed_indices, index] = True
            first_failure = first_failure or failure
            if failed_indices:
                logger.warning(
                    "reward function '%s' failed on %d of %d samples; first: %s",
                    name,
                    len(failed_indices),
                    len(sample_indices),
                    failure.describe(),
                )

        weighted = used & (weights != 0)  # [N, C]
        scored = weighted & ~failed & ~scores.isnan()  # [N, C]: None (not applicable) leaves a NaN, not a failure
        failed_sample = (failed & weighted).any(dim=1)  # [N]
        abstained = ~failed_sample & ~scored.any(dim=1) & weighted.any(dim=1)  # [N]: no function applied
        valid = ~failed_sample & ~abstained  # [N]
        combined = torch.where(scored, scores * weights, 0.0).sum(dim=1)  # [N]
        if abstained.any():
            first = int(abstained.nonzero()[0, 0])
            shown = {"prompt": prompts[first], "completion": completions[first]}
            shown.update({key: values[first] for key, values in columns.items()})
            logger.warning(
                "All reward functions returned None for the following kwargs:\n%s\n%d of %d samples had no reward "
                "and are excluded from the loss (rollout/reward_abstained). Please ensure that at least one reward "
                "function returns a valid reward for every sample.",
                _shorten(repr(shown), 1000),
                int(abstained.sum()),
                num_samples,
            )
        output = RewardOutput(
            rewards=torch.where(valid, combined, float("nan")),
            valid=valid,
            components={name: scores[:, index] for index, name in enumerate(self.names)},
            failures={name: int(failed[:, index].sum()) for index, name in enumerate(self.names)},
            first_failure=first_failure,
            abstained=abstained,
            extra_columns=logs.columns,
            logged_metrics={name: sum(values) / len(values) for name, values in logs.metrics.items()},
        )
        self._check_failure_rate(output, num_samples)
        return output

    def _sample_weights(self, columns: Mapping[str, Sequence], num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample weights `(N, C)` and the mask `(N, C)` of which function scores which sample."""
        num_funcs = len(self.reward_funcs)
        if self.reward_recipe is None:
            weights = torch.tensor(self.reward_weights, dtype=torch.float32).expand(num_samples, num_funcs).clone()
            return weights, torch.ones((num_samples, num_funcs), dtype=torch.bool)
        if LABEL_COLUMN not in columns:
            raise ValueError(
                f"reward_recipe selects reward functions by the '{LABEL_COLUMN}' column, which this batch lacks "
                f"(columns: {sorted(columns)})"
            )
        labels = columns[LABEL_COLUMN]
        unknown = sorted({repr(label) for label in labels if label not in self.reward_recipe})
        if unknown:
            raise ValueError(
                f"labels {', '.join(unknown)} have no reward_recipe entry; known labels: "
                f"{sorted(repr(label) for label in self.reward_recipe)}"
            )
        weights = torch.zeros((num_samples, num_funcs))
        used = torch.zeros((num_samples, num_funcs), dtype=torch.bool)
        for sample, label in enumerate(labels):
            for name, weight in self.reward_recipe[label].items():
                weights[sample, self.names.index(name)] = weight
                used[sample, self.names.index(name)] = True
        return weights, used

    def _check_failure_rate(self, output: RewardOutput, num_samples: int) -> None:
        if num_samples == 0:
            return
        rate = output.num_excluded / num_samples
        if rate > self.max_reward_failure_rate:
            raise RewardFailureError(
                f"{output.num_excluded} of {num_samples} samples ({rate:.1%}) have a failed reward, above "
                f"max_reward_failure_rate={self.max_reward_failure_rate}. Failed samples per reward function: "
                f"{output.failures}. First failure: {output.first_failure.describe()}",
                output,
            )


def _resolve_reward_func(reward_func: Callable | str) -> Callable:
    if isinstance(reward_func, str):
        if reward_func.startswith(("http://", "https://")):
            return RemoteRewardModel(reward_func)
        raise ValueError(
            f"reward function {reward_func!r} is a string but not an http(s) URL; PPOTrainerVL loads a model id or "
            "path as a sequence-classification reward model, RewardScorer takes callables and URLs only"
        )
    if not callable(reward_func):
        raise TypeError(f"reward function {reward_func!r} is not callable")
    call = reward_func if inspect.isroutine(reward_func) else type(reward_func).__call__
    if inspect.iscoroutinefunction(call):
        return _SyncFromAsync(reward_func)
    return reward_func


class _SyncFromAsync:
    """An async reward function called synchronously: its coroutine runs to completion in an event loop of its own
    (in a worker thread, so that it also works where a loop is already running, e.g. in a notebook)."""

    def __init__(self, func: Callable):
        self.func = func
        self.__name__ = reward_func_name(func)

    def __call__(self, *args, **kwargs):
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, self.func(*args, **kwargs)).result()


def _component_names(reward_funcs: list[Callable], label_map: Mapping[str, int] | None) -> list[str]:
    if label_map is None:
        names = [reward_func_name(func) for func in reward_funcs]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(
                f"reward functions share the names {duplicates}; pass reward_fn_label_map (name -> index in "
                "reward_funcs) to name them apart"
            )
        return names
    indices = sorted(label_map.values())
    if indices != list(range(len(reward_funcs))) or not all(isinstance(key, str) for key in label_map):
        raise ValueError(
            f"reward_fn_label_map must map a string name to each index 0..{len(reward_funcs) - 1} of reward_funcs "
            f"exactly once, got {dict(label_map)}"
        )
    names = [""] * len(reward_funcs)
    for name, index in label_map.items():
        names[index] = name
    return names


def _check_weights(reward_weights: Sequence[float] | None, num_funcs: int) -> list[float]:
    if reward_weights is None:
        return [1.0] * num_funcs
    if len(reward_weights) != num_funcs:
        raise ValueError(f"got {len(reward_weights)} reward_weights for {num_funcs} reward functions")
    if not all(isinstance(w, numbers.Real) and math.isfinite(w) for w in reward_weights):
        raise ValueError(f"reward_weights must be finite numbers, got {list(reward_weights)}")
    return [float(w) for w in reward_weights]


def _check_recipe(recipe: Mapping[Any, Sequence[tuple[str, float]]], names: list[str]) -> dict[Any, dict[str, float]]:
    checked = {}
    for label, entries in recipe.items():
        if len(entries) == 0:
            raise ValueError(f"reward_recipe[{label!r}] is empty: give it at least one (name, weight) pair")
        checked[label] = {}
        for entry in entries:
            if len(entry) != 2:
                raise ValueError(f"reward_recipe[{label!r}] entries must be (name, weight) pairs, got {entry!r}")
            name, weight = entry
            if name not in names:
                raise ValueError(f"reward_recipe[{label!r}] names '{name}', not one of the reward functions {names}")
            if name in checked[label]:
                raise ValueError(f"reward_recipe[{label!r}] names '{name}' twice")
            if not (isinstance(weight, numbers.Real) and math.isfinite(weight)):
                raise ValueError(f"reward_recipe[{label!r}] gives '{name}' the weight {weight!r}, not a finite number")
            checked[label][name] = float(weight)
    unused = [name for name in names if not any(name in entries for entries in checked.values())]
    if unused:
        raise ValueError(f"reward functions {unused} are used by no reward_recipe label; drop them or add them")
    return checked


def _check_lengths(num_samples: int, prompts: Sequence, columns: Mapping[str, Sequence]) -> None:
    if len(prompts) != num_samples:
        raise ValueError(f"got {len(prompts)} prompts for {num_samples} completions")
    for key, values in columns.items():
        if len(values) != num_samples:
            raise ValueError(f"column '{key}' has {len(values)} values for {num_samples} completions")


def _take(values: Sequence, indices: list[int]) -> list:
    return [values[i] for i in indices]


class _RewardLogs:
    """What reward functions log through ``log_extra`` and ``log_metric`` over one batch.

    [`hooks`] gives one call its keyword arguments; what that call logs lands in [`columns`] and [`metrics`] only
    when [`commit`] is called for it, so that a call that raised (and is then retried sample by sample) logs nothing.
    """

    def __init__(self, num_samples: int, trainer_state: Any) -> None:
        self.num_samples = num_samples
        self.trainer_state = trainer_state
        self.columns: dict[str, list] = {}
        self.metrics: dict[str, list[float]] = defaultdict(list)

    def hooks(self, indices: list[int]) -> tuple[dict[str, Any], Callable[[], None]]:
        """The call's ``trainer_state``, ``log_extra`` and ``log_metric`` keyword arguments, and its commit."""
        pending_columns: list[tuple[str, list]] = []
        pending_metrics: list[tuple[str, float]] = []

        def log_extra(column: str, values: Sequence) -> None:
            values = list(values)
            if len(values) != len(indices):
                raise ValueError(
                    f"log_extra('{column}', values) got {len(values)} values for the {len(indices)} samples this "
                    "call scores; log one value per sample"
                )
            pending_columns.append((column, values))

        def log_metric(name: str, value: float) -> None:
            pending_metrics.append((name, float(value)))

        def commit() -> None:
            for column, values in pending_columns:
                target = self.columns.setdefault(column, [None] * self.num_samples)
                for sample, value in zip(indices, values):
                    target[sample] = value
            for name, value in pending_metrics:
                self.metrics[name].append(value)

        kwargs = {"trainer_state": self.trainer_state, "log_extra": log_extra, "log_metric": log_metric}
        return kwargs, commit


def _score_component(
    name: str,
    func: Callable,
    sample_indices: list[int],
    prompts: Sequence,
    completions: Sequence,
    columns: Mapping[str, Sequence],
    logs: _RewardLogs,
) -> tuple[list[float], list[int], RewardFailure | None]:
    """
    Run one reward function on the samples at `sample_indices`.

    Returns the scores aligned with `sample_indices` (NaN where failed), the failed sample indices, and the first
    failure.
    """

    def call(indices: list[int]) -> Any:
        selected = {key: _take(values, indices) for key, values in columns.items()}
        hooks, commit = logs.hooks(indices)
        result = func(prompts=_take(prompts, indices), completions=_take(completions, indices), **selected, **hooks)
        commit()
        return result

    try:
        result = call(sample_indices)
    except BatchRewardError as error:
        failure = _failure_from_exception(name, None, error)
        return [math.nan] * len(sample_indices), list(sample_indices), failure
    except Exception:
        return _score_one_by_one(name, call, sample_indices)

    result = _as_score_list(result)
    if result is None or len(result) != len(sample_indices):
        got = "a non-list" if result is None else f"{len(result)} scores"
        failure = RewardFailure(
            name, None, "InvalidScore", f"returned {got} for {len(sample_indices)} samples; expected one score each"
        )
        return [math.nan] * len(sample_indices), list(sample_indices), failure
    values, failed_indices, first_failure = [], [], None
    for sample, raw in zip(sample_indices, result):
        value, problem = _check_score(raw)
        values.append(value)
        if problem is not None:
            failed_indices.append(sample)
            first_failure = first_failure or RewardFailure(name, sample, "InvalidScore", problem)
    return values, failed_indices, first_failure


def _score_one_by_one(
    name: str, call: Callable[[list[int]], Any], sample_indices: list[int]
) -> tuple[list[float], list[int], RewardFailure | None]:
    """Call the function once per sample, so that the samples that make it raise fail alone."""
    values, failed_indices, first_failure = [], [], None
    for sample in sample_indices:
        failure = None
        try:
            result = _as_score_list(call([sample]))
        except Exception as error:
            failure = _failure_from_exception(name, sample, error)
        else:
            if result is None or len(result) != 1:
                got = "a non-list" if result is None else f"{len(result)} scores"
                failure = RewardFailure(name, sample, "InvalidScore", f"returned {got} for 1 sample")
            else:
                value, problem = _check_score(result[0])
                if problem is not None:
                    failure = RewardFailure(name, sample, "InvalidScore", problem)
        if failure is None:
            values.append(value)
        else:
            values.append(math.nan)
            failed_indices.append(sample)
            first_failure = first_failure or failure
    return values, failed_indices, first_failure


def _as_score_list(result: Any) -> list | None:
    """The scores as a list, or `None` when the function returned something that is not a list of scores."""
    if isinstance(result, (list, tuple)):
        return list(result)
    if isinstance(result, (torch.Tensor, np.ndarray)) and result.ndim == 1:
        return result.tolist()
    return None


def _check_score(raw: Any) -> tuple[float, str | None]:
    """The score as a float (NaN when invalid) and what is wrong with it, if anything."""
    # Numpy scalars and one-element tensors or arrays are plain numbers.
    one_element = (isinstance(raw, torch.Tensor) and raw.numel() == 1) or (
        isinstance(raw, np.ndarray) and raw.size == 1
    )
    if one_element or isinstance(raw, np.generic):
        raw = raw.item()
    if raw is None:
        return math.nan, None  # not applicable to this sample (TRL's contract), not a failure
    # bool is a numbers.Real: True and False score 1.0 and 0.0, as TRL's `torch.tensor(scores, dtype=float32)` casts
    # them (numpy bools arrive here as Python bools through `.item()` / `.tolist()`).
    if not isinstance(raw, numbers.Real):
        shown = repr(raw)[:_REPR_LIMIT]
        return math.nan, f"returned {shown} ({type(raw).__name__}); expected a float or None"
    value = float(raw)
    if not math.isfinite(value):
        return math.nan, f"returned {value}"
    return value, None


def _failure_from_exception(name: str, sample_index: int | None, error: BaseException) -> RewardFailure:
    return RewardFailure(
        component=name,
        sample_index=sample_index,
        error_type=type(error).__name__,
        message=str(error),
        traceback="".join(traceback.format_exception(type(error), error, error.__traceback__)),
    )


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"
