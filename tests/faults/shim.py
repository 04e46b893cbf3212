"""A PATH directory for an agent whose kernel tools can kill the agent at chosen points.

``Shim(root).path`` is a ``PATH`` value: first ``root/bin``, which holds a symlink to every
tool of ``/usr/sbin`` (where nft and iptables live) and, for the tools that write rules,
a small ``sh`` wrapper; then the usual ``/usr/local/bin:/usr/bin:/bin`` (no ``/usr/sbin``,
no ``/sbin``, so removing ``bin/nft`` makes ``nft`` really missing for the agent).

A wrapper execs the real tool at once unless the shim is *armed* (a ``ctl`` file, read
and removed by the first wrapper that claims it: one shot). Armed, it acts on the next
transaction (``nft -f``, ``iptables-*-restore``) and kills the agent (``kill -KILL`` of the
pid the test wrote, never a name) at one of these points:

- ``before``: the tool is started by the agent; the agent is killed and the tool is not
  run (as if the kill had come just before the agent started it);
- ``bytes N``: the tool has read ``N`` bytes of its input (or all of it, if shorter); the
  agent is killed. The agent starts its tools with a parent-death signal, so the wrapper
  (the tool, as far as the agent knows) dies with it and the real tool never runs; a
  wrapper that lived on would read what the agent had written (up to EOF) and run the
  real tool on that, exactly what a tool reading from the agent's pipe would get (a
  second event, ``rc=<status>``, says it did);
- ``after``: the tool ran on the whole input and exited; the agent is killed before it
  learns the result.
- ``stall N``: the tool reads ``N`` bytes and then hangs (``pid`` is not killed): a sync
  stuck in a slow tool, for the SIGTERM tests.

Each action appends a line to ``events`` before the kill: ``<time> <tool> <action>
rc=<status> bytes=<input size>`` (``rc=none`` before, ``rc=killed`` at ``bytes``).
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path

SBIN = (Path("/usr/sbin"), Path("/sbin"))
WRAPPED = (
    "nft",
    "iptables-nft-restore",
    "iptables-legacy-restore",
)
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"

_WRAPPER = """#!/bin/sh
# kube-proxy-py fault-suite shim for {tool} (tests/faults/shim.py)
real={real}
dir={dir}
[ -e "$dir/ctl" ] || exec "$real" "$@"
{only_transactions}
mv "$dir/ctl" "$dir/ctl.$$" 2>/dev/null || exec "$real" "$@"
read action arg pid < "$dir/ctl.$$"
rm -f "$dir/ctl.$$"
input="$dir/input.$$"
note() {{ echo "$(date +%s.%N) {tool} $action rc=$1 bytes=$(wc -c < "$input" 2>/dev/null || echo 0)" >> "$dir/events"; }}
case "$action" in
before)
    : > "$input"; note none; rm -f "$input"
    kill -KILL "$pid"; exit 1 ;;
bytes)
    head -c "$arg" > "$input"
    note killed
    kill -KILL "$pid"
    # kube-proxy-py starts its tools with a parent-death signal (SIGKILL): this shell,
    # the tool as far as the agent knows, dies here. Were it to live on, it would do what
    # a real tool does: read the rest (to EOF) and run on that.
    cat >> "$input"
    "$real" "$@" < "$input"; rc=$?
    note $rc; rm -f "$input"; exit $rc ;;
stall)
    head -c "$arg" > "$input"
    note stalled
    sleep 120; rm -f "$input"; exit 1 ;;
after)
    cat > "$input"
    "$real" "$@" < "$input"; rc=$?
    note $rc; rm -f "$input"
    kill -KILL "$pid"; exit $rc ;;
esac
rm -f "$input"
exec "$real" "$@"
"""

_NFT_TRANSACTIONS_ONLY = """case " $* " in
*" -f "*) ;;
*) exec "$real" "$@" ;;
esac"""


@dataclass(frozen=True)
class ShimEvent:
    time: float
    tool: str
    action: str
    rc: str
    bytes: int


class Shim:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = root / "bin"
        self.bin.mkdir(parents=True, exist_ok=True)
        for sbin in SBIN:
            if not sbin.is_dir():
                continue
            for tool in sbin.iterdir():
                link = self.bin / tool.name
                if tool.name in WRAPPED or link.exists() or link.is_symlink():
                    continue
                link.symlink_to(tool)
        for name in WRAPPED:
            real = shutil.which(name, path=":".join(str(s) for s in SBIN))
            if real is None:
                continue
            wrapper = self.bin / name
            wrapper.write_text(
                _WRAPPER.format(
                    tool=name,
                    real=real,
                    dir=root,
                    only_transactions=_NFT_TRANSACTIONS_ONLY if name == "nft" else "",
                )
            )
            wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

    @property
    def path(self) -> str:
        return f"{self.bin}:{SYSTEM_PATH}"

    @property
    def ctl(self) -> Path:
        return self.root / "ctl"

    def arm(self, action: str, pid: int, arg: int = 0) -> None:
        """Kill ``pid`` at the next transaction (one shot); see the module docstring."""
        if action not in ("before", "bytes", "after", "stall"):
            raise ValueError(f"unknown shim action {action!r}")
        tmp = self.root / "ctl.new"
        tmp.write_text(f"{action} {arg} {pid}\n")
        tmp.rename(self.ctl)

    def disarm(self) -> None:
        self.ctl.unlink(missing_ok=True)

    def armed(self) -> bool:
        return self.ctl.exists()

    def events(self) -> list[ShimEvent]:
        try:
            lines = (self.root / "events").read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            parts = line.split()
            if len(parts) != 5:
                continue
            out.append(
                ShimEvent(
                    float(parts[0]),
                    parts[1],
                    parts[2],
                    parts[3].removeprefix("rc="),
                    int(parts[4].removeprefix("bytes=") or 0),
                )
            )
        return out

    def wait_event(self, count: int, timeout: float = 30.0) -> ShimEvent:
        """The ``count``-th event (1-based), waiting for it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            events = self.events()
            if len(events) >= count:
                return events[count - 1]
            time.sleep(0.02)
        raise TimeoutError(f"shim {self.root}: no event #{count} within {timeout}s")

    # -- nft present or missing -------------------------------------------------------
    def remove_tool(self, tool: str) -> None:
        """Make ``tool`` missing from this PATH (kept aside for restore_tool)."""
        (self.bin / tool).rename(self.bin / f".{tool}.removed")

    def restore_tool(self, tool: str) -> None:
        aside = self.bin / f".{tool}.removed"
        if aside.exists():
            os.replace(aside, self.bin / tool)
