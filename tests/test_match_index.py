"""The rule index (taps_post/policy/match.py Rule 3) returns exactly what running every
matcher in order returns, for any rules and any request: it may only skip rules that cannot
match."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from taps_post.policy.match import RuleIndex, compile_when
from taps_post.policy.model import When

# Literal names, `*` + suffix (both indexed), other globs, CIDRs and non-ASCII patterns (run),
# with case variants: the index must agree with the case-insensitive regexes on all of them.
HOST_GLOBS = ("svc.example", "SVC.Example", "*.example", "*example", "*.EXAMPLE", "*", "svc.*",
              "s?c.example", "[st]vc.example", "*.corp.internal", "other.org", "*.org",
              "10.0.0.0/8", "198.18.0.0/15", "fd00::/8", "k.example", "*.k\u212a.example",
              "\u017fvc.example", "*e", "e", "")
HOSTS = ("svc.example", "SVC.EXAMPLE", "api.svc.example", "example", ".example", "other.org",
         "a.b.corp.internal",
         "k.example", "\u212a.example", "\u017fvc.example", "x.k\u212a.example",
         "x.kk.example", "198.18.3.4", "10.1.2.3", "fd00::1", "e", "", "svc.example.")
APPS = ("com.example.mail", "mail", "Mail", None)
APP_GLOBS = ("com.example.*", "mail", "*", "[mM]ail", "nothing")
SCHEMES = ("https", "tcp", "hostport", "quic")
KINDS = ("initiate", "listen", "respond")


def _field(items: tuple[Any, ...]) -> st.SearchStrategy[Any]:
    return st.none() | st.lists(st.sampled_from(items), min_size=1, max_size=3)


@st.composite
def matchers(draw: st.DrawFn) -> Any:
    host = draw(_field(tuple(h for h in HOST_GLOBS if h)))
    when = When.validate({k: v for k, v in {
        "app": draw(_field(APP_GLOBS)), "host": host,
        "port": draw(st.none() | st.sampled_from([[443], ["8000-9000"], [443, 8443]])),
        "scheme": draw(_field(SCHEMES)), "kind": draw(_field(KINDS))}.items() if v is not None})
    return compile_when(when)


@dataclass(frozen=True)
class Subject:
    app: str | None
    host: str
    port: int | None
    scheme: str
    kind: str


subjects = st.builds(Subject, st.sampled_from(APPS), st.sampled_from(HOSTS),
                     st.sampled_from((443, 8443, 80, None)), st.sampled_from(SCHEMES),
                     st.sampled_from(KINDS))


@settings(max_examples=300, deadline=None)
@given(st.lists(matchers(), max_size=30), st.lists(subjects, min_size=1, max_size=6))
def test_index_hits_are_the_naive_hits(ms: list[Any], requests: list[Subject]) -> None:
    index = RuleIndex(ms)
    for subject in requests:  # several per index: buckets are built once and reused
        assert index.hits(subject) == [i for i, m in enumerate(ms) if m.matches(subject)]


def test_indexed_and_run_forms() -> None:
    def keys(*hosts: str) -> Any:
        return compile_when(When.validate({"host": list(hosts)})).host_keys

    assert keys("svc.example", "*.Example") == ((False, "svc.example"), (True, ".example"))
    assert keys("svc.example", "10.0.0.0/8") is None  # a CIDR is run
    assert keys("s?c.example") is None and keys("*") is None and keys("svc.*") is None
    assert keys("\u017fvc.example") is None  # not ASCII: folds differently from str.lower
    assert compile_when(When.validate({})).host_keys is None


def test_a_rule_about_another_host_is_not_run() -> None:
    """The point of the index: a request runs the matchers of the rules about its host (and
    those it cannot sort), not those of every other host."""
    ran: list[int] = []

    @dataclass(frozen=True)
    class Counted:
        inner: Any
        n: int

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def matches_target(self, host: str, port: int | None) -> bool:
            ran.append(self.n)  # what the index runs once a bucket admitted the rule
            return bool(self.inner.matches_target(host, port))

    whens = [{"host": [f"h{i}.example"]} for i in range(100)] + [{"host": ["*.example"]},
                                                                 {"port": [443]}]
    index = RuleIndex([Counted(compile_when(When.validate(w)), n)  # type: ignore[misc]
                       for n, w in enumerate(whens)])
    assert index.hits(Subject("app", "H7.example", 443, "https", "initiate")) == [7, 100, 101]
    assert ran == [7, 100, 101]
