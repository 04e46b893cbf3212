"""The bounded-frequency runner: coalesces bursts of changes into syncs.

A sync runs when asked (``request()``), but never more often than ``min_interval``; it
also runs at least every ``max_interval`` (the periodic resync); after a failure it is
retried after ``retry_interval``. This is upstream's BoundedFrequencyRunner, in our words;
the agent runs the proxier's ``sync_proxy_rules`` with it. (Not to be confused with
:class:`proxy.kernel.executor.Executor`, which runs the kernel tools.)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class BoundedFrequencyRunner:
    def __init__(
        self,
        fn: Callable[[], bool],
        *,
        min_interval: float,
        max_interval: float,
        retry_interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        name: str = "sync",
    ) -> None:
        """``fn`` returns True on success; exceptions count as failures."""
        if min_interval < 0 or max_interval <= 0:
            raise ValueError("intervals must be positive")
        self.fn = fn
        self.min_interval = min_interval
        self.max_interval = max(max_interval, min_interval)
        self.retry_interval = (
            retry_interval if retry_interval is not None else max(min_interval, 1.0)
        )
        self.name = name
        self._clock = clock
        self._cond = threading.Condition()
        self._requested = False
        self._stopped = False
        self._last_run: float | None = None
        self._next_retry: float | None = None

    def request(self) -> None:
        """Ask for a sync as soon as ``min_interval`` allows."""
        with self._cond:
            self._requested = True
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def next_due(self, now: float) -> float:
        """When the next sync is due (absolute clock time): at the periodic deadline, or
        sooner for a request or a retry, but never sooner than ``min_interval`` after the
        last run."""
        if self._last_run is None:
            return now if self._requested else now + self.max_interval
        earliest = self._last_run + self.min_interval
        due = self._last_run + self.max_interval
        if self._requested:
            due = min(due, earliest)
        if self._next_retry is not None:
            due = min(due, self._next_retry)
        return max(due, earliest)

    def loop(self) -> None:
        """Run until stop(); call from the thread that should run the syncs."""
        while True:
            with self._cond:
                while not self._stopped:
                    now = self._clock()
                    wait = self.next_due(now) - now
                    if wait <= 0:
                        break
                    self._cond.wait(timeout=wait)
                if self._stopped:
                    return
                self._requested = False
                self._last_run = self._clock()
            ok = False
            try:
                ok = self.fn()
            except Exception:
                log.exception("sync raised", extra={"runner": self.name})
            with self._cond:
                self._next_retry = None if ok else self._clock() + self.retry_interval
                if not ok:
                    log.warning(
                        "sync failed; retrying",
                        extra={"runner": self.name, "retry_in_seconds": self.retry_interval},
                    )
