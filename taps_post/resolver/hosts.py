"""Names the hosts file answers, before any DNS query.

Rule 1: /etc/hosts (`$TAPS_POST_HOSTS` names another file) is read as glibc's `files` source
reads it (hosts(5)): an address, then the canonical name and aliases, `#` starts a comment,
names compare case-insensitively and without a final dot (decision.names.normal). Both families are
returned, in file order, duplicates dropped; an IPv6 zone (`fe80::1%eth0`) is dropped like
getaddrinfo's answers are in `system.live.addresses_of`, so the two paths give the same
addresses.
Rule 2: `hosts_lookup()` returns None for a name the file does not list (ask the DNS) and a
tuple for one it does, so a name listed only here resolves as it did with getaddrinfo.
Rule 3: the parsed file is kept under its (path, st_mtime_ns, st_size, st_ino): a lookup costs
a `stat`, and an edit is seen at the next lookup.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from ..decision.names import normal

__all__ = ["hosts_lookup", "parse_hosts"]

_DEFAULT_PATH = "/etc/hosts"
_cached: tuple[object, dict[str, tuple[str, ...]]] | None = None


def parse_hosts(text: str) -> dict[str, tuple[str, ...]]:
    """name (lower case, no final dot) -> addresses in file order (Rule 1)."""
    table: dict[str, dict[str, None]] = {}
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split()
        if len(words) < 2:
            continue
        address = words[0].split("%")[0]
        try:
            address = ipaddress.ip_address(address).compressed
        except ValueError:
            continue
        for name in words[1:]:
            key = normal(name)
            if key:
                table.setdefault(key, {}).setdefault(address, None)
    return {name: tuple(addresses) for name, addresses in table.items()}


def hosts_lookup(name: str, path: str | None = None) -> tuple[str, ...] | None:
    """The hosts file's addresses for `name`, or None when it is not listed (Rule 2)."""
    global _cached
    path = path or os.environ.get("TAPS_POST_HOSTS") or _DEFAULT_PATH
    try:
        st = os.stat(path)
        key: object = (path, st.st_mtime_ns, st.st_size, st.st_ino)
    except OSError:
        return None
    if _cached is None or _cached[0] != key:
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
        _cached = (key, parse_hosts(text))
    return _cached[1].get(normal(name))
