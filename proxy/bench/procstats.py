"""A process's memory and CPU from /proc, once or sampled every few seconds."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ProcSample:
    at_s: float
    """seconds since the sampler started (0 for a one-off reading)"""
    rss_mib: float
    """VmRSS: resident memory now"""
    hwm_mib: float
    """VmHWM: the highest resident memory since the process started"""
    cpu_s: float
    """user + system CPU seconds of the process itself"""
    children_cpu_s: float
    """user + system CPU seconds of its exited, waited-for children (nft,
    iptables-restore: both agents shell out to them)"""

    @property
    def total_cpu_s(self) -> float:
        return self.cpu_s + self.children_cpu_s


def parse_status_kib(status: str, key: str) -> int:
    """A ``Key:  123 kB`` line of /proc/PID/status, in KiB (0 when absent)."""
    for line in status.splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    return 0


def parse_stat_ticks(stat: str) -> tuple[int, int]:
    """(utime + stime, cutime + cstime) in clock ticks from a /proc/PID/stat line (the
    command name in parentheses may contain spaces, so split after its last ``)``)."""
    fields = stat.rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): utime is field 14, stime 15, cutime 16, cstime 17.
    return int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


def read(pid: int, at_s: float = 0.0) -> ProcSample:
    status = Path(f"/proc/{pid}/status").read_text()
    own, children = parse_stat_ticks(Path(f"/proc/{pid}/stat").read_text())
    ticks = os.sysconf("SC_CLK_TCK")
    return ProcSample(
        at_s,
        parse_status_kib(status, "VmRSS") / 1024,
        parse_status_kib(status, "VmHWM") / 1024,
        own / ticks,
        children / ticks,
    )


@dataclass
class Sampler:
    """Reads a process every ``interval`` seconds in a thread until stopped."""

    pid: int
    interval: float = 5.0
    samples: list[ProcSample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Sampler:
        t0 = time.monotonic()

        def loop() -> None:
            while True:
                try:
                    self.samples.append(read(self.pid, time.monotonic() - t0))
                except (OSError, ValueError, IndexError):
                    return  # the process is gone
                if self._stop.wait(self.interval):
                    return

        self._thread = threading.Thread(target=loop, name="proc-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[ProcSample]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self.samples
