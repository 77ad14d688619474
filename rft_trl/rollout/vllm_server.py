"""
vLLM's OpenAI server as the rollout engine (TRL's `vllm_mode="server"`): prompts over HTTP (token ids, or chat
messages with their media inlined), weights through a directory the server reloads from. What both vLLM modes share
lives in `rft_trl.rollout.vllm`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .vllm import VLLMEngine, check_cpu_attention, openai_messages

logger = logging.getLogger(__name__)

__all__ = ["VLLMServerEngine"]


class VLLMServerEngine(VLLMEngine):
    """
    A vLLM server (`vllm serve`, TRL's `vllm_mode="server"`), reached over HTTP.

    Args:
        base_url (`str`): e.g. `http://localhost:8000`.
        timeout (`float`): seconds to wait for the server to answer at start (TRL's `vllm_server_timeout`).
        sync_dir (`str`, *optional*): where weights are written for the server to load; a fresh temporary directory
            by default (the server must see the same path).
        need_log_probs (`bool`): refuse a server not started with `--logprobs-mode processed_logprobs`.
        is_main_process (`bool`): whether this process sends the weights (the others take part in gathering them
            under ZeRO-3 and wait).
        others: see [`VLLMEngine`].
    """

    def __init__(
        self,
        base_url: str,
        timeout: float,
        sync_dir: str | None,
        need_log_probs: bool = True,
        is_main_process: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.is_main_process = is_main_process
        import requests

        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        self._wait_for_server(timeout)
        self.model = self._get("/v1/models")["data"][0]["id"]
        config = self._server_config()
        self._check_logprobs_mode(config, need_log_probs)
        self._check_cpu_attention(config)
        self._check_seeding(config)
        self.max_model_len = (config.get("model_config") or {}).get("max_model_len")
        self.sync_dir = Path(sync_dir) if sync_dir is not None else Path(tempfile.mkdtemp(prefix="rft_trl_vllm_sync_"))
        self.sync_dir.mkdir(parents=True, exist_ok=True)

    def _wait_for_server(self, timeout: float) -> None:
        import requests

        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.session.get(f"{self.base_url}/health", timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise ConnectionError(
                    f"No vLLM server answered at {self.base_url}/health within vllm_server_timeout={timeout} s. Start "
                    "one with `VLLM_SERVER_DEV_MODE=1 vllm serve <model> --logprobs-mode processed_logprobs` (see the "
                    "README), or check vllm_server_base_url / vllm_server_host / vllm_server_port."
                )
            time.sleep(1.0)

    def _get(self, path: str, **kwargs) -> dict:
        response = self.session.get(f"{self.base_url}{path}", **kwargs)
        self._raise_for(response, path)
        return response.json()

    def _post(self, path: str, **kwargs) -> dict | None:
        response = self.session.post(f"{self.base_url}{path}", **kwargs)
        self._raise_for(response, path)
        return response.json() if response.content else None

    @staticmethod
    def _raise_for(response, path: str) -> None:
        if response.status_code == 404 and (path in ("/collective_rpc", "/server_info") or path.startswith("/reset_")):
            raise RuntimeError(
                f"The vLLM server does not serve {path}: start it with VLLM_SERVER_DEV_MODE=1 (weight sync needs it)."
            )
        if response.status_code != 200:
            raise RuntimeError(f"vLLM server request {path} failed ({response.status_code}): {response.text[:2000]}")

    def _server_config(self) -> dict:
        """The server's `VllmConfig`, as its `/server_info` gives it (a dict of its sub-configs)."""
        info = self._get("/server_info", params={"config_format": "json"})
        config = info.get("vllm_config", info)
        return json.loads(config) if isinstance(config, str) else config

    @staticmethod
    def _check_logprobs_mode(config: dict, need_log_probs: bool) -> None:
        mode = (config.get("model_config") or {}).get("logprobs_mode")
        if need_log_probs and mode != "processed_logprobs":
            raise ValueError(
                f"The vLLM server reports logprobs_mode={mode!r}: its log-probs would not be the ones the trainer "
                "recomputes (after temperature), biasing the mismatch correction. Restart it with "
                "`--logprobs-mode processed_logprobs`."
            )

    def _check_seeding(self, config: dict) -> None:
        """A CPU server with chunked prefill would fail on a seeded request it cuts (its CPU generators cannot be
        rewound): sample unseeded there, and say so."""
        cpu = str((config.get("device_config") or {}).get("device")) == "cpu"
        if cpu and (config.get("scheduler_config") or {}).get("enable_chunked_prefill", True):
            self.seeded = False
            logger.warning(
                "The vLLM server at %s runs on the CPU with chunked prefill, which fails on per-request seeds: its "
                "samples are drawn unseeded, so a resumed or async run does not draw the completions the "
                "uninterrupted synchronous run would. Restart it with `--no-enable-chunked-prefill` for seeded, "
                "reproducible rollouts.",
                self.base_url,
            )

    def _check_cpu_attention(self, config: dict) -> None:
        """
        On a server running on the CPU, [`check_cpu_attention`] on the model it serves, with vLLM's model config built
        here from the server's (which needs vLLM in this environment and the model readable from here).
        """
        if str((config.get("device_config") or {}).get("device")) != "cpu":
            return
        if importlib.util.find_spec("vllm") is None:
            logger.info(
                "The vLLM server at %s runs on the CPU; the head dimension of its attention is not checked here (no "
                "vLLM in this environment): one its CPU attention cannot run fails the first rollout.",
                self.base_url,
            )
            return
        from vllm.config import ModelConfig

        served = config.get("model_config") or {}
        try:
            model_config = ModelConfig(
                model=served.get("model") or self.model,
                revision=served.get("revision"),
                trust_remote_code=bool(served.get("trust_remote_code")),
            )
        except (OSError, ValueError) as error:
            logger.info("The served model's config cannot be read here to check its head dimension: %s", error)
            return
        check_cpu_attention(model_config)

    def _generate(self, requests, params):
        """Text prompts in one `/v1/completions` call (token ids in, as TRL does), or one each when seeded; prompts
        with media one `/v1/chat/completions` call each, their messages with the media inlined (vLLM renders and
        processes them)."""
        outputs: list = [None] * len(requests)
        text = [i for i, request in enumerate(requests) if "multi_modal_data" not in request]
        if text and "seed" not in requests[text[0]]:
            for i, output in zip(text, self._complete([requests[i]["prompt_token_ids"] for i in text], params)):
                outputs[i] = output
        # Seeded prompts one request each (a request has one seed), and prompts with media (one chat each).
        single = [i for i in range(len(requests)) if outputs[i] is None]
        if single:
            with ThreadPoolExecutor(max_workers=min(len(single), 16)) as pool:
                for i, output in zip(single, pool.map(lambda i: self._one(requests[i], params), single)):
                    outputs[i] = output
        return outputs

    def _one(self, request: dict, params: dict):
        """One prompt's request, with its own seed if it has one."""
        if "seed" in request:
            params = {**params, "seed": request["seed"]}
        if "multi_modal_data" in request:
            return self._chat(request, params)
        return self._complete([request["prompt_token_ids"]], params)[0]

    def _complete(self, prompts: list[list[int]], params: dict) -> list:
        payload = {
            "model": self.model,
            "prompt": prompts,
            "return_token_ids": True,
            "return_tokens_as_token_ids": True,
            **self._payload_params(params),
        }
        choices = self._post("/v1/completions", json=payload)["choices"]
        n = params["n"]
        if len(choices) != n * len(prompts):
            raise RuntimeError(f"vLLM returned {len(choices)} completions for {len(prompts)} prompts x n={n}.")
        choices = sorted(choices, key=lambda choice: choice["index"])  # index = prompt * n + sample
        outputs = []
        for start in range(0, len(choices), n):
            group = choices[start : start + n]
            samples = [(choice["token_ids"], choice["logprobs"]["token_logprobs"]) for choice in group]
            outputs.append((group[0]["prompt_token_ids"], samples))
        return outputs

    def _chat(self, request: dict, params: dict):
        if request.get("messages") is None:
            raise ValueError("A prompt with media reached the vLLM server engine without its chat messages.")
        payload = {
            "model": self.model,
            "messages": openai_messages(request["messages"], request["multi_modal_data"]),
            "add_generation_prompt": True,
            "return_token_ids": True,
            **self._payload_params(params),
            "logprobs": True,
            "top_logprobs": 0,
        }
        if self.chat_template_kwargs:
            payload["chat_template_kwargs"] = self.chat_template_kwargs
        response = self._post("/v1/chat/completions", json=payload)
        choices = sorted(response["choices"], key=lambda choice: choice["index"])
        samples = [
            (choice["token_ids"], [entry["logprob"] for entry in (choice["logprobs"] or {}).get("content") or []])
            for choice in choices
        ]
        return response["prompt_token_ids"], samples

    @staticmethod
    def _payload_params(params: dict) -> dict:
        payload = dict(params)
        if "logit_bias" in payload:
            payload["logit_bias"] = {str(token): bias for token, bias in payload["logit_bias"].items()}
        return payload

    def _load_weights(self, weights):
        from safetensors.torch import save_file

        tensors = {name: tensor.contiguous() for name, tensor in weights}  # every process reads (ZeRO-3 gathers)
        if not self.is_main_process:
            return
        partial = self.sync_dir / "model.safetensors.partial"
        save_file(tensors, str(partial), metadata={"format": "pt"})
        partial.replace(self.sync_dir / "model.safetensors")
        call = {"method": "reload_weights", "kwargs": {"weights_path": str(self.sync_dir)}}
        self._post("/collective_rpc", json=call)
        # Every cache computed with the old weights goes, the front end's media cache too (see the colocated engine).
        for cache in ("/reset_mm_cache", "/reset_encoder_cache", "/reset_prefix_cache"):
            self._post(cache)

    def close(self) -> None:
        self.session.close()
