"""
What rft_trl refuses or turns off under FSDP, decided at construction (the runs themselves: tests/e2e/distributed/
test_fsdp2.py on the CPU, bench/gpu_check.py on a GPU).

`ACCELERATE_USE_FSDP=true` is what `accelerate launch --config_file accelerate_configs/fsdp2.yaml` sets in each
process; the checks made after the Trainer's Accelerator exists get a stand-in of it with a real FSDP plugin.
"""

from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

from rft_trl import RFTConfig
from rft_trl.models.actor_vl import ActorVL
from rft_trl.models.media_encodings import MediaEncodings
from rft_trl.testing import build_tiny_model
from rft_trl.trainers.fsdp import check_fsdp
from rft_trl.trainers.run_state import checkpoint_optimizer_file
from rft_trl.trainers.setup import check_sync_ref_model


@pytest.fixture
def fsdp_launch(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")


def test_fsdp_launch_without_an_accelerator_is_refused(fsdp_launch, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"FSDP needs an accelerator \(GPU\).*deepspeed_zero3_cpu\.yaml"):
        RFTConfig(str(tmp_path), bf16=False)


def test_cpu_config_without_fsdp_is_accepted(monkeypatch, tmp_path):
    # Control: the same construction without the FSDP launch.
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)
    assert RFTConfig(str(tmp_path), bf16=False).output_dir == str(tmp_path)


def fsdp_accelerator(**plugin_kwargs) -> SimpleNamespace:
    plugin = FullyShardedDataParallelPlugin(
        **{"fsdp_version": 2, "state_dict_type": "FULL_STATE_DICT", **plugin_kwargs}
    )
    return SimpleNamespace(distributed_type=DistributedType.FSDP, state=SimpleNamespace(fsdp_plugin=plugin))


@pytest.mark.parametrize(
    ("plugin_kwargs", "ema", "critic", "message"),
    [
        ({"fsdp_version": 1}, False, None, "set `fsdp_version: 2`"),
        ({"state_dict_type": "SHARDED_STATE_DICT"}, False, None, "set `fsdp_state_dict_type: FULL_STATE_DICT`"),
        ({}, True, None, "enable_ema=True is not supported under FSDP"),
        ({}, False, torch.nn.Linear(2, 1), r"PPO with a critic .* is not supported under FSDP.*deepspeed_zero3"),
    ],
    ids=["fsdp1", "sharded_state_dict", "ema", "critic"],
)
def test_fsdp_setups_the_trainer_cannot_run_are_refused(fsdp_launch, plugin_kwargs, ema, critic, message):
    args = SimpleNamespace(enable_ema=ema)
    with pytest.raises(ValueError, match=message):
        check_fsdp(fsdp_accelerator(**plugin_kwargs), args, critic)


def test_fsdp_not_enabled_by_the_launcher_is_refused(monkeypatch):
    # The models were built before the Accelerator without knowing FSDP was coming.
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    with pytest.raises(ValueError, match="launch with `accelerate launch --config_file accelerate_configs/fsdp2"):
        check_fsdp(fsdp_accelerator(), SimpleNamespace(enable_ema=False), None)


def test_fsdp2_with_a_full_state_dict_is_accepted(fsdp_launch):
    # Control: the shipped config's settings pass, and so does any run without FSDP.
    check_fsdp(fsdp_accelerator(), SimpleNamespace(enable_ema=False), None)
    check_fsdp(SimpleNamespace(distributed_type=DistributedType.MULTI_GPU), SimpleNamespace(enable_ema=True), None)


def test_sync_ref_model_under_fsdp_is_refused(fsdp_launch):
    args = SimpleNamespace(init_kl_coef=0.1)
    with pytest.raises(ValueError, match="under ZeRO-3 or FSDP is not supported"):
        check_sync_ref_model(args, peft=False, critic=None)


def test_cast_lm_head_to_fp32_under_fsdp_is_refused(monkeypatch, tmp_path):
    from rft_trl import PPOTrainerVL

    model, processor = build_tiny_model("qwen2_5_vl")
    args = RFTConfig(str(tmp_path), cast_lm_head_to_fp32=True, bf16=False, report_to="none")
    # Set after the config, which refuses FSDP on this CPU machine: the policy is built (and refused) first.
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError, match="cast_lm_head_to_fp32=True is not supported under FSDP"):
        PPOTrainerVL(model, [lambda completions, **kwargs: [0.0] * len(completions)], args, processing_class=processor)


def test_fused_head_and_encoder_cache_step_aside_under_fsdp(monkeypatch):
    model, _ = build_tiny_model("qwen2_5_vl")
    actor = ActorVL(model)
    # Control: without FSDP both are on for this model.
    assert actor._fusable_head() is model.get_output_embeddings()
    assert MediaEncodings(model).reason is None
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert actor._fusable_head() is None
    assert "under FSDP every rank must run the same encoder calls" in MediaEncodings(model).reason


@pytest.mark.parametrize(
    ("deepspeed", "fsdp", "expected"),
    [(False, False, "optimizer.pt"), (False, True, "optimizer.bin"), (True, False, None)],
    ids=["ddp", "fsdp", "deepspeed"],
)
def test_checkpoint_optimizer_file_is_the_one_the_trainer_writes(deepspeed, fsdp, expected):
    trainer = SimpleNamespace(is_deepspeed_enabled=deepspeed, is_fsdp_enabled=fsdp)
    assert checkpoint_optimizer_file(trainer) == expected
