"""Actions are scored under the distribution they were sampled from (issue 22, item 4).

Generation never emits the tokens media bring into a prompt (HF `suppress_tokens`; a vLLM logit bias of -100), so the
sampling distribution is the softmax over the other tokens. The rollout's, the reference's and the update's log-probs
must be those of that same distribution: scored over the full vocabulary, a tiny random image model puts a few percent
of probability on its media tokens, and the vLLM importance ratio drifted to 0.93 over 8 tokens (tests/e2e/test_vllm.py
checks the engine side). The reference here is transformers' own: the model's forward on each sample alone, its logits
processed by the `TemperatureLogitsWarper` and `SuppressTokensLogitsProcessor` that `generate` applies.
"""

import copy

import pytest
import torch
from peft import LoraConfig
from transformers.generation.logits_process import SuppressTokensLogitsProcessor, TemperatureLogitsWarper

from rft_trl import PPOTrainerVL
from rft_trl.testing import build_tiny_model, length_reward, make_task_dataset, tiny_config


@torch.no_grad()
def own_log_probs(model, samples: dict, index: int, temperature: float, suppressed: list[int]) -> torch.Tensor:
    """Sample `index`'s action log-probs from the model's own forward on it alone, as `generate` processes logits."""
    keep = samples["attention_mask"][index].bool()
    sequence = samples["sequences"][index][keep][None]  # [1, P + A]
    tokens = {name: value[index][keep][None] for name, value in samples["token_fields"].items()}
    media = samples["multimodal_inputs"][index]
    logits = model(input_ids=sequence, attention_mask=torch.ones_like(sequence), **tokens, **media).logits[0, :-1]
    scores = TemperatureLogitsWarper(temperature)(sequence, logits.float())
    if suppressed:
        scores = SuppressTokensLogitsProcessor(suppressed)(sequence, scores)
    log_probs = scores.log_softmax(-1).gather(-1, sequence[0, 1:, None])[:, 0]
    num_actions = int(samples["action_mask"][index].sum())
    return log_probs[sequence.shape[1] - 1 - samples["action_mask"].shape[1] :][:num_actions]


def rollout_and_scores(trainer) -> tuple[dict, dict]:
    maker = trainer.experience_maker
    maker.need_old_log_probs = True  # an on-policy update would reuse its own
    rows = list(make_task_dataset("colour", 2, seed=1))
    samples, *_ = maker.generate_and_score(rows, 2, trainer.args.sampling_kwargs())
    return samples, maker._score(samples)


@pytest.mark.parametrize("suppress", [True, False], ids=["suppressed", "not-suppressed"])
@pytest.mark.parametrize("peft", [False, True], ids=["full", "lora"])
def test_rollout_and_reference_log_probs_are_those_of_the_sampling_distribution(tmp_path, suppress, peft):
    model, processor = build_tiny_model("qwen2_5_vl")
    base = copy.deepcopy(model)  # the reference's weights (no update runs here)
    args = tiny_config(str(tmp_path), suppress_media_tokens=suppress, beta=0.1, temperature=0.8)
    trainer = PPOTrainerVL(
        model,
        [length_reward],
        args,
        train_dataset=make_task_dataset("colour", 4),
        processing_class=processor,
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]) if peft else None,
    )
    media_ids = trainer.actor.media_token_ids
    assert len(media_ids) >= 3
    assert trainer.actor.suppressed_token_ids == (media_ids if suppress else [])
    samples, scored = rollout_and_scores(trainer)
    # What the rollout sampled never holds a suppressed token (else its log-prob would be -inf).
    assert not torch.isin(samples["completion_ids"][samples["action_mask"]], torch.tensor(media_ids)).any()
    for index in range(samples["sequences"].shape[0]):
        actions = samples["action_mask"][index]
        sampled = own_log_probs(base, samples, index, 0.8, media_ids if suppress else [])
        for name in ("old_log_probs", "base_log_probs"):
            torch.testing.assert_close(scored[name][index][actions], sampled, rtol=0, atol=1e-5)
        # Control: the other distribution (with or without the media tokens) is measurably different.
        other = own_log_probs(base, samples, index, 0.8, [] if suppress else media_ids)
        assert (scored["old_log_probs"][index][actions] - other).abs().max() > 1e-3


def test_a_generation_kwargs_suppress_tokens_is_scored_out_too(tmp_path):
    model, processor = build_tiny_model("qwen2_5_vl")
    banned = [5, 17]
    args = tiny_config(str(tmp_path), beta=0.1, generation_kwargs={"suppress_tokens": banned})
    trainer = PPOTrainerVL(
        model, [length_reward], args, train_dataset=make_task_dataset("colour", 4), processing_class=processor
    )
    assert trainer.actor.suppressed_token_ids == sorted({*banned, *trainer.actor.media_token_ids})
    assert trainer._reference.suppressed_token_ids == trainer.actor.suppressed_token_ids
