"""
`tools=` and `environment_factory=` with `use_vllm=True`, on real vLLM (its CPU build, never mocked), in both modes:
every turn is sampled by vLLM from the exact token-id context, and vLLM's log-probs of every sampled turn are spliced
into the completion, NaN on the inserted tool turns, which no consumer reads.

The model is the tiny Qwen3 taught to call `multiply` (a random model never calls a tool;
agents_vllm_worker.py's `save_tool_model`), built once for the module. Colocate mode runs in `.venv-vllm`
(agents_vllm_worker.py, one subprocess); server mode runs vLLM's OpenAI server from `.venv-vllm` (one per module) and
trains here. The references are independent of the trainer: the chat template's rendering of each whole
conversation, and the model's plain forward on it (see tests/integration/test_agents.py for the HF engine).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests
import torch
from agents_vllm_worker import Calculator, measure_tool_rollout, save_tool_model, tool_trainer
from datasets import Dataset
from test_agents import QUESTION, multiply, tool_model

from rft_trl import PPOTrainerVL
from rft_trl.testing import tiny_config

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
READY = ROOT / ".venv-vllm" / ".rft_trl_vllm_ready"
WITHOUT_VLLM = "RFT_TRL_TESTS_WITHOUT_VLLM"
VLLM_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1"}
MAX_MODEL_LEN = 1024  # the server's: the prompt (607 ids, the tool schema) and the 200-id completion budget
# The engine's and the trainer's log-probs of the same tokens with the same fp32 weights (tests/e2e/test_vllm.py's).
TOLERANCE = 1e-4


def require_vllm_environment() -> None:
    """Skip in the reduced run without vLLM (asked for by name); else fail where `.venv-vllm` is not built."""
    if os.environ.get(WITHOUT_VLLM) == "1":
        pytest.skip(f"a reduced run without the vLLM tests ({WITHOUT_VLLM}=1)")
    if not (READY.exists() and VLLM_PYTHON.exists()):
        pytest.fail(
            f"vLLM's CPU environment (.venv-vllm) is missing: build it with `bash scripts/setup_vllm.sh`, or run "
            f"without the vLLM tests, a reduced run, with {WITHOUT_VLLM}=1.",
            pytrace=False,
        )


@pytest.fixture(scope="module")
def tool_model_dir(tmp_path_factory) -> str:
    require_vllm_environment()
    return save_tool_model(str(tmp_path_factory.mktemp("tool_model")))


@pytest.fixture(scope="module")
def tool_server(tool_model_dir, tmp_path_factory):
    """vLLM's own OpenAI server (dev mode, processed log-probs) on the tool model, from the vLLM environment."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log_path = tmp_path_factory.mktemp("server_log") / "server.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", tool_model_dir,
             "--port", str(port), "--dtype", "float32", "--logprobs-mode", "processed_logprobs", "--enforce-eager",
             "--max-model-len", str(MAX_MODEL_LEN), "--no-enable-chunked-prefill"],
            env={**VLLM_ENV, "VLLM_SERVER_DEV_MODE": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            time.sleep(1)
        try:
            assert process.poll() is None, log_path.read_text()[-4000:]
            yield url
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)


def assert_exact_tool_rollout(rollout: dict) -> None:
    """The measurements of `measure_tool_rollout` (agents_vllm_worker.py), against their references."""
    # Some completions called the tool and went on (the model learned to); each is the whole conversation as the chat
    # template renders it, and every later turn was sampled by vLLM from the rendering of what came before it.
    assert rollout["multi_turn_samples"] >= 1, rollout
    assert all(rollout["ids_match"]), rollout
    assert rollout["contexts_match"], rollout
    # vLLM's log-probs of every sampled turn, spliced at their places, are the model's own forward on the whole
    # conversation, and so are the trainer's; the inserted tool turns carry NaN, and only they.
    assert rollout["engine_difference"] < TOLERANCE, rollout
    assert rollout["trainer_difference"] < TOLERANCE, rollout
    assert rollout["nan_exactly_on_inserted"], rollout
    # Control: the same log-probs spliced end to end, the tool turns' places forgotten, are caught by far (the
    # model's choices sit near log(1/2)).
    assert rollout["wrong_splice_difference"] > 100 * TOLERANCE, rollout
    # Every importance-sampling mode, token or sequence, reads the sampled tokens only: finite weights and metrics,
    # weight 0 on the inserted tokens.
    for mode, correction in rollout["correction"].items():
        assert correction["finite"] and correction["zero_on_inserted"], (mode, correction)
        assert correction["metrics"]["sampling/sampling_logp_difference/max"] < TOLERANCE, (mode, correction)


def assert_trained_with_tools(log_history: list[dict]) -> None:
    steps = [entry for entry in log_history if "loss" in entry]
    assert len(steps) == 2, log_history
    for entry in steps:
        assert math.isfinite(entry["loss"]) and entry["tools/call_frequency"] > 0, entry
        sampling = {name: value for name, value in entry.items() if name.startswith("sampling/")}
        assert len(sampling) == 6 and all(math.isfinite(value) for value in sampling.values()), entry
        # The second step's rollout was sampled after the weight sync: the engine follows the policy.
        assert entry["sampling/sampling_logp_difference/max"] < TOLERANCE, entry


def test_colocate_tool_rollout_is_the_conversation_with_the_engines_log_probs_and_trains(tmp_path, tool_model_dir):
    out = tmp_path / "result.json"
    completed = subprocess.run(
        [str(VLLM_PYTHON), str(Path(__file__).with_name("agents_vllm_worker.py")), tool_model_dir, str(out)],
        cwd=ROOT,
        env=VLLM_ENV,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert completed.returncode == 0, f"{completed.stdout[-3000:]}\n--- stderr ---\n{completed.stderr[-6000:]}"
    result = json.loads(out.read_text())
    assert_exact_tool_rollout(result["rollout"])
    assert_trained_with_tools(result["log_history"])


def test_server_tool_rollout_is_the_conversation_with_the_engines_log_probs(tmp_path, tool_model_dir, tool_server):
    trainer = tool_trainer(tool_model_dir, str(tmp_path), vllm_mode="server", vllm_server_base_url=tool_server)
    assert trainer.rollout_engine.max_model_len == MAX_MODEL_LEN  # the tool loop keeps every context within it
    assert_exact_tool_rollout(measure_tool_rollout(trainer))


def test_server_environment_rollouts_train(tmp_path, tool_model_dir, tool_server):
    # environment_factory: each sample calls its own Calculator's `multiply`; sequence-level importance sampling.
    trainer = tool_trainer(
        tool_model_dir,
        str(tmp_path / "out"),
        tools=(),
        environment_factory=Calculator,
        vllm_mode="server",
        vllm_server_base_url=tool_server,
        vllm_weight_sync_dir=str(tmp_path / "sync"),
        vllm_importance_sampling_mode="sequence_mask",
        # 4 samples a prompt: a group ties (all one reply, no gradient) with odds 1/8, a whole step with 1/64.
        n_samples_per_prompt=4,
        per_device_train_batch_size=4,
    )
    before = [parameter.detach().clone() for parameter in trainer.actor.hf_model.parameters()]
    trainer.train()
    assert_trained_with_tools(trainer.state.log_history)
    assert any(calculator.calls for calculator in trainer.environments)
    after = list(trainer.actor.hf_model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after))


def test_tools_with_a_tensor_parallel_colocated_engine_are_refused(tmp_path):
    # The processes that share an engine generate together, and each would run its own number of tool turns.
    model, tokenizer = tool_model()
    with pytest.raises(ValueError, match=r"tools with vllm_tensor_parallel_size=2 are not supported yet"):
        PPOTrainerVL(
            model,
            [lambda completions, **kw: [0.0] * len(completions)],
            tiny_config(str(tmp_path), use_vllm=True, vllm_tensor_parallel_size=2),
            train_dataset=Dataset.from_list([{"prompt": QUESTION}] * 4),
            processing_class=tokenizer,
            tools=[multiply],
        )


def test_environment_rollouts_sampled_ahead_are_those_sampled_in_turn(tmp_path, tool_model_dir, tool_server):
    # async_rollouts with environment_factory: the background thread runs the whole tool loop (environment resets,
    # tool calls, every turn on vLLM). With the weights held (learning rate 0), each rollout sampled ahead must be the
    # one sampled in turn: the same calls, completions and rewards, step by step.
    def run(name: str, **settings) -> PPOTrainerVL:
        trainer = tool_trainer(
            tool_model_dir,
            str(tmp_path / name),
            tools=(),
            environment_factory=Calculator,
            vllm_mode="server",
            vllm_server_base_url=tool_server,
            vllm_weight_sync_dir=str(tmp_path / f"sync_{name}"),
            learning_rate=0.0,
            max_steps=3,
            **settings,
        )
        trainer.train()
        return trainer

    def logged(trainer: PPOTrainerVL) -> list[dict]:
        return [
            {k: v for k, v in entry.items() if not k.startswith("rollout/async/") and k != "step_time"}
            for entry in trainer.state.log_history
            if "loss" in entry
        ]

    synchronous, ahead = run("sync"), run("ahead", async_rollouts=True)
    assert logged(ahead) == logged(synchronous)
    assert all(entry["tools/call_frequency"] > 0 for entry in logged(ahead))
    flags = [entry["rollout/async/generated_ahead"] for entry in ahead.state.log_history if "loss" in entry]
    assert flags == [0.0, 1.0, 1.0]
    # trainer.environments: the last trained rollout's instances, as in the synchronous run.
    assert [c.calls for c in ahead.environments] == [c.calls for c in synchronous.environments]
    assert any(c.calls for c in ahead.environments)
