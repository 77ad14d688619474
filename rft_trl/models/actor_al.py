"""The seed's module path `lightrft.models.actor_al`, kept for its users; `ActorAL` lives in `rft_trl.compat`."""

from ..compat.actors import ActorAL

__all__ = ["ActorAL"]
