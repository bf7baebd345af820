"""The public asyncio API in one place: the entry points and the objects they return.

Rule 1: this module only gathers names; each responsibility has its own module:
`establish` (initiate, decide-then-race), `listener` (listen, stack choice per IP protocol),
`responder` (respond), `datagram` (new_source, new_sink), `carrier` (the Carrier).
"""

from __future__ import annotations

from ..errors import MptcpRefusedError, PathLostError
from ..system.netevents import NetChange
from .carrier import Carrier
from .datagram import Sink, Source, new_sink, new_source
from .establish import initiate
from .listener import Listener, listen
from .monitor import PathMonitor, path_monitor
from .responder import Reply, Responder, respond

__all__ = ["Carrier", "Listener", "MptcpRefusedError", "NetChange", "PathLostError",
           "PathMonitor", "Reply", "Responder", "Sink", "Source", "initiate", "listen",
           "new_sink", "new_source", "path_monitor", "respond"]
