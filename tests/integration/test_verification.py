"""
`verify_model`: before training, the trainer checks on a tiny synthetic batch built with the run's processor that the
policy's log-probs through rft_trl equal the model's own forward on each sample alone, and refuses, naming the model
class, the check and the measured difference, what does not hold. Shown on the Qwen3.5 and LFM2 text models
(linear-attention and short-convolution layers whose state runs across packed samples; the matrix's Qwen3.5 and LFM2-VL
VLMs are refused the same way), on a family the matrix passes with a leaking layer injected, on processors of another
family, and on the completion's token types (PaliGemma's generate types its completion 1).
"""

import logging

import pytest
import torch
from PIL import Image
from torch import nn

from rft_trl import PPOTrainerVL
from rft_trl.models.inputs import ModelInputs
from rft_trl.models.media_encodings import MediaEncodings
from rft_trl.models.verification import (
    ModelVerificationError,
    generated_token_fields,
    synthetic_batches,
    verify_model,
)
from rft_trl.testing import build_tiny_model, length_reward, make_colour_dataset, make_text_dataset, tiny_config

# transformers 5.25's torch fallbacks refuse sample boundaries, naming the kernel that would honour them.
NO_FLA = "`chunk_gated_delta_rule` can't keep packed sequences apart without `flash-linear-attention`"
NO_CAUSAL_CONV1D = "`causal_conv1d_fn` can't keep packed sequences apart without `causal_conv1d`"
IGNORED = "ignored (the logits do not change)"


def build(tmp_path, model, processor, dataset, **config):
    return PPOTrainerVL(
        model, [length_reward], tiny_config(str(tmp_path), **config), train_dataset=dataset, processing_class=processor
    )


@pytest.mark.parametrize(
    ("kind", "flash_attention_arguments", "seq_idx"),
    [
        ("qwen3_5_text", f"ValueError: {NO_FLA}", f"ValueError: {NO_CAUSAL_CONV1D}"),
        ("lfm2", IGNORED, f"ValueError: {NO_CAUSAL_CONV1D}"),
    ],
)
def test_a_hybrid_lm_trains_padded_and_its_packing_is_refused_with_what_would_fix_it(
    tmp_path, caplog, kind, flash_attention_arguments, seq_idx
):
    model, tokenizer = build_tiny_model(kind)
    name = type(model).__name__
    with caplog.at_level(logging.INFO, logger="rft_trl.models.verification"):
        build(tmp_path, model, tokenizer, make_text_dataset(4))
    assert f"verify_model: {name} (float32) against its own forward on each sample alone: padded" in caplog.text
    with pytest.raises(ModelVerificationError, match=rf"{name} gives packed log-probs") as refused:
        build(tmp_path, model, tokenizer, make_text_dataset(4), packing_samples=True)
    message = str(refused.value)
    assert "packing_samples=False" in message
    measured = float(message.split("alone by ")[1].split(" nats")[0])
    assert measured > 1e-4  # the leak the issue measured (8e-4 for Qwen3.5), far above float32 rounding
    # Told the sample boundaries as DataCollatorWithFlattening gives them, the model's own layers say what would keep
    # the samples apart: the kernels its torch fallbacks stand in for.
    assert f"cu_seq_lens_q/k and max_length_q/k: {flash_attention_arguments}" in message
    assert f"seq_idx: {seq_idx}" in message
    assert "Exact packing needs what those errors name" in message
    # verify_model=False is read: the check (and only the check) is skipped.
    build(tmp_path, model, tokenizer, make_text_dataset(4), packing_samples=True, verify_model=False)


class LeakAcrossSamples(nn.Module):
    """
    A decoder layer followed by a causal token shift (a width-2 convolution over the sequence) that zeroes padding
    first, as linear-attention layers do: exact on padded batches, but a packed sample's first token sees the previous
    sample's last one. With `takes_seq_idx`, it does not shift across the sample boundaries a `seq_idx` keyword marks
    (as causal-conv1d's kernel does).
    """

    def __init__(self, layer: nn.Module, padding: dict, takes_seq_idx: bool):
        super().__init__()
        self.layer, self.padding, self.takes_seq_idx = layer, padding, takes_seq_idx

    def forward(self, hidden_states, *args, **kwargs):
        output = self.layer(hidden_states, *args, **kwargs)
        hidden = output[0] if isinstance(output, tuple) else output  # [B, T, H]
        mask = self.padding.get("mask")
        if mask is not None and mask.shape == hidden.shape[:2]:
            hidden = hidden * mask[..., None].to(hidden.dtype)
        previous = torch.cat([torch.zeros_like(hidden[:, :1]), hidden[:, :-1]], dim=1)  # [B, T, H]
        seq_idx = kwargs.get("seq_idx")
        if self.takes_seq_idx and seq_idx is not None:
            same_sample = torch.cat([torch.zeros_like(seq_idx[:, :1]), (seq_idx[:, 1:] == seq_idx[:, :-1]).int()], 1)
            previous = previous * same_sample[..., None].to(hidden.dtype)
        hidden = hidden + 0.5 * previous
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def inject_leak(model, layers: nn.ModuleList, takes_seq_idx: bool = False) -> None:
    """Wrap the first of `layers` in [`LeakAcrossSamples`], which reads the padding `model` was called with."""
    padding: dict = {}

    def remember_padding(module, args, kwargs):
        mask = kwargs.get("attention_mask")
        padding["mask"] = mask if mask is not None and mask.dim() == 2 else None

    model.register_forward_pre_hook(remember_padding, with_kwargs=True)
    layers[0] = LeakAcrossSamples(layers[0], padding, takes_seq_idx)


@pytest.mark.parametrize("kind", ["qwen2", "qwen2_5_vl"])
def test_a_layer_leaking_across_packed_samples_is_caught_in_a_family_the_matrix_passes(tmp_path, kind):
    model, processor = build_tiny_model(kind)
    dataset = make_text_dataset(4) if kind == "qwen2" else make_colour_dataset(4)
    # Control: the family as built packs exactly.
    trainer = build(tmp_path, model, processor, dataset, packing_samples=True)
    results = verify_model(trainer.actor, trainer.collator, packing=True)
    assert {result.name for result in results} >= {"padded", "packed"} and all(r.difference < 1e-5 for r in results)
    inject_leak(model, model.model.language_model.layers if kind == "qwen2_5_vl" else model.model.layers)
    # Padded still exact (the layer zeroes padding), so the model trains unpacked...
    build(tmp_path, model, processor, dataset)
    # ...and packing is refused, naming the model and the measured leak, and that no layer takes sample boundaries
    # (the injected one ignores them, unlike Qwen3.5's and LFM2's, whose kernels are named).
    with pytest.raises(ModelVerificationError, match=rf"{type(model).__name__} gives packed log-probs .* by \d") as e:
        build(tmp_path, model, processor, dataset, packing_samples=True)
    assert f"cu_seq_lens_q/k and max_length_q/k: {IGNORED}; seq_idx: {IGNORED}" in str(e.value)
    assert "No layer of this model takes them" in str(e.value)


def test_a_leaking_layer_that_takes_sample_boundaries_is_told_apart_from_one_that_ignores_them(tmp_path):
    # The refusal tells a layer that keeps samples apart when given seq_idx (as causal-conv1d's kernel does on CUDA)
    # from one that ignores it (the test above: both ignored), though rft_trl passes no boundaries yet.
    model, tokenizer = build_tiny_model("qwen2")
    inject_leak(model, model.model.layers, takes_seq_idx=True)
    with pytest.raises(ModelVerificationError, match=r"Qwen2ForCausalLM gives packed log-probs .* by \d") as refused:
        build(tmp_path, model, tokenizer, make_text_dataset(4), packing_samples=True)
    message = str(refused.value)
    assert f"cu_seq_lens_q/k and max_length_q/k: {IGNORED}; seq_idx: taken (the logits change)" in message
    assert "Its layers take them, but rft_trl does not pass them yet" in message


@pytest.mark.parametrize("other", ["llava", "qwen3_vl"])
def test_a_processor_of_another_family_is_named_at_construction(tmp_path, other):
    # Before verify_model these failed at the first rollout: an IndexError, or Qwen3-VL's pixels in Qwen2.5-VL's
    # patch embedding ("shape '[-1, 3, 2, 14, 14]' is invalid").
    model, _ = build_tiny_model("qwen2_5_vl")
    _, processor = build_tiny_model(other)
    with pytest.raises(ModelVerificationError, match="Qwen2_5_VLForConditionalGeneration cannot run") as refused:
        build(tmp_path, model, processor, make_colour_dataset(4))
    assert type(processor).__name__ in str(refused.value) and "pass the processor saved with" in str(refused.value)


def test_a_frame_sampling_video_processor_gets_as_many_frames_as_it_samples(tmp_path):
    # Gemma 4's video processor samples 32 frames by default and rejects a shorter video: the synthetic video has
    # as many frames as the processor samples (TRL's tiny Gemma 4 failed here with 4 frames).
    model, processor = build_tiny_model("qwen3_vl")
    processor.video_processor.do_sample_frames, processor.video_processor.num_frames = True, 32
    processor.video_processor.fps = None
    trainer = build(tmp_path, model, processor, make_colour_dataset(4))
    (video_batch,) = [rows for rows in synthetic_batches(trainer.collator) if rows[0]["videos"]]
    assert len(video_batch[0]["videos"][0]) == 32
    # Control: a processor that does not sample frames gets the 4-frame minimum.
    processor.video_processor.do_sample_frames = False
    (video_batch,) = [rows for rows in synthetic_batches(trainer.collator) if rows[0]["videos"]]
    assert len(video_batch[0]["videos"][0]) == 4


def paligemma_prompt(processor, question="What is it?"):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


@torch.no_grad()
def test_a_completion_gets_the_token_types_the_models_generate_gives_it(tmp_path, monkeypatch):
    # PaliGemma's token_type_ids mark its bidirectional prefix 0 and the causal suffix 1, which its generate gives
    # every generated token. The independent reference: the processor's own types for a suffix (the training target).
    model, processor = build_tiny_model("paligemma")
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    prompt = processor(text=[paligemma_prompt(processor)], images=[[image]], return_tensors="pt")
    with_suffix = processor(
        text=[paligemma_prompt(processor)], images=[[image]], suffix=["blue sky"], return_tensors="pt"
    )
    suffix_types = with_suffix["token_type_ids"][0, prompt["input_ids"].shape[1] :]
    assert suffix_types.tolist() == [1] * len(suffix_types)  # the suffix (with its eos) is type 1
    completion = with_suffix["input_ids"][0, prompt["input_ids"].shape[1] :]
    trainer = build(tmp_path, model, processor, make_colour_dataset(4))
    width = with_suffix["input_ids"].shape[1]
    derived = trainer.actor.inputs.extend_token_fields({"token_type_ids": prompt["token_type_ids"]}, width)
    assert torch.equal(derived["token_type_ids"], with_suffix["token_type_ids"])
    inputs = {k: v for k, v in prompt.items() if k != "labels"}
    generated = generated_token_fields(model, inputs, completion)
    assert torch.equal(generated["token_type_ids"], with_suffix["token_type_ids"])
    # The types matter: typed 0 (text, the old constant), the completion joins the bidirectional prefix.
    sequence = with_suffix["input_ids"]

    def log_probs(token_type_ids):
        logits = model(input_ids=sequence, pixel_values=prompt["pixel_values"], token_type_ids=token_type_ids).logits
        return logits[0, :-1].log_softmax(-1).gather(-1, sequence[0, 1:, None])[-len(completion) :, 0]

    zero = torch.nn.functional.pad(prompt["token_type_ids"], (0, len(completion)))
    assert (log_probs(zero) - log_probs(with_suffix["token_type_ids"])).abs().max() > 1e-4
    # Control: a completion typed 0 is refused by verify_model, naming the model and the measured difference.
    monkeypatch.setattr(
        ModelInputs, "completion_token_types", lambda self, fields: {k: v.new_zeros(len(v)) for k, v in fields.items()}
    )
    with pytest.raises(
        ModelVerificationError,
        match=r"PaliGemmaForConditionalGeneration's per-token type fields over a completion, .* differ from those "
        r"its own generate gives the completion by 1 ",
    ):
        build(tmp_path, model, processor, make_colour_dataset(4))


def test_kimi_k25_in_bfloat16_gets_its_pixels_in_its_towers_dtype(tmp_path):
    # Kimi-K2.5 loaded in bfloat16 (its DeepSeek-V3 routers stay float32) meets the processor's float32 pixels with a
    # bfloat16 patch embedding: rft_trl casts media content to the tower's dtype (ModelInputs.media_dtype).
    model, processor = build_tiny_model("kimi_k25")
    model.save_pretrained(tmp_path / "kimi")
    model = type(model).from_pretrained(tmp_path / "kimi", dtype=torch.bfloat16).eval()
    trainer = build(tmp_path, model, processor, make_colour_dataset(4))
    assert trainer.actor.inputs.media_dtype == torch.bfloat16
    (image_batch, *_) = synthetic_batches(trainer.collator)
    batch = trainer.collator(image_batch)
    assert batch.multimodal_inputs["pixel_values"].dtype == torch.float32
    # Control: the model called directly with the processor's pixels fails.
    with pytest.raises(RuntimeError, match="should be the same"):
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **batch.multimodal_inputs)
    # ... and so do its encoder's calls that compute the cached encoder outputs.
    results = verify_model(trainer.actor, trainer.collator, packing=False, media_encodings=MediaEncodings(model))
    assert [r.name for r in results] == ["padded", "encoder cache"] and all(r.difference < 0.01 for r in results)
