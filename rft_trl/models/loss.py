"""The seed's module path `lightrft.models.loss`, kept for its users; the loss modules live in `rft_trl.compat`."""

from ..compat.loss import GPTLMLoss, PolicyLoss, ValueLoss

__all__ = ["GPTLMLoss", "PolicyLoss", "ValueLoss"]
