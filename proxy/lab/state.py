"""The lab's state directory and its ``state.json``: :class:`LabState`, load, save, lock.

The file format is what ``lab down`` reads to clean up, also for a lab started by an
older version: keep the JSON keys.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy.host.process import kill_pids, proc_cmdline, proc_starttime
from proxy.lab.errors import LabError

STATE_ENV = "KUBE_PROXY_PY_LAB_DIR"
STATE_FILE = "state.json"
PROGRESS_FILE = "progress.log"
SUPERVISOR_LOG = "supervisor.log"
STATE_VERSION = 1


# --------------------------------------------------------------------------- paths


def default_state_dir() -> Path:
    """``$KUBE_PROXY_PY_LAB_DIR``, else ``<kube-proxy-py cache>/lab``."""
    env = os.environ.get(STATE_ENV)
    if env:
        return Path(env)
    from proxy.lab.build import cache_root

    return cache_root() / "lab"


def resolve_state_dir(given: str | os.PathLike[str] | None) -> Path:
    return Path(given).expanduser().absolute() if given else default_state_dir().absolute()


def command_hint(state_dir: Path, sub: str) -> str:
    """``kube-proxy-py lab SUB`` plus ``--state-dir`` when it is not the default one."""
    if state_dir.absolute() == default_state_dir().absolute():
        return f"kube-proxy-py lab {sub}"
    return f"kube-proxy-py lab {sub} --state-dir {state_dir}"


# --------------------------------------------------------------------------- processes


@dataclass
class ProcRecord:
    """A process we started: killed later only if pid, start time and command line match."""

    label: str
    pid: int
    starttime: int
    markers: list[str]
    """Substrings one of which its command line holds (it execs: ``ip netns exec`` →
    launcher → command, so it has had several)."""

    @classmethod
    def of(cls, label: str, pid: int, markers: Sequence[str]) -> ProcRecord:
        return cls(label, pid, proc_starttime(pid) or 0, list(markers))

    def is_ours(self) -> bool:
        """Alive, not reused: same start time, and a command line we expect."""
        if self.starttime == 0 or proc_starttime(self.pid) != self.starttime:
            return False
        cmdline = proc_cmdline(self.pid)
        return any(m in cmdline for m in self.markers)


def kill_records(records: Sequence[ProcRecord], grace: float = 5.0) -> list[str]:
    """SIGTERM, then SIGKILL, the records that are still ours; the labels it stopped."""
    ours = {r.pid: r for r in records if r.is_ours()}
    kill_pids(ours, grace=grace, running=lambda pid: ours[pid].is_ours())
    return [f"{r.label} (pid {r.pid})" for r in ours.values()]


# --------------------------------------------------------------------------- state


@dataclass
class NodeRecord:
    name: str
    lan_ip: str
    pod_cidr: str
    zone: str
    namespace: str
    proxy: str
    """``kube-proxy-py`` or ``kube-proxy`` (upstream, on the --compare node)."""
    lan_ip_secondary: str | None = None
    """The other family's LAN address of a dual-stack lab (``lan_ip`` is the primary)."""
    pod_cidr_secondary: str | None = None

    @property
    def lan_ips(self) -> tuple[str, ...]:
        """Primary first, as the Node's ``InternalIP`` addresses."""
        return (
            (self.lan_ip,)
            if self.lan_ip_secondary is None
            else (self.lan_ip, self.lan_ip_secondary)
        )

    @property
    def pod_cidrs(self) -> tuple[str, ...]:
        """Primary first, as the Node's ``spec.podCIDRs``."""
        return (
            (self.pod_cidr,)
            if self.pod_cidr_secondary is None
            else (self.pod_cidr, self.pod_cidr_secondary)
        )


@dataclass
class LabState:
    lab_id: str
    state_dir: str
    mode: str
    node_count: int
    compare: bool
    addons: bool = True
    """CoreDNS and MetalLB installed (``--no-addons``: a bare cluster)."""
    ip_family: str = "ipv4"
    """``--ip-family``: ``ipv4``, ``ipv6`` or ``dual`` (a lab of an older version: ipv4)."""
    phase: str = "starting"
    error: str = ""
    created: float = field(default_factory=time.time)
    ready_at: float = 0.0
    supervisor: ProcRecord | None = None
    nodes: list[NodeRecord] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    control_plane: dict[str, str] = field(default_factory=dict)
    client: dict[str, Any] = field(default_factory=dict)
    processes: dict[str, ProcRecord] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)
    env_overrides: dict[str, list[str]] = field(default_factory=dict)
    """Container env the lab sets differently from daemonset.yaml: name -> [file, lab]."""
    config_overrides: dict[str, list[str]] = field(default_factory=dict)
    """config.conf fields the lab sets differently: field -> [file, lab]."""
    notes: list[str] = field(default_factory=list)
    created_paths: list[str] = field(default_factory=list)
    """Host paths the lab had to create outside the state dir (removed by down)."""
    registry: dict[str, str] = field(default_factory=dict)
    """The lab registry: its namespace and ``host:port``."""
    node_bins: dict[str, str] = field(default_factory=dict)
    """Where the node components are: ``bin`` (containerd, runc, registry) and ``cni``."""
    version: int = STATE_VERSION

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LabState:
        raw = dict(data)
        sup = raw.pop("supervisor", None)
        nodes = raw.pop("nodes", [])
        procs = raw.pop("processes", {})
        known = {f.name for f in dataclasses.fields(cls)}
        state = cls(**{k: v for k, v in raw.items() if k in known})
        state.supervisor = ProcRecord(**sup) if sup else None
        state.nodes = [NodeRecord(**n) for n in nodes]
        state.processes = {k: ProcRecord(**v) for k, v in procs.items()}
        return state

    @property
    def path(self) -> Path:
        return Path(self.state_dir)

    def node(self, name: str) -> NodeRecord | None:
        return next((n for n in self.nodes if n.name == name), None)

    def supervisor_alive(self) -> bool:
        return self.supervisor is not None and self.supervisor.is_ours()


def foreign_entries(state_dir: Path) -> str:
    """What the directory holds besides a lab's logs (a few names; "" if nothing)."""
    stray = [p.name for p in state_dir.iterdir() if p.name not in (PROGRESS_FILE, SUPERVISOR_LOG)]
    return ", ".join(sorted(stray)[:5])


def load_state(state_dir: Path) -> LabState | None:
    path = state_dir / STATE_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise LabError(
            f"{path} is unreadable ({exc}); remove {state_dir} by hand after checking "
            f"`ip netns list` for leftover kpp-lab-* namespaces"
        ) from exc
    return LabState.from_json(data)


def save_state(state: LabState) -> None:
    path = state.path / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state.to_json(), indent=2) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def locked(state_dir: Path) -> Iterator[None]:
    """An exclusive lock on the state directory (concurrent up/down wait for each other)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
