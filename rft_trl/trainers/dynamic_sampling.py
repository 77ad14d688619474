"""DAPO's dynamic sampling (https://arxiv.org/abs/2503.14476, verl's `algorithm.filter_groups`).

A prompt group whose rewards are all equal gives a group estimator (GRPO, RLOO, ...) zero advantage everywhere: it
costs an update's compute and teaches nothing, and as the policy improves more and more groups saturate. With
`dynamic_sampling=True` a rollout keeps only the groups whose rewards spread, and generates and scores new prompts
until it holds `rollout_batch_size` such groups on every process, as verl does:

- the criterion is verl's `metric="seq_reward"`: the combined reward of each sample (the weighted sum of the reward
  functions, before any KL penalty); a group is dropped when its valid rewards are all equal, or when it has fewer than
  two valid rewards (failed rewards are excluded, never scored 0);
- every extra round draws `rollout_batch_size` new prompt rows per process ([`RefillRows`]: their own seeded order
  over the training set, whose position every checkpoint records, so a resumed run draws what the interrupted one
  would have); kept groups are taken in generation order and those beyond the target are discarded (verl's
  `batch[:traj_bsz]`);
- rounds are counted with the first; after `dynamic_sampling_max_rounds` rounds (verl's `max_num_gen_batches`; 0: no
  bound) a rollout still short is filled with the last round's tied groups, whose advantages are 0 (no policy
  gradient; the batch keeps the size the hyperparameters were set for), counted in `tied_fillers` and warned about
  once. verl raises there instead; a long run that saturates its training prompts before its held-out accuracy is
  where it should be would end (seen on the tiny colour task: 73 of 80 groups tied);
- every process generates in every round (a process already full discards what it generates) and the decision to
  go on is taken over all processes, so that the processes stay in step (ZeRO-3 and vLLM's tensor parallelism
  generate collectively) and every rollout holds the same number of samples on each;
- scoring (the policy's, the reference's and the critic's forwards) and advantages run once, on the kept groups;
  batch-level statistics (`scale_rewards="batch"`) are therefore the kept groups' (verl's order too).

The rounds' samples are padded to a common width and joined ([`concat_samples`]): prompts on the left, completions on
the right, the padding the padded forward already handles (and `verify_model` checks).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import replace

import torch

from ..rewards import RewardOutput

__all__ = ["DynamicSampling", "RefillRows", "concat_samples", "select_samples", "zero_spread_groups"]

logger = logging.getLogger(__name__)

# Seeds of the refill order sit this far from the training order's `seed + epoch`, so that the refill prompts do not
# follow the epoch's own order.
_REFILL_SEED_OFFSET = 1_000_003

# What `generate_and_score` returns: the samples, the decoded completions, each sample's prompt, the rewards.
Generated = tuple[dict, list[str], list, RewardOutput]


def zero_spread_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """
    The groups whose rewards do not spread: dynamic sampling drops them.

    Args:
        rewards (`torch.Tensor` of shape `[G * group_size]`):
            Each sample's reward, `group_size` consecutive samples per prompt; NaN where the sample is excluded.
        group_size (`int`):
            Samples per prompt.

    Returns:
        `torch.BoolTensor` of shape `[G]`: `True` where the group's finite rewards are all equal, or where it has
        fewer than two of them (no comparison, no signal).
    """
    groups = rewards.reshape(-1, group_size)  # [G, group_size]
    finite = groups.isfinite()
    high = torch.where(finite, groups, float("-inf")).amax(-1)  # [G]
    low = torch.where(finite, groups, float("inf")).amin(-1)  # [G]
    # With no finite reward high = -inf < low = inf; with one, high == low: both count as no spread.
    return ~(high > low)


def select_samples(samples: dict, index: list[int]) -> dict:
    """
    The samples at `index` (positions along the sample axis) of a [`ExperienceMaker.generate_and_score`] samples
    dict: per-sample tensors `[N, ...]` and lists are indexed, counts over the whole batch (tool calls) kept.
    """
    rows = torch.tensor(index, dtype=torch.long)
    selected = {}
    for name, value in samples.items():
        if name == "token_fields":
            selected[name] = {k: v[rows.to(v.device)] for k, v in value.items()}
        elif isinstance(value, torch.Tensor):
            selected[name] = value[rows.to(value.device)]
        elif isinstance(value, list) and name != "kept_rows":
            selected[name] = [value[i] for i in index]
        elif name in ("tool_calls", "tool_failures"):
            selected[name] = value
        elif name != "kept_rows":  # positions in one round's rows: meaningless once rounds are joined
            raise ValueError(f"Dynamic sampling does not know how to select the samples' {name!r}.")
    return selected


def _pad_width(tensor: torch.Tensor, left: int, right: int, value) -> torch.Tensor:
    """`tensor` `[N, W, ...]` widened to `[N, left + W + right, ...]` with `value`, or with its edge columns when
    `value` is `None` (token types: a pad position takes the type its neighbour has)."""
    if left == 0 and right == 0:
        return tensor
    if value is None:
        before = tensor[:, :1].repeat_interleave(left, dim=1)
        after = tensor[:, -1:].repeat_interleave(right, dim=1)
    else:
        before = tensor.new_full((tensor.shape[0], left, *tensor.shape[2:]), value)
        after = tensor.new_full((tensor.shape[0], right, *tensor.shape[2:]), value)
    return torch.cat([before, tensor, after], dim=1)


def concat_samples(parts: list[dict], pad_token_id: int) -> dict:
    """
    Join the samples dicts of several rounds into one, in order.

    Each part holds `sequences` `[N_i, P_i + A_i]` laid out `[left pad | prompt | completion | right pad]`: the prompt
    side is left-padded to the widest prompt `P`, the completion side right-padded to the longest `A` (pad token,
    attention and action masks 0, log-probs 0, token types repeated from the edge). Lists are concatenated; counts
    (tool calls) summed.
    """
    if len(parts) == 1:
        return parts[0]
    actions = [part["action_mask"].shape[1] for part in parts]
    prompts = [part["sequences"].shape[1] - width for part, width in zip(parts, actions)]
    prompt_width, action_width = max(prompts), max(actions)
    padded = []
    for part, prompt, width in zip(parts, prompts, actions):
        left, right = prompt_width - prompt, action_width - width
        padded.append(
            {
                **part,
                "sequences": _pad_width(part["sequences"], left, right, pad_token_id),
                "attention_mask": _pad_width(part["attention_mask"], left, right, 0),
                "token_fields": {k: _pad_width(v, left, right, None) for k, v in part["token_fields"].items()},
                **{
                    name: _pad_width(part[name], 0, right, pad)
                    for name, pad in (
                        ("action_mask", 0),
                        ("completion_ids", pad_token_id),
                        ("rollout_log_probs", 0.0),
                        ("tool_mask", 0),
                    )
                    if name in part
                },
            }
        )
    names = list(dict.fromkeys(name for part in padded for name in part))
    joined = {}
    for name in names:
        values = [part.get(name) for part in padded]
        if any(value is None for value in values):
            if name != "images":
                raise ValueError(f"Only some rounds' samples hold {name!r}: they cannot be joined.")
            values = [part.get(name, [[]] * len(part["multimodal_inputs"])) for part in padded]
        if name == "token_fields":
            joined[name] = {k: torch.cat([value[k] for value in values]) for k in values[0]}
        elif isinstance(values[0], torch.Tensor):
            joined[name] = torch.cat(values)
        elif isinstance(values[0], list):
            joined[name] = [item for value in values for item in value]
        else:  # tool_calls, tool_failures
            joined[name] = sum(values)
    return joined


def select_rewards(out: RewardOutput, index: list[int]) -> RewardOutput:
    """The [`RewardOutput`] of the samples at `index`; failure counts stay those of the whole batch."""
    rows = torch.tensor(index, dtype=torch.long)
    return replace(
        out,
        rewards=out.rewards[rows],
        valid=out.valid[rows],
        components={name: scores[rows] for name, scores in out.components.items()},
        abstained=None if out.abstained is None else out.abstained[rows],
        extra_columns={name: [values[i] for i in index] for name, values in out.extra_columns.items()},
    )


def concat_rewards(parts: list[RewardOutput]) -> RewardOutput:
    """Several rounds' [`RewardOutput`]s as one: per-sample values joined, failure counts summed, logged metrics
    averaged over the rounds."""
    if len(parts) == 1:
        return parts[0]
    count = [len(part.rewards) for part in parts]
    failures = {}
    for part in parts:
        for name, value in part.failures.items():
            failures[name] = failures.get(name, 0) + value
    logged = {}
    for name in dict.fromkeys(name for part in parts for name in part.logged_metrics):
        values = [part.logged_metrics[name] for part in parts if name in part.logged_metrics]
        logged[name] = sum(values) / len(values)
    abstained = None
    if any(part.abstained is not None for part in parts):
        abstained = torch.cat(
            [
                part.abstained if part.abstained is not None else torch.zeros(n, dtype=torch.bool)
                for part, n in zip(parts, count)
            ]
        )
    return RewardOutput(
        rewards=torch.cat([part.rewards for part in parts]),
        valid=torch.cat([part.valid for part in parts]),
        components={name: torch.cat([part.components[name] for part in parts]) for name in parts[0].components},
        failures=failures,
        first_failure=next((part.first_failure for part in parts if part.first_failure is not None), None),
        abstained=abstained,
        extra_columns={
            name: [v for part, n in zip(parts, count) for v in part.extra_columns.get(name, [None] * n)]
            for name in dict.fromkeys(name for part in parts for name in part.extra_columns)
        },
        logged_metrics=logged,
    )


class RefillRows:
    """
    The prompt rows dynamic sampling draws to refill a rollout, in an order of their own that a checkpoint records.

    The order is an endless sequence of passes over the training set: pass `p` of a map-style set is a permutation
    drawn from `seed + p` (offset from the training order's seeds), a stream is read from its start. Each draw takes
    the next `count * num_processes` positions of it, and this process the ones `≡ process_index (mod
    num_processes)`, so the processes draw different rows and [`RefillRows.drawn`] is the same on all of them.

    Args:
        rows ([`IndexedRows`] or [`IndexedStream`]): the training rows.
        seed (`int`): the run's seed.
        process_index (`int`), num_processes (`int`): this process and the number of processes.
        drawn (`int`, *optional*, defaults to `0`): positions drawn before (a resumed run's, from its checkpoint).
    """

    def __init__(self, rows, seed: int, process_index: int, num_processes: int, drawn: int = 0):
        self.rows, self.seed = rows, seed
        self.process_index, self.num_processes = process_index, num_processes
        self.drawn = drawn
        self._positions: Iterator[Callable[[], dict]] | None = None

    def _readers(self) -> Iterator[Callable[[], dict]]:
        """One reader per position of the endless order: map-style rows are read only when this process takes them."""
        for refill_pass in itertools.count():
            if isinstance(self.rows, torch.utils.data.IterableDataset):
                empty = True
                for row in self.rows:
                    empty = False
                    yield lambda row=row: row
                if empty:
                    raise ValueError("The training stream yielded no rows to refill a dynamic-sampling rollout from.")
                continue
            generator = torch.Generator().manual_seed(self.seed + _REFILL_SEED_OFFSET + refill_pass)
            for index in torch.randperm(len(self.rows), generator=generator).tolist():
                yield lambda index=index: self.rows[index]

    def draw(self, count: int) -> list[dict]:
        """This process's `count` next rows (every process draws the same count at the same time)."""
        if self._positions is None:
            self._positions = self._readers()
            for _ in range(self.drawn):  # a resumed run goes on where the checkpoint's run was
                next(self._positions)
        block = [next(self._positions) for _ in range(count * self.num_processes)]
        self.drawn += len(block)
        return [read() for read in block[self.process_index :: self.num_processes]]


class DynamicSampling:
    """
    Fills a rollout with prompt groups whose rewards spread (see the module docstring).

    Args:
        group_size (`int`): samples per prompt (`n_samples_per_prompt`).
        target (`int`): prompt groups per rollout per process (`rollout_batch_size`).
        max_rounds (`int`): most generation rounds per rollout, the first included; 0 for no bound.
        pad_token_id (`int`): pads the rounds' sequences to a common width.
    """

    def __init__(self, group_size: int, target: int, max_rounds: int, pad_token_id: int):
        self.group_size, self.target, self.max_rounds = group_size, target, max_rounds
        self._bound_logged = False
        self.pad_token_id = pad_token_id
        self.refill: RefillRows | None = None  # set with the train dataloader
        # Refill positions drawn before this run (a resumed run's, restored from its checkpoint).
        self.resumed_drawn = 0

    def draw_from(self, rows, seed: int, process_index: int, num_processes: int) -> None:
        """Refill from the training `rows` (the trainer calls this when it builds the train dataloader)."""
        self.refill = RefillRows(rows, seed, process_index, num_processes, self.drawn)

    def restore(self, drawn: int) -> None:
        """Go on from a checkpoint's refill position (before the train dataloader is built)."""
        self.refill, self.resumed_drawn = None, drawn

    @property
    def drawn(self) -> int:
        """Refill positions drawn so far, over all processes (what a checkpoint records)."""
        return self.refill.drawn if self.refill is not None else self.resumed_drawn

    def _groups(self, generated: Generated, groups: list[int]) -> Generated:
        """The samples, completions, prompts and rewards of some prompt groups of a round."""
        samples, completions, prompts, rewards = generated
        index = [g * self.group_size + i for g in groups for i in range(self.group_size)]
        return (
            select_samples(samples, index),
            [completions[i] for i in index],
            [prompts[i] for i in index],
            select_rewards(rewards, index),
        )

    def fill(
        self,
        first: Generated,
        generate: Callable[[list[dict]], Generated],
        reduce_sum: Callable[[torch.Tensor], torch.Tensor],
    ) -> tuple[Generated, dict[str, float]]:
        """
        The first round's groups that spread, topped up from new prompts until there are `target` of them.

        Args:
            first (`Generated`): the rollout's first round, as `generate_and_score` returns it.
            generate (`Callable`): `generate(rows) -> Generated`, `group_size` samples per kept row.
            reduce_sum (`Callable`): sums a tensor over all processes (every process calls it once per round).

        Returns:
            `tuple`: the kept samples, completions, prompts and rewards (`target * group_size` samples), and the
            `rollout/dynamic_sampling/*` metrics: `rounds`, `generated_groups`, `dropped_groups` (zero spread),
            `surplus_groups` (kept beyond the target, discarded) and `reward` (the mean valid reward over every
            generated sample, before any was dropped: the policy's reward on fresh prompts) and `tied_fillers` (tied
            groups that filled a rollout still short at the bound).

        """
        if self.refill is None:
            raise RuntimeError("Dynamic sampling has no rows to refill from: the train dataloader was not built.")
        kept: list[Generated] = []
        num_kept = generated = dropped = 0
        reward_sum, reward_count = 0.0, 0
        tied_fillers = 0
        rounds, current = 1, first
        while True:
            rewards = current[3]
            spread = ~zero_spread_groups(rewards.rewards, self.group_size)  # [G]
            generated += spread.numel()
            dropped += int((~spread).sum())
            valid = rewards.rewards[rewards.valid]
            reward_sum, reward_count = reward_sum + float(valid.sum()), reward_count + valid.numel()
            groups = spread.nonzero().flatten().tolist()[: max(self.target - num_kept, 0)]
            if groups:
                kept.append(self._groups(current, groups))
                num_kept += len(groups)
            short = torch.tensor([float(num_kept < self.target)])
            if reduce_sum(short).item() == 0:
                break
            if self.max_rounds > 0 and rounds >= self.max_rounds:
                # verl raises here; a run goes on instead, the rollout filled with this round's tied groups (their
                # advantages are 0: no policy gradient, only the KL and entropy terms), counted and logged.
                filler = (~spread).nonzero().flatten().tolist()[: max(self.target - num_kept, 0)]
                if filler:
                    kept.append(self._groups(current, filler))
                    num_kept += len(filler)
                    tied_fillers += len(filler)
                if not self._bound_logged:
                    self._bound_logged = True
                    logger.warning(
                        "Dynamic sampling reached dynamic_sampling_max_rounds=%d with %d groups still needed: the "
                        "rollout is filled with tied groups (no policy gradient), counted in "
                        "rollout/dynamic_sampling/tied_fillers. Most prompts score alike for every sample: check "
                        "that the data is neither too easy nor too hard for the policy, or raise the bound (0: none).",
                        self.max_rounds,
                        len(filler),
                    )
                break
            current = generate(self.refill.draw(self.target))
            rounds += 1
        metrics = {
            "rollout/dynamic_sampling/rounds": float(rounds),
            "rollout/dynamic_sampling/generated_groups": float(generated),
            "rollout/dynamic_sampling/dropped_groups": float(dropped),
            "rollout/dynamic_sampling/surplus_groups": float(generated - dropped - num_kept),
            "rollout/dynamic_sampling/reward": reward_sum / reward_count if reward_count else float("nan"),
            "rollout/dynamic_sampling/tied_fillers": float(tied_fillers),
        }
        if rounds > 1:
            logger.debug("Dynamic sampling: %d rounds, %d of %d groups dropped.", rounds, dropped, generated)
        joined = (
            concat_samples([part[0] for part in kept], self.pad_token_id),
            [text for part in kept for text in part[1]],
            [prompt for part in kept for prompt in part[2]],
            concat_rewards([part[3] for part in kept]),
        )
        return joined, metrics
