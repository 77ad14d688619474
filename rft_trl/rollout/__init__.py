"""Rollout engines: the policy's own `generate` (`"hf"`) or vLLM (`"vllm"`, colocated or behind a server)."""

from .engine import Generation, HFEngine, RolloutEngine, pad_completions
from .weights import iter_checkpoint_weights

__all__ = ["Generation", "HFEngine", "RolloutEngine", "iter_checkpoint_weights", "pad_completions"]
