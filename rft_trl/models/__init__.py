"""rft_trl.models: the policy (Actor and its ActorVL / ActorAL faces), the critic and the reward model."""

from .actor import Actor, process_sequences
from .actor_al import ActorAL
from .actor_vl import ActorVL
from .critic import Critic
from .inputs import ModelInputs
from .loss import GPTLMLoss, PolicyLoss, ValueLoss
from .reward_model import RewardModel, RewardModelFunction, SequenceClassificationReward
from .utils import compute_approx_kl, masked_mean, unpacking_samples

__all__ = [
    "Actor",
    "ActorAL",
    "ActorVL",
    "Critic",
    "GPTLMLoss",
    "PolicyLoss",
    "RewardModel",
    "RewardModelFunction",
    "SequenceClassificationReward",
    "ValueLoss",
    "ModelInputs",
    "compute_approx_kl",
    "masked_mean",
    "process_sequences",
    "unpacking_samples",
]
