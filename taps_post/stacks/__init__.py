"""Protocol stacks as plug-ins: the facts live in the policy catalogue, the code here.

Rules of this package (docs/architecture.md, "Adding a stack"):
- A stack is a `StackInfo` (name, IP protocol, features, schemes, stream- and multipath-
  capability, tie-break order: what the decision core ranks by) plus an implementation with
  `connect(AttemptSpec) -> Transient` and `listen(ListenSpec) -> Listening`.
- `register(info, impl)` adds both; from then on validation, explain, the JSON Schemas, the
  carrier and the listener all know the stack. `info(name)` returns its facts (a frozen
  dataclass, so `dataclasses.replace(info("tcp"), name="tcp-alt")` makes a new one) and
  `get(name)` its implementation.
- The built-in implementations load on first use: importing this package does not import
  aioquic or ssl.
- Each stack module owns its asyncio adapter and its Transient subclass; they import the
  transport core below them, never the runtime above.
"""

from __future__ import annotations

import importlib
import threading

from ..errors import ArgumentError
from ..policy import catalog
from ..policy.catalog import StackInfo
from ..policy.registry import protocol_features
from .base import AttemptSpec, Listening, ListenSpec, SessionState, Stack

__all__ = ["AttemptSpec", "ListenSpec", "Listening", "SessionState", "Stack", "StackInfo",
           "get", "info", "names", "register", "unregister"]

_BUILTIN: dict[str, tuple[str, str, dict[str, bool]]] = {
    "tcp": ("taps_post.stacks.tcp", "StreamStack", {"secure": False, "mptcp": False}),
    "tls": ("taps_post.stacks.tcp", "StreamStack", {"secure": True, "mptcp": False}),
    "mptcp": ("taps_post.stacks.tcp", "StreamStack", {"secure": False, "mptcp": True}),
    "tls-mptcp": ("taps_post.stacks.tcp", "StreamStack", {"secure": True, "mptcp": True}),
    "quic": ("taps_post.stacks.quic", "QuicStack", {}),
    "udp": ("taps_post.stacks.udp", "UdpStack", {}),
    "quic-ice": ("taps_post.stacks.quic.peer", "PeerQuicStack", {}),
}
"""Built-in implementations by name: module, class, constructor switches (loaded lazily)."""

_impls: dict[str, Stack] = {}
_lock = threading.Lock()


def register(info: StackInfo, stack: Stack) -> None:
    """Add (or replace) a stack: its facts go to the policy catalogue, its code here."""
    if stack.name != info.name:
        raise ArgumentError(f"the implementation is named {stack.name!r}, the facts {info.name!r}")
    unknown = sorted(info.features - protocol_features())
    if unknown:
        raise ArgumentError(f"stack {info.name}: unknown features {', '.join(unknown)}; "
                            f"known: {', '.join(sorted(protocol_features()))}")
    with _lock:
        catalog.register_info(info)
        _impls[info.name] = stack


def unregister(name: str) -> None:
    """Remove a stack added with register() (built-in stacks cannot be removed)."""
    if name in _BUILTIN:
        raise ArgumentError(f"{name} is a built-in stack")
    with _lock:
        _impls.pop(name, None)
        catalog.unregister_info(name)


def info(name: str) -> StackInfo:
    """The facts of a stack (KeyError for an unknown name)."""
    return catalog.info(name)


def names() -> tuple[str, ...]:
    """Every known stack, in tie-break order."""
    return catalog.names()


def get(name: str) -> Stack | None:
    """The implementation of a stack, or None where this build or machine has none."""
    impl = _impls.get(name)
    if impl is not None:
        return impl
    spec = _BUILTIN.get(name)
    if spec is None:
        return None
    module, cls, switches = spec
    try:
        factory = getattr(importlib.import_module(module), cls)
    except ImportError:
        return None  # e.g. aioquic not installed: the stack is simply not available
    with _lock:
        impl = _impls.setdefault(name, factory(name, **switches) if switches else factory())
    return impl
