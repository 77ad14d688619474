"""
GPU check: what only a GPU shows, in one run (`bash bench/gpu_check.sh`, under 10 minutes on one large GPU).

    bash bench/gpu_check.sh                                   # CUDA: a random-init Qwen2.5-VL-3B-sized model
    PYTHONPATH=. python bench/gpu_check.py --size tiny        # the same sections on the tiny model (CPU smoke run)

The model is built offline: Qwen2.5-VL-3B's shapes (text: hidden 2048, 36 layers, 16 heads, 2 KV heads, MLP 11008,
vocabulary 151,936, tied embeddings; vision: 32 blocks of 1280, windowed attention, full attention at blocks 7, 15,
23, 31), random weights, bfloat16, the tiny processor of `rft_trl.testing` (14-pixel patches merged 2x2, as the real
one), saved once to a temporary directory that every section loads by path. Images are 448 x 448 (256 image tokens).
Attention is flash-attention 2 when `flash_attn` imports, else sdpa (printed). Sections, each reported on its own
line as JSON, a failing one reported and skipped:

- `exact`: through `ActorVL.forward`, the action log-probs of a batch of 4 image prompts with completions of
  different lengths, packed (`packing_samples=True`, the varlen path) against padded, and fused (the default) against
  the model's full logits, in bfloat16: largest and mean absolute difference.
- `memory` (B3 on the GPU): peak allocated memory of `ActorVL.forward` + backward at N = 2048 action tokens (2
  samples), fused against full logits, as bytes above the model and in units of one float32 `[N, V]` tensor.
- `b7`: `PPOTrainerVL` against TRL's `GRPOTrainer` from the same saved model: bf16, the same attention, vision tower
  frozen on both sides, 4 prompts x 8 samples per step, completions forced to `--completion-length` tokens, one
  optimizer step per rollout, `beta=0`; median step time after a warm-up step, completion tokens/s, peak memory.
  Ours runs packed when flash-attention is there (its varlen path), padded otherwise.
- `b8`: rollout sampling with vLLM colocate (`use_vllm=True`) against transformers' `generate`, through the trainers'
  engines (`trainer.experience_maker.engine.generate`), completion tokens/s; skipped with the reason when vLLM is
  not installed.
- `fsdp2`: FSDP2 through Accelerate (`accelerate_configs/fsdp2.yaml`, one process on this GPU), launches of
  `examples/grpo_vl.py` on the built-in tiny model: 4 steps with a KL reference, HF generation and a checkpoint at
  step 2; the saved model loaded with `from_pretrained` (trained, the initial model's names); the run resumed from
  its step-2 checkpoint against the uninterrupted one (largest weight difference); LoRA; vLLM colocate when vLLM is
  installed. Skipped on the CPU, where Accelerate does not enable FSDP.
- `b9`: `PPOTrainerVL.train()` with each prompt's images encoded once (`cache_encoder_outputs=True`, the default)
  against encoding the pixels in every pass, the vision tower frozen and trained: median step time and the images
  the tower encoded per unique image (4 prompts x 8 samples, one optimizer step per rollout in micro-batches of
  `--micro-batch`).
- `b12`: `PPOTrainerVL.train()` with `async_rollouts=True` (the next rollout sampled by the colocated vLLM engine in a
  background thread during the update) against the synchronous run: median step time, their ratio, and how long the
  trainer still waited for the rollout generated ahead; skipped with the reason when vLLM is not installed.
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import StepClock, length_reward  # noqa: E402
from datasets import Dataset  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForMultimodalLM, PrinterCallback, Qwen2_5_VLForConditionalGeneration  # noqa: E402

from rft_trl import ActorVL, PPOTrainerVL, RFTConfig  # noqa: E402
from rft_trl.data import PromptCollator  # noqa: E402
from rft_trl.models.media_encodings import MediaEncodings  # noqa: E402
from rft_trl.models.packing import pack_sequences  # noqa: E402
from rft_trl.models.verification import verify_model  # noqa: E402
from rft_trl.testing import build_tiny_model, count_tower_images, load_processing_class  # noqa: E402
from rft_trl.testing.datasets import colour_square_image  # noqa: E402
from rft_trl.testing.vocabulary import COLOURS  # noqa: E402

QWEN25_VL_3B_TEXT = {
    "hidden_size": 2048,
    "intermediate_size": 11008,
    "num_hidden_layers": 36,
    "num_attention_heads": 16,
    "num_key_value_heads": 2,
    "vocab_size": 151_936,
    "tie_word_embeddings": True,
}
QWEN25_VL_3B_VISION = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "out_hidden_size": 2048,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
}
QWEN25_VL_3B_MROPE_SECTION = [16, 24, 24]  # head_dim 128
# The tiny size: the tiny Qwen2.5-VL's text model with 2 heads of 32 (vLLM's CPU kernels refuse head_dim 16).
TINY_TEXT = {"num_attention_heads": 2, "num_key_value_heads": 1}
TINY_MROPE_SECTION = [4, 6, 6]  # head_dim 32


def report(section: str, **values) -> None:
    print(json.dumps({"section": section, **values}), flush=True)


def attention_implementation(device: str) -> str:
    if device == "cuda":
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            return "sdpa"
    return "sdpa"


def save_model(size: str, path: str, dtype: torch.dtype, device: str, image_size: int) -> str:
    """A Qwen2.5-VL with Qwen2.5-VL-3B's shapes (or the tiny one's, heads of 32) and random weights, with the tiny
    processor, which keeps images up to `image_size` square (28 x 28 pixels per image token)."""
    tiny, processor = build_tiny_model("qwen2_5_vl", seed=0)
    processor.image_processor.size.longest_edge = max(
        image_size * image_size, processor.image_processor.size.longest_edge
    )
    config = copy.deepcopy(tiny.config)
    text = config.get_text_config()
    text_shape, vision_shape, mrope_section = (
        (QWEN25_VL_3B_TEXT, QWEN25_VL_3B_VISION, QWEN25_VL_3B_MROPE_SECTION)
        if size == "3b"
        else (TINY_TEXT, {}, TINY_MROPE_SECTION)
    )
    for name, value in text_shape.items():
        setattr(text, name, value)
    config.tie_word_embeddings = text.tie_word_embeddings
    text.head_dim = text.hidden_size // text.num_attention_heads
    text.rope_parameters = {**text.rope_parameters, "mrope_section": mrope_section}
    for name, value in vision_shape.items():
        setattr(config.vision_config, name, value)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def image_rows(count: int, image_size: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    question = [{"type": "image", "text": None}, {"type": "text", "text": "What colour is the square? One word."}]
    return [
        {
            "prompt": [{"role": "user", "content": question}],
            "image": colour_square_image(COLOURS[i % len(COLOURS)], rng, size=image_size),
            "answer": COLOURS[i % len(COLOURS)],
        }
        for i in range(count)
    ]


def prompt_inputs(processor, rows: list[dict], device: str):
    """The collator's prompt ids, mask and per-token / per-sample model inputs, on `device`."""
    batch = PromptCollator(processor)(rows)
    fields = {name: value.to(device) for name, value in batch.token_fields.items()}
    media = {name: value.to(device) for name, value in batch.multimodal_inputs.items()}
    return batch.input_ids.to(device), batch.attention_mask.to(device), fields, media


def random_completions(actor: ActorVL, processor, shape: tuple[int, int], device: str) -> torch.Tensor:
    """Random ordinary tokens (no special or media tokens), as if sampled."""
    tokenizer = getattr(processor, "tokenizer", processor)
    excluded = set(actor.media_token_ids) | set(tokenizer.all_special_ids)
    vocab = min(actor.hf_model.config.get_text_config().vocab_size, len(tokenizer))
    ordinary = torch.tensor([i for i in range(vocab) if i not in excluded])
    generator = torch.Generator().manual_seed(0)
    return ordinary[torch.randint(len(ordinary), shape, generator=generator)].to(device)


def load_actor(path: str, dtype, device: str, attention: str, **kwargs) -> ActorVL:
    init = {"attn_implementation": attention, "dtype": str(dtype).removeprefix("torch.")}
    return ActorVL(path, model_init_kwargs=init, **kwargs).to(device)


def check_exact(path: str, options, dtype, device: str, attention: str) -> None:
    actor = load_actor(path, dtype, device, attention, packing_samples=True)
    processor = load_processing_class(path)
    input_ids, prompt_mask, token_fields, media = prompt_inputs(processor, image_rows(4, options.image_size), device)
    lengths = [37, 64, 5, 50]
    width = max(lengths)
    completions = random_completions(actor, processor, (len(lengths), width), device)
    completion_mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).to(device)
    sequences = torch.cat([input_ids, completions], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask.long()], dim=1)
    fields = {**token_fields, **media}
    with torch.no_grad():
        padded = actor(sequences, width, attention_mask, **fields)[completion_mask]
        packed, seq_lens = pack_sequences(sequences, attention_mask)
        packed_fields = dict(media)
        for name, value in token_fields.items():
            extended = torch.cat([value, torch.zeros_like(completions)], dim=1)
            packed_fields[name] = pack_sequences(extended, attention_mask)[0]
        packed_log_probs = actor(packed, lengths, packed_seq_lens=seq_lens, **packed_fields)[0]
        actor.fused_log_probs = False
        full = actor(sequences, width, attention_mask, **fields)[completion_mask]
    packed_diff = (packed_log_probs.float() - padded.float()).abs()
    fused_diff = (padded.float() - full.float()).abs()
    report(
        "exact",
        dtype=str(dtype),
        image_tokens=int((input_ids[0] == actor.hf_model.config.image_token_id).sum()),
        attention=attention,
        action_tokens=int(completion_mask.sum()),
        packed_vs_padded_max=packed_diff.max().item(),
        packed_vs_padded_mean=packed_diff.mean().item(),
        fused_vs_full_max=fused_diff.max().item(),
        fused_vs_full_mean=fused_diff.mean().item(),
    )
    del actor


def check_memory(path: str, options, dtype, device: str, attention: str) -> None:
    if device != "cuda":
        report("memory", skipped="needs CUDA (bench/b3_actor_memory.py measures it on the CPU)")
        return
    actor = load_actor(path, dtype, device, attention)
    processor = load_processing_class(path)
    input_ids, prompt_mask, token_fields, media = prompt_inputs(processor, image_rows(2, options.image_size), device)
    tokens = options.memory_tokens
    vocab = actor.hf_model.config.get_text_config().vocab_size
    completions = random_completions(actor, processor, (2, tokens // 2), device)
    sequences = torch.cat([input_ids, completions], dim=1)
    attention_mask = torch.cat([prompt_mask, torch.ones_like(completions)], dim=1)
    fields = {**token_fields, **media}
    peaks = {}
    for fused in (True, False):
        actor.fused_log_probs = fused
        actor.zero_grad(set_to_none=True)
        release_memory(device)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        log_probs, entropy = actor(sequences, tokens // 2, attention_mask, return_entropy=True, **fields)
        (log_probs.float().sum() + 0.01 * entropy.float().sum()).backward()
        torch.cuda.synchronize()
        peaks["fused" if fused else "full"] = torch.cuda.max_memory_allocated() - base
        del log_probs, entropy
    unit = 4 * tokens * vocab
    report(
        "memory",
        action_tokens=tokens,
        vocab=vocab,
        fused_peak_gb=peaks["fused"] / 1e9,
        full_peak_gb=peaks["full"] / 1e9,
        fused_peak_in_NV=peaks["fused"] / unit,
        full_peak_in_NV=peaks["full"] / unit,
        saved_in_NV=(peaks["full"] - peaks["fused"]) / unit,
    )
    del actor


def trainer_settings(options, device: str, attention: str, dtype) -> dict:
    return dict(
        max_steps=options.steps,
        learning_rate=1e-6,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
        bf16=dtype == torch.bfloat16,
        gradient_checkpointing=False,
        use_cpu=device == "cpu",
        model_init_kwargs={"attn_implementation": attention, "dtype": str(dtype).removeprefix("torch.")},
        beta=0.0,
    )


def release_memory(device: str) -> None:
    """Free what a deleted trainer held, before the next side is measured."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def median_step(clock: StepClock) -> float:
    """Median wall time of the optimizer steps after the first (a warm-up)."""
    return statistics.median(clock.step_times()[0])


def run_b7(path: str, options, dtype, device: str, attention: str) -> None:
    from trl import GRPOConfig, GRPOTrainer

    prompts, n, length = 4, 8, options.completion_length
    rows = Dataset.from_list(image_rows(prompts * options.steps * 2, options.image_size))
    samples = prompts * n
    common = {
        **trainer_settings(options, device, attention, dtype),
        "num_generations": n,
        "per_device_train_batch_size": options.micro_batch,
        "gradient_accumulation_steps": samples // options.micro_batch,
        "max_completion_length": length,
        "generation_kwargs": {"min_new_tokens": length},
    }
    results = {}
    sides = {
        "rft_trl": lambda clock: PPOTrainerVL(
            path,
            [length_reward],
            RFTConfig(
                output_dir=tempfile.mkdtemp(prefix="gpu_check_ours_"),
                rollout_batch_size=prompts,
                micro_rollout_batch_size=samples,
                advantage_estimator="dr_grpo",
                loss_agg_mode="token-mean",
                packing_samples=attention == "flash_attention_2",
                freeze_encoder=True,
                **common,
            ),
            train_dataset=rows,
            processing_class=load_processing_class(path),
            callbacks=[clock],
        ),
        "TRL": lambda clock: GRPOTrainer(
            model=path,
            reward_funcs=[length_reward],
            args=GRPOConfig(
                output_dir=tempfile.mkdtemp(prefix="gpu_check_trl_"),
                scale_rewards="none",
                loss_type="bnpo",
                **common,
            ),
            train_dataset=rows,
            processing_class=load_processing_class(path),
            callbacks=[clock],
        ),
    }
    for name, build in sides.items():
        clock = StepClock()
        trainer = build(clock)
        if name == "TRL":
            for parameter_name, parameter in trainer.model.named_parameters():
                if "visual" in parameter_name:
                    parameter.requires_grad_(False)
        trainer.remove_callback(PrinterCallback)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
        step = median_step(clock)
        results[name] = {
            "median_step_s": step,
            "completion_tokens_per_s": samples * length / step,
            "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None,
        }
        del trainer
        release_memory(device)
    report(
        "b7",
        attention=attention,
        packing_ours=attention == "flash_attention_2",
        samples_per_step=samples,
        completion_length=length,
        **results,
        step_time_ours_over_trl=results["rft_trl"]["median_step_s"] / results["TRL"]["median_step_s"],
    )


def run_b8(path: str, options, dtype, device: str, attention: str) -> None:
    try:
        import vllm  # noqa: F401
    except ImportError as error:
        report("b8", skipped=f"vLLM is not installed here ({error}); `pip install rft_trl[vllm]` to run it")
        return
    prompts, n, length = 8, 8, options.completion_length
    rows = image_rows(prompts, options.image_size, seed=1)
    common = trainer_settings(options, device, attention, dtype)
    timings = {}
    for use_vllm in (False, True):
        extra = {"use_vllm": True, "vllm_gpu_memory_utilization": 0.3} if use_vllm else {}
        trainer = PPOTrainerVL(
            path,
            [length_reward],
            RFTConfig(
                output_dir=tempfile.mkdtemp(prefix="gpu_check_b8_"),
                rollout_batch_size=prompts,
                num_generations=n,
                micro_rollout_batch_size=prompts * n,
                per_device_train_batch_size=prompts * n,
                max_completion_length=length,
                freeze_encoder=True,
                **common,
                **extra,
            ),
            train_dataset=Dataset.from_list(rows),
            processing_class=load_processing_class(path),
        )
        maker = trainer.experience_maker
        trainer._sync_rollout_engine()
        batch = maker.collator(rows)
        seconds, tokens = [], []
        for round_index in range(options.repeats + 1):
            torch.manual_seed(round_index)
            start = time.perf_counter()
            generation = maker.engine.generate(batch, n, trainer.args.sampling_kwargs())
            if device == "cuda":
                torch.cuda.synchronize()
            if round_index:
                seconds.append(time.perf_counter() - start)
                tokens.append(int(generation.action_mask.sum()))
        timings["vllm" if use_vllm else "hf"] = statistics.median(t / s for t, s in zip(tokens, seconds))
        if trainer.rollout_engine is not None:
            trainer.rollout_engine.close()
        del trainer
        release_memory(device)
    report(
        "b8",
        hf_tokens_per_s=timings["hf"],
        vllm_tokens_per_s=timings["vllm"],
        vllm_over_hf=timings["vllm"] / timings["hf"],
    )


def run_b12(path: str, options, dtype, device: str, attention: str) -> None:
    """B12 on the GPU: wall time per optimizer step, `async_rollouts` (the next rollout sampled by the colocated vLLM
    engine in a background thread during the update) against the synchronous run; same model, rows and steps."""
    try:
        import vllm  # noqa: F401
    except ImportError as error:
        report("b12", skipped=f"vLLM is not installed here ({error}); `pip install rft_trl[vllm]` to run it")
        return
    prompts, n, length = 8, 8, options.completion_length
    rows = Dataset.from_list(image_rows(prompts * (options.steps + 1), options.image_size, seed=2))
    common = trainer_settings(options, device, attention, dtype)
    seconds, waits = {}, {}
    for arm in ("sync", "async"):
        clock = StepClock()
        trainer = PPOTrainerVL(
            path,
            [length_reward],
            RFTConfig(
                output_dir=tempfile.mkdtemp(prefix="gpu_check_b12_"),
                rollout_batch_size=prompts,
                num_generations=n,
                micro_rollout_batch_size=prompts * n,
                per_device_train_batch_size=options.micro_batch,
                gradient_accumulation_steps=prompts * n // options.micro_batch,
                max_completion_length=length,
                freeze_encoder=True,
                use_vllm=True,
                vllm_gpu_memory_utilization=0.3,
                async_rollouts=arm == "async",
                **common,
            ),
            train_dataset=rows,
            processing_class=load_processing_class(path),
            callbacks=[clock],
        )
        trainer.train()
        seconds[arm] = median_step(clock)
        logged = [entry for entry in trainer.state.log_history if "loss" in entry]
        waits[arm] = statistics.median(entry.get("rollout/async/wait_seconds", 0.0) for entry in logged[2:] or logged)
        trainer.rollout_engine.close()
        del trainer
        release_memory(device)
    report(
        "b12",
        sync_seconds_per_step=seconds["sync"],
        async_seconds_per_step=seconds["async"],
        async_over_sync=seconds["async"] / seconds["sync"],
        async_wait_seconds=waits["async"],
    )


def rollout_trainer(path: str, options, dtype, device: str, attention: str, rows, callbacks: list, **overrides):
    """
    A `PPOTrainerVL` on the saved model for the b9 and verify sections: rollouts of 4 prompts x 8 samples of
    `completion_length` tokens (forced), replayed in micro-batches of `micro_batch`; `overrides` set any field.
    """
    prompts, n, length = 4, 8, options.completion_length
    settings = {
        "output_dir": tempfile.mkdtemp(prefix="gpu_check_"),
        "rollout_batch_size": prompts,
        "num_generations": n,
        "micro_rollout_batch_size": prompts * n,
        "per_device_train_batch_size": options.micro_batch,
        "gradient_accumulation_steps": prompts * n // options.micro_batch,
        "max_completion_length": length,
        "generation_kwargs": {"min_new_tokens": length},
        **trainer_settings(options, device, attention, dtype),
        **overrides,
    }
    trainer = PPOTrainerVL(
        path,
        [length_reward],
        RFTConfig(**settings),
        train_dataset=rows,
        processing_class=load_processing_class(path),
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)
    return trainer


def run_b9(path: str, options, dtype, device: str, attention: str) -> None:
    prompts, n = 4, 8
    rows = Dataset.from_list(image_rows(prompts * options.steps * 2, options.image_size))
    samples = prompts * n
    results = {}
    for freeze_encoder in (True, False):
        for cache in (True, False):
            clock = StepClock()
            trainer = rollout_trainer(
                path, options, dtype, device, attention, rows, [clock],
                freeze_encoder=freeze_encoder, cache_encoder_outputs=cache,
            )  # fmt: skip
            images = count_tower_images(trainer)
            trainer.train()
            name = f"{'frozen' if freeze_encoder else 'trained'}_{'cached' if cache else 'pixels'}"
            results[name] = {
                "median_step_s": median_step(clock),
                "images_encoded_per_unique_image": images["policy"] / (prompts * options.steps),
            }
            del trainer
            release_memory(device)
    ratios = {
        f"{tower}_cached_over_pixels": results[f"{tower}_cached"]["median_step_s"]
        / results[f"{tower}_pixels"]["median_step_s"]
        for tower in ("frozen", "trained")
    }
    report("b9", samples_per_step=samples, micro_batches=samples // options.micro_batch, **results, **ratios)


def run_verify(path: str, options, dtype, device: str, attention: str) -> None:
    """B14 at this size: `verify_model`'s time beside the first optimizer step it precedes, and what it measured."""
    rows = Dataset.from_list(image_rows(8, options.image_size))
    trainer = rollout_trainer(
        path, options, dtype, device, attention, rows, [],
        packing_samples=attention == "flash_attention_2", verify_model=False, max_steps=1,
    )  # fmt: skip
    encodings = MediaEncodings(trainer.actor.model) if trainer.experience_maker.media_encodings is not None else None
    start = time.perf_counter()
    results = verify_model(
        trainer.actor, trainer.collator, packing=trainer.actor.packing_samples, media_encodings=encodings
    )
    verify_s = time.perf_counter() - start
    start = time.perf_counter()
    trainer.train()
    first_step_s = time.perf_counter() - start
    differences = {result.name: result.difference for result in results}
    report("verify", verify_s=verify_s, first_step_s=first_step_s, verify_over_first_step=verify_s / first_step_s,
           differences=differences, tolerance=results[0].tolerance)  # fmt: skip
    del trainer
    release_memory(device)


# The built-in example on the tiny model, cut to 4 optimizer steps (2 rollouts) with a checkpoint at step 2.
FSDP2_EXAMPLE_ARGS = (
    "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", "--eval_strategy", "no", "--report_to",
    "none", "--format_warmup_steps", "0", "--rollout_batch_size", "2", "--num_generations", "2",
    "--per_device_train_batch_size", "4", "--micro_rollout_batch_size", "4", "--logging_steps", "1", "--seed", "0",
    # Distinct completions score apart: every step has advantages and moves the weights.
    "--reward_funcs", "rft_trl.testing.training.distinct_reward",
)  # fmt: skip
FSDP2_LAUNCH_TIMEOUT_S = 150
FSDP2_BUDGET_S = 330  # the launches left once this much has passed are skipped, for gpu_check.sh's 9 minutes


def launch_example(config: str, output_dir: str, *extra: str) -> dict:
    """The example launched with `accelerate_configs/<config>` on one process; its exit status, time, output tail."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file",
        os.path.join(root, "accelerate_configs", config), "--num_processes", "1",
        os.path.join(root, "examples", "grpo_vl.py"), "--output_dir", output_dir, *FSDP2_EXAMPLE_ARGS, *extra,
    ]  # fmt: skip
    start = time.perf_counter()
    try:
        completed = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=FSDP2_LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired as error:
        return {"returncode": None, "seconds": FSDP2_LAUNCH_TIMEOUT_S, "tail": str(error.stdout)[-1500:]}
    seconds = round(time.perf_counter() - start, 1)
    tail = (completed.stdout + completed.stderr)[-1500:]
    return {"returncode": completed.returncode, "seconds": seconds, "tail": tail}


def weights_difference(first: str, second: str) -> float:
    """The largest absolute difference between two saved models' weights (inf when their names differ)."""
    a = load_file(os.path.join(first, "model.safetensors"))
    b = load_file(os.path.join(second, "model.safetensors"))
    if a.keys() != b.keys():
        return float("inf")
    return max((a[name].float() - b[name].float()).abs().max().item() for name in a)


def run_fsdp2(path: str, options, dtype, device: str, attention: str) -> None:
    """
    FSDP2 through Accelerate on this GPU (one process), on the built-in tiny model of examples/grpo_vl.py: training
    with a KL reference and HF generation, the saved model reloaded with from_pretrained, an exact resume from the
    step-2 checkpoint, LoRA, and vLLM colocate (when installed), each a launch of the example.
    """
    if device != "cuda":
        report("fsdp2", skipped="needs CUDA: Accelerate enables FSDP only over accelerators (RFTConfig refuses it)")
        return
    report("fsdp2", **example_runs("fsdp2.yaml"))


def example_runs(config: str) -> dict:
    """The fsdp2 section's launches under `accelerate_configs/<config>`, and what they show."""
    base = tempfile.mkdtemp(prefix="gpu_check_fsdp2_")
    start = time.perf_counter()
    runs = {"full": launch_example(config, os.path.join(base, "full"))}
    results = {}
    if runs["full"]["returncode"] == 0:
        full = os.path.join(base, "full")
        saved = AutoModelForMultimodalLM.from_pretrained(full).state_dict()
        initial = build_tiny_model("qwen2_5_vl")[0].state_dict()
        with open(os.path.join(full, "log_history.json")) as f:
            history = json.load(f)
        results["steps_logged"] = sum("loss" in entry for entry in history)
        results["kl_finite"] = all(math.isfinite(entry["kl"]) for entry in history if "kl" in entry)
        results["saved_keys_as_initial"] = saved.keys() == initial.keys()
        results["saved_moved"] = max((saved[k] - initial[k]).abs().max().item() for k in initial if k in saved)
        checkpoint = os.path.join(full, "checkpoint-2")
        runs["resumed"] = launch_example(config, os.path.join(base, "resumed"), "--resume_from_checkpoint", checkpoint)
        if runs["resumed"]["returncode"] == 0:
            results["resumed_vs_uninterrupted_max"] = weights_difference(os.path.join(base, "resumed"), full)
            # What the resumed run had to reproduce: the steps after the checkpoint moved the weights this much.
            results["checkpoint_vs_uninterrupted_max"] = weights_difference(checkpoint, full)
    extra_runs = {"lora": ("--use_peft", "--lora_r", "4")}
    if importlib.util.find_spec("vllm") is not None:
        extra_runs["vllm_colocate"] = ("--use_vllm", "--vllm_mode", "colocate", "--vllm_gpu_memory_utilization", "0.2")
    for name, extra in extra_runs.items():
        if time.perf_counter() - start > FSDP2_BUDGET_S:
            runs[name] = {"skipped": "out of the section's time"}
            continue
        short = ("--max_steps", "2", "--save_strategy", "no")
        runs[name] = launch_example(config, os.path.join(base, name), *short, *extra)
    for run in runs.values():
        if run.get("returncode") == 0:
            run.pop("tail")
    return {**results, "runs": runs}


# verify second: it is short, and the 9-minute stop of gpu_check.sh cuts the sections that come last; fsdp2 third,
# on the tiny model (about 4 launches of the example).
SECTIONS = {
    "exact": check_exact,
    "verify": run_verify,
    "fsdp2": run_fsdp2,
    "memory": check_memory,
    "b7": run_b7,
    "b8": run_b8,
    "b9": run_b9,
    "b12": run_b12,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["3b", "tiny"], default=None, help="default: 3b on CUDA, tiny on CPU")
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--image-size", type=int, default=None, help="default: 448 (3b), 56 (tiny)")
    parser.add_argument("--completion-length", type=int, default=None, help="default: 256 (3b), 8 (tiny)")
    parser.add_argument("--memory-tokens", type=int, default=2048)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per B7 run (the first is a warm-up)")
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    size = options.size or ("3b" if device == "cuda" else "tiny")
    options.image_size = options.image_size or (448 if size == "3b" else 56)
    options.completion_length = options.completion_length or (256 if size == "3b" else 8)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    attention = attention_implementation(device)
    report(
        "environment",
        device=torch.cuda.get_device_name() if device == "cuda" else "cpu",
        torch=torch.__version__,
        size=size,
        dtype=str(dtype),
        attention=attention,
    )
    start = time.perf_counter()
    path = os.path.join(tempfile.mkdtemp(prefix="gpu_check_"), "model")
    save_model(size, path, dtype, device, options.image_size)
    report("model", path=path, seconds=round(time.perf_counter() - start, 1))
    failed = 0
    for name in options.sections:
        start = time.perf_counter()
        try:
            SECTIONS[name](path, options, dtype, device, attention)
        except Exception as error:  # one failing section is reported and the others still run
            failed += 1
            report(name, failed=f"{type(error).__name__}: {error}", traceback=traceback.format_exc()[-2000:])
        report(f"{name}_done", seconds=round(time.perf_counter() - start, 1))
        release_memory(device)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
