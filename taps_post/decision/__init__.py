"""The decision core: request, environment types, decide(), the Decision and its renderers.

Rule 1: this package imports only itself, `taps_post.policy` and `taps_post.diagnostics`
(docs/architecture.md); the live machine is read above it and handed in as an Environment.
Rule 2: pure: no event loop, sockets, TLS, clock or DNS, so the dry run and the runtime make
the same decision from the same inputs.
"""
