"""Client side of the probe worker: one long-lived worker process per namespace."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

from proxy.harness.errors import ProbeError
from proxy.harness.result import Outcome, ProbeResult
from proxy.host import netns
from proxy.host.process import LineReader, ManagedProcess, log_tail, python_argv

__all__ = ["Outcome", "ProbeResult", "Prober"]

#: Extra time a worker gets beyond the probes' own timeouts (process start, scapy import).
RPC_SLACK = 60.0


class Prober:
    """Probes sent from one namespace (or from the current one when netns is None).

    The worker starts at once; the first call waits for it. Thread-safe (calls are
    serialised). Use as a context manager or call close().
    """

    def __init__(self, netns_name: str | None, *, log: Path | None = None) -> None:
        self.netns = netns_name
        argv = python_argv("proxy.harness.worker")
        if netns_name is not None:
            argv = netns.exec_argv(netns_name, argv)
        label = f"probe worker in {netns_name or 'the current namespace'}"
        self._process = ManagedProcess.start(
            argv, label=label, log=log, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        popen = self._process.popen
        assert popen.stdin is not None and popen.stdout is not None
        self._stdin = popen.stdin
        self._reader = LineReader(popen.stdout.fileno())
        self._lock = threading.Lock()
        self._ready = False
        self._closed = False

    @property
    def pid(self) -> int:
        return self._process.pid

    def __enter__(self) -> Prober:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- probes ---------------------------------------------------------------------

    def tcp(self, dst: str, port: int, *, timeout: float = 1.0) -> ProbeResult:
        """Ordinary TCP connect, then read the workload's line."""
        return self._one("tcp", timeout, dst=dst, port=port, timeout=timeout)

    def udp(
        self, dst: str, port: int, *, timeout: float = 1.0, sport: int | None = None
    ) -> ProbeResult:
        """Ordinary connected UDP socket: one datagram, one reply (fresh source port
        unless sport is given)."""
        return self._one("udp", timeout, dst=dst, port=port, timeout=timeout, sport=sport)

    def http(
        self,
        dst: str,
        port: int,
        *,
        requests: int = 1,
        keepalive: bool = True,
        timeout: float = 1.0,
    ) -> list[ProbeResult]:
        """`requests` GETs of /, on one keep-alive connection or a new one each."""
        return self._call(
            "http",
            timeout * 2 * requests,
            dst=dst,
            port=port,
            requests=requests,
            keepalive=keepalive,
            timeout=timeout,
        )

    def tcp_many(
        self, dst: str, port: int, count: int, *, timeout: float = 1.0
    ) -> list[ProbeResult]:
        """`count` new TCP connections made inside the worker in one call."""
        return self._call(
            "tcp_many", timeout * count, dst=dst, port=port, count=count, timeout=timeout
        )

    def tcp_syn(self, dst: str, port: int, *, timeout: float = 1.0) -> ProbeResult:
        """scapy SYN: SYN-ACK answered, RST or port unreachable (ICMP 3/3, ICMPv6 1/4)
        refused, other ICMP(v6) errors unreachable."""
        return self._one("tcp_syn", timeout, dst=dst, port=port, timeout=timeout)

    def udp_scapy(
        self, dst: str, port: int, *, timeout: float = 1.0, sport: int | None = None
    ) -> ProbeResult:
        """scapy UDP datagram; the reply's payload names the endpoint."""
        return self._one("udp_scapy", timeout, dst=dst, port=port, timeout=timeout, sport=sport)

    def icmp_echo(self, dst: str, *, timeout: float = 1.0) -> ProbeResult:
        """scapy echo request: echo-reply answered, ICMP errors refused/unreachable."""
        return self._one("icmp_echo", timeout, dst=dst, timeout=timeout)

    # -- plumbing -------------------------------------------------------------------

    def _one(self, op: str, budget: float, **args: Any) -> ProbeResult:
        results = self._call(op, budget, **args)
        if len(results) != 1:
            raise ProbeError(f"{op}: expected one result, got {len(results)}")
        return results[0]

    def _call(self, op: str, budget: float, **args: Any) -> list[ProbeResult]:
        request = json.dumps({"op": op, "args": args}).encode() + b"\n"
        with self._lock:
            if self._closed:
                raise ProbeError(f"{self._process.label} is closed")
            self._wait_ready()
            try:
                self._stdin.write(request)
                self._stdin.flush()
            except OSError as exc:
                raise self._died(f"cannot send {op!r}: {exc}") from exc
            reply = self._read(budget + RPC_SLACK, op)
        if not reply.get("ok"):
            raise ProbeError(f"{op} {args}: {reply.get('error', 'failed')}")
        return [ProbeResult.from_json(r) for r in reply.get("results", [])]

    def _wait_ready(self) -> None:
        if not self._ready:
            hello = self._read(RPC_SLACK, "start")
            if not hello.get("ready"):
                raise ProbeError(f"{self._process.label}: unexpected greeting {hello}")
            self._ready = True

    def _read(self, timeout: float, what: str) -> dict[str, Any]:
        try:
            line = self._reader.readline(timeout)
        except TimeoutError as exc:
            self._process.stop(grace=0.5)
            self._closed = True
            raise ProbeError(f"{self._process.label}: no reply to {what!r} in {timeout}s") from exc
        if line is None:
            raise self._died(f"exited while handling {what!r}")
        try:
            message = json.loads(line)
        except ValueError as exc:
            raise ProbeError(f"{self._process.label}: bad reply {line!r}") from exc
        if not isinstance(message, dict):
            raise ProbeError(f"{self._process.label}: bad reply {line!r}")
        return message

    def _died(self, what: str) -> ProbeError:
        self._closed = True
        try:
            code = self._process.popen.wait(timeout=2)
        except subprocess.TimeoutExpired:
            code = None
            self._process.stop(grace=0.5)
        tail = log_tail(self._process.log) or "(no stderr captured)"
        return ProbeError(f"{self._process.label} {what} (status {code}): {tail}")

    def close(self) -> None:
        """End the worker (EOF on its stdin, then SIGTERM/SIGKILL if it lingers)."""
        with self._lock:
            self._closed = True
            with contextlib.suppress(OSError):
                self._stdin.close()
            try:
                self._process.popen.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self._process.stop(grace=1)
            if self._process.popen.stdout is not None:
                self._process.popen.stdout.close()
