"""
The rollout-engine seam without vLLM: the importance-sampling correction against hand computations, the sampling
translation, the padding of engine outputs, the weights an engine is sent (against PEFT's own merge) and the vLLM
options' refusals. Real vLLM runs in tests/e2e/test_vllm.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from peft import LoraConfig, get_peft_model

from rft_trl import PPOTrainerVL
from rft_trl.core import policy_loss, rollout_importance_weights, rollout_mismatch_metrics
from rft_trl.rollout import Generation, HFEngine, iter_checkpoint_weights, pad_completions
from rft_trl.rollout.vllm import vllm_sampling_params
from rft_trl.testing import build_tiny_model, length_reward, make_task_dataset, tiny_config

MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


def naive_weights(p, q, mask, mode, low, high):
    """TRL's definition, one row and one token at a time."""
    out = torch.zeros_like(p, dtype=torch.float64)
    for i in range(p.shape[0]):
        tokens = [t for t in range(p.shape[1]) if mask[i, t]]
        diffs = {t: 0.0 if math.isnan(q[i, t]) else float(p[i, t] - q[i, t]) for t in tokens}
        if mode.startswith("sequence"):
            ratios = dict.fromkeys(tokens, math.exp(sum(diffs.values())))
        else:
            ratios = {t: math.exp(d) for t, d in diffs.items()}
        for t, r in ratios.items():
            if mode.endswith("truncate"):
                r = min(max(r, low if low is not None else -math.inf), high if high is not None else math.inf)
            elif (low is not None and r < low) or (high is not None and r > high):
                r = 0.0
            out[i, t] = r
    return out


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bounds", [(None, 3.0), (0.5, 2.0), (None, None)], ids=["default", "both", "none"])
def test_importance_weights_match_trls_definition(mode, bounds):
    generator = torch.Generator().manual_seed(0)
    p = -torch.rand(5, 6, generator=generator) * 3
    q = p + torch.randn(5, 6, generator=generator) * 0.6
    q[1, 2] = float("nan")  # a token the engine did not score: ratio 1
    mask = torch.ones(5, 6, dtype=torch.bool)
    mask[0, 4:] = False
    mask[3, 1:] = False
    weights = rollout_importance_weights(p, q, mask, mode, *bounds)
    torch.testing.assert_close(weights.double(), naive_weights(p, q, mask, mode, *bounds), rtol=1e-6, atol=1e-7)
    assert (weights[~mask] == 0).all()


def test_mismatch_metrics_by_hand():
    p = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, 0.0]])
    q = torch.tensor([[-1.5, -2.0, float("nan")], [-0.25, -0.5, -9.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    weights = rollout_importance_weights(p, q, mask, "sequence_truncate", None, 3.0)
    metrics = rollout_mismatch_metrics(p, q, mask, weights, "sequence_truncate")
    deltas = [0.5, 0.0, -0.25, 0.0]  # scored tokens: row 0's first two, row 1's first two
    assert metrics["sampling/sampling_logp_difference/mean"] == pytest.approx(sum(abs(d) for d in deltas) / 4)
    assert metrics["sampling/sampling_logp_difference/max"] == pytest.approx(0.5)
    assert metrics["sampling/kl"] == pytest.approx(sum(math.expm1(d) - d for d in deltas) / 4)
    # One weight per sequence: exp(0.5) and exp(-0.25).
    assert metrics["sampling/importance_sampling_ratio/min"] == pytest.approx(math.exp(-0.25))
    assert metrics["sampling/importance_sampling_ratio/max"] == pytest.approx(math.exp(0.5))
    assert metrics["sampling/importance_sampling_ratio/mean"] == pytest.approx((math.exp(0.5) + math.exp(-0.25)) / 2)


def test_token_weight_scales_each_tokens_loss_and_keeps_the_normaliser():
    generator = torch.Generator().manual_seed(1)
    log_probs = (-torch.rand(3, 4, generator=generator)).requires_grad_()
    old = log_probs.detach() + 0.05 * torch.randn(3, 4, generator=generator)
    advantages = torch.randn(3, generator=generator)
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[2, 3] = False
    weight = torch.rand(3, 4, generator=generator) * 2
    loss, _ = policy_loss(log_probs, old, advantages, mask, token_weight=weight)
    ratio = (log_probs - old).exp()
    per_token = -torch.min(ratio * advantages[:, None], ratio.clamp(0.8, 1.2) * advantages[:, None]) * weight
    torch.testing.assert_close(loss, per_token[mask].sum() / mask.sum())


def test_sampling_arguments_translate_to_vllm_names():
    args = tiny_config("unused", top_k=5, min_p=0.1, generation_kwargs={"seed": 3})
    params = vllm_sampling_params(args.sampling_kwargs(), n=4, suppressed=[7, 5], regex="[ab]+")
    assert params == {
        "n": 4,
        "logprobs": 0,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": 5,
        "min_p": 0.1,
        "repetition_penalty": args.repetition_penalty,
        "max_tokens": args.generate_max_len,
        "seed": 3,  # TRL's generation_kwargs reach vLLM's SamplingParams as they are
        "logit_bias": {5: -100.0, 7: -100.0},
        "structured_outputs": {"regex": "[ab]+"},
    }
    greedy = vllm_sampling_params({**args.sampling_kwargs(), "do_sample": False, "top_k": None}, n=1)
    assert greedy["temperature"] == 0.0 and greedy["top_k"] == 0


def test_engine_completions_are_cut_after_the_first_eos_and_padded():
    prompts = torch.tensor([[0, 5, 6], [7, 8, 9]])  # 0 = pad
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    generation = pad_completions(prompts, mask, [[11, 2, 12], [13, 14]], [[-0.1, -0.2, -0.3], [-0.4, -0.5]], 2, 0)
    assert generation.sequences.tolist() == [[0, 5, 6, 11, 2], [7, 8, 9, 13, 14]]
    assert generation.action_mask.tolist() == [[True, True], [True, True]]
    assert generation.attention_mask.tolist() == [[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]]
    torch.testing.assert_close(generation.log_probs, torch.tensor([[-0.1, -0.2], [-0.4, -0.5]]))
    short = pad_completions(prompts, mask, [[2], [13, 14, 15]], None, [2, 15], 0)
    assert short.sequences[:, 3:].tolist() == [[2, 0, 0], [13, 14, 15]]
    assert short.action_mask.tolist() == [[True, False, False], [True, True, True]]
    assert short.log_probs is None


def test_weights_sent_to_an_engine_equal_peft_merged_model():
    model, _ = build_tiny_model("qwen3")
    reference_model, _ = build_tiny_model("qwen3")
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", modules_to_save=["lm_head"])
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                parameter.add_(torch.randn_like(parameter) * 0.1)  # a trained adapter (B starts at zero)
    sent = dict(iter_checkpoint_weights(peft_model))
    merged = get_peft_model(reference_model, config)
    merged.load_state_dict(peft_model.state_dict())
    expected = dict(merged.merge_and_unload().named_parameters())
    assert sent.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(sent[name], value, msg=name)
    assert any(not torch.equal(sent[name], p) for name, p in build_tiny_model("qwen3")[0].named_parameters())
    plain = dict(iter_checkpoint_weights(build_tiny_model("qwen3")[0]))
    assert plain.keys() == expected.keys()


def test_importance_weights_reach_the_samples_and_scale_the_loss(tmp_path):
    model, tokenizer = build_tiny_model("qwen3")
    args = tiny_config(str(tmp_path), beta=0.0)
    # The correction's settings, as use_vllm=True would validate them (vLLM itself is not in this environment: an
    # engine that reports log-probs stands in for it, here HF generate's samples with log-probs offset by 0.1).
    args.vllm_importance_sampling_mode = "token_truncate"
    trainer = PPOTrainerVL(
        model, [length_reward], args, train_dataset=make_task_dataset("text", 4), processing_class=tokenizer
    )
    maker = trainer.experience_maker

    def engine_generate(batch, n, sampling_kwargs):
        generation = HFEngine.generate(maker.engine, batch, n, sampling_kwargs)
        samples = {
            "sequences": generation.sequences,
            "attention_mask": generation.attention_mask,
            "action_mask": generation.action_mask,
            "token_fields": {},
            "multimodal_inputs": [{}] * generation.sequences.shape[0],
        }
        log_probs = maker._forward_in_chunks(
            lambda *a, **k: maker.actor(*a, temperature=args.temperature, **k), samples
        )
        engine_log_probs = torch.where(generation.action_mask, log_probs - 0.1, 0.0)
        return Generation(generation.sequences, generation.attention_mask, generation.action_mask, engine_log_probs)

    maker.engine.generate = engine_generate
    rollout = maker.make_experience(list(make_task_dataset("text", 2)))
    for item in rollout.items:
        # token_truncate: every scored token's weight is exp(log p - log q) = exp(0.1), within [None, 3].
        torch.testing.assert_close(
            item.importance_weights, torch.full_like(item.importance_weights, math.exp(0.1)), rtol=1e-5, atol=1e-5
        )
    assert rollout.metrics["sampling/sampling_logp_difference/mean"] == pytest.approx(0.1, abs=1e-5)
    assert rollout.metrics["sampling/importance_sampling_ratio/max"] == pytest.approx(math.exp(0.1), abs=1e-5)
    # The weight multiplies the per-token policy loss: the whole loss scales by exp(0.1).
    batch = trainer.replay_buffer.collate_fn(rollout.items[:2])
    weighted = trainer.compute_loss(trainer.model, batch)
    batch.importance_weights = None
    unweighted = trainer.compute_loss(trainer.model, batch)
    torch.testing.assert_close(weighted, unweighted * math.exp(0.1), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"vllm_mode": "async"}, "vllm_mode must be 'colocate' or 'server'"),
        ({"vllm_importance_sampling_mode": "token"}, "vllm_importance_sampling_mode must be one of"),
        ({"vllm_group_port": 5000}, "vllm_group_port is TRL's NCCL weight-transfer port"),
        ({"vllm_tensor_parallel_size": 0}, "vllm_tensor_parallel_size must be >= 1, got 0"),
        ({"vllm_server_port": 9000}, "vllm_server_port is a server-mode option; vllm_mode is 'colocate'"),
        ({"vllm_mode": "server", "vllm_gpu_memory_utilization": 0.5}, "pass `--gpu-memory-utilization` to `vllm"),
        ({"vllm_mode": "server", "vllm_enforce_eager": True}, "pass `--enforce-eager` to `vllm serve`"),
        ({"loss_type": "vespo"}, "loss_type='vespo' with vllm_importance_sampling_correction is not implemented"),
        ({"cache_implementation": "static"}, "cache_implementation is an option of transformers' generate"),
        (
            {"vllm_importance_sampling_clip_min": 2.0, "vllm_importance_sampling_clip_max": 1.0},
            "vllm_importance_sampling_clip_min=2.0 is above",
        ),
    ],
)
def test_vllm_options_outside_what_is_implemented_are_refused(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        tiny_config(str(tmp_path), use_vllm=True, **overrides)


def test_deprecated_importance_sampling_cap_sets_clip_max(tmp_path):
    args = tiny_config(str(tmp_path), use_vllm=True, vllm_importance_sampling_cap=5.0)
    assert args.vllm_importance_sampling_clip_max == 5.0
    assert tiny_config(str(tmp_path), use_vllm=True, vllm_mode="server").vllm_server_url() == "http://0.0.0.0:8000"


def test_server_messages_inline_each_medium_in_its_part():
    import base64
    import io

    import numpy as np
    import soundfile
    from PIL import Image

    from rft_trl.rollout.vllm import openai_messages

    image = Image.new("RGB", (8, 6), (255, 0, 0))
    waveform = np.linspace(-0.5, 0.5, 160, dtype=np.float32)
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": [{"type": "image"}, {"type": "audio"}, {"type": "text", "text": "What?"}]},
    ]
    converted = openai_messages(messages, {"image": [image], "audio": [(waveform, 16000)]})
    assert converted[0] == {"role": "system", "content": "Answer briefly."}
    image_part, audio_part, text_part = converted[1]["content"]
    assert text_part == {"type": "text", "text": "What?"}
    url = image_part["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert decoded.size == (8, 6) and decoded.getpixel((0, 0)) == (255, 0, 0)
    assert audio_part["input_audio"]["format"] == "wav"
    samples, rate = soundfile.read(io.BytesIO(base64.b64decode(audio_part["input_audio"]["data"])), dtype="float32")
    assert rate == 16000
    np.testing.assert_allclose(samples, waveform, atol=1e-4)  # 16-bit PCM
    with pytest.raises(ValueError, match="does not take video prompts"):
        openai_messages([{"role": "user", "content": [{"type": "video"}]}], {"video": [np.zeros((2, 4, 4, 3))]})


@pytest.mark.parametrize("kind", ["qwen3", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen2_audio", "gemma3"])
def test_weights_sent_to_an_engine_are_named_and_shaped_as_save_pretrained_writes(tmp_path, kind):
    # An engine loads a family's checkpoints: the weights it is sent carry the checkpoint's names, which differ from
    # the runtime names where transformers moved modules (Qwen2-Audio's language model, Qwen2.5-VL's vision tower).
    from safetensors.torch import load_file

    model, _ = build_tiny_model(kind)
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    # Built in memory (the conversions collected once, then detached from the model), and loaded by from_pretrained
    # (the conversions transformers recorded while loading).
    loaded = type(model).from_pretrained(tmp_path)
    assert hasattr(loaded, "_weight_conversions")
    for source in (model, loaded):
        sent = dict(iter_checkpoint_weights(source))
        assert sent.keys() == saved.keys()
        for name, value in saved.items():
            torch.testing.assert_close(sent[name], value, rtol=0, atol=0, msg=name)
    assert not hasattr(model, "_weight_conversions")
