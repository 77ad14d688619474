"""The seed's actor API (lightrft.models.actor_vl / actor_al): the `modality` tags, and the seed's forward call with
the media fields alone, whose per-token type field (`mm_token_type_ids`, Gemma 3's `token_type_ids`) the actor
derives from the tokens exactly as the family's processor marks it."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import PretrainedConfig

from rft_trl.data import probe_processor, split_processor_output
from rft_trl.data.multimodal import extend_token_fields, media_field_names
from rft_trl.models import Actor, ActorAL, ActorVL
from rft_trl.models.actor import MediaTokenTypes, media_token_type_codes
from rft_trl.models.packing import pack_sequences
from rft_trl.testing import TINY_MODEL_KINDS, build_tiny_model

# The multimodal policy families (the reward model has no LM head, phi4_multimodal and minicpmv4_6 are refused, the
# rest are text).
TEXT_KINDS = ("qwen2", "qwen3", "qwen3_5_text", "lfm2")
REFUSED = ("phi4_multimodal", "minicpmv4_6")
KINDS = [kind for kind in TINY_MODEL_KINDS if kind not in ("qwen2_reward", *REFUSED, *TEXT_KINDS)]
COMPLETION = [[57, 91, 130, 402], [88, 402, 403, 403]]  # plain-text tokens, EOS 402, then pad 403


def test_modality_tags_are_the_seeds():
    # ActorVL.modality == 'vision' and ActorAL.modality == 'audio' (the seed's API docs); the plain Actor is the
    # seed's text actor (LightRFT's ActorModality.LANGUAGE_ONLY is "text"). Instances read the class tag.
    assert (Actor.modality, ActorVL.modality, ActorAL.modality) == ("text", "vision", "audio")
    assert ActorVL(build_tiny_model("qwen2_5_vl")[0]).modality == "vision"


def test_media_type_codes_are_transformers_processor_convention():
    # transformers' ProcessorMixin.create_mm_token_type_ids: 0 text, 1 image, 2 video, 3 audio.
    assert media_token_type_codes() == {"image": 1, "video": 2, "audio": 3}


def _image(colour, size):
    return Image.new("RGB", size, colour)


def _prompt_batch(processor, kind: str):
    """Two left-padded rows with `kind` media (one item, then two of different sizes), processed together."""
    counts = [1, 2]
    messages = [
        [{"role": "user", "content": [*[{"type": kind}] * n, {"type": "text", "text": "What is it?"}]}] for n in counts
    ]
    texts = [processor.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in messages]
    if kind == "image":
        media = {
            "images": [
                [_image((200, 30, 30), (56, 56))],
                [_image((30, 200, 30), (56, 56)), _image((0, 0, 255), (42, 70))],
            ]
        }
    elif kind == "video":
        rng = np.random.default_rng(0)
        media = {"videos": [rng.integers(0, 255, (4, 56, 56, 3), dtype=np.uint8) for _ in range(sum(counts))]}
    else:
        rate = processor.feature_extractor.sampling_rate
        tone = np.sin(np.linspace(0, 600 * np.pi, rate)).astype(np.float32)
        media = {"audio": [tone, tone[: rate // 2], tone[: rate // 3]], "sampling_rate": rate}
    processor.tokenizer.padding_side = "left"
    return processor(text=texts, return_tensors="pt", padding=True, **media)


def _rollout(processor, kind):
    """Prompts + completions, the processor's per-token fields extended with 0 over them, and the media fields."""
    input_ids, attention_mask, tokens, media = split_processor_output(
        _prompt_batch(processor, kind), media_field_names(processor)
    )
    completion = torch.tensor(COMPLETION)
    sequences = torch.cat([input_ids, completion], dim=1)
    attention_mask = torch.cat([attention_mask, completion.ne(403).long()], dim=1)
    return sequences, attention_mask, extend_token_fields(tokens, sequences.shape[1]), media


@pytest.fixture(scope="module", params=KINDS)
def family(request):
    model, processor = build_tiny_model(request.param)
    return request.param, model, processor, probe_processor(processor)


def test_derived_token_types_are_the_processors_and_give_the_same_log_probs(family):
    kind_name, model, processor, layout = family
    actor = ActorVL(model)
    if not layout.token_fields:
        # Nothing to derive: the model reads no per-token type field (LLaVA, InternVL, Qwen2-Audio, Omni, ...).
        assert actor.inputs.token_fields == ()
        return
    assert actor.inputs.token_fields == layout.token_fields
    for media_kind in layout.media_kinds:
        sequences, attention_mask, tokens, media = _rollout(processor, media_kind)
        if set(tokens) - {"mm_token_type_ids", "token_type_ids"}:
            # ERNIE-4.5-VL's moe_mm_token_type_ids also marks the media's boundary tokens: not derivable from the
            # placeholders, so the seed's call without it is refused by name, with the fix.
            with pytest.raises(ValueError, match=r"reads .*'moe_mm_token_type_ids'.* cannot derive .* pass the"):
                actor(sequences, len(COMPLETION[0]), attention_mask, **media)
            continue
        if not any(value.any() for value in tokens.values()):
            # PaliGemma's token_type_ids mark its bidirectional prefix, not media (0 over the whole prompt): the seed's
            # call without them is refused by name, with the fix.
            with pytest.raises(ValueError, match=rf"{type(model).__name__}'s generate types .* pass the processor's"):
                actor(sequences, len(COMPLETION[0]), attention_mask, **media)
            continue
        derived = actor.token_types(sequences)
        for name, value in tokens.items():
            # The processor's own field (left padding included, extended with 0 over the completion) marks the
            # media tokens, and the field derived from the tokens alone equals it.
            assert value.any()
            assert torch.equal(derived, value), (kind_name, media_kind, name)
        # The seed's call: the media fields alone; the actor derives the per-token field.
        num_actions = len(COMPLETION[0])
        with torch.no_grad():
            expected = actor(sequences, num_actions, attention_mask, **media, **tokens)
            seed_call = actor(sequences, num_actions, attention_mask, **media)
            # Control: a wrong field (every token text) changes the log-probs, so the comparison can fail.
            wrong = actor(
                sequences, num_actions, attention_mask, **media, **{n: torch.zeros_like(v) for n, v in tokens.items()}
            )
        torch.testing.assert_close(seed_call, expected, rtol=0, atol=0)
        if kind_name == "gemma3n":
            # Gemma 3n's forward takes token_type_ids and does not read them (transformers 5.25): nothing changes.
            torch.testing.assert_close(wrong, expected, rtol=0, atol=0)
        else:
            assert not torch.allclose(wrong, expected), (kind_name, media_kind)


def test_the_seeds_qwen2_5_vl_call_with_pixel_values_and_image_grid_thw_alone():
    model, processor = build_tiny_model("qwen2_5_vl")
    actor = ActorVL(model)
    sequences, attention_mask, tokens, media = _rollout(processor, "image")
    assert set(media) == {"pixel_values", "image_grid_thw"} and set(tokens) == {"mm_token_type_ids"}
    # What the actor did before deriving (ModelInputs.collect without the field) refuses the seed's call.
    with pytest.raises(ValueError, match="reads 'mm_token_type_ids' along with media"):
        actor.inputs.collect(media)
    with torch.no_grad():
        log_probs = actor.forward(
            sequences,
            4,
            attention_mask,
            pixel_values=media["pixel_values"],
            image_grid_thw=media["image_grid_thw"],
        )
        expected = actor.forward(sequences, 4, attention_mask, **media, mm_token_type_ids=tokens["mm_token_type_ids"])
    torch.testing.assert_close(log_probs, expected, rtol=0, atol=0)


def test_glm_video_frames_are_typed_by_their_video_span():
    # GLM-4.xV writes video frames as image placeholders between video boundaries: typed 2 by the span. A
    # derivation from the placeholder ids alone (no spans) types them as images and differs from the processor.
    model, processor = build_tiny_model("glm4v")
    sequences, _, tokens, _ = _rollout(processor, "video")
    expected = tokens["mm_token_type_ids"]
    assert expected.eq(2).any() and not expected.eq(1).any()
    token_types = MediaTokenTypes.from_config(model.config)
    assert token_types.spans and torch.equal(token_types(sequences), expected)
    ids_only = MediaTokenTypes(token_types.placeholders)
    assert not torch.equal(ids_only(sequences), expected)


@pytest.mark.parametrize("kind, media_kind", [("qwen2_5_vl", "video"), ("qwen3_vl", "image"), ("glm4v", "image")])
def test_packed_seed_call_derives_per_sample(kind, media_kind):
    model, processor = build_tiny_model(kind)
    actor = ActorVL(model, packing_samples=True)
    sequences, attention_mask, tokens, media = _rollout(processor, media_kind)
    if actor.token_types.spans:
        # A stray video-span start in the first sample's completion (GLM-4.xV) must not turn the second sample's
        # image placeholders into video ones: spans are followed per packed sample.
        video_start = actor.token_types.spans[-1][0]
        sequences = sequences.clone()
        sequences[0, -2] = video_start
    packed, lengths = pack_sequences(sequences, attention_mask)
    packed_tokens = {name: pack_sequences(value, attention_mask)[0] for name, value in tokens.items()}
    num_actions = attention_mask[:, -len(COMPLETION[0]) :].sum(-1).tolist()
    with torch.no_grad():
        expected = actor(packed, num_actions, packed_seq_lens=lengths, **media, **packed_tokens)
        derived = actor(packed, num_actions, packed_seq_lens=lengths, **media)
    torch.testing.assert_close(derived, expected, rtol=0, atol=0)


def test_generate_with_the_media_fields_alone():
    model, processor = build_tiny_model("qwen2_vl")
    actor = ActorVL(model)
    input_ids, attention_mask, tokens, media = split_processor_output(_prompt_batch(processor, "image"))
    outputs = []
    for fields in (media, {**media, **tokens}):
        torch.manual_seed(0)
        outputs.append(
            actor.generate(input_ids, attention_mask=attention_mask, max_new_tokens=4, do_sample=True, **fields)
        )
    for derived, given in zip(*outputs):
        assert torch.equal(derived, given)


def test_underivable_token_types_are_refused_with_the_fix():
    model, processor = build_tiny_model("qwen2_5_vl")
    sequences, attention_mask, tokens, media = _rollout(processor, "image")
    # Media given, but the sequences hold no placeholder of the config (text-only rows).
    actor = ActorVL(model)
    text = torch.full_like(sequences, 57)
    with pytest.raises(
        ValueError, match="none of the tokens is a media placeholder.*pass the processor's 'mm_token_type_ids'"
    ):
        actor(text, 4, attention_mask, **media)
    # A config that declares no placeholder (as if its ids were under names rft_trl does not read): nothing to
    # derive from.
    assert MediaTokenTypes.from_config(PretrainedConfig()).placeholders == {}
    actor.token_types = MediaTokenTypes(placeholders={})
    with pytest.raises(
        ValueError, match="declares no media placeholder token.*pass the processor's 'mm_token_type_ids'"
    ):
        actor(sequences, 4, attention_mask, **media)
