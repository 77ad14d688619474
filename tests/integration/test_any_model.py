"""Models outside the tiny families of rft_trl.testing that trained wrongly or not at all (issue 22, "Correct on any
model"): a mixture of experts whose output carries no router auxiliary loss (GLM-4.6V-MoE), and a vision tower that
does not cast its pixels to its weights' dtype (Kimi-K2.5). Each is built tiny and offline from transformers' own
classes, and checked against the model's own forward."""

import dataclasses
import logging

import pytest
import torch
from PIL import Image
from transformers.models.glm46v import Glm46VConfig, Glm46VForConditionalGeneration
from transformers.models.kimi_k25 import Kimi_K25Config, Kimi_K25ForConditionalGeneration

from rft_trl import PPOTrainerVL
from rft_trl.models.actor import Actor
from rft_trl.models.utils import cast_lm_head_to_fp32
from rft_trl.testing import build_tiny_model, length_reward, make_colour_dataset, make_task_dataset, tiny_config

# --------------------------------------------------------------------------------------- MoE auxiliary loss


def _glm46v_moe():
    """
    A tiny GLM-4.6V whose text model is GLM-4.5V's mixture of experts (GLM-4.6V's released layout), built from the
    tiny GLM-4.5V's sub-configs, with its processor. `Glm46VForConditionalGeneration` returns a
    `MultimodalCausalLMOutputWithPast`, which has no `aux_loss` field at all. (With `output_router_logits` on,
    transformers 5.25's own forward fails: its base output takes no `router_logits`.)
    """
    moe, processor = build_tiny_model("glm4v_moe")
    config = moe.config.to_dict()
    config.pop("model_type")
    config.pop("architectures", None)
    torch.manual_seed(0)
    return Glm46VForConditionalGeneration(Glm46VConfig(**config)).eval(), processor


def _micro_batch(trainer, model_output):
    """One micro-batch of 2 samples of 3 action tokens whose log-probs moved away from the rollout's."""
    batch = {
        "new_log_probs": torch.tensor([[-1.0, -0.5, -2.0], [-0.3, -1.2, -0.7]], requires_grad=True),
        "action_log_probs": torch.tensor([[-1.2, -0.4, -2.1], [-0.3, -1.0, -0.9]]),
        "base_action_log_probs": torch.tensor([[-0.9, -0.6, -1.8], [-0.5, -1.1, -0.6]]),
        "advantages": torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]]),
        "new_entropy": torch.tensor([[0.5, 1.0, 1.5], [2.0, 0.1, 0.3]]),
    }
    return trainer.training_step_actor(batch, torch.ones(2, 3, dtype=torch.bool), {"output": model_output})


def _model_output(trainer):
    """The policy's own output on a short sequence (what `compute_loss` hands `training_step_actor`)."""
    sequences = torch.randint(10, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    _, output = trainer.actor(sequences, 3, return_output=True)
    return output


def test_moe_without_an_aux_loss_trains_without_it_and_warns_once(tmp_path, caplog):
    model, processor = _glm46v_moe()
    args = tiny_config(str(tmp_path), max_steps=1, router_aux_loss_coef=0.5)
    # Text rows: the auxiliary loss is the language model's, whatever the prompts hold.
    trainer = PPOTrainerVL(
        model, [length_reward], args, train_dataset=make_task_dataset("text", 4), processing_class=processor.tokenizer
    )
    assert trainer._router_aux_loss.coef == 0.5
    before = {name: p.detach().clone() for name, p in trainer.actor.named_parameters() if p.requires_grad}
    with caplog.at_level(logging.WARNING, logger="rft_trl.trainers.objective"):
        trainer.train()
        output = _model_output(trainer)
        # No aux_loss field at all (reading it crashed the step), and the loss comes out on every call.
        assert "aux_loss" not in {field.name for field in dataclasses.fields(output)}
        assert all(torch.isfinite(_micro_batch(trainer, output)) for _ in range(2))
    (entry,) = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert torch.isfinite(torch.tensor(entry["loss"]))
    assert any(not torch.equal(p, before[name]) for name, p in trainer.actor.named_parameters() if name in before)
    warnings = [r.getMessage() for r in caplog.records if "router auxiliary loss" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once, although every micro-batch of the run found none
    assert "Glm46VForConditionalGeneration" in warnings[0] and "router_aux_loss_coef=0.5" in warnings[0]
    assert "MultimodalCausalLMOutputWithPast without aux_loss" in warnings[0]


def test_moe_with_an_aux_loss_still_adds_it(tmp_path, caplog):
    # Control: Qwen3-VL-MoE with router logits returns its load-balancing loss, and the loss grows by exactly
    # coef * aux_loss against the same micro-batch without the coefficient.
    losses = {}
    for coef in (0.0, 0.5):
        model, processor = build_tiny_model("qwen3_vl_moe")
        model.config.get_text_config().output_router_logits = True
        trainer = PPOTrainerVL(
            model,
            [length_reward],
            tiny_config(str(tmp_path / str(coef)), router_aux_loss_coef=coef),
            train_dataset=make_colour_dataset(4),
            processing_class=processor,
        )
        output = _model_output(trainer)
        with caplog.at_level(logging.WARNING, logger="rft_trl.trainers.objective"):
            losses[coef] = _micro_batch(trainer, output)
    assert output.aux_loss is not None and output.aux_loss.item() > 0
    assert (losses[0.5] - losses[0.0]).item() == pytest.approx(0.5 * output.aux_loss.item(), rel=1e-5)
    assert "router auxiliary loss" not in caplog.text


# ------------------------------------------------------------------------------------------ media dtype


def _kimi_k25():
    """
    A tiny Kimi-K2.5 (DeepSeek-V3 text model with multi-head latent attention and 4 routed experts; a MoonViT tower
    of 14-pixel patches merged 2x2). Its patch embedding is a plain `Conv2d` that does not cast its input.
    """
    text_config = dict(
        model_type="deepseek_v3", vocab_size=128, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, n_routed_experts=4, num_experts_per_tok=2,
        n_shared_experts=1, first_k_dense_replace=1, n_group=1, topk_group=1, kv_lora_rank=16, q_lora_rank=None,
        qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    vision_config = dict(
        patch_size=14, pos_emb_height=4, pos_emb_width=4, num_attention_heads=2, num_hidden_layers=1, hidden_size=32,
        intermediate_size=64,
    )  # fmt: skip
    config = Kimi_K25Config(
        text_config=text_config,
        vision_config=vision_config,
        projection_hidden_size=32,
        image_token_id=100,
        video_token_id=101,
        vision_start_token_id=102,
        vision_end_token_id=103,
    )
    torch.manual_seed(0)
    model = Kimi_K25ForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = 2, 0
    # One 28x28 image: a 2x2 grid of patches [4, 3, 14, 14], merged 2x2 into one placeholder token.
    sequences = torch.tensor([[5, 102, 100, 103, 7, 8, 9, 10, 11]])
    media = {"pixel_values": torch.randn(4, 3, 14, 14), "image_grid_thw": torch.tensor([[1, 2, 2]])}
    return model, sequences, media


def _own_log_probs(model, sequences, num_actions, **inputs):
    """The action log-probs of the model's own forward: its logits' log-softmax at the completion's tokens."""
    logits = model(input_ids=sequences, attention_mask=torch.ones_like(sequences), **inputs).logits.float()
    log_probs = logits[:, -num_actions - 1 : -1].log_softmax(-1)
    return log_probs.gather(-1, sequences[:, -num_actions:, None]).squeeze(-1)


def test_float32_pixels_reach_a_bfloat16_tower_that_does_not_cast_them():
    model, sequences, media = _kimi_k25()
    model.to(torch.bfloat16)
    assert media["pixel_values"].dtype == torch.float32  # as processors return them
    # Control: the model's own forward on the processor's float32 pixels fails in the patch embedding.
    with pytest.raises(RuntimeError, match="should be the same"):
        model(input_ids=sequences, **media)
    actor = Actor(model)
    log_probs = actor(sequences, 4, torch.ones_like(sequences), **media)
    by_hand = {**media, "pixel_values": media["pixel_values"].to(torch.bfloat16)}
    assert torch.isfinite(log_probs).all()
    torch.testing.assert_close(log_probs, _own_log_probs(model, sequences, 4, **by_hand), atol=0, rtol=0)
    # Generation takes the same inputs.
    generated, _, action_mask = actor.generate(sequences[:, :5], max_new_tokens=2, do_sample=False, **media)
    assert generated.shape == (1, 7) and action_mask.shape == (1, 2)
    # The dtype is the tower's, not the embeddings': Kimi-K2.5 ties them to its head, which TRL's
    # cast_lm_head_to_fp32 turns float32 while the tower stays bfloat16.
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    cast_lm_head_to_fp32(model)
    assert model.get_input_embeddings().weight.dtype == torch.float32
    log_probs = actor(sequences, 4, torch.ones_like(sequences), **media)
    # float32 logits now: the actor's log-softmax and this one round differently in the last bit.
    torch.testing.assert_close(log_probs, _own_log_probs(model, sequences, 4, **by_hand), atol=1e-6, rtol=0)


def test_bfloat16_qwen2_5_vl_scores_float32_pixels_as_its_own_forward():
    # Qwen2.5-VL's tower casts pixels to its patch embedding's dtype itself, as every tiny family of rft_trl.testing
    # does (so the cast changes nothing there): the actor's log-probs equal the model's own forward with the pixels
    # cast by hand, and with the pixels as they came.
    model, processor = build_tiny_model("qwen2_5_vl")
    model.to(torch.bfloat16)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    batch = processor(text=[text], images=[Image.new("RGB", (56, 56), (255, 0, 0))], return_tensors="pt")
    completion = torch.tensor([[40, 41, 42]])
    sequences = torch.cat([batch["input_ids"], completion], dim=1)
    media = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
    assert media["pixel_values"].dtype == torch.float32
    log_probs = Actor(model, fused_log_probs=False)(sequences, 3, torch.ones_like(sequences), **media)
    # The model's own forward reads the token types over the whole sequence: the completion's are text (0).
    own = {**media, "mm_token_type_ids": torch.cat([media["mm_token_type_ids"], torch.zeros_like(completion)], 1)}
    by_hand = {**own, "pixel_values": media["pixel_values"].to(torch.bfloat16)}
    assert torch.isfinite(log_probs).all()
    torch.testing.assert_close(log_probs, _own_log_probs(model, sequences, 3, **by_hand), atol=0, rtol=0)
    torch.testing.assert_close(log_probs, _own_log_probs(model, sequences, 3, **own), atol=0, rtol=0)


def test_only_floating_media_content_is_cast():
    model, _ = build_tiny_model("qwen2_5_vl")
    actor = Actor(model.to(torch.bfloat16))
    media, _ = actor.inputs.collect(
        {
            "pixel_values": torch.randn(4, 1176),
            "image_grid_thw": torch.tensor([[1, 2, 2]]),
            # One number per video, which positions are computed from: 1/12 is not a bfloat16 number.
            "second_per_grid_ts": torch.tensor([1 / 12]),
            "mm_token_type_ids": torch.zeros(1, 5, dtype=torch.long),
        }
    )
    assert media["pixel_values"].dtype == torch.bfloat16
    assert media["image_grid_thw"].dtype == torch.int64
    assert torch.equal(media["second_per_grid_ts"], torch.tensor([1 / 12]))
    # A float32 model (mixed precision under autocast) gets its inputs as they came.
    pixels = torch.randn(4, 1176)
    token_types = {"mm_token_type_ids": torch.zeros(1, 5, dtype=torch.long)}
    media, _ = Actor(build_tiny_model("qwen2_5_vl")[0]).inputs.collect({"pixel_values": pixels, **token_types})
    assert media["pixel_values"] is pixels
