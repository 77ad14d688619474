"""Rollout engines: the policy's own `generate` (`"hf"`) or vLLM (`"vllm"`, colocated or behind a server)."""

from .engine import Generation, HFEngine, RolloutEngine, generation_from_ids, pad_completions
from .environments import Environments
from .tools import MultiTurn, ToolBox, run_tool_turns
from .weights import iter_checkpoint_weights

__all__ = [
    "Environments",
    "Generation",
    "HFEngine",
    "MultiTurn",
    "RolloutEngine",
    "ToolBox",
    "generation_from_ids",
    "iter_checkpoint_weights",
    "pad_completions",
    "run_tool_turns",
]
