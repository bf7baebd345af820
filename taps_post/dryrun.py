"""`explain()`: the Python face of `taps-post policy explain`, returning the same Decision.

Rule 1: it does exactly what the runtime does before racing (parse, load, gather the
environment, decide) and nothing else, so the dry run and the real connection agree.
Rule 2: it sits above the decision core because it may read the live machine; it imports
`taps_post.system` and the runtime's resolver only when no snapshot is given, so a dry run on
a snapshot stays as light as the decision core (no psutil, no sockets, no asyncio).
Rule 3: a live explain resolves the name through the same code a connection does
(runtime/resolution.py: hosts file, DNS client with SVCB/HTTPS and TLSA, getaddrinfo as the
fallback), to completion, so it shows every service record and resolution pass with the
times they arrived; a name that does not resolve is explained with no address (decide()
warns), not an error.
Rule 4: `explain()` is synchronous. Called from a coroutine, it resolves on a loop in a
worker thread with a DnsClient of its own (a DnsClient and its cache belong to one loop and
one thread) and blocks the calling loop until the resolution is done.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from .decision.decide import decide
from .decision.decision import Decision
from .decision.envfile import load_environment
from .decision.environment import Environment
from .decision.request import Request, parse_target
from .policy.context import PolicyContext
from .policy.load import PolicySpec

__all__ = ["explain"]


def explain(
    target: str,
    *,
    system: PolicySpec = None,
    app: PolicySpec = None,
    carrier: PolicySpec = None,
    app_name: str | None = None,
    kind: str = "initiate",
    env: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    policy: PolicyContext | None = None,
) -> Decision:
    """Decide for `target` without opening anything; `env=None` means the live machine.

    Pass `policy=` to reuse an already loaded PolicyContext (then `system`, `app`, `carrier`
    and `app_name` must be left unset).
    """
    if policy is not None and any(x is not None for x in (system, app, carrier, app_name)):
        raise TypeError("explain(): pass either policy= or system/app/carrier/app_name, not both")
    # The target first: it is cheap to check, and a typo there should not wait on file loading.
    request = parse_target(target, app=app_name if policy is None else policy.app_name,
                           kind=kind)
    ctx = policy or PolicyContext(system=system, app=app, carrier=carrier, app_name=app_name)
    if env is None:
        from .system.live import live_environment

        environment = live_environment(None, request.port)
        # A rendezvous target names a peer, not a host: nothing to resolve (decide Rule 13).
        if not request.is_ip_literal and request.scheme != "rendezvous":
            environment = _resolved(request, ctx, environment)
    else:
        environment = load_environment(env)
    return decide(request, ctx, environment)


def _resolved(request: Request, ctx: PolicyContext, base: Environment) -> Environment:
    """`base` with the name's complete resolution (Rule 3)."""
    import asyncio
    import time
    from dataclasses import replace

    from .errors import ResolutionError
    from .runtime.resolution import Snapshot, complete, wanted_for

    wanted = wanted_for(request, ctx.current())
    try:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            snap = asyncio.run(complete(wanted))
        else:
            # Called from a coroutine: asyncio.run() cannot nest, so the resolution runs on
            # a loop in a worker thread, and this call BLOCKS the caller's loop until it is
            # done (up to the resolver's timeouts). The worker asks through its own client:
            # the system's default client (its cache, its shared queries) belongs to the
            # caller's loop and is not safe to use from another thread.
            from concurrent.futures import ThreadPoolExecutor

            from .resolver.client import DnsClient
            from .resolver.conf import system_config

            def worker() -> Snapshot:
                config = system_config()
                client = DnsClient(config) if config.nameservers else None
                return asyncio.run(complete(wanted, client))

            with ThreadPoolExecutor(1) as pool:
                snap = pool.submit(worker).result()
    except ResolutionError:
        return replace(base, now=time.time())
    return replace(snap.environment(base), now=time.time())
