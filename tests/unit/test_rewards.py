"""Rule rewards and RewardScorer: combination, recipes, and failures that must never become a reward of 0."""

import asyncio
import functools
import math
import random
import re

import numpy as np
import pytest
import torch

from rft_trl.rewards import (
    BatchRewardError,
    RemoteRewardModel,
    RewardFailureError,
    RewardScorer,
    accuracy_reward,
    completion_text,
    extract_answer,
    format_reward,
    reward_func_name,
    think_format_reward,
)

# ---------------------------------------------------------------------------------------------------------------
# Rule rewards
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("red", "red", 1.0),
        ("Red.", "red", 1.0),  # case and a trailing full stop are ignored
        ("  RED!\n", "Red", 1.0),
        ("'red'", "red", 1.0),  # quotes are punctuation too
        ("<answer>red</answer>", "red", 1.0),
        ("<answer> Red. </answer>", "red", 1.0),
        ("I think blue. <answer>red</answer>", "red", 1.0),  # the tag wins over the surrounding text
        ("<answer>blue</answer> <answer>red</answer>", "red", 1.0),  # the last tag wins
        ("<ANSWER>red</ANSWER>", "red", 1.0),
        ("3", 3, 1.0),  # numeric references compare as their str()
        ("light  blue", "Light blue", 1.0),  # inner whitespace collapses
        ("blue", "red", 0.0),
        ("reddish", "red", 0.0),  # no substring matching
        ("the answer is red", "red", 0.0),  # without a tag the whole text must be the answer
        ("", "red", 0.0),
        ("<answer></answer>", "red", 0.0),
        ("3.0", 3, 0.0),  # string comparison, deliberately: the tasks have integer answers
        ("3", "<answer> 3 </answer>", 1.0),  # a tagged reference (R1-V's CLEVR solutions) is read like a completion
        ("<answer>3</answer>", "<answer> 3 </answer>", 1.0),
        ("4", "<answer> 3 </answer>", 0.0),
    ],
)
def test_accuracy_reward(completion, answer, expected):
    assert accuracy_reward(prompts=["q"], completions=[completion], answer=[answer]) == [expected]


def test_accuracy_reward_reads_conversational_completions():
    completions = [
        [{"role": "assistant", "content": "Red"}],
        [{"role": "assistant", "content": [{"type": "text", "text": "<answer>"}, {"type": "text", "text": "red"}]}],
        [{"role": "assistant", "content": [{"type": "text", "text": "blue"}]}],
    ]
    # The second message's text parts join to "<answer>red" (no closing tag), so the whole text is the answer.
    assert accuracy_reward(prompts=[None] * 3, completions=completions, answer=["red"] * 3) == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("reference", [None, "", " . ", "<answer> </answer>"])
def test_accuracy_reward_raises_without_reference(reference):
    with pytest.raises(ValueError, match="accuracy_reward needs a reference answer"):
        accuracy_reward(prompts=["q"], completions=["red"], answer=[reference])


def test_completion_text_and_extract_answer():
    assert completion_text("abc") == "abc"
    assert completion_text([]) == ""
    message = [{"role": "assistant", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}]
    assert completion_text(message) == "x"
    assert extract_answer("<answer>\n yes \n</answer>") == "yes"
    assert extract_answer("... yes!!") == "yes"


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("red", 1.0),
        ("light sky blue", 1.0),  # three words is the default maximum
        ("a light sky blue", 0.0),
        ("<answer>red</answer>", 1.0),
        ("  <answer> red </answer>\n", 1.0),
        ("red\nblue", 0.0),  # two lines
        ("", 0.0),
        ("<answer></answer>", 0.0),
        ("It is <answer>red</answer>", 0.0),  # text outside the tag
        ("<answer>red</answer><answer>blue</answer>", 0.0),
        ("<answer>red", 0.0),  # unclosed tag
        ("red</answer>", 0.0),  # stray closing tag
    ],
)
def test_format_reward(completion, expected):
    assert format_reward(prompts=["q"], completions=[completion]) == [expected]


def test_format_reward_max_words_binds_with_partial():
    longer = functools.partial(format_reward, max_words=4)
    assert longer(prompts=["q"], completions=["a light sky blue"]) == [1.0]
    with pytest.raises(ValueError, match="max_words must be at least 1"):
        format_reward(prompts=["q"], completions=["red"], max_words=0)


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<think>it is warm</think>red", 1.0),
        ("<think>\nhmm\n</think>\n<answer>red</answer>\n", 1.0),
        ("<think></think> red", 1.0),  # an empty thought is still the format
        ("<think>hmm</think>", 0.0),  # no answer
        ("<think>hmm</think>   \n", 0.0),
        ("red", 0.0),
        ("<think>a</think>b<think>c</think>d", 0.0),  # two blocks
        ("<think>a<think>b</think>c", 0.0),  # nested opening tag
        ("x <think>a</think> b", 0.0),  # text before the block
    ],
)
def test_think_format_reward(completion, expected):
    assert think_format_reward(prompts=["q"], completions=[completion]) == [expected]


# ---------------------------------------------------------------------------------------------------------------
# RewardScorer: combination
# ---------------------------------------------------------------------------------------------------------------


def length_reward(prompts, completions, **columns):
    return [float(len(c)) for c in completions]


def constant_reward(prompts, completions, **columns):
    return [0.5] * len(completions)


class LengthModel:
    """A callable object standing in for a reward-model wrapper."""

    def __call__(self, prompts, completions, **columns):
        return torch.tensor([10.0 * len(c) for c in completions])


class RecordingReward:
    """Records the batches it receives and returns scores from a per-sample table."""

    def __init__(self, scores_by_completion):
        self.scores_by_completion = scores_by_completion
        self.calls = []

    def __call__(self, prompts, completions, trainer_state, log_extra, log_metric, **columns):
        self.calls.append({"prompts": prompts, "completions": completions, **columns})
        return [self.scores_by_completion[c] for c in completions]


def test_weighted_sum_matches_hand_computation():
    scorer = RewardScorer([length_reward, constant_reward], reward_weights=[2.0, -1.0])
    output = scorer(["p1", "p2", "p3"], ["a", "bbb", ""])
    # 2 * len(c) - 0.5: "a" -> 1.5, "bbb" -> 5.5, "" -> -0.5.
    torch.testing.assert_close(output.rewards, torch.tensor([1.5, 5.5, -0.5]))
    assert output.rewards.dtype == torch.float32
    assert output.valid.tolist() == [True, True, True]
    torch.testing.assert_close(output.components["length_reward"], torch.tensor([1.0, 3.0, 0.0]))
    torch.testing.assert_close(output.components["constant_reward"], torch.tensor([0.5, 0.5, 0.5]))
    assert output.failures == {"length_reward": 0, "constant_reward": 0}
    assert output.first_failure is None
    assert output.metrics() == {
        "rollout/reward_failures": 0.0,
        "rollout/reward_abstained": 0.0,
        "rollout/reward_failures/length_reward": 0.0,
        "rollout/reward_failures/constant_reward": 0.0,
        "rewards/length_reward/mean": pytest.approx(4.0 / 3.0),
        "rewards/length_reward/std": pytest.approx(1.5275252),
        "rewards/constant_reward/mean": 0.5,
        "rewards/constant_reward/std": 0.0,
    }


def test_weighted_sum_matches_naive_loop_on_random_scores():
    rng = random.Random(0)
    table = {f"c{i}": [rng.uniform(-3, 3) for _ in range(3)] for i in range(16)}
    funcs = [
        functools.partial(lambda prompts, completions, k, **_: [table[c][k] for c in completions], k=k)
        for k in range(3)
    ]
    weights = [0.3, -1.7, 2.0]
    scorer = RewardScorer(funcs, reward_weights=weights, reward_fn_label_map={"a": 0, "b": 1, "c": 2})
    completions = list(table)
    output = scorer([""] * 16, completions)
    expected = [sum(w * table[c][k] for k, w in enumerate(weights)) for c in completions]
    torch.testing.assert_close(output.rewards, torch.tensor(expected))


def test_columns_arrive_as_aligned_keyword_lists():
    seen = {}

    def spy(prompts, completions, answer, image, trainer_state, log_extra, log_metric, **columns):
        seen.update(prompts=prompts, completions=completions, answer=answer, image=image, **columns)
        return [1.0] * len(completions)

    RewardScorer(spy)(["p0", "p1"], ["c0", "c1"], answer=["a0", "a1"], image=["i0", "i1"], extra=[0, 1])
    assert seen == {
        "prompts": ["p0", "p1"],
        "completions": ["c0", "c1"],
        "answer": ["a0", "a1"],
        "image": ["i0", "i1"],
        "extra": [0, 1],
    }


def test_rule_rewards_through_the_scorer():
    scorer = RewardScorer([accuracy_reward, format_reward], reward_weights=[1.0, 0.5])
    completions = ["<answer>red</answer>", "The colour is blue", "green"]
    output = scorer(["q"] * 3, completions, answer=["red", "blue", "red"])
    # accuracy: 1, 0 (whole text is not "blue"), 0; format: 1, 0 (four words), 1.
    torch.testing.assert_close(output.rewards, torch.tensor([1.5, 0.0, 0.5]))


def test_component_names():
    assert reward_func_name(length_reward) == "length_reward"
    assert reward_func_name(functools.partial(format_reward, max_words=2)) == "format_reward"
    assert reward_func_name(LengthModel()) == "LengthModel"
    assert reward_func_name(RemoteRewardModel("http://127.0.0.1:1/score")) == "remote"
    scorer = RewardScorer(["http://127.0.0.1:1/score", LengthModel(), length_reward])
    assert scorer.names == ["remote", "LengthModel", "length_reward"]
    assert isinstance(scorer.reward_funcs[0], RemoteRewardModel)


def test_callable_object_returning_a_tensor():
    output = RewardScorer(LengthModel())(["p", "p"], ["ab", "c"])
    torch.testing.assert_close(output.rewards, torch.tensor([20.0, 10.0]))


def test_label_map_names_components_apart():
    with pytest.raises(ValueError, match=r"share the names \['remote'\]; pass reward_fn_label_map"):
        RewardScorer(["http://127.0.0.1:1/a", "http://127.0.0.1:1/b"])
    scorer = RewardScorer(
        ["http://127.0.0.1:1/a", "http://127.0.0.1:1/b"], reward_fn_label_map={"safety": 1, "general": 0}
    )
    assert scorer.names == ["general", "safety"]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"reward_funcs": []}, ValueError, "reward_funcs is empty"),
        ({"reward_funcs": "not-a-url"}, ValueError, "is a string but not an http"),
        ({"reward_funcs": 3}, TypeError, "is not callable"),
        ({"reward_funcs": [length_reward], "reward_weights": [1.0, 2.0]}, ValueError, "got 2 reward_weights for 1"),
        ({"reward_funcs": [length_reward], "reward_weights": [math.nan]}, ValueError, "must be finite numbers"),
        (
            {"reward_funcs": [length_reward], "reward_weights": [1.0], "reward_recipe": {"a": [("length_reward", 1)]}},
            ValueError,
            "either reward_weights or reward_recipe",
        ),
        ({"reward_funcs": [length_reward], "max_reward_failure_rate": 1.5}, ValueError, r"must be in \[0, 1\]"),
        (
            {"reward_funcs": [length_reward, constant_reward], "reward_fn_label_map": {"x": 0, "y": 0}},
            ValueError,
            "exactly once",
        ),
        ({"reward_funcs": [length_reward], "reward_fn_label_map": {"x": 1}}, ValueError, "exactly once"),
        ({"reward_funcs": [length_reward], "reward_recipe": {"a": []}}, ValueError, r"reward_recipe\['a'\] is empty"),
        (
            {"reward_funcs": [length_reward], "reward_recipe": {"a": [("nope", 1.0)]}},
            ValueError,
            "names 'nope', not one of the reward functions",
        ),
        (
            {"reward_funcs": [length_reward], "reward_recipe": {"a": [("length_reward", 1.0), ("length_reward", 2)]}},
            ValueError,
            "names 'length_reward' twice",
        ),
        (
            {"reward_funcs": [length_reward], "reward_recipe": {"a": [("length_reward", "1")]}},
            ValueError,
            "not a finite number",
        ),
        (
            {"reward_funcs": [length_reward], "reward_recipe": {"a": [("length_reward", 1.0, "x")]}},
            ValueError,
            r"\(name, weight\) pairs",
        ),
        (
            {"reward_funcs": [length_reward, constant_reward], "reward_recipe": {"a": [("length_reward", 1.0)]}},
            ValueError,
            r"\['constant_reward'\] are used by no reward_recipe label",
        ),
    ],
)
def test_invalid_configuration(kwargs, error, message):
    with pytest.raises(error, match=message):
        RewardScorer(**kwargs)


def test_async_reward_functions_are_awaited():
    async def slow_reward(prompts, completions, **columns):
        await asyncio.sleep(0)
        return [float(len(c)) for c in completions]

    class AsyncModel:
        async def __call__(self, prompts, completions, **columns):
            await asyncio.sleep(0)
            return [0.5] * len(completions)

    scorer = RewardScorer([slow_reward, AsyncModel()])
    output = scorer(["p"] * 2, ["ab", "abcd"])
    torch.testing.assert_close(output.rewards, torch.tensor([2.5, 4.5]))
    assert scorer.names == ["slow_reward", "AsyncModel"]


def test_async_reward_works_inside_a_running_event_loop():
    async def slow_reward(prompts, completions, **columns):
        return [1.0] * len(completions)

    async def caller():  # e.g. a notebook cell: a loop is already running in this thread
        return RewardScorer(slow_reward)(["p"], ["c"])

    assert asyncio.run(caller()).rewards.tolist() == [1.0]


def test_none_means_not_applicable_not_failure():
    def math_only(prompts, completions, kind, **columns):
        return [1.0 if k == "math" else None for k in kind]

    def code_only(prompts, completions, kind, **columns):
        return [0.25 if k == "code" else None for k in kind]

    output = RewardScorer([math_only, code_only], reward_weights=[2.0, 4.0])(
        ["p"] * 3, ["a", "b", "c"], kind=["math", "code", "poem"]
    )
    # Each sample's reward sums the functions that applied: 2 * 1.0, 4 * 0.25; "poem" matched none.
    assert output.valid.tolist() == [True, True, False]
    torch.testing.assert_close(output.rewards[:2], torch.tensor([2.0, 1.0]))
    assert output.rewards[2].isnan()
    assert output.failures == {"math_only": 0, "code_only": 0} and output.first_failure is None
    metrics = output.metrics()
    assert metrics["rollout/reward_failures"] == 0.0 and metrics["rollout/reward_abstained"] == 1.0
    assert metrics["rewards/math_only/mean"] == 1.0  # over the samples it scored only


def test_all_none_batch_is_counted_not_a_failure(caplog):
    def never_applies(prompts, completions, **columns):
        return [None] * len(completions)

    with caplog.at_level("WARNING", logger="rft_trl.rewards.combine"):
        output = RewardScorer(never_applies, max_reward_failure_rate=0.0)(["p"] * 2, ["a", "b"])
    assert not output.valid.any() and output.num_excluded == 0 and output.num_abstained == 2
    assert "All reward functions returned None for the following kwargs:" in caplog.text  # TRL's wording
    assert "{'prompt': 'p', 'completion': 'a'}" in caplog.text and "2 of 2 samples had no reward" in caplog.text


def test_length_mismatch_is_an_error():
    scorer = RewardScorer(length_reward)
    with pytest.raises(ValueError, match="got 1 prompts for 2 completions"):
        scorer(["p"], ["a", "b"])
    with pytest.raises(ValueError, match="column 'answer' has 1 values for 2 completions"):
        scorer(["p", "p"], ["a", "b"], answer=["x"])


def test_empty_batch():
    output = RewardScorer(length_reward)([], [])
    assert output.rewards.shape == (0,) and output.valid.shape == (0,)
    assert output.metrics() == {
        "rollout/reward_failures": 0.0,
        "rollout/reward_abstained": 0.0,
        "rollout/reward_failures/length_reward": 0.0,
    }


# ---------------------------------------------------------------------------------------------------------------
# RewardScorer: recipes (LightRFT's reward_recipe)
# ---------------------------------------------------------------------------------------------------------------


def test_recipe_selects_functions_and_weights_per_label():
    accuracy = RecordingReward({"red": 1.0, "blue": 0.0, "essay": 0.0})
    judge = RecordingReward({"red": 0.2, "blue": 0.4, "essay": 0.9})
    scorer = RewardScorer(
        [accuracy, judge],
        reward_fn_label_map={"accuracy": 0, "judge": 1},
        reward_recipe={"vqa": [("accuracy", 1.0), ("judge", 0.5)], "open": [("judge", 2.0)]},
    )
    output = scorer(["p"] * 3, ["red", "essay", "blue"], label=["vqa", "open", "vqa"], answer=["red", None, "red"])
    # vqa: 1.0 * accuracy + 0.5 * judge; open: 2.0 * judge.
    # red: 1 + 0.1 = 1.1; essay: 2 * 0.9 = 1.8; blue: 0 + 0.2 = 0.2.
    torch.testing.assert_close(output.rewards, torch.tensor([1.1, 1.8, 0.2]))
    # accuracy only saw the vqa samples, with their columns aligned; the judge saw all three.
    assert accuracy.calls == [{"prompts": ["p", "p"], "completions": ["red", "blue"], "label": ["vqa", "vqa"],
                               "answer": ["red", "red"]}]  # fmt: skip
    assert judge.calls[0]["completions"] == ["red", "essay", "blue"]
    # Raw component scores, NaN where the label does not use the function; that is not a failure.
    torch.testing.assert_close(output.components["accuracy"], torch.tensor([1.0, math.nan, 0.0]), equal_nan=True)
    assert output.failures == {"accuracy": 0, "judge": 0}
    assert output.valid.all()
    assert output.metrics()["rewards/accuracy/mean"] == 0.5


def test_recipe_accepts_non_string_labels():
    scorer = RewardScorer([length_reward], reward_recipe={0: [("length_reward", 1.0)], 1: [("length_reward", -1.0)]})
    torch.testing.assert_close(scorer(["p", "p"], ["ab", "ab"], label=[0, 1]).rewards, torch.tensor([2.0, -2.0]))


def test_recipe_needs_label_column_and_known_labels():
    scorer = RewardScorer([length_reward], reward_recipe={"a": [("length_reward", 1.0)]})
    with pytest.raises(ValueError, match="by the 'label' column, which this batch lacks"):
        scorer(["p"], ["c"])
    # LightRFT scores an unknown label 1.0 with a printed warning; here it is an error.
    with pytest.raises(ValueError, match=r"labels 'b', 'c' have no reward_recipe entry; known labels: \[\"'a'\"\]"):
        scorer(["p"] * 3, ["c"] * 3, label=["b", "a", "c"])


def test_trainer_state_log_extra_and_log_metric_follow_trl():
    state = object()
    seen_states = []

    def judge(prompts, completions, trainer_state, log_extra, log_metric, **columns):
        seen_states.append(trainer_state)
        log_extra("judge_len", [len(c) for c in completions])
        log_metric("judge/calls", 1.0)
        return [0.5] * len(completions)

    def accuracy(prompts, completions, trainer_state, log_extra, log_metric, **columns):
        seen_states.append(trainer_state)
        log_metric("judge/calls", 3.0)
        return [1.0] * len(completions)

    scorer = RewardScorer(
        [judge, accuracy], reward_recipe={"open": [("judge", 1.0)], "vqa": [("accuracy", 1.0), ("judge", 1.0)]}
    )
    output = scorer(["p"] * 3, ["a", "bbb", "cc"], trainer_state=state, label=["vqa", "open", "open"])
    assert seen_states == [state, state]
    # The judge scored all three samples; accuracy only sample 0 and logged no column: its values stay aligned.
    assert output.extra_columns == {"judge_len": [1, 3, 2]}
    assert output.logged_metrics == {"judge/calls": 2.0}  # the mean of the values logged this batch
    assert output.metrics()["judge/calls"] == 2.0


def test_log_extra_is_aligned_to_the_samples_of_a_subset_call():
    def accuracy(prompts, completions, log_extra, **columns):
        log_extra("seen", completions)
        return [1.0] * len(completions)

    scorer = RewardScorer(
        [accuracy, length_reward], reward_recipe={"vqa": [("accuracy", 1.0)], "open": [("length_reward", 1.0)]}
    )
    output = scorer(["p"] * 3, ["a", "b", "c"], label=["open", "vqa", "vqa"])
    assert output.extra_columns == {"seen": [None, "b", "c"]}


def test_a_call_that_raised_logs_nothing():
    def fragile(prompts, completions, log_extra, log_metric, **columns):
        log_metric("attempts", 1.0)
        log_extra("text", completions)
        if len(completions) > 1:
            raise RuntimeError("batch too large")  # retried sample by sample, which succeeds
        return [1.0]

    output = RewardScorer(fragile)(["p"] * 2, ["a", "b"])
    assert output.valid.all()
    assert output.extra_columns == {"text": ["a", "b"]}
    assert output.logged_metrics == {"attempts": 1.0}


def test_log_extra_with_the_wrong_length_fails_that_call():
    def sloppy(prompts, completions, log_extra, **columns):
        log_extra("x", [1, 2, 3])
        return [1.0] * len(completions)

    output = RewardScorer(sloppy, max_reward_failure_rate=1.0)(["p"] * 2, ["a", "b"])
    assert not output.valid.any() and output.extra_columns == {}
    assert output.first_failure.message == (
        "log_extra('x', values) got 3 values for the 1 samples this call scores; log one value per sample"
    )


# ---------------------------------------------------------------------------------------------------------------
# RewardScorer: failures
# ---------------------------------------------------------------------------------------------------------------


class FailsOnSample:
    """Raises ZeroDivisionError whenever the batch holds the completion "bad"; counts its calls."""

    def __init__(self):
        self.batch_sizes = []

    def __call__(self, prompts, completions, **columns):
        self.batch_sizes.append(len(completions))
        return [1.0 / (c != "bad") for c in completions]


def test_raising_function_is_retried_per_sample():
    failing = FailsOnSample()
    scorer = RewardScorer([failing, constant_reward])
    output = scorer(["p"] * 4, ["ok", "ok", "bad", "ok"])
    # One batch call that raised, then one call per sample.
    assert failing.batch_sizes == [4, 1, 1, 1, 1]
    assert output.valid.tolist() == [True, True, False, True]
    # 1 + 0.5 where valid; NaN, not 0, where excluded.
    torch.testing.assert_close(output.rewards, torch.tensor([1.5, 1.5, math.nan, 1.5]), equal_nan=True)
    torch.testing.assert_close(
        output.components["FailsOnSample"], torch.tensor([1.0, 1.0, math.nan, 1.0]), equal_nan=True
    )
    # constant_reward did not fail, so its score for sample 2 is kept.
    torch.testing.assert_close(output.components["constant_reward"], torch.full((4,), 0.5))
    assert output.failures == {"FailsOnSample": 1, "constant_reward": 0}
    failure = output.first_failure
    assert (failure.component, failure.sample_index, failure.error_type) == ("FailsOnSample", 2, "ZeroDivisionError")
    assert failure.message == "float division by zero"
    assert "Traceback" in failure.traceback and "in __call__" in failure.traceback
    metrics = output.metrics()
    assert metrics["rollout/reward_failures"] == 1.0
    assert metrics["rollout/reward_failures/FailsOnSample"] == 1.0
    assert metrics["rewards/FailsOnSample/mean"] == 1.0  # mean over the three valid samples


@pytest.mark.parametrize(
    ("bad_score", "message"),
    [
        (math.nan, "returned nan"),
        (math.inf, "returned inf"),
        (-math.inf, "returned -inf"),
        ("0.7", r"returned '0.7' \(str\); expected a float or None"),
        ([1.0], r"returned \[1.0\] \(list\); expected a float or None"),
        (torch.tensor(math.nan), "returned nan"),
    ],
)
def test_invalid_score_fails_only_that_sample(bad_score, message):
    def shaky(prompts, completions, **columns):
        return [bad_score if c == "bad" else 0.25 for c in completions]

    output = RewardScorer(shaky)(["p"] * 3, ["ok", "bad", "ok"])
    assert output.valid.tolist() == [True, False, True]
    assert output.rewards[1].isnan() and output.rewards[1] != 0
    torch.testing.assert_close(output.rewards[[0, 2]], torch.tensor([0.25, 0.25]))
    assert output.first_failure.sample_index == 1
    assert output.first_failure.error_type == "InvalidScore"
    assert output.first_failure.message.startswith("returned") and output.first_failure.traceback == ""
    assert re.fullmatch(message + ".*", output.first_failure.message)


@pytest.mark.parametrize(("returned", "got"), [([1.0, 2.0], "2 scores"), ([1.0] * 4, "4 scores"), (1.0, "a non-list")])
def test_wrong_number_of_scores_fails_the_whole_batch(returned, got):
    def miscounting(prompts, completions, **columns):
        return returned

    output = RewardScorer([miscounting, constant_reward], max_reward_failure_rate=1.0)(["p"] * 3, ["a", "b", "c"])
    assert not output.valid.any()
    assert output.rewards.isnan().all()
    assert output.failures == {"miscounting": 3, "constant_reward": 0}
    assert output.first_failure.sample_index is None
    assert output.first_failure.describe() == (
        f"reward function 'miscounting' failed on the whole batch: InvalidScore: returned {got} for 3 samples; "
        "expected one score each"
    )


def test_batch_reward_error_is_not_retried_per_sample():
    calls = []

    def service_down(prompts, completions, **columns):
        calls.append(len(completions))
        raise BatchRewardError("reward service unreachable")

    with pytest.raises(RewardFailureError, match="BatchRewardError: reward service unreachable"):
        RewardScorer(service_down)(["p"] * 5, ["c"] * 5)
    assert calls == [5]


def test_failed_zero_weight_function_does_not_exclude():
    failing = FailsOnSample()
    output = RewardScorer([failing, constant_reward], reward_weights=[0.0, 1.0])(["p"] * 2, ["bad", "ok"])
    # The failure is counted and its score is NaN, but with weight 0 it does not take part in the reward.
    assert output.valid.tolist() == [True, True]
    torch.testing.assert_close(output.rewards, torch.tensor([0.5, 0.5]))
    assert output.failures["FailsOnSample"] == 1
    assert output.metrics()["rollout/reward_failures"] == 0.0


def test_recipe_failure_excludes_only_samples_whose_label_uses_the_function():
    failing = FailsOnSample()
    scorer = RewardScorer(
        [failing, constant_reward],
        reward_recipe={"strict": [("FailsOnSample", 1.0), ("constant_reward", 1.0)], "soft": [("constant_reward", 1)]},
    )
    # "bad" fails FailsOnSample, but the soft sample never asks for it.
    output = scorer(["p"] * 3, ["bad", "bad", "ok"], label=["strict", "soft", "strict"])
    assert output.valid.tolist() == [False, True, True]
    torch.testing.assert_close(output.rewards, torch.tensor([math.nan, 0.5, 1.5]), equal_nan=True)


def test_failure_rate_above_threshold_raises_with_traceback():
    failing = FailsOnSample()
    scorer = RewardScorer(failing, max_reward_failure_rate=0.5)
    # 2 of 4 failed = 0.5: not above the threshold.
    output = scorer(["p"] * 4, ["bad", "ok", "bad", "ok"])
    assert output.num_excluded == 2
    # 3 of 4 failed = 0.75: above it.
    with pytest.raises(RewardFailureError) as info:
        scorer(["p"] * 4, ["bad", "bad", "ok", "bad"])
    text = str(info.value)
    assert text.startswith("3 of 4 samples (75.0%) have a failed reward, above max_reward_failure_rate=0.5.")
    assert "Failed samples per reward function: {'FailsOnSample': 3}" in text
    assert "reward function 'FailsOnSample' failed on sample 0: ZeroDivisionError: float division by zero" in text
    assert "Traceback (most recent call last)" in text
    assert info.value.output.valid.tolist() == [False, False, True, False]


def test_missing_column_is_reported_not_scored_zero():
    # accuracy_reward needs the answer column; without it every sample fails and the run stops.
    with pytest.raises(RewardFailureError, match="missing 1 required positional argument: 'answer'"):
        RewardScorer(accuracy_reward)(["q"], ["red"])


def test_failures_are_logged(caplog):
    with caplog.at_level("WARNING", logger="rft_trl.rewards.combine"):
        RewardScorer(FailsOnSample())(["p"] * 3, ["ok", "bad", "ok"])
    assert "reward function 'FailsOnSample' failed on 1 of 3 samples" in caplog.text


def test_numpy_scores_are_accepted_like_tensors_and_lists():
    def as_array(prompts, completions, **columns):
        return np.array([0.5, 1.5], dtype=np.float32)

    def as_numpy_scalars(prompts, completions, **columns):
        return [np.float64(2.0), np.array(3.0)]

    out = RewardScorer([as_array, as_numpy_scalars], reward_weights=[1.0, 1.0])(["p0", "p1"], ["c0", "c1"])
    assert out.valid.all() and out.rewards.tolist() == [2.5, 4.5]


def trl_rewards(output, num_samples):
    """What TRL's `GRPOTrainer._calculate_rewards` makes of one reward function's `output`: its own code, run on a
    stand-in for the trainer that carries just what that method reads (one process, CPU)."""
    from types import SimpleNamespace

    from trl import GRPOTrainer

    def reward(prompts, completions, **columns):
        return output

    trainer = SimpleNamespace(
        accelerator=SimpleNamespace(device=torch.device("cpu"), is_main_process=True),
        args=SimpleNamespace(report_to=[]),
        state=SimpleNamespace(global_step=0),
        reward_funcs=[reward],
        reward_processing_classes=[None],
        reward_func_names=["reward"],
        environments=None,
        _log_completion_extra=None,
        _log_metric=None,
    )
    rows = [{"prompt": "p"}] * num_samples
    return GRPOTrainer._calculate_rewards(trainer, rows, ["p"] * num_samples, ["c"] * num_samples, [[0]] * num_samples)


@pytest.mark.parametrize(
    "output",
    [
        [True, False, True],
        [np.True_, np.False_, np.True_],
        np.array([True, False, False]),
        torch.tensor([False, True, True]),
        [torch.tensor(True), np.bool_(False), 0.25],  # one-element tensors and numpy scalars mixed with floats
        [True, None, 2],  # None: not applicable, NaN in both
    ],
    ids=["bool", "numpy-bool", "numpy-bool-array", "bool-tensor", "mixed", "with-none"],
)
def test_bool_scores_are_cast_as_trl_casts_them(output):
    # TRL builds torch.tensor(scores, dtype=float32): True -> 1.0, False -> 0.0. The scorer must give the same.
    def boolean(prompts, completions, **columns):
        return output

    expected = trl_rewards(output, 3)[:, 0]
    scored = RewardScorer(boolean)(["p"] * 3, ["c"] * 3)
    torch.testing.assert_close(scored.components["boolean"], expected, equal_nan=True)
    torch.testing.assert_close(scored.rewards, expected, equal_nan=True)
    assert scored.failures == {"boolean": 0} and scored.first_failure is None
    assert scored.valid.tolist() == (~expected.isnan()).tolist()


def test_a_string_score_still_fails_where_trl_raises():
    # The control: TRL cannot cast a string (it raises and the run stops); the scorer counts a reward failure.
    with pytest.raises(TypeError, match="must be real number, not str"):
        trl_rewards([True, "yes", 1.0], 3)

    def wordy(prompts, completions, **columns):
        return [True, "yes", 1.0]

    output = RewardScorer(wordy)(["p"] * 3, ["c"] * 3)
    assert output.valid.tolist() == [True, False, True]
    assert output.failures == {"wordy": 1} and output.metrics()["rollout/reward_failures"] == 1.0
    assert output.first_failure.message == "returned 'yes' (str); expected a float or None"
    torch.testing.assert_close(output.rewards, torch.tensor([1.0, math.nan, 1.0]), equal_nan=True)
