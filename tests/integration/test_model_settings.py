"""
One settings path for every model the trainer builds (issue 23): the policy, the critic, the reference and the reward
models are loaded with the same dtype, attention implementation (`model_init_kwargs`) and `trust_remote_code`, all
from `RFTConfig.model_kwargs()`. Before, the critic got neither `model_init_kwargs` nor `trust_remote_code`, a
reloaded (ZeRO-3) reference got neither, and a given `initial_model` stayed float32 under `bf16=True`.
"""

import pytest
import torch
from transformers import AutoConfig

from rft_trl import PPOTrainerVL
from rft_trl.models.utils import unwrap_model
from rft_trl.testing import build_tiny_model, length_reward, make_task_dataset, save_tiny_model, tiny_config


@pytest.fixture
def loaded_configs(monkeypatch):
    """The `trust_remote_code` of every config loaded from a path, in order."""
    seen = []
    original = AutoConfig.from_pretrained.__func__

    def spy(cls, path, *args, **kwargs):
        seen.append((str(path), kwargs.get("trust_remote_code")))
        return original(cls, path, *args, **kwargs)

    monkeypatch.setattr(AutoConfig, "from_pretrained", classmethod(spy))
    return seen


def settings(module: torch.nn.Module) -> tuple[torch.dtype, str]:
    model = unwrap_model(module)
    return next(model.parameters()).dtype, model.config._attn_implementation


def test_every_model_built_from_a_path_gets_the_same_settings(tmp_path, loaded_configs):
    policy = save_tiny_model("qwen2", str(tmp_path / "policy"))
    reward = save_tiny_model("qwen2_reward", str(tmp_path / "reward"))
    initial, _ = build_tiny_model("qwen2", seed=1)  # float32, sdpa
    args = tiny_config(
        str(tmp_path / "out"),
        bf16=True,
        model_init_kwargs={"attn_implementation": "eager"},
        trust_remote_code=True,
        advantage_estimator="gae",
        beta=0.1,
    )
    trainer = PPOTrainerVL(
        policy,
        [reward, length_reward],
        args,
        train_dataset=make_task_dataset("text", 4),
        critic=policy,
        initial_model=initial,
    )
    expected = (torch.bfloat16, "eager")
    assert settings(trainer.actor.model) == expected
    assert settings(trainer.critic.backbone) == expected
    assert settings(trainer.reward_funcs[0]) == expected
    # A reference given as a built model keeps its attention implementation, and takes the run's dtype.
    assert settings(trainer._reference.model) == (torch.bfloat16, initial.config._attn_implementation)
    # Every path was loaded with the run's trust_remote_code: the policy, the critic, the reward model.
    loaded = {path: trust for path, trust in loaded_configs}
    assert loaded[policy] is True and loaded[reward] is True
    assert all(trust is True for _, trust in loaded_configs)


def test_without_settings_the_models_keep_their_defaults(tmp_path):
    # Control: without bf16 and model_init_kwargs, the same models load in float32 with the family's default
    # attention, so the test above sees the settings arrive and not the models' own values.
    policy = save_tiny_model("qwen2", str(tmp_path / "policy"))
    reward = save_tiny_model("qwen2_reward", str(tmp_path / "reward"))
    args = tiny_config(str(tmp_path / "out"), advantage_estimator="gae")
    trainer = PPOTrainerVL(policy, [reward], args, train_dataset=make_task_dataset("text", 4), critic=policy)
    for module in (trainer.actor.model, trainer.critic.backbone, trainer.reward_funcs[0]):
        dtype, attention = settings(module)
        assert dtype == torch.float32 and attention != "eager"
