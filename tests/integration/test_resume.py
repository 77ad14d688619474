"""Exact resume: 6 uninterrupted steps equal 3 steps, a save, and 3 more steps resumed in a new process (weights,
Adam moments, scheduler, KL controller, EMA, RNG states, data position, samples and per-step rewards)."""

import importlib.util
import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
import traceback
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers.trainer_pt_utils import safe_globals

REPO = Path(__file__).resolve().parents[2]

# The training script, run in separate processes. 3 prompts x 2 samples per rollout, 2 PPO epochs over it in
# micro-batches of 2 with 2 accumulated: 3 optimizer steps per rollout, so step 3 ends a rollout. 9 prompts make 3
# rollouts per epoch, so the resume lands mid-epoch (the Trainer skips the batches already seen). The adaptive KL
# controller (short horizon), the EMA and a linear schedule with warm-up all carry state across the save.
SCRIPT = textwrap.dedent(
    """
    import json
    import os
    import sys

    import torch
    from transformers import TrainerCallback

    from rft_trl import PPOTrainerVL, RFTConfig
    from rft_trl.rewards.functions import completion_text
    from rft_trl.testing import build_tiny_model, make_task_dataset


    def run(output_dir, stop_after, resume):
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(1)
        samples_path = os.path.join(output_dir, "samples.jsonl")

        def recorded_length_reward(prompts, completions, **columns):
            # Records what was sampled, in order: the data position and the sampling RNG show in it.
            os.makedirs(output_dir, exist_ok=True)
            with open(samples_path, "a") as f:
                for prompt, completion in zip(prompts, completions):
                    f.write(json.dumps({"prompt": str(prompt), "completion": completion}) + "\\n")
            return [1.0 / (1.0 + len(completion_text(c))) for c in completions]

        class StopAfter(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == stop_after:
                    control.should_training_stop = True

        model, tokenizer = build_tiny_model("qwen2")
        args = RFTConfig(
            output_dir=output_dir,
            n_samples_per_prompt=2,
            rollout_batch_size=3,
            per_device_train_batch_size=2,
            gradient_accumulation_steps=2,
            max_epochs=2,
            max_steps=6,
            generate_max_len=4,
            learning_rate=1e-2,
            lr_scheduler_type="linear",
            warmup_steps=2,
            beta=0.1,
            kl_target=0.01,
            kl_horizon=10,
            enable_ema=True,
            ema_beta=0.5,
            use_cpu=True,
            bf16=False,
            gradient_checkpointing=False,
            logging_steps=1,
            save_strategy="steps",
            save_steps=3,
            report_to="none",
            disable_tqdm=True,
            seed=0,
        )
        trainer = PPOTrainerVL(
            model,
            [recorded_length_reward],
            args,
            train_dataset=make_task_dataset("text", 9),
            processing_class=tokenizer,
            callbacks=[StopAfter()],
        )
        trainer.train(resume_from_checkpoint=True if resume else None)


    if __name__ == "__main__":
        run(sys.argv[1], int(sys.argv[2]), sys.argv[3] == "resume")
    """
)


def load_script(path):
    spec = importlib.util.spec_from_file_location("resume_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_forked(script_path, runs) -> None:
    """The uninterrupted run and the first half, in a forked process (deterministic mode is process-wide)."""

    def child():
        try:
            module = load_script(script_path)
            for output_dir, stop_after in runs:
                module.run(output_dir, stop_after, resume=False)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join(timeout=300)
    assert process.exitcode == 0


def load_pickled_state(path):
    # The Trainer's own safe loading of its RNG/optimizer/scheduler files (weights_only with numpy allowed).
    with safe_globals():
        return torch.load(path, weights_only=True)


def assert_equal_nested(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_equal_nested(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal_nested(x, y, f"{where}[{i}]")
    elif hasattr(a, "shape"):  # numpy arrays in the RNG state
        assert (a == b).all(), where
    else:
        assert a == b, where


def test_resume_in_a_new_process_is_exact(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    uninterrupted, interrupted = str(tmp_path / "uninterrupted"), str(tmp_path / "interrupted")
    run_forked(script, [(uninterrupted, 0), (interrupted, 3)])
    assert sorted(os.listdir(interrupted)) == ["checkpoint-3", "samples.jsonl"]

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, str(script), interrupted, "0", "resume"], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]

    a, b = os.path.join(uninterrupted, "checkpoint-6"), os.path.join(interrupted, "checkpoint-6")
    for name in ("model.safetensors", "ema.safetensors"):
        assert_equal_nested(load_file(os.path.join(a, name)), load_file(os.path.join(b, name)), name)
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        assert_equal_nested(load_pickled_state(os.path.join(a, name)), load_pickled_state(os.path.join(b, name)), name)
    with open(os.path.join(a, "rft_state.json")) as fa, open(os.path.join(b, "rft_state.json")) as fb:
        rft_a, rft_b = json.load(fa), json.load(fb)
    assert rft_a == rft_b
    with open(os.path.join(a, "trainer_state.json")) as fa, open(os.path.join(b, "trainer_state.json")) as fb:
        logs_a, logs_b = json.load(fa)["log_history"], json.load(fb)["log_history"]
    assert [entry["step"] for entry in logs_a] == [1, 2, 3, 4, 5, 6]
    assert logs_a == logs_b  # every per-step metric, rewards included, bit for bit
    with (
        open(os.path.join(uninterrupted, "samples.jsonl")) as fa,
        open(os.path.join(interrupted, "samples.jsonl")) as fb,
    ):
        samples_a, samples_b = fa.readlines(), fb.readlines()
    # Two rollouts of 6 samples: the resumed process generated only the second one, the same prompts and completions.
    assert len(samples_a) == 12 and samples_a == samples_b

    # The state compared above did change during the run, so the equalities can fail.
    assert rft_a["micro_step"] == 12 and rft_a["kl_controller"]["value"] != 0.1
    assert logs_a[2]["reward"] != logs_a[3]["reward"]
    ema, model = load_file(os.path.join(a, "ema.safetensors")), load_file(os.path.join(a, "model.safetensors"))
    # EMA names are the actor's (`model.` + the transformers name); beta 0.5 keeps them apart from the weights.
    shared = [name for name in ema if name.removeprefix("model.") in model]
    assert shared and any(not torch.equal(ema[name], model[name.removeprefix("model.")]) for name in shared)
