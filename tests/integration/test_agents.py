"""`tools=` (TRL's agent API): multi-turn rollouts whose tool turns are exactly the chat template's rendering, masked
out of the loss, with the model's own forward as the reference of every sampled turn's log-probs.

The model's turns come from a scripted engine (the rollout engine is an interface: `generate(batch, n, sampling)`):
a tiny random model does not call tools, and what is tested here is what the trainer does with the calls, not the
sampling. The tokenizer is the tiny byte-level one with TRL's Qwen2.5 chat template and its tool tokens.
"""

import json

import pytest
import torch
import torch.nn.functional as F
import trl.chat_template_utils as chat_templates
from datasets import Dataset

from rft_trl import PPOTrainerVL
from rft_trl.data.collator import PromptCollator
from rft_trl.models.actor import Actor
from rft_trl.rollout import RolloutEngine, pad_completions, run_tool_turns
from rft_trl.testing import build_tiny_model, tiny_config
from rft_trl.trainers.objective import padded_fields
from rft_trl.trainers.setup import build_multi_turn

QUESTION = [{"role": "user", "content": "What is 3 times 4?"}]


def multiply(a: int, b: int) -> int:
    """
    Multiply two integers.

    Args:
        a: The first integer.
        b: The second integer.
    """
    return a * b


async def add(a: int, b: int) -> int:
    """
    Add two integers.

    Args:
        a: The first integer.
        b: The second integer.
    """
    return a + b


def broken(a: int) -> int:
    """
    Always fails.

    Args:
        a: Anything.
    """
    raise RuntimeError("the tool is down")


def tool_model():
    """The tiny Qwen2 with TRL's Qwen2.5 chat template and the tool tokens it renders."""
    model, tokenizer = build_tiny_model("qwen2")
    tokenizer.chat_template = chat_templates.qwen2_5_chat_template
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]}
    )
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    return model, tokenizer


def call_text(*calls) -> str:
    """An assistant turn calling tools as Qwen2.5 writes it: one `<tool_call>` block per call."""
    blocks = [
        f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>" for name, arguments in calls
    ]
    return "\n".join(blocks) + "<|im_end|>"


class ScriptedEngine(RolloutEngine):
    """
    Answers a context by the number of tool responses it holds: `script[k]` after `k` of them. With `scored`, it
    reports a log-prob of `-(k + 1) / 10` on each token of `script[k]`, as vLLM reports its own.
    """

    def __init__(self, tokenizer, script: list[str], scored: bool = False):
        self.tokenizer, self.script, self.contexts, self.scored = tokenizer, script, [], scored
        self.response = tokenizer.convert_tokens_to_ids("<tool_response>")

    def generate(self, batch, n, sampling_kwargs):
        completions, log_probs = [], []
        for ids, mask in zip(batch.input_ids.repeat_interleave(n, 0), batch.attention_mask.repeat_interleave(n, 0)):
            context = ids[mask.bool()].tolist()
            self.contexts.append(context)
            turn = min(context.count(self.response), len(self.script) - 1)
            completions.append(self.tokenizer.encode(self.script[turn], add_special_tokens=False))
            log_probs.append([-(turn + 1) / 10] * len(completions[-1]))
        return pad_completions(
            batch.input_ids.repeat_interleave(n, 0),
            batch.attention_mask.repeat_interleave(n, 0),
            completions,
            log_probs if self.scored else None,
            self.tokenizer.convert_tokens_to_ids("<|im_end|>"),
            self.tokenizer.pad_token_id,
        )


def run(tmp_path, tools, script, **settings):
    """One rollout of the question through the tool loop; returns the turns, the trainer's multi-turn and batch."""
    model, tokenizer = tool_model()
    args = tiny_config(str(tmp_path), generate_max_len=settings.pop("generate_max_len", 200), **settings)
    turns = build_multi_turn(tools, None, tokenizer, (), Actor(model), args)
    collator = PromptCollator(tokenizer, chat_template_kwargs=turns.chat_template_kwargs)
    turns.process = collator.process_text
    batch = collator([{"prompt": QUESTION}])
    engine = ScriptedEngine(tokenizer, script)
    first = engine.generate(batch, 1, {})
    return run_tool_turns(engine, batch, first, 1, {}, turns), turns, batch, tokenizer


def unpadded(generation):
    keep = generation.attention_mask[0].bool()
    width = generation.sequences.shape[1] - generation.action_mask.shape[1]
    return generation.sequences[0][keep].tolist(), generation.tool_mask[0][generation.action_mask[0]].tolist(), width


def test_tool_turns_are_the_chat_templates_rendering_and_masked(tmp_path):
    result, turns, batch, tokenizer = run(
        tmp_path, [multiply], [call_text(("multiply", {"a": 3, "b": 4})), "12<|im_end|>"]
    )
    conversation = [
        *QUESTION,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "multiply", "arguments": {"a": 3, "b": 4}}}],
        },
        {"role": "tool", "name": "multiply", "content": "12"},
        {"role": "assistant", "content": "12"},
    ]
    assert result.conversations == [conversation[1:]]
    assert (result.calls, result.failures) == (1, 0)
    # The ids trained on are the whole conversation as the chat template renders it (up to the last end of turn):
    # sampled turns and inserted tool turn end to end, never a re-tokenization of decoded text.
    ids, tool_mask, _ = unpadded(result.generation)
    rendered = tokenizer.apply_chat_template(
        conversation, tokenize=True, return_dict=False, **turns.chat_template_kwargs
    )
    assert ids == rendered[: len(ids)] and tokenizer.decode(rendered[len(ids) :]) == "\n"
    # The inserted tokens are exactly the tool turn and the next assistant header; the rest was sampled.
    prompt_length = int(batch.attention_mask.sum())
    completion = ids[prompt_length:]
    inserted = tokenizer.decode([t for t, sampled in zip(completion, tool_mask) if not sampled])
    assert inserted == "\n<|im_start|>user\n<tool_response>\n12\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    sampled = tokenizer.decode([t for t, sampled in zip(completion, tool_mask) if sampled])
    assert sampled == call_text(("multiply", {"a": 3, "b": 4})) + "12<|im_end|>"


def test_an_engines_log_probs_are_spliced_at_their_turns_and_nan_on_the_tool_turns(tmp_path):
    # vLLM reports each sampled token's log-prob: the tool loop keeps every turn's at its place in the completion, and
    # the inserted tool turn, which no engine sampled, carries NaN (what every consumer masks out; test_agents_vllm.py
    # checks them against the model's forward on real vLLM). The HF engine reports none, and the loop none either.
    model, tokenizer = tool_model()
    args = tiny_config(str(tmp_path), generate_max_len=200)
    turns = build_multi_turn([multiply], None, tokenizer, (), Actor(model), args)
    collator = PromptCollator(tokenizer, chat_template_kwargs=turns.chat_template_kwargs)
    turns.process = collator.process_text
    batch = collator([{"prompt": QUESTION}])
    script = [call_text(("multiply", {"a": 3, "b": 4})), "12<|im_end|>"]
    for scored in (True, False):
        engine = ScriptedEngine(tokenizer, script, scored=scored)
        generation = run_tool_turns(engine, batch, engine.generate(batch, 1, {}), 1, {}, turns).generation
        if not scored:
            assert generation.log_probs is None
            continue
        sampled = generation.tool_mask[0][generation.action_mask[0]]
        log_probs = generation.log_probs[0][generation.action_mask[0]]
        first, second = (len(tokenizer.encode(turn, add_special_tokens=False)) for turn in script)
        assert torch.equal(log_probs.isnan(), ~sampled) and not sampled[first:-second].any()
        assert torch.equal(log_probs[:first], torch.full((first,), -0.1))
        assert torch.equal(log_probs[-second:], torch.full((second,), -0.2))


def test_failed_and_async_calls_are_answered_in_order(tmp_path):
    calls = [("broken", {"a": 1}), ("nowhere", {}), ("add", {"a": 2, "b": 5}), ("multiply", {"a": 3})]
    # Four calls and their answers take many of the tiny byte-level tokenizer's tokens: a budget they fit in.
    result, *_ = run(tmp_path, [multiply, add, broken], [call_text(*calls), "done<|im_end|>"], generate_max_len=1000)
    tools = [message for message in result.conversations[0] if message["role"] == "tool"]
    assert [m["name"] for m in tools] == ["broken", "nowhere", "add", "multiply"]
    assert tools[0]["content"] == str({"error": "the tool is down"})
    assert tools[1]["content"] == str({"error": "Tool nowhere not found."})
    assert tools[2]["content"] == "7"  # the async tool, awaited
    assert "missing 1 required positional argument: 'b'" in tools[3]["content"]
    assert (result.calls, result.failures) == (4, 3)


def test_a_malformed_call_is_plain_text(tmp_path):
    # A call that is not JSON makes the turn unparsable: as in TRL, it is the model's text, and no tool runs.
    malformed = '<tool_call>\n{"name": "multiply", "arguments": {"a": 3,\n</tool_call><|im_end|>'
    result, *_ = run(tmp_path, [multiply], [malformed, "never<|im_end|>"])
    (conversation,) = result.conversations
    assert [m["role"] for m in conversation] == ["assistant"] and "tool_calls" not in conversation[0]
    assert '"arguments": {"a": 3,' in conversation[0]["content"]
    assert result.calls == 0


def test_max_tool_calling_iterations_ends_the_loop(tmp_path):
    always = [call_text(("multiply", {"a": 2, "b": 2}))]
    for limit in (0, 2):
        result, *_ = run(tmp_path / str(limit), [multiply], always, max_tool_calling_iterations=limit)
        roles = [message["role"] for message in result.conversations[0]]
        assert roles == ["assistant"] + ["tool", "assistant"] * limit
        assert result.calls == limit


def test_a_tool_turn_past_the_completion_budget_is_left_out(tmp_path):
    first = call_text(("multiply", {"a": 3, "b": 4}))
    model, tokenizer = tool_model()
    budget = len(tokenizer.encode(first, add_special_tokens=False)) + 5  # the call fits, the tool turn does not
    result, *_ = run(tmp_path, [multiply], [first, "12<|im_end|>"], generate_max_len=budget)
    assert [m["role"] for m in result.conversations[0]] == ["assistant"]
    ids, tool_mask, _ = unpadded(result.generation)
    assert all(tool_mask) and result.calls == 1


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_a_tool_rollout_scores_sampled_tokens_by_the_models_own_forward(tmp_path, packing):
    model, tokenizer = tool_model()
    seen = []

    def answer_reward(prompts, completions, **columns):
        seen.extend(completions)
        return [float(c[-1]["content"] == "12") for c in completions]

    trainer = PPOTrainerVL(
        model,
        [answer_reward],
        tiny_config(
            str(tmp_path), generate_max_len=200, prompt_max_len=4096, beta=0.1, max_steps=1, packing_samples=packing
        ),
        train_dataset=Dataset.from_list([{"prompt": QUESTION}] * 4),
        processing_class=tokenizer,
        tools=[multiply],
    )
    script = [call_text(("multiply", {"a": 3, "b": 4})), "12<|im_end|>"]
    trainer.experience_maker.engine = ScriptedEngine(tokenizer, script)
    trainer._start_rollout([{"prompt": QUESTION}] * 2)
    assert len(seen) == 4 and all(c[1] == {"role": "tool", "name": "multiply", "content": "12"} for c in seen)
    assert trainer._rollout_metrics["tools/call_frequency"] == 1.0
    assert trainer._rollout_metrics["tools/failure_frequency"] == 0.0
    batch = trainer._micro_batches[0]
    sequences, tool_mask, action_mask = batch.sequences[0], batch.tool_mask[0], batch.action_mask[0]
    # A packed micro-batch lists its samples unpadded; a padded one's first row is left-padded.
    keep = torch.ones_like(sequences, dtype=torch.bool) if packing else batch.attention_mask[0].bool()
    # The reference: the model's own forward on the whole conversation, full-vocabulary log-softmax, no positions.
    with torch.no_grad():
        logits = model(sequences[keep][None]).logits[0].double()
    log_probs = F.log_softmax(logits, -1)[:-1].gather(-1, sequences[keep][1:, None]).squeeze(-1)  # next tokens
    actions = int(action_mask.sum())
    expected = log_probs[-actions:]
    ours = batch.action_log_probs[0][-actions:] if batch.action_log_probs is not None else None
    reference = batch.base_action_log_probs[0][-actions:]  # beta > 0: the frozen copy of the initial policy
    trained = tool_mask[-actions:].bool()
    assert 0 < int(trained.sum()) < actions  # some tokens sampled, some inserted
    torch.testing.assert_close(reference[trained].double(), expected[trained], atol=1e-5, rtol=0)
    if ours is not None:
        torch.testing.assert_close(ours[trained].double(), expected[trained], atol=1e-5, rtol=0)
    # Inserted tokens are out of the loss, the KL and the entropy: the loss's mask is the sampled tokens only.
    fields = padded_fields(batch, {})
    assert torch.equal(fields["action_mask"][0][-actions:], trained)
    trainer.train()
    (entry,) = [e for e in trainer.state.log_history if "loss" in e]
    assert entry["tools/call_frequency"] == 1.0 and torch.isfinite(torch.tensor(entry["loss"]))


def test_a_template_that_cannot_render_tool_calls_is_refused(tmp_path):
    model, tokenizer = build_tiny_model("qwen2")
    # A plain ChatML template, which drops the assistant's tool calls.
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(ValueError, match="cannot render a tool-calling conversation"):
        PPOTrainerVL(
            model,
            [lambda completions, **kw: [0.0] * len(completions)],
            tiny_config(str(tmp_path)),
            train_dataset=Dataset.from_list([{"prompt": QUESTION}] * 4),
            processing_class=tokenizer,
            tools=[multiply],
        )


# ------------------------------------------------------------------------------------------------ environments


class Counter:
    """An environment holding a counter: reset to the row's `start`, the model adds to it, reward when it is 5."""

    instances = 0

    def __init__(self):
        Counter.instances += 1
        self.total = None
        self.resets = 0

    def reset(self, **row):
        self.total = int(row["start"])
        self.resets += 1
        return f" The counter starts at {self.total}."

    def increment(self, by: int) -> int:
        """
        Add to the counter.

        Args:
            by: How much to add.
        """
        self.total += by
        return self.total

    def get_reward(self) -> float:
        return float(self.total == 5)


class Lamp:
    """A second environment, for routing: its tool is `switch`."""

    def reset(self, **row):
        self.on = False

    def switch(self) -> str:
        """Switch the lamp."""
        self.on = not self.on
        return "on" if self.on else "off"


def environment_trainer(tmp_path, rows, environment_factory, **settings):
    model, tokenizer = tool_model()
    seen = []

    def sees_environments(prompts, completions, environments, **columns):
        seen.append(list(environments))
        return [0.0] * len(completions)

    trainer = PPOTrainerVL(
        model,
        [sees_environments],
        tiny_config(str(tmp_path), generate_max_len=200, prompt_max_len=4096, max_steps=1, **settings),
        train_dataset=None if rows is None else Dataset.from_list(rows),
        processing_class=tokenizer,
        environment_factory=environment_factory,
    )
    return trainer, tokenizer, seen


def test_each_sample_runs_its_own_environment(tmp_path):
    Counter.instances = 0
    rows = [{"prompt": QUESTION, "start": 3}, {"prompt": QUESTION, "start": 1}]
    trainer, tokenizer, seen = environment_trainer(tmp_path, rows, Counter)
    engine = ScriptedEngine(tokenizer, [call_text(("increment", {"by": 2})), "done<|im_end|>"])
    trainer.experience_maker.engine = engine
    trainer._start_rollout(rows)
    (environments,) = seen
    # One instance per sample (2 prompts x 2 samples), reset with its row: the prompt-major layout of the rollout.
    assert [e.total for e in environments] == [5, 5, 3, 3] and all(e.resets == 1 for e in environments)
    assert len({id(e) for e in environments}) == 4
    # The reset's observation extends the prompt, and the prompt is rendered with the environment's tool.
    first_context = tokenizer.decode(engine.contexts[0])
    assert "What is 3 times 4? The counter starts at 3." in first_context and '"name": "increment"' in first_context
    # get_reward is a reward source named after the class, scored per sample.
    assert trainer._rollout_metrics["rewards/Counter/mean"] == 0.5
    assert trainer.reward_func_names == ["sees_environments", "Counter"]
    # Constructed once, reset often: the next rollout reuses the instances (one more built at construction).
    created = Counter.instances
    trainer._start_rollout(rows)
    assert Counter.instances == created and all(e.resets == 2 for e in seen[1])


def test_rows_are_routed_to_their_environment_and_its_tools(tmp_path):
    rows = [
        {"prompt": QUESTION, "start": 3, "environment": "counter"},
        {"prompt": QUESTION, "start": 0, "environment": "lamp"},
    ]
    trainer, tokenizer, seen = environment_trainer(tmp_path, rows, {"counter": Counter, "lamp": Lamp})
    engine = ScriptedEngine(tokenizer, ["done<|im_end|>"])
    trainer.experience_maker.engine = engine
    trainer._start_rollout(rows)
    counter_prompt, lamp_prompt = tokenizer.decode(engine.contexts[0]), tokenizer.decode(engine.contexts[2])
    assert '"name": "increment"' in counter_prompt and '"name": "switch"' not in counter_prompt
    assert '"name": "switch"' in lamp_prompt and '"name": "increment"' not in lamp_prompt
    assert [type(e).__name__ for e in seen[0]] == ["Counter", "Counter", "Lamp", "Lamp"]


def test_an_environment_that_owns_the_data_needs_no_dataset(tmp_path):
    class Riddle:
        def reset(self, **row):
            return "Say done."

        def get_reward(self) -> float:
            return 1.0

    trainer, tokenizer, _ = environment_trainer(tmp_path, None, Riddle)
    engine = ScriptedEngine(tokenizer, ["done<|im_end|>"])
    trainer.experience_maker.engine = engine
    trainer.train()
    assert "<|im_start|>user\nSay done.<|im_end|>" in tokenizer.decode(engine.contexts[0])
    (entry,) = [e for e in trainer.state.log_history if "loss" in e]
    assert entry["rewards/Riddle/mean"] == 1.0
    with pytest.raises(ValueError, match="requires a `train_dataset` with an `environment` column"):
        environment_trainer(tmp_path / "routed", None, {"riddle": Riddle})


def test_an_environment_without_reset_is_refused(tmp_path):
    class Broken:
        def step(self) -> str:
            """Step."""
            return "x"

    with pytest.raises(ValueError, match=r"Broken \(environment_factory\) defines no `reset` method"):
        environment_trainer(tmp_path, [{"prompt": QUESTION}] * 2, Broken)


# ------------------------------------------------------------------------------------------------ rollout_func


def test_a_rollout_func_rollout_trains_on_its_ids_and_env_mask(tmp_path):
    model, tokenizer = tool_model()
    calls, seen = [], []

    def rollout(prompts, trainer):
        # The user's own multi-turn rollout: a fixed model turn, an environment turn, another model turn.
        calls.append(prompts)
        ids = [
            tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=False)
            for p in prompts
        ]
        model_turn = tokenizer.encode("yes<|im_end|>", add_special_tokens=False)
        environment_turn = tokenizer.encode("\n<|im_start|>user\nagain<|im_end|>\n<|im_start|>assistant\n")
        completion = model_turn + environment_turn + model_turn
        mask = [1] * len(model_turn) + [0] * len(environment_turn) + [1] * len(model_turn)
        return {
            "prompt_ids": ids,
            "completion_ids": [completion] * len(prompts),
            "logprobs": [[-1.0] * len(completion)] * len(prompts),
            "env_mask": [mask] * len(prompts),
            "episode": list(range(len(prompts))),
            "note": "same for all",
        }

    def reward(prompts, completions, episode, note, **columns):
        seen.append((episode, note))
        return [float(e) for e in episode]

    trainer = PPOTrainerVL(
        model,
        [reward],
        tiny_config(str(tmp_path), generate_max_len=64, max_steps=1, beta=0.1),
        train_dataset=Dataset.from_list([{"prompt": QUESTION}] * 4),
        processing_class=tokenizer,
        rollout_func=rollout,
    )
    trainer._start_rollout([{"prompt": QUESTION}] * 2)
    assert len(calls[0]) == 4  # each sample's prompt: 2 rows x 2 samples
    assert seen == [([0, 1, 2, 3], ["same for all"] * 4)]
    batch = trainer._micro_batches[0]
    actions = int(batch.action_mask[0].sum())
    trained = batch.tool_mask[0][-actions:].bool()
    assert int(trained.sum()) == 2 * len(tokenizer.encode("yes<|im_end|>", add_special_tokens=False))
    keep = batch.attention_mask[0].bool()
    with torch.no_grad():
        logits = model(batch.sequences[0][keep][None]).logits[0].double()
    expected = F.log_softmax(logits, -1)[:-1].gather(-1, batch.sequences[0][keep][1:, None]).squeeze(-1)[-actions:]
    torch.testing.assert_close(
        batch.base_action_log_probs[0][-actions:][trained].double(), expected[trained], atol=1e-5, rtol=0
    )
    fields = padded_fields(batch, {})
    assert torch.equal(fields["action_mask"][0][-actions:], trained)
    trainer.train()


def test_a_rollout_func_missing_keys_is_named(tmp_path):
    model, tokenizer = tool_model()
    trainer = PPOTrainerVL(
        model,
        [lambda completions, **kw: [0.0] * len(completions)],
        tiny_config(str(tmp_path)),
        train_dataset=Dataset.from_list([{"prompt": QUESTION}] * 4),
        processing_class=tokenizer,
        rollout_func=lambda prompts, trainer: {"prompt_ids": [[1]] * len(prompts)},
    )
    with pytest.raises(ValueError, match=r"rollout_func must return keys \['completion_ids', 'logprobs'\]"):
        trainer._start_rollout([{"prompt": QUESTION}] * 2)
