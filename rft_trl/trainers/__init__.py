"""Trainers, configuration, experience and replay buffer (LightRFT's `lightrft.trainer`)."""

from .checkpointing import CheckpointError, last_complete_checkpoint
from .experience import Experience, ExperienceVL, map_tensors
from .guards import NonFiniteGuard, NonFiniteTrainingError
from .kl_controller import AdaptiveKLController, FixedKLController
from .policy_and_value import PolicyAndValue
from .ppo_trainer_vl import PPOTrainerVL
from .replay_buffer import NaiveReplayBuffer, NaiveReplayBufferVL
from .replay_buffer_utils import (
    BufferItem,
    BufferItemVL,
    is_vl_experience,
    item_to_device,
    make_experience_batch,
    remove_padding_in_sequences,
    split_experience_batch,
    zero_pad_sequences,
)
from .rft_config import RFTConfig
from .sampling import RolloutSampler
from .sft import build_sft_batch, supervised_warmup
