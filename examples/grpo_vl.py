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

from trl import ModelConfig, TrlParser

from rft_trl import RFTConfig
from rft_trl.scripts import TINY_DEMO_DEFAULTS, ScriptArguments, main

if __name__ == "__main__":
    parser = TrlParser((ScriptArguments, RFTConfig, ModelConfig))
    # A --config YAML overrides these defaults, and the command line overrides both.
    parser.set_defaults(
        **TINY_DEMO_DEFAULTS, dataset_name="colour", max_steps=1000, eval_steps=250, output_dir="outputs/grpo_vl"
    )
    script_args, training_args, model_args = parser.parse_args_and_config()
    main(script_args, training_args, model_args)
