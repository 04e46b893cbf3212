"""Probe worker: runs in one namespace, answers JSON-line requests on stdin/stdout.

    ip netns exec NS python -m proxy.harness.worker

Request:  {"op": "tcp", "args": {"dst": "10.96.0.10", "port": 80, "timeout": 1.0}}
Response: {"ok": true, "results": [{"outcome": "answered", ...}, ...]}
          {"ok": false, "error": "ValueError: ..."}
The first line written is {"ready": true, "pid": PID}. EOF on stdin ends the worker.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import IO, Any

from proxy.harness import sockprobe
from proxy.harness.result import ProbeResult
from proxy.harness.scapyprobe import ScapyProbes

Args = dict[str, Any]


def _str(args: Args, key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str):
        raise ValueError(f"argument {key!r} must be a string, got {value!r}")
    return value


def _int(args: Args, key: str) -> int:
    value = args.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"argument {key!r} must be an integer, got {value!r}")
    return value


def _opt_int(args: Args, key: str) -> int | None:
    return None if args.get(key) is None else _int(args, key)


def _float(args: Args, key: str) -> float:
    value = args.get(key, 1.0)
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"argument {key!r} must be a positive number, got {value!r}")
    return float(value)


class Worker:
    """Dispatches requests to socket probes, and to scapy probes made on first use."""

    def __init__(self) -> None:
        self._scapy: ScapyProbes | None = None
        self._ops: dict[str, Callable[[Args], list[ProbeResult]]] = {
            "ping": lambda a: [],
            "tcp": self._tcp,
            "tcp_many": self._tcp_many,
            "udp": self._udp,
            "http": self._http,
            "tcp_syn": self._tcp_syn,
            "udp_scapy": self._udp_scapy,
            "icmp_echo": self._icmp_echo,
        }

    @property
    def scapy(self) -> ScapyProbes:
        if self._scapy is None:
            self._scapy = ScapyProbes()
        return self._scapy

    def handle(self, request: Any) -> dict[str, Any]:
        try:
            if not isinstance(request, dict):
                raise ValueError("a request must be a JSON object")
            op, args = request.get("op"), request.get("args", {})
            if op not in self._ops:
                raise ValueError(f"unknown op {op!r} (known: {sorted(self._ops)})")
            if not isinstance(args, dict):
                raise ValueError("args must be a JSON object")
            results = self._ops[op](args)
        except Exception as exc:
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        return {"ok": True, "results": [r.to_json() for r in results]}

    def _tcp(self, a: Args) -> list[ProbeResult]:
        return [sockprobe.tcp(_str(a, "dst"), _int(a, "port"), timeout=_float(a, "timeout"))]

    def _tcp_many(self, a: Args) -> list[ProbeResult]:
        return sockprobe.tcp_many(
            _str(a, "dst"), _int(a, "port"), _int(a, "count"), timeout=_float(a, "timeout")
        )

    def _udp(self, a: Args) -> list[ProbeResult]:
        return [
            sockprobe.udp(
                _str(a, "dst"),
                _int(a, "port"),
                timeout=_float(a, "timeout"),
                sport=_opt_int(a, "sport"),
            )
        ]

    def _http(self, a: Args) -> list[ProbeResult]:
        return sockprobe.http(
            _str(a, "dst"),
            _int(a, "port"),
            requests=_int(a, "requests"),
            keepalive=bool(a.get("keepalive", True)),
            timeout=_float(a, "timeout"),
        )

    def _tcp_syn(self, a: Args) -> list[ProbeResult]:
        return [self.scapy.tcp_syn(_str(a, "dst"), _int(a, "port"), timeout=_float(a, "timeout"))]

    def _udp_scapy(self, a: Args) -> list[ProbeResult]:
        return [
            self.scapy.udp(
                _str(a, "dst"),
                _int(a, "port"),
                timeout=_float(a, "timeout"),
                sport=_opt_int(a, "sport"),
            )
        ]

    def _icmp_echo(self, a: Args) -> list[ProbeResult]:
        return [self.scapy.icmp_echo(_str(a, "dst"), timeout=_float(a, "timeout"))]

    def close(self) -> None:
        if self._scapy is not None:
            self._scapy.close()


def serve(requests: IO[bytes], replies: IO[bytes]) -> None:
    worker = Worker()

    def reply(message: dict[str, Any]) -> None:
        replies.write(json.dumps(message).encode() + b"\n")
        replies.flush()

    reply({"ready": True, "pid": os.getpid()})
    try:
        for line in requests:
            if not line.strip():
                continue
            try:
                request = json.loads(line)
            except ValueError as exc:
                reply({"ok": False, "error": f"bad JSON: {exc}"})
                continue
            reply(worker.handle(request))
    finally:
        worker.close()


def main() -> int:
    # Keep the protocol channel private: anything printed (by scapy, say) goes to stderr.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    try:
        serve(sys.stdin.buffer, replies)
    except (BrokenPipeError, KeyboardInterrupt):
        return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
