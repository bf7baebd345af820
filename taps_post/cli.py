"""The `taps-post` command line.

Rule 1: exit status carries the verdict: 0 ok, 2 invalid input (one `file:line:col: message`
line per problem on stderr, never a traceback), 3 a valid request the policy cannot serve
(`no_candidates`, `policy_prohibited`).
Rule 2: explaining must start fast, so this module imports nothing from the asyncio runtime
or aioquic, and imports heavy modules only inside the command that needs them.
Rule 3: every file named on the command line is screened before anything reads it: a FIFO,
a device or a dangling symlink is an exit-2 line naming it, never a hang or a skip.
Rule 4: the target is checked here before anything is decided (`_checked_target`): its syntax,
and that its host is an IP address or a DNS name, so `a..b` or a name holding an escape
sequence is an exit-2 line, never an explanation that prints it raw. Whatever argv held
(a file name that is not UTF-8) is printed escaped, never a UnicodeEncodeError.
Rule 5: `rendezvous serve` runs the rendezvous point (runtime/rendezvous_point.py) until
SIGTERM or SIGINT, then closes it and exits 0. Everything it is given is checked before it
listens (the address, each file screened as Rule 3, the certificate and key, every trusted
PEM, the bounds): a problem is an exit-2 line naming the option or file. Once it listens it
prints `listening on HOST:PORT` (the bound port, when 0 was asked) on stdout, flushed.
Rule 6: the `taps-post` script (`script`, also `python -m taps_post.cli`) runs `policy
validate|explain|show|test` with the cyclic garbage collector off: each is one short pass over
acyclic data (documents, rules, a Decision) and the process ends right after, so each
collection would only re-walk what import just made (about 10 ms of a 220 ms start).
Reference counting still frees everything. `policy diff` keeps it on: it decides every
request twice and may run long. `main()`, for in-process callers, leaves the collector as
it finds it: turning it back on after a run would cost one collection of all it allocated.
Rule 7: the parser fills in only the commands argv names (`build_parser(argv)`): every command
is listed, with its help, but adding the options of the ten it does not run would cost more
than the whole parse. A token that merely equals a command's name fills that one too, which
changes nothing but a few microseconds.
Rule 8: JSON output (`--format json`) is `_json`'s: exactly what `json.dumps(value,
indent=2)` writes (tests/test_cli.py holds it to that), without json's generator chain, which
is most of `policy explain --format json`'s own time: the C encoder does not indent. Values
are what `to_dict()` gives, so a cycle is not looked for.
Rule 9: help is as wide as argparse makes it by itself ($COLUMNS, else the terminal, else 80,
minus 2), measured once per process without shutil (`_help_width`).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .diagnostics import Diagnostic, InputError

EXIT_OK, EXIT_INPUT, EXIT_POLICY = 0, 2, 3

__all__ = ["main", "script"]


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> Any:  # argparse prints usage and exits 2; keep that
        self.print_usage(sys.stderr)
        self.exit(EXIT_INPUT, f"{self.prog}: error: {message}\n")


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.HelpFormatter(prog, width=_help_width())


@functools.cache
def _help_width() -> int:
    """Rule 9: the width argparse gives itself (`shutil.get_terminal_size().columns - 2`),
    found as shutil finds it, without importing shutil (and its compression modules): argparse
    makes a formatter for every option it adds, help or not."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return (columns or 80) - 2


def _add_request_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", help="https://host, tls://host:port, tcp://, udp://, quic://, "
                                  "or host:port")
    _layer_options(p, "use no system policy at all (built-in defaults only)", "")
    p.add_argument("--app-name", metavar="NAME", help="application name rules match on")
    p.add_argument("--kind", default="initiate",
                   choices=["initiate", "listen", "source", "sink", "respond"])
    p.add_argument("--env", metavar="FILE",
                   help="environment snapshot (YAML/JSON); default: this machine, live")


def _fill_explain(ex: argparse.ArgumentParser) -> None:
    _add_request_args(ex)
    ex.add_argument("--format", choices=["text", "json", "dot"], default="text")


def _fill_show(show: argparse.ArgumentParser) -> None:
    _add_request_args(show)
    show.add_argument("--format", choices=["text", "json"], default="text")


def _fill_validate(val: argparse.ArgumentParser) -> None:
    val.add_argument("paths", nargs="+", metavar="PATH")
    val.add_argument("--strict", action="store_true", help="exit 1 when there are warnings")


def _fill_test(test: argparse.ArgumentParser) -> None:
    test.add_argument("paths", nargs="+", metavar="PATH",
                      help="scenario files or directories of them (*.yaml, *.yml)")
    _layer_options(test, "use no system policy at all (built-in defaults only)",
                   " for scenarios without policies:")
    test.add_argument("--env", metavar="FILE",
                      help="environment snapshot for scenarios without env:")
    test.add_argument("--format", choices=["text", "junit"], default="text")


def _fill_diff(diff: argparse.ArgumentParser) -> None:
    diff.add_argument("paths", nargs="*", metavar="PATH",
                      help="with --git: the policy files or directories, now vs at REV")
    diff.add_argument("--old", action="append", metavar="PATH",
                      help="the old version of the layer (repeatable)")
    diff.add_argument("--new", action="append", metavar="PATH",
                      help="the new version of the layer (repeatable)")
    diff.add_argument("--git", metavar="REV", help="compare PATHs at git revision REV with "
                                                   "PATHs as they are now")
    diff.add_argument("--layer", choices=["system", "app", "carrier"], default="system",
                      help="the layer the two versions are (default system)")
    _layer_options(diff, "use no system policy at all (when another layer is diffed)",
                   " when another layer is diffed")
    diff.add_argument("--requests", metavar="FILE",
                      help="YAML list of requests: {target, app, kind}")
    diff.add_argument("--scenarios", nargs="+", default=[], metavar="PATH",
                      help="scenario files or directories: their request: and env:")
    diff.add_argument("--env", metavar="FILE",
                      help="environment snapshot for requests without a scenario env:")
    diff.add_argument("--format", choices=["text", "json"], default="text")
    diff.add_argument("--exit-zero", action="store_true",
                      help="exit 0 even when decisions changed (only report)")


def _fill_schema(sch: argparse.ArgumentParser) -> None:
    sch.add_argument("name", choices=["policy", "env", "explain"])


def _fill_serve(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--listen", required=True, metavar="HOST:PORT",
                       help="IP address and TCP port (0: any free one), e.g. 0.0.0.0:7443, "
                            "[::]:7443")
    serve.add_argument("--certificate", required=True, nargs=2, metavar=("CERT", "KEY"),
                       help="the point's certificate and private key (PEM files)")
    serve.add_argument("--trust", required=True, action="append", metavar="PEM",
                       help="CA or client certificate(s) clients are verified against "
                            "(repeatable)")
    serve.add_argument("--queue", type=int, default=8, metavar="N",
                       help="offers held per recipient and sender; that sender's oldest is "
                            "dropped (default 8)")
    serve.add_argument("--ttl", type=float, default=60.0, metavar="S",
                       help="seconds an offer may be delivered (default 60)")
    serve.add_argument("--max-identities", type=int, default=4096, metavar="N",
                       help="identities with offers held at once (default 4096)")
    serve.add_argument("--max-waits", type=int, default=4, metavar="N",
                       help="waits at once per client certificate (default 4)")
    serve.add_argument("--max-connections", type=int, default=8, metavar="N",
                       help="connections at once per client certificate (default 8)")
    serve.add_argument("--senders-per-recipient", type=int, default=64, metavar="N",
                       help="senders whose offers one recipient holds at once (default 64)")
    serve.add_argument("--recipients-per-sender", type=int, default=64, metavar="N",
                       help="recipients one sender has offers waiting at (default 64)")
    serve.add_argument("--bytes-per-sender", type=int, default=1024 * 1024, metavar="B",
                       help="bytes of offers one sender has waiting in all (default 1048576)")
    _system_options(serve, "use no system policy at all")
    serve.add_argument("--verbose", "-v", action="store_true",
                       help="log every offer relayed (identities and sizes only) on stderr")


def _fill_interfaces(ifs: argparse.ArgumentParser) -> None:
    ifs.add_argument("--system", action="append", metavar="PATH",
                     help="apply this system policy's interface facts")
    ifs.add_argument("--format", choices=["text", "json"], default="text")


_Command = tuple[str, str, Callable[[argparse.ArgumentParser], None]]
_POLICY: tuple[_Command, ...] = (
    ("explain", "dry-run a decision and show exactly why", _fill_explain),
    ("show", "effective value and provenance of every key (like ssh -G)", _fill_show),
    ("validate", "check policy files; lint dead rules and contradictions", _fill_validate),
    ("test", "run scenario files against the policy on disk (docs/admin.md)", _fill_test),
    ("diff", "which decisions a policy edit changes (docs/admin.md)", _fill_diff),
    ("schema", "print a JSON Schema", _fill_schema),
)
_RENDEZVOUS: tuple[_Command, ...] = (
    ("serve", "relay offers between peers that authenticate by client certificate",
     _fill_serve),
)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole command line; with `argv`, only the commands it names get their options
    (Rule 7: the others are listed, with their help, but not filled)."""
    parser = _Parser(prog="taps-post", description="Post Sockets / TAPS transport policy tool")
    parser.add_argument("--version", action="version", version="taps-post 0.1.0")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    named = None if argv is None else set(argv)

    def add(into: Any, name: str, text: str,
            fill: Callable[[argparse.ArgumentParser], None]) -> None:
        p = into.add_parser(name, help=text)
        if named is None or name in named:
            fill(p)

    policy = sub.add_parser("policy", help="validate, explain and inspect policies")
    psub = policy.add_subparsers(dest="policy_command", required=True, parser_class=_Parser)
    for name, text, fill in _POLICY:
        add(psub, name, text, fill)
    rv = sub.add_parser("rendezvous", help="the rendezvous point peers meet through "
                                           "(docs/rendezvous.md)")
    rsub = rv.add_subparsers(dest="rendezvous_command", required=True, parser_class=_Parser)
    for name, text, fill in _RENDEZVOUS:
        add(rsub, name, text, fill)
    add(sub, "interfaces", "what interface discovery sees, classified", _fill_interfaces)
    return parser


def _layer_options(p: argparse.ArgumentParser, no_system_help: str, when: str) -> None:
    """The three policy layers as every decision command takes them; `when` says, in the
    help, when the --app and --carrier files apply."""
    _system_options(p, no_system_help)
    p.add_argument("--app", action="append", metavar="PATH",
                   help=f"app policy{when} (repeatable)")
    p.add_argument("--carrier", action="append", metavar="PATH",
                   help=f"carrier policy{when} (repeatable)")


def _layers(args: argparse.Namespace) -> dict[str, Any]:
    """The layers the options name; a system layer of None is the one this machine
    discovers."""
    return {"system": [] if args.no_system else args.system,
            "app": args.app or [], "carrier": args.carrier or []}


def _system_options(p: argparse.ArgumentParser, no_system_help: str) -> None:
    """--system PATH... | --no-system: the system layer, as every policy command takes it."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("--system", action="append", metavar="PATH",
                       help="system policy file or directory (repeatable); replaces the "
                            "discovered system layer")
    group.add_argument("--no-system", action="store_true", help=no_system_help)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser(sys.argv[1:] if argv is None else argv).parse_args(argv)

    _escape_unencodable(sys.stdout)
    try:
        return _dispatch(args)
    except InputError as exc:  # SystemPolicyError too: the system layer cannot be loaded
        for diag in exc.diagnostics:
            print(diag, file=sys.stderr)
        return EXIT_INPUT
    except BrokenPipeError:
        return EXIT_OK
    except OSError as exc:  # a file we were pointed at, refusing to be read: still input
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        return 130


def _escape_unencodable(stream: Any) -> None:
    """Rule 4: a character the stream cannot encode (argv's undecodable bytes arrive as lone
    surrogates) is written as a backslash escape, as Python already does on stderr."""
    if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
        with contextlib.suppress(ValueError, OSError):  # a stream that refuses: as it was
            stream.reconfigure(errors="backslashreplace")


def _json(value: Any) -> str:
    """`json.dumps(value, indent=2)`, byte for byte, in about 60 % of its time (Rule 8)."""
    from json.encoder import encode_basestring_ascii as text  # C; only JSON output pays

    out: list[str] = []
    add = out.append

    def key(k: Any) -> str:  # json's rules for keys: str, then constants, int, float
        if isinstance(k, str):
            return text(k)
        if k is True or k is False or k is None:
            return f'"{_JSON_CONSTANTS[k]}"'
        if isinstance(k, int):
            return f'"{int.__repr__(k)}"'
        if isinstance(k, float):
            return f'"{_json_float(k)}"'
        raise TypeError(f"keys must be str, int, float, bool or None, not {type(k).__name__}")

    def write(v: Any, nl: str) -> None:
        if isinstance(v, str):
            add(text(v))
        elif v is True or v is False or v is None:
            add(_JSON_CONSTANTS[v])
        elif isinstance(v, int):
            add(int.__repr__(v))
        elif isinstance(v, float):
            add(_json_float(v))
        elif isinstance(v, dict):
            if not v:
                add("{}")
                return
            inner = nl + "  "
            sep = "{" + inner
            for k, x in v.items():
                add(sep)
                add(key(k))
                add(": ")
                write(x, inner)
                sep = "," + inner
            add(nl + "}")
        elif isinstance(v, (list, tuple)):
            if not v:
                add("[]")
                return
            inner = nl + "  "
            sep = "[" + inner
            for x in v:
                add(sep)
                write(x, inner)
                sep = "," + inner
            add(nl + "]")
        else:
            raise TypeError(f"Object of type {type(v).__name__} is not JSON serializable")

    write(value, "\n")
    return "".join(out)


_JSON_CONSTANTS = {True: "true", False: "false", None: "null"}


def _json_float(v: float) -> str:
    if v != v:
        return "NaN"
    if v in (float("inf"), float("-inf")):
        return "Infinity" if v > 0 else "-Infinity"
    return float.__repr__(v)


def _checked_target(target: str) -> None:
    """Rule 4: InputError (exit 2) for a target that cannot be parsed or names no host."""
    from .decision.environment import host_name_problem, shown
    from .decision.request import parse_target

    try:
        request = parse_target(target)
    except InputError:
        raise
    except ValueError as exc:  # e.g. a port of Unicode digits int() cannot read
        problem = f"{shown(target, 80)}: not a target ({exc})"
        raise InputError([Diagnostic("target", problem)]) from None
    if (why := host_name_problem(request.host)) is not None:
        raise InputError([Diagnostic("target", f"{shown(target, 80)}: {why}")])


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "interfaces":
        return _interfaces(args)
    if args.command == "rendezvous":
        return _rendezvous_serve(args)
    return _policy(args)


def _policy(args: argparse.Namespace) -> int:
    cmd = args.policy_command
    if cmd == "schema":
        from .schemas import schema_text

        sys.stdout.write(schema_text(args.name))
        return EXIT_OK
    if cmd == "validate":
        return _validate(args)
    if cmd == "test":
        return _test(args)
    if cmd == "diff":
        return _diff(args)
    return _explain(args)


def _screened(paths: Sequence[str]) -> list[str]:
    """`paths` expanded to the files they name, or InputError for every one that must not be
    opened (Rule 3)."""
    from .policy.load import screen_paths

    files, problems = screen_paths(paths)
    if problems:
        raise InputError(problems)
    return files


def _explain(args: argparse.Namespace) -> int:
    from .dryrun import explain

    _checked_target(args.target)
    if args.env:
        _screened([args.env])
    system: Any = [] if args.no_system else args.system
    decision = explain(args.target, system=system, app=args.app, carrier=args.carrier,
                       app_name=args.app_name, kind=args.kind, env=args.env)
    if args.policy_command == "show":
        if args.format == "json":
            props = decision.to_dict()["properties"]
            print(_json(props))
        else:
            from .decision.render import render_properties

            print("\n".join(render_properties(decision, everything=True)))
        return EXIT_OK
    if args.format == "json":
        print(_json(decision.to_dict()))
    elif args.format == "dot":
        from .decision.render import render_dot

        sys.stdout.write(render_dot(decision))
    else:
        from .decision.render import render_text

        sys.stdout.write(render_text(decision))
    return EXIT_OK if decision.ok else EXIT_POLICY


def _validate(args: argparse.Namespace) -> int:
    from .decision.envfile import load_environment
    from .policy.load import screen_paths
    from .policy.validate import validate_paths

    files, problems = screen_paths(args.paths)
    report = validate_paths(files, load_snapshot=load_environment)
    report.errors[:0] = problems
    for diag in report.errors:
        print(diag, file=sys.stderr)
    for warning in report.warnings:
        print(warning, file=sys.stderr)
    rules = sum(len(f.rules) for f in report.files)
    if report.errors:
        print(f"{len(report.errors)} error(s); nothing was applied")
        return EXIT_INPUT
    snaps = f", {len(report.snapshots)} environment snapshot(s)" if report.snapshots else ""
    print(f"ok: {len(report.files)} file(s), {rules} rule(s){snaps}, "
          f"{len(report.warnings)} warning(s)")
    return 1 if (args.strict and report.warnings) else EXIT_OK


def _test(args: argparse.Namespace) -> int:
    from .admin import runner

    if args.env:
        _screened([args.env])
    return runner.main(args.paths, layers=_layers(args), env=args.env, fmt=args.format)


def _diff(args: argparse.Namespace) -> int:
    from .admin import diff

    for path in ([args.env] if args.env else []) + ([args.requests] if args.requests else []):
        _screened([path])
    return diff.main(old=args.old, new=args.new, git=args.git, paths=args.paths,
                     layer=args.layer, layers=_layers(args), requests_file=args.requests,
                     scenarios=args.scenarios, env=args.env, fmt=args.format,
                     exit_zero=args.exit_zero)


def _interfaces(args: argparse.Namespace) -> int:
    from .decision.environment import Environment
    from .decision.facts import apply_interface_facts
    from .policy.context import PolicyContext
    from .system.interfaces import discover_interfaces

    found = tuple(discover_interfaces())
    if args.system:
        found = apply_interface_facts(PolicyContext(system=args.system).interface_facts, found)
    env = Environment(found)
    if args.format == "json":
        print(_json(env.to_dict()["interfaces"]))
        return EXIT_OK
    for i in found:
        state = "up" if i.up else "down"
        facts = [i.type, state]
        if i.metered:
            facts.append("metered")
        if i.cost:
            facts.append(f"cost {i.cost}")
        if i.pvd:
            facts.append(f"pvd {i.pvd}")
        if i.mtu:
            facts.append(f"mtu {i.mtu}")
        print(f"{i.name:<12} {', '.join(facts)}")
        for a in i.addresses:
            print(f"{'':<12}   {a.address}{' (temporary)' if a.temporary else ''}")
        for g in i.gateways:
            print(f"{'':<12}   default via {g}")
    from .system.mptcp import path_manager

    print(f"{'(mptcp)':<12} path manager {path_manager()}")
    return EXIT_OK


_PEM_MAX = 1 << 20
"""The largest certificate or key file `rendezvous serve` reads (bytes)."""


def _listen_address(text: str) -> tuple[str, int]:
    """Rule 5: `HOST:PORT` with HOST an IP address (`[v6]` bracketed or bare), or exit 2."""
    import ipaddress

    from .decision.environment import shown

    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        if not sep or not port.isascii() or not port.isdigit() or int(port) > 65535:
            raise ValueError("no port")
        ipaddress.ip_address(host)
    except ValueError:
        raise InputError([Diagnostic("--listen", f"{shown(text, 80)} is not HOST:PORT (an IP "
                                                 "address and a port 0-65535)")]) from None
    return host, int(port)


def _pem_text(path: str, what: str) -> str:
    """Rule 3 and 5: a regular file of at most _PEM_MAX bytes, as text, or exit 2."""
    import os
    import stat

    from .decision.environment import shown

    name = shown(path, 200)
    try:
        st = os.stat(path)
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "cannot be read"
        raise InputError([Diagnostic(name, f"{what}: {why}")]) from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError([Diagnostic(name, f"{what}: not a regular file")])
    if st.st_size > _PEM_MAX:
        raise InputError([Diagnostic(name, f"{what}: over {_PEM_MAX} bytes, not a PEM file")])
    try:
        with open(path, "rb") as fh:
            return fh.read(_PEM_MAX + 1).decode("ascii")
    except UnicodeDecodeError:
        raise InputError([Diagnostic(name, f"{what}: not a PEM file (not ASCII)")]) from None


def _rendezvous_serve(args: argparse.Namespace) -> int:
    """Rule 5: check everything, then serve until SIGTERM/SIGINT."""
    import math
    import re
    import ssl

    from .certs import Certificate

    host, port = _listen_address(args.listen)
    problems = []
    for option, value, ok in (("--queue", args.queue, args.queue >= 1),
                              ("--ttl", args.ttl, math.isfinite(args.ttl) and args.ttl > 0),
                              ("--max-identities", args.max_identities,
                               args.max_identities >= 1),
                              ("--max-waits", args.max_waits, args.max_waits >= 1),
                              ("--max-connections", args.max_connections,
                               args.max_connections >= 1),
                              ("--senders-per-recipient", args.senders_per_recipient,
                               args.senders_per_recipient >= 1),
                              ("--recipients-per-sender", args.recipients_per_sender,
                               args.recipients_per_sender >= 1),
                              ("--bytes-per-sender", args.bytes_per_sender,
                               args.bytes_per_sender >= 1)):
        if not ok:
            problems.append(Diagnostic(option, f"{value} is out of range (over 0)"))
    if problems:
        raise InputError(problems)
    cert_path, key_path = args.certificate
    ours = Certificate(_pem_text(cert_path, "--certificate CERT"),
                       _pem_text(key_path, "--certificate KEY"))
    try:
        ours.load_into(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    except (ssl.SSLError, ValueError) as exc:
        raise InputError([Diagnostic(f"{cert_path}, {key_path}", f"--certificate: not a PEM "
                                     f"certificate and its private key ({exc})")]) from None
    trusted = []
    for path in args.trust:
        text = _pem_text(path, "--trust")
        found = re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", text,
                           flags=re.S)
        try:
            for pem in found:
                ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=pem)
        except ssl.SSLError as exc:
            raise InputError([Diagnostic(path, f"--trust: a certificate that does not load "
                                               f"({exc})")]) from None
        if not found:
            raise InputError([Diagnostic(path, "--trust: no PEM certificate in it")])
        trusted += [Certificate(pem + "\n") for pem in found]
    system: Any = [] if args.no_system else args.system
    import asyncio

    return asyncio.run(_serve_point(args, host, port, ours, trusted, system))


async def _serve_point(args: argparse.Namespace, host: str, port: int, ours: Any,
                       trusted: list[Any], system: Any) -> int:
    import asyncio
    import logging
    import signal

    from .errors import ArgumentError, InputError, PolicyError
    from .runtime.endpoints import Local
    from .runtime.rendezvous_point import RendezvousPoint

    log = logging.getLogger("taps_post.rendezvous")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        point = await RendezvousPoint.start(
            Local(address=host, port=port, certificates=[ours], trusted=trusted),
            queue=args.queue, ttl=args.ttl, max_identities=args.max_identities,
            max_waits=args.max_waits, max_connections=args.max_connections,
            senders_per_recipient=args.senders_per_recipient,
            recipients_per_sender=args.recipients_per_sender,
            bytes_per_sender=args.bytes_per_sender, system=system)
    except (ArgumentError, PolicyError) as exc:
        print(f"taps-post rendezvous serve: {exc}", file=sys.stderr)
        return EXIT_POLICY if isinstance(exc, PolicyError) else EXIT_INPUT
    except OSError as exc:
        raise InputError([Diagnostic("--listen", f"{args.listen}: "
                                                 f"{exc.strerror or exc}")]) from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        print(f"listening on {point.hostport}", flush=True)
        await stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await point.close()
    return EXIT_OK


_ONE_SHOT = (["validate"], ["explain"], ["show"], ["test"])
"""The policy commands run with the collector off (Rule 6)."""


def script() -> None:
    """The console entry point (Rule 6)."""
    if sys.argv[1:2] == ["policy"] and sys.argv[2:3] in _ONE_SHOT:
        gc.disable()
    sys.exit(main())


if __name__ == "__main__":
    script()
