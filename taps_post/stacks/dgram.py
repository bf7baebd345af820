"""Datagram endpoints for listeners: the one place a bound UDP socket meets the event loop.

Rule 1: every listening UDP socket (UDP Listener, Sink, QUIC Listener) is attached through
`open_datagram_endpoint`, so how replies pick their source address on a wildcard bind is
decided here and nowhere else (docs/reliability.md, "Datagram listeners").
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

__all__ = ["open_datagram_endpoint"]


async def open_datagram_endpoint(factory: Callable[[], asyncio.DatagramProtocol],
                                 sock: socket.socket) -> tuple[Any, Any]:
    """(transport, protocol) for the bound, non-blocking `sock`, as
    `loop.create_datagram_endpoint(factory, sock=sock)` returns them."""
    loop = asyncio.get_running_loop()
    return await loop.create_datagram_endpoint(factory, sock=sock)
