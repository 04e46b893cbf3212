from __future__ import annotations

import threading

from proxy.agent.boundedfrequency import BoundedFrequencyRunner


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def runner(clock: Clock, fn=lambda: True) -> BoundedFrequencyRunner:  # type: ignore[no-untyped-def]
    return BoundedFrequencyRunner(
        fn, min_interval=1.0, max_interval=30.0, retry_interval=5.0, clock=clock
    )


def test_first_request_runs_at_once_then_min_interval_applies() -> None:
    c = Clock()
    r = runner(c)
    assert r.next_due(c.now) == c.now + 30  # nothing asked: periodic
    r.request()
    assert r.next_due(c.now) == c.now
    r._last_run, r._requested = c.now, False
    c.now += 0.2
    r.request()
    assert r.next_due(c.now) == 101.0  # a burst is coalesced until min_interval passed
    c.now += 5
    assert r.next_due(c.now) == 101.0  # overdue: runs at once (due in the past)


def test_periodic_resync_and_retry() -> None:
    c = Clock()
    r = runner(c)
    r._last_run = c.now
    assert r.next_due(c.now) == 130.0
    r._next_retry = c.now + 5
    assert r.next_due(c.now) == 105.0
    r._next_retry = c.now + 0.1
    assert r.next_due(c.now) == 101.0  # even a retry respects min_interval


def test_loop_runs_on_request_retries_failures_and_stops() -> None:
    calls: list[bool] = []
    done = threading.Event()

    def fn() -> bool:
        calls.append(True)
        if len(calls) >= 2:
            done.set()
        return len(calls) >= 2  # first call fails -> retried

    r = BoundedFrequencyRunner(fn, min_interval=0.01, max_interval=60, retry_interval=0.05)
    t = threading.Thread(target=r.loop, daemon=True)
    t.start()
    r.request()
    assert done.wait(10)
    r.stop()
    t.join(10)
    assert not t.is_alive() and len(calls) == 2


def test_exceptions_count_as_failures() -> None:
    def boom() -> bool:
        raise RuntimeError("kernel said no")

    r = BoundedFrequencyRunner(boom, min_interval=0.01, max_interval=60, retry_interval=0.05)
    t = threading.Thread(target=r.loop, daemon=True)
    t.start()
    r.request()
    tick = threading.Event()
    for _ in range(1000):  # up to ~10 s
        if r._next_retry is not None or tick.wait(0.01):
            break
    r.stop()
    t.join(10)
    assert r._next_retry is not None
