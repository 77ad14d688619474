"""A rollout's no-grad passes encode each prompt's images once (transformers' `mm_encoder_outputs`), as on the pixels.

The family-by-family exactness (generation and log-probs with the cached outputs equal those on the pixels) is a row
of the conformance matrix, `tests/integration/test_model_matrix.py`. Here: the trainer's rollout, counted at the vision
tower.
"""

import pytest
import torch

from rft_trl import PPOTrainerVL
from rft_trl.data import PromptCollator
from rft_trl.models.media_encodings import MediaEncodings
from rft_trl.testing import build_tiny_model, count_tower_images, length_reward, make_task_dataset, tiny_config

PROMPTS, SAMPLES = 4, 4


def counted_trainer(tmp_path, cache: bool, **overrides) -> tuple[PPOTrainerVL, dict[str, int]]:
    """
    `PPOTrainerVL` on the tiny Qwen2.5-VL, 4 prompts x 4 samples per rollout in chunks of 4, replayed as 2 optimizer
    steps (so the rollout policy's log-probs are computed), and the images its vision towers encode (the policy's,
    and the reference's when there is one), counted at each tower.
    """
    model, processor = build_tiny_model("qwen2_5_vl")
    args = tiny_config(
        str(tmp_path / str(cache)),
        rollout_batch_size=PROMPTS,
        n_samples_per_prompt=SAMPLES,
        micro_rollout_batch_size=4,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        cache_encoder_outputs=cache,
        **overrides,
    )
    trainer = PPOTrainerVL(
        model, [length_reward], args, train_dataset=make_task_dataset("colour", 8), processing_class=processor
    )
    assert trainer.experience_maker.need_old_log_probs
    return trainer, count_tower_images(trainer)


def rollout(tmp_path, cache: bool):
    """One rollout (generation and the rollout policy's log-probs) and the images the policy's tower encoded."""
    trainer, counts = counted_trainer(tmp_path, cache, beta=0.0)
    torch.manual_seed(0)
    result = trainer.experience_maker.make_experience(list(make_task_dataset("colour", PROMPTS)))
    return result, counts["policy"], trainer.experience_maker.media_encodings


def test_a_rollout_encodes_each_prompts_image_once_and_scores_as_on_the_pixels(tmp_path):
    cached, cached_images, encodings = rollout(tmp_path, cache=True)
    plain, plain_images, _ = rollout(tmp_path, cache=False)
    # Each of the 4 prompts' one image: once, where the pixels' path encodes it for each sample in both passes.
    assert cached_images == PROMPTS and encodings.encoder_calls == PROMPTS
    assert plain_images == 2 * PROMPTS * SAMPLES
    assert len(cached.items) == len(plain.items) == PROMPTS * SAMPLES
    for ours, reference in zip(cached.items, plain.items):
        assert torch.equal(ours.sequences, reference.sequences)
        torch.testing.assert_close(ours.action_log_probs, reference.action_log_probs, atol=1e-6, rtol=0)
    assert not encodings._entries  # released when the rollout's no-grad passes end


def test_the_cache_steps_aside_for_a_model_whose_forward_takes_no_encoder_outputs(tmp_path, caplog):
    # Qwen2-Audio encodes its audio inside its forward: the pixels' (here, features') path, the reason logged.
    model, _ = build_tiny_model("qwen2_audio")
    with caplog.at_level("INFO", logger="rft_trl.models.media_encodings"):
        encodings = MediaEncodings(model)
    assert "qwen2_audio" in encodings.reason and "qwen2_audio" in caplog.text
    sample = {"input_features": torch.zeros(1, 4, 8), "feature_attention_mask": torch.ones(1, 8, dtype=torch.long)}
    with torch.no_grad():
        inputs = encodings.model_inputs([sample, sample], torch.device("cpu"))
    assert set(inputs) == {"input_features", "feature_attention_mask"} and inputs["input_features"].shape[0] == 2


@pytest.mark.parametrize("freeze_encoder", [True, False])
def test_training_on_cached_encoder_outputs_equals_training_on_the_pixels(tmp_path, freeze_encoder):
    # Two optimizer steps from one rollout (the rollout policy's log-probs computed), with a KL reference: the same
    # losses and weights as on the pixels. Frozen encoder: each prompt's image is encoded once by the policy (the
    # update reuses the rollout's outputs) and once by the reference. Trained encoder: the update encodes each
    # prompt once per micro-batch, with gradients, where the pixels' path encodes every sample.
    runs = {}
    for cache in (True, False):
        trainer, counts = counted_trainer(
            tmp_path,
            cache,
            max_steps=2,
            beta=0.1,
            freeze_encoder=freeze_encoder,
            # Plain SGD: Adam's first steps move every weight by about the learning rate whatever its gradient's
            # size, so a gradient of 1e-12 that differs in its last bits (the same sum in another order) would move a
            # weight by 1e-4 one way and not the other.
            optim="sgd",
        )
        model = trainer.model
        trainer.train()
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        runs[cache] = (losses, {n: p.detach().clone() for n, p in model.named_parameters()}, counts)
    (cached_losses, cached_weights, cached_counts), (losses, weights, counts) = runs[True], runs[False]
    assert len(cached_losses) == 2
    torch.testing.assert_close(cached_losses, losses, atol=1e-6, rtol=0)
    for name, value in weights.items():
        torch.testing.assert_close(cached_weights[name], value, atol=1e-7, rtol=0, msg=name)
    initial = dict(build_tiny_model("qwen2_5_vl")[0].named_parameters())
    tower = [name for name in weights if ".visual." in name]
    # The tower moved exactly when it trains: the update's gradients reach it through the cached path's encoding.
    assert all(torch.equal(cached_weights[name], initial[name]) for name in tower) == freeze_encoder
    samples = PROMPTS * SAMPLES
    # The pixels' path: every sample in generation, the rollout policy's log-probs and the update; and the reference.
    assert counts == {"policy": 3 * samples, "reference": samples}
    assert cached_counts["reference"] == PROMPTS
    if freeze_encoder:
        assert cached_counts["policy"] == PROMPTS
    else:
        # The rollout once per prompt; the update once per prompt present in each of its 4 micro-batches.
        assert PROMPTS + 4 <= cached_counts["policy"] <= PROMPTS + samples


@pytest.mark.parametrize("attention_dropout", [0.0, 0.1])
def test_the_update_reuses_cached_outputs_only_from_a_frozen_encoder_that_drops_nothing(attention_dropout):
    # Gemma 3's SigLIP tower: its attention drops out at `attention_dropout` while training. Frozen without dropout,
    # the encoder's outputs cannot change and the update may take the cached ones; with dropout, or a parameter that
    # trains, they could, and it encodes again.
    model, processor = build_tiny_model("gemma3")
    config = model.config
    config.vision_config.attention_dropout = attention_dropout
    model = type(model)(config)
    model.requires_grad_(False)
    encodings = MediaEncodings(model)
    assert not encodings.frozen  # nothing known before the encoder's first call
    batch = PromptCollator(processor)(list(make_task_dataset("colour", 2)))
    with torch.no_grad():
        encodings.model_inputs(batch.sample_multimodal_inputs, torch.device("cpu"))
    assert encodings.frozen == (attention_dropout == 0.0)
    next(model.model.vision_tower.parameters()).requires_grad_(True)
    assert not encodings.frozen
