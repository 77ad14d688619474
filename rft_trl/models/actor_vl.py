"""The seed's module path `lightrft.models.actor_vl`, kept for its users; `ActorVL` lives in `rft_trl.compat`."""

from ..compat.actors import ActorVL

__all__ = ["ActorVL"]
