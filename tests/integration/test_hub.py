"""Saving and sharing a LoRA run: `save_model` output reloads with PEFT, and `push_to_hub` uploads a complete folder.

The Hub is never contacted: `HfApi.create_repo` and `HfApi.upload_folder` are replaced by recorders (the Trainer
reaches the Hub only through those two, via `transformers.utils.hub.hf_api()`), so the offline mode the test suite
runs in never refuses a request.
"""

import os
from concurrent.futures import Future

import torch
from huggingface_hub import HfApi, ModelCard, RepoUrl
from huggingface_hub.utils import filter_repo_objects
from peft import LoraConfig, PeftModel

from rft_trl import ActorVL, PPOTrainerVL
from rft_trl.testing import build_tiny_qwen2_vl, make_colour_dataset, tiny_config
from rft_trl.trainers.checkpointing import COMPLETE_MARKER, RFT_STATE_NAME

TOKEN = "hf_test_token_that_must_not_leak"


def dense_reward(prompts, completions, **columns):
    """Distinct characters: dense enough that every group has spread and the adapter moves in two steps."""
    return [len(set(c if isinstance(c, str) else c[0]["content"])) / 10 for c in completions]


def make_trainer(tmp_path, **overrides) -> PPOTrainerVL:
    model, processor = build_tiny_qwen2_vl(seed=0)
    return PPOTrainerVL(
        model,
        [dense_reward],
        tiny_config(str(tmp_path / "out"), **{"generate_max_len": 6, "learning_rate": 5e-2, **overrides}),
        train_dataset=make_colour_dataset(8, seed=0),
        processing_class=processor,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )


def fixed_sequence(processor) -> tuple[dict, int]:
    """One image prompt followed by a fixed 4-token completion, as actor inputs, and the completion length."""
    row = make_colour_dataset(1, seed=3)[0]
    text = processor.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
    prompt = processor(text=[text], images=[row["image"]], return_tensors="pt")
    completion = torch.tensor([processor.tokenizer.encode("red blue")[:3] + [processor.tokenizer.eos_token_id]])
    sequences = torch.cat([prompt["input_ids"], completion], dim=1)
    inputs = {
        "sequences": sequences,
        "attention_mask": torch.ones_like(sequences),
        "pixel_values": prompt["pixel_values"],
        "image_grid_thw": prompt["image_grid_thw"],
        "mm_token_type_ids": prompt["mm_token_type_ids"],  # the prompt's; the actor extends it over the completion
    }
    return inputs, completion.shape[1]


@torch.no_grad()
def log_probs(actor, inputs: dict, num_actions: int) -> torch.Tensor:
    actor.eval()
    return actor(num_actions=num_actions, **inputs)


def test_saved_adapter_reloads_with_peft_and_reproduces_the_policy(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))
    saved = set(os.listdir(tmp_path / "saved"))
    assert {"adapter_model.safetensors", "adapter_config.json"} <= saved
    # The adapter alone: the frozen base weights are not written again.
    assert "model.safetensors" not in saved

    inputs, num_actions = fixed_sequence(trainer.processing_class)
    trained = log_probs(trainer.actor, inputs, num_actions)

    # Scored as the run scores: without the media tokens generation never samples.
    suppressed = trainer.actor.suppressed_token_ids
    assert suppressed
    base, _ = build_tiny_qwen2_vl(seed=0)
    reloaded = ActorVL(PeftModel.from_pretrained(base, str(tmp_path / "saved")), suppressed_token_ids=suppressed)
    torch.testing.assert_close(log_probs(reloaded, inputs, num_actions), trained)

    # The comparison can fail: the untouched base model scores the same tokens differently.
    untouched, _ = build_tiny_qwen2_vl(seed=0)
    untouched_actor = ActorVL(untouched, suppressed_token_ids=suppressed)
    assert (log_probs(untouched_actor, inputs, num_actions) - trained).abs().max() > 1e-3


def test_push_to_hub_uploads_adapter_processor_and_model_card(tmp_path, monkeypatch):
    # The test suite runs offline (tests/conftest.py): the recorders below must be the only route to the Hub.
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    created, uploads = [], []

    def create_repo(self, repo_id, *, token=None, private=None, exist_ok=False, **kwargs):
        created.append({"repo_id": repo_id, "token": token, "exist_ok": exist_ok})
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, ignore_patterns=None, allow_patterns=None, **kwargs):
        # Snapshot what the real client would send: the folder's files after the same pattern filtering.
        files = sorted(
            os.path.relpath(os.path.join(root, name), folder_path).replace(os.sep, "/")
            for root, _, names in os.walk(folder_path)
            for name in names
        )
        kept = filter_repo_objects(files, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns)
        contents = {}
        for path in kept:
            with open(os.path.join(folder_path, path), "rb") as f:
                contents[path] = f.read()
        uploads.append({"repo_id": repo_id, "files": contents, **kwargs})
        return "recorded"

    def create_commit(self, *args, **kwargs):
        raise AssertionError("push_to_hub reached create_commit directly, bypassing the recorded upload_folder")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)

    trainer = make_trainer(tmp_path, push_to_hub=True, hub_model_id="user/x", hub_token=TOKEN)
    assert created == [{"repo_id": "user/x", "token": TOKEN, "exist_ok": True}]
    trainer.train()
    trainer.push_to_hub(dataset_name="colour")

    assert len(uploads) == 1
    upload = uploads[0]
    assert (upload["repo_id"], upload["commit_message"], upload["token"]) == ("user/x", "End of training", TOKEN)
    files = upload["files"]
    adapter = {"adapter_model.safetensors", "adapter_config.json"}
    processor = {"processor_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}
    assert adapter | processor | {"README.md", "reward_curve.png"} <= set(files)
    assert files["reward_curve.png"].startswith(b"\x89PNG")

    readme = files["README.md"].decode()
    assert "![Mean reward per optimizer step](reward_curve.png)" in readme
    final_reward = [entry["reward"] for entry in trainer.state.log_history if "reward" in entry][-1]
    assert f"| final rollout reward (`reward`) | {final_reward:.4f} |" in readme
    # No eval set: the card says so rather than inventing a number.
    assert "| final eval reward (`eval_reward`, greedy) | not measured |" in readme
    assert 'PeftModel.from_pretrained(base_model, "user/x")' in readme
    card = ModelCard(readme)
    assert card.data.library_name == "peft"
    assert card.data.datasets == ["colour"]
    assert {"rft_trl", "group_norm", "image"} <= set(card.data.tags)

    # The token goes to the upload call only: not into the card nor any other uploaded file.
    for path, content in files.items():
        assert TOKEN.encode() not in content, path


def test_checkpoint_push_uploads_the_committed_checkpoint(tmp_path, monkeypatch):
    # hub_strategy="checkpoint" uploads each saved checkpoint as `last-checkpoint`: resuming from the Hub's copy
    # needs it complete, commit marker and rft_trl's state included, so the push must follow the commit.
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    uploads = []

    def upload_folder(self, *, repo_id, folder_path, path_in_repo=None, **kwargs):
        uploads.append({"folder": folder_path, "path_in_repo": path_in_repo, "files": sorted(os.listdir(folder_path))})
        done = Future()
        done.set_result("recorded")
        return done

    monkeypatch.setattr(
        HfApi, "create_repo", lambda self, repo_id, **kwargs: RepoUrl(f"https://huggingface.co/{repo_id}")
    )
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    trainer = make_trainer(
        tmp_path,
        push_to_hub=True,
        hub_model_id="user/x",
        hub_strategy="checkpoint",
        save_strategy="steps",
        save_steps=1,
    )
    trainer.train()
    checkpoints = [upload for upload in uploads if upload["path_in_repo"] == "last-checkpoint"]
    assert [os.path.basename(upload["folder"]) for upload in checkpoints] == ["checkpoint-1", "checkpoint-2"]
    for upload in checkpoints:
        assert os.path.dirname(upload["folder"]) == str(
            tmp_path / "out"
        )  # the committed directory, not the staging one
        assert {COMPLETE_MARKER, RFT_STATE_NAME, "adapter_model.safetensors", "optimizer.pt"} <= set(upload["files"])
