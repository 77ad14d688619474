"""One update of `PPOTrainerVL` gives the loss and the gradients of TRL's `GRPOTrainer`, with TRL's own code as the
reference, for every `loss_type` TRL offers, with and without the KL term, on-policy and with clipping active.

How one case runs:

1. Both trainers start from one saved tiny model in float64; both policies then move by the same seeded perturbation
   (training so far), so that the policy is no longer the reference.
2. TRL's own `_generate_and_score_completions` samples 4 completions for each of 2 prompts, scores them with the
   reward function, and computes its advantages and log-probs (old and reference, where it needs them).
3. rft_trl takes the same completions: its own `RewardScorer` scores the texts TRL's reward function saw, and its
   `ExperienceMaker.experience_from` computes its own log-probs and advantages. Its rewards and log-probs are checked
   against TRL's; its items then carry TRL's advantages and log-probs, so that the loss alone is compared (the
   advantages are compared by `test_group_norm_advantages_match_trls`).
4. With `num_iterations > 1` both policies take one more identical step (a first PPO epoch), so the rollout's
   log-probs are old and the clipping acts.
5. TRL's `compute_loss` on its batch and ours on the replay buffer's micro-batch of our items, on the same weights;
   the losses and every parameter's gradient are compared.

Tolerance. TRL's fused LM head computes the log-softmax in float32 even for a float64 model (`trl/kernels/
chunked_logprob.py`: float32 running max and sums, `tile.float()`), so its log-probs carry float32 rounding (up to
6e-7 here) that the ratio, the loss and the gradient inherit; ours are float64. So the bound is 1e-6 relative to
the scale, with a floor of 1: the losses within 1e-6 (1 + |loss|), the gradients within 1e-6 (1 + the largest
gradient entry). The largest differences measured are 6.4e-7 on a loss of 1.5 (VESPO) and 8.8e-7 on gradients up to
2.2 (LUSPO).
"""

import dataclasses

import pytest
import torch
from transformers import AutoModelForCausalLM
from trl import GRPOConfig, GRPOTrainer

from rft_trl import PPOTrainerVL, RFTConfig
from rft_trl.testing import distinct_reward, load_processing_class, make_task_dataset, save_tiny_model

TOLERANCE = 1e-6
NUM_PROMPTS, NUM_GENERATIONS, MAX_COMPLETION_LENGTH = 2, 4, 8
# The settings both trainers get, under TRL's names (RFTConfig takes them as they are). One micro-batch holds the
# whole generation batch (2 prompts x 4 completions), so TRL's normalisers that span the accumulation window (`dapo`'s
# `num_items_in_batch`, the others' division by the accumulation steps) act on exactly this batch.
SETTINGS = {
    "num_generations": NUM_GENERATIONS,
    "max_completion_length": MAX_COMPLETION_LENGTH,
    "per_device_train_batch_size": NUM_PROMPTS * NUM_GENERATIONS,
    "gradient_accumulation_steps": 1,
    "temperature": 0.8,
    "epsilon": 0.2,
    "use_cpu": True,
    "bf16": False,
    "report_to": "none",
    "save_strategy": "no",
    "seed": 0,
}
# The tiny model rarely samples its EOS token: a bias at sampling time (transformers' `sequence_bias`, through TRL's
# `generation_kwargs`) ends completions at different lengths, which is what tells the loss types' normalisations
# apart. Scoring uses the model's own distribution on both sides.
EOS_SAMPLING_BIAS = 4.0

# Every loss_type of TRL 1.16 (GRPOConfig.loss_type), each at the importance-sampling level TRL recommends for it,
# plus GSPO (grpo at the sequence level).
LOSS_TYPES = {
    "grpo": {"loss_type": "grpo"},
    "gspo": {"loss_type": "grpo", "importance_sampling_level": "sequence"},
    "bnpo": {"loss_type": "bnpo"},
    "dr_grpo": {"loss_type": "dr_grpo"},
    "dapo": {"loss_type": "dapo", "epsilon_high": 0.28},
    "luspo": {"loss_type": "luspo", "importance_sampling_level": "sequence"},
    # CISPO caps the ratio at epsilon_high itself (not 1 + epsilon_high): 1.05 caps some of the ratios here.
    "cispo": {"loss_type": "cispo", "epsilon_high": 1.05},
    "sapo": {"loss_type": "sapo"},
    "vespo": {"loss_type": "vespo"},
}
# TRL's metric of the tokens its clipping acted on, per loss type; SAPO and VESPO have none.
CLIP_METRICS = {"cispo": "cispo_clip_ratio", "sapo": None, "vespo": None}


CASES = [
    pytest.param(name, beta, n, id=f"{name}-beta{beta}-iterations{n}")
    for name in LOSS_TYPES
    for beta in (0.0, 0.04)
    for n in (1, 2)
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_model("qwen2", str(tmp_path_factory.mktemp("tiny_qwen2")))


def perturb(models, seed):
    """Move every model's parameters by the same seeded noise: identical weights stay identical."""
    generator = torch.Generator().manual_seed(seed)
    noise = {
        name: 0.05 * torch.randn(p.shape, generator=generator, dtype=p.dtype)
        for name, p in models[0].named_parameters()
    }
    with torch.no_grad():
        for model in models:
            for name, p in model.named_parameters():
                p.add_(noise[name])


def build_trainers(checkpoint, tmp_path, trl_settings, rft_settings):
    tokenizer = load_processing_class(checkpoint)
    dataset = make_task_dataset("text", NUM_PROMPTS)
    eos_bias = {"sequence_bias": {(tokenizer.eos_token_id,): EOS_SAMPLING_BIAS}}
    trl_trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float64),
        reward_funcs=[distinct_reward],
        args=GRPOConfig(str(tmp_path / "trl"), generation_kwargs=eos_bias, **SETTINGS, **trl_settings),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    rft_trainer = PPOTrainerVL(
        AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float64),
        [distinct_reward],
        RFTConfig(str(tmp_path / "rft"), generation_kwargs=eos_bias, **SETTINGS, **rft_settings),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    return trl_trainer, rft_trainer, dataset


def rft_rollout(rft_trainer, trl_trainer, inputs):
    """rft_trl's rollout of TRL's completions: its own reward scoring, log-probs and advantages."""
    completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
    # The layout rft_trl's engines return: left-padded prompts, then the completions, right-padded.
    samples = {
        "sequences": torch.cat([inputs["prompt_ids"], completion_ids], dim=1),  # [N, P + A]
        "attention_mask": torch.cat([inputs["prompt_mask"], completion_mask], dim=1),  # [N, P + A]
        "action_mask": completion_mask.bool(),  # [N, A]
        "completion_ids": completion_ids,
        "token_fields": {},
        "multimodal_inputs": [{} for _ in range(len(completion_ids))],
    }
    # The prompts and completions exactly as TRL handed them to its reward function.
    prompts, completions = list(trl_trainer._logs["prompt"]), list(trl_trainer._logs["completion"])
    ids = [row[mask.bool()].tolist() for row, mask in zip(completion_ids, completion_mask)]
    rewards = rft_trainer.reward_scorer(prompts, completions, completion_ids=ids)
    return rft_trainer.experience_maker.experience_from(samples, completions, prompts, rewards, NUM_GENERATIONS)


# rft_trl's per-sample item fields and the TRL batch entries they correspond to.
ROLLOUT_LOG_PROBS = {"action_log_probs": "old_per_token_logps", "base_action_log_probs": "ref_per_token_logps"}


def compare_log_probs(items, inputs) -> dict[str, float]:
    """Assert that our rollout log-probs are TRL's, up to its float32 rounding; return the largest differences."""
    mask = inputs["completion_mask"].bool()  # [N, A]
    differences = {}
    for field, entry in ROLLOUT_LOG_PROBS.items():
        if entry in inputs:
            for item, row, keep in zip(items, inputs[entry], mask):
                torch.testing.assert_close(getattr(item, field), row[keep].double(), rtol=TOLERANCE, atol=TOLERANCE)
            differences[field] = max(
                (getattr(item, field) - row[keep]).abs().max().item()
                for item, row, keep in zip(items, inputs[entry], mask)
            )
    return differences


def with_trl_loss_inputs(items, inputs):
    """Our items with TRL's advantages and rollout log-probs: the loss's inputs are then the same on both sides."""
    mask = inputs["completion_mask"].bool()  # [N, A]
    return [
        dataclasses.replace(
            item,
            advantages=torch.full_like(item.advantages, inputs["advantages"][i].item()),
            **{
                field: inputs[entry][i][mask[i]].double()
                for field, entry in ROLLOUT_LOG_PROBS.items()
                if entry in inputs
            },
        )
        for i, item in enumerate(items)
    ]


@dataclasses.dataclass
class Update:
    trl_loss: float
    rft_loss: float
    grad_difference: float  # the largest over every parameter's entries
    largest_grad: float
    reward_difference: float
    advantage_difference: float  # ours, from the same rewards, against TRL's
    log_prob_differences: dict[str, float]  # our rollout log-probs against TRL's, where TRL has them
    completion_lengths: list[int]
    trl_metrics: dict[str, list[float]]


def one_update(checkpoint, tmp_path, trl_settings, rft_settings=None):
    trl_trainer, rft_trainer, dataset = build_trainers(
        checkpoint, tmp_path, trl_settings, trl_settings if rft_settings is None else rft_settings
    )
    policies = [trl_trainer.model, rft_trainer.model]
    perturb(policies, seed=1)  # training so far: the policy has left the reference
    for policy in policies:
        policy.train()
    # TRL's generation batch as its sampler makes it: each prompt row repeated num_generations times.
    rows = [dict(dataset[i]) for i in range(NUM_PROMPTS) for _ in range(NUM_GENERATIONS)]
    inputs = trl_trainer._generate_and_score_completions(rows)
    rollout = rft_rollout(rft_trainer, trl_trainer, inputs)

    mask = inputs["completion_mask"].bool()  # [N, A]
    trl_rewards = torch.tensor(trl_trainer._logs["rewards"]["distinct_reward"])
    our_advantages = torch.stack([item.advantages[0] for item in rollout.items])  # [N]
    log_prob_differences = compare_log_probs(rollout.items, inputs)
    items = with_trl_loss_inputs(rollout.items, inputs)

    if trl_trainer.num_iterations > 1:
        perturb(policies, seed=2)  # the first PPO epoch's step: the rollout's log-probs are now old
    # Trainer's inner loop sets this at every accumulation window; TRL's loss divides by it.
    trl_trainer.current_gradient_accumulation_steps = 1
    trl_loss = trl_trainer.compute_loss(trl_trainer.model, inputs)
    trl_loss.backward()
    rft_loss = rft_trainer.compute_loss(rft_trainer.model, rft_trainer.replay_buffer.collate_fn(items))
    rft_loss.backward()
    theirs, ours = dict(trl_trainer.model.named_parameters()), dict(rft_trainer.model.named_parameters())
    assert theirs.keys() == ours.keys()
    assert all(theirs[name].grad is not None and ours[name].grad is not None for name in theirs)
    return Update(
        trl_loss=trl_loss.item(),
        rft_loss=rft_loss.item(),
        grad_difference=max((theirs[name].grad - ours[name].grad).abs().max().item() for name in theirs),
        largest_grad=max(p.grad.abs().max().item() for p in theirs.values()),
        reward_difference=(rollout.rewards - trl_rewards).abs().max().item(),
        advantage_difference=(our_advantages - inputs["advantages"]).abs().max().item(),
        log_prob_differences=log_prob_differences,
        completion_lengths=mask.sum(-1).tolist(),
        trl_metrics=dict(trl_trainer._metrics["train"]),
    )


@pytest.mark.parametrize(("name", "beta", "num_iterations"), CASES)
def test_loss_and_gradients_match_trls(checkpoint, tmp_path, name, beta, num_iterations):
    update = one_update(checkpoint, tmp_path, {**LOSS_TYPES[name], "beta": beta, "num_iterations": num_iterations})
    # Completions of several lengths: the loss types' normalisations differ only then.
    assert len(set(update.completion_lengths)) > 1, update.completion_lengths
    assert update.reward_difference == 0.0
    # TRL scores the reference with beta > 0 and the rollout policy when its log-probs are reused; so do we.
    expected = {"base_action_log_probs"} if beta else set()
    assert set(update.log_prob_differences) == expected | ({"action_log_probs"} if num_iterations > 1 else set())
    if num_iterations > 1:
        clip_metric = CLIP_METRICS.get(LOSS_TYPES[name]["loss_type"], "clip_ratio/region_mean")
        if clip_metric is not None:
            assert update.trl_metrics[clip_metric][-1] > 0, "the ratios never reached the clipping"
    assert abs(update.trl_loss - update.rft_loss) <= TOLERANCE * (1 + abs(update.trl_loss)), update
    assert update.grad_difference <= TOLERANCE * (1 + update.largest_grad), update


def test_the_comparison_tells_loss_types_apart(checkpoint, tmp_path):
    # TRL's grpo (mean over each sequence's tokens, then over sequences) against our bnpo (mean over all tokens) on
    # completions of different lengths: the comparison above must see the difference.
    update = one_update(
        checkpoint,
        tmp_path,
        {"loss_type": "grpo", "beta": 0.0, "num_iterations": 2},
        {"loss_type": "bnpo", "beta": 0.0, "num_iterations": 2},
    )
    assert abs(update.trl_loss - update.rft_loss) > 1000 * TOLERANCE, update
    assert update.grad_difference > 1000 * TOLERANCE * (1 + update.largest_grad), update


def test_group_norm_advantages_match_trls(checkpoint, tmp_path):
    settings = {"loss_type": "grpo", "beta": 0.0, "num_iterations": 1}
    update = one_update(checkpoint, tmp_path, settings)
    assert update.reward_difference == 0.0
    assert update.advantage_difference <= TOLERANCE, update
    # Control: the epsilon added to the groups' reward std (TRL's 1e-4, advantage_std_eps) is seen by the comparison.
    other = one_update(checkpoint, tmp_path / "other", settings, {**settings, "advantage_std_eps": 1e-6})
    assert other.advantage_difference > 10 * TOLERANCE, other
