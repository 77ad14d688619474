"""A rollout's no-grad passes encode each prompt's images once (transformers' `mm_encoder_outputs`), as on the pixels.

The family-by-family exactness (generation and log-probs with the cached outputs equal those on the pixels) is a row
of the conformance matrix, `tests/test_model_matrix.py`. Here: the trainer's rollout, counted at the vision tower.
"""

import torch

from rft_trl import PPOTrainerVL
from rft_trl.testing import build_tiny_model, length_reward, make_task_dataset, tiny_config

PROMPTS, SAMPLES = 4, 4


def rollout(tmp_path, cache: bool):
    """One rollout of 4 prompts x 4 samples (generation and the rollout policy's log-probs in chunks of 4 samples),
    and the images the vision tower encoded during it."""
    model, processor = build_tiny_model("qwen2_5_vl")
    args = tiny_config(
        str(tmp_path / str(cache)),
        rollout_batch_size=PROMPTS,
        n_samples_per_prompt=SAMPLES,
        micro_rollout_batch_size=4,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,  # 2 optimizer steps per rollout: the rollout policy's log-probs are computed
        beta=0.0,
        cache_encoder_outputs=cache,
    )
    rows = list(make_task_dataset("colour", PROMPTS))
    trainer = PPOTrainerVL(
        model, [length_reward], args, train_dataset=make_task_dataset("colour", 8), processing_class=processor
    )
    assert trainer.experience_maker.need_old_log_probs
    encoded = []
    hook = model.model.visual.register_forward_pre_hook(
        lambda module, args, kwargs: encoded.append(kwargs["grid_thw"].shape[0]), with_kwargs=True
    )
    torch.manual_seed(0)
    result = trainer.experience_maker.make_experience(rows)
    hook.remove()
    return result, sum(encoded), trainer.experience_maker.media_encodings


def test_a_rollout_encodes_each_prompts_image_once_and_scores_as_on_the_pixels(tmp_path):
    cached, cached_images, encodings = rollout(tmp_path, cache=True)
    plain, plain_images, _ = rollout(tmp_path, cache=False)
    # Each of the 4 prompts' one image: once, where the pixels path encodes it for each of its 4 samples in both passes.
    assert cached_images == PROMPTS and encodings.encoder_calls == PROMPTS
    assert plain_images == 2 * PROMPTS * SAMPLES
    assert len(cached.items) == len(plain.items) == PROMPTS * SAMPLES
    for ours, reference in zip(cached.items, plain.items):
        assert torch.equal(ours.sequences, reference.sequences)
        torch.testing.assert_close(ours.action_log_probs, reference.action_log_probs, atol=1e-6, rtol=0)
    assert not encodings._entries  # released when the rollout's no-grad passes end


def test_the_cache_steps_aside_for_a_model_whose_forward_takes_no_encoder_outputs(tmp_path, caplog):
    # Qwen2-Audio encodes its audio inside its forward: the pixels' (here, features') path, the reason logged.
    from rft_trl.models.media_encodings import MediaEncodings

    model, _ = build_tiny_model("qwen2_audio")
    with caplog.at_level("INFO", logger="rft_trl.models.media_encodings"):
        encodings = MediaEncodings(model)
    assert "qwen2_audio" in encodings.reason and "qwen2_audio" in caplog.text
    sample = {"input_features": torch.zeros(1, 4, 8), "feature_attention_mask": torch.ones(1, 8, dtype=torch.long)}
    with torch.no_grad():
        inputs = encodings.model_inputs([sample, sample], torch.device("cpu"))
    assert set(inputs) == {"input_features", "feature_attention_mask"} and inputs["input_features"].shape[0] == 2
