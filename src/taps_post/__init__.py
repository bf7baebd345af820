"""taps_post: Post Sockets / TAPS in Python.

Applications say what they need, administrators say what the machine allows, and a
policy-driven, explainable decision core picks interface, address and protocol stack.
This module stays light on purpose (no asyncio, no aioquic): `taps-post policy explain`
imports it and must start fast.
"""

from __future__ import annotations

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
