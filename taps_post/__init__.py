"""taps_post: Post Sockets / TAPS in Python.

Applications say what they need, administrators say what the machine allows, and a
policy-driven, explainable decision core picks interface, address and protocol stack.
This module stays light on purpose (no asyncio, no aioquic): `taps-post policy explain`
imports it and must start fast. The runtime's names load on first use (`_LAZY`); the layers
behind them are described in docs/architecture.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .decision.decide import decide
from .decision.decision import (
    Candidate,
    Decision,
    Exclusion,
    IceCandidate,
    IcePair,
    RankKey,
    RendezvousReport,
    SubflowPlan,
)
from .decision.envfile import load_environment
from .decision.environment import Address, CacheEntry, Environment, Interface
from .decision.request import Request, parse_target
from .dryrun import explain
from .errors import (
    ArgumentError,
    Attempt,
    ConnectionClosedError,
    DeframingError,
    Diagnostic,
    EstablishmentError,
    FailureKind,
    ForkRefusedError,
    FrameTooLargeError,
    IdleTimeoutError,
    InputError,
    MessageTooLargeError,
    MptcpRefusedError,
    PathLostError,
    PolicyError,
    RemoteProtocolError,
    ResolutionError,
    SystemPolicyError,
    TapsError,
    UsageError,
)
from .policy.context import PolicyContext
from .policy.registry import Pref

__all__ = [
    "Address",
    "ArgumentError",
    "Association",
    "AssociationStore",
    "Attempt",
    "CacheEntry",
    "Candidate",
    "Carrier",
    "CarrierEvent",
    "Closed",
    "ConnectionClosedError",
    "DaneError",
    "Decision",
    "DeframingError",
    "Diagnostic",
    "Dormant",
    "Environment",
    "EstablishmentError",
    "Exclusion",
    "FailureKind",
    "ForkRefusedError",
    "FrameTooLargeError",
    "Framer",
    "IceCandidate",
    "IcePair",
    "IdleTimeoutError",
    "InMessage",
    "InputError",
    "Interface",
    "LengthPrefixFramer",
    "LineFramer",
    "Listener",
    "Local",
    "MemorySignalling",
    "MessageTooLargeError",
    "MptcpRefusedError",
    "NetChange",
    "OutMessage",
    "Path",
    "PathChange",
    "PathLostError",
    "PathMonitor",
    "PolicyContext",
    "PolicyError",
    "Pref",
    "RacedSocket",
    "RankKey",
    "RawFramer",
    "Ready",
    "Remote",
    "RemoteProtocolError",
    "RendezvousClient",
    "RendezvousPoint",
    "RendezvousReport",
    "Reply",
    "Request",
    "ResolutionError",
    "Responder",
    "Signalling",
    "Sink",
    "SoftError",
    "Source",
    "Subflow",
    "SubflowPlan",
    "SystemPolicyError",
    "TapsError",
    "Transient",
    "UsageError",
    "certs",
    "decide",
    "explain",
    "initiate",
    "listen",
    "load_environment",
    "new_sink",
    "new_source",
    "open_socket",
    "parse_target",
    "path_monitor",
    "respond",
    "stacks",
]

__version__ = "0.1.0"

# The runtime (asyncio, ssl, sockets) loads on first use, so `taps-post policy explain` and
# `import taps_post` for dry runs stay light.
_LAZY = {
    "DaneError": "taps_post.errors",  # an ssl error class, made on first use (errors Rule 3)
    "Association": "taps_post.runtime.association",
    "AssociationStore": "taps_post.runtime.association",
    "Carrier": "taps_post.runtime.carrier",
    "CarrierEvent": "taps_post.core.events",
    "Closed": "taps_post.core.events",
    "Dormant": "taps_post.core.events",
    "PathChange": "taps_post.core.events",
    "Ready": "taps_post.core.events",
    "SoftError": "taps_post.core.events",
    "Path": "taps_post.runtime.path",
    "Subflow": "taps_post.core.path",
    "PathMonitor": "taps_post.runtime.monitor",
    "path_monitor": "taps_post.runtime.monitor",
    "NetChange": "taps_post.system.netevents",
    "InMessage": "taps_post.core.messages",
    "OutMessage": "taps_post.core.messages",
    "Framer": "taps_post.core.framing",
    "LengthPrefixFramer": "taps_post.core.framing",
    "LineFramer": "taps_post.core.framing",
    "RawFramer": "taps_post.core.framing",
    "Local": "taps_post.runtime.endpoints",
    "Remote": "taps_post.runtime.endpoints",
    "Transient": "taps_post.stacks.transient",
    "Listener": "taps_post.runtime.listener",
    "Responder": "taps_post.runtime.responder",
    "Reply": "taps_post.runtime.responder",
    "Source": "taps_post.runtime.datagram",
    "Sink": "taps_post.runtime.datagram",
    "initiate": "taps_post.runtime.establish",
    "open_socket": "taps_post.runtime.opensocket",
    "RacedSocket": "taps_post.runtime.opensocket",
    "listen": "taps_post.runtime.listener",
    "respond": "taps_post.runtime.responder",
    "new_source": "taps_post.runtime.datagram",
    "new_sink": "taps_post.runtime.datagram",
    "Signalling": "taps_post.runtime.signalling",
    "MemorySignalling": "taps_post.runtime.signalling",
    "RendezvousClient": "taps_post.runtime.rendezvous_client",
    "RendezvousPoint": "taps_post.runtime.rendezvous_point",
}
_MODULES = {"certs": "taps_post.certs", "stacks": "taps_post.stacks"}


def __getattr__(name: str) -> Any:
    import importlib

    if name in _MODULES:
        return importlib.import_module(_MODULES[name])
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'taps_post' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # loaded once: later lookups are plain module attributes
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from . import certs as certs
    from . import stacks as stacks
    from .core.events import CarrierEvent as CarrierEvent
    from .core.events import Closed as Closed
    from .core.events import Dormant as Dormant
    from .core.events import PathChange as PathChange
    from .core.events import Ready as Ready
    from .core.events import SoftError as SoftError
    from .core.framing import Framer as Framer
    from .core.framing import LengthPrefixFramer as LengthPrefixFramer
    from .core.framing import LineFramer as LineFramer
    from .core.framing import RawFramer as RawFramer
    from .core.messages import InMessage as InMessage
    from .core.messages import OutMessage as OutMessage
    from .core.path import Subflow as Subflow
    from .errors import DaneError as DaneError
    from .runtime.association import Association as Association
    from .runtime.association import AssociationStore as AssociationStore
    from .runtime.carrier import Carrier as Carrier
    from .runtime.datagram import Sink as Sink
    from .runtime.datagram import Source as Source
    from .runtime.datagram import new_sink as new_sink
    from .runtime.datagram import new_source as new_source
    from .runtime.endpoints import Local as Local
    from .runtime.endpoints import Remote as Remote
    from .runtime.establish import initiate as initiate
    from .runtime.listener import Listener as Listener
    from .runtime.listener import listen as listen
    from .runtime.opensocket import RacedSocket as RacedSocket
    from .runtime.opensocket import open_socket as open_socket
    from .runtime.path import Path as Path
    from .runtime.rendezvous_client import RendezvousClient as RendezvousClient
    from .runtime.rendezvous_point import RendezvousPoint as RendezvousPoint
    from .runtime.responder import Reply as Reply
    from .runtime.responder import Responder as Responder
    from .runtime.responder import respond as respond
    from .runtime.signalling import MemorySignalling as MemorySignalling
    from .runtime.signalling import Signalling as Signalling
    from .stacks.transient import Transient as Transient
