"""
`async_rollouts`: the next rollout sampled by vLLM (its CPU build, for real: vLLM's own OpenAI server from
`.venv-vllm`) in a background thread while the current one trains.

The references: the synchronous run (the same trainer with `async_rollouts=False`), and the model's own forward on each
sample under the weights of every optimizer step (kept by a callback), which tells which weights sampled a rollout.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from test_vllm import serve
from transformers import TrainerCallback

from rft_trl import PPOTrainerVL
from rft_trl.testing import build_tiny_model, distinct_reward, length_reward, make_task_dataset, tiny_config
from rft_trl.trainers.async_rollouts import AsyncRollouts

# The engine's and the policy's log-probs of the same tokens under the same fp32 weights (tests/e2e/test_vllm.py's).
TOLERANCE = 1e-4
ASYNC_METRICS = (
    "rollout/async/staleness",
    "rollout/async/generated_ahead",
    "rollout/async/wait_seconds",
    "rollout/async/discarded",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serve("qwen3", tmp_path_factory) as url:
        yield url


class WeightsByStep(TrainerCallback):
    """The policy's (transformers model's) weights at every optimizer step (0: before training)."""

    def __init__(self, model):
        self.model = model
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        self.weights[state.global_step] = copy.deepcopy(self.model.state_dict())

    def on_step_end(self, args, state, control, **kwargs):
        self.weights[state.global_step] = copy.deepcopy(self.model.state_dict())


@pytest.fixture(scope="module")
def vl_server(tmp_path_factory):
    with serve("qwen3_vl", tmp_path_factory) as url:
        yield url


def make_trainer(
    tmp_path,
    url: str,
    name: str,
    eval_dataset=None,
    reward_funcs=(distinct_reward,),
    kind: str = "qwen3",
    task: str = "text",
    rows: int = 16,
    **overrides,
) -> PPOTrainerVL:
    model, tokenizer = build_tiny_model(kind)
    settings = {
        "use_vllm": True,
        "vllm_mode": "server",
        "vllm_server_base_url": url,
        "vllm_weight_sync_dir": str(tmp_path / f"sync_{name}"),
        "learning_rate": 0.1,
        "max_steps": 4,
        **overrides,
    }
    args = tiny_config(str(tmp_path / name), **settings)
    return PPOTrainerVL(
        model,
        list(reward_funcs),
        args,
        train_dataset=make_task_dataset(task, rows),
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
    )


def step_logs(trainer: PPOTrainerVL) -> list[dict]:
    """Each optimizer step's logged metrics, without the timing and async bookkeeping that differ between modes."""
    skip = {*ASYNC_METRICS, "step_time", "grad_norm"}
    return [
        {k: v for k, v in entry.items() if k not in skip and "runtime" not in k and "per_second" not in k}
        for entry in trainer.state.log_history
        if "loss" in entry
    ]


def assert_same_parameters(first: PPOTrainerVL, second: PPOTrainerVL) -> None:
    theirs = dict(second.model.named_parameters())
    for name, parameter in first.model.named_parameters():
        assert torch.equal(parameter, theirs[name]), name


def engine_lag(trainer: PPOTrainerVL, weights: WeightsByStep, rollouts: list[tuple[int, dict]]) -> list[dict]:
    """
    For each recorded rollout `(step, samples)`: the largest difference between vLLM's log-probs of the sampled tokens
    and the model's own forward (one unpadded sequence at a time, full-vocabulary log-softmax, no position ids) under
    the weights of each optimizer step.
    """
    model = copy.deepcopy(trainer.actor.hf_model).eval()
    found = []
    for step, samples in rollouts:
        differences = {}
        for version in sorted(weights.weights):
            model.load_state_dict(weights.weights[version])
            largest = 0.0
            for i in range(samples["sequences"].shape[0]):
                ids = samples["sequences"][i][samples["attention_mask"][i].bool()]
                actions = samples["action_mask"][i].bool()
                count = int(actions.sum())
                with torch.no_grad():
                    logits = model(ids[None]).logits[0, -count - 1 : -1].float()
                ours = logits.log_softmax(-1).gather(-1, ids[-count:, None])[:, 0]
                theirs = samples["rollout_log_probs"][i][actions]
                largest = max(largest, (ours - theirs).abs().max().item())
            differences[version] = largest
        found.append({"step": step, "differences": differences})
    return found


def record_rollouts(trainer: PPOTrainerVL) -> list[tuple[int, dict]]:
    """Each rollout's generated samples, with the optimizer step it trains from (a spy on `score_rollout`)."""
    recorded = []
    score = trainer.experience_maker.score_rollout

    def spy(generated, metrics):
        recorded.append((trainer.state.global_step, generated[0]))
        return score(generated, metrics)

    trainer.experience_maker.score_rollout = spy
    return recorded


def test_staleness_zero_is_the_synchronous_run(tmp_path, server):
    synchronous = make_trainer(tmp_path, server, "sync")
    synchronous.train()
    in_turn = make_trainer(tmp_path, server, "staleness0", async_rollouts=True, max_staleness=0)
    in_turn.train()
    assert step_logs(in_turn) == step_logs(synchronous)
    assert_same_parameters(in_turn, synchronous)
    logged = [entry for entry in in_turn.state.log_history if "loss" in entry]
    assert [entry["rollout/async/generated_ahead"] for entry in logged] == [0.0] * 4
    # Control: the same run one step off-policy is another run (its rollouts after the first come from older weights).
    ahead = make_trainer(tmp_path, server, "staleness1", async_rollouts=True)
    ahead.train()
    assert step_logs(ahead)[0] == step_logs(synchronous)[0]
    assert step_logs(ahead)[1:] != step_logs(synchronous)[1:]


def test_rollouts_generated_ahead_are_the_rollouts_sampled_in_turn_when_the_weights_hold(tmp_path, server):
    # With a learning rate of 0 the weights never change, so a rollout sampled ahead must be exactly the rollout
    # sampled in turn: the same rows, the same seeds, the same completions and rewards, step by step.
    # 6 rows, 2 a rollout: the fourth rollout starts the second epoch, whose rows come from its own shuffle.
    synchronous = make_trainer(tmp_path, server, "sync", learning_rate=0.0, rows=6)
    synchronous.train()
    ahead = make_trainer(tmp_path, server, "ahead", learning_rate=0.0, rows=6, async_rollouts=True)
    ahead.train()
    assert step_logs(ahead) == step_logs(synchronous)
    logged = [entry for entry in ahead.state.log_history if "loss" in entry]
    assert [entry["rollout/async/generated_ahead"] for entry in logged] == [0.0, 1.0, 1.0, 1.0]
    assert [entry["rollout/async/staleness"] for entry in logged] == [0.0, 1.0, 1.0, 1.0]
    assert logged[-1]["rollout/async/discarded"] == 0.0


def test_dynamic_sampling_rounds_after_a_first_round_sampled_ahead_are_those_sampled_in_turn(tmp_path, server):
    # length_reward ties whenever a group's completions are equally long (most run to the 4-token limit): dynamic
    # sampling refills in turn, after a first round sampled ahead; with the weights held, as in the synchronous run.
    settings = {"learning_rate": 0.0, "dynamic_sampling": True, "reward_funcs": [length_reward]}
    synchronous = make_trainer(tmp_path, server, "sync", **settings)
    synchronous.train()
    ahead = make_trainer(tmp_path, server, "ahead", async_rollouts=True, **settings)
    ahead.train()
    assert step_logs(ahead) == step_logs(synchronous)
    logged = [entry for entry in ahead.state.log_history if "loss" in entry]
    assert [entry["rollout/async/generated_ahead"] for entry in logged] == [0.0, 1.0, 1.0, 1.0]
    assert sum(entry["rollout/dynamic_sampling/rounds"] for entry in logged) > 4  # refill rounds ran


def test_a_rollout_generated_ahead_was_sampled_by_the_previous_step_weights(tmp_path, server):
    trainer = make_trainer(tmp_path, server, "ahead", async_rollouts=True)
    weights = WeightsByStep(trainer.actor.hf_model)
    trainer.add_callback(weights)
    rollouts = record_rollouts(trainer)
    trainer.train()
    found = engine_lag(trainer, weights, rollouts)
    assert [entry["step"] for entry in found] == [0, 1, 2, 3]
    for entry in found:
        step, differences = entry["step"], entry["differences"]
        sampler = max(step - 1, 0)  # the first rollout is sampled in turn, the others one step ahead
        assert differences[sampler] < TOLERANCE, found
        # Control: the weights the rollout trains from are not those that sampled it (the learning rate moves them).
        if step > 0:
            assert differences[step] > 100 * TOLERANCE, found
    # The synchronous run, through the same measurement: each rollout sampled by its own step's weights.
    synchronous = make_trainer(tmp_path, server, "sync")
    weights = WeightsByStep(synchronous.actor.hf_model)
    synchronous.add_callback(weights)
    rollouts = record_rollouts(synchronous)
    synchronous.train()
    for entry in engine_lag(synchronous, weights, rollouts):
        assert entry["differences"][entry["step"]] < TOLERANCE, entry
        if entry["step"] > 0:
            assert entry["differences"][entry["step"] - 1] > 100 * TOLERANCE, entry


def test_an_async_run_resumed_from_a_checkpoint_is_the_same_run(tmp_path, server, monkeypatch):
    settings = {"async_rollouts": True, "save_strategy": "steps", "save_steps": 2}
    whole = make_trainer(tmp_path, server, "whole", **settings)
    whole.train()
    logged = [entry for entry in whole.state.log_history if "loss" in entry]
    # Nothing is generated ahead across the checkpoint at step 2: the rollout after it is sampled in turn.
    assert [entry["rollout/async/generated_ahead"] for entry in logged] == [0.0, 1.0, 0.0, 1.0]
    resumed = make_trainer(tmp_path, server, "resumed", **settings)
    resumed.train(resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-2"))
    assert_same_parameters(resumed, whole)
    assert step_logs(resumed)[-2:] == step_logs(whole)[-2:]
    # Control: had the run generated the rollout at step 2 ahead (from step 1's weights), the resumed run, which
    # samples it from the saved step-2 weights, would be another run.
    monkeypatch.setattr(AsyncRollouts, "_saves_at", staticmethod(lambda *args: False))
    across = make_trainer(tmp_path, server, "across", **settings)
    across.train()
    assert [entry["rollout/async/generated_ahead"] for entry in across.state.log_history if "loss" in entry] == [
        0.0,
        1.0,
        1.0,
        1.0,
    ]
    differs = any(
        not torch.equal(a, b) for a, b in zip(resumed.model.parameters(), across.model.parameters(), strict=True)
    )
    assert differs


def test_evaluation_waits_for_the_rollout_in_flight_and_scores_the_current_weights(tmp_path, server):
    trainer = make_trainer(
        tmp_path,
        server,
        "eval",
        eval_dataset=make_task_dataset("text", 4, seed=1),
        async_rollouts=True,
        eval_strategy="steps",
        eval_steps=1,
        per_device_eval_batch_size=4,
    )
    trainer.train()
    evaluations = [entry for entry in trainer.state.log_history if "eval_reward" in entry]
    assert len(evaluations) == 4 and all(math.isfinite(entry["eval_reward"]) for entry in evaluations)
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["rollout/async/generated_ahead"] for entry in logged] == [0.0, 1.0, 1.0, 1.0]


def test_image_rollouts_sampled_ahead_are_those_sampled_in_turn(tmp_path, vl_server):
    # Prompts with images: the background thread loads and processes the media and the server renders the chat
    # messages with the images inlined; with the weights held, each rollout sampled ahead is the one sampled in turn.
    settings = {"kind": "qwen3_vl", "task": "colour", "learning_rate": 0.0, "max_steps": 3}
    synchronous = make_trainer(tmp_path, vl_server, "sync", **settings)
    synchronous.train()
    ahead = make_trainer(tmp_path, vl_server, "ahead", async_rollouts=True, **settings)
    ahead.train()
    assert step_logs(ahead) == step_logs(synchronous)
    logged = [entry for entry in ahead.state.log_history if "loss" in entry]
    assert [entry["rollout/async/generated_ahead"] for entry in logged] == [0.0, 1.0, 1.0]
