"""Secrets stay out of everything a run writes: with WANDB_API_KEY and HF_TOKEN in the environment and a hub token
on the command line, no byte of them appears in stdout/stderr, the output directory (checkpoints, configs, TensorBoard
events) or wandb's offline run files. Needs `wandb` and `tensorboard` installed (the dev extra)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SENTINELS = {
    "WANDB_API_KEY": "sentinel0wandb0key0000000000000000000000",
    "HF_TOKEN": "hf_sentinel0environment0token",
    "HUB_TOKEN": "hf_sentinel0command0line0token",
}

# Parses its arguments like the examples do, trains 2 steps with wandb (offline) and TensorBoard, checkpoints every
# step and saves the final model.
SCRIPT = textwrap.dedent(
    """
    import os
    import sys

    from transformers import HfArgumentParser

    from rft_trl import PPOTrainerVL, RFTConfig
    from rft_trl.rewards.functions import completion_text
    from rft_trl.testing import build_tiny_model, make_task_dataset

    (args,) = HfArgumentParser(RFTConfig).parse_args_into_dataclasses(sys.argv[1:])
    # The token did arrive, so that a leak would have something to leak.
    assert args.hub_token == os.environ["EXPECTED_HUB_TOKEN"]
    args.report_to = ["wandb", "tensorboard"]


    def length_reward(prompts, completions, **columns):
        return [1.0 / (1.0 + len(completion_text(c))) for c in completions]


    model, tokenizer = build_tiny_model("qwen2")
    trainer = PPOTrainerVL(
        model, [length_reward], args, train_dataset=make_task_dataset("text", 8), processing_class=tokenizer
    )
    trainer.train()
    trainer.save_model(args.output_dir)
    """
)


def files_under(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file()]


def test_no_secret_in_logs_outputs_checkpoints_or_wandb_files(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    run_dir = tmp_path / "run"
    output_dir, wandb_dir = run_dir / "out", run_dir / "wandb"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "WANDB_API_KEY": SENTINELS["WANDB_API_KEY"],
        "HF_TOKEN": SENTINELS["HF_TOKEN"],
        "EXPECTED_HUB_TOKEN": SENTINELS["HUB_TOKEN"],
        "WANDB_MODE": "offline",
        "WANDB_PROJECT": "secrets-test",
        # Everything wandb and the Hub client write goes where it is scanned.
        "WANDB_DIR": str(wandb_dir),
        "WANDB_CONFIG_DIR": str(wandb_dir / "config"),
        "WANDB_CACHE_DIR": str(wandb_dir / "cache"),
        "WANDB_DATA_DIR": str(wandb_dir / "data"),
        "HF_HOME": str(run_dir / "hf_home"),
    }
    wandb_dir.mkdir(parents=True)
    command = [
        sys.executable,
        str(script),
        "--output_dir", str(output_dir),
        "--hub_token", SENTINELS["HUB_TOKEN"],
        "--n_samples_per_prompt", "2",
        "--rollout_batch_size", "2",
        "--per_device_train_batch_size", "2",
        "--gradient_accumulation_steps", "2",
        "--max_steps", "2",
        "--generate_max_len", "4",
        "--use_cpu",
        "--save_steps", "1",
        "--disable_tqdm", "true",
    ]  # fmt: skip
    result = subprocess.run(command, env=env, cwd=run_dir, capture_output=True, timeout=600)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-3000:]

    # What was scanned holds the run: both checkpoints, TensorBoard events, wandb's offline run with its metadata.
    files = files_under(run_dir)
    names = {path.name for path in files}
    assert {"optimizer.pt", "rng_state.pth", "trainer_state.json", "training_args.json", "model.safetensors"} <= names
    assert any(name.startswith("events.out.tfevents") for name in names)
    wandb_runs = [path for path in files if path.suffix == ".wandb"]
    assert wandb_runs
    # The redacted forms are there: the arguments JSON and wandb's record of the command line.
    assert b"<HUB_TOKEN>" in (output_dir / "checkpoint-2" / "training_args.json").read_bytes()
    assert b"<HUB_TOKEN>" in wandb_runs[0].read_bytes()

    for name, secret in SENTINELS.items():
        needle = secret.encode()
        assert needle not in result.stdout and needle not in result.stderr, f"{name} printed"
        leaks = [str(path) for path in files if needle in path.read_bytes()]
        assert not leaks, f"{name} written to {leaks}"
