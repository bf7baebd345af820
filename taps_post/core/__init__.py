"""The transport core: sans-I/O message machinery every stack shares.

Rules of this package (docs/architecture.md, "Transport core"):
- No asyncio, no sockets, no clock: time is passed in as `now`, results come back as values
  or small frozen events (`events.py`), never as callbacks.
- `messages` (OutMessage, InMessage, Pending), `outbox` (SendQueue ordering by niceness,
  lifetime, antecedents; Ledger turning byte offsets into Sent/Acked/Failed), `early` (what
  a carrier holds before it is active, and each attempt's 0-RTT copies), `path` (PathStats),
  `inbox`
  (received messages and when to stop reading), `framing` (messages <-> bytes) and
  `settings` (the runtime's view of a Decision's properties).
- Imports point down only: errors, decision data; never stacks or runtime.
"""
