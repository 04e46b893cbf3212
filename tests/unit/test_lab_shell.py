"""How ``lab shell`` / ``lab explain`` pick a pod's process: the oldest first."""

from __future__ import annotations

import os
import subprocess
import sys

from proxy.lab.commands.shell import _started


def test_processes_sort_by_start_time_not_by_pid() -> None:
    """A pod's sandbox is its oldest process; with pids wrapping at pid_max, the lowest
    pid can be a process exec'd a moment ago. A process that is gone sorts last."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert 0 <= _started(1) <= _started(os.getpid()) <= _started(child.pid)
        order = sorted([child.pid, os.getpid(), 1], key=_started)
        assert order == [1, os.getpid(), child.pid]
    finally:
        child.kill()
        child.wait()
    assert _started(child.pid) > _started(os.getpid())  # reaped: gone, sorts last
