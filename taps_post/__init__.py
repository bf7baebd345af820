"""taps_post: Post Sockets / TAPS in Python.

Applications say what they need, administrators say what the machine allows, and a
policy-driven, explainable decision core picks interface, address and protocol stack.
This module stays light on purpose (no asyncio, no aioquic): `taps-post policy explain`
imports it and must start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .decision.decide import decide
from .decision.decision import Candidate, Decision, Exclusion, RankKey
from .decision.envfile import load_environment
from .decision.environment import Address, CacheEntry, Environment, Interface
from .decision.explain import explain
from .decision.request import Request, parse_target
from .errors import Diagnostic, InputError, PolicyError, TapsError
from .policy.context import PolicyContext
from .policy.registry import Pref

__all__ = [
    "Address",
    "CacheEntry",
    "Candidate",
    "Decision",
    "Diagnostic",
    "Environment",
    "Exclusion",
    "InputError",
    "Interface",
    "PolicyContext",
    "PolicyError",
    "Pref",
    "RankKey",
    "Request",
    "TapsError",
    "decide",
    "explain",
    "load_environment",
    "parse_target",
]

__version__ = "0.1.0"

# The runtime (asyncio, ssl, sockets) loads on first use, so `taps-post policy explain` and
# `import taps_post` for dry runs stay light.
_LAZY = {
    "Association": "taps_post.runtime.association",
    "AssociationStore": "taps_post.runtime.association",
    "Carrier": "taps_post.runtime.carrier",
    "InMessage": "taps_post.runtime.messages",
    "OutMessage": "taps_post.runtime.messages",
    "Framer": "taps_post.runtime.framing",
    "LengthPrefixFramer": "taps_post.runtime.framing",
    "LineFramer": "taps_post.runtime.framing",
    "RawFramer": "taps_post.runtime.framing",
    "DeframingError": "taps_post.runtime.framing",
    "Local": "taps_post.runtime.endpoints",
    "Remote": "taps_post.runtime.endpoints",
    "Transient": "taps_post.runtime.transient",
    "Listener": "taps_post.runtime.api",
    "Responder": "taps_post.runtime.api",
    "Reply": "taps_post.runtime.api",
    "Source": "taps_post.runtime.api",
    "Sink": "taps_post.runtime.api",
    "initiate": "taps_post.runtime.api",
    "listen": "taps_post.runtime.api",
    "respond": "taps_post.runtime.api",
    "new_source": "taps_post.runtime.api",
    "new_sink": "taps_post.runtime.api",
    "EstablishmentError": "taps_post.errors",
    "ConnectionClosedError": "taps_post.errors",
    "MessageTooLargeError": "taps_post.errors",
    "Attempt": "taps_post.errors",
}
_MODULES = {"certs": "taps_post.certs"}


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
    return sorted([*__all__, *_LAZY, *_MODULES])


if TYPE_CHECKING:
    from . import certs as certs
    from .errors import (
        Attempt as Attempt,
    )
    from .errors import (
        ConnectionClosedError as ConnectionClosedError,
    )
    from .errors import (
        EstablishmentError as EstablishmentError,
    )
    from .errors import (
        MessageTooLargeError as MessageTooLargeError,
    )
    from .runtime.api import (
        Listener as Listener,
    )
    from .runtime.api import (
        Reply as Reply,
    )
    from .runtime.api import (
        Responder as Responder,
    )
    from .runtime.api import (
        Sink as Sink,
    )
    from .runtime.api import (
        Source as Source,
    )
    from .runtime.api import (
        initiate as initiate,
    )
    from .runtime.api import (
        listen as listen,
    )
    from .runtime.api import (
        new_sink as new_sink,
    )
    from .runtime.api import (
        new_source as new_source,
    )
    from .runtime.api import (
        respond as respond,
    )
    from .runtime.association import Association as Association
    from .runtime.association import AssociationStore as AssociationStore
    from .runtime.carrier import Carrier as Carrier
    from .runtime.endpoints import Local as Local
    from .runtime.endpoints import Remote as Remote
    from .runtime.framing import DeframingError as DeframingError
    from .runtime.framing import Framer as Framer
    from .runtime.framing import LengthPrefixFramer as LengthPrefixFramer
    from .runtime.framing import LineFramer as LineFramer
    from .runtime.framing import RawFramer as RawFramer
    from .runtime.messages import InMessage as InMessage
    from .runtime.messages import OutMessage as OutMessage
    from .runtime.transient import Transient as Transient
