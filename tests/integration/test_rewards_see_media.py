"""Inside a training run, every reward function receives every column of its own sample, media included (TRL's
contract): a plain function, the reward-model wrapper and the remote reward model, with multi-image samples."""

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import torch
from datasets import Dataset
from PIL import Image

from rft_trl import PPOTrainerVL
from rft_trl.models import RewardModel, RewardModelFunction
from rft_trl.testing import build_tiny_model, tiny_config


def _image(seed, size=(56, 56)):
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def multi_image_rows(num_rows=4):
    """Rows with 2 or 3 distinct images each and an id, so a reward can check it got its own sample's images."""
    rows = []
    for i in range(num_rows):
        count = 2 + i % 2
        content = [{"type": "image"}] * count + [{"type": "text", "text": "Which is brightest?"}]
        rows.append(
            {
                "id": i,
                "prompt": [{"role": "user", "content": content}],
                "images": [_image(10 * i + k, (56, 42 + 14 * k)) for k in range(count)],
            }
        )
    return rows


def pixels(image):
    return np.asarray(image.convert("RGB"))


def train(tmp_path, reward_funcs, rows, steps=1):
    model, processor = build_tiny_model("qwen2_5_vl")
    args = tiny_config(str(tmp_path / "out"), max_steps=steps)
    trainer = PPOTrainerVL(
        model, reward_funcs, args, train_dataset=Dataset.from_list(rows), processing_class=processor
    )
    trainer.train()
    return trainer


def test_a_reward_function_receives_its_own_samples_images(tmp_path):
    rows = multi_image_rows()
    calls = []

    def image_reward(prompts, completions, id, images, **columns):
        calls.append((list(id), list(images)))
        return [float(len(sample_images)) for sample_images in images]

    trainer = train(tmp_path, [image_reward], rows, steps=2)
    seen = [(row_id, sample) for ids, images in calls for row_id, sample in zip(ids, images)]
    # 2 steps x 2 prompts x 2 samples each.
    assert len(seen) == 8
    for row_id, sample_images in seen:
        expected = rows[row_id]["images"]
        assert len(sample_images) == len(expected)
        for received, original in zip(sample_images, expected):
            assert isinstance(received, Image.Image)
            np.testing.assert_array_equal(pixels(received), pixels(original))
    # Each reward is its sample's image count: 2 or 3, never a silent 0.
    assert {entry["reward"] for entry in trainer.state.log_history if "loss" in entry} <= {2.0, 2.5, 3.0}


def test_the_reward_model_wrapper_scores_with_the_samples_images(tmp_path):
    rows = multi_image_rows()
    reward_model, processor = build_tiny_model("qwen2_5_vl")
    wrapper = RewardModelFunction(RewardModel(reward_model), processor)
    recorded = []

    def recording_wrapper(prompts, completions, **columns):
        scores = wrapper(prompts, completions, **columns)
        recorded.append((prompts, completions, columns, scores))
        return scores

    recording_wrapper.__name__ = "reward_model"
    train(tmp_path, [recording_wrapper], rows)
    (prompts, completions, columns, scores) = recorded[0]
    assert all(np.isfinite(scores))
    # The scores are those of the samples with their images: blind (no images), the same texts score differently.
    with torch.no_grad():
        blind = wrapper([[{"role": "user", "content": "Which is brightest?"}] for _ in prompts], completions)
    assert not np.allclose(scores, blind)
    for row_id, sample_images in zip(columns["id"], columns["images"]):
        for received, original in zip(sample_images, rows[row_id]["images"]):
            np.testing.assert_array_equal(pixels(received), pixels(original))


def test_the_remote_reward_model_gets_every_image_intact(tmp_path, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    rows = multi_image_rows()
    checked, errors = [], []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            try:
                # The server's own decoding: base64 PNG -> pixels, compared with the rows it was sent for.
                for row_id, sample in zip(payload["columns"]["id"], payload["columns"]["images"]):
                    expected = rows[row_id]["images"]
                    assert len(sample) == len(expected)
                    for encoded, original in zip(sample, expected):
                        decoded = Image.open(io.BytesIO(base64.b64decode(encoded["data"])))
                        np.testing.assert_array_equal(pixels(decoded), pixels(original))
                    checked.append(row_id)
                rewards = [float(len(sample)) for sample in payload["columns"]["images"]]
            except AssertionError as error:  # reported by the test, not swallowed by the server thread
                errors.append(error)
                rewards = [float("nan")] * len(payload["completions"])  # a failed score, counted
            body = json.dumps({"rewards": rewards}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        trainer = train(tmp_path, [f"http://127.0.0.1:{server.server_address[1]}/score"], rows)
    finally:
        server.shutdown()
        server.server_close()
    assert not errors, errors
    assert len(checked) == 4  # one request: 2 prompts x 2 samples
    assert [entry["rollout/reward_failures"] for entry in trainer.state.log_history if "loss" in entry] == [0.0]
