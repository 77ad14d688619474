"""rft_trl.trainers.replay_buffer_utils: seed examples, padded / packed batching and exact round-trips."""

from dataclasses import fields

import numpy as np
import pytest
import torch
from PIL import Image

from rft_trl.data.multimodal import split_processor_output
from rft_trl.testing import build_tiny_qwen2_audio, build_tiny_qwen2_vl
from rft_trl.trainers.experience import Experience, ExperienceVL
from rft_trl.trainers.replay_buffer_utils import (
    BufferItem,
    BufferItemVL,
    is_vl_experience,
    item_to_device,
    make_experience_batch,
    remove_padding_in_sequences,
    split_experience_batch,
    zero_pad_sequences,
)

# --------------------------------------------------------------------------- helpers


def extract_multimodal_inputs(processor_output):
    """The media fields of a processor's output (what a sample's `multimodal_inputs` holds)."""
    return split_processor_output(processor_output)[3]


def assert_same(actual, expected, where="item"):
    """Exact equality through dataclasses, dicts and lists; tensors must agree in dtype, shape and values."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), where
        assert actual.dtype == expected.dtype and actual.shape == expected.shape, where
        assert torch.equal(actual, expected), where
    elif isinstance(expected, (BufferItem, BufferItemVL)):
        assert type(actual) is type(expected), where
        for f in fields(expected):
            assert_same(getattr(actual, f.name), getattr(expected, f.name), f"{where}.{f.name}")
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and sorted(actual) == sorted(expected), where
        for key in expected:
            assert_same(actual[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_same(a, e, f"{where}[{i}]")
    else:
        assert actual == expected, where


def split_and_strip(batch):
    """The inverse of make_experience_batch: split, then strip a padded batch's padding (what the buffer does)."""
    items = split_experience_batch(batch)
    return items if batch.is_packed else remove_padding_in_sequences(items)


def make_item(sequences, num_actions, seed, multimodal=None, item_class=BufferItem, **vl_fields):
    """An unpadded item whose action fields cover the last `num_actions` tokens; one interior action is masked."""
    g = torch.Generator().manual_seed(seed)
    action_mask = torch.ones(num_actions, dtype=torch.bool)
    if num_actions > 2:
        action_mask[1] = False  # interior zeros are data, not padding: they must survive a round-trip
    common = {
        "sequences": sequences,
        "action_log_probs": -torch.rand(num_actions, generator=g),
        "base_action_log_probs": -torch.rand(num_actions, generator=g),
        "values": torch.randn(num_actions, generator=g),
        "returns": torch.randn(num_actions, generator=g),
        "advantages": torch.randn(num_actions, generator=g),
        "attention_mask": torch.ones_like(sequences),
        "action_mask": action_mask,
        "info": {"reward": torch.tensor(float(seed)), "response_length": torch.tensor(float(num_actions))},
        "action_entropy": torch.rand(num_actions, generator=g),
    }
    if item_class is BufferItemVL:
        return BufferItemVL(**common, **vl_fields)
    return BufferItem(**common, multimodal_inputs=multimodal or {})


def _image(height, width, seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8))


def _clip(seconds, seed):
    return (0.1 * np.random.default_rng(seed).standard_normal(16000 * seconds)).astype(np.float32)


@pytest.fixture(scope="module")
def processors():
    return {"vision": build_tiny_qwen2_vl()[1], "audio": build_tiny_qwen2_audio()[1]}


# Three samples per modality with different media counts, including one without media.
SAMPLES = {
    "text": [{}, {}, {}],
    "image": [{"images": [_image(56, 56, 0), _image(28, 56, 1)]}, {}, {"images": [_image(28, 28, 2)]}],
    "video": [
        {"videos": [[_image(28, 56, 10 + i) for i in range(4)]]},
        {"images": [_image(56, 28, 3)], "videos": [[_image(56, 56, 20 + i) for i in range(2)]]},
        {},
    ],
    "audio": [{"audio": [_clip(1, 0)]}, {}, {"audio": [_clip(2, 1), _clip(1, 2)]}],
}
PARTS = {"images": "image", "videos": "video", "audio": "audio"}


def _process(processor, samples):
    """Run the processor on prompts whose media parts match `samples`; media passed flat in prompt order."""
    texts = []
    media = {"images": [], "videos": [], "audio": []}
    for sample in samples:
        content = [{"type": PARTS[key]} for key, values in sample.items() for _ in values]
        content.append({"type": "text", "text": "describe"})
        messages = [{"role": "user", "content": content}]
        texts.append(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
        for key, values in sample.items():
            media[key].extend(values)
    kwargs = {key: values for key, values in media.items() if values}
    if media["audio"]:
        kwargs["sampling_rate"] = 16000
    return processor(text=texts, return_tensors="pt", padding=True, **kwargs)


def modality_items(modality, processors):
    """Items built from each sample processed alone, and the multimodal dict of all samples processed at once."""
    processor = processors["audio" if modality == "audio" else "vision"]
    items = []
    for i, sample in enumerate(SAMPLES[modality]):
        alone = _process(processor, [sample])
        completion = torch.arange(10, 13 + 2 * i)  # 3, 5, 7 completion tokens
        sequences = torch.cat([alone["input_ids"][0], completion])
        items.append(make_item(sequences, completion.numel(), seed=i, multimodal=extract_multimodal_inputs(alone)))
    return items, extract_multimodal_inputs(_process(processor, SAMPLES[modality]))


# --------------------------------------------------------------------------- seed examples


def test_zero_pad_sequences_seed_examples():
    sequences = [torch.tensor([1, 2, 3]), torch.tensor([4, 5]), torch.tensor([6, 7, 8, 9])]
    right = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0], [6, 7, 8, 9]])
    left = torch.tensor([[0, 1, 2, 3], [0, 0, 4, 5], [6, 7, 8, 9]])
    assert torch.equal(zero_pad_sequences(sequences, side="right"), right)
    assert torch.equal(zero_pad_sequences(sequences, side="left"), left)
    assert torch.equal(zero_pad_sequences(sequences), left)


@pytest.mark.parametrize("dtype", [torch.bool, torch.int32, torch.int64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("trailing", [(), (2,)])
def test_zero_pad_sequences_dtypes_and_shapes(dtype, trailing):
    sequences = [torch.ones(3, *trailing, dtype=dtype), torch.ones(1, *trailing, dtype=dtype)]
    padded = zero_pad_sequences(sequences, side="left")
    assert padded.dtype == dtype and padded.shape == (2, 3, *trailing)
    # Row 1 holds its single element at the end; the two positions before it are zeros.
    assert padded[1, :2].sum() == 0 and bool(padded[1, 2].all()) and bool(padded[0].all())


def test_zero_pad_sequences_errors():
    with pytest.raises(ValueError, match="Unknown padding side 'middle'"):
        zero_pad_sequences([torch.ones(2)], side="middle")
    with pytest.raises(ValueError, match="at least one sequence"):
        zero_pad_sequences([])


def test_remove_padding_seed_examples():
    padded = BufferItem(
        sequences=torch.tensor([0, 0, 1, 2, 3, 0, 0]),
        action_log_probs=torch.zeros(7),
        base_action_log_probs=None,
        values=None,
        returns=torch.zeros(7),
        advantages=torch.zeros(7),
        attention_mask=torch.tensor([0, 0, 1, 1, 1, 0, 0]),
        action_mask=torch.tensor([0, 0, 1, 1, 1, 0, 0]),
        info={},
    )
    (clean,) = remove_padding_in_sequences([padded])
    assert torch.equal(clean.sequences, torch.tensor([1, 2, 3]))
    # The input item is left as it was.
    assert torch.equal(padded.sequences, torch.tensor([0, 0, 1, 2, 3, 0, 0]))

    padded_vl = BufferItemVL(
        sequences=torch.tensor([0, 0, 4, 5, 6, 0]),
        attention_mask=torch.tensor([0, 0, 1, 1, 1, 0]),
        action_mask=torch.tensor([0, 0, 1, 1, 1, 0]),
    )
    (clean_vl,) = remove_padding_in_sequences([padded_vl])
    assert torch.equal(clean_vl.sequences, torch.tensor([4, 5, 6]))
    assert isinstance(clean_vl, BufferItemVL)


def test_remove_padding_of_a_rollout_batch_row():
    # A rollout row: prompt [7, 8] left-padded by 2, completion [20, 21] right-padded to A = 3.
    # attention_mask and action_mask end in one zero, so one position is cut from the right of both the
    # sequence and the action fields; the two leading zeros of attention_mask are cut from the sequence.
    row = BufferItem(
        sequences=torch.tensor([0, 0, 7, 8, 20, 21, 0]),
        action_log_probs=torch.tensor([-0.1, -0.2, 0.0]),
        base_action_log_probs=torch.tensor([-0.3, -0.4, 0.0]),
        values=None,
        returns=torch.tensor([1.0, 2.0, 0.0]),
        advantages=torch.tensor([0.5, 0.6, 0.0]),
        attention_mask=torch.tensor([0, 0, 1, 1, 1, 1, 0]),
        action_mask=torch.tensor([True, True, False]),
        info={},
    )
    (clean,) = remove_padding_in_sequences([row])
    assert clean.sequences.tolist() == [7, 8, 20, 21]
    assert clean.attention_mask.tolist() == [1, 1, 1, 1]
    assert clean.action_log_probs.tolist() == pytest.approx([-0.1, -0.2])
    assert clean.returns.tolist() == [1.0, 2.0] and clean.values is None
    assert clean.action_mask.tolist() == [True, True]
    # Stripping an unpadded item changes nothing.
    assert_same(remove_padding_in_sequences([clean])[0], clean)


def test_remove_padding_needs_masks():
    item = BufferItem(torch.tensor([1, 2]), None, None, None, None, None, None, None, {})
    with pytest.raises(ValueError, match="needs attention_mask and action_mask"):
        remove_padding_in_sequences([item])


# --------------------------------------------------------------------------- batching


def test_make_padded_batch_by_hand():
    first = make_item(torch.tensor([1, 2, 3]), 2, seed=0)
    second = make_item(torch.tensor([4, 5]), 1, seed=1)
    batch = make_experience_batch([first, second])
    assert type(batch) is Experience and not batch.is_packed
    # Left padding aligns the ends: the last A = 2 positions of each row are its action positions.
    assert batch.sequences.tolist() == [[1, 2, 3], [0, 4, 5]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [0, 1, 1]]
    assert batch.action_mask.tolist() == [[True, True], [False, True]]
    assert torch.equal(batch.advantages[1], torch.cat([torch.zeros(1), second.advantages]))
    assert batch.info["reward"].tolist() == [0.0, 1.0] and batch.info["response_length"].tolist() == [2.0, 1.0]
    assert batch.num_actions == 2 and batch.packed_seq_lens is None
    assert batch.multimodal_inputs == {} and batch.multimodal_shapes == {} and batch.token_fields == {}


def test_split_keeps_the_padding_as_the_seed_does():
    # LightRFT's split_experience_batch hands back each row as batched, padding included;
    # remove_padding_in_sequences is the separate step that strips it.
    first = make_item(torch.tensor([1, 2, 3]), 2, seed=0)
    second = make_item(torch.tensor([4, 5]), 1, seed=1)
    second.token_fields = {"mm_token_type_ids": torch.tensor([1, 0])}
    first.token_fields = {"mm_token_type_ids": torch.tensor([0, 1, 0])}
    batch = make_experience_batch([first, second])
    split = split_experience_batch(batch)
    assert [type(item) for item in split] == [BufferItem, BufferItem]
    # Row 1 keeps its left padding: width 3 sequence, 2 action positions, the first of them masked out.
    assert split[1].sequences.tolist() == [0, 4, 5] and split[1].attention_mask.tolist() == [0, 1, 1]
    assert split[1].action_mask.tolist() == [False, True]
    assert split[1].token_fields["mm_token_type_ids"].tolist() == [0, 1, 0]
    assert torch.equal(split[1].advantages, torch.cat([torch.zeros(1), second.advantages]))
    for i, item in enumerate(split):
        for name in ("sequences", "attention_mask", "action_mask", "advantages", "action_log_probs"):
            assert torch.equal(getattr(item, name), getattr(batch, name)[i]), name
    # Stripping is the separate step, and gives the items back.
    for actual, expected in zip(remove_padding_in_sequences(split), [first, second]):
        assert_same(actual, expected)
    # A packed batch's items are its unpadded samples already.
    for actual, expected in zip(split_experience_batch(make_experience_batch([first, second], True)), [first, second]):
        assert_same(actual, expected)


def test_make_packed_batch_by_hand():
    first = make_item(torch.tensor([1, 2, 3]), 2, seed=0)
    second = make_item(torch.tensor([4, 5]), 1, seed=1)
    batch = make_experience_batch([first, second], packing_samples=True)
    assert batch.is_packed and batch.batch_size == 2
    assert [s.tolist() for s in batch.sequences] == [[1, 2, 3], [4, 5]]
    assert batch.packed_seq_lens == [3, 2] and batch.num_actions == [2, 1]
    assert batch.info["reward"].tolist() == [0.0, 1.0]


@pytest.mark.parametrize("packing_samples", [False, True])
@pytest.mark.parametrize("modality", ["text", "image", "video", "audio"])
def test_round_trip_with_real_processor_outputs(processors, modality, packing_samples):
    items, processed_together = modality_items(modality, processors)
    batch = make_experience_batch(items, packing_samples=packing_samples)
    # Concatenating the samples processed one by one gives what the processor returns for the whole batch.
    assert_same(batch.multimodal_inputs, processed_together)
    assert is_vl_experience(batch) == (modality in ("image", "video"))
    split = split_and_strip(batch)
    assert len(split) == len(items)
    for actual, expected in zip(split, items):
        assert_same(actual, expected)


def test_multimodal_shapes_follow_samples(processors):
    items, _ = modality_items("video", processors)
    batch = make_experience_batch(items)
    # Sample 0: one 4-frame 28x56 video; sample 1: a 56x28 image and a 2-frame 56x56 video; sample 2: no media.
    assert batch.multimodal_shapes["video_grid_thw"] == [(1, 3), (1, 3), None]
    assert batch.multimodal_shapes["image_grid_thw"] == [None, (1, 3), None]
    assert batch.multimodal_shapes["pixel_values_videos"] == [(2 * 2 * 4, 1176), (1 * 4 * 4, 1176), None]


def test_token_fields_travel_with_the_sequence():
    # mm_token_type_ids-like fields are padded and packed like `sequences`, and round-trip exactly.
    items = [make_item(torch.arange(1, 6), 2, seed=0), make_item(torch.arange(1, 4), 1, seed=1)]
    items[0].token_fields = {"mm_token_type_ids": torch.tensor([0, 1, 1, 0, 0])}
    items[1].token_fields = {"mm_token_type_ids": torch.tensor([1, 0, 0])}
    padded = make_experience_batch(items)
    assert padded.token_fields["mm_token_type_ids"].tolist() == [[0, 1, 1, 0, 0], [0, 0, 1, 0, 0]]
    packed = make_experience_batch(items, packing_samples=True)
    assert [t.tolist() for t in packed.token_fields["mm_token_type_ids"]] == [[0, 1, 1, 0, 0], [1, 0, 0]]
    for batch in (padded, packed):
        for actual, expected in zip(split_and_strip(batch), items):
            assert_same(actual, expected)
    items[1].token_fields = {}
    with pytest.raises(ValueError, match="Items carry different per-token fields"):
        make_experience_batch(items)


def test_media_fields_of_different_sizes_pad_and_split_back_exactly():
    # Fields whose trailing sizes differ across samples (patches per image, mel frames, a batch-first field of a
    # sample without images) are zero-padded to the largest, as processors batch them, and cut back on split.
    pieces = [
        {"pixel_values": torch.ones(1, 2, 3, 4, 4), "pixel_attention_mask": torch.ones(1, 2, 4, 4, dtype=torch.bool)},
        {
            "pixel_values": torch.zeros(1, 0, 3, 4, 4),
            "pixel_attention_mask": torch.zeros(1, 0, 4, 4, dtype=torch.bool),
        },
        {
            "pixel_values": 2 * torch.ones(1, 1, 3, 4, 4),
            "pixel_attention_mask": torch.ones(1, 1, 4, 4, dtype=torch.bool),
        },
    ]
    items = [make_item(torch.arange(1, 5), 2, seed=s, multimodal=mm) for s, mm in enumerate(pieces)]
    batch = make_experience_batch(items)
    assert batch.multimodal_inputs["pixel_values"].shape == (3, 2, 3, 4, 4)
    assert batch.multimodal_inputs["pixel_attention_mask"].sum().item() == 3 * 16  # padding is False
    assert batch.multimodal_inputs["pixel_values"][1].abs().sum() == 0
    for actual, expected in zip(split_and_strip(batch), items):
        assert_same(actual, expected)
    # Only empty pieces: the field has no element (the model call leaves it out) and splits back exactly.
    empty = make_experience_batch(items[1:2])
    assert empty.multimodal_inputs["pixel_values"].numel() == 0
    assert_same(split_and_strip(empty)[0], items[1])


def test_round_trip_of_seed_vl_items(processors):
    images = [_image(56, 56, 0), _image(28, 56, 1), _image(28, 28, 2)]
    together = extract_multimodal_inputs(
        _process(processors["vision"], [{"images": images[:2]}, {"images": images[2:]}])
    )
    rows = together["image_grid_thw"].prod(-1).tolist()  # [16, 8, 4]
    items = [
        make_item(
            torch.arange(1, 9),
            3,
            seed=0,
            item_class=BufferItemVL,
            pixel_values=together["pixel_values"][: rows[0] + rows[1]],
            image_grid_thws=together["image_grid_thw"][:2],
            raw_images=images[:2],
        ),
        make_item(torch.arange(1, 5), 2, seed=1, item_class=BufferItemVL),  # no image at all
        make_item(
            torch.arange(1, 7),
            4,
            seed=2,
            item_class=BufferItemVL,
            pixel_values=together["pixel_values"][rows[0] + rows[1] :],
            image_grid_thws=together["image_grid_thw"][2:],
            raw_images=images[2:],
        ),
    ]
    for packing_samples in (False, True):
        batch = make_experience_batch(items, packing_samples=packing_samples)
        assert type(batch) is ExperienceVL and is_vl_experience(batch)
        assert_same(batch.multimodal_inputs, together)
        assert batch.raw_images == [images[:2], None, images[2:]]
        for actual, expected in zip(split_and_strip(batch), items):
            assert_same(actual, expected)


def test_optional_fields_stay_none():
    items = [make_item(torch.arange(1, 5), 2, seed=s) for s in range(2)]
    for item in items:
        item.values, item.base_action_log_probs, item.action_entropy = None, None, None
    batch = make_experience_batch(items)
    assert batch.values is None and batch.base_action_log_probs is None and batch.action_entropy is None
    for actual, expected in zip(split_and_strip(batch), items):
        assert_same(actual, expected)


def test_is_vl_experience():
    pixels = {"pixel_values": torch.ones(4, 2), "image_grid_thw": torch.tensor([[1, 2, 2]])}
    audio = {"input_features": torch.ones(1, 2, 3), "feature_attention_mask": torch.ones(1, 3)}
    sequences = torch.ones(1, 3, dtype=torch.long)
    assert not is_vl_experience(Experience(sequences=sequences))
    assert not is_vl_experience(Experience(sequences=sequences, multimodal_inputs=audio))
    assert is_vl_experience(Experience(sequences=sequences, multimodal_inputs=pixels))
    # The seed's vision-language classes are vision-language even for a text-only prompt.
    assert is_vl_experience(ExperienceVL(sequences=sequences))
    assert is_vl_experience(BufferItemVL(sequences=sequences[0]))
    assert is_vl_experience(make_item(torch.arange(1, 5), 2, seed=0, multimodal=pixels))


# --------------------------------------------------------------------------- errors


def test_make_errors():
    item = make_item(torch.arange(1, 5), 2, seed=0)
    with pytest.raises(ValueError, match="needs at least one item"):
        make_experience_batch([])
    with pytest.raises(ValueError, match=r"all BufferItem or all BufferItemVL, got \['BufferItem', 'BufferItemVL'\]"):
        make_experience_batch([item, BufferItemVL(sequences=torch.arange(1, 5))])
    no_values = make_item(torch.arange(1, 5), 2, seed=1)
    no_values.values = None
    with pytest.raises(ValueError, match="values is None in some items but not in others"):
        make_experience_batch([item, no_values])
    missing = make_item(torch.arange(1, 5), 2, seed=1)
    del missing.info["reward"]
    with pytest.raises(ValueError, match=r"info\['reward'\] is missing from some items"):
        make_experience_batch([item, missing])
    with pytest.raises(ValueError, match=r"info\['reward'\] is missing from some items"):
        make_experience_batch([missing, item])
    as_text = make_item(torch.arange(1, 5), 2, seed=1)
    as_text.info["reward"] = "high"
    with pytest.raises(ValueError, match=r"info\['reward'\] must be a tensor or a Python number per sample, got str"):
        make_experience_batch([item, as_text])
    wide = make_item(torch.arange(1, 5), 2, seed=1)
    wide.info["reward"] = torch.ones(2)
    with pytest.raises(ValueError, match=r"info\['reward'\] has different shapes across items"):
        make_experience_batch([item, wide])
    other_rank = make_item(torch.arange(1, 5), 2, seed=1, multimodal={"pixel_values": torch.ones(3, 2, 1)})
    ok = make_item(torch.arange(1, 5), 2, seed=2, multimodal={"pixel_values": torch.ones(3, 2)})
    with pytest.raises(ValueError, match="Media field 'pixel_values' differs across samples"):
        make_experience_batch([ok, other_rank])


def test_info_python_scalars_are_tensorized():
    # LightRFT's items carry Python numbers in info; batching makes them tensors.
    items = [make_item(torch.arange(1, 5), 2, seed=s) for s in range(2)]
    items[0].info = {"reward": 1.5, "valid": True}
    items[1].info = {"reward": torch.tensor(0.5), "valid": False}
    batch = make_experience_batch(items)
    assert batch.info["reward"].tolist() == [1.5, 0.5] and batch.info["valid"].tolist() == [True, False]


def test_split_errors():
    batch = make_experience_batch([make_item(torch.arange(1, 5), 2, seed=s) for s in range(2)])
    batch.info["kl"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"info\['kl'\] has 3 rows but the batch has 2 samples"):
        split_experience_batch(batch)
    pixels = {"pixel_values": torch.ones(4, 2), "image_grid_thw": torch.tensor([[1, 2, 2]])}
    batch = make_experience_batch([make_item(torch.arange(1, 5), 2, seed=s, multimodal=pixels) for s in range(2)])
    batch.multimodal_shapes["pixel_values"] = [(4, 2), None]
    with pytest.raises(ValueError, match="'pixel_values' has 8 rows but the samples' shapes add up to 4"):
        split_experience_batch(batch)
    batch.multimodal_shapes = {}
    with pytest.raises(ValueError, match="media fields but no multimodal_shapes"):
        split_experience_batch(batch)
    # A seed vision-language item keeps a processor's other fields beside its named ones.
    audio = {"input_features": torch.ones(1, 2, 3), "feature_attention_mask": torch.ones(1, 3)}
    vl = ExperienceVL(sequences=torch.ones(1, 3, dtype=torch.long), multimodal_inputs=audio)
    vl.multimodal_shapes = {"input_features": [(1, 2, 3)], "feature_attention_mask": [(1, 3)]}
    vl.attention_mask, vl.action_mask = torch.ones(1, 3), torch.ones(1, 1)
    (item,) = split_experience_batch(vl)
    assert item.pixel_values is None and list(item.extra_multimodal_inputs) == list(audio)


# --------------------------------------------------------------------------- devices


def _all_tensors(value):
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _all_tensors(v)]
    if isinstance(value, list):
        return [t for v in value for t in _all_tensors(v)]
    return []


@pytest.mark.parametrize("packing_samples", [False, True])
def test_experience_to_device_moves_every_tensor(packing_samples):
    pixels = {"pixel_values": torch.ones(4, 2), "image_grid_thw": torch.tensor([[1, 2, 2]])}
    batch = make_experience_batch([make_item(torch.arange(1, 5), 2, seed=0, multimodal=pixels)], packing_samples)
    carried = [f for f in fields(batch) if f.name != "multimodal_samples"]
    tensors = [t for f in carried for t in _all_tensors(getattr(batch, f.name))]
    assert len(tensors) >= 12
    samples = batch.multimodal_samples
    # The meta device holds no data, so moving to it is free and shows every tensor went through .to().
    assert batch.to_device("meta") is batch
    moved = [t for f in carried for t in _all_tensors(getattr(batch, f.name))]
    assert len(moved) == len(tensors) and all(t.device.type == "meta" for t in moved)
    # The samples' own media dicts stay where they are, the same tensors: what the encoder-output cache keys on.
    assert batch.multimodal_samples is samples and samples[0]["pixel_values"] is pixels["pixel_values"]


def test_item_to_device_returns_a_moved_copy():
    pixels = {"pixel_values": torch.ones(4, 2), "image_grid_thw": torch.tensor([[1, 2, 2]])}
    item = make_item(torch.arange(1, 5), 2, seed=0, multimodal=pixels)
    moved = item_to_device(item, "meta")
    assert all(t.device.type == "meta" for f in fields(moved) for t in _all_tensors(getattr(moved, f.name)))
    assert all(t.device.type == "cpu" for f in fields(item) for t in _all_tensors(getattr(item, f.name)))


def test_pin_memory_pins_every_tensor_when_an_accelerator_exists(monkeypatch):
    batch = make_experience_batch([make_item(torch.arange(1, 5), 2, seed=0)], packing_samples=True)
    count = len([t for f in fields(batch) for t in _all_tensors(getattr(batch, f.name))])
    # Without an accelerator pinning is skipped, as DataLoader(pin_memory=True) does.
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)
    assert batch.pin_memory() is batch
    pinned = []

    def fake_pin(tensor):
        pinned.append(tensor)
        return tensor.clone()

    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    assert batch.pin_memory() is batch
    assert len(pinned) == count


def test_split_checks_raw_images_per_sample():
    items = [make_item(torch.arange(1, 5), 2, seed=s, item_class=BufferItemVL) for s in range(2)]
    batch = make_experience_batch(items)
    batch.raw_images = [None]
    with pytest.raises(ValueError, match="raw_images has 1 entries but the batch has 2 samples"):
        split_experience_batch(batch)
