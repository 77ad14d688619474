"""
The `rft-trl` command.

    rft-trl grpo [--config recipe.yaml] [flags]   # GRPO, as examples/grpo_vl.py (the colour demo by default)
    rft-trl ppo  [--config recipe.yaml] [flags]   # PPO with a critic, as examples/ppo_vl.py
    rft-trl env                                   # versions and hardware, for bug reports (like `trl env`)

`grpo` and `ppo` take the example scripts' options (`ScriptArguments`, `RFTConfig`, TRL's `ModelConfig`, parsed by
TRL's `TrlParser`, YAML via `--config`). Under several processes: `accelerate launch [--config_file ...] -m
rft_trl.cli grpo ...`.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys

__all__ = ["env_report", "main"]

USAGE = "usage: rft-trl {grpo,ppo,env} [options]   (rft-trl grpo --help for the training options)"

# Packages whose versions a bug report needs (optional ones say "not installed").
REPORTED_PACKAGES = (
    "rft_trl",
    "torch",
    "transformers",
    "trl",
    "peft",
    "accelerate",
    "datasets",
    "deepspeed",
    "flash-attn",
    "vllm",
    "wandb",
    "trackio",
    "rich",
)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def env_report() -> str:
    """The platform, Python, the packages of `REPORTED_PACKAGES` and the accelerators torch sees, one per line."""
    import torch

    lines = [f"Platform: {platform.platform()}", f"Python version: {platform.python_version()}"]
    # torch's own version string names its build (+cpu, +cu130...), which the package metadata does not.
    lines += [
        f"{package} version: {torch.__version__ if package == 'torch' else _version(package)}"
        for package in REPORTED_PACKAGES
    ]
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        lines.append(f"Accelerators: CUDA {torch.version.cuda}, {len(names)} x {', '.join(sorted(set(names)))}")
    elif torch.accelerator.is_available():
        lines.append(f"Accelerators: {torch.accelerator.current_accelerator()}")
    else:
        lines.append("Accelerators: none (CPU only)")
    lines.append(f"CPU: {os.cpu_count()} cores, torch uses {torch.get_num_threads()} threads")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run `rft-trl` with `argv` (the command line by default); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "env":
        print(env_report())
        return 0
    if command in ("grpo", "ppo"):
        from .scripts import end_launched_process, parse_and_run

        parse_and_run("grpo_vl" if command == "grpo" else "ppo_vl", rest)
        end_launched_process()  # a distributed launch (accelerate launch -m rft_trl.cli): see its docstring
        return 0
    print(f"rft-trl: unknown command {command!r}\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
