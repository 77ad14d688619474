# /// script
# dependencies = ["rft_trl"]
# ///
"""
GRPO on a text-only language model.

With no arguments it trains the built-in tiny Qwen2 on the synthetic next-word task on the CPU (which word follows
the given one in a fixed cycle of six): a short format warm-up, then RL (greedy eval reward from about 1/6 to about
0.7 in 300 steps, under a minute):

    accelerate launch --config_file accelerate_configs/cpu.yaml examples/grpo_text.py --output_dir outputs/grpo_text

On GPUs, with a real checkpoint, a `datasets` dataset (`prompt` and `answer` columns) and LoRA (the defaults are the
tiny demo's, so set the sizes and the learning rate):

    accelerate launch --config_file accelerate_configs/deepspeed_zero2.yaml examples/grpo_text.py \
        --model_name_or_path Qwen/Qwen2.5-1.5B-Instruct --dataset_name <your dataset> --format_warmup_steps 0 \
        --use_peft --lora_r 16 --bf16 --learning_rate 1e-5 --rollout_batch_size 8 --micro_rollout_batch_size 32 \
        --per_device_train_batch_size 8 --max_completion_length 512 --max_steps -1 --output_dir outputs/grpo_text

Any option can also come from a YAML file: `--config recipe.yaml` (see `examples/recipes/`).
"""

from rft_trl.scripts import end_launched_process, parse_and_run

if __name__ == "__main__":
    # The built-in tiny model runs the demo (rft_trl.scripts.DEMO_RUNS over TINY_DEMO_DEFAULTS); a real model starts
    # from TRL's defaults. A --config YAML overrides the defaults, and the command line overrides both.
    parse_and_run("grpo_text")
    end_launched_process()  # a distributed launch: see its docstring
