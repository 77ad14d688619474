"""Trainers, configuration, experience and replay buffer (LightRFT's `lightrft.trainer`)."""

from .batching import BufferItem, item_to_device, remove_padding_in_sequences, zero_pad_sequences
from .checkpointing import CheckpointError, last_complete_checkpoint
from .experience import Experience, map_tensors
from .guards import NonFiniteGuard, NonFiniteTrainingError
from .kl_controller import AdaptiveKLController, FixedKLController
from .policy_and_value import PolicyAndValue
from .ppo_trainer_vl import PPOTrainerVL
from .replay_buffer import NaiveReplayBuffer
from .rft_config import RFTConfig
from .sampling import RolloutSampler
from .sft import build_sft_batch, supervised_warmup

# The seed's names served by `rft_trl.compat`, which imports this package: they are looked up on first use.
# `make_experience_batch` and `split_experience_batch` are the seed's, which also take its vision-language classes.
_COMPAT_NAMES = (
    "BufferItemVL",
    "ExperienceVL",
    "NaiveReplayBufferVL",
    "is_vl_experience",
    "make_experience_batch",
    "split_experience_batch",
)


def __getattr__(name: str):
    if name in _COMPAT_NAMES:
        from .. import compat

        return getattr(compat, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
