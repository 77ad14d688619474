"""
Runs inside `.venv-vllm` (vLLM's CPU build), started by tests/e2e/test_vllm.py: one scenario per call, results as JSON.

    python tests/e2e/vllm_worker.py colocate KIND TASK OUT.json [--lora]

trains the tiny model KIND for two steps on TASK with `use_vllm=True, vllm_mode="colocate"`, then compares the
engine's greedy completions with HF `generate`'s on the trained weights, before and after the engine's weight sync.
For a model with images, it also hands the engine a prompt processed with another image-token expansion than the
engine's processor and records the refusal.
"""

from __future__ import annotations

import copy
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def greedy_sequences(engine, batch, args):
    generation = engine.generate(batch, 1, {**args.sampling_kwargs(), "do_sample": False})
    return generation.sequences.tolist()


def scored_differences(trainer, batch, args) -> dict:
    """
    The largest |trainer log-prob - engine log-prob| over sampled completions of the synced engine, with the actor
    scoring as the run does (suppressed media tokens out of the softmax) and, as a control, over the full vocabulary.
    """
    maker, actor = trainer.experience_maker, trainer.actor
    samples = maker._generate(batch, 4, args.sampling_kwargs())
    mask = samples["action_mask"].bool()
    differences = {}
    suppressed = actor.suppressed_token_ids
    for name, ids in (("suppressed", suppressed), ("full_vocabulary", [])):
        actor.suppressed_token_ids = ids
        scored = maker._forward_in_chunks(
            lambda *a, **k: actor(*a, temperature=args.temperature, **k), samples, maker.media_encodings
        )
        differences[name] = (scored - samples["rollout_log_probs"])[mask].abs().max().item()
    actor.suppressed_token_ids = suppressed
    return differences


def colocate(kind: str, task: str, out: str, lora: bool) -> None:
    import torch
    from peft import LoraConfig

    from rft_trl import PPOTrainerVL
    from rft_trl.rollout import HFEngine
    from rft_trl.rollout.vllm import PromptMismatchError
    from rft_trl.testing import build_tiny_model, distinct_reward, make_task_dataset, tiny_config

    model, processing_class = build_tiny_model(kind)
    args = tiny_config(
        os.path.join(os.path.dirname(out), "run"),
        use_vllm=True,
        vllm_mode="colocate",
        vllm_enforce_eager=True,
        vllm_importance_sampling_mode="token_truncate",
        learning_rate=0.1,  # large enough that the update changes the greedy completions (as TRL's vLLM test)
        logging_steps=1,
    )
    peft_config = LoraConfig(r=8, lora_alpha=64, target_modules="all-linear") if lora else None
    trainer = PPOTrainerVL(
        model,
        [distinct_reward],
        args,
        train_dataset=make_task_dataset(task, 8),
        processing_class=processing_class,
        peft_config=peft_config,
    )
    trainer.train()
    engine = trainer.rollout_engine
    batch = trainer.collator(list(make_task_dataset(task, 4, seed=1)))
    before = greedy_sequences(engine, batch, args)
    trainer.actor.eval()
    pad_token_id = trainer.collator.tokenizer.pad_token_id
    hf = HFEngine(trainer.actor, 4, torch.device("cpu"), args.suppress_media_tokens, pad_token_id)
    reference = greedy_sequences(hf, batch, args)
    syncs_before = engine.syncs
    trainer._sync_rollout_engine()
    after = greedy_sequences(engine, batch, args)
    result = {
        "log_history": trainer.state.log_history,
        "before_sync_equal": before == reference,
        "after_sync_equal": after == reference,
        "synced": engine.syncs - syncs_before,
        "syncs": engine.syncs,
        "completion_tokens": sum(len(row) for row in reference),
    }
    if trainer.actor.suppressed_token_ids:
        result["scored_difference"] = scored_differences(trainer, batch, args)
    if any("image" in media for media in batch.sample_media):
        # A trainer processor that merges no patches expands each image into four times the engine's tokens.
        other = copy.deepcopy(processing_class)
        other.image_processor.merge_size = 1
        other_batch = type(trainer.collator)(other)(list(make_task_dataset(task, 1, seed=2)))
        try:
            engine.generate(other_batch, 1, args.sampling_kwargs())
            result["mismatch_error"] = None
        except PromptMismatchError as error:
            result["mismatch_error"] = str(error)
    with open(out, "w") as handle:
        json.dump(result, handle, default=float)


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    if command != "colocate":
        raise SystemExit(f"unknown scenario {command!r}")
    colocate(rest[0], rest[1], rest[2], lora="--lora" in rest)
