"""`explain()`: the Python face of `taps-post policy explain`, returning the same Decision.

Rule 1: it does exactly what the runtime does before racing (parse, load, gather the
environment, decide) and nothing else, so the dry run and the real connection agree.
Rule 2: it sits above the decision core because it may read the live machine; it imports
`taps_post.system` only when no snapshot is given, so a dry run on a snapshot stays as light
as the decision core (no psutil, no sockets).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from .decision.decide import decide
from .decision.decision import Decision
from .decision.envfile import load_environment
from .decision.request import parse_target
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

        environment = live_environment(None if request.is_ip_literal else request.host,
                                       request.port)
    else:
        environment = load_environment(env)
    return decide(request, ctx, environment)
