"""Removing what a lab left: its processes, cgroups, namespaces and paths (``lab down``,
and ``lab up`` after a crash)."""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from proxy.host import netns as hostns
from proxy.lab.state import LabState, kill_records

log = logging.getLogger(__name__)


def lab_namespaces(lab_id: str) -> list[str]:
    """Every named network namespace of this lab (``<lab id>-*``)."""
    try:
        names = os.listdir(hostns.NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(f"{lab_id}-"))


def sweep_namespaces(lab_id: str, recorded: Sequence[str] = ()) -> list[str]:
    """Kill what runs in the lab's namespaces and delete them; the ones deleted."""
    names = sorted(set(recorded) | set(lab_namespaces(lab_id)))
    present = [n for n in names if hostns.exists(n)]
    if not present:
        return []
    hostns.empty(present)
    remaining = hostns.delete(present)
    if remaining:
        log.error("namespaces could not be deleted: %s", remaining)
    return [n for n in present if n not in remaining]


@dataclass
class Removed:
    processes: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = []
        if self.processes:
            out.append(f"stopped {len(self.processes)} process(es): {', '.join(self.processes)}")
        if self.problems:
            out.append("could not remove: " + "; ".join(self.problems))
        if self.namespaces:
            out.append(
                f"deleted {len(self.namespaces)} network namespace(s): {', '.join(self.namespaces)}"
            )
        if self.paths:
            out.append(f"removed {', '.join(self.paths)}")
        return out


def cleanup(state_dir: Path, state: LabState | None, lab_id: str | None = None) -> Removed:
    """Remove everything a lab left (after its supervisor is gone or would not stop)."""
    removed = Removed()
    lab_id = state.lab_id if state is not None else lab_id
    if state is not None:
        children = [r for r in state.processes.values()]
        removed.processes += kill_records(children)
        if state.supervisor is not None and state.supervisor.is_ours():
            with contextlib.suppress(ProcessLookupError):
                os.kill(state.supervisor.pid, signal.SIGKILL)
            removed.processes.append(f"supervisor (pid {state.supervisor.pid})")
    if lab_id:
        # Whatever the nodes still run (containers, shims, a kubelet whose launcher was
        # killed) is in the lab's cgroups: kill it there, then remove the cgroups.
        from proxy.lab import cgroups

        in_cgroups = cgroups.pids(cgroups.lab_path(lab_id))
        problems = cgroups.remove(cgroups.lab_path(lab_id))
        if in_cgroups:
            removed.processes.append(f"{len(in_cgroups)} node process(es) in the lab's cgroups")
        removed.problems += problems
    if lab_id:
        removed.namespaces += sweep_namespaces(lab_id, state.namespaces if state else ())
        # The Network keeps its logs in a temp dir named after the id.
        for leftover in glob.glob(os.path.join(tempfile.gettempdir(), f"{lab_id}-*")):
            shutil.rmtree(leftover, ignore_errors=True)
            removed.paths.append(leftover)
    if state is not None:
        for created in reversed(state.created_paths):
            path = Path(created)
            with contextlib.suppress(OSError):
                if path.is_dir():
                    path.rmdir()
                else:
                    path.unlink()
                removed.paths.append(created)
    if state_dir.exists():
        shutil.rmtree(state_dir, ignore_errors=True)
        removed.paths.append(str(state_dir))
    return removed
