"""QUIC on aioquic: one Carrier per bidirectional stream, 0-RTT, DATAGRAM frames.

Rule 1: aioquic does QUIC and TLS; this package maps its connection onto Transients and
reimplements neither (docs/quic.md describes the behaviour, docs/architecture.md the plug-in
contract).
Rule 2: modules, lowest first, each importing only those before it: `wire` (the bytes besides
the framed stream: DATAGRAM frames, expiring-message streams), `compat` (every aioquic detail
that is private or marked internal, and nothing else), `config` (QuicConfiguration from the
policy's settings; the pins and ticket origins a server must prove), `stream`
(QuicStreamTransient, which sees its connection only as a `StreamHost`), `session`
(QuicSession: aioquic's protocol pump, event routing, QuicClosedError), `stack` (QuicStack
and QuicListening, the plug-in face).
Rule 3: this `__init__` only re-exports; `taps_post.stacks` imports it lazily and takes
`QuicStack` from it.
"""

from __future__ import annotations

from .session import QuicClosedError, QuicSession
from .stack import QuicListening, QuicStack
from .stream import QuicStreamTransient, StreamHost

__all__ = ["QuicClosedError", "QuicListening", "QuicSession", "QuicStack",
           "QuicStreamTransient", "StreamHost"]
