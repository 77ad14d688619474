"""
The seed's module path `lightrft.trainer.replay_buffer_utils`, kept for its users: the vision-language faces from
`rft_trl.compat.experience` and the one path of `rft_trl.trainers.batching`. Nothing in the package imports it.
"""

from ..compat.experience import BufferItemVL, is_vl_experience, make_experience_batch, split_experience_batch
from .batching import BufferItem, item_to_device, remove_padding_in_sequences, zero_pad_sequences

__all__ = [
    "BufferItem",
    "BufferItemVL",
    "is_vl_experience",
    "item_to_device",
    "make_experience_batch",
    "remove_padding_in_sequences",
    "split_experience_batch",
    "zero_pad_sequences",
]
