"""
Environments (TRL's `environment_factory`): one environment instance per rollout sample, reset with its dataset row,
whose public methods are the sample's tools and whose `get_reward` (when it has one) scores the sample.

A factory (a callable returning an instance) serves every row; a dict of factories routes each row by its
`environment` column. Instances are built once and reset for every sample ("construct once, reset often"): a batch
that needs more concurrent instances of an environment than exist builds more, as TRL does.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["Environments"]

# Methods of an environment that are not tools.
_CONTROL_METHODS = ("reset", "get_reward")


class Environments:
    """
    The environments of a run.

    Args:
        factory (`Callable` or `dict[str, Callable]`): TRL's `environment_factory`.
        tools (`list[Callable]`): the standalone tools every sample has besides its environment's methods.

    Attributes:
        reward_functions (`list[Callable]`): one per environment class that defines `get_reward`, named after the
            class, with TRL's reward contract: `f(environments, **kwargs)` scores the samples whose environment is
            exactly that class (`None` for the others).
    """

    def __init__(self, factory: Callable | Mapping[str, Callable], tools: list[Callable]):
        self.routed = isinstance(factory, Mapping)
        self.factories = dict(factory) if self.routed else {None: factory}
        self.standalone = list(tools)
        self.pools: dict[Any, list] = {}
        self.methods: dict[Any, list[str]] = {}
        self.reward_functions: list[Callable] = []
        rewarded: list[type] = []
        for name, make in self.factories.items():
            instance = make()
            members = dict(
                inspect.getmembers(type(instance), predicate=inspect.isfunction)
            )  # the class's: no properties
            if "reset" not in members:
                where = "environment_factory" if name is None else f"environment_factory[{name!r}]"
                raise ValueError(
                    f"The environment {type(instance).__name__} ({where}) defines no `reset` method: each environment "
                    "must have a callable `reset(**row)`."
                )
            self.methods[name] = [m for m in members if m not in _CONTROL_METHODS and not m.startswith("_")]
            self.pools[name] = [instance]
            if "get_reward" in members and type(instance) not in rewarded:
                rewarded.append(type(instance))
                self.reward_functions.append(_environment_reward(type(instance)))

    def name_of(self, row: Mapping[str, Any]) -> Any:
        """The environment a dataset row uses (its `environment` column when routed)."""
        if not self.routed:
            return None
        name = row.get("environment")
        if name not in self.factories:
            raise ValueError(
                f"A row has environment={name!r}, which is not among the environments passed to environment_factory: "
                f"{list(self.factories)}."
            )
        return name

    def tools_for(self, row: Mapping[str, Any]) -> list[Callable]:
        """The tools a row's prompt is rendered with: the standalone tools and its environment's methods."""
        name = self.name_of(row)
        probe = self.pools[name][0]
        return self.standalone + [getattr(probe, method) for method in self.methods[name]]

    def trl_views(self) -> tuple[dict[Any, list[Callable]], dict[Any, list]]:
        """
        TRL's private `_env_tools` and `_environment_pool`: each environment's tools (the standalone ones, then its
        methods) and its live pool of instances, by its name (`None` for a single one).
        """
        tools = {
            name: self.standalone + [getattr(self.pools[name][0], method) for method in methods]
            for name, methods in self.methods.items()
        }
        return tools, self.pools

    @property
    def all_tools(self) -> list[Callable]:
        """Every tool any row may have (what the chat template is checked with)."""
        tools = list(self.standalone)
        for name, methods in self.methods.items():
            tools += [getattr(self.pools[name][0], method) for method in methods]
        return tools

    def draw(self, rows: list[Mapping[str, Any]]) -> list:
        """One instance per row, reused across batches; more are built when a batch needs more of one environment."""
        handed: dict[Any, int] = {}
        instances = []
        for row in rows:
            name = self.name_of(row)
            index = handed.get(name, 0)
            pool = self.pools[name]
            if index == len(pool):
                pool.append(self.factories[name]())
            handed[name] = index + 1
            instances.append(pool[index])
        return instances

    def reset(self, instances: list, rows: list[Mapping[str, Any]]) -> list[dict]:
        """
        Reset each instance with its row (without the routing `environment` column); a `reset` that returns an
        observation (text, or content blocks) has it appended to the last message of the row's prompt.

        Returns:
            `list[dict]`: the rows as the samples see them (copies; the dataset's rows are left untouched).
        """
        seen = []
        for instance, row in zip(instances, rows):
            arguments = {k: v for k, v in row.items() if k != "environment"} if self.routed else dict(row)
            observation = instance.reset(**arguments)
            row = dict(row)
            # A row without a prompt (the environment owns the data) starts from an empty user message, as in TRL.
            prompt = row.setdefault("prompt", [{"role": "user", "content": ""}])
            if observation is not None:
                if not isinstance(prompt, list):
                    raise ValueError(
                        "An environment's reset returned an observation, but the row's prompt is plain text: it can "
                        "only be appended to a conversational prompt (a list of chat messages)."
                    )
                content = prompt[-1]["content"]
                if isinstance(observation, list) and isinstance(content, str):
                    content = [{"type": "text", "text": content}]
                if isinstance(observation, str) and isinstance(content, list):
                    observation = [{"type": "text", "text": observation}]
                row["prompt"] = [*prompt[:-1], {**prompt[-1], "content": content + observation}]
            seen.append(row)
        return seen

    def tools_of(self, instance: Any) -> list[Callable]:
        """The tools one sample may call: the standalone tools and its instance's methods."""
        name = next(n for n, pool in self.pools.items() if any(member is instance for member in pool))
        return self.standalone + [getattr(instance, method) for method in self.methods[name]]


def _environment_reward(environment_type: type) -> Callable:
    """TRL's reward source of an environment class's `get_reward`, named after the class."""
    if inspect.iscoroutinefunction(environment_type.get_reward):

        async def reward(environments, **kwargs):
            return [await e.get_reward() if type(e) is environment_type else None for e in environments]

    else:

        def reward(environments, **kwargs):
            return [e.get_reward() if type(e) is environment_type else None for e in environments]

    reward.__name__ = environment_type.__name__
    return reward
