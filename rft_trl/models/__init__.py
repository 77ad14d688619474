"""rft_trl.models: the policy (Actor), the critic and the reward model; the seed's faces from `rft_trl.compat`."""

from .actor import Actor, process_sequences
from .critic import Critic
from .inputs import ModelInputs
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

# The seed's names served by `rft_trl.compat`, which imports this package: they are looked up on first use.
_COMPAT_NAMES = ("ActorAL", "ActorVL", "GPTLMLoss", "PolicyLoss", "ValueLoss")


def __getattr__(name: str):
    if name in _COMPAT_NAMES:
        from .. import compat

        return getattr(compat, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
