"""A client for a reward model served over HTTP, with TRL's reward-function contract.

Protocol: the client POSTs JSON ``{"prompts": [...], "completions": [...], "columns": {name: [...]}}`` and expects
``{"rewards": [float, ...]}`` back, one score per completion. Media are encoded so that every item arrives intact
and in order, and the payload grows linearly with their number:

- a ``PIL.Image`` becomes ``{"type": "image", "format": "png", "data": <base64 PNG>}``;
- an audio dict ``{"array": ..., "sampling_rate": ...}`` (the ``datasets.Audio`` layout) becomes
  ``{"type": "audio", "format": "wav", "sampling_rate": sr, "data": <base64 WAV>}``;
- any other array or tensor becomes ``{"type": "ndarray", "dtype": ..., "shape": [...], "data": <base64 of the
  C-order bytes>}``;
- lists (several images per sample, video frames) and dicts are encoded item by item.

A score of ``null`` means the scorer does not apply to that sample: the client returns ``None``, TRL's "not
applicable", which the [`RewardScorer`] leaves out of that sample's reward. NaN or Inf marks that one sample failed:
the client returns NaN, which excludes the sample from the update. Any other malformed answer rejects the whole
request.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import numbers
import random
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import requests
import soundfile
import torch
from PIL import Image

from .errors import RemoteRewardError, RemoteRewardUnavailableError

logger = logging.getLogger(__name__)

# Keyword arguments the trainer passes to every reward function that are not dataset columns: never in the payload.
_NOT_SENT = frozenset({"trainer_state", "log_extra", "log_metric", "completion_ids"})

# Response bodies are quoted in error messages up to this many characters.
_BODY_EXCERPT_CHARS = 300
# WAV sample formats that hold each numpy dtype exactly; other dtypes are sent as float32.
_WAV_SUBTYPES = {"float64": "DOUBLE", "float32": "FLOAT", "int32": "PCM_32", "int16": "PCM_16"}
# Exceptions that say the service could not be reached or did not answer in time: worth a retry.
_TRANSIENT_ERRORS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


class RemoteRewardModel:
    """
    Scores completions by POSTing them to a reward-model server; callable like a TRL reward function.

    Transient failures (connection refused or reset, timeout, HTTP 5xx, HTTP 429) are retried with capped
    exponential backoff and jitter: the n-th wait is drawn uniformly from ``[d/2, d]`` with
    ``d = min(backoff_max, backoff_base * 2**(n-1))``, or is the server's ``Retry-After`` seconds (429 or 503),
    capped at ``backoff_max``. Retries stop after ``max_retries`` or when the next wait would end past
    ``total_budget_s`` from the request's start, raising [`RemoteRewardUnavailableError`]; a request thus ends
    within ``total_budget_s + timeout``. Any other 4xx fails at
    once with [`RemoteRewardError`] showing the status and the start of the body, as does a malformed answer.
    Header values (an ``Authorization`` token, say) are sent but never logged or shown.

    Args:
        url (`str`): the endpoint, ``http://`` or ``https://``.
        timeout (`float`, *optional*, defaults to `60.0`): seconds to wait for a connection and for the answer of
            each attempt.
        max_retries (`int`, *optional*, defaults to `5`): retries after the first attempt of a request.
        backoff_base (`float`, *optional*, defaults to `1.0`): the first backoff, in seconds.
        backoff_max (`float`, *optional*, defaults to `30.0`): the cap on one backoff, ``Retry-After`` included.
        total_budget_s (`float`, *optional*, defaults to `300.0`): seconds one request may spend, retries and
            waits included.
        batch_size (`int`, *optional*, defaults to `None`): samples per request; `None` sends the batch at once.
        headers (`dict[str, str]`, *optional*, defaults to `None`): extra HTTP headers, e.g. ``Authorization``.
        sleep (`Callable[[float], None]`, *optional*, defaults to `time.sleep`): how to wait between attempts.
        clock (`Callable[[], float]`, *optional*, defaults to `time.monotonic`): the clock of the time budget.
        rng (`random.Random`, *optional*, defaults to `None`): the jitter's source; a fresh unseeded one if `None`.
    """

    def __init__(
        self,
        url: str,
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff_base: float = 1.0,
        backoff_max: float = 30.0,
        total_budget_s: float = 300.0,
        batch_size: int | None = None,
        headers: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {_redact_url(url)!r}")
        if timeout <= 0 or total_budget_s <= 0:
            raise ValueError(f"timeout and total_budget_s must be positive, got {timeout} and {total_budget_s}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be non-negative, got {max_retries}")
        if not 0 < backoff_base <= backoff_max:
            raise ValueError(f"need 0 < backoff_base <= backoff_max, got {backoff_base} and {backoff_max}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be at least 1 or None, got {batch_size}")
        self.url = url
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.total_budget_s = total_budget_s
        self.batch_size = batch_size
        self._headers = {"Content-Type": "application/json", **(headers or {})}
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()
        self._session = requests.Session()

    def __repr__(self) -> str:
        # Header names only: their values are secrets as often as not.
        return (
            f"{type(self).__name__}(url={_redact_url(self.url)!r}, timeout={self.timeout}, "
            f"max_retries={self.max_retries}, batch_size={self.batch_size}, headers={sorted(self._headers)})"
        )

    def __call__(self, prompts: Sequence, completions: Sequence, **columns: Any) -> list[float | None]:
        """
        Score a batch.

        Args:
            prompts (`list`): N prompts, strings or chat-message lists.
            completions (`list`): N completions, strings or chat-message lists.
            **columns (`list`): the other dataset columns, N values each; media are encoded as described in the
                module docstring. The trainer's own keyword arguments (``trainer_state``, ``log_extra``,
                ``log_metric``, ``completion_ids``) are not sent.

        Returns:
            `list[float | None]`: N scores; `None` where the server returned ``null`` (not applicable), NaN where it
            returned NaN or Inf (a failed sample).
        """
        columns = {key: values for key, values in columns.items() if key not in _NOT_SENT}
        num_samples = len(completions)
        if len(prompts) != num_samples or any(len(values) != num_samples for values in columns.values()):
            raise ValueError(f"prompts and every column must have {num_samples} values, one per completion")
        step = self.batch_size or max(num_samples, 1)
        rewards: list[float | None] = []
        for start in range(0, num_samples, step):
            chunk = slice(start, start + step)
            body = encode_payload(prompts[chunk], completions[chunk], {k: v[chunk] for k, v in columns.items()})
            rewards.extend(self._request(body, len(completions[chunk])))
        return rewards

    def _request(self, body: bytes, num_samples: int) -> list[float | None]:
        """POST one payload, retrying transient failures within the budget, and parse the answer."""
        deadline = self._clock() + self.total_budget_s
        shown_url = _redact_url(self.url)
        attempt = 0
        while True:
            attempt += 1
            retry_after = None
            try:
                response = self._session.post(self.url, data=body, headers=self._headers, timeout=self.timeout)
            except _TRANSIENT_ERRORS as error:
                last_error = f"{type(error).__name__}: {error}"
            else:
                if response.ok:
                    return _parse_rewards(response, num_samples, shown_url)
                last_error = f"HTTP {response.status_code}: {_excerpt(response.content)!r}"
                if response.status_code != 429 and response.status_code < 500:
                    raise RemoteRewardError(f"remote reward model at {shown_url} answered {last_error}")
                if response.status_code in (429, 503):
                    retry_after = _parse_retry_after(response.headers.get("Retry-After"))
            if attempt > self.max_retries:
                raise RemoteRewardUnavailableError(
                    f"remote reward model at {shown_url} failed {attempt} attempts (max_retries="
                    f"{self.max_retries}); last error: {last_error}"
                )
            delay = self._backoff(attempt, retry_after)
            if self._clock() + delay > deadline:
                raise RemoteRewardUnavailableError(
                    f"remote reward model at {shown_url} failed {attempt} attempts within total_budget_s="
                    f"{self.total_budget_s}; last error: {last_error}"
                )
            logger.warning(
                "remote reward model at %s: attempt %d failed (%s); retrying in %.2f s",
                shown_url,
                attempt,
                last_error,
                delay,
            )
            self._sleep(delay)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait after the `attempt`-th failure: the server's Retry-After or jittered exponential."""
        if retry_after is not None:
            return min(retry_after, self.backoff_max)
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
        # Jitter keeps many clients that failed together from retrying together; the floor of half the ceiling
        # keeps the wait growing.
        return self._rng.uniform(ceiling / 2, ceiling)


def encode_payload(prompts: Sequence, completions: Sequence, columns: Mapping[str, Sequence]) -> bytes:
    """
    The JSON request body for a batch, media encoded as described in the module docstring.

    Args:
        prompts (`list`): the prompts.
        completions (`list`): the completions.
        columns (`dict[str, list]`): the other dataset columns.

    Returns:
        `bytes`: UTF-8 JSON.

    Raises:
        TypeError: for a value that has no JSON encoding, naming where it is.
        ValueError: for a NaN or Inf float, which JSON cannot carry.
    """
    payload = {
        "prompts": _to_json(list(prompts), "prompts"),
        "completions": _to_json(list(completions), "completions"),
        "columns": {str(key): _to_json(list(values), f"columns[{key!r}]") for key, values in columns.items()},
    }
    return json.dumps(payload, allow_nan=False, separators=(",", ":")).encode("utf-8")


def _to_json(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, Image.Image):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return {"type": "image", "format": "png", "data": _b64(buffer.getvalue())}
    if isinstance(value, Mapping):
        if "array" in value and "sampling_rate" in value:
            return _encode_audio(value["array"], value["sampling_rate"])
        return {str(key): _to_json(item, f"{where}[{key!r}]") for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, torch.Tensor):
        # numpy has no bfloat16; float32 holds every bfloat16 value exactly.
        tensor = value.detach().cpu()
        return _to_json(tensor.float().numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy(), where)
    if isinstance(value, np.ndarray):
        data = np.ascontiguousarray(value)
        return {"type": "ndarray", "dtype": str(data.dtype), "shape": list(data.shape), "data": _b64(data.tobytes())}
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot encode {type(value).__name__} at {where} for the remote reward model")


def _encode_audio(array: Any, sampling_rate: int) -> dict:
    samples = np.asarray(array.detach().cpu() if isinstance(array, torch.Tensor) else array)
    subtype = _WAV_SUBTYPES.get(str(samples.dtype))
    if subtype is None:
        samples, subtype = samples.astype(np.float32), "FLOAT"
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, int(sampling_rate), subtype=subtype, format="WAV")
    return {"type": "audio", "format": "wav", "sampling_rate": int(sampling_rate), "data": _b64(buffer.getvalue())}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _parse_rewards(response: requests.Response, num_samples: int, shown_url: str) -> list[float | None]:
    """The scores in a 2xx answer, or RemoteRewardError saying what is wrong with it."""
    prefix = f"remote reward model at {shown_url} answered HTTP {response.status_code} with"
    try:
        # Python's json reads the NaN / Infinity literals that many servers emit for a failed score, and finds the
        # UTF-8/16/32 encoding of the bytes itself (requests' guess for a body without a charset is slow).
        body = json.loads(response.content)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RemoteRewardError(f"{prefix} malformed JSON ({error}): {_excerpt(response.content)!r}") from error
    if not isinstance(body, dict) or "rewards" not in body:
        raise RemoteRewardError(f"{prefix} no 'rewards' key: {_excerpt(response.content)!r}")
    rewards = body["rewards"]
    if not isinstance(rewards, list):
        raise RemoteRewardError(f"{prefix} 'rewards' of type {type(rewards).__name__}, expected a list")
    if len(rewards) != num_samples:
        raise RemoteRewardError(f"{prefix} {len(rewards)} rewards for {num_samples} samples")
    parsed: list[float | None] = []
    for index, value in enumerate(rewards):
        if value is None:
            parsed.append(None)
        elif isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise RemoteRewardError(f"{prefix} a non-numeric reward {_excerpt(repr(value))} at index {index}")
        else:
            parsed.append(float(value) if math.isfinite(value) else math.nan)
    return parsed


def _parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds; the HTTP-date form is not supported and falls back to the backoff."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _excerpt(body: bytes | str) -> str:
    """The start of a response body (or of a value's repr) as text, for error messages."""
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    return text if len(text) <= _BODY_EXCERPT_CHARS else text[:_BODY_EXCERPT_CHARS] + "..."


def _redact_url(url: str) -> str:
    """The URL without any ``user:password@`` part."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
