"""Protocol stacks behind one small interface (`base.Stack`); the registry is the only list.

Each stack is one module and one line here.
"""

from __future__ import annotations

from .base import AttemptSpec, ListenSpec, Stack
from .quic import QuicStack
from .tcp import StreamStack
from .udp import UdpStack

__all__ = ["REGISTRY", "AttemptSpec", "ListenSpec", "Stack", "get"]

REGISTRY: dict[str, Stack] = {
    "tcp": StreamStack("tcp", secure=False, mptcp=False),
    "tls": StreamStack("tls", secure=True, mptcp=False),
    "mptcp": StreamStack("mptcp", secure=False, mptcp=True),
    "tls-mptcp": StreamStack("tls-mptcp", secure=True, mptcp=True),
    "quic": QuicStack(),
    "udp": UdpStack(),
}


def get(name: str) -> Stack | None:
    """The implementation of a registry stack, or None where this build has none yet."""
    return REGISTRY.get(name)
