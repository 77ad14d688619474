"""
vLLM rollout engines, under TRL's option names (`use_vllm`, `vllm_mode`, `vllm_*`).

- `colocate`: a `vllm.LLM` in the training process (vLLM's in-process engine, `VLLM_ENABLE_V1_MULTIPROCESSING=0`).
  Weights reach it through vLLM's `reload_weights` from an iterator over the policy's parameters, one module at a
  time.
- `server` (`rft_trl.rollout.vllm_server`): vLLM's own OpenAI-compatible server (`vllm serve`, started with
  `VLLM_SERVER_DEV_MODE=1` and `--logprobs-mode processed_logprobs`), reached over HTTP: text prompts with TRL's
  request shape (`/v1/completions` with prompt token ids, `return_token_ids`), prompts with media through
  `/v1/chat/completions`. Weights reach it through the server's `/collective_rpc` endpoint calling
  `reload_weights(weights_path=...)` on a safetensors file the trainer writes to `vllm_weight_sync_dir`, a directory
  the server can read (same machine or a shared filesystem). TRL's NCCL weight transfer is not used: it needs a GPU
  on both sides, and this path works on any machine.

Both ask for the sampled tokens' log-probs after temperature (`processed_logprobs`, what the trainer recomputes),
for the rollout/train mismatch metrics and the importance-sampling correction.

Prompts with media go to the engine with the loaded media, and the engine runs its own processor: in colocate mode
as the rendered text plus `multi_modal_data`, in server mode as the prompt's chat messages with the images (PNG) and
audio (WAV) inlined, which the server renders with the model's chat template. Either way the engine's prompt token
ids are compared with the trainer's processor's for every prompt, and a difference (another image-token expansion,
another template) is refused, naming the prompt and the first differing position.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.collator import PromptBatch
from .engine import Generation, RolloutEngine, pad_completions
from .weights import iter_checkpoint_weights

logger = logging.getLogger(__name__)

# HF generate's sampling arguments and their vLLM `SamplingParams` names; other keys (TRL's `generation_kwargs` under
# vLLM) are passed to vLLM as they are, and vLLM refuses the ones it does not know.
HF_TO_VLLM_SAMPLING = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "max_new_tokens": "max_tokens",
}
# vLLM's values for "no restriction", where HF generate takes None.
VLLM_NEUTRAL_SAMPLING = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0}
# A bias that removes a token from sampling (vLLM clamps logit biases to [-100, 100]).
SUPPRESS_BIAS = -100.0


def vllm_sampling_params(sampling_kwargs: dict, n: int, suppressed: Iterable[int] = (), regex: str | None = None):
    """
    vLLM `SamplingParams` fields for HF-style sampling arguments (`RFTConfig.sampling_kwargs()`), `n` samples per
    prompt, the sampled tokens' log-probs, and a -100 logit bias on each `suppressed` token.
    """
    kwargs = dict(sampling_kwargs)
    do_sample = kwargs.pop("do_sample", True)
    params = {"n": n, "logprobs": 0}
    for name, value in kwargs.items():
        key = HF_TO_VLLM_SAMPLING.get(name, name)
        params[key] = VLLM_NEUTRAL_SAMPLING.get(key) if value is None else value
    if not do_sample:
        params["temperature"] = 0.0
    params = {key: value for key, value in params.items() if value is not None}
    suppressed = sorted(set(suppressed))
    if suppressed:
        params["logit_bias"] = {**dict.fromkeys(suppressed, SUPPRESS_BIAS), **params.get("logit_bias", {})}
    if regex is not None:
        params["structured_outputs"] = {"regex": regex}
    return params


def openai_messages(messages: list[dict], media: dict[str, list]) -> list[dict]:
    """
    A prompt's chat messages in the OpenAI format vLLM's server reads: each `{"type": "image"}` part becomes an
    `image_url` part holding the next loaded image as a PNG data URL, each audio part an `input_audio` part (WAV).
    Video is refused: vLLM's server takes videos by URL only.
    """
    import base64
    import io

    if media.get("video"):
        raise ValueError("vllm_mode='server' does not take video prompts in this version; use vllm_mode='colocate'.")
    images, audios = iter(media.get("image", [])), iter(media.get("audio", []))
    converted = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            converted.append({"role": message["role"], "content": content})
            continue
        parts = []
        for part in content:
            kind = part.get("type")
            if kind == "image":
                buffer = io.BytesIO()
                next(images).save(buffer, format="PNG")
                url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
                parts.append({"type": "image_url", "image_url": {"url": url}})
            elif kind == "audio":
                import soundfile

                waveform, rate = next(audios)
                buffer = io.BytesIO()
                soundfile.write(buffer, waveform, rate, format="WAV")
                data = base64.b64encode(buffer.getvalue()).decode()
                parts.append({"type": "input_audio", "input_audio": {"data": data, "format": "wav"}})
            elif kind == "text":
                parts.append({"type": "text", "text": part.get("text", "")})
            else:
                raise ValueError(f"Message part of type {kind!r} cannot be sent to the vLLM server.")
        converted.append({"role": message["role"], "content": parts})
    return converted


class PromptMismatchError(ValueError):
    """The rollout engine tokenized a prompt differently from the trainer's processor."""


class VLLMEngine(RolloutEngine):
    """
    What both vLLM modes share: prompts in, padded completions and log-probs out, the prompt check.

    Args:
        tokenizer: the trainer's tokenizer (to name tokens in errors).
        eos_token_id (`int` or `list[int]`), pad_token_id (`int`): the policy's.
        suppressed_token_ids (`list[int]`): media tokens never to sample ([`Actor.media_token_ids`]).
        structured_outputs_regex (`str`, *optional*): TRL's `vllm_structured_outputs_regex`.
        audio_sampling_rate (`int`, *optional*): the rate the collator loads audio at (the processor's).
        chat_template_kwargs (`dict`, *optional*): the collator's, for the prompts a server renders itself.
        seed (`int`, *optional*, defaults to `0`): this engine's sampling seed (the run's, offset per process): each
            prompt's seed derives from it, the rollout's step, the call's place in the rollout and the prompt's in
            the call ([`seed_rollout`]).
    """

    name = "vllm"

    def __init__(
        self,
        tokenizer,
        eos_token_id,
        pad_token_id: int,
        suppressed_token_ids,
        structured_outputs_regex=None,
        audio_sampling_rate: int | None = None,
        chat_template_kwargs: dict | None = None,
        seed: int = 0,
    ):
        self.tokenizer = tokenizer
        self.seed = seed
        self.seeded = True  # False where the engine cannot take per-request seeds (see VLLMServerEngine)
        self._rollout_seed: list[int] | None = None  # [seed, step, stream] of the rollout being sampled
        self._calls = 0  # generate calls in that rollout (turns, dynamic-sampling rounds)
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.audio_sampling_rate = audio_sampling_rate
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        self.suppressed_token_ids = list(suppressed_token_ids)
        self.structured_outputs_regex = structured_outputs_regex
        self.synced_version: int | None = None
        self.syncs = 0

    # ----------------------------------------------------------------------------------------- generation

    def seed_rollout(self, step: int, stream: int = 0) -> None:
        self._rollout_seed, self._calls = [self.seed, step, stream], 0

    def _prompt_seeds(self, count: int) -> list[int] | None:
        """
        The next call's sampling seed of each of its `count` prompts (vLLM's per-request `seed`, which gives a
        request's n samples seeds of their own), or `None` before any [`seed_rollout`] (the engine's own random
        stream). One seed per prompt, never one per call: prompts sampled from one seed draw the same noise, and a
        random policy's nearly uniform distributions then give them the same completions.
        """
        if self._rollout_seed is None or not self.seeded:
            return None
        entropy = [value % 2**32 for value in (*self._rollout_seed, self._calls)]
        self._calls += 1
        return [int(word >> 1) for word in np.random.SeedSequence(entropy).generate_state(count)]  # 31-bit seeds

    def generate(self, batch: PromptBatch, n: int, sampling_kwargs: dict) -> Generation:
        params = vllm_sampling_params(sampling_kwargs, n, self.suppressed_token_ids, self.structured_outputs_regex)
        prompts = [ids[mask.bool()].tolist() for ids, mask in zip(batch.input_ids, batch.attention_mask)]
        media = batch.sample_media or [{} for _ in prompts]
        messages = batch.prompt_messages or [None for _ in prompts]
        requests = [
            {"prompt": text, "multi_modal_data": self._multi_modal_data(items), "messages": chat}
            if items
            else {"prompt_token_ids": ids}
            for ids, text, items, chat in zip(prompts, batch.prompt_texts, media, messages)
        ]
        seeds = self._prompt_seeds(len(requests))
        if seeds is not None:
            for request, seed in zip(requests, seeds):
                request["seed"] = seed
        outputs = self._generate(requests, params)  # per prompt: (prompt ids, [(completion ids, log-probs)] * n)
        completions, log_probs = [], []
        for index, ((engine_prompt, samples), ours) in enumerate(zip(outputs, prompts)):
            if engine_prompt != ours:
                raise PromptMismatchError(self._describe_mismatch(index, ours, engine_prompt))
            if len(samples) != n:
                raise RuntimeError(f"vLLM returned {len(samples)} completions for prompt {index}, expected {n}.")
            for tokens, scores in samples:
                completions.append(list(tokens))
                log_probs.append([float("nan") if s is None else s for s in scores])
        return pad_completions(
            batch.input_ids.repeat_interleave(n, dim=0),
            batch.attention_mask.repeat_interleave(n, dim=0),
            completions,
            log_probs,
            self.eos_token_id,
            self.pad_token_id,
        )

    def _describe_mismatch(self, index: int, ours: list[int], theirs: list[int]) -> str:
        position = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
        window = slice(max(position - 2, 0), position + 3)
        tokens = self.tokenizer.convert_ids_to_tokens
        return (
            f"Prompt {index} of the batch: vLLM's prompt token ids differ from the trainer's processor's at position "
            f"{position} ({len(theirs)} tokens vs {len(ours)}; vLLM {tokens(theirs[window])} vs trainer "
            f"{tokens(ours[window])}). The engine would sample from another "
            "prompt than the one trained on (a different media-token expansion or special tokens). Give vLLM the "
            "same processor settings as the trainer (the model directory's processor config), or set use_vllm=False."
        )

    def _multi_modal_data(self, items: dict[str, list]) -> dict:
        """vLLM's `multi_modal_data` for one prompt's loaded media: images and videos as loaded, audio as
        `(waveform, sampling rate)` pairs."""
        data = {kind: list(values) for kind, values in items.items()}
        if "video" in data:
            data["video"] = [(frames, self._video_metadata(frames)) for frames in data["video"]]
        if "audio" in data:
            data["audio"] = [(waveform, self.audio_sampling_rate) for waveform in data["audio"]]
        return data

    @staticmethod
    def _video_metadata(frames) -> dict:
        """
        What vLLM's video processing reads beside the frames: the frames as given (already sampled by the collator,
        not to be sampled again), at transformers' default rate for frames without metadata (24 per second), so that
        both processors compute the same timestamps; the prompt-id check holds them to it.
        """
        count = len(frames)
        return {
            "fps": 24.0,
            "total_num_frames": count,
            "frames_indices": list(range(count)),
            "duration": count / 24.0,
            "do_sample_frames": False,
        }

    def _generate(self, requests: list[dict], params: dict) -> list[tuple[list[int], list[tuple[list, list]]]]:
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------- weights

    def sync_weights(self, model: nn.Module, version: int) -> bool:
        if self.synced_version == version:
            return False
        start = time.perf_counter()
        self._load_weights(iter_checkpoint_weights(model))
        self.synced_version = version
        self.syncs += 1
        logger.debug("vLLM weights synced to step %d in %.2f s", version, time.perf_counter() - start)
        return True

    def _load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        raise NotImplementedError


class VLLMColocateEngine(VLLMEngine):
    """
    An in-process `vllm.LLM` beside the trainer (TRL's `vllm_mode="colocate"`).

    Args:
        model_path (`str`): a directory (or Hub id) holding the model's config, weights and processor.
        llm_kwargs (`dict`): `vllm.LLM` arguments (`dtype`, `gpu_memory_utilization`, `max_model_len`,
            `model_impl`, `enable_sleep_mode`, `seed`, `tensor_parallel_size`, ...).
        num_processes (`int`, *optional*, defaults to 1): the training launch's processes.
        tp_group (`torch.distributed.ProcessGroup`, *optional*): with `tensor_parallel_size > 1`, the processes that
            share this engine (each holds a shard); they generate their prompts together, each keeping its own.
        others: see [`VLLMEngine`].
    """

    def __init__(self, model_path: str, llm_kwargs: dict, num_processes: int = 1, tp_group=None, **kwargs):
        super().__init__(**kwargs)
        self.tp_group = tp_group
        # The engine runs in this process, so that weights pass as tensors (an engine process cannot take them).
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM
        from vllm.engine.arg_utils import EngineArgs
        from vllm.platforms import current_platform

        if current_platform.is_cpu():
            # The model config the engine will build (no weights are read): refused here, not at the first rollout.
            check_cpu_attention(EngineArgs(model=model_path, **llm_kwargs).create_model_config())
            # A seeded request cut by chunked prefill has its generator rewound, which CPU generators cannot do
            # ("CPU Generator does not use offset"): on the CPU, prompts are prefilled whole.
            llm_kwargs = {**llm_kwargs, "enable_chunked_prefill": False}
        self.sleep_mode = bool(llm_kwargs.get("enable_sleep_mode"))
        # One process: vLLM's single-process executor. Several (a distributed launch): each process runs its own
        # engine on its own device and prompts, in the launch's process group (vLLM's external launcher, TRL's way).
        backend = "uni" if num_processes == 1 else "external_launcher"
        try:
            self.llm = LLM(
                model=model_path,
                logprobs_mode="processed_logprobs",
                distributed_executor_backend=backend,
                **llm_kwargs,
            )
        except RuntimeError as error:
            if "SHMManager" not in str(error):
                raise
            raise RuntimeError(
                f"vLLM could not create the shared memory its CPU tensor parallelism uses ({error}). Under an "
                "external launch vLLM names it the same for every run on a machine, so segments are already there: "
                f"{_cpu_shared_memory_names() or 'none left now'}. Either a run with vllm_tensor_parallel_size > 1 "
                "is active on this machine (one at a time), or an earlier one ended before releasing them: remove "
                "them (`rm /dev/shm/*cpushm*`) once no such run is active."
            ) from error
        if tp_group is not None:
            _release_cpu_shared_memory_names()
        self.max_model_len = self.llm.model_config.max_model_len
        self.sleeping = False

    def _generate(self, requests, params):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        if "structured_outputs" in params:
            params = {**params, "structured_outputs": StructuredOutputsParams(**params["structured_outputs"])}
        prompts = [{key: value for key, value in request.items() if key != "messages"} for request in requests]
        mine = slice(0, len(prompts))
        if self.tp_group is not None:
            # The group's engine shards are one engine: every process runs it on all the group's prompts (same seeds,
            # same samples) and keeps its own.
            gathered = [None] * torch.distributed.get_world_size(group=self.tp_group)
            torch.distributed.all_gather_object(gathered, prompts, group=self.tp_group)
            start = sum(len(part) for part in gathered[: torch.distributed.get_rank(group=self.tp_group)])
            mine = slice(start, start + len(prompts))
            prompts = [prompt for part in gathered for prompt in part]
        seeds = [prompt.pop("seed", None) for prompt in prompts]
        sampling = (
            [SamplingParams(**params, seed=seed) for seed in seeds]
            if any(seed is not None for seed in seeds)
            else SamplingParams(**params)
        )
        outputs = self.llm.generate(prompts, sampling, use_tqdm=False)[mine]
        return [
            (
                list(output.prompt_token_ids),
                [
                    (
                        list(sample.token_ids),
                        [_sampled_log_prob(entry, token) for entry, token in zip(sample.logprobs, sample.token_ids)],
                    )
                    for sample in output.outputs
                ],
            )
            for output in outputs
        ]

    def _load_weights(self, weights):
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        # Every cache computed with the old weights goes: the front end's media cache as well (it would otherwise
        # send a cached image by its hash to an engine that dropped it: "Encoder cache miss").
        self.llm.reset_mm_cache()
        self.llm.llm_engine.reset_encoder_cache()
        self.llm.reset_prefix_cache()

    def sleep(self) -> None:
        if self.sleep_mode and not self.sleeping:
            self.llm.sleep(level=1)
            self.sleeping = True

    def wake_up(self) -> None:
        if self.sleeping:
            self.llm.wake_up()
            self.sleeping = False

    def close(self) -> None:
        """
        Shut the engine down now, through vLLM's own shutdown of its engine core (the one its exit-time finalizer
        runs, which this detaches); the engine generates no more. Call it before the training's process group is
        destroyed (`accelerator.end_training()`): the shutdown destroys vLLM's process groups, and the default group
        when one is still there (the one vLLM started in a single process, or the launch's). Left to the
        finalizer, after `end_training` had destroyed the default group and every group with it, vLLM's teardown
        destroyed its own groups a second time and ended the process with a traceback ("Invalid process group
        specified"). A second call does nothing.
        """
        self.llm.llm_engine.engine_core.shutdown()


def check_cpu_attention(model_config) -> None:
    """
    Refuse a model whose attention vLLM's CPU build cannot run, before any rollout.

    vLLM's CPU platform runs every attention but multi-head latent attention (its own CPU MLA backend) with the
    `CPU_ATTN` backend, whose kernels exist for the head sizes the backend declares (`get_supported_head_sizes`).
    vLLM checks none of this when it builds the engine: another head size (16, the tiny Qwen2's) builds, then kills
    the first generation ("Unsupported CPU attention configuration: head_dim=16"), and a server with it.

    Args:
        model_config (`vllm.config.ModelConfig`):
            The engine's model config: vLLM's own head size (`head_dim`, else `hidden_size // num_attention_heads`
            of the text config) and MLA flag.

    Raises:
        `ValueError`: naming the model, its head dimension, the head dimensions the CPU build supports and the fix.
    """
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    if model_config.use_mla:
        return
    backend = AttentionBackendEnum.CPU_ATTN.get_class()
    head_size = model_config.get_head_size()
    if backend.supports_head_size(head_size):
        return
    architectures = ", ".join(model_config.architectures or []) or "the model"
    supported = ", ".join(map(str, backend.get_supported_head_sizes()))
    raise ValueError(
        f"{architectures} ({model_config.model}) has attention heads of dimension {head_size}, which vLLM's CPU "
        f"attention ({backend.get_name()}) cannot run: it supports head dimensions {supported}. Generate with vLLM "
        "on a GPU, use a model whose head dimension is one of those (e.g. head_dim >= 32), or leave use_vllm off "
        "(transformers' generate runs any head dimension)."
    )


def _cpu_shared_memory_names() -> list[str]:
    """vLLM's CPU tensor-parallel shared-memory segments in /dev/shm (Linux), by name."""
    return sorted(path.name for path in Path("/dev/shm").glob("*cpushm*"))


def _release_cpu_shared_memory_names() -> None:
    """
    Unlink the names of the shared memory vLLM's CPU communicators of this process's groups mapped (vLLM on CPU with
    tensor parallelism), once every process of the group has joined it (vLLM's start ends with a barrier after the
    join): the mappings stay, the names go. vLLM gives them one name per machine under an external launch, and
    releases them only in its C++ teardown, which a crash or `end_launched_process` skips: a name left behind made the
    next run on the machine fail ("create shm in SHMManager failed. errno: 17").
    """
    from vllm.distributed import parallel_state

    for group in (parallel_state.get_tp_group(), parallel_state.get_pp_group()):
        communicator = getattr(group, "device_communicator", None)
        name = getattr(getattr(communicator, "dist_module", None), "group_name", None)
        if name is None:
            continue  # no shared-memory communicator (a GPU, one process, or vLLM fell back to torch.distributed)
        for path in Path("/dev/shm").glob(f"{glob.escape(name.lstrip('/'))}_*"):
            with contextlib.suppress(FileNotFoundError):  # the group's other processes unlink the same names
                path.unlink()
            logger.debug("unlinked vLLM's shared memory %s (still mapped by the engine)", path)


def _sampled_log_prob(entry: dict | None, token: int) -> float | None:
    """The sampled token's log-prob in one position's vLLM `logprobs` dict (`None` when it holds none)."""
    if not entry or token not in entry:
        return None
    return entry[token].logprob
