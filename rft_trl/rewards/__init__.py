"""Reward functions, their combination with failure handling, and a remote reward-model client."""

from .combine import LABEL_COLUMN, RewardFailure, RewardOutput, RewardScorer, reward_func_name
from .errors import BatchRewardError, RemoteRewardError, RemoteRewardUnavailableError, RewardFailureError
from .functions import accuracy_reward, completion_text, extract_answer, format_reward, think_format_reward
from .remote import RemoteRewardModel, encode_payload

__all__ = [
    "LABEL_COLUMN",
    "BatchRewardError",
    "RemoteRewardError",
    "RemoteRewardModel",
    "RemoteRewardUnavailableError",
    "RewardFailure",
    "RewardFailureError",
    "RewardOutput",
    "RewardScorer",
    "accuracy_reward",
    "completion_text",
    "encode_payload",
    "extract_answer",
    "format_reward",
    "reward_func_name",
    "think_format_reward",
]
