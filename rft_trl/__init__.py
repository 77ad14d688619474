"""rft_trl: reinforcement fine-tuning for multimodal models on transformers, TRL, PEFT and Accelerate."""

__version__ = "0.1.0"

from .compat import ActorAL, ActorVL  # noqa: E402
from .data import MediaError, PromptBatch, PromptCollator  # noqa: E402
from .models import Actor, Critic  # noqa: E402
from .rewards import RemoteRewardModel, RewardFailureError, RewardScorer, accuracy_reward, format_reward  # noqa: E402
from .trainers import PPOTrainerVL, RFTConfig, supervised_warmup  # noqa: E402

__all__ = [
    "Actor",
    "ActorAL",
    "ActorVL",
    "Critic",
    "MediaError",
    "PPOTrainerVL",
    "PromptBatch",
    "PromptCollator",
    "RFTConfig",
    "RemoteRewardModel",
    "RewardFailureError",
    "RewardScorer",
    "accuracy_reward",
    "format_reward",
    "supervised_warmup",
]
