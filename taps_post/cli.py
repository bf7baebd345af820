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
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence
from typing import Any

from .diagnostics import Diagnostic

EXIT_OK, EXIT_INPUT, EXIT_POLICY = 0, 2, 3

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse prints usage and exits 2; keep that
        self.print_usage(sys.stderr)
        self.exit(EXIT_INPUT, f"{self.prog}: error: {message}\n")


def _add_request_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", help="https://host, tls://host:port, tcp://, udp://, quic://, "
                                  "or host:port")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--system", action="append", metavar="PATH",
                       help="system policy file or directory (repeatable); replaces the "
                            "discovered system layer")
    group.add_argument("--no-system", action="store_true",
                       help="use no system policy at all (built-in defaults only)")
    p.add_argument("--app", action="append", metavar="PATH", help="app policy (repeatable)")
    p.add_argument("--carrier", action="append", metavar="PATH",
                   help="carrier policy (repeatable)")
    p.add_argument("--app-name", metavar="NAME", help="application name rules match on")
    p.add_argument("--kind", default="initiate",
                   choices=["initiate", "listen", "source", "sink", "respond"])
    p.add_argument("--env", metavar="FILE",
                   help="environment snapshot (YAML/JSON); default: this machine, live")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="taps-post", description="Post Sockets / TAPS transport policy tool")
    parser.add_argument("--version", action="version", version="taps-post 0.1.0")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    policy = sub.add_parser("policy", help="validate, explain and inspect policies")
    psub = policy.add_subparsers(dest="policy_command", required=True, parser_class=_Parser)

    ex = psub.add_parser("explain", help="dry-run a decision and show exactly why")
    _add_request_args(ex)
    ex.add_argument("--format", choices=["text", "json", "dot"], default="text")

    show = psub.add_parser("show", help="effective value and provenance of every key "
                                        "(like ssh -G)")
    _add_request_args(show)
    show.add_argument("--format", choices=["text", "json"], default="text")

    val = psub.add_parser("validate", help="check policy files; lint dead rules and "
                                           "contradictions")
    val.add_argument("paths", nargs="+", metavar="PATH")
    val.add_argument("--strict", action="store_true", help="exit 1 when there are warnings")

    sch = psub.add_parser("schema", help="print a JSON Schema")
    sch.add_argument("name", choices=["policy", "env", "explain"])

    ifs = sub.add_parser("interfaces", help="what interface discovery sees, classified")
    ifs.add_argument("--system", action="append", metavar="PATH",
                     help="apply this system policy's interface facts")
    ifs.add_argument("--format", choices=["text", "json"], default="text")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .errors import InputError

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


def _checked_target(target: str) -> None:
    """Rule 4: InputError (exit 2) for a target that cannot be parsed or names no host."""
    from .decision.environment import host_name_problem, shown
    from .decision.request import parse_target
    from .errors import InputError

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
    cmd = args.policy_command
    if cmd == "schema":
        from .schemas import schema_text

        sys.stdout.write(schema_text(args.name))
        return EXIT_OK
    if cmd == "validate":
        return _validate(args)
    return _explain(args)


def _screened(paths: Sequence[str]) -> list[str]:
    """`paths` expanded to the files they name, or InputError for every one that must not be
    opened (Rule 3)."""
    from .policy.load import screen_paths

    files, problems = screen_paths(paths)
    if problems:
        from .errors import InputError

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
            print(json.dumps(props, indent=2))
        else:
            from .decision.render import render_properties

            print("\n".join(render_properties(decision, everything=True)))
        return EXIT_OK
    if args.format == "json":
        print(json.dumps(decision.to_dict(), indent=2))
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
        print(json.dumps(env.to_dict()["interfaces"], indent=2))
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


if __name__ == "__main__":
    sys.exit(main())
