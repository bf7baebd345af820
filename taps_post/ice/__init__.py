"""ICE for rendezvous carriers (RFC 8445; docs/rendezvous.md): the offer two peers exchange
through signalling (`offer.py`) and the agent that finds a path between them (`agent.py`).

Rule 1: aioice is imported by `agent.py` only (its Rule 1); `offer.py` is pure data, so the
rendezvous point and the runtime can check offers without loading aioice.
Rule 2: rank 4 (tests/test_architecture.py): this package imports only the decision core,
errors, certs, policy and the standard library; it never imports the stacks (rank 5), which
is why the path matches `stacks.base.DatagramPath` structurally instead of by subclassing.
Rule 3: importing the package loads neither aioice nor asyncio: the agent's names are
loaded on first use (the module `__getattr__`), the offer's at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .offer import MAX_CANDIDATES, MAX_OFFER_BYTES, Offer, OfferError

if TYPE_CHECKING:
    from .agent import (
        IceAgent,
        IceError,
        IcePath,
        TurnServer,
        parse_stun,
        parse_turn_url,
        redact_turn_url,
    )

__all__ = ["MAX_CANDIDATES", "MAX_OFFER_BYTES", "IceAgent", "IceError", "IcePath", "Offer",
           "OfferError", "TurnServer", "parse_stun", "parse_turn_url", "redact_turn_url"]

_AGENT = frozenset({"IceAgent", "IceError", "IcePath", "TurnServer", "parse_stun",
                    "parse_turn_url", "redact_turn_url"})


def __getattr__(name: str) -> Any:
    if name in _AGENT:
        from . import agent

        return getattr(agent, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
