"""
PPOTrainerVL under PyTorch FSDP2, launched through Accelerate (`accelerate_configs/fsdp2.yaml`).

Accelerate shards the trained module when the Trainer prepares it; what the trainer adds, here:

- the checks of what FSDP2 cannot do with this trainer, at construction ([`check_fsdp`]);
- the KL reference sharded as Accelerate shards the policy ([`shard_reference`]), as TRL shards its `ref_model`;

and elsewhere: the weight sync and fingerprints gather each parameter's shards ([`~rft_trl.models.fsdp.full_tensor`]),
HF generation runs in lockstep on every rank (transformers' `synced_gpus`, on by default for an FSDP-managed model),
`save_model` gathers a full state dict (`fsdp_state_dict_type: FULL_STATE_DICT`), and a checkpoint resumes through
Accelerate's FSDP loaders.
"""

from __future__ import annotations

from accelerate import Accelerator
from accelerate.utils import DistributedType, fsdp2_prepare_model
from torch import nn

from ..models.fsdp import fsdp_enabled
from .rft_config import RFTConfig

__all__ = ["check_fsdp", "shard_reference"]


def check_fsdp(accelerator: Accelerator, args: RFTConfig, critic: nn.Module | None) -> None:
    """
    Refuse an FSDP setup this trainer would run wrongly, naming the fix.

    Raises:
        `ValueError`: FSDP enabled other than by the launcher's config, FSDP1, a sharded state dict on save, EMA, or
        a critic.
    """
    if accelerator.distributed_type != DistributedType.FSDP:
        return
    if not fsdp_enabled():
        # The models were built before the Accelerator (the fused LM head, the encoder-output cache, the reference)
        # believing no FSDP was coming.
        raise ValueError(
            "FSDP was enabled through the training arguments, not by the launcher: launch with "
            "`accelerate launch --config_file accelerate_configs/fsdp2.yaml` (ACCELERATE_USE_FSDP=true), so that "
            "the models are built for FSDP."
        )
    plugin = accelerator.state.fsdp_plugin
    if plugin.fsdp_version != 2:
        raise ValueError(
            f"FSDP version {plugin.fsdp_version} is not supported by PPOTrainerVL: set `fsdp_version: 2` in the "
            "accelerate config (accelerate_configs/fsdp2.yaml)."
        )
    if "FULL_STATE_DICT" not in str(plugin.state_dict_type):
        raise ValueError(
            f"FSDP with fsdp_state_dict_type {plugin.state_dict_type} writes no model.safetensors that "
            "from_pretrained can load: set `fsdp_state_dict_type: FULL_STATE_DICT` in the accelerate config."
        )
    if critic is not None:
        # The policy and the critic are prepared as one module (PolicyAndValue), whose own parameters (embeddings,
        # head, the vision tower's outer layers, the value head) FSDP2 gathers only in that module's forward; the
        # rollout scores the policy and the critic each on its own, outside it.
        raise ValueError(
            "PPO with a critic (advantage_estimator='gae') is not supported under FSDP: the rollout runs the policy "
            "and the critic outside the sharded module's own forward. Use DeepSpeed ZeRO-3 "
            "(accelerate_configs/deepspeed_zero3.yaml), or a critic-free estimator such as GRPO's."
        )
    if args.enable_ema:
        raise ValueError(
            "enable_ema=True is not supported under FSDP: the EMA copy would hold each rank's shards, not the "
            "weights that the checkpoint and the final model are saved with. Set enable_ema=False."
        )


def shard_reference(reference: nn.Module, accelerator: Accelerator) -> nn.Module:
    """
    Shard the frozen KL reference's transformers model with the policy's FSDP2 settings (Accelerate's own sharding,
    as `accelerator.prepare` applies it to the policy): each rank keeps its shards, gathered layer by layer in the
    forward. Every rank must then run the same reference forwards, as for the policy.
    """
    reference = fsdp2_prepare_model(accelerator, reference)
    reference.eval()
    return reference
