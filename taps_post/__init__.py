"""taps_post: Post Sockets / TAPS in Python.

Applications say what they need, administrators say what the machine allows, and a
policy-driven, explainable decision core picks interface, address and protocol stack.
This module imports nothing itself: every public name loads on first use (`_LAZY`), so
`taps-post policy explain` starts fast and a dry run never loads the runtime. The layers
behind the names are described in docs/architecture.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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

# Every name loads on first use: `import taps_post` costs nothing, a dry run loads the
# decision core and never the runtime (asyncio, ssl, sockets), and `taps-post` commands load
# only what they use (docs/architecture.md, "The package root stays light").
_LAZY = {
    "decide": "taps_post.decision.decide",
    "Candidate": "taps_post.decision.decision",
    "Decision": "taps_post.decision.decision",
    "Exclusion": "taps_post.decision.decision",
    "IceCandidate": "taps_post.decision.decision",
    "IcePair": "taps_post.decision.decision",
    "RankKey": "taps_post.decision.decision",
    "RendezvousReport": "taps_post.decision.decision",
    "SubflowPlan": "taps_post.decision.decision",
    "load_environment": "taps_post.decision.envfile",
    "Address": "taps_post.decision.environment",
    "CacheEntry": "taps_post.decision.environment",
    "Environment": "taps_post.decision.environment",
    "Interface": "taps_post.decision.environment",
    "Request": "taps_post.decision.request",
    "parse_target": "taps_post.decision.request",
    "explain": "taps_post.dryrun",
    "ArgumentError": "taps_post.errors",
    "Attempt": "taps_post.errors",
    "ConnectionClosedError": "taps_post.errors",
    "DeframingError": "taps_post.errors",
    "Diagnostic": "taps_post.errors",
    "EstablishmentError": "taps_post.errors",
    "FailureKind": "taps_post.errors",
    "ForkRefusedError": "taps_post.errors",
    "FrameTooLargeError": "taps_post.errors",
    "IdleTimeoutError": "taps_post.errors",
    "InputError": "taps_post.errors",
    "MessageTooLargeError": "taps_post.errors",
    "MptcpRefusedError": "taps_post.errors",
    "PathLostError": "taps_post.errors",
    "PolicyError": "taps_post.errors",
    "RemoteProtocolError": "taps_post.errors",
    "ResolutionError": "taps_post.errors",
    "SystemPolicyError": "taps_post.errors",
    "TapsError": "taps_post.errors",
    "UsageError": "taps_post.errors",
    "PolicyContext": "taps_post.policy.context",
    "Pref": "taps_post.policy.registry",
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
    from .decision.decide import decide as decide
    from .decision.decision import Candidate as Candidate
    from .decision.decision import Decision as Decision
    from .decision.decision import Exclusion as Exclusion
    from .decision.decision import IceCandidate as IceCandidate
    from .decision.decision import IcePair as IcePair
    from .decision.decision import RankKey as RankKey
    from .decision.decision import RendezvousReport as RendezvousReport
    from .decision.decision import SubflowPlan as SubflowPlan
    from .decision.envfile import load_environment as load_environment
    from .decision.environment import Address as Address
    from .decision.environment import CacheEntry as CacheEntry
    from .decision.environment import Environment as Environment
    from .decision.environment import Interface as Interface
    from .decision.request import Request as Request
    from .decision.request import parse_target as parse_target
    from .dryrun import explain as explain
    from .errors import ArgumentError as ArgumentError
    from .errors import Attempt as Attempt
    from .errors import ConnectionClosedError as ConnectionClosedError
    from .errors import DaneError as DaneError
    from .errors import DeframingError as DeframingError
    from .errors import Diagnostic as Diagnostic
    from .errors import EstablishmentError as EstablishmentError
    from .errors import FailureKind as FailureKind
    from .errors import ForkRefusedError as ForkRefusedError
    from .errors import FrameTooLargeError as FrameTooLargeError
    from .errors import IdleTimeoutError as IdleTimeoutError
    from .errors import InputError as InputError
    from .errors import MessageTooLargeError as MessageTooLargeError
    from .errors import MptcpRefusedError as MptcpRefusedError
    from .errors import PathLostError as PathLostError
    from .errors import PolicyError as PolicyError
    from .errors import RemoteProtocolError as RemoteProtocolError
    from .errors import ResolutionError as ResolutionError
    from .errors import SystemPolicyError as SystemPolicyError
    from .errors import TapsError as TapsError
    from .errors import UsageError as UsageError
    from .policy.context import PolicyContext as PolicyContext
    from .policy.registry import Pref as Pref
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
