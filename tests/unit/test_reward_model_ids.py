"""TRL's reward models in reward_funcs: a model id or path (or the loaded model) becomes a sequence-classification
reward scored on the texts, each with its tokenizer (reward_processing_classes); scores equal the model's own
forward on each sample alone."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rft_trl import PPOTrainerVL
from rft_trl.models import SequenceClassificationReward
from rft_trl.testing import build_tiny_model, length_reward, make_task_dataset, save_tiny_model, tiny_config


@pytest.fixture(scope="module")
def reward_path(tmp_path_factory):
    return save_tiny_model("qwen2_reward", str(tmp_path_factory.mktemp("rm") / "tiny-reward"), seed=3)


def own_score(model, tokenizer, text):
    """The model's own forward on one unpadded text: no batching, no padding, no wrapper."""
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits[0, 0].item()


def make_trainer(tmp_path, reward_funcs, **kwargs):
    model, tokenizer = build_tiny_model("qwen2")
    args = tiny_config(str(tmp_path), max_steps=1)
    return PPOTrainerVL(
        model, reward_funcs, args, train_dataset=make_task_dataset("text", 4), processing_class=tokenizer, **kwargs
    )


def test_a_model_path_is_loaded_and_scores_like_its_own_forward(tmp_path, reward_path):
    trainer = make_trainer(tmp_path, [reward_path, length_reward])
    reward_model, tokenizer = trainer.reward_funcs[0], trainer.reward_processing_classes[0]
    assert type(reward_model).__name__ == "Qwen2ForSequenceClassification" and not reward_model.training
    assert trainer.reward_processing_classes[1] is None
    assert trainer.reward_func_names == ["tiny-reward", "length_reward"]
    # Texts of different lengths: the batch is right-padded, and each score must be the unpadded one.
    prompts, completions = ["What colour? ", "Say hi. ", "Is the tone high or low? "], ["red", "hi there", "low"]
    output = trainer.reward_scorer(prompts, completions)
    expected = [own_score(reward_model, tokenizer, p + c) for p, c in zip(prompts, completions)]
    torch.testing.assert_close(output.components["tiny-reward"], torch.tensor(expected), atol=1e-5, rtol=0)


def test_conversations_go_through_the_reward_tokenizers_chat_template(reward_path):
    model = AutoModelForSequenceClassification.from_pretrained(reward_path, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(reward_path)
    reward = SequenceClassificationReward(model, tokenizer)
    prompts = [[{"role": "user", "content": "What colour?"}], [{"role": "user", "content": "Pitch?"}]]
    completions = [[{"role": "assistant", "content": "red"}], [{"role": "assistant", "content": "high, I think"}]]
    expected = [
        own_score(model, tokenizer, tokenizer.apply_chat_template(p + c, tokenize=False))
        for p, c in zip(prompts, completions)
    ]
    assert reward(prompts, completions) == pytest.approx(expected, abs=1e-5)
    assert reward.__name__ == "tiny-reward"


def test_a_loaded_model_with_its_processing_class(tmp_path, reward_path):
    model = AutoModelForSequenceClassification.from_pretrained(reward_path, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(reward_path)
    trainer = make_trainer(tmp_path, model, reward_processing_classes=tokenizer)
    assert trainer.reward_funcs == [model] and trainer.reward_processing_classes == [tokenizer]
    trainer.train()
    assert trainer.state.global_step == 1


def test_reward_processing_classes_must_line_up(tmp_path, reward_path):
    tokenizer = AutoTokenizer.from_pretrained(reward_path)
    with pytest.raises(ValueError, match=r"reward processing classes \(1\) must match the number of reward functions"):
        make_trainer(tmp_path, [reward_path, reward_path], reward_processing_classes=tokenizer)
    with pytest.raises(ValueError, match=r"reward_processing_classes\[1\] is given, but reward function 1 is not"):
        make_trainer(tmp_path, [reward_path, length_reward], reward_processing_classes=[tokenizer, tokenizer])


def test_a_reward_model_needs_one_label(tmp_path, reward_path):
    model = AutoModelForSequenceClassification.from_pretrained(reward_path, num_labels=2, ignore_mismatched_sizes=True)
    with pytest.raises(ValueError, match="has num_labels=2; a reward model needs one"):
        make_trainer(tmp_path, model, reward_processing_classes=AutoTokenizer.from_pretrained(reward_path))


def test_no_reward_source_is_refused(tmp_path):
    with pytest.raises(ValueError, match="No reward source provided"):
        make_trainer(tmp_path, None)
