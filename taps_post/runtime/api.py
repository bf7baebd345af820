"""The public asyncio API in one place: the entry points and the objects they return.

Rule 1: this module only gathers names; each responsibility has its own module:
`establish` (initiate, decide-then-race), `listener` (listen, stack choice per IP protocol),
`responder` (respond), `datagram` (new_source, new_sink), `carrier` (the Carrier),
`signalling`, `rendezvous_client` and `rendezvous_point` (rendezvous: how peers exchange
offers, the point's client, the point).
"""

from __future__ import annotations

from ..errors import MptcpRefusedError, PathLostError
from ..system.netevents import NetChange
from .carrier import Carrier
from .datagram import Sink, Source, new_sink, new_source
from .establish import initiate
from .listener import Listener, listen
from .monitor import PathMonitor, path_monitor
from .rendezvous_client import RendezvousClient
from .rendezvous_point import RendezvousPoint
from .responder import Reply, Responder, respond
from .signalling import MemorySignalling, Signalling

__all__ = ["Carrier", "Listener", "MemorySignalling", "MptcpRefusedError", "NetChange",
           "PathLostError", "PathMonitor", "RendezvousClient", "RendezvousPoint", "Reply",
           "Responder", "Signalling", "Sink", "Source", "initiate", "listen", "new_sink",
           "new_source", "path_monitor", "respond"]
