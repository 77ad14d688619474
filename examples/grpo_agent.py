# /// script
# dependencies = ["rft_trl"]
# ///
"""
GRPO on a visual agent: the policy calls a tool that returns an image, looks at it, and answers (TRL's
`environment_factory`, with multimodal tool responses).

With no arguments it trains the built-in tiny Qwen2.5-VL on the synthetic zoom task on the CPU: the question asks the
colour of a dot too small to see in the full view; the environment's `zoom` tool returns it enlarged. A format
warm-up teaches the call, then RL must read the colour off the tool's image (mean reward from about 1/4 to 0.9+):

    accelerate launch --config_file accelerate_configs/cpu.yaml examples/grpo_agent.py --output_dir outputs/grpo_agent

On GPUs, with a real checkpoint, a `datasets` dataset (`prompt`, `image`, `answer` columns) and the built-in crop
tool over each row's image (`rft_trl.rollout.crop.CropEnvironment`; or your own class by dotted path):

    accelerate launch --config_file accelerate_configs/deepspeed_zero2.yaml examples/grpo_agent.py \
        --model_name_or_path Qwen/Qwen3-VL-8B-Instruct --dataset_name <your dataset> --environment_factory crop \
        --reward_funcs accuracy_reward --max_tool_calling_iterations 3 --format_warmup_steps 0 \
        --use_peft --lora_r 32 --bf16 --learning_rate 5e-6 --output_dir outputs/grpo_agent

Any option can also come from a YAML file: `--config recipe.yaml`
(examples/recipes/grpo_agent_qwen3_vl_crop_lora.yaml).
"""

from rft_trl.scripts import end_launched_process, parse_and_run

if __name__ == "__main__":
    # The built-in tiny model runs the zoom demo (rft_trl.scripts.DEMO_RUNS over TINY_DEMO_DEFAULTS); a real model
    # starts from TRL's defaults. A --config YAML overrides the defaults, and the command line overrides both.
    parse_and_run("grpo_agent")
    end_launched_process()  # a distributed launch: see its docstring
