# /// script
# dependencies = ["rft_trl"]
# ///
"""
GRPO on an audio-language model.

With no arguments it trains the built-in tiny Qwen2-Audio on the synthetic pitch task on the CPU (is a tone high or
low?): a short format warm-up, then RL that must ground the answer in the audio (from chance, 1/2, towards 0.9+):

    accelerate launch --config_file accelerate_configs/cpu.yaml examples/grpo_audio.py --output_dir outputs/grpo_audio

On GPUs, with a real checkpoint, a `datasets` dataset (`prompt` with an `{"type": "audio"}` part, an `audio` column
of `{"array", "sampling_rate"}` or file paths, and `answer`) and LoRA (the defaults are the tiny demo's, so set the
sizes and the learning rate):

    accelerate launch --config_file accelerate_configs/deepspeed_zero2.yaml examples/grpo_audio.py \
        --model_name_or_path Qwen/Qwen2-Audio-7B-Instruct --dataset_name <your dataset> --format_warmup_steps 0 \
        --use_peft --lora_r 16 --lora_target_modules q_proj v_proj --bf16 --learning_rate 1e-5 \
        --rollout_batch_size 4 --micro_rollout_batch_size 16 --per_device_train_batch_size 8 \
        --max_completion_length 256 --max_steps -1 --output_dir outputs/grpo_audio

Any option can also come from a YAML file: `--config recipe.yaml` (see `examples/recipes/`).
"""

from rft_trl.scripts import end_launched_process, parse_and_run

if __name__ == "__main__":
    # The built-in tiny model runs the demo (rft_trl.scripts.DEMO_RUNS over TINY_DEMO_DEFAULTS); a real model starts
    # from TRL's defaults. A --config YAML overrides the defaults, and the command line overrides both.
    parse_and_run("grpo_audio")
    end_launched_process()  # a distributed launch: see its docstring
