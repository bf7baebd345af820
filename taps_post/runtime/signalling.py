"""How two rendezvous peers exchange their offers (draft 3.1.3; docs/rendezvous.md).

Rule 1: signalling is an interface, `Signalling`: the built-in one is the rendezvous point
(`RendezvousClient`, over a taps_post TLS carrier that authenticates us by our client
certificate); an application may carry the same offers over its own channel instead (a chat
connection, a web API) by passing any object with these three methods as
`Remote.rendezvous(..., via=obj)`.
Rule 2: an offer is a JSON-serialisable dict (taps_post.ice.offer defines its fields and
checks them); signalling never looks inside it and never sees application data: that
travels only over the ICE path, encrypted by QUIC end to end.
Rule 3: `receive` returns only offers from the peer it names, newest first; an offer older
than the one it last returned for that peer is never returned again.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["Signalling"]


@runtime_checkable
class Signalling(Protocol):
    """Carries offers between identities (Rule 1)."""

    async def send(self, sender: str, to: str, offer: dict[str, Any]) -> None:
        """Deliver `offer` from `sender` (our identity) to the peer `to`."""
        ...

    async def receive(self, me: str, peer: str, timeout: float) -> dict[str, Any]:
        """The next offer to `me` from `peer`; TimeoutError after `timeout` seconds."""
        ...

    async def aclose(self) -> None:
        """Release what the channel holds (its carrier to the rendezvous point)."""
        ...
