"""
A released Omni checkpoint (`Qwen/Qwen2.5-Omni-*`) holds the whole model (thinker, talker, token2wav) under one
`qwen2_5_omni` config. Given its path, the trainer trains the thinker: built here as a tiny whole model in the Hub's
layout (`thinker.*`, `talker.*`, `token2wav.*` weights), saved, and loaded by path.
"""

import pytest
import torch
from transformers import (
    Qwen2_5OmniConfig,
    Qwen2_5OmniForConditionalGeneration,
    Qwen2_5OmniThinkerForConditionalGeneration,
)
from transformers.models.qwen2_5_omni import Qwen2_5OmniTalkerConfig, Qwen2_5OmniToken2WavConfig

from rft_trl import ActorAL, PPOTrainerVL
from rft_trl.testing import build_tiny_model, length_reward, load_processing_class, make_pitch_dataset, tiny_config


@pytest.fixture(scope="module")
def whole_omni_checkpoint(tmp_path_factory):
    """A tiny whole Qwen2.5-Omni saved like the Hub's, its thinker the tiny `qwen2_5_omni` model; returns both."""
    thinker, processor = build_tiny_model("qwen2_5_omni")
    hidden = thinker.config.text_config.hidden_size
    # Speech parts as small as their configs allow; RL never runs them.
    talker = Qwen2_5OmniTalkerConfig(
        embedding_size=hidden, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, vocab_size=64,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
        tts_codec_start_token_id=60, tts_codec_end_token_id=61, tts_codec_pad_token_id=62,
        tts_codec_mask_token_id=63,
    )  # fmt: skip
    token2wav = Qwen2_5OmniToken2WavConfig(
        dit_config={
            "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "head_dim": 16, "emb_dim": 16,
            "num_embeds": 65, "mel_dim": 8, "enc_emb_dim": 8, "enc_dim": 8, "enc_channels": [16, 16, 16, 16, 48],
            "enc_attention_channels": 8, "enc_se_channels": 8, "look_ahead_layers": [1], "look_backward_layers": [0],
        },
        bigvgan_config={
            "mel_dim": 8, "upsample_initial_channel": 16, "resblock_kernel_sizes": [3],
            "resblock_dilation_sizes": [[1, 3, 5]], "upsample_rates": [2, 2], "upsample_kernel_sizes": [4, 4],
        },
    )  # fmt: skip
    config = Qwen2_5OmniConfig(
        thinker_config=thinker.config.to_dict(), talker_config=talker.to_dict(), token2wav_config=token2wav.to_dict()
    )
    torch.manual_seed(0)
    whole = Qwen2_5OmniForConditionalGeneration(config).eval()
    whole.thinker.load_state_dict(thinker.state_dict())
    path = tmp_path_factory.mktemp("omni")
    whole.save_pretrained(path)
    processor.save_pretrained(path)
    return path, thinker


def test_a_whole_omni_checkpoint_loads_its_thinker_with_every_weight(whole_omni_checkpoint):
    path, thinker = whole_omni_checkpoint
    actor = ActorAL(str(path))
    assert type(actor.hf_model) is Qwen2_5OmniThinkerForConditionalGeneration
    loaded, expected = actor.hf_model.state_dict(), thinker.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[name], expected[name]) for name in expected)


def test_the_trainer_trains_the_thinker_of_a_whole_omni_checkpoint(whole_omni_checkpoint, tmp_path):
    path, thinker = whole_omni_checkpoint
    trainer = PPOTrainerVL(
        model=str(path),
        reward_funcs=[length_reward],
        args=tiny_config(str(tmp_path), max_steps=1),
        train_dataset=make_pitch_dataset(8),
        processing_class=load_processing_class(str(path)),
    )
    trainer.train()
    assert type(trainer.model) is Qwen2_5OmniThinkerForConditionalGeneration
    weights = trainer.model.state_dict()
    assert any(not torch.equal(weights[name], value) for name, value in thinker.state_dict().items())
