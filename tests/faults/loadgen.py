"""A steady stream of new TCP connections, run inside a namespace: the fault suite's load.

Every ``--interval`` seconds, for each ``--target NAME=IP:PORT``, a new connection is
started (whatever the previous ones are doing: a connection that hangs does not delay
the next), reads the workload's one-line banner (``<pod> <peer>``) and closes. Each
attempt is one JSON line on stdout, written when it ends::

    {"target": "node-a/cluster-ip", "t": 1700000000.123, "dt": 0.004, "ok": true,
     "pod": "b1", "err": ""}

``t`` is the wall-clock time the attempt started (``time.time()``, comparable across
processes), ``dt`` how long it took. SIGTERM ends the stream (attempts still running are
abandoned). Run as ``ip netns exec NS python -m tests.faults.loadgen --target ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time


async def attempt(name: str, host: str, port: int, timeout: float) -> None:
    start = time.time()
    record: dict[str, object] = {"target": name, "t": round(start, 4)}
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        remaining = max(0.05, timeout - (time.time() - start))
        line = await asyncio.wait_for(reader.readline(), remaining)
        pod = line.decode(errors="replace").split(" ", 1)[0].strip()
        record.update(ok=bool(pod), pod=pod, err="" if pod else "empty answer")
    except TimeoutError:
        record.update(ok=False, pod="", err="timeout")
    except OSError as exc:
        record.update(ok=False, pod="", err=type(exc).__name__)
    finally:
        if writer is not None:
            writer.close()
    record["dt"] = round(time.time() - start, 4)
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


async def run(targets: list[tuple[str, str, int]], interval: float, timeout: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    tasks: set[asyncio.Task[None]] = set()
    sys.stdout.write(json.dumps({"ready": True, "t": time.time()}) + "\n")
    sys.stdout.flush()
    next_at = time.monotonic()
    while not stop.is_set():
        for name, host, port in targets:
            task = asyncio.create_task(attempt(name, host, port, timeout))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        next_at += interval
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))
    for task in tasks:
        task.cancel()


def parse_target(text: str) -> tuple[str, str, int]:
    name, _, address = text.partition("=")
    host, _, port = address.rpartition(":")
    if not name or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected NAME=IP:PORT, got {text!r}")
    return name, host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", type=parse_target, action="append", required=True)
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args(argv)
    asyncio.run(run(args.target, args.interval, args.timeout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
