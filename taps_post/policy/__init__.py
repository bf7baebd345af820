"""The policy language: property registry, stack catalogue, loading, matching, resolution.

Rule 1: this package imports only itself and `taps_post.diagnostics`; everything above it
(decision core, runtime, CLI) may import it, nothing here imports them (docs/architecture.md).
Rule 2: pure: no event loop, sockets, TLS, clock or machine probing; files are read only when
a caller names them.
"""
