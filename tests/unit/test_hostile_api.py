"""A hostile or broken API server, over real sockets (issue 14).

The API server itself never serves these (it validates what it stores), so the adversary
here is a small local HTTP server speaking the list/watch protocol with crafted bodies:
a list item whose metadata is a string, events that cannot be keyed, a watch that goes
silent with its TCP connection open, and absurdly nested JSON. The real
:class:`~proxy.apiclient.client.ApiClient`, :class:`~proxy.source.reflector.Reflector` and
:class:`~proxy.agent.state.ClusterState` handle them.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from proxy import manifests as m
from proxy.agent.state import ClusterState
from proxy.apiclient.client import ApiClient
from proxy.apiclient.config import ClientConfig
from proxy.source.reflector import Reflector, services_spec

GOOD = m.service("good", "10.96.0.10", [m.Port(80)])
OTHER = m.service("other", "10.96.0.11", [m.Port(80)])


class Hostile:
    """What the server answers: one list body, then watch streams from ``watches``
    (each a list of raw lines; ``None`` as a line means: go silent, keep the socket)."""

    def __init__(self, list_body: bytes, watches: list[list[bytes | None]]) -> None:
        self.list_body = list_body
        self.watches = watches
        self.requests: list[str] = []
        self.release = threading.Event()


def _handler(h: Hostile) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            query = parse_qs(urlsplit(self.path).query)
            watch = query.get("watch") == ["true"]
            h.requests.append("watch" if watch else "list")
            if not watch:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(h.list_body)))
                self.end_headers()
                self.wfile.write(h.list_body)
                return
            lines = h.watches.pop(0) if h.watches else []
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for line in lines:
                if line is None:  # silent, TCP open, until the test ends
                    h.release.wait(30)
                    return
                chunk = line + b"\n"
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.close_connection = True

    return Handler


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[tuple[ThreadingHTTPServer, Hostile]] = []

    def start(h: Hostile) -> ApiClient:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(h))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append((server, h))
        port = server.server_address[1]
        return ApiClient(ClientConfig(server=f"http://127.0.0.1:{port}", source="test"))

    yield start
    for server, h in servers:
        h.release.set()
        server.shutdown()
        server.server_close()


def event(kind: str, obj: Any) -> bytes:
    return json.dumps({"type": kind, "object": obj}).encode()


def wait_for(cond: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def run_reflector(client: ApiClient, state: ClusterState, **kw: Any) -> tuple[Reflector, list[str]]:
    errors: list[str] = []
    r = Reflector(
        client,
        services_spec(),
        lambda ev, obj: state.handle("Service", ev, obj),
        on_synced=lambda: state.mark_synced("Service"),
        on_error=errors.append,
        backoff_initial=0.05,
        backoff_max=0.2,
        **kw,
    )
    r.start()
    return r, errors


def test_a_malformed_list_item_does_not_block_the_list(serve: Any) -> None:
    items = [GOOD, {"metadata": "oops"}, 7, {"metadata": {"name": ["x"]}}, OTHER]
    body = json.dumps({"kind": "ServiceList", "metadata": {"resourceVersion": "5"}, "items": items})
    client = serve(Hostile(body.encode(), []))
    state = ClusterState("node-a")
    r, errors = run_reflector(client, state)
    try:
        wait_for(lambda: state.has_synced("Service"), "the list to be delivered")
        snapshot, _, _ = state.take()
        assert sorted(s.name for s in snapshot.services) == ["good", "other"]
        assert r.stats.malformed == 3 and errors.count("malformed") == 3
    finally:
        r.stop(timeout=2)


def test_malformed_watch_events_are_skipped_and_the_stream_goes_on(serve: Any) -> None:
    body = json.dumps({"kind": "ServiceList", "metadata": {"resourceVersion": "5"}, "items": []})
    added = {**OTHER, "metadata": {**OTHER["metadata"], "resourceVersion": "7"}}
    stream: list[bytes | None] = [
        event("ADDED", {"metadata": "oops"}),
        event("MODIFIED", {"metadata": {"name": 5}}),
        event("ADDED", {"kind": "Service", "metadata": {"name": "x", "resourceVersion": 9}}),
        event("ADDED", added),
    ]
    client = serve(Hostile(body.encode(), [stream]))
    state = ClusterState("node-a")
    r, errors = run_reflector(client, state)
    try:
        wait_for(lambda: [s.name for s in state.take()[0].services] == ["other"], "the event")
        assert r.stats.malformed == 3 and errors.count("malformed") == 3
        assert r.last_resource_version == "7"
    finally:
        r.stop(timeout=2)


def test_a_silent_watch_is_detected_and_reopened(serve: Any) -> None:
    body = json.dumps({"kind": "ServiceList", "metadata": {"resourceVersion": "5"}, "items": []})
    added = {**GOOD, "metadata": {**GOOD["metadata"], "resourceVersion": "8"}}
    # first watch: nothing, TCP open; the second delivers the change made meanwhile
    h = Hostile(body.encode(), [[None], [event("ADDED", added)]])
    client = serve(h)
    state = ClusterState("node-a")
    r, errors = run_reflector(client, state, watch_idle_timeout=1.0)
    try:
        wait_for(
            lambda: [s.name for s in state.take()[0].services] == ["good"], "the reopened watch"
        )
        assert r.stats.silent >= 1 and "silent" in errors
        assert h.requests[:3] == ["list", "watch", "watch"]
    finally:
        r.stop(timeout=2)


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 200_000 + b"]" * 200_000,
        b'{"kind":"ServiceList","metadata":{},"items":[' + b"9" * 5000 + b"]}",
        b'{"kind":"ServiceList","metadata":"x","items":[]}',
        b'{"kind":"ServiceList","metadata":{},"items":"x"}',
    ],
)
def test_a_list_response_the_client_cannot_use_is_an_error_not_a_crash(
    serve: Any, body: bytes
) -> None:
    client = serve(Hostile(body, []))
    state = ClusterState("node-a")
    r, errors = run_reflector(client, state)
    try:
        wait_for(lambda: len(errors) >= 2, "the list to fail and be retried")
        assert r.running and not state.has_synced("Service")
        assert set(errors) == {"bad-response"}
    finally:
        r.stop(timeout=2)
