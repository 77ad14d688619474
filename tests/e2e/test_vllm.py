"""
vLLM rollouts for real, on the CPU: vLLM's CPU build lives in `.venv-vllm` (scripts/setup_vllm.sh; its torch and
transformers pins differ from the project's), so

- colocate mode runs in that environment (tests/e2e/vllm_worker.py, one scenario per subprocess);
- server mode runs vLLM's own OpenAI server from that environment and trains here, across the two.

Each proves the weight sync by greedy equality: after training, the engine's greedy completions differ from HF
`generate`'s on the trained weights until the sync, and equal them after. Without the vLLM environment the tests that
need it fail, naming the fix; they skip only in the reduced run asked for by name, `RFT_TRL_TESTS_WITHOUT_VLLM=1` (see
scripts/test.sh).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests
import torch

from rft_trl import PPOTrainerVL
from rft_trl.rollout import HFEngine
from rft_trl.testing import (
    build_tiny_model,
    distinct_reward,
    length_reward,
    load_processing_class,
    make_task_dataset,
    save_tiny_model,
    tiny_config,
)

ROOT = Path(__file__).resolve().parents[2]
VLLM_VENV = ROOT / ".venv-vllm"
VLLM_PYTHON = VLLM_VENV / "bin" / "python"
READY = VLLM_VENV / ".rft_trl_vllm_ready"
SETUP_LOG = ROOT / ".venv-vllm.log"
SAMPLING_METRICS = (
    "sampling/sampling_logp_difference/mean",
    "sampling/sampling_logp_difference/max",
    "sampling/kl",
    "sampling/importance_sampling_ratio/min",
    "sampling/importance_sampling_ratio/mean",
    "sampling/importance_sampling_ratio/max",
)
TEXT_ROWS = make_task_dataset("text", 4)
VLLM_ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB; vLLM's CPU default (4 GiB, touched at start) slows its start tenfold here
    "OMP_NUM_THREADS": "1",
}


WITHOUT_VLLM = "RFT_TRL_TESTS_WITHOUT_VLLM"


def require_vllm_environment() -> None:
    """Skip in the reduced run without vLLM (asked for by name); else fail where `.venv-vllm` is not built."""
    if os.environ.get(WITHOUT_VLLM) == "1":
        pytest.skip(f"a reduced run without the vLLM tests ({WITHOUT_VLLM}=1)")
    if READY.exists() and VLLM_PYTHON.exists():
        return
    reason = "not built"
    if SETUP_LOG.exists():
        lines = [line for line in SETUP_LOG.read_text(errors="replace").splitlines() if line.strip()]
        reason = f"scripts/setup_vllm.sh failed: {' | '.join(lines[-3:])}"
    pytest.fail(
        f"vLLM's CPU environment (.venv-vllm) is missing ({reason}). Build it with `bash scripts/setup_vllm.sh`, or "
        f"run without the vLLM tests, a reduced run, with {WITHOUT_VLLM}=1.",
        pytrace=False,
    )


def run_in_vllm_environment(command: list[str], timeout: int = 600) -> tuple[subprocess.CompletedProcess, str]:
    """Run `command` (a `.venv-vllm` interpreter's) from the repository root: the result, and its output's tail."""
    completed = subprocess.run(command, cwd=ROOT, env=VLLM_ENV, capture_output=True, text=True, timeout=timeout)
    return completed, f"{completed.stdout[-3000:]}\n--- stderr ---\n{completed.stderr[-6000:]}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_colocate_worker(tmp_path, kind: str, task: str, *flags: str) -> dict:
    out = tmp_path / "result.json"
    completed = subprocess.run(
        [str(VLLM_PYTHON), str(ROOT / "tests" / "e2e" / "vllm_worker.py"), "colocate", kind, task, str(out), *flags],
        cwd=ROOT,
        env=VLLM_ENV,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert completed.returncode == 0, f"{completed.stdout[-3000:]}\n--- stderr ---\n{completed.stderr[-6000:]}"
    return json.loads(out.read_text())


def assert_trained_with_mismatch_metrics(log_history: list[dict], tolerance: float) -> None:
    steps = [entry for entry in log_history if "loss" in entry]
    assert len(steps) == 2
    for entry in steps:
        for name in SAMPLING_METRICS:
            assert math.isfinite(entry[name]), (name, entry)
        # The engine and the trainer score the same tokens with the same weights (fp32): they agree closely.
        assert entry["sampling/sampling_logp_difference/max"] < tolerance, entry
        assert 0 < entry["sampling/importance_sampling_ratio/min"] <= entry["sampling/importance_sampling_ratio/max"]


@pytest.mark.parametrize(
    ("kind", "task", "lora"),
    [("qwen3", "text", False), ("qwen3", "text", True), ("qwen3_vl", "colour", False), ("qwen3_vl", "video", False)],
    ids=["text", "text-lora", "image", "video"],
)
def test_colocate_trains_and_syncs_weights_by_greedy_equality(tmp_path, kind, task, lora):
    require_vllm_environment()
    result = run_colocate_worker(tmp_path, kind, task, *(["--lora"] if lora else []))
    # The image model's media tokens are suppressed in sampling (a -100 logit bias), and the trainer scores the
    # actions under that same distribution: the engine's and the trainer's log-probs agree as closely as for text.
    assert_trained_with_mismatch_metrics(result["log_history"], tolerance=1e-4)
    if kind != "qwen3":
        for entry in (entry for entry in result["log_history"] if "loss" in entry):
            for name in ("min", "max", "mean"):
                assert abs(entry[f"sampling/importance_sampling_ratio/{name}"] - 1) < 1e-5, entry
        # Control: scored over the full vocabulary, the tiny random model's few percent of probability on the media
        # tokens makes the trainer's log-probs lower than the engine's (the old importance ratio of 0.93 at 8 tokens).
        assert result["scored_difference"]["suppressed"] < 1e-5, result["scored_difference"]
        assert result["scored_difference"]["full_vocabulary"] > 1e-4, result["scored_difference"]
    assert result["synced"] == 1
    assert not result["before_sync_equal"], "the update did not change the greedy completions: the test proves nothing"
    assert result["after_sync_equal"]
    if task == "colour":
        assert "vLLM's prompt token ids differ from the trainer's processor's" in result["mismatch_error"]
        assert "Prompt 0 of the batch" in result["mismatch_error"]


def test_readme_command_trains_and_exits_cleanly(tmp_path):
    # The README's vLLM command as written (one process, plain `python`, the tiny demo's defaults), cut to one rollout
    # of 4 steps: it trains and the process ends with no traceback. vLLM's exit-time teardown, run after the script's
    # `end_training` had destroyed every process group, once destroyed its own groups a second time and printed
    # "Invalid process group specified" after a run that had succeeded; the script now shuts the engine down first.
    require_vllm_environment()
    lines = (ROOT / "README.md").read_text().splitlines()
    command = shlex.split(next(line for line in lines if line.startswith(".venv-vllm/bin/python ")), comments=True)
    short = ["--max_steps", "4", "--logging_steps", "1", "--output_dir", str(tmp_path)]
    completed, output = run_in_vllm_environment([str(ROOT / command[0]), *command[1:], *short], timeout=900)
    assert completed.returncode == 0, output
    assert "Traceback" not in completed.stdout + completed.stderr, output
    steps = [e for e in json.loads((tmp_path / "log_history.json").read_text()) if "loss" in e]
    assert len(steps) == 4 and all(math.isfinite(e["sampling/sampling_logp_difference/max"]) for e in steps), steps


def save_audio_model_for_vllm(path: str) -> str:
    """
    The tiny Qwen2-Audio in the shape vLLM's Qwen2-Audio takes: the released 30 s mel window (vLLM's input schema
    fixes 3000 frames; the tiny one has 2 s) and text heads of 32 (vLLM's CPU kernels refuse 16).
    """
    from transformers import WhisperFeatureExtractor

    model, processor = build_tiny_model("qwen2_audio")
    text = model.config.get_text_config()
    text.num_attention_heads, text.num_key_value_heads, text.head_dim = 2, 1, text.hidden_size // 2
    model.config.audio_config.max_source_positions = 1500
    extractor = processor.feature_extractor
    processor.feature_extractor = WhisperFeatureExtractor(
        feature_size=extractor.feature_size,
        sampling_rate=extractor.sampling_rate,
        hop_length=extractor.hop_length,
        chunk_length=30,
        n_fft=extractor.n_fft,
    )
    torch.manual_seed(0)
    type(model)(model.config).save_pretrained(path)
    processor.save_pretrained(path)
    return path


@contextlib.contextmanager
def serve(kind: str, tmp_path_factory):
    """vLLM's own OpenAI server (dev mode, processed log-probs) on a tiny model, from the vLLM environment."""
    require_vllm_environment()
    directory = str(tmp_path_factory.mktemp("server") / kind)
    model_dir = save_audio_model_for_vllm(directory) if kind == "qwen2_audio" else save_tiny_model(kind, directory)
    port = free_port()
    log = open(tmp_path_factory.mktemp("server_log") / "server.log", "w")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        [
            str(VLLM_PYTHON),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            model_dir,
            "--port",
            str(port),
            "--dtype",
            "float32",
            "--logprobs-mode",
            "processed_logprobs",
            "--enforce-eager",
            "--max-model-len",
            "512",
            # Seeded requests (rft_trl seeds each prompt) cannot be cut by chunked prefill on the CPU.
            "--no-enable-chunked-prefill",
        ],
        env={**VLLM_ENV, "VLLM_SERVER_DEV_MODE": "1"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            time.sleep(1)
    try:
        assert process.poll() is None, Path(log.name).read_text()[-4000:]
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
        log.close()


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    with serve("qwen3", tmp_path_factory) as url:
        yield url


@pytest.fixture(scope="module")
def vllm_vl_server(tmp_path_factory):
    with serve("qwen3_vl", tmp_path_factory) as url:
        yield url


@pytest.fixture(scope="module")
def vllm_audio_server(tmp_path_factory):
    with serve("qwen2_audio", tmp_path_factory) as url:
        yield url


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_server_mode_trains_and_syncs_weights_by_greedy_equality(tmp_path, vllm_server, lora):
    from peft import LoraConfig

    model, tokenizer = build_tiny_model("qwen3")
    peft_config = LoraConfig(r=8, lora_alpha=64, target_modules="all-linear") if lora else None
    trainer = check_server_mode(
        tmp_path, vllm_server, model, tokenizer, "text", 1e-4, peft_config, "sequence_truncate"
    )
    assert (tmp_path / "sync" / "model.safetensors").exists()
    # A second sync at the same step sends nothing.
    syncs = trainer.rollout_engine.syncs
    trainer._sync_rollout_engine()
    assert trainer.rollout_engine.syncs == syncs


def test_server_mode_trains_a_vlm_and_syncs_weights_by_greedy_equality(tmp_path, vllm_vl_server):
    # Prompts with images reach the server as chat messages with the image inlined; the server renders and processes
    # them itself, and its prompt token ids equal the trainer's processor's (else the engine refuses the prompt). The
    # suppressed media tokens are out of both distributions (see the colocate test): they agree as for text.
    model, processor = build_tiny_model("qwen3_vl")
    check_server_mode(tmp_path, vllm_vl_server, model, processor, "colour", 1e-4)


def test_server_mode_trains_an_audio_model_and_syncs_weights_by_greedy_equality(tmp_path, vllm_audio_server):
    # Audio reaches the server inlined as WAV in the chat messages. The weights go under Qwen2-Audio's checkpoint
    # names (`language_model.model.*`), which vLLM's Qwen2-Audio loads; its runtime names (`model.language_model.*`)
    # it would refuse.
    path = save_audio_model_for_vllm(str(tmp_path / "model"))
    check_server_mode(tmp_path, vllm_audio_server, path, load_processing_class(path), "pitch", 1e-4)


def check_server_mode(
    tmp_path, url: str, model, processing_class, task: str, tolerance: float, peft_config=None, mode="sequence_mask"
) -> PPOTrainerVL:
    """Train 2 steps against the server, with the mismatch metrics within `tolerance`; then the engine's greedy
    completions differ from HF `generate`'s on the trained weights until the sync, and equal them after."""
    args = tiny_config(
        str(tmp_path / "out"),
        use_vllm=True,
        vllm_mode="server",
        vllm_server_base_url=url,
        vllm_weight_sync_dir=str(tmp_path / "sync"),
        vllm_importance_sampling_mode=mode,
        learning_rate=0.1,
        logging_steps=1,
    )
    trainer = PPOTrainerVL(
        model,
        [distinct_reward],
        args,
        train_dataset=make_task_dataset(task, 8),
        processing_class=processing_class,
        peft_config=peft_config,
    )
    trainer.train()
    assert_trained_with_mismatch_metrics(trainer.state.log_history, tolerance=tolerance)
    engine = trainer.rollout_engine
    batch = trainer.collator(list(make_task_dataset(task, 4, seed=1)))
    greedy = {**args.sampling_kwargs(), "do_sample": False}
    before = engine.generate(batch, 1, greedy).sequences
    trainer.actor.eval()
    pad_token_id = getattr(processing_class, "tokenizer", processing_class).pad_token_id
    reference = HFEngine(trainer.actor, 4, torch.device("cpu"), True, pad_token_id).generate(batch, 1, greedy)
    assert before.shape != reference.sequences.shape or not torch.equal(before, reference.sequences)
    trainer._sync_rollout_engine()
    after = engine.generate(batch, 1, greedy)
    assert torch.equal(after.sequences, reference.sequences)
    assert torch.equal(after.action_mask, reference.action_mask)
    return trainer


def test_server_mode_waits_then_names_the_missing_server(tmp_path):
    model, tokenizer = build_tiny_model("qwen3")
    args = tiny_config(
        str(tmp_path), use_vllm=True, vllm_mode="server", vllm_server_port=free_port(), vllm_server_timeout=1
    )
    with pytest.raises(ConnectionError, match="No vLLM server answered at http://0.0.0.0:.*/health within"):
        PPOTrainerVL(
            model, [length_reward], args, train_dataset=make_task_dataset("text", 4), processing_class=tokenizer
        )


def test_colocate_without_vllm_installed_names_the_fix(tmp_path):
    assert importlib.util.find_spec("vllm") is None  # the project's environment: vLLM lives in .venv-vllm
    model, tokenizer = build_tiny_model("qwen3")
    args = tiny_config(str(tmp_path), use_vllm=True)
    with pytest.raises(ImportError, match=r"needs vLLM in this environment: `pip install rft_trl\[vllm\]`"):
        PPOTrainerVL(
            model, [length_reward], args, train_dataset=make_task_dataset("text", 4), processing_class=tokenizer
        )


def test_colocate_tensor_parallel_size_must_divide_the_processes(tmp_path):
    model, tokenizer = build_tiny_model("qwen3")
    args = tiny_config(str(tmp_path), use_vllm=True, vllm_tensor_parallel_size=2)
    with pytest.raises(ValueError, match=r"vllm_tensor_parallel_size=2 must divide the number of processes \(1\)"):
        PPOTrainerVL(
            model, [length_reward], args, train_dataset=make_task_dataset("text", 4), processing_class=tokenizer
        )


# Run in the vLLM environment: the tiny Qwen2 (heads of 64 / 4 = 16) in colocate mode, then in server mode against a
# stand-in server on the CPU (its /server_info as vLLM's gives it: the device and the served model's path). Prints
# each construction's outcome as JSON.
HEAD_DIM_16_SCRIPT = """
import json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from rft_trl import PPOTrainerVL
from rft_trl.testing import build_tiny_model, length_reward, make_task_dataset, save_tiny_model, tiny_config

out = sys.argv[1]
path = save_tiny_model("qwen2", out + "/model")
info = {"vllm_config": {"device_config": {"device": "cpu"},
                        "model_config": {"model": path, "logprobs_mode": "processed_logprobs"}}}
answers = {"/health": {}, "/v1/models": {"data": [{"id": path}]}, "/server_info": info}

class Server(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps(answers[self.path.split("?")[0]]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

server = ThreadingHTTPServer(("127.0.0.1", 0), Server)
threading.Thread(target=server.serve_forever, daemon=True).start()
modes = {
    "colocate": {"vllm_mode": "colocate", "vllm_enforce_eager": True},
    "server": {"vllm_mode": "server", "vllm_server_base_url": f"http://127.0.0.1:{server.server_port}"},
}
results = {}
for mode, options in modes.items():
    model, tokenizer = build_tiny_model("qwen2")
    args = tiny_config(out + "/" + mode, use_vllm=True, **options)
    try:
        rows = make_task_dataset("text", 4)
        PPOTrainerVL(model, [length_reward], args, train_dataset=rows, processing_class=tokenizer)
        results[mode] = None
    except ValueError as error:
        results[mode] = str(error)
print("RESULTS", json.dumps(results))
"""


def test_a_head_dimension_the_cpu_attention_cannot_run_is_refused_at_construction(tmp_path):
    # vLLM's CPU attention has kernels for the head sizes its backend declares (32, 64, 80, ...); with heads of 16 the
    # engine used to build and the first rollout died ("Unsupported CPU attention configuration: head_dim=16"). Both
    # modes now refuse the model when the engine is built, with the reason and the fix. (The head_dim 32 models of the
    # other tests are the control.)
    require_vllm_environment()
    completed, output = run_in_vllm_environment([str(VLLM_PYTHON), "-c", HEAD_DIM_16_SCRIPT, str(tmp_path)])
    assert completed.returncode == 0, output
    results = json.loads(completed.stdout.split("RESULTS ", 1)[1])
    for mode, error in results.items():
        assert error is not None, f"{mode}: the engine was built"
        assert "Qwen2ForCausalLM" in error and "attention heads of dimension 16" in error, error
        assert "vLLM's CPU attention (CPU_ATTN) cannot run: it supports head dimensions 32, 64," in error, error
        assert "on a GPU" in error and "head_dim >= 32" in error, error
    # Refused before anything ran: no generation reached the kernel.
    assert "Unsupported CPU attention configuration" not in completed.stdout + completed.stderr


def test_zero3_two_processes_sync_gathered_weights_to_the_server(tmp_path, vllm_vl_server):
    # ZeRO-3 on 2 CPU processes, server mode: every rank gathers each module's shards in turn while rank 0 writes
    # the weights for the server, which both ranks then sample from. A large learning rate moves the policy far in 4
    # steps, so a missed or partial sync would show as a large mismatch between the server's log-probs and the
    # trainer's at the later steps (or fail the server's reload).
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    steps = launch_example(
        sys.executable,
        "deepspeed_zero3_cpu.yaml",
        tmp_path / "out",
        "--vllm_mode", "server", "--vllm_server_base_url", vllm_vl_server,
        "--vllm_weight_sync_dir", str(tmp_path / "sync"),
        env=env,
    )  # fmt: skip
    assert_policy_moved_and_engine_followed(steps)


def launch_example(
    python: str, config: str, output_dir: Path, *args: str, env: dict, script: str = "grpo_vl.py", kind="qwen3_vl"
) -> list[dict]:
    """`accelerate launch` of an example (default examples/grpo_vl.py on the tiny Qwen3-VL) on 2 CPU processes: a
    large learning rate, KL to a reference; returns the logged steps."""
    command = example_command(python, config, output_dir, *args, script=script, kind=kind)
    completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, f"{completed.stdout[-3000:]}\n--- stderr ---\n{completed.stderr[-8000:]}"
    steps = [e for e in json.loads((output_dir / "log_history.json").read_text()) if "loss" in e]
    assert len(steps) == 4
    return steps


def example_command(
    python: str, config: str, output_dir: Path, *args: str, script: str = "grpo_vl.py", kind="qwen3_vl"
) -> list[str]:
    return [
        python, "-m", "accelerate.commands.launch",
        "--config_file", str(ROOT / "accelerate_configs" / config),
        "--main_process_port", str(free_port()),
        str(ROOT / "examples" / script),
        "--output_dir", str(output_dir), "--tiny_model_kind", kind, "--format_warmup_steps", "0",
        "--max_steps", "4", "--eval_strategy", "no", "--report_to", "none", "--rollout_batch_size", "2",
        "--num_generations", "2", "--per_device_train_batch_size", "4", "--micro_rollout_batch_size", "4",
        "--logging_steps", "1", "--learning_rate", "0.05", "--beta", "0.1",
        "--reward_funcs", "rft_trl.testing.length_reward", "--use_vllm", "true", *args,
    ]  # fmt: skip


@pytest.mark.parametrize("tensor_parallel_size", [1, 2])
def test_colocate_on_two_processes_trains_and_follows_the_policy(tmp_path, tensor_parallel_size):
    # A distributed launch (2 gloo processes, in the vLLM environment), in the launch's process group (vLLM's external
    # launcher): with tensor_parallel_size=1 each process runs its own engine on its own prompts (the image task);
    # with 2 the two hold one engine's shards and generate both processes' prompts together, each keeping its own
    # (the text task, whose prompts differ, so that the prompt-id check would catch a process given the other's).
    # Either way the engine follows the policy.
    # With 2, vLLM's CPU shared memory (one name per machine under an external launch) is released by name once
    # mapped: a name left behind would make the next such run on the machine fail.
    require_vllm_environment()
    env = {**VLLM_ENV, "PYTHONPATH": str(ROOT)}
    task = {"script": "grpo_text.py", "kind": "qwen3"} if tensor_parallel_size > 1 else {}
    before = cpu_shared_memory()
    steps = launch_example(
        str(VLLM_PYTHON), "cpu_multi_process.yaml", tmp_path / "out", "--vllm_enforce_eager", "true",
        "--vllm_tensor_parallel_size", str(tensor_parallel_size), env=env, **task,
    )  # fmt: skip
    assert_policy_moved_and_engine_followed(steps)
    assert cpu_shared_memory() == before


def cpu_shared_memory() -> set[str]:
    return {path.name for path in Path("/dev/shm").glob("*cpushm*")}


def test_tensor_parallel_colocate_names_shared_memory_left_behind(tmp_path):
    # A segment under the name vLLM gives the group's shared memory (as a run killed before releasing it leaves): the
    # launch fails with what is in the way and how to clear it, not with vLLM's bare errno.
    require_vllm_environment()
    before = cpu_shared_memory()
    stale = Path("/dev/shm") / "-tp:0-[0-1]-cpushm_0"
    assert not stale.exists(), "a vLLM run with tensor parallelism is active or left its shared memory here"
    stale.write_bytes(b"")
    command = example_command(
        str(VLLM_PYTHON), "cpu_multi_process.yaml", tmp_path / "out", "--vllm_enforce_eager", "true",
        "--vllm_tensor_parallel_size", "2", script="grpo_text.py", kind="qwen3",
    )  # fmt: skip
    try:
        env = {**VLLM_ENV, "PYTHONPATH": str(ROOT)}
        completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    finally:
        for name in cpu_shared_memory() - before:  # the stale segment and the one the other process made
            (Path("/dev/shm") / name).unlink()
    assert completed.returncode != 0
    error = [line for line in completed.stderr.splitlines() if "vLLM could not create the shared memory" in line]
    assert error, completed.stderr[-4000:]
    assert "errno: 17" in error[0] and "-tp:0-[0-1]-cpushm_0" in error[0] and "rm /dev/shm/*cpushm*" in error[0]


def assert_policy_moved_and_engine_followed(steps: list[dict]) -> None:
    # The policy moved (its KL to the reference reached 0.09 to 1.7 over runs here, from 0), and the engine sampled
    # from the policy's current weights every step: the engine's and the trainer's log-probs agree to float error
    # (the suppressed media tokens are out of both distributions), where stale weights would differ by about the
    # policy's move, 30 times the bound below at least.
    assert steps[0]["kl"] < 0.01 and max(s["kl"] for s in steps) > 0.03, [s["kl"] for s in steps]
    for entry in steps:
        assert entry["sampling/sampling_logp_difference/max"] < 1e-3, entry
