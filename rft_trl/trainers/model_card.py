"""The model card `PPOTrainerVL.create_model_card` writes, and `push_to_hub` uploads with the weights."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from huggingface_hub import ModelCard, ModelCardData

from ..plotting import plot_reward_curve

if TYPE_CHECKING:
    from .ppo_trainer_vl import PPOTrainerVL

__all__ = ["REWARD_CURVE_NAME", "model_card_body", "write_model_card"]

REWARD_CURVE_NAME = "reward_curve.png"


def write_model_card(
    trainer: PPOTrainerVL,
    model_name: str | None = None,
    dataset_name: str | None = None,
    tags: str | list[str] | None = None,
    finetuned_from: str | None = None,
    language: str | None = None,
    license: str | None = None,
) -> None:
    """
    Write `README.md` and `reward_curve.png` into the trainer's `output_dir`: the card `push_to_hub` uploads with the
    weights (`PPOTrainerVL.create_model_card`).

    The card holds the final rollout and eval rewards, the reward curve, the algorithm settings and how to load the
    result; never the arguments wholesale (they may hold a token).

    Args:
        trainer ([`PPOTrainerVL`]): the trainer whose run the card describes.
        model_name (`str`, *optional*):
            The card's title; defaults to the output directory's name.
        finetuned_from (`str`, *optional*):
            The base model's Hub id; defaults to the name the model was loaded from, when it has one.
        dataset_name (`str`, *optional*), tags (`str` or `list[str]`, *optional*), language (`str`, *optional*),
        license (`str`, *optional*):
            Card metadata (TRL's `push_to_hub(dataset_name=...)` passes the first); `tags` join `rft_trl`'s own.
    """
    output_dir = trainer.args.output_dir
    os.makedirs(output_dir, exist_ok=True)
    plot_reward_curve(trainer.state.log_history, os.path.join(output_dir, REWARD_CURVE_NAME))
    finetuned_from = finetuned_from or trainer.actor.hf_model.name_or_path or None
    extra_tags = [tags] if isinstance(tags, str) else list(tags or [])
    card_data = ModelCardData(
        library_name="peft" if trainer._peft else "transformers",
        base_model=finetuned_from,
        datasets=[dataset_name] if dataset_name else None,
        language=language,
        license=license,
        tags=list(
            dict.fromkeys([*trainer._tag_names, trainer.args.advantage_estimator, *trainer.media_kinds, *extra_tags])
        ),
    )
    ModelCard(f"---\n{card_data.to_yaml()}\n---\n{model_card_body(trainer, model_name, finetuned_from)}").save(
        os.path.join(output_dir, "README.md")
    )


def model_card_body(trainer: PPOTrainerVL, model_name: str | None, finetuned_from: str | None) -> str:
    """The card's Markdown below the metadata."""

    def last(key: str) -> str:
        values = [entry[key] for entry in trainer.state.log_history if key in entry]
        return f"{values[-1]:.4f}" if values else "not measured"

    args = trainer.args
    title = model_name or os.path.basename(os.path.abspath(args.output_dir))
    origin = f"[{finetuned_from}](https://huggingface.co/{finetuned_from})" if finetuned_from else "a model"
    inputs = " + ".join(["text", *trainer.media_kinds])
    if trainer._peft:
        loading = (
            "from peft import PeftModel\n\n"
            f'model = PeftModel.from_pretrained(base_model, "{trainer.hub_model_id or title}")  # base_model: '
            "the model this adapter was trained on"
        )
    else:
        loading = (
            "from transformers import AutoModelForMultimodalLM\n\n"
            f'model = AutoModelForMultimodalLM.from_pretrained("{trainer.hub_model_id or title}")'
            if trainer.media_kinds
            else "from transformers import AutoModelForCausalLM\n\n"
            f'model = AutoModelForCausalLM.from_pretrained("{trainer.hub_model_id or title}")'
        )
    settings = {
        "advantage_estimator": args.advantage_estimator,
        "n_samples_per_prompt": args.n_samples_per_prompt,
        "rollout_batch_size": args.rollout_batch_size,
        "max_epochs": args.max_epochs,
        "learning_rate": args.learning_rate,
        "init_kl_coef": args.init_kl_coef,
        "eps_clip": args.eps_clip,
        "loss_agg_mode": args.loss_agg_mode,
        "generate_max_len": args.generate_max_len,
        "optimizer steps": trainer.state.global_step,
    }
    rows = "\n".join(f"| `{name}` | {value} |" for name, value in settings.items())
    return (
        f"# {title}\n\n"
        f"{'A LoRA adapter for' if trainer._peft else 'A fine-tune of'} {origin} ({inputs} input), trained "
        f"with reinforcement learning by `rft_trl`'s `PPOTrainerVL`.\n\n"
        f"## Results\n\n"
        f"| metric | value |\n| --- | --- |\n"
        f"| final rollout reward (`reward`) | {last('reward')} |\n"
        f"| final eval reward (`eval_reward`, greedy) | {last('eval_reward')} |\n\n"
        f"![Mean reward per optimizer step]({REWARD_CURVE_NAME})\n\n"
        f"## Training settings\n\n| setting | value |\n| --- | --- |\n{rows}\n\n"
        f"## Loading\n\n```python\n{loading}\n```\n"
    )
