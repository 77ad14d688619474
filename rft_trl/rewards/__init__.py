"""Reward functions, their combination with failure handling, and a remote reward-model client."""

# TRL's own DAPO soft overlong punishment (https://arxiv.org/abs/2503.14476, Eq. 13) is a reward function of the
# `completion_ids` every reward function receives: it is re-exported as it is (docs/dapo.md).
from trl.rewards import get_soft_overlong_punishment

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
    "get_soft_overlong_punishment",
    "reward_func_name",
    "think_format_reward",
]
