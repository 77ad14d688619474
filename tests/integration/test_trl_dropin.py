"""A TRL GRPO vision-language script runs on `PPOTrainerVL` by changing the import, the class and the config name.

The script is written once, as TRL users write it (`GRPOConfig` field names, `GRPOTrainer` keywords, a LoRA config),
with three placeholders. Rendered for TRL it must run on TRL's own `GRPOTrainer` (so the template is a genuine TRL
script); rendered for rft_trl it must train.
"""

import math

import torch

TRL_STYLE_SCRIPT = """
{import_line}
from peft import LoraConfig

from rft_trl.testing import build_tiny_qwen2_vl, make_colour_dataset

model, processor = build_tiny_qwen2_vl(seed=0)
dataset = make_colour_dataset(num_samples=8, seed=0)


def reward_len(completions, **kwargs):
    # TRL's quickstart reward: completions near 20 characters score best. TRL hands chat prompts chat completions
    # ([{{"role": "assistant", "content": ...}}]); plain strings are the standard format.
    texts = [c if isinstance(c, str) else c[0]["content"] for c in completions]
    return [-abs(20 - len(text)) / 20 for text in texts]


training_args = {config_class}(
    output_dir=output_dir,
    num_generations=4,
    max_completion_length=8,
    per_device_train_batch_size=4,
    gradient_accumulation_steps=2,
    beta=0.04,
    epsilon=0.2,
    num_iterations=1,
    loss_type="dapo",
    scale_rewards="group",
    temperature=1.0,
    learning_rate=5e-2,
    max_steps=2,
    logging_steps=1,
    save_strategy="no",
    report_to="none",
    use_cpu=True,
    bf16=False,
    seed=0,
)
trainer = {trainer_class}(
    model=model,
    reward_funcs=[reward_len],
    args=training_args,
    train_dataset=dataset,
    processing_class=processor,
    peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
)
lora_before = {{n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}}
trainer.train()
"""

TRL_NAMES = {
    "import_line": "from trl import GRPOConfig, GRPOTrainer",
    "config_class": "GRPOConfig",
    "trainer_class": "GRPOTrainer",
}
RFT_NAMES = {
    "import_line": "from rft_trl import PPOTrainerVL, RFTConfig",
    "config_class": "RFTConfig",
    "trainer_class": "PPOTrainerVL",
}


def run_script(names: dict, output_dir: str) -> dict:
    namespace = {"output_dir": output_dir}
    exec(compile(TRL_STYLE_SCRIPT.format(**names), "trl_style_script.py", "exec"), namespace)
    return namespace


def lora_b_changed(namespace: dict) -> list[str]:
    # LoRA's B matrices start at zero: any change comes from the optimizer steps.
    after = {n: p.detach() for n, p in namespace["trainer"].model.named_parameters() if "lora_B" in n}
    before = namespace["lora_before"]
    assert before and set(before) == set(after)
    return [n for n in before if not torch.equal(before[n], after[n])]


def test_rendered_scripts_differ_only_in_the_three_names():
    trl_lines = TRL_STYLE_SCRIPT.format(**TRL_NAMES).splitlines()
    rft_lines = TRL_STYLE_SCRIPT.format(**RFT_NAMES).splitlines()
    changed = [(a, b) for a, b in zip(trl_lines, rft_lines, strict=True) if a != b]
    assert changed == [
        ("from trl import GRPOConfig, GRPOTrainer", "from rft_trl import PPOTrainerVL, RFTConfig"),
        ("training_args = GRPOConfig(", "training_args = RFTConfig("),
        ("trainer = GRPOTrainer(", "trainer = PPOTrainerVL("),
    ]


def test_trl_script_trains_on_ppo_trainer_vl(tmp_path):
    namespace = run_script(RFT_NAMES, str(tmp_path / "rft"))
    trainer, args = namespace["trainer"], namespace["training_args"]
    # The TRL names landed on their rft_trl counterparts (docs/config_mapping.md).
    assert (args.n_samples_per_prompt, args.generate_max_len, args.init_kl_coef) == (4, 8, 0.04)
    assert (args.eps_clip, args.max_epochs, args.loss_agg_mode, args.advantage_estimator) == (
        0.2,
        1,
        "token-mean",
        "group_norm",
    )
    # TRL's generation batch: 4 completions x 2 accumulation steps = 8 completions = 2 prompts x 4 generations.
    assert args.rollout_batch_size == 2
    assert lora_b_changed(namespace), "no LoRA parameter changed"
    # LoRA only: the base weights under the adapter stay as built.
    assert not any(p.requires_grad for n, p in trainer.model.named_parameters() if "lora_" not in n)
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2
    for entry in logs:
        for key in ("loss", "reward", "train/policy_loss", "kl", "train/clipfrac"):
            assert math.isfinite(entry[key]), (key, entry)


def test_template_is_a_working_trl_script(tmp_path):
    namespace = run_script(TRL_NAMES, str(tmp_path / "trl"))
    assert lora_b_changed(namespace), "TRL's GRPOTrainer did not train the template's adapter"
