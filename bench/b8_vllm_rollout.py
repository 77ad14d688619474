"""
Benchmark B8: rollout generation with vLLM (`use_vllm=True`, colocate) against transformers' `generate` (the default),
side by side in one process, on the CPU.

    bash scripts/setup_vllm.sh                                    # vLLM's CPU build, once
    OMP_NUM_THREADS=2 .venv-vllm/bin/python bench/b8_vllm_rollout.py

The path users run: two `PPOTrainerVL`s on the same saved model and the same prompts, one with `use_vllm=False`, one
with `use_vllm=True, vllm_mode="colocate"`; each rollout is `trainer.experience_maker.engine.generate` (what a
rollout calls to sample) and, separately, the whole `make_experience` (sampling plus the trainer's log-prob
forwards and rewards). Both sample `--prompts` prompts x `--samples` completions of up to `--completion-length` tokens
at temperature 1; the HF engine takes the whole rollout in one `generate` call (`micro_rollout_batch_size` = all
samples: its best case). Tokens/s counts the completion tokens generated (up to and including EOS). The two alternate
for `--repeats` rounds after one warm-up round each; the median is reported. Models: the tiny Qwen3 of
`rft_trl.testing` and a "small" random-init Qwen3 (hidden 512, 4 layers, 8 heads of 64), both with the tiny
tokenizer, float32.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")


def save_model(size: str, path: str) -> str:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from rft_trl.testing import save_tiny_model
    from rft_trl.testing.families.common import init_model, text_kwargs
    from rft_trl.testing.tokenizer import build_tiny_tokenizer

    if size == "tiny":
        return save_tiny_model("qwen3", path)
    tokenizer = build_tiny_tokenizer(seed=0)
    kwargs = {**text_kwargs(tokenizer), "hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 4}
    config = Qwen3Config(**{**kwargs, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 64})
    model = init_model(Qwen3ForCausalLM, config, 0, tokenizer)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_trainer(path: str, use_vllm: bool, rows: list[dict], args: argparse.Namespace, out: str):
    from transformers import AutoTokenizer

    from rft_trl import PPOTrainerVL
    from rft_trl.testing import length_reward, tiny_config

    samples = args.prompts * args.samples
    config = tiny_config(
        out,
        rollout_batch_size=args.prompts,
        n_samples_per_prompt=args.samples,
        micro_rollout_batch_size=samples,
        per_device_train_batch_size=samples,
        gradient_accumulation_steps=1,
        generate_max_len=args.completion_length,
        use_vllm=use_vllm,
        **({"vllm_max_model_length": 512} if use_vllm else {}),
    )
    return PPOTrainerVL(
        path, [length_reward], config, train_dataset=rows, processing_class=AutoTokenizer.from_pretrained(path)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--completion-length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    import torch

    from rft_trl.testing import make_task_dataset

    results = {}
    for size in args.sizes:
        work = tempfile.mkdtemp(prefix=f"b8_{size}_")
        path = save_model(size, os.path.join(work, "model"))
        rows = list(make_task_dataset("text", args.prompts, seed=1))
        trainers = {
            "hf": build_trainer(path, False, rows, args, os.path.join(work, "hf")),
            "vllm": build_trainer(path, True, rows, args, os.path.join(work, "vllm")),
        }
        timings = {name: {"generate": [], "rollout": [], "tokens": []} for name in trainers}
        for round_index in range(args.repeats + 1):
            for name, trainer in trainers.items():
                maker = trainer.experience_maker
                trainer._sync_rollout_engine()
                batch = maker.collator(rows)
                torch.manual_seed(round_index)
                start = time.perf_counter()
                generation = maker.engine.generate(batch, args.samples, trainer.args.sampling_kwargs())
                generate_s = time.perf_counter() - start
                start = time.perf_counter()
                maker.make_experience(rows)
                rollout_s = time.perf_counter() - start
                if round_index == 0:
                    continue  # warm-up
                timings[name]["generate"].append(generate_s)
                timings[name]["rollout"].append(rollout_s)
                timings[name]["tokens"].append(int(generation.action_mask.sum()))
        summary = {}
        for name, timing in timings.items():
            tokens = statistics.median(timing["tokens"])
            summary[name] = {
                "generate_s": statistics.median(timing["generate"]),
                "rollout_s": statistics.median(timing["rollout"]),
                "completion_tokens": tokens,
                "generate_tokens_per_s": tokens / statistics.median(timing["generate"]),
            }
        summary["vllm_over_hf_generate_tokens_per_s"] = (
            summary["vllm"]["generate_tokens_per_s"] / summary["hf"]["generate_tokens_per_s"]
        )
        summary["hf_over_vllm_rollout_time"] = summary["hf"]["rollout_s"] / summary["vllm"]["rollout_s"]
        results[size] = summary
        print(json.dumps({size: summary}, indent=2), flush=True)
        for trainer in trainers.values():
            if trainer.rollout_engine is not None:
                trainer.rollout_engine.close()
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"args": vars(args), "torch_threads": torch.get_num_threads(), "results": results}, handle)


if __name__ == "__main__":
    main()
