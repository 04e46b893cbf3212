"""A tight loop of new TCP connections, run inside a client pod's namespace.

    python -m proxy.bench.connloop --target service=10.96.0.10:80 \\
        --target direct=10.244.1.11:8080 --expect server --count 3000 --rounds 5

Each connection: socket → ``connect()`` (timed: SYN out, SYN-ACK back, so it includes the
node's NAT lookup for the first packet) → read the workload's banner → close with
``SO_LINGER`` 0 (a RST: no TIME_WAIT, so thousands of connections never run out of
ports). A round runs ``--count`` connections to one target; rounds alternate between the
targets so drift on a shared machine hits them alike; ``--warmup`` connections per target
come first and are not recorded. Prints one JSON object: per target, one summary per
round (connect-time percentiles in µs, connections per second over the whole loop,
failures).
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import time
from collections.abc import Sequence
from typing import Any

from proxy.bench.stats import percentile

_LINGER_RST = struct.pack("ii", 1, 0)


def parse_target(text: str) -> tuple[str, tuple[str, int]]:
    """``name=ip:port`` or ``name=[ipv6]:port`` → (name, (ip, port))."""
    name, sep, addr = text.partition("=")
    ip, colon, port = addr.rpartition(":")
    ip = ip.removeprefix("[").removesuffix("]")
    if not (sep and colon and name and ip and port.isdigit()):
        raise ValueError(f"target {text!r} is not name=ip:port (IPv6: name=[ip]:port)")
    return name, (ip, int(port))


def one(addr: tuple[str, int], expect: str, timeout: float) -> float | None:
    """One connection; its connect() time in µs, or None if it failed or reached a pod
    other than ``expect``."""
    s = socket.socket(socket.AF_INET6 if ":" in addr[0] else socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        s.settimeout(timeout)
        t0 = time.perf_counter_ns()
        s.connect(addr)
        t1 = time.perf_counter_ns()
        banner = s.recv(256)
    except OSError:
        return None
    finally:
        s.close()
    if expect and banner.split(b" ", 1)[0].decode(errors="replace") != expect:
        return None
    return (t1 - t0) / 1000


def summarize(connect_us: Sequence[float], failures: int, seconds: float) -> dict[str, Any]:
    n = len(connect_us) + failures
    return {
        "connections": n,
        "failures": failures,
        "seconds": round(seconds, 4),
        "rate_per_s": round(n / seconds, 1) if seconds > 0 else 0.0,
        "connect_us": {
            "p50": round(percentile(connect_us, 50), 1),
            "p90": round(percentile(connect_us, 90), 1),
            "p99": round(percentile(connect_us, 99), 1),
            "mean": round(sum(connect_us) / len(connect_us), 1) if connect_us else None,
            "max": round(max(connect_us), 1) if connect_us else None,
        },
    }


def run_round(addr: tuple[str, int], count: int, expect: str, timeout: float) -> dict[str, Any]:
    times: list[float] = []
    failures = 0
    start = time.perf_counter()
    for _ in range(count):
        us = one(addr, expect, timeout)
        if us is None:
            failures += 1
        else:
            times.append(us)
    return summarize(times, failures, time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m proxy.bench.connloop", description=__doc__)
    parser.add_argument("--target", action="append", required=True, metavar="NAME=IP:PORT")
    parser.add_argument("--expect", default="", help="the pod name the banner must start with")
    parser.add_argument("--count", type=int, default=3000, help="connections per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args(argv)
    targets = dict(parse_target(t) for t in args.target)
    for addr in targets.values():
        run_round(addr, args.warmup, args.expect, args.timeout)
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    for _ in range(args.rounds):
        for name, addr in targets.items():
            out[name].append(run_round(addr, args.count, args.expect, args.timeout))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
