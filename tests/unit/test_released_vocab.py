"""The released Qwen3 / Qwen3.5 tokenizers rebuilt offline, and the tiny models over their vocabularies.

The expected ids are those TRL's tool-calling tests hard-code (`tests/test_grpo_trainer.py`), decoded in the comments:
a stand-in must give the same ids for the same text, or TRL's tests see other tokens than they wrote.
"""

import unicodedata

import pytest
import tiktoken
import torch
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer
from trl.chat_template_utils import add_response_schema, parse_response, supports_tool_calling

from rft_trl.testing import (
    RELEASED_VOCAB_BUILDERS,
    build_qwen3_5_tokenizer,
    build_qwen3_tokenizer,
)
from rft_trl.testing.released_tokenizers import QWEN3_5_VOCAB, QWEN3_VOCAB, _read_ranks

# '<tool_call>\n{"name": "multiply_tool", "arguments": {"a": 3, "b": 4}}\n</tool_call><|im_end|>' in Qwen3.
QWEN3_TOOL_CALL = (
    "multiply_tool",
    '<tool_call>\n{"name": "multiply_tool", "arguments": {"a": 3, "b": 4}}\n</tool_call><|im_end|>',
    [151657, 198, 4913, 606, 788, 330, 64648, 22785, 497, 330, 16370, 788, 5212, 64, 788, 220, 18, 11, 330, 65, 788]
    + [220, 19, 11248, 151658, 151645],
)
# The same kind of call in Qwen3.5's XML-style format.
QWEN3_5_TOOL_CALL = (
    "screenshot_tool",
    "<tool_call>\n<function=screenshot_tool>\n</function>\n</tool_call><|im_end|>",
    [248058, 198, 27, 1628, 13744, 30091, 22076, 29, 198, 510, 1628, 29, 198, 248059, 248046],
)
PLAIN = {
    "qwen3": [("I don't know any tool", [40, 1513, 944, 1414, 894, 5392]), ("Done!", [17453, 0])],
    "qwen3_5": [("I don't know any tool", [40, 1459, 914, 1366, 866, 5224]), ("Done!", [16936, 0])],
}
# Scripts, combining marks, digits, code and whitespace runs: what the split pattern and the merges must agree on.
MIXED_TEXT = (
    "def f(x):\n    return x ** 2  # squares\n\n\nNaïve café, Ünïcödé 1234567 — 俱乐部 人力资源 日本語のテキスト "
    "안녕하세요 Привет мир e\u0301 \t\t tabs   spaces\r\n'll 've 'S"
)


@pytest.fixture(scope="module", params=["qwen3", "qwen3_5"])
def released(request):
    if request.param == "qwen3":
        return request.param, QWEN3_VOCAB, build_qwen3_tokenizer(), QWEN3_TOOL_CALL
    return request.param, QWEN3_5_VOCAB, build_qwen3_5_tokenizer(), QWEN3_5_TOOL_CALL


def test_trl_hard_coded_ids(released):
    name, _, tokenizer, (_, text, ids) = released
    assert tokenizer.encode(text, add_special_tokens=False) == ids
    for plain, plain_ids in PLAIN[name]:
        assert tokenizer.encode(plain, add_special_tokens=False) == plain_ids
    # The tool-call markers survive skip_special_tokens (TRL parses the decoded text); <|im_end|> does not.
    assert tokenizer.decode(ids, skip_special_tokens=True) == text.removesuffix("<|im_end|>")


def test_encodes_as_tiktoken_with_the_released_ranks(released):
    _, vocabulary, tokenizer, _ = released
    ranks = _read_ranks(vocabulary.rank_file)
    specials = {token: len(ranks) + offset for offset, (token, _) in enumerate(vocabulary.added_tokens)}
    encoding = tiktoken.Encoding(
        "released", pat_str=vocabulary.split_pattern, mergeable_ranks=ranks, special_tokens=specials
    )
    text = unicodedata.normalize("NFC", MIXED_TEXT + "<|im_start|>user<think>x</think><|im_end|>")
    assert tokenizer.encode(text, add_special_tokens=False) == encoding.encode(text, allowed_special="all")
    assert len(tokenizer) == len(ranks) + len(vocabulary.added_tokens)
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token) == ("<|im_end|>", "<|endoftext|>", None)


def test_trl_recognises_the_chat_template_and_parses_a_tool_call(released):
    _, vocabulary, tokenizer, (tool, _, ids) = released
    assert tokenizer.chat_template == vocabulary.chat_template
    assert supports_tool_calling(tokenizer)
    tokenizer = add_response_schema(tokenizer)
    messages = [{"role": "user", "content": "hi"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
    response = parse_response(tokenizer, ids, prefix=prompt)
    assert [call["function"]["name"] for call in response["tool_calls"]] == [tool]


@pytest.mark.parametrize("kind", list(RELEASED_VOCAB_BUILDERS))
def test_builders_save_load_and_score_the_released_ids(kind, tmp_path):
    model, processing_class = RELEASED_VOCAB_BUILDERS[kind](0)
    tokenizer = processing_class.tokenizer if kind == "qwen3_5" else processing_class
    model.save_pretrained(tmp_path)
    processing_class.save_pretrained(tmp_path)
    if kind == "qwen3_5":
        loaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
        assert AutoProcessor.from_pretrained(tmp_path).chat_template == processing_class.chat_template
    else:
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path).encode("Done!") == tokenizer.encode("Done!")
    *_, ids = QWEN3_5_TOOL_CALL if kind == "qwen3_5" else QWEN3_TOOL_CALL
    with torch.no_grad():
        logits = loaded(input_ids=torch.tensor([ids])).logits
        expected = model(input_ids=torch.tensor([ids])).logits
    vocabulary = QWEN3_5_VOCAB if kind == "qwen3_5" else QWEN3_VOCAB
    assert logits.shape == (1, len(ids), vocabulary.config_vocab_size)
    torch.testing.assert_close(logits, expected)
