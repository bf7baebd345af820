"""The DNS client: the system's resolvers, a TTL-true cache, and queries through dnspython.

Rule 1: dnspython is imported in exactly one module, `resolver/client.py`; every answer leaves
this package as the decision core's own values (`decision.names`) or this package's `Answer`,
so a dnspython upgrade breaks in one place.
Rule 2: this package is imported only when a name has to be resolved (the runtime's
establishment, a live explain); `import taps_post` and an explain on a snapshot never load it.
The design is in docs/resolution.md.
"""
