"""Safe loading: no remote code unless asked for, weights from safetensors only, and a pickle crafted to run code
when loaded is refused (or never opened) wherever it sits: a model directory or a checkpoint."""

import json
import os
import shutil

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMultimodalLM,
    AutoModelForSequenceClassification,
)

from rft_trl import PPOTrainerVL, RFTConfig
from rft_trl.models import Actor, Critic, RewardModel
from rft_trl.rewards.functions import completion_text
from rft_trl.testing import build_tiny_model, build_tiny_tokenizer, make_task_dataset, save_tiny_model
from rft_trl.trainers.checkpointing import COMPLETE_MARKER


class WriteMarkerOnLoad:
    """Unpickling this calls `open(path, "w")`: the file appearing means the pickle ran code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def write_malicious_pickle(path, marker) -> None:
    torch.save(WriteMarkerOnLoad(marker), path)


def test_the_malicious_pickle_does_run_code_when_trusted(tmp_path):
    # The canary: what the loaders below refuse would have written the marker.
    marker = tmp_path / "PWNED"
    write_malicious_pickle(tmp_path / "evil.pt", marker)
    torch.load(tmp_path / "evil.pt", weights_only=False).close()
    assert marker.exists()


# ------------------------------------------------------------------------------------------------ remote code


def write_remote_code_model(path, marker) -> None:
    """A model directory (with a plain tokenizer) whose config asks for custom code; importing it writes `marker`."""
    build_tiny_tokenizer().save_pretrained(path)
    code = f"open({str(marker)!r}, 'w').write('ran')\n"
    for module in ("configuration_evil", "modeling_evil"):
        with open(os.path.join(path, f"{module}.py"), "w") as f:
            f.write(code)
    auto_map = {
        "AutoConfig": "configuration_evil.EvilConfig",
        "AutoModel": "modeling_evil.EvilModel",
        "AutoModelForCausalLM": "modeling_evil.EvilModel",
        "AutoModelForSequenceClassification": "modeling_evil.EvilModel",
    }
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"model_type": "evil_remote", "auto_map": auto_map}, f)


@pytest.mark.parametrize(
    "load",
    [
        Actor,
        Critic,
        RewardModel,
        lambda path: PPOTrainerVL(path, [len], RFTConfig("unused", use_cpu=True, report_to="none")),
    ],
    ids=["Actor", "Critic", "RewardModel", "PPOTrainerVL"],
)
def test_remote_code_is_not_run_by_default(tmp_path, load):
    marker = tmp_path / "PWNED"
    model_dir = tmp_path / "remote_code_model"
    write_remote_code_model(model_dir, marker)
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        load(str(model_dir))
    assert not marker.exists()


def test_loaders_ask_for_safetensors_without_remote_code(tmp_path, monkeypatch):
    calls = []

    def spy(auto_class):
        original = auto_class.from_pretrained.__func__

        def from_pretrained(cls, *args, **kwargs):
            calls.append((cls.__name__, kwargs))
            return original(cls, *args, **kwargs)

        monkeypatch.setattr(auto_class, "from_pretrained", classmethod(from_pretrained))

    # Every auto class our loaders pick (each defines its own from_pretrained).
    for auto_class in (
        AutoConfig,
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForMultimodalLM,
        AutoModelForSequenceClassification,
    ):
        spy(auto_class)
    text = save_tiny_model("qwen2", str(tmp_path / "text"))
    vision = save_tiny_model("qwen2_5_vl", str(tmp_path / "vision"))
    reward = save_tiny_model("qwen2_reward", str(tmp_path / "reward"))
    Actor(text)
    Actor(vision)
    Critic(text)
    RewardModel(reward)
    # Text actor: causal LM; vision actor: multimodal LM; critic: backbone; reward model: sequence classification.
    models = [name for name, _ in calls if name != "AutoConfig"]
    assert models == [
        "AutoModelForCausalLM",
        "AutoModelForMultimodalLM",
        "AutoModel",
        "AutoModelForSequenceClassification",
    ]
    for name, kwargs in calls:
        assert kwargs["trust_remote_code"] is False, name
        if name != "AutoConfig":
            assert kwargs["use_safetensors"] is True, name
    # TRL's switch exists (GRPOConfig.trust_remote_code) and is off unless set; tests/integration/test_trl_options.py
    # shows it reaches loading when set.
    assert RFTConfig.__dataclass_fields__["trust_remote_code"].default is False


# ------------------------------------------------------------------------------------------------ pickles


def test_a_model_directory_with_only_a_pickle_is_refused(tmp_path):
    marker = tmp_path / "PWNED"
    model_dir = save_tiny_model("qwen2", str(tmp_path / "model"))
    os.remove(os.path.join(model_dir, "model.safetensors"))
    write_malicious_pickle(os.path.join(model_dir, "pytorch_model.bin"), marker)
    with pytest.raises(OSError, match="model.safetensors"):
        Actor(model_dir)
    assert not marker.exists()


def test_a_pickle_beside_safetensors_is_never_opened(tmp_path):
    marker = tmp_path / "PWNED"
    model_dir = save_tiny_model("qwen2", str(tmp_path / "model"))
    write_malicious_pickle(os.path.join(model_dir, "pytorch_model.bin"), marker)
    write_malicious_pickle(os.path.join(model_dir, "training_args.bin"), marker)
    actor = Actor(model_dir)
    assert actor.hf_model.num_parameters() > 0
    assert not marker.exists()


def length_reward(prompts, completions, **columns):
    return [1.0 / (1.0 + len(completion_text(c))) for c in completions]


def make_trainer(output_dir, max_steps) -> PPOTrainerVL:
    model, tokenizer = build_tiny_model("qwen2")
    args = RFTConfig(
        output_dir=str(output_dir),
        n_samples_per_prompt=2,
        rollout_batch_size=2,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_steps=max_steps,
        generate_max_len=4,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        save_strategy="steps",
        save_steps=1,
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )
    return PPOTrainerVL(
        model, [length_reward], args, train_dataset=make_task_dataset("text", 8), processing_class=tokenizer
    )


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    make_trainer(out, max_steps=1).train()
    return out / "checkpoint-1"


def plant_in_checkpoint(checkpoint, name, marker) -> None:
    """Replace (or add) a file with the malicious pickle and re-sign the marker, as a forged checkpoint would."""
    write_malicious_pickle(checkpoint / name, marker)
    with open(checkpoint / COMPLETE_MARKER) as f:
        signed = json.load(f)
    signed["files"][name] = os.path.getsize(checkpoint / name)
    with open(checkpoint / COMPLETE_MARKER, "w") as f:
        json.dump(signed, f)


@pytest.mark.parametrize("name", ["rng_state.pth", "optimizer.pt", "scheduler.pt"])
def test_resume_refuses_a_malicious_trainer_pickle(tmp_path, saved_checkpoint, name):
    marker = tmp_path / "PWNED"
    out = tmp_path / "out"
    shutil.copytree(saved_checkpoint, out / "checkpoint-1")
    plant_in_checkpoint(out / "checkpoint-1", name, marker)
    # The Trainer reads these with torch.load(weights_only=True): the forbidden global stops the load.
    with pytest.raises(Exception, match="Weights only load failed"):
        make_trainer(out, max_steps=2).train(resume_from_checkpoint=True)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["pytorch_model.bin", "training_args.bin"])
def test_resume_never_opens_other_pickles(tmp_path, saved_checkpoint, name):
    marker = tmp_path / "PWNED"
    out = tmp_path / "out"
    shutil.copytree(saved_checkpoint, out / "checkpoint-1")
    plant_in_checkpoint(out / "checkpoint-1", name, marker)
    trainer = make_trainer(out, max_steps=2)
    trainer.train(resume_from_checkpoint=True)
    assert trainer.state.global_step == 2
    assert not marker.exists()
