"""The carrier runtime: what applications call (docs/runtime.md) on top of the stacks.

Rules of this package (docs/architecture.md, "Runtime"):
- Every entry point runs the same decide() a dry run does, then races the plan
  (`establish`), and wraps the winner in a Carrier that uses only the public Transient
  interface.
- Every object that starts tasks owns them and cancels and awaits them on close (race,
  Responder, Listener); no task or socket outlives its owner.
- Imports point down: stacks, system, core, errors, decision, policy; nothing imports this
  package except the top-level facade, the CLI and the demo.
"""
