"""Tools that answer with images and audio (TRL's multimodal tool responses) in multi-turn rollouts of VLMs and audio
models.

The reference is the processor and the model, never our composition: the whole conversation (the prompt's media,
the assistant turns, the tool's media) rendered by the chat template and processed by the processor in one call
gives the ids, the token types and the media fields; the model's own forward on them (full-vocabulary log-softmax,
no position ids) gives the log-probs. The model's turns come from a scripted engine, as in `test_agents.py`.
"""

import json

import numpy as np
import pytest
import torch
from datasets import Dataset
from PIL import Image

from rft_trl import PPOTrainerVL
from rft_trl.data.multimodal import media_field_names, probe_processor, split_processor_output
from rft_trl.models.actor import Actor
from rft_trl.rollout import RolloutEngine, pad_completions, run_tool_turns
from rft_trl.rollout.crop import CropEnvironment
from rft_trl.testing import build_tiny_model, tiny_config
from rft_trl.trainers.setup import build_collator, build_multi_turn

COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (220, 220, 30)]
RATE = 16000


def tone(hertz: float, rate: int) -> np.ndarray:
    return np.sin(np.linspace(0, 2 * np.pi * hertz, rate)).astype(np.float32)  # 1 s


def crop(region: int) -> list:
    """
    Zoom into a quarter of the image.

    Args:
        region: Which quarter, 0 to 3.
    """
    return [
        {"type": "image", "image": Image.new("RGB", (64, 64), COLOURS[region])},
        {"type": "text", "text": "Zoomed."},
    ]


def listen(clip: int) -> list:
    """
    Play a clip.

    Args:
        clip: Which clip, 0 to 3.
    """
    return [{"type": "audio", "audio": tone(200.0 * (clip + 1), RATE)}, {"type": "text", "text": "Played."}]


TOOLS = {"image": crop, "audio": listen}
# (family, the kind of the prompt's media and of the tool's answer)
CASES = [("qwen2_vl", "image"), ("qwen3_vl", "image"), ("gemma3", "image"), ("qwen2_5_omni", "audio")]


def prompt_row(kind: str) -> dict:
    question = [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": "What is it?"}]}]
    item = (
        Image.new("RGB", (64, 64), (120, 30, 200))
        if kind == "image"
        else {"array": tone(440.0, RATE), "sampling_rate": RATE}
    )
    return {"prompt": question, kind: item}


def same(a, b) -> bool:
    """Equality of messages whose content blocks may hold arrays (audio)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.array_equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[key], b[key]) for key in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def call_text(name: str, arguments: dict) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call><|im_end|>"


class ScriptedEngine(RolloutEngine):
    """Answers a context by the number of tool responses it holds: `script[k]` after `k` of them."""

    def __init__(self, tokenizer, script: list[str]):
        self.tokenizer, self.script = tokenizer, script

    def generate(self, batch, n, sampling_kwargs):
        completions = []
        for ids, mask in zip(batch.input_ids.repeat_interleave(n, 0), batch.attention_mask.repeat_interleave(n, 0)):
            turn = min(self.tokenizer.decode(ids[mask.bool()]).count("<tool_response>"), len(self.script) - 1)
            completions.append(self.tokenizer.encode(self.script[turn], add_special_tokens=False))
        return pad_completions(
            batch.input_ids.repeat_interleave(n, 0),
            batch.attention_mask.repeat_interleave(n, 0),
            completions,
            None,
            self.tokenizer.convert_tokens_to_ids("<|im_end|>"),
            self.tokenizer.pad_token_id,
        )


def script_for(kind: str) -> list[str]:
    name, argument = ("crop", "region") if kind == "image" else ("listen", "clip")
    return [call_text(name, {argument: 2}), call_text(name, {argument: 1}), "It is blue.<|im_end|>"]


def whole_conversation(row: dict, kind: str) -> tuple[list[dict], list]:
    """The conversation the script makes (two tool calls, then an answer) and its media in order."""
    tool = TOOLS[kind]
    name, argument = ("crop", "region") if kind == "image" else ("listen", "clip")
    messages, media = list(row["prompt"]), [row[kind] if kind == "image" else row[kind]["array"]]
    for value in (2, 1):
        call = {"type": "function", "function": {"name": name, "arguments": {argument: value}}}
        answer = tool(value)
        messages += [
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "name": name, "content": answer},
        ]
        media.append(answer[0][kind])
    messages.append({"role": "assistant", "content": "It is blue."})
    return messages, media


def process_whole(processor, messages, kind, media, chat_template_kwargs):
    """The processor on the whole conversation in one call: ids, per-token fields and media fields."""
    text = processor.apply_chat_template(messages, tokenize=False, **chat_template_kwargs)
    kwargs = {"images": [media]} if kind == "image" else {"audio": media, "sampling_rate": RATE}
    output = processor(text=[text], return_tensors="pt", add_special_tokens=False, **kwargs)
    ids, _, tokens, fields = split_processor_output(output, media_field_names(processor))
    return ids[0], {name: value[0] for name, value in tokens.items()}, fields


@torch.no_grad()
def own_log_probs(model, sequence, tokens, fields, trainer) -> torch.Tensor:
    """
    Each next token's log-prob from the model's own forward on the whole sequence (no positions), as the policy
    samples and scores: at the run's temperature, its media placeholder tokens suppressed.
    """
    logits = model(
        input_ids=sequence[None],
        attention_mask=torch.ones_like(sequence)[None],
        **{name: value[: len(sequence)][None] for name, value in tokens.items()},
        **fields,
    ).logits[0]
    scores = logits[:-1].double() / trainer.args.temperature
    scores[:, trainer.actor.suppressed_token_ids] = -float("inf")
    return scores.log_softmax(-1).gather(-1, sequence[1:, None])[:, 0]


def multi_turn_for(model, processor, tmp_path, tools):
    args = tiny_config(str(tmp_path), generate_max_len=2000, prompt_max_len=4096)
    layout = probe_processor(processor)
    turns = build_multi_turn(tools, None, processor, layout.media_kinds, Actor(model), args)
    collator = build_collator(processor, layout, args, turns, None)
    return turns, collator


@pytest.mark.parametrize(("family", "kind"), CASES)
def test_tool_media_compose_as_the_processor_processes_the_whole_conversation(tmp_path, family, kind):
    model, processor = build_tiny_model(family)
    turns, collator = multi_turn_for(model, processor, tmp_path, [TOOLS[kind]])
    assert turns.observation_kinds[kind] is None
    row = prompt_row(kind)
    batch = collator([row])
    engine = ScriptedEngine(processor.tokenizer, script_for(kind))
    result = run_tool_turns(engine, batch, engine.generate(batch, 1, {}), 1, {}, turns)
    messages, media = whole_conversation(row, kind)
    assert same(result.conversations[0], messages[1:])
    ids, tokens, fields = process_whole(processor, messages, kind, media, turns.chat_template_kwargs)
    generation = result.generation
    keep = generation.attention_mask[0].bool()
    ours = generation.sequences[0][keep]
    # The ids trained on are the whole conversation's up to its last end of turn (the template's newline after it
    # is never sampled): every image or clip expanded by the processor at its place.
    assert ours.tolist() == ids[: len(ours)].tolist() and len(ids) - len(ours) == 1
    for name, value in tokens.items():
        assert torch.equal(generation.token_fields[name][0][keep], value[: len(ours)]), name
    (sample_fields,) = generation.multimodal_inputs
    assert sample_fields.keys() == fields.keys()
    for name, value in fields.items():
        assert torch.equal(sample_fields[name], value), name
    assert len(generation.observations[0][kind]) == 2
    inserted = processor.tokenizer.decode(ours[-generation.action_mask.shape[1] :][~generation.tool_mask[0]])
    assert inserted.count("<tool_response>") == 2


def test_the_composition_check_can_fail(tmp_path):
    # Control: the processor of the whole conversation numbers Qwen2-Audio's clips ("Audio 2:"), the tool turn
    # processed alone cannot: the check finds it, and a tool answering with a clip is refused with that reason.
    model, processor = build_tiny_model("qwen2_audio")
    turns, collator = multi_turn_for(model, processor, tmp_path, [listen])
    assert "differ from those of the whole conversation" in turns.observation_kinds["audio"]
    with pytest.raises(
        ValueError, match="Tool listen answered with an audio, which cannot enter this rollout exactly"
    ):
        turns.observe([{"role": "tool", "name": "listen", "content": listen(0)}])


def test_a_tool_answering_with_media_a_text_model_cannot_take_is_refused(tmp_path):
    model, tokenizer = build_tiny_model("qwen2")
    turns, collator = multi_turn_for(model, tokenizer, tmp_path, [crop])
    with pytest.raises(ValueError, match="Tool crop answered with an image, .*: TokenizersBackend takes no image"):
        turns.observe([{"role": "tool", "name": "crop", "content": crop(0)}])


# Padded and packed; Gemma 3 is not packed: verify_model refuses to pack it (its image tokens attend both ways).
LOG_PROB_CASES = [(family, kind, packing) for family, kind in CASES for packing in (False, True)]
LOG_PROB_CASES.remove(("gemma3", "image", True))


@pytest.mark.parametrize(("family", "kind", "packing"), LOG_PROB_CASES)
def test_log_probs_of_a_tool_media_rollout_are_the_models_own(tmp_path, family, kind, packing):
    model, processor = build_tiny_model(family)
    seen = []

    def blue_reward(prompts, completions, **columns):
        seen.extend(completions)
        return [float(c[-1]["content"] == "It is blue.") for c in completions]

    args = tiny_config(
        str(tmp_path), generate_max_len=2000, prompt_max_len=4096, beta=0.1, max_steps=1, packing_samples=packing
    )
    row = prompt_row(kind)
    trainer = PPOTrainerVL(
        model,
        [blue_reward],
        args,
        train_dataset=Dataset.from_list([row] * 4),
        processing_class=processor,
        tools=[TOOLS[kind]],
    )
    trainer.experience_maker.engine = ScriptedEngine(processor.tokenizer, script_for(kind))
    trainer._start_rollout([row] * 2)
    # Reward functions see each tool's answer, its media included.
    messages, media = whole_conversation(row, kind)
    assert len(seen) == 4 and all(len(c) == len(messages) - 1 for c in seen)
    tool_answer = seen[0][1]["content"][0][kind]
    assert (tool_answer == media[1]).all() if kind == "audio" else tool_answer.getpixel((0, 0)) == COLOURS[2]
    if kind == "image":  # the completions table shows the prompt's image, then those the tool returned
        images = trainer._completions.table[0]["images"]
        assert [image.getpixel((0, 0)) for image in images] == [(120, 30, 200), COLOURS[2], COLOURS[1]]
    kwargs = trainer.experience_maker.multi_turn.chat_template_kwargs
    ids, tokens, fields = process_whole(processor, messages, kind, media, kwargs)
    batch = trainer._micro_batches[0]
    keep = torch.ones_like(batch.sequences[0], dtype=torch.bool) if packing else batch.attention_mask[0].bool()
    sequence = batch.sequences[0][keep]
    assert sequence.tolist() == ids[: len(sequence)].tolist()
    # The reference: the model's own forward on the whole conversation as the processor made it (no positions).
    actions = int(batch.action_mask[0].sum())
    trained = batch.tool_mask[0][-actions:].bool()
    assert 0 < int(trained.sum()) < actions
    expected = own_log_probs(model, sequence, tokens, fields, trainer)[-actions:][trained]
    for ours in (batch.action_log_probs, batch.base_action_log_probs):
        if ours is not None:
            torch.testing.assert_close(ours[0][-actions:][trained].double(), expected, atol=1e-5, rtol=0)
    # Control: the two tool answers in the other order move the log-probs by ten times the tolerance or more.
    *_, swapped = process_whole(processor, messages, kind, [media[0], media[2], media[1]], kwargs)
    assert (own_log_probs(model, sequence, tokens, swapped, trainer)[-actions:][trained] - expected).abs().max() > 1e-4
    trainer.train()
    (entry,) = [e for e in trainer.state.log_history if "loss" in e]
    assert entry["tools/call_frequency"] == 2.0 and np.isfinite(entry["loss"])


def test_tools_on_vllm_with_a_media_processor_are_refused(tmp_path):
    # A later turn's context would reach vLLM as token ids without its media: refused before any engine starts.
    model, processor = build_tiny_model("qwen2_vl")
    with pytest.raises(ValueError, match="use_vllm=True and a image/video processor .* are not supported yet"):
        PPOTrainerVL(
            model,
            [lambda completions, **kw: [0.0] * len(completions)],
            tiny_config(str(tmp_path), use_vllm=True),
            train_dataset=Dataset.from_list([prompt_row("image")] * 4),
            processing_class=processor,
            tools=[crop],
        )


def test_an_environments_crop_tool_sees_each_samples_own_image(tmp_path):
    # environment_factory with media prompts and media observations: every sample's CropEnvironment is reset with its
    # own row's image, and the crop it returns is that image's region (PIL's crop of the box, by hand).
    model, processor = build_tiny_model("qwen2_vl")
    seen = []

    def reward(completions, **columns):
        seen.extend(completions)
        return [0.0] * len(completions)

    images = [Image.new("RGB", (64, 64), colour) for colour in COLOURS[:2]]
    for image in images:
        image.paste((255, 255, 255), (0, 0, 32, 32))  # a white top-left quarter
    rows = [{**prompt_row("image"), "image": image} for image in images]
    trainer = PPOTrainerVL(
        model,
        [reward],
        tiny_config(str(tmp_path), generate_max_len=2000, prompt_max_len=4096),
        train_dataset=Dataset.from_list(rows * 2),
        processing_class=processor,
        environment_factory=CropEnvironment,
    )
    box = {"x1": 500, "y1": 500, "x2": 1000, "y2": 1000}  # the bottom-right quarter: the image's own colour
    script = [call_text("crop", box), "It is blue.<|im_end|>"]
    trainer.experience_maker.engine = ScriptedEngine(processor.tokenizer, script)
    trainer._start_rollout(rows)
    assert len(seen) == 4  # 2 prompts x 2 samples, prompt-major
    for completion, image in zip(seen, [images[0]] * 2 + [images[1]] * 2):
        view = completion[1]["content"][0]["image"]
        expected = image.crop((32, 32, 64, 64)).resize((56, 56), Image.BICUBIC)
        assert np.array_equal(np.asarray(view), np.asarray(expected))
    assert [instance.image.getpixel((40, 40)) for instance in trainer.environments] == [COLOURS[0]] * 2 + [
        COLOURS[1]
    ] * 2
