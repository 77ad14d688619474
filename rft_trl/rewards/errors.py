"""Exceptions of the rewards package, in their own module so that the scorer and the remote client share them."""

from __future__ import annotations


class BatchRewardError(RuntimeError):
    """
    Raised by a reward function when its failure concerns the whole batch (the reward service is down, say), so
    that [`RewardScorer`] marks every sample of the batch failed at once instead of retrying sample by sample.
    """


class RewardFailureError(RuntimeError):
    """
    Raised by [`RewardScorer`] when the fraction of samples with a failed reward exceeds
    ``max_reward_failure_rate``. The message holds the first failure with its traceback; ``output`` holds the full
    [`RewardOutput`] for inspection.
    """

    def __init__(self, message: str, output: object) -> None:
        super().__init__(message)
        self.output = output


class RemoteRewardError(RuntimeError):
    """Raised by [`RemoteRewardModel`] for a request the service refused or answered with something unusable."""


class RemoteRewardUnavailableError(RemoteRewardError, BatchRewardError):
    """Raised by [`RemoteRewardModel`] when the service stayed unreachable through every retry or the time budget."""
