"""The workload server a pod runs: says who it is and who it sees.

    python -m proxy.harness.workload --name a1 --tcp 80 --udp 80 --http 8080

TCP: on accept, sends one line ``"<name> <peer_ip>:<peer_port>\\n"`` and closes.
UDP: answers every datagram with that line. HTTP/1.1 (keep-alive honoured): ``GET``
answers that line as ``text/plain``. Every port is served on IPv4 and IPv6 (when the
namespace has IPv6). Prints ``ready ...`` on stdout once every socket is bound, and exits
with status 0 on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import ipaddress
import selectors
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

READY_PREFIX = b"ready "
FAMILIES = {
    "4": (socket.AF_INET,),
    "6": (socket.AF_INET6,),
    "both": (socket.AF_INET, socket.AF_INET6),
}
_WILDCARD = {socket.AF_INET: "0.0.0.0", socket.AF_INET6: "::"}
_TRANSIENT = {errno.ECONNABORTED, errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH}


def banner(name: str, peer: tuple[Any, ...]) -> bytes:
    """The line every protocol answers with: pod name and the peer as the pod sees it
    (an IPv6 address in canonical form, without a zone)."""
    host = str(peer[0]).partition("%")[0]
    with contextlib.suppress(ValueError):
        host = str(ipaddress.ip_address(host))
    return f"{name} {host}:{peer[1]}\n".encode()


def _listen_socket(
    family: socket.AddressFamily, kind: socket.SocketKind, port: int
) -> socket.socket:
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((_WILDCARD[family], port))
        if kind == socket.SOCK_STREAM:
            sock.listen(1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless the client says close
    server: _HTTPServer

    def do_GET(self) -> None:
        body = banner(self.server.pod_name, self.client_address)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, family: socket.AddressFamily, port: int, pod_name: str) -> None:
        self.address_family = family
        self.pod_name = pod_name
        super().__init__((_WILDCARD[family], port), _Handler)

    def server_bind(self) -> None:
        # Not HTTPServer.server_bind: it resolves our FQDN, which may wait on DNS.
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])


class Workload:
    """All the listening sockets of one pod; `serve()` runs until `stop()`."""

    def __init__(
        self,
        name: str,
        *,
        tcp: Sequence[int] = (),
        udp: Sequence[int] = (),
        http: Sequence[int] = (),
        families: str = "both",
    ) -> None:
        self.name = name
        self.families: list[socket.AddressFamily] = []
        self._tcp: list[socket.socket] = []
        self._udp: list[socket.socket] = []
        self._http: list[_HTTPServer] = []
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        try:
            for family in FAMILIES[families]:
                if self._bind_family(family, tcp, udp, http, required=families != "both"):
                    self.families.append(family)
        except BaseException:
            self.close()
            raise

    def _bind_family(
        self,
        family: socket.AddressFamily,
        tcp: Sequence[int],
        udp: Sequence[int],
        http: Sequence[int],
        *,
        required: bool,
    ) -> bool:
        """Bind every port for one family; False if the family is unavailable here."""
        what = "sockets"
        try:
            for port in tcp:
                what = f"tcp {_WILDCARD[family]} port {port}"
                self._tcp.append(_listen_socket(family, socket.SOCK_STREAM, port))
            for port in udp:
                what = f"udp {_WILDCARD[family]} port {port}"
                self._udp.append(_listen_socket(family, socket.SOCK_DGRAM, port))
            for port in http:
                what = f"http {_WILDCARD[family]} port {port}"
                self._http.append(_HTTPServer(family, port, self.name))
        except OSError as exc:
            unavailable = exc.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL)
            if family == socket.AF_INET6 and unavailable and not required:
                return False
            raise OSError(exc.errno, f"workload {self.name}: cannot bind {what}: {exc}") from exc
        return True

    def ready_line(self) -> str:
        def ports(socks: Sequence[socket.socket]) -> str:
            return ",".join(sorted({str(s.getsockname()[1]) for s in socks})) or "-"

        http = ",".join(sorted({str(s.server_port) for s in self._http})) or "-"
        families = ",".join("4" if f == socket.AF_INET else "6" for f in self.families)
        return (
            f"ready {self.name} tcp={ports(self._tcp)} udp={ports(self._udp)} "
            f"http={http} families={families}"
        )

    def stop(self) -> None:
        """Ask serve() to return (safe from signal handlers and other threads)."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def serve(self) -> None:
        for server in self._http:
            threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
        with selectors.DefaultSelector() as selector:
            selector.register(self._wake_r, selectors.EVENT_READ, None)
            for sock in self._tcp:
                selector.register(sock, selectors.EVENT_READ, self._accept)
            for sock in self._udp:
                selector.register(sock, selectors.EVENT_READ, self._answer)
            while not self._stop.is_set():
                for key, _ in selector.select():
                    if key.data is not None:
                        key.data(key.fileobj)

    def _accept(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, peer = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _TRANSIENT:
                    continue  # the client gave up before we accepted
                print(f"workload {self.name}: accept: {exc}", file=sys.stderr)
                return
            with conn:
                try:
                    conn.settimeout(1.0)
                    conn.sendall(banner(self.name, peer))
                except OSError:
                    pass

    def _answer(self, sock: socket.socket) -> None:
        while True:
            try:
                _, peer = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _TRANSIENT:
                    continue  # a queued ICMP error about an earlier reply
                print(f"workload {self.name}: recvfrom: {exc}", file=sys.stderr)
                return
            with contextlib.suppress(OSError):
                sock.sendto(banner(self.name, peer), peer)

    def close(self) -> None:
        for server in self._http:
            server.server_close()
        for sock in (*self._tcp, *self._udp, self._wake_r, self._wake_w):
            sock.close()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m proxy.harness.workload",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--name", required=True, help="the pod name to answer with")
    parser.add_argument("--tcp", type=int, action="append", default=[], metavar="PORT")
    parser.add_argument("--udp", type=int, action="append", default=[], metavar="PORT")
    parser.add_argument("--http", type=int, action="append", default=[], metavar="PORT")
    parser.add_argument(
        "--family",
        choices=sorted(FAMILIES),
        default="both",
        help="address families to serve (both: IPv6 only where available)",
    )
    args = parser.parse_args(argv)
    if not (args.tcp or args.udp or args.http):
        parser.error("give at least one --tcp, --udp or --http port")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        workload = Workload(
            args.name, tcp=args.tcp, udp=args.udp, http=args.http, families=args.family
        )
    except OSError as exc:
        print(exc.strerror or str(exc), file=sys.stderr)
        return 2

    def on_signal(signum: int, frame: FrameType | None) -> None:
        workload.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(workload.ready_line(), flush=True)
    try:
        workload.serve()
    finally:
        workload.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
