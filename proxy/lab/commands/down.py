"""``lab down``: stop the supervisor, then clean up from the state whatever is left."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import TextIO

from proxy.host import netns as hostns
from proxy.lab.cleanup import cleanup, lab_namespaces
from proxy.lab.commands.preconditions import require_root
from proxy.lab.errors import EXIT_FAIL, EXIT_OK, LabError
from proxy.lab.state import foreign_entries, load_state, locked

STOP_TIMEOUT = 90.0
"""How long ``lab down`` (and ``lab up`` after a failure) waits for the supervisor."""


def down(state_dir: Path, *, out: TextIO = sys.stdout) -> int:
    require_root("down")
    if not state_dir.exists():
        print(f"no lab is running (no {state_dir}); nothing to clean up", file=out)
        return EXIT_OK
    with locked(state_dir):
        state = load_state(state_dir)
        if state is None:
            stray = foreign_entries(state_dir)
            if stray:
                raise LabError(f"{state_dir} holds no lab state ({stray}); left untouched")
            shutil.rmtree(state_dir, ignore_errors=True)
            print(f"no lab was running; removed {state_dir}", file=out)
            return EXIT_OK
        before_ns = [
            n for n in set(state.namespaces) | set(lab_namespaces(state.lab_id)) if hostns.exists(n)
        ]
        before_procs = [r for r in state.processes.values() if r.is_ours()]
        stopped_by_supervisor = False
        sup = state.supervisor
        if sup is not None and sup.is_ours():
            print(f"stopping lab {state.lab_id} (supervisor pid {sup.pid})", file=out, flush=True)
            os.kill(sup.pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            while sup.is_ours() and time.monotonic() < deadline:
                time.sleep(0.2)
            if sup.is_ours():
                print(
                    f"the supervisor did not stop within {STOP_TIMEOUT:.0f}s: "
                    "cleaning up from the state",
                    file=out,
                )
            else:
                stopped_by_supervisor = True
        else:
            print(
                f"lab {state.lab_id}: its supervisor is not running; cleaning up from the state",
                file=out,
            )
        removed = cleanup(state_dir, state)
        # What the supervisor stopped itself, plus what cleanup found left over.
        removed.namespaces = sorted(set(before_ns) | set(removed.namespaces))
        removed.processes = list(
            dict.fromkeys(
                ([f"supervisor (pid {sup.pid})"] if stopped_by_supervisor and sup else [])
                + [f"{r.label} (pid {r.pid})" for r in before_procs]
                + removed.processes
            )
        )
        for line in removed.lines():
            print(f"  {line}", file=out)
        left = lab_namespaces(state.lab_id)
        alive = [r.label for r in state.processes.values() if r.is_ours()]
        if left or alive:
            print(f"could not remove: namespaces {left}, processes {alive}", file=out)
            return EXIT_FAIL
        print(f"lab {state.lab_id} is down", file=out)
    return EXIT_OK
