"""RemoteRewardModel against a scripted local HTTP server: media round trips, retries, budgets and rejections.

Every server listens on 127.0.0.1 on a free port, runs in a daemon thread and is shut down by the `serve`
fixture. Waits between retries go through an injected fake clock, so the only real waiting is the one test that
hangs past a 0.2 s timeout.
"""

import base64
import io
import json
import logging
import math
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from rft_trl.rewards import (
    BatchRewardError,
    RemoteRewardError,
    RemoteRewardModel,
    RemoteRewardUnavailableError,
    RewardFailureError,
    RewardScorer,
    encode_payload,
)

# ---------------------------------------------------------------------------------------------------------------
# A scripted server
# ---------------------------------------------------------------------------------------------------------------


def reply(status, body, headers=None):
    """A step answering `status` with `body` (a dict is sent as JSON, a str as is)."""

    def step(handler, payload):
        text = json.dumps(body) if isinstance(body, dict) else body
        handler.send_response(status)
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(text.encode())))
        handler.end_headers()
        handler.wfile.write(text.encode())

    return step


def hang(seconds):
    """A step that answers nothing for `seconds`, then a 200 the client has stopped waiting for."""

    def step(handler, payload):
        time.sleep(seconds)
        reply(200, {"rewards": [0.0] * len(payload["completions"])})(handler, payload)

    return step


def score(fn):
    """A step answering 200 with ``{"rewards": fn(payload)}``."""

    def step(handler, payload):
        reply(200, {"rewards": fn(payload)})(handler, payload)

    return step


class ScriptedServer:
    """Answers the n-th POST with the n-th step; records every request's headers and raw body."""

    def __init__(self, steps, port=0):
        self.steps = list(steps)
        self.requests = []
        self.errors = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                server.requests.append((dict(self.headers), body))
                if not server.steps:
                    server.errors.append("more requests than scripted steps")
                    reply(500, "script exhausted")(self, None)
                    return
                server.steps.pop(0)(self, json.loads(body))

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        # A hung step writes to a socket the client has closed; that error is expected, not a test failure.
        self.httpd.handle_error = lambda request, address: None
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/score"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def serve(monkeypatch):
    """Start scripted servers; all are shut down after the test."""
    # A proxy configured in the environment must not intercept requests to the local test servers.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    servers = []

    def start(steps, port=0):
        server = ScriptedServer(steps, port)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()
    assert all(not server.errors for server in servers), [server.errors for server in servers]


class FakeTime:
    """A clock that only moves when slept on, recording every wait."""

    def __init__(self):
        self.now = 0.0
        self.sleeps = []

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def client(url, fake_time=None, **kwargs):
    fake_time = fake_time or FakeTime()
    kwargs.setdefault("timeout", 5.0)
    return RemoteRewardModel(url, sleep=fake_time.sleep, clock=fake_time.clock, rng=random.Random(0), **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Media round trips
# ---------------------------------------------------------------------------------------------------------------


def random_image(seed, size=(8, 6)):
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def decode_image(encoded):
    """The test server's own decoding: base64 -> PNG -> pixel array."""
    assert (encoded["type"], encoded["format"]) == ("image", "png")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded["data"]))))


def test_multi_image_samples_arrive_intact_and_in_order(serve):
    # Three samples with 3, 1 and 2 distinct images, plus a single-image column and a conversational prompt.
    images = [[random_image(10 * s + k) for k in range(n)] for s, n in enumerate([3, 1, 2])]
    expected_pixels = [[np.asarray(image) for image in sample] for sample in images]

    def check_and_score(payload):
        received = payload["columns"]["images"]
        assert [len(sample) for sample in received] == [3, 1, 2]
        for sample, expected in zip(received, expected_pixels):
            for encoded, pixels in zip(sample, expected):
                np.testing.assert_array_equal(decode_image(encoded), pixels)
        # Each image must be distinct, so that a swapped order would have failed the comparison above.
        flat = [pixels.tobytes() for sample in expected_pixels for pixels in sample]
        assert len(set(flat)) == len(flat)
        return [float(len(sample)) for sample in received]

    server = serve([score(check_and_score)])
    prompts = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "colour?"}]}]] * 3
    rewards = client(server.url)(prompts, ["red", "blue", "green"], images=images, answer=["red", "red", "red"])
    assert rewards == [3.0, 1.0, 2.0]
    payload = json.loads(server.requests[0][1])
    assert payload["prompts"] == prompts
    assert payload["completions"] == ["red", "blue", "green"]
    assert payload["columns"]["answer"] == ["red", "red", "red"]


def test_audio_arrays_and_tensors_arrive_intact(serve):
    waves = [np.random.default_rng(i).uniform(-1, 1, size=1600 * (i + 1)).astype(np.float32) for i in range(2)]
    frames = torch.arange(2 * 3 * 4, dtype=torch.uint8).reshape(2, 3, 4)
    halves = torch.tensor([0.5, -1.25], dtype=torch.bfloat16)

    def check_and_score(payload):
        for encoded, wave in zip(payload["columns"]["audio"], waves):
            assert (encoded["type"], encoded["format"], encoded["sampling_rate"]) == ("audio", "wav", 16000)
            decoded, rate = soundfile.read(io.BytesIO(base64.b64decode(encoded["data"])), dtype="float32")
            assert rate == 16000
            np.testing.assert_array_equal(decoded, wave)
        video = payload["columns"]["video"][0]
        assert (video["type"], video["dtype"], video["shape"]) == ("ndarray", "uint8", [2, 3, 4])
        assert base64.b64decode(video["data"]) == bytes(range(24))
        halves_out = payload["columns"]["halves"][0]
        assert halves_out["dtype"] == "float32"
        np.testing.assert_array_equal(np.frombuffer(base64.b64decode(halves_out["data"]), np.float32), [0.5, -1.25])
        return [1.0, 2.0]

    server = serve([score(check_and_score)])
    audio = [{"array": wave, "sampling_rate": 16000} for wave in waves]
    rewards = client(server.url)(["p", "p"], ["a", "b"], audio=audio, video=[frames, frames], halves=[halves] * 2)
    assert rewards == [1.0, 2.0]


def test_payload_grows_linearly_with_the_number_of_images(serve):
    # The same image repeated k times: each copy must cost exactly the same number of bytes, so the payload
    # size is a + b * k; a quadratic encoding or a dropped / merged copy would break the equalities below.
    image = random_image(0, size=(28, 28))
    counts = [1, 2, 4]

    def check_and_score(payload):
        for encoded in payload["columns"]["images"][0]:
            np.testing.assert_array_equal(decode_image(encoded), np.asarray(image))
        return [0.0]

    server = serve([score(check_and_score) for _ in counts])
    remote = client(server.url)
    for k in counts:
        remote(["p"], ["c"], images=[[image] * k])
    sizes = [len(body) for _, body in server.requests]
    assert [len(json.loads(body)["columns"]["images"][0]) for _, body in server.requests] == counts
    per_image = sizes[1] - sizes[0]
    assert sizes[2] - sizes[1] == 2 * per_image
    # Each image costs its base64 PNG plus a few dozen bytes of JSON framing.
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    png_b64 = len(base64.b64encode(buffer.getvalue()))
    assert png_b64 < per_image < png_b64 + 100


def test_encode_payload_rejects_what_json_cannot_carry():
    with pytest.raises(TypeError, match=r"cannot encode object at columns\['meta'\]\[0\]\['x'\]"):
        encode_payload(["p"], ["c"], {"meta": [{"x": object()}]})
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        encode_payload(["p"], ["c"], {"weight": [float("nan")]})


# ---------------------------------------------------------------------------------------------------------------
# Retries
# ---------------------------------------------------------------------------------------------------------------


def test_5xx_is_retried_with_capped_jittered_backoff(serve):
    steps = [reply(503, "busy"), reply(502, "gateway"), reply(500, "oops"), score(lambda p: [0.5])]
    server = serve(steps + list(steps))
    delays = []
    for _ in range(2):
        fake_time = FakeTime()
        remote = client(server.url, fake_time, backoff_base=1.0, backoff_max=3.0)
        assert remote(["p"], ["c"]) == [0.5]
        delays.append(fake_time.sleeps)
    # The n-th wait is drawn from [d/2, d] with d = min(3, 1 * 2**(n-1)): 1, 2, then capped at 3.
    for delay, ceiling in zip(delays[0], [1.0, 2.0, 3.0]):
        assert ceiling / 2 <= delay <= ceiling
    # Jittered (not the bare ceilings) and reproducible with the same seed.
    assert delays[0] != [1.0, 2.0, 3.0]
    assert delays[0] == delays[1]
    assert len(server.requests) == 8


@pytest.mark.parametrize(
    ("status", "retry_after", "backoff_max", "expected_wait"),
    [
        (429, "1.5", 10.0, 1.5),  # honoured
        (429, "100", 4.0, 4.0),  # capped at backoff_max
        (503, "2", 10.0, 2.0),  # 503 may carry it too
    ],
)
def test_retry_after_is_honoured_and_capped(serve, status, retry_after, backoff_max, expected_wait):
    server = serve([reply(status, "slow down", {"Retry-After": retry_after}), score(lambda p: [1.0])])
    fake_time = FakeTime()
    assert client(server.url, fake_time, backoff_max=backoff_max)(["p"], ["c"]) == [1.0]
    assert fake_time.sleeps == [expected_wait]


def test_unparseable_retry_after_falls_back_to_backoff(serve):
    server = serve([reply(429, "slow down", {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}), score(lambda p: [1])])
    fake_time = FakeTime()
    assert client(server.url, fake_time, backoff_base=2.0)(["p"], ["c"]) == [1.0]
    assert 1.0 <= fake_time.sleeps[0] <= 2.0


def test_connection_refused_until_the_server_comes_up(serve):
    port = free_port()
    fake_time = FakeTime()

    def sleep_then_start(seconds):
        # The first wait is when the service "comes up": start the server on the port that refused us.
        fake_time.sleep(seconds)
        if len(fake_time.sleeps) == 1:
            serve([score(lambda p: [0.25, 0.75])], port=port)

    remote = RemoteRewardModel(
        f"http://127.0.0.1:{port}/score", sleep=sleep_then_start, clock=fake_time.clock, rng=random.Random(0)
    )
    assert remote(["p", "p"], ["a", "b"]) == [0.25, 0.75]
    assert len(fake_time.sleeps) == 1


def test_hang_past_the_timeout_is_retried(serve, caplog):
    server = serve([hang(0.4), score(lambda p: [1.0])])
    fake_time = FakeTime()
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="rft_trl.rewards.remote"):
        assert client(server.url, fake_time, timeout=0.2)(["p"], ["c"]) == [1.0]
    # One real 0.2 s timeout, then an immediate answer; the 0.4 s hang is not waited out.
    assert time.monotonic() - start < 2.0
    assert len(fake_time.sleeps) == 1
    assert "attempt 1 failed (ReadTimeout" in caplog.text


def test_outage_beyond_the_time_budget(serve):
    url = f"http://127.0.0.1:{free_port()}/score"
    fake_time = FakeTime()
    remote = client(url, fake_time, backoff_base=1.0, backoff_max=2.0, total_budget_s=5.0, max_retries=100)
    with pytest.raises(RemoteRewardUnavailableError) as info:
        remote(["p"], ["c"])
    message = str(info.value)
    assert message.startswith(f"remote reward model at {url} failed ")
    assert "attempts within total_budget_s=5.0; last error: ConnectionError" in message
    # The waits stayed inside the budget: waits of at most 2 s each, stopped before passing 5 s.
    assert sum(fake_time.sleeps) <= 5.0
    assert f"failed {len(fake_time.sleeps) + 1} attempts" in message
    # An outage is a whole-batch failure for the scorer.
    assert isinstance(info.value, BatchRewardError)


def test_outage_beyond_max_retries(serve):
    server = serve([reply(500, "down")] * 3)
    fake_time = FakeTime()
    message = r"failed 3 attempts \(max_retries=2\); last error: HTTP 500: 'down'"
    with pytest.raises(RemoteRewardUnavailableError, match=message):
        client(server.url, fake_time, max_retries=2)(["p"], ["c"])
    assert len(fake_time.sleeps) == 2


def test_outage_through_the_scorer_is_not_retried_sample_by_sample():
    url = f"http://127.0.0.1:{free_port()}/score"
    fake_time = FakeTime()
    scorer = RewardScorer(client(url, fake_time, max_retries=1))
    with pytest.raises(RewardFailureError, match="RemoteRewardUnavailableError"):
        scorer(["p"] * 4, ["c"] * 4)
    # One request and one retry for the whole batch, not one per sample.
    assert len(fake_time.sleeps) == 1


# ---------------------------------------------------------------------------------------------------------------
# Rejections
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 404, 413, 422])
def test_4xx_fails_fast(serve, status):
    server = serve([reply(status, "completions must be strings")])
    fake_time = FakeTime()
    with pytest.raises(RemoteRewardError) as info:
        client(server.url, fake_time)(["p"], ["c"])
    expected = f"remote reward model at {server.url} answered HTTP {status}: 'completions must be strings'"
    assert str(info.value) == expected
    assert not isinstance(info.value, BatchRewardError)
    assert len(server.requests) == 1 and fake_time.sleeps == []


def test_long_error_bodies_are_cut(serve):
    server = serve([reply(400, "x" * 5000)])
    with pytest.raises(RemoteRewardError) as info:
        client(server.url)(["p"], ["c"])
    assert "x" * 300 + "..." in str(info.value) and "x" * 301 not in str(info.value)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("<html>oops</html>", r"answered HTTP 200 with malformed JSON \(Expecting value.*\): '<html>oops</html>'"),
        ({"scores": [1.0, 2.0]}, r"with no 'rewards' key: '\{\"scores\": \[1.0, 2.0\]\}'"),
        ([1.0, 2.0], "with no 'rewards' key"),
        ({"rewards": 1.0}, "'rewards' of type float, expected a list"),
        ({"rewards": [1.0]}, "with 1 rewards for 2 samples"),
        ({"rewards": [1.0, 2.0, 3.0]}, "with 3 rewards for 2 samples"),
        ({"rewards": [1.0, "0.5"]}, "a non-numeric reward '0.5' at index 1"),
        ({"rewards": [True, 1.0]}, "a non-numeric reward True at index 0"),
        ({"rewards": [[1.0], 1.0]}, r"a non-numeric reward \[1.0\] at index 0"),
    ],
)
def test_malformed_answers_are_rejected_without_retry(serve, body, message):
    server = serve([reply(200, json.dumps(body) if not isinstance(body, str) else body)])
    fake_time = FakeTime()
    with pytest.raises(RemoteRewardError, match=message):
        client(server.url, fake_time)(["p", "p"], ["a", "b"])
    assert len(server.requests) == 1 and fake_time.sleeps == []


def test_nan_and_inf_mark_samples_failed_and_null_means_not_applicable(serve):
    server = serve([reply(200, '{"rewards": [NaN, 0.5, null, Infinity, -2]}')])
    scores = client(server.url)(["p"] * 5, list("abcde"))
    assert math.isnan(scores[0]) and math.isnan(scores[3])
    assert scores[1:3] == [0.5, None] and scores[4] == -2.0


def test_nan_through_the_scorer_excludes_the_sample_instead_of_scoring_zero(serve):
    server = serve([reply(200, '{"rewards": [0.5, NaN, 0.25]}')])
    output = RewardScorer(client(server.url))(["p"] * 3, ["a", "b", "c"])
    assert output.valid.tolist() == [True, False, True]
    torch.testing.assert_close(output.rewards, torch.tensor([0.5, float("nan"), 0.25]), equal_nan=True)
    assert output.failures == {"remote": 1}
    assert output.first_failure.message == "returned nan"


def constant_reward(prompts, completions, **columns):
    return [0.5] * len(completions)


def test_null_through_the_scorer_abstains_instead_of_failing(serve):
    server = serve([reply(200, '{"rewards": [0.5, null, 0.25]}')])
    output = RewardScorer([client(server.url), constant_reward])(["p"] * 3, ["a", "b", "c"])
    # The remote scorer does not apply to sample 1: its reward is the other function's alone.
    assert output.valid.tolist() == [True, True, True] and output.failures["remote"] == 0
    torch.testing.assert_close(output.rewards, torch.tensor([1.0, 0.5, 0.75]))


# ---------------------------------------------------------------------------------------------------------------
# Batching, headers, configuration
# ---------------------------------------------------------------------------------------------------------------


def test_batch_size_splits_requests_and_keeps_order(serve):
    server = serve([score(lambda p: [float(c) for c in p["completions"]]) for _ in range(3)])
    remote = client(server.url, batch_size=2)
    assert remote(["p"] * 5, ["1", "2", "3", "4", "5"], answer=list("vwxyz")) == [1.0, 2.0, 3.0, 4.0, 5.0]
    payloads = [json.loads(body) for _, body in server.requests]
    assert [p["completions"] for p in payloads] == [["1", "2"], ["3", "4"], ["5"]]
    assert [p["columns"]["answer"] for p in payloads] == [["v", "w"], ["x", "y"], ["z"]]


def test_headers_are_sent_but_never_shown(serve, caplog):
    secret = "Bearer s3cr3t-t0ken"
    server = serve([reply(503, "busy"), reply(403, "forbidden")])
    remote = client(server.url, headers={"Authorization": secret})
    with caplog.at_level(logging.DEBUG), pytest.raises(RemoteRewardError) as info:
        remote(["p"], ["c"])
    assert [headers["Authorization"] for headers, _ in server.requests] == [secret, secret]
    assert "HTTP 503" in caplog.text and "HTTP 403" in str(info.value)
    shown = caplog.text + str(info.value) + repr(remote)
    assert "s3cr3t" not in shown
    assert "headers=['Authorization', 'Content-Type']" in repr(remote)


def test_url_credentials_are_never_shown(serve, caplog):
    server = serve([reply(503, "busy"), reply(403, "forbidden")])
    port = server.httpd.server_address[1]
    remote = client(f"http://user:hunter2@127.0.0.1:{port}/score")
    with caplog.at_level(logging.DEBUG), pytest.raises(RemoteRewardError) as info:
        remote(["p"], ["c"])
    # requests turns URL credentials into basic auth: "user:hunter2" in base64.
    assert server.requests[0][0]["Authorization"] == "Basic " + base64.b64encode(b"user:hunter2").decode()
    assert str(info.value) == f"remote reward model at http://127.0.0.1:{port}/score answered HTTP 403: 'forbidden'"
    assert "hunter2" not in caplog.text + repr(remote)


def test_length_mismatch_is_rejected_before_any_request():
    remote = client("http://127.0.0.1:1/score")
    with pytest.raises(ValueError, match="must have 2 values, one per completion"):
        remote(["p"], ["a", "b"])
    with pytest.raises(ValueError, match="must have 2 values, one per completion"):
        remote(["p", "p"], ["a", "b"], answer=["x"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "ftp://host/score"}, "must start with http:// or https://"),
        ({"timeout": 0}, "must be positive"),
        ({"total_budget_s": -1}, "must be positive"),
        ({"max_retries": -1}, "must be non-negative"),
        ({"backoff_base": 0}, "0 < backoff_base <= backoff_max"),
        ({"backoff_base": 5, "backoff_max": 1}, "0 < backoff_base <= backoff_max"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
    ],
)
def test_invalid_configuration(kwargs, message):
    kwargs = {"url": "http://127.0.0.1:1/score", **kwargs}
    with pytest.raises(ValueError, match=message):
        RemoteRewardModel(**kwargs)


def test_trainer_keyword_arguments_are_not_sent(serve):
    server = serve([score(lambda p: [0.0] * len(p["completions"]))])
    remote = client(server.url)
    scores = remote(
        ["p"], ["c"], answer=["x"], trainer_state=object(), log_extra=print, log_metric=print, completion_ids=[[1, 2]]
    )
    assert scores == [0.0]
    assert list(json.loads(server.requests[0][1])["columns"]) == ["answer"]
