"""Thin wrappers around `ip netns`, `ip -batch` and `sysctl` for named namespaces.

Nothing here touches the root namespace's links, addresses or routes: every `ip`
invocation is given an explicit target namespace.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from proxy.harness.errors import CommandError, HarnessError

NETNS_DIR = Path("/run/netns")
DEFAULT_TIMEOUT = 30.0


def run_command(
    argv: Sequence[str],
    *,
    check: bool = True,
    input: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run argv, capturing text output; raise CommandError on failure when check."""
    try:
        done = subprocess.run(
            list(argv),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise HarnessError(f"command not found: {argv[0]!r}") from exc
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"command {' '.join(argv)!r} timed out after {timeout}s") from exc
    if check and done.returncode != 0:
        raise CommandError(argv, done.returncode, done.stdout, done.stderr)
    return done


def exec_argv(netns: str, argv: Sequence[str]) -> list[str]:
    """argv that runs a command inside a named namespace (`ip netns exec` execs in place,
    so the child's pid is the command's pid), or inside the namespace a path names (a
    real pod's ``/proc/PID/ns/net``: `nsenter` enters the network namespace only)."""
    if netns.startswith("/"):
        return ["nsenter", f"--net={netns}", "--", *argv]
    return ["ip", "netns", "exec", netns, *argv]


def exists(netns: str) -> bool:
    return (NETNS_DIR / netns).exists()


def ip_batch(netns: str | None, commands: Iterable[str], *, force: bool = False) -> None:
    """Run `ip` commands (one per line, without the leading `ip`) in one process.

    With netns=None the commands run where they name their namespaces themselves
    (only `netns add|del` lines are issued that way).
    """
    lines = [c for c in commands if c]
    if not lines:
        return
    argv = ["ip"]
    if netns is not None:
        argv += ["-n", netns]
    if force:
        argv.append("-force")
    argv += ["-batch", "-"]
    run_command(argv, input="\n".join(lines) + "\n")


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


def create(names: Sequence[str]) -> None:
    """Create namespaces that must not exist yet; on failure the ones created are deleted."""
    taken = [n for n in names if exists(n)]
    if taken:
        raise HarnessError(f"namespaces already exist (not ours, left untouched): {taken}")
    try:
        ip_batch(None, (f"netns add {n}" for n in names))
    except HarnessError:
        delete([n for n in names if exists(n)])
        raise


def delete(names: Sequence[str]) -> list[str]:
    """Delete namespaces (all attempted); returns the ones that still exist."""
    present = [n for n in names if exists(n)]
    if present:
        with contextlib.suppress(HarnessError):  # reported through the return value
            ip_batch(None, (f"netns del {n}" for n in present), force=True)
    return [n for n in present if exists(n)]


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def pids_in(names: Iterable[str]) -> dict[str, list[int]]:
    """Processes whose network namespace is one of the named ones (what `ip netns pids`
    does, for several namespaces in one pass over /proc). Our own pid is never listed."""
    wanted: dict[tuple[int, int], str] = {}
    for name in names:
        key = _inode(NETNS_DIR / name)
        if key is not None:
            wanted[key] = name
    found: dict[str, list[int]] = {name: [] for name in wanted.values()}
    if not wanted:
        return found
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        key = _inode(entry / "ns" / "net")
        if key is not None and key in wanted:
            found[wanted[key]].append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes (its parent reaps it).
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def kill_pids(pids: Iterable[int], *, grace: float = 2.0) -> list[int]:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL. Returns pids still alive."""
    pending = [p for p in pids if p != os.getpid()]
    for pid in pending:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pending and time.monotonic() < deadline:
        pending = [p for p in pending if _alive(p)]
        if pending:
            time.sleep(0.02)
    for pid in pending:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while pending and time.monotonic() < deadline:
        pending = [p for p in pending if _alive(p)]
        if pending:
            time.sleep(0.02)
    return pending


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
