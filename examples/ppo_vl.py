# /// script
# dependencies = ["rft_trl"]
# ///
"""
PPO with a critic (GAE advantages) on a vision-language model.

`advantage_estimator="gae"` adds a value model, initialised from the policy's weights with a scalar head, trained
by the same optimizer at `critic_learning_rate`; its values give per-token GAE advantages instead of GRPO's group
statistics. With no arguments it trains the built-in tiny Qwen2.5-VL on the synthetic colour task on the CPU (eight
colours: from chance, 1/8, towards 0.9+):

    accelerate launch --config_file accelerate_configs/cpu.yaml examples/ppo_vl.py --output_dir outputs/ppo_vl

On GPUs, with a real checkpoint, a `datasets` dataset (`prompt`, `image`, `answer` columns) and LoRA on the policy
(the defaults are the tiny demo's, so set the sizes and the learning rates):

    accelerate launch --config_file accelerate_configs/deepspeed_zero2.yaml examples/ppo_vl.py \
        --model_name_or_path Qwen/Qwen2.5-VL-3B-Instruct --dataset_name <your dataset> --format_warmup_steps 0 \
        --use_peft --lora_r 16 --lora_target_modules q_proj v_proj --bf16 --learning_rate 1e-6 \
        --critic_learning_rate 5e-6 --rollout_batch_size 8 --micro_rollout_batch_size 32 \
        --per_device_train_batch_size 8 --max_completion_length 512 --max_steps -1 --output_dir outputs/ppo_vl

Any option can also come from a YAML file: `--config recipe.yaml` (see `examples/recipes/`).
"""

from trl import ModelConfig, TrlParser

from rft_trl import RFTConfig
from rft_trl.scripts import TINY_DEMO_DEFAULTS, ScriptArguments, main

if __name__ == "__main__":
    parser = TrlParser((ScriptArguments, RFTConfig, ModelConfig))
    # A --config YAML overrides these defaults, and the command line overrides both.
    parser.set_defaults(
        **TINY_DEMO_DEFAULTS,
        dataset_name="colour",
        advantage_estimator="gae",
        critic_learning_rate=3e-3,
        # lambda = 1: advantages are Monte-Carlo returns minus values, not a young critic's bootstrapped guesses.
        lambd=1.0,
        max_steps=500,
        eval_steps=100,
        output_dir="outputs/ppo_vl",
    )
    script_args, training_args, model_args = parser.parse_args_and_config()
    main(script_args, training_args, model_args)
