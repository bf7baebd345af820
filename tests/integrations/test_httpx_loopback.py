"""httpx over taps_post.httpx.Transport against a real nginx on loopback: HTTP/1.1 and HTTP/2
over TLS (ALPN), plain http, extra info, policy errors as httpx.ConnectError."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("httpcore")

import taps_post as tp  # noqa: E402
import taps_post.httpx as tph  # noqa: E402
from dnslab import free_port  # noqa: E402
from nginxlab import nginx, nginx_conf  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("nginx")
    cert = tp.certs.self_signed(["localhost", "127.0.0.1"])
    tls_port, plain_port = free_port(), free_port()
    uds = str(root / "http.sock")  # nginx binds it with the ports, before it serves any
    conf = nginx_conf(root, cert, [f"127.0.0.1:{tls_port}"],
                      [f"127.0.0.1:{plain_port}", f"unix:{uds}"])
    with nginx(root, conf, [("127.0.0.1", tls_port), ("127.0.0.1", plain_port)]):
        yield {"cert": cert, "tls": tls_port, "plain": plain_port, "uds": uds}


def policy() -> tp.PolicyContext:
    return tp.PolicyContext(system=[], app_name="httpx-test")


def refusing() -> tp.PolicyContext:
    """A policy that prohibits the only path to the loopback nginx."""
    return tp.PolicyContext(system=[], app_name="httpx-test", app={
        "version": 1, "layer": "app",
        "rules": [{"id": "no-loopback", "set": {"interface": {"lo": "prohibit"}}}]})


def test_http11_over_tls(server: dict[str, Any], run: Any) -> None:
    async def go() -> None:
        transport = tph.Transport(policy=policy(), certificates=[server["cert"]], http2=False)
        async with httpx.AsyncClient(transport=transport) as client:
            r = await client.get(f"https://127.0.0.1:{server['tls']}/")
            assert r.status_code == 200 and r.text == "hello from nginx\n"
            assert r.http_version == "HTTP/1.1"
            stream = r.extensions["network_stream"]
            assert stream.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
            assert stream.get_extra_info("server_addr") == ("127.0.0.1", server["tls"])
            assert stream.get_extra_info("client_addr")[0] == "127.0.0.1"
            assert stream.get_extra_info("socket") is not None
            decision = stream.get_extra_info("taps_post.explanation")
            assert isinstance(decision, tp.Decision) and decision.outcome == "ok"
            again = await client.get(f"https://127.0.0.1:{server['tls']}/")
            assert again.status_code == 200
            assert again.extensions["network_stream"] is stream  # keep-alive: same carrier

    run(go())


def test_http2_over_tls(server: dict[str, Any], run: Any) -> None:
    async def go() -> None:
        transport = tph.Transport(policy=policy(), certificates=[server["cert"]])
        async with httpx.AsyncClient(transport=transport, http2=True) as client:
            rs = [await client.get(f"https://127.0.0.1:{server['tls']}/x{i}") for i in range(3)]
            assert [r.status_code for r in rs] == [200, 200, 200]
            assert {r.http_version for r in rs} == {"HTTP/2"}
            ssl_object = rs[0].extensions["network_stream"].get_extra_info("ssl_object")
            assert ssl_object.selected_alpn_protocol() == "h2"

    run(go())


def test_plain_http(server: dict[str, Any], run: Any) -> None:
    async def go() -> None:
        transport = tph.Transport(policy=policy(), certificates=[server["cert"]])
        async with httpx.AsyncClient(transport=transport) as client:
            r = await client.get(f"http://127.0.0.1:{server['plain']}/")  # pins: TLS only
            assert r.status_code == 200 and r.http_version == "HTTP/1.1"
            stream = r.extensions["network_stream"]
            assert stream.get_extra_info("ssl_object") is None
            assert stream.get_extra_info("taps_post.explanation").outcome == "ok"

    run(go())


def test_plain_http_over_a_unix_socket_consults_no_policy(server: dict[str, Any],
                                                         run: Any) -> None:
    async def go() -> None:
        # A policy that refuses every path: a Unix socket is no path, so it never applies.
        transport = tph.Transport(policy=refusing(), uds=server["uds"])
        async with httpx.AsyncClient(transport=transport) as client:
            r = await client.get("http://localhost/over-uds")
            assert r.status_code == 200 and r.text == "hello from nginx\n"
            stream = r.extensions["network_stream"]
            assert stream.get_extra_info("taps_post.explanation") is None
            assert stream.get_extra_info("ssl_object") is None
            again = await client.get("http://localhost/again")
            assert again.status_code == 200
            assert again.extensions["network_stream"] is stream  # keep-alive, as over TCP
            with pytest.raises(httpx.ConnectError, match="does not run TLS over a Unix socket"):
                await client.get("https://localhost/")

    run(go())


def test_a_missing_unix_socket_is_connect_error(tmp_path: Any, run: Any) -> None:
    async def go() -> None:
        transport = tph.Transport(policy=policy(), uds=str(tmp_path / "nobody.sock"))
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get("http://localhost/")

    run(go())


def test_untrusted_certificate_is_connect_error(server: dict[str, Any], run: Any) -> None:
    async def go() -> None:
        async with httpx.AsyncClient(transport=tph.Transport(policy=policy())) as client:
            with pytest.raises(httpx.ConnectError, match="establishment failed"):
                await client.get(f"https://127.0.0.1:{server['tls']}/")

    run(go())


def test_policy_refusal_is_connect_error(server: dict[str, Any], run: Any) -> None:
    async def go() -> None:
        transport = tph.Transport(policy=refusing(), certificates=[server["cert"]])
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(httpx.ConnectError, match="policy"):
                await client.get(f"https://127.0.0.1:{server['tls']}/")

    run(go())


def test_refused_port_is_connect_error(run: Any) -> None:
    async def go() -> None:
        async with httpx.AsyncClient(transport=tph.Transport(policy=policy())) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(f"http://127.0.0.1:{free_port()}/")

    run(go())


def test_trace_callback_sees_the_race(server: dict[str, Any], run: Any) -> None:
    async def go() -> None:
        events: list[str] = []
        transport = tph.Transport(policy=policy(), certificates=[server["cert"]],
                                  trace=lambda name, info: events.append(name))
        async with httpx.AsyncClient(transport=transport) as client:
            r = await client.get(f"https://127.0.0.1:{server['tls']}/")
            assert r.status_code == 200
        assert "race.started" in events and "attempt.won" in events, events

    run(go())


def _within(seen: list[tuple[str, dict[str, Any]]], step: str) -> list[tuple[str, Any]]:
    """The events between httpcore's `step.started` and its `.complete`/`.failed`."""
    names = [n for n, _ in seen]
    start = names.index(f"{step}.started")
    end = next(i for i in range(start, len(names))
               if names[i] in (f"{step}.complete", f"{step}.failed"))
    return seen[start + 1:end]


def test_the_request_trace_extension_sees_the_race(server: dict[str, Any], run: Any) -> None:
    """taps_post's establishment events, `taps_post.`-named, inside httpcore's start_tls; a
    request on the kept-alive connection opens nothing and sees none."""
    async def go() -> None:
        seen: list[tuple[str, dict[str, Any]]] = []

        async def trace(name: str, info: dict[str, Any]) -> None:
            seen.append((name, info))

        transport = tph.Transport(policy=policy(), certificates=[server["cert"]], http2=False)
        url = f"https://127.0.0.1:{server['tls']}/"
        async with httpx.AsyncClient(transport=transport) as client:
            r = await client.get(url, extensions={"trace": trace})
            assert r.status_code == 200
            inside = _within(seen, "connection.start_tls")
            names = [n for n, _ in inside]
            assert names and all(n.startswith("taps_post.") for n in names), names
            assert names[0] == "taps_post.decision.complete", names
            assert names.index("taps_post.race.started") < names.index("taps_post.attempt.won")
            [won] = [info for n, info in inside if n == "taps_post.attempt.won"]
            assert won["remote"] == f"127.0.0.1:{server['tls']}" and won["stack"] == "tls", won
            assert not [n for n, _ in seen if n.startswith("taps_post.")
                        and (n, _) not in inside]  # none outside the step that raced
            seen.clear()
            assert (await client.get(url, extensions={"trace": trace})).status_code == 200
            assert seen and not [n for n, _ in seen if n.startswith("taps_post.")], seen

    run(go())


def test_plain_http_races_inside_the_first_write(server: dict[str, Any], run: Any) -> None:
    async def go() -> None:
        seen: list[tuple[str, dict[str, Any]]] = []

        async def trace(name: str, info: dict[str, Any]) -> None:
            seen.append((name, info))

        async with httpx.AsyncClient(transport=tph.Transport(policy=policy())) as client:
            r = await client.get(f"http://127.0.0.1:{server['plain']}/",
                                 extensions={"trace": trace})
            assert r.status_code == 200
        names = [n for n, _ in _within(seen, "http11.send_request_headers")]
        assert "taps_post.attempt.won" in names, [n for n, _ in seen]

    run(go())


def test_a_refused_request_traces_the_decision_that_refused_it(server: dict[str, Any],
                                                              run: Any) -> None:
    async def go() -> None:
        seen: list[tuple[str, dict[str, Any]]] = []

        async def trace(name: str, info: dict[str, Any]) -> None:
            seen.append((name, info))

        transport = tph.Transport(policy=refusing(), certificates=[server["cert"]])
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(httpx.ConnectError, match="policy"):
                await client.get(f"https://127.0.0.1:{server['tls']}/",
                                 extensions={"trace": trace})
        [decision] = [i for n, i in _within(seen, "connection.start_tls")
                      if n == "taps_post.decision.complete"]
        assert decision["outcome"] != "ok" and decision["candidates"] == 0, decision

    run(go())


def test_what_the_request_trace_raises_reaches_the_caller(server: dict[str, Any],
                                                          run: Any) -> None:
    async def go() -> None:
        async def trace(name: str, info: dict[str, Any]) -> None:
            if name == "taps_post.attempt.won":
                raise LookupError("the trace refused")

        transport = tph.Transport(policy=policy(), certificates=[server["cert"]])
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(LookupError, match="the trace refused"):
                await client.get(f"https://127.0.0.1:{server['tls']}/",
                                 extensions={"trace": trace})
            r = await client.get(f"https://127.0.0.1:{server['tls']}/")  # the pool recovers
            assert r.status_code == 200

    run(go())
