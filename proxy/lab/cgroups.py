"""The lab nodes' cgroups on a cgroup v1 (hybrid) host: create, join, empty, remove.

A lab node is a kubelet and a containerd sharing this machine's kernel, so each node gets
a cgroup subtree of its own, ``/<LAB_ROOT>/<lab id>/<node>``, in *every* mounted
hierarchy (the v1 controllers, ``name=systemd`` and the ``unified`` v2 mount of a hybrid
host). Inside it:

- ``runtime``: the node's launcher, containerd, kubelet and containerd's shims;
- ``kubepods``…: created by the kubelet itself (``cgroupRoot`` is the node's subtree,
  ``cgroupDriver: cgroupfs``).

The kubelet needs its ``cgroupRoot`` to exist in every v1 controller before it starts,
and cpuset children start with empty ``cpuset.cpus``/``cpuset.mems`` (no task can join
them), so :func:`create` copies both from the parent at every level.

Teardown after anything (even a SIGKILLed supervisor): :func:`remove` freezes nothing and
trusts nothing; it kills every task found under the subtree (``cgroup.procs`` in every
hierarchy), waits for them to go, and removes the directories depth first.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

CGROUP_FS = Path("/sys/fs/cgroup")
LAB_ROOT = "kube-proxy-py-lab"
RUNTIME = "runtime"


class CgroupError(RuntimeError):
    """A node's cgroups could not be set up; the message says which and why."""


def hierarchies(base: Path = CGROUP_FS) -> list[Path]:
    """Every mounted cgroup hierarchy under ``base`` (v1 controllers, named, unified).

    Comounted controllers (``cpu,cpuacct``) appear once; their symlinks are skipped.
    """
    found: list[Path] = []
    seen: set[str] = set()
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" - ", 1)
        if len(fields) != 2:
            continue
        fstype = fields[1].split()[0]
        if fstype not in ("cgroup", "cgroup2"):
            continue
        mount_point = Path(fields[0].split()[4])
        if mount_point.parent != base and mount_point != base:
            continue
        if str(mount_point) not in seen:
            seen.add(str(mount_point))
            found.append(mount_point)
    if not found:
        raise CgroupError(f"no cgroup hierarchy is mounted under {base}")
    return found


def is_v1_hybrid(base: Path = CGROUP_FS) -> bool:
    """True when the controllers live in v1 hierarchies (``base`` is not itself cgroup2)."""
    return any(h != base and h.name != "unified" for h in hierarchies(base))


def node_path(lab_id: str, node: str) -> str:
    """The node's subtree as the kubelet's ``cgroupRoot`` spells it."""
    return f"/{LAB_ROOT}/{lab_id}/{node}"


def lab_path(lab_id: str) -> str:
    return f"/{LAB_ROOT}/{lab_id}"


def _copy_cpuset(directory: Path) -> None:
    for name in ("cpuset.cpus", "cpuset.mems"):
        own = directory / name
        if own.exists() and not own.read_text().strip():
            own.write_text((directory.parent / name).read_text())


def create(path: str, base: Path = CGROUP_FS) -> list[Path]:
    """``path`` (e.g. ``/kube-proxy-py-lab/ab12/node-1/runtime``) in every hierarchy."""
    made: list[Path] = []
    parts = [p for p in path.split("/") if p]
    for hierarchy in hierarchies(base):
        current = hierarchy
        for part in parts:
            current = current / part
            try:
                current.mkdir(exist_ok=True)
            except OSError as exc:
                raise CgroupError(f"cannot create cgroup {current}: {exc.strerror}") from exc
            if hierarchy.name == "cpuset" or (current / "cpuset.cpus").exists():
                _copy_cpuset(current)
        made.append(current)
    return made


def join(path: str, pid: int = 0, base: Path = CGROUP_FS) -> None:
    """Move ``pid`` (0: the caller) into ``path`` in every hierarchy (created if needed)."""
    for directory in create(path, base):
        try:
            (directory / "cgroup.procs").write_text(f"{pid or os.getpid()}\n")
        except OSError as exc:
            raise CgroupError(
                f"cannot move pid {pid or os.getpid()} into {directory}: {exc}"
            ) from exc


def _subtrees(path: str, base: Path) -> list[Path]:
    rel = path.strip("/")
    return [h / rel for h in hierarchies(base) if (h / rel).is_dir()]


def _walk_depth_first(top: Path) -> Iterator[Path]:
    """``top`` and every cgroup below it, children first. A cgroup that disappears while
    it is walked (a container or pod going away) is skipped, not an error."""
    try:
        children = sorted((p for p in top.iterdir() if p.is_dir()), key=lambda p: p.name)
    except FileNotFoundError:
        return
    for child in children:
        yield from _walk_depth_first(child)
    yield top


def _pids_below(top: Path) -> set[int]:
    found: set[int] = set()
    for directory in _walk_depth_first(top):
        with contextlib.suppress(OSError):
            found.update(int(line) for line in (directory / "cgroup.procs").read_text().split())
    return found


def pids(path: str, base: Path = CGROUP_FS) -> set[int]:
    """Every task in ``path`` or below, in any hierarchy."""
    found: set[int] = set()
    for top in _subtrees(path, base):
        found |= _pids_below(top)
    return found


def pods_pids(node_root: str, pod_uid: str, base: Path = CGROUP_FS) -> set[int]:
    """The tasks of one Pod on a node: in its ``pod<uid>`` cgroup (cgroupfs driver)."""
    found: set[int] = set()
    wanted = f"pod{pod_uid}"
    for top in _subtrees(node_root, base):
        for directory in _walk_depth_first(top):
            if directory.name == wanted:
                found |= _pids_below(directory)
    return found


def remove(path: str, base: Path = CGROUP_FS, timeout: float = 10.0) -> list[str]:
    """Kill every task under ``path`` and remove its directories; what could not be.

    Returns problems as text (empty: all gone). The caller's own pid is never killed
    (it is moved out to the hierarchy root first if it is inside).
    """
    me = os.getpid()
    if me in pids(path, base):
        for hierarchy in hierarchies(base):
            with contextlib.suppress(OSError):
                (hierarchy / "cgroup.procs").write_text(f"{me}\n")
    deadline = time.monotonic() + timeout
    while True:
        remaining = pids(path, base) - {me}
        if not remaining or time.monotonic() > deadline:
            break
        for pid in remaining:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    problems = [f"pid {pid} survived SIGKILL" for pid in sorted(pids(path, base) - {me})]
    for top in _subtrees(path, base):
        for directory in _walk_depth_first(top):
            for _ in range(50):
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:  # EBUSY while the last tasks are being reaped
                    time.sleep(0.05)
            else:
                problems.append(f"cgroup {directory} could not be removed")
    for parent in (Path(path).parent, Path(path).parent.parent):
        if str(parent) in ("/", ""):
            break
        for hierarchy in hierarchies(base):
            with contextlib.suppress(OSError):
                (hierarchy / str(parent).strip("/")).rmdir()  # only when empty
    return problems
