"""The DNS client: the system's resolvers, a TTL-true cache, and queries through dnspython.

Rule 1: dnspython is imported in exactly one module, `resolver/client.py`; every answer leaves
this package as the decision core's own values (`decision.names`) or this package's `Answer`,
so a dnspython upgrade breaks in one place.
Rule 2: this package is imported only when a name has to be resolved (the runtime's
establishment, a live explain); `import taps_post` and an explain on a snapshot never load it.
Rule 3: an answer is `authenticated` (the DNSSEC statement DANE rests on) only as glibc would
believe it: the AD bit from a server resolv.conf lists, with `options trust-ad` (in the file
or `$RES_OPTIONS`). A systemd-resolved per-link server is never trusted, and a loopback
server is not trusted without trust-ad (conf.py Rule 5); a trusted validator's failure for a
TLSA or HTTPS question is final (client.py Rule 4).
Rule 4: names compare in one spelling, `decision.names.normal()`: lower case, no final dot.
The design is in docs/resolution.md.
"""
