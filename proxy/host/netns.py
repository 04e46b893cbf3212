"""Named network namespaces: create, delete, run commands in, enter, empty, sysctls.

A named namespace is the bind mount ``/run/netns/NAME`` that ``ip netns add`` makes.
Nothing here touches the root namespace's links, addresses or routes: every command is
given an explicit target namespace.

Entering one (:func:`run_in_netns`): a socket belongs to the network namespace of the
thread that created it, for its whole life, whichever thread uses it later. So to talk to
a server inside a namespace without moving the caller anywhere, the socket is created on
a *throwaway thread* that has entered the namespace with ``setns(2)`` (Python 3.11 has no
``os.setns``: ctypes) and handed back. The calling thread never changes namespace, so
there is nothing to restore. Entering a network namespace needs CAP_SYS_ADMIN (root).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import subprocess
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from proxy.host.errors import CommandError, HostError
from proxy.host.links import ip_batch
from proxy.host.process import DEFAULT_TIMEOUT, kill_pids

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000

T = TypeVar("T")

NetnsId = tuple[int, int]
"""(st_dev, st_ino) of a network namespace: equal ids mean the same namespace."""


class NetnsError(OSError):
    """A network namespace could not be found or entered; the message says which and why."""


# -- names and identities -------------------------------------------------------------


def netns_path(netns: str) -> Path:
    """The bind mount of a named namespace (``ip netns add NAME``); checks the name only."""
    if not netns or "/" in netns or netns in (".", ".."):
        raise ValueError(f"{netns!r} is not a network namespace name")
    return NETNS_DIR / netns


def exists(netns: str) -> bool:
    return (NETNS_DIR / netns).exists()


def _stat_id(path: str | Path) -> NetnsId | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def netns_id(netns: str) -> NetnsId:
    """The identity of a named namespace (NetnsError if there is none of that name)."""
    path = netns_path(netns)
    found = _stat_id(path)
    if found is None:
        raise NetnsError(errno.ENOENT, f"no network namespace {netns!r} (no {path})")
    return found


def pid_netns_id(pid: int) -> NetnsId | None:
    """The network namespace of a process (None if it is gone)."""
    return _stat_id(f"/proc/{pid}/ns/net")


def thread_netns_id() -> NetnsId:
    """The network namespace of the calling thread."""
    found = _stat_id("/proc/thread-self/ns/net")
    if found is None:
        raise NetnsError(errno.ENOENT, "cannot stat /proc/thread-self/ns/net")
    return found


def pid_in_netns(pid: int, netns: str) -> bool:
    """True if the process runs in the named namespace."""
    return pid_netns_id(pid) == netns_id(netns)


def pids_in(names: Iterable[str]) -> dict[str, list[int]]:
    """Processes whose network namespace is one of the named ones (what `ip netns pids`
    does, for several namespaces in one pass over /proc). Our own pid is never listed; a
    name without a namespace is left out."""
    wanted: dict[NetnsId, str] = {}
    for name in names:
        key = _stat_id(NETNS_DIR / name)
        if key is not None:
            wanted[key] = name
    found: dict[str, list[int]] = {name: [] for name in wanted.values()}
    if not wanted:
        return found
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        key = _stat_id(entry / "ns" / "net")
        if key is not None and key in wanted:
            found[wanted[key]].append(int(entry.name))
    return found


# -- lifecycle ------------------------------------------------------------------------


def create(names: Sequence[str]) -> None:
    """Create namespaces that must not exist yet; on failure the ones created are deleted."""
    taken = [n for n in names if exists(n)]
    if taken:
        raise HostError(f"namespaces already exist (not ours, left untouched): {taken}")
    try:
        ip_batch(None, (f"netns add {n}" for n in names))
    except HostError:
        delete([n for n in names if exists(n)])
        raise


def delete(names: Sequence[str]) -> list[str]:
    """Delete namespaces (all attempted); returns the ones that still exist."""
    present = [n for n in names if exists(n)]
    if present:
        with contextlib.suppress(HostError):  # reported through the return value
            ip_batch(None, (f"netns del {n}" for n in present), force=True)
    return [n for n in present if exists(n)]


def empty(names: Sequence[str], *, grace: float = 2.0) -> list[int]:
    """Kill every process left in the named namespaces (ours by construction: nobody
    else knows their names). Returns pids that survived."""
    survivors: list[int] = []
    for _ in range(3):  # processes may fork while we kill them
        pids = [p for group in pids_in(names).values() for p in group]
        if not pids:
            return []
        survivors = kill_pids(pids, grace=grace)
    return survivors


# -- commands inside ------------------------------------------------------------------


def exec_argv(netns: str, argv: Sequence[str]) -> list[str]:
    """argv that runs a command inside a named namespace (`ip netns exec` enters it and
    execs in place, outside ``-batch``: the child's pid is the command's pid), or inside
    the namespace a path names (a real pod's ``/proc/PID/ns/net``: `nsenter` enters the
    network namespace only)."""
    if netns.startswith("/"):
        return ["nsenter", f"--net={netns}", "--", *argv]
    netns_path(netns)
    return ["ip", "netns", "exec", netns, *argv]


def sysctl(netns: str, settings: Mapping[str, str | int]) -> None:
    """Set sysctls inside a namespace (net.* sysctls are per namespace)."""
    sysctls({netns: settings})


def sysctls(per_netns: Mapping[str, Mapping[str, str | int]]) -> None:
    """Set sysctls in several namespaces, one `sysctl` process each, run in parallel."""
    running: list[tuple[list[str], subprocess.Popen[str]]] = []
    for netns, settings in per_netns.items():
        if settings:
            args = [f"{key}={value}" for key, value in settings.items()]
            argv = exec_argv(netns, ["sysctl", "-q", "-w", *args])
            popen = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            running.append((argv, popen))
    failures: list[CommandError] = []
    for argv, popen in running:
        try:
            out, err = popen.communicate(timeout=DEFAULT_TIMEOUT)
        except subprocess.TimeoutExpired:
            popen.kill()
            out, err = popen.communicate()
        if popen.returncode != 0:
            failures.append(CommandError(argv, popen.returncode, out, err))
    if failures:
        raise failures[0]


# -- entering (this process, one throwaway thread) ------------------------------------

_libc_lock = threading.Lock()
_libc: ctypes.CDLL | None = None


def _setns_func() -> Callable[[int, int], int]:
    global _libc
    with _libc_lock:
        if _libc is None:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
            libc.setns.restype = ctypes.c_int
            _libc = libc
        func: Callable[[int, int], int] = _libc.setns
        return func


def _enter(netns: str) -> None:
    """Move the *calling thread* into the named namespace (throwaway threads only)."""
    path = netns_path(netns)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsError(errno.ENOENT, f"no network namespace {netns!r} (no {path})") from None
    try:
        if _setns_func()(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            hint = " (entering a network namespace needs root)" if err == errno.EPERM else ""
            raise NetnsError(err, f"setns({path}, CLONE_NEWNET): {os.strerror(err)}{hint}")
    finally:
        os.close(fd)


def run_in_netns(netns: str, func: Callable[[], T]) -> T:
    """Call func on a throwaway thread inside the named namespace; return what it returns.

    Exceptions raised by func (or by entering the namespace) are re-raised here. The
    calling thread stays where it is. Sockets func creates keep the namespace; files and
    subprocesses do not care. Keep func short: the caller blocks until it returns.
    """
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            _enter(netns)
            result.append(func())
        except BaseException as e:  # handed to the caller
            error.append(e)

    thread = threading.Thread(target=target, name=f"netns:{netns}", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]
