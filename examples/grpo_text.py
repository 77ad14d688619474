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

from trl import ModelConfig, TrlParser

from rft_trl import RFTConfig
from rft_trl.scripts import TINY_DEMO_DEFAULTS, ScriptArguments, main

if __name__ == "__main__":
    parser = TrlParser((ScriptArguments, RFTConfig, ModelConfig))
    # A --config YAML overrides these defaults, and the command line overrides both.
    parser.set_defaults(
        **TINY_DEMO_DEFAULTS, dataset_name="text", max_steps=300, eval_steps=100, output_dir="outputs/grpo_text"
    )
    script_args, training_args, model_args = parser.parse_args_and_config()
    main(script_args, training_args, model_args)
