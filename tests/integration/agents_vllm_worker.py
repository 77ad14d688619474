"""
What tests/integration/test_agents_vllm.py measures of a tool rollout sampled by vLLM, shared by its two modes: server
mode runs it in the test's process, colocate mode in `.venv-vllm` (vLLM's CPU build), as a script:

    python tests/integration/agents_vllm_worker.py MODEL_DIR OUT.json

builds a colocated trainer on the tool model in MODEL_DIR ([`save_tool_model`]), measures one rollout
([`measure_tool_rollout`]), trains two steps and writes both as JSON.
"""

from __future__ import annotations

import json
import math
import os
import sys

import torch
import torch.nn.functional as F
import trl.chat_template_utils as chat_templates
from datasets import Dataset
from test_agents import QUESTION, multiply

from rft_trl import PPOTrainerVL
from rft_trl.core.importance_sampling import IMPORTANCE_SAMPLING_MODES
from rft_trl.testing import build_tiny_model, distinct_reward, load_processing_class, tiny_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

# Sampled at half temperature (the trainer scores at the same): the turns the tool model learned stay canonical
# token sequences (the chat template's tokenization), while its one learned choice after the tool turn (which reply)
# stays at even odds, a log-prob near log(1/2) that a misplaced log-prob cannot match by chance.
TEMPERATURE = 0.5
COMPLETION_BUDGET = 200  # every turn, inserted tool turns included (about 75 ids for the whole exchange)
ANSWERS = ("12", "It is 12.")


def tool_conversations() -> list[list[dict]]:
    """The exchanges the tool model learns: a call of `multiply(a=3, b=4)`, its answer, then either reply."""
    call = {"type": "function", "function": {"name": "multiply", "arguments": {"a": 3, "b": 4}}}
    return [
        [
            *QUESTION,
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "name": "multiply", "content": "12"},
            {"role": "assistant", "content": answer},
        ]
        for answer in ANSWERS
    ]


def save_tool_model(path: str, steps: int = 160) -> str:
    """
    The tiny Qwen3 (heads of 32, which vLLM's CPU attention runs) with TRL's Qwen2.5 chat template and its tool
    tokens, fine-tuned on [`tool_conversations`] until it calls the tool: a random model never does. Written with its
    tokenizer to `path`. About 20 s on one CPU thread.
    """
    model, tokenizer = build_tiny_model("qwen3")
    tokenizer.chat_template = chat_templates.qwen2_5_chat_template
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]}
    )
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    template = {"tools": [multiply], "tokenize": True, "return_dict": False}
    prompt = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, **template)
    rows = [tokenizer.apply_chat_template(conversation, **template) for conversation in tool_conversations()]
    width = max(len(ids) for ids in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id)  # [2, L]
    labels = torch.full((len(rows), width), -100)  # [2, L]: the completions' ids, tool turns included
    for row, ids in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, len(prompt) : len(ids)] = torch.tensor(ids[len(prompt) :])
    torch.manual_seed(0)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        logits = model(input_ids=input_ids).logits[:, :-1]  # right padding: causal attention never reads it
        loss = F.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


class Calculator:
    """An environment whose one tool is `multiply`, rendered as the standalone one is (TRL's `environment_factory`)."""

    def reset(self, **row) -> None:
        self.calls = 0

    def multiply(self, a: int, b: int) -> int:
        """
        Multiply two integers.

        Args:
            a: The first integer.
            b: The second integer.
        """
        self.calls += 1
        return a * b


def tool_trainer(
    model_dir: str, output_dir: str, tools=(multiply,), environment_factory=None, **settings
) -> PPOTrainerVL:
    """
    A trainer on the tool model with `use_vllm=True` (`settings` pick the mode), 2 prompts x 2 samples a step, with
    the standalone `multiply` or an `environment_factory`.
    """
    args = tiny_config(
        output_dir,
        **{
            "use_vllm": True,
            "temperature": TEMPERATURE,
            "generate_max_len": COMPLETION_BUDGET,
            "prompt_max_len": 4096,
            "learning_rate": 1e-3,
            **settings,
        },
    )
    return PPOTrainerVL(
        model_dir,
        [distinct_reward],  # the two replies score apart: a group that sampled both has a gradient
        args,
        train_dataset=Dataset.from_list([{"prompt": QUESTION}] * 4),
        processing_class=load_processing_class(model_dir),
        tools=list(tools),
        environment_factory=environment_factory,
    )


def measure_tool_rollout(trainer: PPOTrainerVL) -> dict:
    """
    One tool rollout (2 prompts x 2 samples) sampled by the trainer's engine, measured against independent references:

    - `ids_match` (per sample): the ids trained on are the chat template's rendering of the whole conversation;
    - `contexts_match`: every later turn was sampled from the rendering of the conversation before it (with the
      assistant header), recorded from the engine's calls;
    - `engine_difference`, `trainer_difference`: the largest |log-prob - reference| over the sampled tokens of the
      engine's (spliced) log-probs and of the trainer's scoring, the reference being the model's plain forward on each
      whole conversation (log-softmax at the sampling temperature);
    - `nan_exactly_on_inserted`: the engine's log-probs are NaN on the inserted tool turns and nowhere else;
    - `wrong_splice_difference`: a control, the engine's sampled log-probs laid end to end as if no tool turn were
      between them, against the same reference;
    - `correction` (per importance-sampling mode): whether the weights and the mismatch metrics are finite and the
      weights 0 on the inserted tokens.
    """
    maker, args = trainer.experience_maker, trainer.args
    tokenizer, turns = maker.collator.tokenizer, maker.multi_turn
    engine = maker.engine
    contexts: list[list[int]] = []
    generate = engine.generate

    def recording(batch, n, sampling_kwargs):  # the real engine, its contexts recorded
        contexts.extend(ids[mask.bool()].tolist() for ids, mask in zip(batch.input_ids, batch.attention_mask))
        return generate(batch, n, sampling_kwargs)

    engine.generate = recording
    try:
        samples, *_ = maker.generate_and_score([{"prompt": QUESTION}] * 2, 2, args.sampling_kwargs())
    finally:
        del engine.generate
    scored = maker._score(samples)["old_log_probs"]  # [N, A], the trainer's own
    result = {"ids_match": [], "contexts_match": True, "multi_turn_samples": 0, "nan_exactly_on_inserted": True}
    engine_differences, trainer_differences, wrong_differences = [], [], []
    for i, conversation in enumerate(samples["conversations"]):
        ids = samples["sequences"][i][samples["attention_mask"][i].bool()].tolist()
        actions = int(samples["action_mask"][i].sum())
        rendered = tokenizer.apply_chat_template(
            [*QUESTION, *conversation], tokenize=True, return_dict=False, **turns.chat_template_kwargs
        )
        result["ids_match"].append(ids == rendered[: len(ids)] and tokenizer.decode(rendered[len(ids) :]) == "\n")
        for k, message in enumerate(conversation):
            if k > 0 and message["role"] == "assistant":  # a later turn: sampled from what came before it
                before = tokenizer.apply_chat_template(
                    [*QUESTION, *conversation[:k]],
                    add_generation_prompt=True,
                    tokenize=True,
                    return_dict=False,
                    **turns.chat_template_kwargs,
                )
                result["contexts_match"] &= before in contexts and ids[: len(before)] == before
        sampled = samples["tool_mask"][i][:actions].bool()  # [A_i]
        result["multi_turn_samples"] += int(not sampled.all())
        with torch.no_grad():
            logits = trainer.actor.hf_model(torch.tensor([ids])).logits[0].double() / args.temperature
        reference = F.log_softmax(logits, -1)[:-1].gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)[-actions:]
        engine_log_probs = samples["rollout_log_probs"][i][:actions].double()
        result["nan_exactly_on_inserted"] &= bool(torch.equal(engine_log_probs.isnan(), ~sampled))
        engine_differences.append((engine_log_probs - reference)[sampled].abs().max().item())
        trainer_differences.append((scored[i][:actions].double() - reference)[sampled].abs().max().item())
        if not sampled.all():
            wrong = engine_log_probs[sampled]  # the sampled turns end to end: the tool turns' places forgotten
            wrong_differences.append((wrong - reference[: len(wrong)]).abs().max().item())
    result["engine_difference"] = max(engine_differences)
    result["trainer_difference"] = max(trainer_differences)
    result["wrong_splice_difference"] = min(wrong_differences, default=math.nan)
    inserted = samples["action_mask"] & ~samples["tool_mask"]
    result["correction"] = {}
    mode = args.vllm_importance_sampling_mode
    try:
        for args.vllm_importance_sampling_mode in IMPORTANCE_SAMPLING_MODES:
            weights, metrics = maker._rollout_correction(samples, scored)
            result["correction"][args.vllm_importance_sampling_mode] = {
                "finite": bool(weights.isfinite().all()) and all(math.isfinite(v) for v in metrics.values()),
                "zero_on_inserted": bool((weights[inserted] == 0).all()),
                "metrics": metrics,
            }
    finally:
        args.vllm_importance_sampling_mode = mode
    return result


def colocate(model_dir: str, out: str) -> None:
    trainer = tool_trainer(
        model_dir,
        os.path.join(os.path.dirname(out), "run"),
        vllm_mode="colocate",
        vllm_enforce_eager=True,
        vllm_importance_sampling_mode="token_truncate",
    )
    result = {"rollout": measure_tool_rollout(trainer), "max_model_len": trainer.rollout_engine.max_model_len}
    trainer.train()
    result["log_history"] = trainer.state.log_history
    with open(out, "w") as handle:
        json.dump(result, handle, default=float)


if __name__ == "__main__":
    colocate(sys.argv[1], sys.argv[2])
