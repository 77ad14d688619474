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

from rft_trl.scripts import end_launched_process, parse_and_run

if __name__ == "__main__":
    # The built-in tiny model runs the demo (rft_trl.scripts.DEMO_RUNS over TINY_DEMO_DEFAULTS); a real model starts
    # from TRL's defaults. A --config YAML overrides the defaults, and the command line overrides both.
    parse_and_run("ppo_vl")
    end_launched_process()  # a distributed launch: see its docstring
