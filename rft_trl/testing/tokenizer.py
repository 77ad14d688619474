"""A tiny byte-level BPE tokenizer with the Qwen special tokens and a multimodal chat template.

It is trained locally in a few hundredths of a second, so nothing is downloaded. The vocabulary is small (a few
hundred merges), which means words are split into several tokens: leave room in ``max_new_tokens``.
"""

from __future__ import annotations

import random

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast
from trl.chat_template_utils import qwen3_template

from .vocabulary import COLOURS, MOTIONS, PITCHES, TEXT_WORDS

# The order fixes the ids: they follow the trained vocabulary, first to last.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<|audio_bos|>",
    "<|AUDIO|>",
    "<|audio_eos|>",
]

# Tokens a policy must never emit: each one stands for media features that a completion does not carry.
MEDIA_PLACEHOLDER_TOKENS = [
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<|audio_bos|>",
    "<|AUDIO|>",
    "<|audio_eos|>",
]


def make_chat_template(
    image: str | None = "<|vision_start|><|image_pad|><|vision_end|>",
    video: str | None = "<|vision_start|><|video_pad|><|vision_end|>",
    audio: str | None = "Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n",
) -> str:
    """
    A ChatML-style (`<|im_start|>role ... <|im_end|>`) Jinja chat template whose media parts render as a family's
    placeholders.

    The turn format is the same for every tiny family (the tokenizers are random anyway); what differs is the text
    that stands for an image, a video or an audio clip, which the family's processor expands into its media tokens.
    Tools render as Qwen2.5's template renders them (`tools` listed in the system turn, an assistant's `tool_calls` as
    `<tool_call>` JSON, consecutive tool messages as `<tool_response>` blocks of one user turn), media parts of a tool
    message included; without tools, tool calls or tool messages the rendering is the plain ChatML one.

    Args:
        image (`str`, *optional*, defaults to the Qwen2-VL image placeholder):
            Text of an `{"type": "image"}` part; `None` renders none (the family takes no images).
        video (`str`, *optional*, defaults to the Qwen2-VL video placeholder):
            Text of an `{"type": "video"}` part, or `None`.
        audio (`str`, *optional*, defaults to the Qwen2-Audio placeholder):
            Text of an `{"type": "audio"}` part, or `None`; `{{ audio_count.value }}` numbers the clips from 1.

    Returns:
        `str`: the template.
    """
    branches = ""
    for kind, text, keys in (
        ("image", image, "or 'image' in part or 'image_url' in part"),
        ("video", video, "or 'video' in part"),
        ("audio", audio, "or 'audio' in part or 'audio_url' in part"),
    ):
        if text is None:
            continue
        count = "{% set audio_count.value = audio_count.value + 1 %}" if kind == "audio" else ""
        branches += f"{{% elif part['type'] == '{kind}' {keys} %}}{count}{text}"
    tools_block = (
        "{% if tools %}{{ '\\n\\n# Tools\\n<tools>' }}"
        "{% for tool in tools %}{{ '\\n' }}{{ tool | tojson }}{% endfor %}"
        "{{ '\\n</tools>\\n' }}"
        'Call a tool as <tool_call>\n{"name": <name>, "arguments": <json>}\n</tool_call>{% endif %}'
    )
    return (
        "{% set audio_count = namespace(value=0) %}"
        "{% for message in messages %}"
        "{% if loop.first and message['role'] != 'system' %}"
        f"<|im_start|>system\nYou are a helpful assistant.{tools_block}<|im_end|>\n"
        "{% endif %}"
        "{% if message['role'] == 'tool' %}"
        "{% if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}<|im_start|>user{% endif %}"
        "{{ '\\n<tool_response>\\n' }}"
        "{% else %}"
        "<|im_start|>{{ message['role'] }}\n"
        "{% endif %}"
        "{% if message['content'] is string %}"
        "{{ message['content'] }}"
        "{% elif message['content'] is not none %}"
        "{% for part in message['content'] %}"
        f"{{% if false %}}{branches}"
        "{% elif 'text' in part %}"
        "{{ part['text'] }}"
        "{% endif %}"
        "{% endfor %}"
        "{% endif %}"
        "{% if message['role'] == 'system' and loop.first %}"
        f"{tools_block}"
        "{% endif %}"
        "{% if message['role'] == 'assistant' and message['tool_calls'] %}"
        "{% for call in message['tool_calls'] %}"
        "{% set call = call['function'] if call['function'] is defined else call %}"
        "{% if message['content'] or not loop.first %}{{ '\\n' }}{% endif %}"
        '<tool_call>\n{"name": "{{ call[\'name\'] }}", "arguments": '
        "{{ call['arguments'] if call['arguments'] is string else call['arguments'] | tojson }}}\n</tool_call>"
        "{% endfor %}"
        "{% endif %}"
        "{% if message['role'] == 'tool' %}"
        "{{ '\\n</tool_response>' }}"
        "{% if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}<|im_end|>\n{% endif %}"
        "{% else %}"
        "<|im_end|>\n"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}"
        "<|im_start|>assistant\n"
        "{% endif %}"
    )


# Qwen-style template: image and video parts render as the Qwen2-VL placeholders, audio parts as the Qwen2-Audio ones.
CHAT_TEMPLATE = make_chat_template()


def _training_corpus(seed: int, num_sentences: int) -> list[str]:
    rng = random.Random(seed)
    words = COLOURS + PITCHES + MOTIONS + TEXT_WORDS
    templates = [
        "What colour is the square? Answer with one word.",
        "Is the tone high or low? Answer with one word.",
        "Is the dot moving or static? Answer with one word.",
        "You are a helpful assistant.",
        "system user assistant Audio",
        "The answer is {w}.",
        "{w} {v} {u}",
        "<answer>{w}</answer>",
    ]
    corpus = [" ".join(words)]
    for _ in range(num_sentences):
        template = rng.choice(templates)
        corpus.append(template.format(w=rng.choice(words), v=rng.choice(words), u=rng.choice(words)))
    return corpus


def build_tiny_tokenizer(
    vocab_size: int = 512,
    seed: int = 0,
    num_sentences: int = 400,
    extra_special_tokens: list[str] | None = None,
    chat_template: str = CHAT_TEMPLATE,
    bos_token: str | None = None,
    named_tokens: dict[str, str] | None = None,
) -> PreTrainedTokenizerFast:
    """
    Train a byte-level BPE tokenizer offline and wrap it with the Qwen special tokens and chat template.

    Args:
        vocab_size (`int`, *optional*, defaults to `512`):
            Target size of the trained vocabulary, special tokens excluded.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the synthetic training corpus; the same seed gives the same tokenizer.
        num_sentences (`int`, *optional*, defaults to `400`):
            Number of generated sentences to train on.
        extra_special_tokens (`list[str]`, *optional*):
            A family's own media tokens, added after [`SPECIAL_TOKENS`] (their ids follow, in order).
        chat_template (`str`, *optional*, defaults to [`CHAT_TEMPLATE`]):
            The Jinja chat template, e.g. from [`make_chat_template`] with a family's placeholders.
        bos_token (`str`, *optional*):
            A beginning-of-sequence token (one of the special tokens) for families whose processor needs one.
        named_tokens (`dict[str, str]`, *optional*):
            Special tokens a family's processor reads by name (`{"image_token": "<image>", "boi_token": ...}`), which
            become tokenizer attributes (`tokenizer.image_token`, `tokenizer.image_token_id`) and are saved with it.

    Returns:
        `PreTrainedTokenizerFast`: a tokenizer whose `pad_token` and `eos_token` are `<|endoftext|>` and
        `<|im_end|>` as in Qwen instruct models, padding on the left for generation.
    """
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_training_corpus(seed, num_sentences), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=bos_token,
        additional_special_tokens=SPECIAL_TOKENS + [t for t in extra_special_tokens or () if t not in SPECIAL_TOKENS],
        padding_side="left",
        model_max_length=4096,
    )
    tokenizer.chat_template = chat_template
    # The template writes tool calls as Qwen's do: TRL's Qwen3 response template parses them (`parse_response`).
    tokenizer.response_template = qwen3_template
    if named_tokens:
        # The constructor's dict form of extra_special_tokens would replace the special-token list above, so the
        # names are set the way transformers itself sets them for such a dict (they are saved in the config).
        tokenizer._set_model_specific_special_tokens(named_tokens)
    return tokenizer
