"""Explicit path control for MPTCP: the policy's subflow plan applied to one connection.

Rule 1: the plan is the Decision's (`Settings.subflows`: (interface, role) best first, made
by decide() from the policy's interface rules and multipathPolicy); this module only applies
it. An interface the plan does not list (prohibited, down, or without a usable address when
the decision was taken) never gets a subflow from us, and one the kernel shows there anyway
is destroyed; an interface whose role is "backup" carries only backup subflows (the flag is
sent in MP_JOIN, or changed with MP_PRIO), and so does the initial subflow when its
interface is a backup one.
Rule 2: only the userspace path manager (`net.mptcp.pm_type=1` in this namespace) takes
orders; under the in-kernel one the controller reports what the kernel does (PathChange as
the subflow set changes) and changes nothing: the endpoints (`ip mptcp endpoint`) are the
administrator's, and explain says which manager is in force.
Rule 3: netlink calls are blocking but local and bounded (system/mptcp_pm.py, 2 s timeout);
they run on the loop thread at activation and on monitor events, a handful per change. A
refusal (a subflow the kernel will not open) is logged and tried again only on the next
change, never in a loop.
Rule 4: the controller owns one timer at most (re-reading the kernel's subflows a few times
after a change, as joins complete within round trips), cancelled by `close()`; the carrier
closes it when its Transient ends. It starts no task.
Rule 5: the kernel opens a subflow only on a fully established connection (ENOTCONN before:
the client's MP_CAPABLE is confirmed by the peer's first data ack, so a connection nothing
was sent on yet is not), so a plan refused with ENOTCONN is applied again at each check and
then once a second (`RETRY`, at most `RETRIES` times): one getsockopt and one genl request
per second while the application has not sent anything yet.
Rule 6: a controller never breaks its carrier: whatever applying the plan or reading the
kernel raises is logged (an OSError at debug level, anything else as a bug with its
traceback) and the checks go on being scheduled, so neither the activation that adopted the
connection nor the timer is taken down by it.
Rule 7: RFC 9622 `multipath`: only "active" makes an initiated carrier open subflows of its
own (or report the kernel's); "passive" accepts the peer's subflows and opens none, and
"disabled" none at all, so `control()` makes no controller unless the mode is "active".
Rule 8: watching a connection is cheap: the subflow set is compared by its addresses and
ports as `measure_subflows()` reads them (one getsockopt, no sock_diag lookups per subflow);
the Paths of the subflows are built only when that set changed.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any

from ..core.events import CarrierEvent, PathChange
from ..core.settings import Settings
from ..decision.environment import Interface
from ..stacks.transient import Transient
from ..system.mptcp import path_manager
from .path import Path, paths_of

__all__ = ["CHECKS", "PathController", "control"]

CHECKS = (0.05, 0.2, 0.5, 1.0, 2.0)
"""Seconds after a change at which the kernel's subflows are read again (Rule 4)."""
RETRY = 1.0
RETRIES = 120
"""Rule 5: the interval and the bound of further tries while the kernel says ENOTCONN."""

_log = logging.getLogger("taps_post.carrier")

_Key = tuple[tuple[str, int], tuple[str, int]]
"""A subflow by its local and remote address with ports."""


def control(t: Transient, settings: Settings, interfaces: Sequence[Interface],
            emit: Callable[[CarrierEvent], None]) -> PathController | None:
    """A PathController for MPTCP Transient `t` of an initiated carrier (None: multipath
    not "active" (Rule 7), no plan, or the connection is not MPTCP after all)."""
    if not settings.subflows or settings.multipath != "active":
        return None
    if getattr(t, "mptcp_token", None) is None:
        return None
    manager = path_manager()
    if manager == "disabled":
        return None
    try:
        controller = PathController(t, settings.subflows, tuple(interfaces), emit,
                                    userspace=manager == "userspace")
        controller.changed(tuple(interfaces))
    except Exception:  # Rule 6: the activation that connected stands
        _log.exception("mptcp path control failed")
        return None
    return controller


class PathController:
    """Applies a subflow plan to one MPTCP connection (Rules 1, 2), reports its changes."""

    __slots__ = ("_asked", "_check", "_checks", "_emit", "_interfaces", "_pm", "_retries",
                 "_seen", "_seen_keys", "_transient", "_withdrawn", "plan", "refused", "userspace",
                 "waiting")

    def __init__(self, t: Transient, plan: tuple[tuple[str, str], ...],
                 interfaces: tuple[Interface, ...], emit: Callable[[CarrierEvent], None], *,
                 userspace: bool) -> None:
        self._transient = t
        self.plan = dict(plan)
        """interface -> role ("primary" | "backup"), from Settings.subflows."""
        self.userspace = userspace
        self._interfaces = interfaces
        self._emit = emit
        self._pm: Any = None
        self._seen_keys: frozenset[_Key] = frozenset()
        self._seen: dict[_Key, Path] = {}
        """The subflows last seen (`_snapshot`), and their keys (Rule 8)."""
        self._seen_keys = self._keys()
        self._seen = self._snapshot()
        self._check: asyncio.TimerHandle | None = None
        self._checks = 0
        self.refused: dict[str, str] = {}
        """interface -> why the kernel refused our subflow there at the last change."""
        self.waiting = False
        """Rule 5: the kernel said ENOTCONN (not fully established yet): try again."""
        self._retries = 0
        self._withdrawn: set[tuple[tuple[str, int], tuple[str, int]]] = set()
        """Subflows we withdrew (their interface went down): the kernel may go on listing
        a dead one (the initial subflow), which carries nothing and is not asked again."""
        self._asked: set[str] = set()
        """Interfaces we opened a subflow from since the last change (not asked twice)."""

    def close(self) -> None:
        if self._check is not None:
            self._check.cancel()
            self._check = None
        pm, self._pm = self._pm, None
        if pm is not None:
            pm.close()

    # ---- applying the plan ----------------------------------------------------------------

    def changed(self, interfaces: tuple[Interface, ...]) -> None:
        """Apply the plan to the interfaces as they are now (at start and on every monitor
        event), then re-read the kernel's subflows a few times (Rule 4)."""
        if interfaces:
            self._interfaces = interfaces
        t = self._transient
        if not t.is_open:
            self.close()
            return
        self._asked = set()
        self._retries = 0
        self._steer()
        self._checks = 0
        self._schedule()

    def _steer(self) -> None:
        if not self.userspace:
            return
        self.refused = {}
        self.waiting = False
        try:
            self._apply()
        except OSError as exc:  # no genl family, no token any more: report only
            _log.debug("mptcp path control unavailable: %s", exc)
        except Exception:  # Rule 6: a bug here must not fail the carrier
            _log.exception("mptcp path control failed")

    def _apply(self) -> None:
        t = self._transient
        token = getattr(t, "mptcp_token", None)
        remote = t.remote_address
        if token is None or remote is None:
            return
        remote = (str(remote[0]), int(remote[1]))
        family = "ipv6" if ":" in remote[0] else "ipv4"
        flows = t.subflows()
        if self._pm is None:
            from ..system.mptcp_pm import UserspacePM  # pyroute2: only when we steer

            self._pm = UserspacePM()
        pm = self._pm
        carried: set[str] = set()
        initial = t.local_address
        for s in flows:
            local = (str(s.local_address[0]), int(s.local_address[1]))
            far = (str(s.remote_address[0]), int(s.remote_address[1]))
            if (local, far) in self._withdrawn:
                continue
            name = s.interface or self._name_of(local[0])
            role = self.plan.get(name) if name is not None else None
            if name is None:
                continue  # not ours to judge: an address no interface holds now
            if role is None or not self._up(name):
                # (the initial subflow too, once its interface is down: the connection goes
                # on over the others at once instead of after retransmission timeouts)
                # REMOVE_ADDR first, over a subflow that still works: the peer stops
                # sending on this one now, not after its retransmission timeout
                local_id = self._local_id(pm, token, local[0], initial)
                if local_id is not None:  # unknown: never REMOVE_ADDR id 0 (the initial's)
                    self._call(pm.remove, name, token, local_id)
                self._call(pm.destroy_subflow, name, token, local, far)
                self._withdrawn.add((local, far))
                continue
            carried.add(name)
            want = role == "backup"
            if s.backup is not want:
                self._call(pm.set_backup, name, token, local, far, want)
        first = (str(initial[0]), int(initial[1])) if initial is not None else None
        if first is not None and (first, remote) not in self._withdrawn \
                and t.interface is not None and self._up(t.interface):
            if t.interface not in carried and self.plan.get(t.interface) == "backup":
                self._call(pm.set_backup, t.interface, token, first, remote, True)
            carried.add(t.interface)
        for name, role in self.plan.items():
            if name in carried or not self._up(name):
                continue
            ip = self._address(name, family)
            if ip is None:
                continue
            if name in self._asked:
                continue  # opened since the last change; the kernel may not list it yet
            if self._call(pm.create_subflow, name, token, (ip,), remote, _index(name),
                          role == "backup"):
                self._asked.add(name)

    def _local_id(self, pm: Any, token: int, ip: str,
                  initial: tuple[str, int] | None) -> int | None:
        """The address id the peer knows local address `ip` by (0: the initial one's);
        None when the kernel cannot say (GET_ADDR by token needs Linux 6.7): then only the
        subflow is destroyed, as a REMOVE_ADDR of id 0 would close the initial subflow."""
        if initial is not None and str(initial[0]) == ip:
            return 0
        try:
            for entry in pm.local_addresses(token):
                if entry.address is not None and entry.address == ip:
                    return int(entry.id)
        except OSError:
            pass
        return None

    def _call(self, fn: Callable[..., None], name: str | None, *args: Any) -> bool:
        try:
            fn(*args)
        except OSError as exc:
            self.refused[name or "?"] = str(exc)
            if exc.errno == errno.ENOTCONN:
                self.waiting = True  # Rule 5
            _log.debug("mptcp path control: %s refused: %s", fn.__name__, exc)
            return False
        return True

    # ---- what the interfaces are ----------------------------------------------------------

    def _up(self, name: str | None) -> bool:
        if name is None:
            return False
        return any(i.name == name and i.up for i in self._interfaces) or not self._interfaces

    def _address(self, name: str, family: str) -> str | None:
        for i in self._interfaces:
            if i.name != name:
                continue
            usable = [a for a in i.addresses_of(family)
                      if not (family == "ipv6" and a.ip.is_link_local)]
            usable.sort(key=lambda a: a.temporary)
            return usable[0].address if usable else None
        return None

    def _name_of(self, ip: str) -> str | None:
        want = ipaddress.ip_address(ip.split("%", 1)[0])
        for i in self._interfaces:
            if any(a.ip == want for a in i.addresses):
                return i.name
        return None

    # ---- reporting (Rule 2) ---------------------------------------------------------------

    def _schedule(self) -> None:
        if self._check is not None:
            self._check.cancel()
            self._check = None
        if self._checks < len(CHECKS):
            delay = CHECKS[self._checks] - (CHECKS[self._checks - 1] if self._checks else 0.0)
            self._checks += 1
        elif self.waiting and self._retries < RETRIES:
            delay = RETRY
            self._retries += 1
        else:
            return
        self._check = self._transient.loop.call_later(delay, self._look)

    def _keys(self) -> frozenset[_Key]:
        """The subflows now as (local, remote) with their ports (Rule 8; a new subflow
        between the same IPs, after the link came back, is a new one)."""
        t = self._transient
        measure = getattr(t, "measure_subflows", None)
        flows = measure(self._interfaces) if measure is not None else t.subflows()
        return frozenset((_address(s.local_address), _address(s.remote_address))
                         for s in flows)

    def _snapshot(self) -> dict[_Key, Path]:
        """The Paths of the subflows now, by their keys."""
        now: dict[_Key, Path] = {}
        for p in paths_of(self._transient, self._interfaces):
            if p.local_address is not None and p.remote_address is not None:
                now[(_address(p.local_address), _address(p.remote_address))] = p
        return now

    def _look(self) -> None:
        self._check = None
        t = self._transient
        if not t.is_open:
            return
        try:
            if self.waiting:
                self._steer()
            self.report()
        except Exception:  # Rule 6: the checks go on
            _log.exception("mptcp path control failed")
        finally:
            self._schedule()

    def report(self) -> None:
        """Compare the kernel's subflows with those last seen: PathChange(None, new) for
        each subflow that appeared, PathChange(old, None) for each that went."""
        keys = self._keys()
        if keys == self._seen_keys:
            return  # Rule 8: nothing changed, no Paths built
        self._seen_keys = keys
        now = self._snapshot()
        before, self._seen = self._seen, now
        for key, p in now.items():
            if key not in before:
                self._emit(PathChange(None, p))
        for key, p in before.items():
            if key not in now:
                self._emit(PathChange(p, None))


def _address(address: Any) -> tuple[str, int]:
    return (str(address[0]), int(address[1]))


def _index(name: str) -> int | None:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return None
