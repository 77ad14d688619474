"""
Verification on the user's own model, at construction: what a run relies on is measured on a tiny synthetic batch
built with the user's processor and run through the user's model, and refused, naming the model class, the feature
and the measured difference, when it does not hold. A list of families rft_trl tested is documentation; this is the
guarantee for the model at hand.

What is checked (each against the model's own forward on each sample alone: the processor called on that sample's
row alone, no position ids passed, full-vocabulary log-softmax):

- **padded**: the actor's log-probs of a left-padded batch (prompts of several lengths and media kinds), through the
  path the run uses (the fused head when `fused_log_probs`), so a processor field the model misreads, a wrong
  position or token type, or a fused head that differs from the logits shows;
- **packed** (with `packing_samples`): the same samples packed into one row, so any layer that carries state across
  packed samples (linear attention, convolutions, recurrent or chunked layers) shows. When it does, the refusal says
  what the model's own layers answer when told where the samples start, as transformers' packed collator tells them
  (`DataCollatorWithFlattening`: `cu_seq_lens_q`/`cu_seq_lens_k`/`max_length_q`/`max_length_k`, and `seq_idx`): on
  transformers 5.25 the torch fallbacks of the linear-attention and convolution kernels refuse them, naming the
  package (flash-linear-attention, causal-conv1d) whose kernel would keep the samples apart;
- **encoder cache** (with `cache_encoder_outputs`, for a family whose encoder outputs it hands over): log-probs with
  the cached encoder outputs equal those with the pixels;
- **token types** (for a processor that returns per-token type fields): the fields rft_trl gives a prompt and its
  completion ([`~rft_trl.models.inputs.ModelInputs.extend_token_fields`]) equal those the model's own `generate`
  holds once it generated that completion ([`generated_token_fields`]), exactly: a completion typed
  otherwise than generation typed it is scored under another attention pattern or other positions (PaliGemma's
  generated suffix is causal, type 1; typed 0 it would join the bidirectional prefix).

Every logit must be finite. The tolerance follows the model's dtype (`TOLERANCE`): float32 proves exactness; half
precision only catches differences above its rounding noise.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from transformers import DataCollatorWithFlattening
from transformers.generation.logits_process import SuppressTokensLogitsProcessor

from ..data.collator import PromptCollator
from ..data.multimodal import is_token_field, synthetic_media
from .packing import pack_sequences

logger = logging.getLogger(__name__)

# Largest difference in action log-probs (nats) accepted per dtype of the model's weights.
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-6, torch.bfloat16: 0.1, torch.float16: 0.05}
# Completion tokens appended to every synthetic prompt.
COMPLETION_TEXT = "The answer is blue, I think."
COMPLETION_TOKENS = 5
# The text-only prompts, of different lengths (so a batch is padded and a packed row holds several samples).
TEXT_QUESTIONS = ("Name a colour of the sky, and one of the grass in spring.", "Say red.")
# The sample boundaries of transformers' packed collator, by the `DataCollatorWithFlattening` option that returns
# them: flash-attention's varlen arguments, and the per-token sample index linear-attention and convolution kernels
# take.
SAMPLE_BOUNDARIES = {
    "cu_seq_lens_q/k and max_length_q/k": {"return_flash_attn_kwargs": True},
    "seq_idx": {"return_seq_idx": True},
}


class ModelVerificationError(ValueError):
    """The user's model does not do what the run relies on: which check, by how much, and the fix."""


@dataclass
class CheckResult:
    """One check: its name, the largest difference measured (nats), and the tolerance it was held to."""

    name: str
    difference: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.difference <= self.tolerance


def synthetic_batches(collator: PromptCollator) -> list[list[dict]]:
    """
    Batches of rows in the dataset format rft_trl reads (chat messages, plural media columns): per media kind the
    processor takes, one row with one such item and two text-only rows (prompts of several lengths, so the batch is
    padded and a packed row holds several samples), or, for a processor that needs media in every call (PaliGemma),
    three rows with the item; two text-only rows when it takes none. Kinds are not mixed in a batch: some families
    (GLM-4.xV) take images and videos in separate forwards only.
    """
    columns = {f"{kind}s": None for kind in collator.media_kinds}
    text = _text_rows(collator)
    # A processor that needs media in every call (PaliGemma) gets the kind's item in every row instead.
    text_only = not collator.media_kinds or len(collator(text)) == len(text)
    batches = []
    for kind in collator.media_kinds:
        item = synthetic_media(kind, collator.processing_class)
        rows = [
            {**columns, "prompt": [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": question}]}]}
            for question in (f"Describe this {kind} in one word.", *([] if text_only else TEXT_QUESTIONS))
        ]
        for row in rows:
            row[f"{kind}s"] = [item]
        batches.append(rows + (text if text_only else []))
    return batches or [text]


def _text_rows(collator: PromptCollator) -> list[dict]:
    """Two text-only rows with prompts of different lengths, with every media column of the collator empty."""
    columns = {f"{kind}s": None for kind in collator.media_kinds}
    # A text model's chat template may take only string contents (Qwen2.5's concatenates them); a processor's takes
    # content parts.
    return [
        {
            **columns,
            "prompt": [
                {"role": "user", "content": [{"type": "text", "text": question}] if collator.media_kinds else question}
            ],
        }
        for question in TEXT_QUESTIONS
    ]


def _completion(collator: PromptCollator, device: torch.device) -> torch.Tensor:
    ids = collator.tokenizer(COMPLETION_TEXT, add_special_tokens=False)["input_ids"][:COMPLETION_TOKENS]
    return torch.tensor(ids, dtype=torch.long, device=device)  # [A]


def _to(value, device: torch.device):
    return value.to(device) if isinstance(value, torch.Tensor) else value


def _own_media(model, batch, device: torch.device) -> dict[str, torch.Tensor]:
    """
    A sample's media fields as the model's own forward takes them when called directly: what the processor returned
    for it alone (no empty fields for a text-only row), floating fields in the model's dtype, as
    `processor(...).to(model.dtype)` gives them (a bfloat16 tower does not take float32 pixels, e.g. Kimi-K2.5's).
    """
    return {
        name: value.to(device, model.dtype) if value.is_floating_point() else value.to(device)
        for name, value in batch.multimodal_inputs.items()
        if value.numel() > 0
    }


@torch.no_grad()
def generated_token_fields(
    model, inputs: Mapping[str, torch.Tensor], completion: torch.Tensor
) -> dict[str, torch.Tensor]:
    """
    The per-token type fields the model's own `generate` holds for a prompt and `completion` once it generated it.

    `generate` is made to produce `completion` (greedy, every other token masked, no stop at the eos token); the
    per-token fields it carries from step to step are recorded after its last step, when they cover the prompt and
    the whole completion. Read there because the forwards do not show them: with a cache they get the new token's
    column or nothing (Gemma 3 and PaliGemma drop the field after the prompt), and without one GLM-4.xV's `generate`
    fails (transformers 5.25).

    Args:
        model (`PreTrainedModel`): the transformers model (it generates).
        inputs (`Mapping[str, torch.Tensor]`): the processor's fields for one prompt (`input_ids` `[1, P]`, ...).
        completion (`torch.LongTensor` of shape `[A]`): the tokens to generate.

    Returns:
        `dict[str, torch.Tensor]`: each per-token field of `inputs` as `generate` holds it at the end, `[1, P + A]`
        where `generate` extends it.
    """
    prompt_width = inputs["input_ids"].shape[1]
    forced = completion.tolist()
    recorded = {}

    def force(batch_id: int, input_ids: torch.Tensor) -> list[int]:
        return [forced[input_ids.shape[-1] - prompt_width]]

    update = model._update_model_kwargs_for_generation

    def record(*args, **kwargs):
        updated = update(*args, **kwargs)
        recorded.update({k: v for k, v in updated.items() if is_token_field(k) and isinstance(v, torch.Tensor)})
        return updated

    config = copy.deepcopy(model.generation_config)
    config.eos_token_id = None  # a completion holding the eos token is generated in full
    config.max_new_tokens, config.min_new_tokens, config.do_sample = len(forced), None, False
    # The step update is read on this instance only, for this call: generate's state is not exposed otherwise.
    model._update_model_kwargs_for_generation = record
    try:
        model.generate(**inputs, generation_config=config, prefix_allowed_tokens_fn=force)
    finally:
        del model._update_model_kwargs_for_generation
    return recorded


def _alone_batch(collator: PromptCollator, row: dict):
    batch = collator([row])
    if len(batch) == 0:
        raise ModelVerificationError(
            f"verify_model: the processor ({type(collator.processing_class).__name__}) rejected a synthetic prompt: "
            f"{batch.skipped}"
        )
    return batch


@torch.no_grad()
def _alone_log_probs(
    model, inputs, collator: PromptCollator, row: dict, completion: torch.Tensor, suppressed: list[int]
) -> torch.Tensor:
    """
    The reference: the model's own forward on the row alone, no position ids, full-vocabulary log-softmax of the
    logits as `generate(suppress_tokens=suppressed)` processes them (the actor's `suppressed_token_ids`).
    """
    batch = _alone_batch(collator, row)
    device = completion.device
    sequence = torch.cat([batch.input_ids.to(device), completion[None]], dim=1)  # [1, P + A]
    # The completion's token types as the model's generate gives them (the "token types" check holds them to it).
    tokens = {k: _to(v, device) for k, v in inputs.extend_token_fields(batch.token_fields, sequence.shape[1]).items()}
    # What the processor returns for this sample alone: no empty media fields for a text-only row.
    media = _own_media(model, batch, device)
    try:
        logits = model(input_ids=sequence, attention_mask=torch.ones_like(sequence), **tokens, **media).logits
    except Exception as error:
        raise ModelVerificationError(
            f"verify_model: {type(model).__name__} cannot run a synthetic prompt built with the processor "
            f"({type(collator.processing_class).__name__}): {type(error).__name__}: {error}. The processor does not "
            "fit the model: pass the processor saved with this model."
        ) from error
    if not torch.isfinite(logits).all():
        raise ModelVerificationError(
            f"verify_model: {type(model).__name__} returns non-finite logits on a synthetic prompt built with its "
            f"processor ({type(collator.processing_class).__name__}): the processor's fields do not fit the model. "
            "Pass the processor saved with this model."
        )
    scores = logits[0, :-1].float()  # [P + A - 1, V]
    if suppressed:
        scores = SuppressTokensLogitsProcessor(suppressed, device=scores.device)(sequence, scores)
    log_probs = scores.log_softmax(-1).gather(-1, sequence[0, 1:, None])[:, 0]
    return log_probs[-completion.shape[0] :]  # [A]


def _difference(got: torch.Tensor, expected: torch.Tensor) -> float:
    if not torch.isfinite(got).all():
        return float("inf")
    return float((got.float() - expected.float()).abs().max())


def _token_type_difference(actor, collator: PromptCollator, row: dict, completion: torch.Tensor) -> float:
    """
    The largest difference between the per-token fields rft_trl gives `row`'s prompt and `completion` and those the
    model's own `generate` holds after generating it; `inf` for a field it does not hold.

    A field `generate` keeps at the prompt's width is read on the prompt only (ERNIE-4.5-VL's `moe_mm_token_type_ids`:
    its later forwards get none, which the model reads as text): only the prompt's columns are compared, and
    rft_trl gives the completion the text type ([`~rft_trl.models.inputs.ModelInputs.completion_token_types`]).
    """
    batch = _alone_batch(collator, row)
    if not batch.token_fields:
        return 0.0
    device = completion.device
    width = batch.input_ids.shape[1] + completion.shape[0]
    derived = actor.inputs.extend_token_fields(batch.token_fields, width)
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, **batch.token_fields}
    inputs = {k: _to(v, device) for k, v in inputs.items()} | _own_media(actor.hf_model, batch, device)
    generated = generated_token_fields(actor.hf_model, inputs, completion)
    largest = 0.0
    for name, value in derived.items():
        other = generated.get(name)
        if other is None or other.shape[-1] not in (value.shape[-1], batch.input_ids.shape[1]):
            return float("inf")
        largest = max(largest, _difference(value[..., : other.shape[-1]].to(device), other))
    return largest


@torch.no_grad()
def _check_batch(actor, collator, rows: list[dict], completion: torch.Tensor, packing: bool, media_encodings):
    """The largest difference of each check on one batch of `rows`, each row followed by `completion`."""
    device = completion.device
    suppressed = actor.suppressed_token_ids
    expected = torch.stack(
        [_alone_log_probs(actor.model, actor.inputs, collator, row, completion, suppressed) for row in rows]
    )  # [N, A]
    batch = collator(rows)
    if len(batch) != len(rows):
        raise ModelVerificationError(
            f"verify_model: the processor ({type(collator.processing_class).__name__}) rejected a synthetic prompt: "
            f"{batch.skipped}"
        )
    prompts = batch.input_ids.to(device)  # [N, P], left-padded
    sequences = torch.cat([prompts, completion.expand(len(rows), -1)], dim=1)  # [N, P + A]
    completion_mask = torch.ones_like(sequences[:, prompts.shape[1] :])  # [N, A]
    attention_mask = torch.cat([batch.attention_mask.to(device), completion_mask], dim=1)  # [N, P + A]
    tokens = {
        k: _to(v, device) for k, v in actor.inputs.extend_token_fields(batch.token_fields, sequences.shape[1]).items()
    }
    media = {k: _to(v, device) for k, v in batch.multimodal_inputs.items()}
    num_actions = completion.shape[0]
    padded = actor(sequences, num_actions, attention_mask, **tokens, **media)  # [N, A]
    differences = {"padded": _difference(padded, expected)}
    if batch.token_fields:
        # One row per batch (the first holds the batch's media kind): generate without a cache is slow on a real model.
        differences["token types"] = _token_type_difference(actor, collator, rows[0], completion)
    if packing:
        packed, lengths = pack_sequences(sequences, attention_mask)  # [1, T]
        packed_tokens = {k: pack_sequences(v, attention_mask)[0] for k, v in tokens.items()}
        log_probs = actor(packed, [num_actions] * len(rows), packed_seq_lens=lengths, **packed_tokens, **media)
        differences["packed"] = _difference(log_probs.view(len(rows), -1), expected)
    if media_encodings is not None and media_encodings.reason is None and collator.media_kinds:
        cached = media_encodings.model_inputs(batch.sample_multimodal_inputs, device)
        log_probs = actor(sequences, num_actions, attention_mask, **tokens, **cached)
        differences["encoder cache"] = _difference(log_probs, padded)
        media_encodings.clear()
    return differences


@dataclass
class BoundaryAnswer:
    """
    What a model did when a packed forward also got `arguments` (the names of one set of [`SAMPLE_BOUNDARIES`]):
    `outcome` says it in words; `refused` when it raised a `ValueError` (how transformers' torch fallbacks name the
    kernel that would honour the boundaries), `changed` when it ran and its logits changed.
    """

    arguments: str
    outcome: str
    refused: bool = False
    changed: bool = False

    def __str__(self) -> str:
        return f"{self.arguments}: {self.outcome}"


@torch.no_grad()
def told_sample_boundaries(actor, collator: PromptCollator, completion: torch.Tensor) -> list[BoundaryAnswer]:
    """
    What the model's own layers do when a packed forward also tells them where the samples start, as transformers'
    packed collator (`DataCollatorWithFlattening`) tells them, one set of [`SAMPLE_BOUNDARIES`] at a time.

    transformers' torch fallbacks of the linear-attention and convolution kernels (`chunk_gated_delta_rule`,
    `causal_conv1d_fn`) raise on these arguments, naming the package whose kernel keeps packed samples apart; layers
    without such a kernel ignore them. On text-only samples: media towers read keywords of the same names with a
    meaning of their own.

    Args:
        actor ([`Actor`]): the policy, whose model and positions ([`ModelInputs`]) are used.
        collator ([`PromptCollator`]): builds the two text-only samples.
        completion (`torch.LongTensor` of shape `[A]`): appended to each sample.

    Returns:
        `list[BoundaryAnswer]`: one per set of arguments.
    """
    device = completion.device
    batch = collator(_text_rows(collator))
    sequences = torch.cat([batch.input_ids.to(device), completion.expand(len(batch), -1)], dim=1)  # [2, P + A]
    attention_mask = torch.cat(
        [batch.attention_mask.to(device), torch.ones_like(sequences[:, batch.input_ids.shape[1] :])], dim=1
    )  # [2, P + A]
    packed, lengths = pack_sequences(sequences, attention_mask)  # [1, T]
    token_fields = actor.inputs.extend_token_fields(batch.token_fields, sequences.shape[1])
    tokens = {name: pack_sequences(_to(v, device), attention_mask)[0] for name, v in token_fields.items()}
    inputs = actor.inputs.forward_inputs(packed, None, lengths, {}, tokens)
    plain = actor.model(**inputs).logits  # [1, T, V]
    samples = [{"input_ids": ids.tolist()} for ids in packed[0].split(lengths)]
    answers = []
    for arguments, option in SAMPLE_BOUNDARIES.items():
        collated = DataCollatorWithFlattening(return_position_ids=False, **option)(samples)
        boundaries = {k: _to(v, device) for k, v in collated.items() if k not in ("input_ids", "labels")}
        try:
            logits = actor.model(**inputs, **boundaries).logits  # [1, T, V]
        except ValueError as error:  # transformers' own words on what would keep the samples apart
            answers.append(BoundaryAnswer(arguments, f"ValueError: {str(error).rstrip('.')}", refused=True))
        except Exception as error:  # a forward that takes no such keywords
            answers.append(BoundaryAnswer(arguments, f"not taken ({type(error).__name__}: {error})"))
        else:
            if torch.equal(logits, plain):
                answers.append(BoundaryAnswer(arguments, "ignored (the logits do not change)"))
            else:
                answers.append(BoundaryAnswer(arguments, "taken (the logits change)", changed=True))
    return answers


@torch.no_grad()
def verify_model(
    actor,
    collator: PromptCollator,
    *,
    packing: bool,
    media_encodings=None,
) -> list[CheckResult]:
    """
    Run the checks of this module on `actor`'s model and refuse what does not hold.

    Args:
        actor ([`Actor`]): the policy, as the run will call it (its fused head and packing settings).
        collator ([`PromptCollator`]): the run's collator (its processor and layout); its counters are not touched.
        packing (`bool`): check packed samples too (`packing_samples`).
        media_encodings ([`MediaEncodings`], *optional*): the run's encoder-output cache, checked against the pixels
            when it is in use; cleared afterwards.

    Returns:
        `list[CheckResult]`: the checks made, each within its tolerance.

    Raises:
        [`ModelVerificationError`]: naming the model class, the check and the measured difference.
    """
    model = actor.model
    hf_model = actor.hf_model
    name = type(hf_model).__name__
    dtype = next(hf_model.parameters()).dtype
    tolerance = TOLERANCE.get(dtype, 0.1)
    device = next(hf_model.parameters()).device
    own = PromptCollator(
        collator.processing_class, layout=collator.layout, chat_template_kwargs=collator.chat_template_kwargs
    )
    completion = _completion(own, device)
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    differences: dict[str, float] = {}
    # The synthetic rows are not the user's data: what the collator says of them (a repaired image, by a running row
    # number) would read as a message about the dataset.
    collator_logger = logging.getLogger(PromptCollator.__module__)
    collator_level = collator_logger.level
    collator_logger.setLevel(logging.ERROR)
    try:
        for rows in synthetic_batches(own):
            try:
                checked = _check_batch(actor, own, rows, completion, packing, media_encodings)
            except ModelVerificationError:
                raise
            except Exception as error:  # the run's own forward would fail the same way at its first step
                raise ModelVerificationError(
                    f"verify_model: {name}'s forward through rft_trl failed on a synthetic batch built with its "
                    f"processor: {type(error).__name__}: {error}"
                ) from error
            for check, difference in checked.items():
                differences[check] = max(differences.get(check, 0.0), difference)
        # Only for the refusal: what the model's layers do with sample boundaries (its leak is measured above).
        leaks = packing and differences["packed"] > tolerance
        answers = told_sample_boundaries(actor, own, completion) if leaks else None
    finally:
        collator_logger.setLevel(collator_level)
        model.train(was_training)
    # Token types are integers: held to equality.
    results = [
        CheckResult(check, difference, 0.0 if check == "token types" else tolerance)
        for check, difference in differences.items()
    ]
    elapsed = time.perf_counter() - start
    summary = ", ".join(f"{r.name} {r.difference:.2e}" for r in results)
    logger.info(
        "verify_model: %s (%s) against its own forward on each sample alone: %s (tolerance %.0e), %.2f s.",
        name, str(dtype).removeprefix("torch."), summary, tolerance, elapsed,
    )  # fmt: skip
    for result in results:
        if not result.passed:
            raise ModelVerificationError(_refusal(name, result, str(dtype).removeprefix("torch."), answers))
    return results


def _refusal(name: str, result: CheckResult, dtype: str, answers: list[BoundaryAnswer] | None = None) -> str:
    measured = f"by {result.difference:.3g} nats (tolerance {result.tolerance:g} in {dtype})"
    if result.name == "packed":
        if any(answer.refused for answer in answers):
            verdict = (
                "Exact packing needs what those errors name, on a device its kernels run on, and rft_trl passing "
                "these boundaries to the model, which it does not yet."
            )
        elif any(answer.changed for answer in answers):
            verdict = "Its layers take them, but rft_trl does not pass them yet."
        else:
            verdict = "No layer of this model takes them."
        return (
            f"verify_model: {name} gives packed log-probs that differ from each sample alone {measured}: a layer of "
            "this model carries state across packed samples (linear attention, a convolution, a recurrent or chunked "
            "layer, attention over media tokens) that transformers does not reset at sample boundaries from the "
            "restarting positions alone. Told where the samples start as transformers' packed collator tells it "
            f"(DataCollatorWithFlattening), the model answers: {'; '.join(map(str, answers))}. {verdict} Train it "
            "with packing_samples=False."
        )
    if result.name == "token types":
        return (
            f"verify_model: {name}'s per-token type fields over a completion, as rft_trl extends the prompt's (with "
            f"what {name}._update_model_kwargs_for_generation appends), differ from those its own generate gives the "
            f"completion by {result.difference:g} (compared exactly): log-probs would be scored under other token "
            "types than the completion was generated with. Please report it with `rft-trl env`; verify_model=False "
            "skips this check at your own risk."
        )
    if result.name == "encoder cache":
        return (
            f"verify_model: {name}'s log-probs with its cached encoder outputs differ from those with the pixels "
            f"{measured}. Train it with cache_encoder_outputs=False."
        )
    return (
        f"verify_model: {name}'s log-probs through rft_trl (a padded batch) differ from its own forward on each "
        f"sample alone {measured}: the model reads some input differently in a batch (a processor field, "
        "positions or token types), or its fused head differs from its logits (try fused_log_probs=False). Please "
        "report it with `rft-trl env`; verify_model=False skips this check at your own risk."
    )
