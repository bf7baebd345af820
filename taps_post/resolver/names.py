"""Names as this package compares them: one spelling for the cache, the hosts file, the
search list and what the client reads back.

Rule 1: a DNS name compares case-insensitively (RFC 4343) and without its final dot, so
`Web.Example.` and `web.example` are one key everywhere in this package (conf.py, hosts.py,
cache.py, client.py). The root and the empty name are both "": no host. Nothing here converts
to IDNA; a name is compared as the caller wrote it.
"""

from __future__ import annotations

__all__ = ["normal"]


def normal(name: str) -> str:
    """`name` lower case, without the final dot(s) (Rule 1)."""
    return name.lower().rstrip(".")
