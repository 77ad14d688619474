"""
rft_trl.compat: LightRFT's names that the seed documents and the training path does not use.

`ActorVL` / `ActorAL` (faces of [`Actor`] with the seed's keywords), the loss modules `PolicyLoss` / `ValueLoss` /
`GPTLMLoss` (over `rft_trl.core`), and the vision-language experience classes `BufferItemVL` / `ExperienceVL` /
`NaiveReplayBufferVL` with the seed's `make_experience_batch` / `split_experience_batch` that tell them apart. The
trainer works with [`Actor`], [`BufferItem`] and [`Experience`] only.

This package sits above `models/` and `trainers/` and imports from them. The seed's paths stay importable:
`rft_trl.models.actor_vl`, `rft_trl.models.actor_al`, `rft_trl.models.loss` and
`rft_trl.trainers.replay_buffer_utils` are aliases of these modules that nothing in the package imports, and
`rft_trl.models`, `rft_trl.trainers`, `rft_trl.trainers.experience` and `rft_trl.trainers.replay_buffer` resolve
the names here on first use.
"""

from .actors import ActorAL, ActorVL
from .experience import (
    BufferItemVL,
    ExperienceVL,
    NaiveReplayBufferVL,
    is_vl_experience,
    make_experience_batch,
    split_experience_batch,
)
from .loss import GPTLMLoss, PolicyLoss, ValueLoss

__all__ = [
    "ActorAL",
    "ActorVL",
    "BufferItemVL",
    "ExperienceVL",
    "GPTLMLoss",
    "NaiveReplayBufferVL",
    "PolicyLoss",
    "ValueLoss",
    "is_vl_experience",
    "make_experience_batch",
    "split_experience_batch",
]
