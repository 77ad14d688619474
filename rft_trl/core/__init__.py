"""Pure tensor math of reinforcement fine-tuning: log-probs, advantages, losses and KL estimators."""

from .logprobs import entropy_from_logits, log_probs_and_entropy_from_hidden, log_probs_from_logits

__all__ = ["entropy_from_logits", "log_probs_and_entropy_from_hidden", "log_probs_from_logits"]
