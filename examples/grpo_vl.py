# /// script
# dependencies = ["rft_trl"]
# ///
"""
GRPO on a vision-language model.

With no arguments it trains the built-in tiny Qwen2.5-VL on the synthetic colour task on the CPU: a short format
warm-up, then RL that must ground the answer in the image (mean reward from about 1/8 to 0.9+):

    accelerate launch --config_file accelerate_configs/cpu.yaml examples/grpo_vl.py --output_dir outputs/grpo_vl

On GPUs, with a real checkpoint, a `datasets` dataset (`prompt`, `image`, `answer` columns) and LoRA:

    accelerate launch --config_file accelerate_configs/deepspeed_zero2.yaml examples/grpo_vl.py \
        --model_name_or_path Qwen/Qwen2.5-VL-3B-Instruct --dataset_name <your dataset> --format_warmup_steps 0 \
        --use_peft --lora_r 16 --bf16 --learning_rate 1e-5 --output_dir outputs/grpo_vl

Any option can also come from a YAML file: `--config recipe.yaml`.
"""

from rft_trl.scripts import end_launched_process, parse_and_run

if __name__ == "__main__":
    # The built-in tiny model runs the demo (rft_trl.scripts.DEMO_RUNS over TINY_DEMO_DEFAULTS); a real model starts
    # from TRL's defaults. A --config YAML overrides the defaults, and the command line overrides both.
    parse_and_run("grpo_vl")
    end_launched_process()  # a distributed launch: see its docstring
