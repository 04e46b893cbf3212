"""The lab's lifecycle: ``kube-proxy-py lab up|down|status|kubectl|shell``.

``lab up`` starts a detached *supervisor* (``python -m proxy.lab.lab supervise``, a
session of its own) that builds the lab and then stays, so the lab outlives the
command. The lab is a real cluster built the way kind builds one, with namespaces where
kind uses Docker containers. The supervisor:

1. gets the binaries and images (``lab build``; instant when cached): Kubernetes
   v1.37.2 (control plane, kubelet, kube-proxy), containerd, runc, the CNI plugins, the
   registry (:mod:`proxy.lab.nodebuild`), and the images (:mod:`proxy.lab.images`:
   pause, the stand-ins, kube-proxy-py's image built from the Dockerfile by buildah),
   pushed once into the cached registry storage;
2. builds the namespaces (a :class:`~proxy.lab.cluster.LabCluster`: a LAN bridge,
   ``node-1 … node-N`` at 192.168.50.1x with pod CIDRs 10.244.x.0/24 routed between
   them, ``control-plane`` at 192.168.50.2, ``registry`` at 192.168.50.3, the outside
   ``client`` at .100 with routes for ExternalIPs 203.0.113.0/24 and LB IPs
   198.51.100.0/24 via node-1) and runs etcd, kube-apiserver, kube-controller-manager
   (every default controller) and kube-scheduler in the control-plane namespace;
3. starts the registry (:mod:`proxy.lab.registry`) on the LAN, over the cached storage;
4. starts every node (:mod:`proxy.lab.node`): a containerd and a kubelet in the node's
   network namespace, a mount namespace and cgroups of its own; each kubelet registers
   its Node (InternalIP, zone label ``zone-a``/``zone-b``), and the supervisor gives it
   the podCIDR its CNI config uses (the lab's node IPAM);
5. applies ``daemonset.yaml`` with ``kubectl apply -f`` (:mod:`proxy.lab.deploy`): the
   kubelets pull ``kube-proxy-py:0.1.0`` from the lab registry and run the DaemonSet's
   pods. Two values differ from the file, and ``lab status`` says so: the ConfigMap's
   ``mode`` is the one ``--mode`` asks for, and ``KUBERNETES_SERVICE_HOST`` / ``_PORT``
   (marked CHANGE in the file) name the lab's API server, 192.168.50.2:6443;
6. with ``--compare``, also a node ``node-upstream`` where upstream kube-proxy runs as a
   DaemonSet of its own (image built from the built ``kube-proxy`` binary), and
   kube-proxy-py's DaemonSet gets a node affinity that keeps it off that node;
7. marks the lab ready when every proxy pod is Running and answers ``/healthz``, then
   watches: a node launcher or the registry that exits is restarted with back-off;
   SIGTERM tears everything down.

Every step is a line in ``progress.log`` that ``lab up`` prints while it waits.

State lives in one directory (``--state-dir``, ``$KUBE_PROXY_PY_LAB_DIR``, default
``~/.cache/kube-proxy-py/lab``)::

    state.json          lab id, supervisor (pid + start time), mode, nodes, namespaces,
                        every process started (pid, start time, command-line markers),
                        paths, phase (starting | ready | failed | stopped)
    progress.log        the start-up steps (JSON lines)
    supervisor.log      the supervisor's structured log
    cluster/            control plane (pki, etcd data, logs, kubeconfigs)
    registry/           the registry's config, log and the lab's own layer of images
    nodes/NODE/         the node's files as kind's node image has them (etc/containerd,
                        etc/kubernetes, etc/cni/net.d, var/lib/{containerd,kubelet,cni},
                        var/log/{pods,containers}) and logs/{node,containerd,kubelet}.log
    kubectl-cache/      ``lab kubectl``'s discovery cache (not ~/.kube)

``lab down`` asks the supervisor to stop (SIGTERM) and then, whatever happened,
cleans up from the state: it kills every recorded process that is still the one we
started (pid *and* start time match), kills whatever is left in the lab's cgroups
(containers, shims, kubelets: :func:`proxy.lab.cgroups.remove`) and removes them,
empties and deletes every namespace recorded or named ``<lab id>-*``, and removes the
state directory. It works after a crash and is idempotent.

Safety: nothing is linked to the root namespace (the LAN is a bridge in its own
namespace, whose "router" does not forward), no namespace has a route out, and the API
server listens only inside the control-plane namespace; ``lab kubectl`` runs kubectl
there.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import functools
import glob
import http.client
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

import yaml

from proxy.apiclient.client import ApiClient, ApiError, Backoff
from proxy.apiclient.config import ClientConfig
from proxy.host import netns as hostns
from proxy.host import sockets
from proxy.host.network import Network
from proxy.host.process import (
    child_env,
    die_with_parent,
    kill_pids,
    proc_cmdline,
    proc_starttime,
)
from proxy.host.spec import ClientSpec, NodeSpec, TopologySpec
from proxy.lab import addonbuild, addons, coredns
from proxy.lab import registry as labregistry

if TYPE_CHECKING:
    from proxy.lab.cluster import LabCluster
    from proxy.lab.nodebuild import NodeBinaries

log = logging.getLogger("proxy.lab.lab")  # also when run as __main__ (the supervisor)

STATE_ENV = "KUBE_PROXY_PY_LAB_DIR"
STATE_FILE = "state.json"
PROGRESS_FILE = "progress.log"
SUPERVISOR_LOG = "supervisor.log"
STATE_VERSION = 1

DEFAULT_NODES = 2
MAX_NODES = 6
MODES = ("nftables", "iptables")
DEFAULT_MODE = "nftables"
LAN_CIDR = "192.168.50.0/24"
CLIENT = "client"
CLIENT_IP = "192.168.50.100"
REGISTRY = "registry"
REGISTRY_IP = "192.168.50.3"
EXTERNAL_IP_CIDR = "203.0.113.0/24"
RESOLVER = coredns.RESOLVER
RESOLVER_IP = coredns.RESOLVER_IP
UPSTREAM_NODE = "node-upstream"
UPSTREAM_NODE_IP = "192.168.50.30"
UPSTREAM_POD_CIDR = "10.244.30.0/24"
API_PORT = 6443
HEALTHZ_PORT = 10256
ZONES = ("zone-a", "zone-b")
STOP_TIMEOUT = 90.0
READY_TIMEOUT = 120.0
RESTART_BACKOFF = (10.0, 300.0)

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2


class LabError(RuntimeError):
    """The lab could not do what was asked; the message says why and what to do."""


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


def _command_hint(state_dir: Path, sub: str) -> str:
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


def _kill_records(records: Sequence[ProcRecord], grace: float = 5.0) -> list[str]:
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


@dataclass
class LabState:
    lab_id: str
    state_dir: str
    mode: str
    node_count: int
    compare: bool
    addons: bool = True
    """CoreDNS and MetalLB installed (``--no-addons``: a bare cluster)."""
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
def _locked(state_dir: Path) -> Iterator[None]:
    """An exclusive lock on the state directory (concurrent up/down wait for each other)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- topology


def node_names(count: int) -> list[str]:
    return [f"node-{i}" for i in range(1, count + 1)]


def lab_topology(count: int, compare: bool) -> tuple[TopologySpec, dict[str, str]]:
    """The lab's nodes and client (LabCluster adds the control plane), and node zones."""
    if not 1 <= count <= MAX_NODES:
        raise LabError(f"--nodes {count}: the lab runs 1 to {MAX_NODES} nodes")
    nodes = [
        NodeSpec(f"node-{i}", f"192.168.50.{10 + i}", f"10.244.{i}.0/24")
        for i in range(1, count + 1)
    ]
    zones = {n.name: ZONES[i % 2] for i, n in enumerate(nodes)}
    if compare:
        nodes.append(NodeSpec(UPSTREAM_NODE, UPSTREAM_NODE_IP, UPSTREAM_POD_CIDR))
        zones[UPSTREAM_NODE] = ZONES[0]
    clients = (
        ClientSpec(CLIENT, CLIENT_IP),
        ClientSpec(REGISTRY, REGISTRY_IP),
        ClientSpec(RESOLVER, RESOLVER_IP),
    )
    spec = TopologySpec(nodes=tuple(nodes), pods=(), clients=clients, lan_cidr=LAN_CIDR)
    return spec, zones


# --------------------------------------------------------------------------- the DaemonSet


def manifest_objects(path: Path | None = None) -> list[dict[str, Any]]:
    from proxy.lab.cluster import MANIFEST

    text = (path or MANIFEST).read_text()
    return [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]


# --------------------------------------------------------------------------- HTTP helpers


def http_get(netns: str, host: str, port: int, path: str, timeout: float = 3.0) -> tuple[int, str]:
    conn = sockets.NetnsHTTPConnection(netns, host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


def node_health(netns: str) -> tuple[int | None, str]:
    """``GET /healthz`` on the node's kube-proxy (status, body); (None, error) if none."""
    try:
        return http_get(netns, "127.0.0.1", HEALTHZ_PORT, "/healthz")
    except (OSError, http.client.HTTPException) as exc:
        return None, str(exc)


@functools.lru_cache(maxsize=4)
def _admin_client(netns: str, host: str, ca: str, cert: str, key: str) -> ApiClient:
    server = f"https://[{host}]:{API_PORT}" if ":" in host else f"https://{host}:{API_PORT}"
    config = ClientConfig(
        server=server,
        source=f"the lab's admin ({cert})",
        ca_pem=Path(ca).read_bytes(),
        client_cert_pem=Path(cert).read_bytes(),
        client_key_pem=Path(key).read_bytes(),
    )
    return ApiClient(config, connector=functools.partial(sockets.connect_in_netns, netns))


def api_client(state: LabState) -> ApiClient:
    """The lab's API server as the lab's admin, reached from inside the control plane's
    namespace (calls raise :class:`ApiError` when there is no answer)."""
    cp = state.control_plane
    return _admin_client(cp["namespace"], cp["host"], cp["ca"], cp["admin_cert"], cp["admin_key"])


def _api_get(state: LabState, path: str, timeout: float = 5.0) -> Any:
    status, body = api_client(state).call("GET", path, timeout=timeout)
    if status != 200:
        raise LabError(f"GET {path}: HTTP {status}")
    return json.loads(body)


# --------------------------------------------------------------------------- supervisor


class _Stop(BaseException):
    """SIGTERM/SIGINT/SIGHUP reached the supervisor."""


@dataclass
class _Child:
    label: str
    node: str
    netns: str
    argv: list[str]
    log_path: Path
    markers: list[str]
    deathsig: int
    restart: bool
    env: dict[str, str]
    popen: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restart_at: float = 0.0
    backoff: Backoff = field(default_factory=lambda: Backoff(*RESTART_BACKOFF, jitter=False))


class Supervisor:
    """Builds the lab, keeps it running, tears it down on SIGTERM (see the module doc)."""

    def __init__(self, state: LabState) -> None:
        self.state = state
        self.dir = state.path
        self.t0 = time.monotonic()
        self._cluster: LabCluster[Network] | None = None
        self.children: dict[str, _Child] = {}
        self.objects = manifest_objects()
        self._progress_file: TextIO | None = None

    @property
    def cluster(self) -> LabCluster[Network]:
        if self._cluster is None:
            raise LabError("the lab cluster is not created yet")
        return self._cluster

    # -- bookkeeping -----------------------------------------------------------------
    def progress(self, message: str) -> None:
        elapsed = time.monotonic() - self.t0
        log.info("progress step=%r elapsed=%.1fs", message, elapsed)
        if self._progress_file is None:
            self._progress_file = open(self.dir / PROGRESS_FILE, "a", buffering=1)  # noqa: SIM115
        self._progress_file.write(json.dumps({"t": round(elapsed, 1), "msg": message}) + "\n")

    def save(self) -> None:
        save_state(self.state)

    def node_dir(self, node: str) -> Path:
        path = self.dir / "nodes" / node
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- main ------------------------------------------------------------------------
    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        self.state.supervisor = ProcRecord.of(
            "supervisor", os.getpid(), ["proxy.lab.lab supervise"]
        )
        self.save()
        status = EXIT_OK
        try:
            self.start()
            # The line first: `lab up` stops following progress.log once it reads "ready".
            self.progress(f"lab ready in {time.monotonic() - self.t0:.1f}s")
            self.state.phase = "ready"
            self.state.ready_at = time.time()
            self.save()
            self.watch()
        except _Stop:
            self.progress("stopping (signal)")
        except Exception as exc:
            log.exception("lab start failed")
            self.state.phase = "failed"
            self.state.error = str(exc)
            self.save()
            self.progress(f"failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            status = EXIT_FAIL
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)
            self.teardown()
        return status

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("signal received signal=%s", signal.Signals(signum).name)
        raise _Stop

    # -- start -----------------------------------------------------------------------
    def start(self) -> None:
        from proxy.lab import build as k8s_build
        from proxy.lab.cluster import CONTROL_PLANE, CONTROL_PLANE_IP, LabCluster, lab_spec

        cached = bool(os.environ.get(k8s_build.BIN_ENV)) or (
            (k8s_build.bin_dir() / "build-stamp.json").exists()
            and not k8s_build.missing_binaries(k8s_build.bin_dir())
        )
        self.progress(
            f"building Kubernetes {k8s_build.K8S_VERSION} binaries"
            + (" (cached)" if cached else " (first time: tens of minutes on 2 cores)")
        )
        bin_dir = k8s_build.build(out=self.progress)
        self.state.control_plane["bin_dir"] = str(bin_dir)
        self.node_bins = self.build_node_side()

        spec, zones = lab_topology(self.state.node_count, self.state.compare)
        lab_id = self.state.lab_id
        self._cluster = LabCluster(
            bin_dir,
            Network(lab_spec(spec), id=lab_id),
            workdir=self.dir / "cluster",
            zones=zones,
            with_controllers=True,
            with_scheduler=True,
            real_nodes=True,
            progress=self.progress,
        )
        topo = self.cluster.topo
        names = [
            "lan",
            *(n.name for n in self.cluster.spec.nodes),
            *(c.name for c in self.cluster.spec.clients),
        ]
        # Recorded before they exist: a crash half-way still leaves down() the list.
        self.state.namespaces = [f"{lab_id}-{n}" for n in names]
        self.state.nodes = [
            NodeRecord(
                n.name,
                n.lan_ip,
                n.pod_cidr,
                zones[n.name],
                f"{lab_id}-{n.name}",
                "kube-proxy" if n.name == UPSTREAM_NODE else "kube-proxy-py",
            )
            for n in spec.nodes
        ]
        self.state.client = {
            "name": CLIENT,
            "lan_ip": CLIENT_IP,
            "namespace": f"{lab_id}-{CLIENT}",
            # LoadBalancer addresses need no route: MetalLB answers ARP for them.
            "routes": {EXTERNAL_IP_CIDR: spec.nodes[0].lan_ip},
        }
        self.state.registry = {
            "namespace": f"{lab_id}-{REGISTRY}",
            "address": f"{REGISTRY_IP}:{labregistry.PORT}",
        }
        self.save()
        self.cluster.start()
        cp = self.cluster.control_plane
        self.state.namespaces = list(topo.namespaces)
        self.state.control_plane.update(
            {
                "namespace": topo.ns(CONTROL_PLANE),
                "host": CONTROL_PLANE_IP,
                "server": cp.server,
                "kubeconfig": str(cp.kubeconfig),
                "ca": str(cp.ca_file),
                "admin_cert": str(cp.pki_dir / "admin.crt"),
                "admin_key": str(cp.pki_dir / "admin.key"),
                "kubectl": str(bin_dir / "kubectl"),
                "kubectl_cache": str(self.dir / "kubectl-cache"),
                "etcd_url": cp.etcd_url,
            }
        )
        for name, pid in cp.pids.items():
            self.state.processes[name] = ProcRecord.of(name, pid, [str(bin_dir / name)])
        self.progress(
            "control plane ready: "
            + ", ".join(f"{name} {secs:.1f}s" for name, secs in cp.timings.items())
        )
        for prefix, via in self.state.client["routes"].items():
            topo.add_route(CLIENT, prefix, via)
        self.progress(
            f"client {CLIENT_IP}: routes {EXTERNAL_IP_CIDR} (ExternalIPs) via "
            f"{spec.nodes[0].name}; LoadBalancer addresses come from MetalLB on the LAN"
        )
        # Admission webhooks (MetalLB's) are called at their Service's ClusterIP; the
        # control plane is no node and runs no proxy, so a node's proxy serves it.
        topo.add_route(CONTROL_PLANE, cp.service_cidr, spec.nodes[0].lan_ip)
        self.save()

        self.start_registry()
        self.start_resolver()
        self.start_nodes()
        self.wait_nodes()
        self.deploy_kube_proxy_py()
        if self.state.compare:
            self.deploy_upstream()
        self.wait_healthy()
        if self.state.addons:
            # After the proxies: the add-ons reach the API server through the
            # `kubernetes` Service, which a node's proxy must have programmed first.
            addons.deploy(self.cluster, self.progress)
            addons.wait_ready(self.cluster, self.progress)

    def build_node_side(self) -> NodeBinaries:
        """The node components and the images, built once and cached (``lab build``)."""
        from proxy.lab import images as labimages
        from proxy.lab import nodebuild

        bins = nodebuild.build(out=self.progress)
        extra = addonbuild.build(out=self.progress)
        self.state.node_bins = {
            "bin": str(bins.bin_dir),
            "cni": str(bins.cni_dir),
            "addons": str(extra.bin_dir),
        }
        labimages.ensure_cached_registry(out=self.progress)
        return bins

    def start_registry(self) -> None:
        ns = self.state.registry["namespace"]
        root = self.dir / "registry"
        root.mkdir(parents=True, exist_ok=True)
        config = root / "config.yml"
        merged = root / "merged"
        config.write_text(labregistry.registry_config(self.state.registry["address"], str(merged)))
        argv = labregistry.launcher_argv(
            ns,
            binary=Path(self.state.node_bins["bin"]) / "registry",
            config=config,
            lower=labregistry.storage_cache(),
            upper=root / "upper",
            work=root / "work",
            merged=merged,
        )
        self.progress(f"starting the image registry on {self.state.registry['address']}")
        child = _Child(
            label="registry",
            node=REGISTRY,
            netns=ns,
            argv=argv,
            log_path=root / "registry.log",
            # The launcher execs the registry: its command line then names the config.
            markers=["proxy.lab.registry", str(config)],
            deathsig=signal.SIGTERM,
            restart=True,
            env=child_env(),
        )
        self.children[child.label] = child
        self._spawn(child)
        labregistry.wait_ready(ns, REGISTRY_IP)

    def start_resolver(self) -> None:
        """The DNS of the network outside the cluster: CoreDNS on a hosts file."""
        ns = f"{self.state.lab_id}-{RESOLVER}"
        root = self.dir / RESOLVER
        root.mkdir(parents=True, exist_ok=True)
        for zone, text in coredns.resolver_zones().items():
            (root / f"{zone}.zone").write_text(text)
        corefile = root / "Corefile"
        corefile.write_text(coredns.resolver_corefile(str(root)))
        binary = Path(self.state.node_bins["addons"]) / "coredns"
        self.progress(
            f"starting the outside resolver on {RESOLVER_IP}:53 (CoreDNS; knows "
            + ", ".join(sorted(coredns.OUTSIDE_NAMES))
            + ")"
        )
        child = _Child(
            label=RESOLVER,
            node=RESOLVER,
            netns=ns,
            argv=hostns.exec_argv(ns, [str(binary), "-conf", str(corefile)]),
            log_path=root / "resolver.log",
            markers=[str(binary), str(corefile)],
            deathsig=signal.SIGTERM,
            restart=True,
            env=child_env(),
        )
        self.children[child.label] = child
        self._spawn(child)

    def start_nodes(self) -> None:
        from proxy.lab import node as labnode
        from proxy.lab.cluster import CONTROL_PLANE_IP
        from proxy.lab.controlplane import KubeconfigUser
        from proxy.lab.images import PAUSE_IMAGE

        cp = self.cluster.control_plane
        self.progress(
            "starting kubelet + containerd on " + ", ".join(n.name for n in self.state.nodes)
        )
        if self.state.mode == "iptables":
            # An operator's step for a non-privileged agent in iptables mode
            # (docs/deploy.md): localhost NodePorts need route_localnet, and the
            # container sees /proc/sys read-only. kind runs kube-proxy privileged instead.
            for node in self.state.nodes:
                hostns.sysctl(node.namespace, {"net.ipv4.conf.all.route_localnet": 1})
            note = (
                "iptables mode: net.ipv4.conf.all.route_localnet=1 was set on every node "
                "beforehand (localhost NodePorts; the agent's container is not privileged)"
            )
            if note not in self.state.notes:
                self.state.notes.append(note)
        for node in self.state.nodes:
            cfg = labnode.NodeConfig(
                name=node.name,
                lab_id=self.state.lab_id,
                internal_ip=node.lan_ip,
                pod_cidr=node.pod_cidr,
                zone=node.zone,
                directory=str(self.node_dir(node.name)),
                api_server=f"https://{CONTROL_PLANE_IP}:{API_PORT}",
                registry=self.state.registry["address"],
                pause_image=PAUSE_IMAGE,
                k8s_bin=self.state.control_plane["bin_dir"],
                node_bin=self.state.node_bins["bin"],
                cni_bin=self.state.node_bins["cni"],
                nameservers=(RESOLVER_IP,),
            )
            config = labnode.prepare(cfg)
            pki = Path(cfg.directory) / "etc" / "kubernetes" / "pki"
            pki.mkdir(parents=True, exist_ok=True)
            (pki / "ca.crt").write_bytes(cp.ca_file.read_bytes())
            cp.ca.issue(
                node.name, dns_names=[node.name], ip_addresses=[node.lan_ip], server=True
            ).write(pki, "kubelet")
            user = f"system:node:{node.name}"
            client = cp.ca.issue(user, organizations=["system:nodes"], client=True)
            cp.write_kubeconfig(
                Path(cfg.directory) / "etc" / "kubernetes" / "kubelet.conf",
                KubeconfigUser(
                    user, client_cert_pem=client.cert_pem, client_key_pem=client.key_pem
                ),
            )
            child = _Child(
                label=f"node/{node.name}",
                node=node.name,
                netns=node.namespace,
                argv=labnode.launcher_argv(node.namespace, config),
                log_path=Path(cfg.directory) / "logs" / "node.log",
                markers=["proxy.lab.node"],
                deathsig=signal.SIGTERM,
                restart=True,
                env=child_env(),
            )
            self.children[child.label] = child
            self._spawn(child)

    def wait_nodes(self) -> None:
        """Every kubelet registered its Node; give it its podCIDR; wait until Ready."""
        cp = self.cluster.control_plane
        pending = {n.name: n for n in self.state.nodes}
        cidr_set: set[str] = set()
        t0 = time.monotonic()
        deadline = t0 + READY_TIMEOUT
        while pending:
            self._check_children("node/")
            listed = cp.api("GET", "/api/v1/nodes")
            for item in listed.get("items", []):
                name = item["metadata"]["name"]
                node = pending.get(name)
                if node is None:
                    continue
                if name not in cidr_set and not item["spec"].get("podCIDR"):
                    # The lab's node IPAM: node-N gets 10.244.N.0/24, as its CNI config.
                    cp.api(
                        "PATCH",
                        f"/api/v1/nodes/{name}",
                        {"spec": {"podCIDR": node.pod_cidr, "podCIDRs": [node.pod_cidr]}},
                        content_type="application/merge-patch+json",
                    )
                cidr_set.add(name)
                conditions = item.get("status", {}).get("conditions", [])
                if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                    runtime = item["status"].get("nodeInfo", {}).get("containerRuntimeVersion")
                    self.progress(
                        f"{name} Ready after {time.monotonic() - t0:.1f}s (kubelet "
                        f"{item['status'].get('nodeInfo', {}).get('kubeletVersion')}, {runtime})"
                    )
                    del pending[name]
            if pending and time.monotonic() > deadline:
                raise LabError(
                    "nodes not Ready within "
                    f"{READY_TIMEOUT:.0f}s: {', '.join(pending)}; see "
                    + ", ".join(str(self.node_dir(n) / "logs" / "kubelet.log") for n in pending)
                )
            time.sleep(0.5)

    def _check_children(self, prefix: str) -> None:
        for label, child in self.children.items():
            if (
                label.startswith(prefix)
                and child.popen is not None
                and child.popen.poll() is not None
            ):
                raise LabError(
                    f"{label} exited with {child.popen.returncode}; last lines of "
                    f"{child.log_path}:\n{_tail(child.log_path)}"
                )

    def deploy_kube_proxy_py(self) -> None:
        from proxy.lab import deploy
        from proxy.lab.cluster import CLUSTER_CIDR, CONTROL_PLANE_IP

        objects, changes = deploy.lab_objects(
            self.objects,
            mode=self.state.mode,
            cluster_cidr=CLUSTER_CIDR,
            api_host=CONTROL_PLANE_IP,
            api_port=API_PORT,
            exclude_nodes=[UPSTREAM_NODE] if self.state.compare else [],
        )
        self.state.env_overrides = {k: list(v) for k, v in changes.env.items()}
        self.state.config_overrides = {k: list(v) for k, v in changes.config.items()}
        self.state.notes.extend(n for n in changes.other if n not in self.state.notes)
        self.save()
        self.progress(
            f"kubectl apply -f daemonset.yaml (mode {self.state.mode}; API server "
            f"{CONTROL_PLANE_IP}:{API_PORT})"
        )
        self.cluster.apply(*objects)

    def deploy_upstream(self) -> None:
        from proxy.lab import deploy
        from proxy.lab.cluster import CLUSTER_CIDR, CONTROL_PLANE_IP
        from proxy.lab.images import UPSTREAM_KUBE_PROXY_IMAGE

        self.progress(f"deploying upstream kube-proxy as a DaemonSet on {UPSTREAM_NODE}")
        self.cluster.apply(
            *deploy.upstream_objects(
                image=UPSTREAM_KUBE_PROXY_IMAGE,
                node=UPSTREAM_NODE,
                mode=self.state.mode,
                cluster_cidr=CLUSTER_CIDR,
                api_host=CONTROL_PLANE_IP,
                api_port=API_PORT,
                healthz_port=HEALTHZ_PORT,
            )
        )

    def proxy_pods(self) -> dict[str, dict[str, Any]]:
        """The proxies' Pods (both DaemonSets) by node name."""
        selector = "k8s-app+in+(kube-proxy-py,kube-proxy)"
        pods = self.cluster.control_plane.api(
            "GET", f"/api/v1/namespaces/kube-system/pods?labelSelector={selector}"
        )
        return {p["spec"].get("nodeName", ""): p for p in pods.get("items", [])}

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        t0 = time.monotonic()
        waiting = {n.name: n for n in self.state.nodes}
        while waiting:
            self._check_children("node/")
            pods = self.proxy_pods()
            for name, node in list(waiting.items()):
                pod = pods.get(name)
                conditions = (pod or {}).get("status", {}).get("conditions") or []
                if pod is None or not any(
                    c.get("type") == "Ready" and c.get("status") == "True" for c in conditions
                ):
                    continue
                status, _ = node_health(node.namespace)
                if status == 200:
                    self.progress(
                        f"{node.proxy} pod {pod['metadata']['name']} Ready on {name}, "
                        f"/healthz 200 after {time.monotonic() - t0:.1f}s"
                    )
                    del waiting[name]
            if waiting and time.monotonic() > deadline:
                detail = []
                for name in waiting:
                    pod = pods.get(name)
                    pod_status = {} if pod is None else pod.get("status", {})
                    seen = pod_status.get("containerStatuses", pod_status) if pod else "no pod"
                    detail.append(f"{name}: {json.dumps(seen)[:400]}")
                raise LabError(
                    f"the proxies were not healthy within {READY_TIMEOUT:.0f}s: "
                    + "; ".join(detail)
                )
            time.sleep(0.5)

    def _spawn(self, child: _Child) -> None:
        child.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(child.log_path, "ab") as out:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            out.write(f"--- {stamp} starting: {' '.join(child.argv)}\n".encode())
            out.flush()
            child.popen = subprocess.Popen(
                child.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child.env,
                cwd="/",
                start_new_session=True,
                preexec_fn=die_with_parent(child.deathsig),
            )
        child.started = time.monotonic()
        self.state.processes[child.label] = ProcRecord.of(
            child.label, child.popen.pid, child.markers
        )
        self.save()
        log.info(
            "started label=%s pid=%d netns=%s log=%s",
            child.label,
            child.popen.pid,
            child.netns,
            child.log_path,
        )

    # -- running ---------------------------------------------------------------------
    def watch(self) -> None:
        while True:
            time.sleep(1.0)
            self._check_apiserver()
            now = time.monotonic()
            for child in self.children.values():
                if child.popen is None or child.popen.poll() is None:
                    continue
                if child.restart_at == 0.0:
                    if now - child.started > 600:
                        child.backoff.reset()
                    delay = child.backoff.next()
                    child.restart_at = now + delay
                    log.warning(
                        "exited label=%s code=%s restart_in=%.0fs",
                        child.label,
                        child.popen.returncode,
                        delay,
                    )
                elif now >= child.restart_at:
                    child.restart_at = 0.0
                    self.state.restarts[child.label] = self.state.restarts.get(child.label, 0) + 1
                    self._spawn(child)

    def _check_apiserver(self) -> None:
        """Start kube-apiserver again when it exited (killed, crashed, or stopped to test
        a control-plane restart), as the kubelet of a kind control-plane node restarts its
        static pod; etcd's data is kept, so clients see an API server restart."""
        from proxy.lab.controlplane import APISERVER, ControlPlaneError

        cp = self.cluster.control_plane
        if APISERVER not in cp.exited():
            return
        log.warning("exited label=%s; starting it again", APISERVER)
        try:
            cp.restart_apiserver()
        except ControlPlaneError:
            log.exception("restarting %s", APISERVER)
            return
        pid = cp.pids[APISERVER]
        self.state.processes[APISERVER] = ProcRecord.of(
            APISERVER, pid, self.state.processes[APISERVER].markers
        )
        self.state.restarts[APISERVER] = self.state.restarts.get(APISERVER, 0) + 1
        self.save()

    # -- stopping --------------------------------------------------------------------
    def teardown(self) -> None:
        from proxy.lab import cgroups

        self.state.phase = "stopping" if self.state.phase != "failed" else "failed"
        with contextlib.suppress(Exception):
            self.save()
        # Nodes first (each stops its kubelet and containerd and kills its containers),
        # then the registry.
        for group in ("node/", "registry", RESOLVER):
            running = [
                c
                for c in self.children.values()
                if c.label.startswith(group) and c.popen is not None
            ]
            for child in running:
                assert child.popen is not None
                if child.popen.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        child.popen.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 30.0
            for child in running:
                assert child.popen is not None
                try:
                    child.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("did not stop after SIGTERM label=%s; SIGKILL", child.label)
                    child.popen.kill()
                    child.popen.wait(timeout=10)
                log.info("stopped label=%s code=%s", child.label, child.popen.returncode)
        for problem in cgroups.remove(cgroups.lab_path(self.state.lab_id)):
            log.warning("cgroup cleanup: %s", problem)
        if self._cluster is not None:
            try:
                self._cluster.stop()
            except Exception:
                log.exception("stopping the cluster")
        sweep_namespaces(self.state.lab_id, self.state.namespaces)
        self.state.phase = "stopped" if self.state.phase != "failed" else "failed"
        with contextlib.suppress(Exception):
            self.save()
        self.progress("stopped")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------- cleanup


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
        removed.processes += _kill_records(children)
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


# --------------------------------------------------------------------------- client commands


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise LabError(f"lab {what} needs root (it uses network namespaces)")


def _no_lab(state_dir: Path) -> LabError:
    return LabError(f"no lab is running: start one with `{_command_hint(state_dir, 'up')}`")


def _up_flags(
    nodes: int | None, mode: str | None, compare: bool | None, with_addons: bool = True
) -> str:
    flags = "" if nodes is None else f" --nodes {nodes}"
    flags += "" if mode is None else f" --mode {mode}"
    return flags + (" --compare" if compare else "") + ("" if with_addons else " --no-addons")


def up(
    state_dir: Path,
    *,
    nodes: int | None,
    mode: str | None,
    compare: bool | None,
    with_addons: bool | None = None,
    out: TextIO = sys.stdout,
) -> int:
    _require_root("up")
    want_nodes = DEFAULT_NODES if nodes is None else nodes
    want_addons = with_addons is not False
    want_mode = DEFAULT_MODE if mode is None else mode
    lab_topology(want_nodes, bool(compare))  # validates --nodes
    if want_mode not in MODES:
        raise LabError(f"--mode {want_mode}: choose one of {', '.join(MODES)}")
    with _locked(state_dir):
        state = load_state(state_dir)
        if state is not None and state.supervisor_alive():
            if state.phase == "ready":
                differs = []
                if nodes is not None and nodes != state.node_count:
                    differs.append(f"--nodes {nodes} (it has {state.node_count})")
                if mode is not None and mode != state.mode:
                    differs.append(f"--mode {mode} (it runs {state.mode})")
                if compare is not None and compare != state.compare:
                    differs.append("--compare" if compare else "no --compare")
                if with_addons is not None and with_addons != state.addons:
                    differs.append("add-ons" if with_addons else "--no-addons")
                print(f"a lab is already running ({state.lab_id}, state in {state_dir})", file=out)
                print_status(state, out)
                if differs:
                    print(
                        f"\nit differs from what you asked for: {'; '.join(differs)}. "
                        f"Run `{_command_hint(state_dir, 'down')}` first, then "
                        f"`{_command_hint(state_dir, 'up')}"
                        f"{_up_flags(nodes, mode, compare, want_addons)}`.",
                        file=out,
                    )
                    return EXIT_FAIL
                return EXIT_OK
            attach_to = state.lab_id
        else:
            attach_to = None
    if attach_to is not None:
        print(f"a lab is already starting ({attach_to}); following its progress", file=out)
        return _follow(state_dir, None, attach_to, out)
    with _locked(state_dir):
        state = load_state(state_dir)
        if state is not None and state.supervisor_alive():
            raise LabError(
                f"lab {state.lab_id} was started meanwhile; "
                f"see `{_command_hint(state_dir, 'status')}`"
            )
        if state is not None:
            print(
                f"found lab {state.lab_id} whose supervisor is gone (crashed or killed): "
                "cleaning up first",
                file=out,
            )
            for line in cleanup(state_dir, state).lines():
                print(f"  {line}", file=out)
        elif state_dir.exists():
            stray = [
                p.name for p in state_dir.iterdir() if p.name not in (PROGRESS_FILE, SUPERVISOR_LOG)
            ]
            if stray:
                raise LabError(
                    f"{state_dir} is not empty and holds no lab state "
                    f"({', '.join(sorted(stray)[:5])}); give an empty or new --state-dir"
                )
            for name in (PROGRESS_FILE, SUPERVISOR_LOG):
                (state_dir / name).unlink(missing_ok=True)
        state_dir.mkdir(parents=True, exist_ok=True)
        lab_id = f"kpp-lab-{secrets.token_hex(3)}"
        argv = [
            sys.executable, "-m", "proxy.lab.lab", "supervise",
            "--state-dir", str(state_dir),
            "--lab-id", lab_id,
            "--nodes", str(want_nodes),
            "--mode", want_mode,
            *(["--compare"] if compare else []),
            *([] if want_addons else ["--no-addons"]),
        ]  # fmt: skip
        print(
            f"starting lab {lab_id}: {want_nodes} node(s), {want_mode} mode"
            + (", upstream kube-proxy on node-upstream" if compare else "")
            + ("" if want_addons else ", no add-ons")
            + f" (state in {state_dir})",
            file=out,
        )
        with open(state_dir / SUPERVISOR_LOG, "ab") as logf:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                cwd="/",
                env=child_env(),
                start_new_session=True,
            )
        # Until the supervisor writes its own, this state already names it (another
        # `lab up` waiting for the lock then follows it instead of starting a second one).
        save_state(
            LabState(
                lab_id=lab_id,
                state_dir=str(state_dir),
                mode=want_mode,
                node_count=want_nodes,
                compare=bool(compare),
                addons=want_addons,
                supervisor=ProcRecord.of("supervisor", popen.pid, ["proxy.lab.lab supervise"]),
            )
        )
    try:
        return _follow(state_dir, popen, lab_id, out)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the lab", file=out)
        return down(state_dir, out=out) or EXIT_FAIL


def _follow(
    state_dir: Path, popen: subprocess.Popen[bytes] | None, lab_id: str, out: TextIO
) -> int:
    """Print the supervisor's progress until the lab is ready (0) or failed (1)."""

    def hint(sub: str) -> str:
        return _command_hint(state_dir, sub)

    progress_path = state_dir / PROGRESS_FILE
    offset = 0

    def pump() -> None:
        nonlocal offset
        try:
            with open(progress_path) as f:
                f.seek(offset)
                while True:
                    line = f.readline()
                    if not line.endswith("\n"):
                        break
                    offset = f.tell()
                    with contextlib.suppress(ValueError, KeyError):
                        item = json.loads(line)
                        print(f"[{item['t']:6.1f}s] {item['msg']}", file=out, flush=True)
        except FileNotFoundError:
            pass

    while True:
        pump()
        state = load_state(state_dir)
        exited = (
            popen.poll() is not None
            if popen is not None
            else not (state and state.supervisor_alive())
        )
        if state is not None and state.phase == "ready" and not exited:
            pump()
            print("", file=out)
            print_status(state, out)
            print(
                "\nnext:\n"
                f"  {hint('kubectl')} get nodes -o wide\n"
                f"  {hint('kubectl')} create deployment web --image=nginx --replicas=3 --port=80\n"
                f"  {hint('kubectl')} expose deployment web --port=80 --type=LoadBalancer\n"
                f"  {hint('kubectl')} get svc web   (EXTERNAL-IP: an address from MetalLB)\n"
                f"  {hint('kubectl')} run curl --image=curlimages/curl -i --rm --restart=Never "
                "-- curl -s web   (cluster DNS)\n"
                f"  {hint('shell')} node-1      (a shell in node-1's network namespace)\n"
                f"  {hint('shell')} client      (the outside client)\n"
                f"  {hint('demo')}      (a guided tour)\n"
                f"  {hint('seeds')}     (the learners' notes, replayed)\n"
                f"  {hint('down')}",
                file=out,
            )
            return EXIT_OK
        if exited or (state is not None and state.phase in ("failed", "stopped")):
            # Let the supervisor finish its own teardown first.
            if popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    popen.wait(timeout=STOP_TIMEOUT)
            elif state is not None and state.supervisor is not None:
                deadline = time.monotonic() + STOP_TIMEOUT
                while state.supervisor.is_ours() and time.monotonic() < deadline:
                    time.sleep(0.2)
            pump()
            print(
                f"\nthe lab failed to start; last lines of {state_dir / SUPERVISOR_LOG}:", file=out
            )
            print(_tail(state_dir / SUPERVISOR_LOG, 25), file=out)
            print("\ncleaning up", file=out)
            with _locked(state_dir):
                for line in cleanup(state_dir, state, lab_id).lines():
                    print(f"  {line}", file=out)
            return EXIT_FAIL
        time.sleep(0.2)


def running_or_started(state_dir: Path, *, out: TextIO = sys.stdout) -> LabState | None:
    """The running lab; when none runs (or it is not ready), one is started as `lab up`
    with its defaults would. None when starting failed: `up` has printed why."""
    state = load_state(state_dir)
    if state is not None and state.supervisor_alive() and state.phase == "ready":
        return state
    print("no lab is running: starting one (`kube-proxy-py lab up`)\n", file=out, flush=True)
    if up(state_dir, nodes=None, mode=None, compare=None, out=out) != 0:
        return None
    state = load_state(state_dir)
    if state is None:
        raise LabError(f"the lab did not record its state in {state_dir}")
    return state


def down(state_dir: Path, *, out: TextIO = sys.stdout) -> int:
    _require_root("down")
    if not state_dir.exists():
        print(f"no lab is running (no {state_dir}); nothing to clean up", file=out)
        return EXIT_OK
    with _locked(state_dir):
        state = load_state(state_dir)
        if state is None:
            stray = [
                p.name for p in state_dir.iterdir() if p.name not in (PROGRESS_FILE, SUPERVISOR_LOG)
            ]
            if stray:
                raise LabError(
                    f"{state_dir} holds no lab state "
                    f"({', '.join(sorted(stray)[:5])}); left untouched"
                )
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


def _running_state(state_dir: Path) -> LabState:
    state = load_state(state_dir)
    if state is None or not state.supervisor_alive() or state.phase != "ready":
        if state is not None and not state.supervisor_alive():
            raise LabError(
                f"lab {state.lab_id} is not running (its supervisor is gone): "
                f"`{_command_hint(state_dir, 'down')}` cleans up, "
                f"`{_command_hint(state_dir, 'up')}` starts a new one"
            )
        if state is not None and state.phase == "starting":
            raise LabError(f"lab {state.lab_id} is still starting: wait for `lab up` to finish")
        raise _no_lab(state_dir)
    return state


def _fmt_age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def print_status(state: LabState, out: TextIO = sys.stdout) -> bool:
    """Print the lab's status; True when every node's proxy is healthy."""
    alive = state.supervisor_alive()
    age = _fmt_age(time.time() - (state.ready_at or state.created))
    running = (
        "running" if alive and state.phase == "ready" else ("starting" if alive else "NOT running")
    )
    sup_pid = state.supervisor.pid if state.supervisor else "?"
    print(
        f"lab {state.lab_id}: {running} for {age} (supervisor pid {sup_pid}), "
        f"state in {state.state_dir}",
        file=out,
    )
    cp = state.control_plane
    if cp.get("server"):
        print(
            f"API server: {cp['server']} (inside the lab only; "
            f"`{_command_hint(state.path, 'kubectl')} ...` uses it)",
            file=out,
        )
    apiserver_restarts = state.restarts.get("kube-apiserver", 0)
    if apiserver_restarts:
        print(
            f"kube-apiserver exited and was started again {apiserver_restarts} time(s) "
            f"(log: {Path(state.state_dir) / SUPERVISOR_LOG})",
            file=out,
        )
    print(f"mode: {state.mode}", file=out)
    pods_per_node: dict[str, int] = {}
    pods_note = ""
    if alive and cp.get("server"):
        try:
            items = _api_get(state, "/api/v1/pods")["items"]
            for pod in items:
                node = (pod.get("spec") or {}).get("nodeName") or "(unscheduled)"
                pods_per_node[node] = pods_per_node.get(node, 0) + 1
        except (OSError, LabError, ValueError, ApiError) as exc:
            pods_note = f" (pod count unavailable: {exc})"
    healthy = True
    rows = [("NODE", "LAN IP", "POD CIDR", "ZONE", "PROXY", "HEALTH", "KUBELET", "PODS")]
    for node in state.nodes:
        health = "-"
        if alive:
            status, _ = node_health(node.namespace)
            if status == 200:
                health = "healthy"
            else:
                health = f"unhealthy ({status})" if status else "not answering"
                healthy = False
        proxy = node.proxy + " (DaemonSet pod)"
        agent = "-"
        rec = state.processes.get(f"node/{node.name}")
        if rec is not None:
            agent = "running" if rec.is_ours() else "DEAD"
            restarts = state.restarts.get(f"node/{node.name}", 0)
            if restarts:
                agent += f" ({restarts} restarts)"
        rows.append(
            (
                node.name,
                node.lan_ip,
                node.pod_cidr,
                node.zone,
                proxy,
                health,
                agent,
                str(pods_per_node.get(node.name, 0)),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(),
            file=out,
        )
    unscheduled = pods_per_node.get("(unscheduled)", 0)
    if unscheduled or pods_note:
        print(f"  unscheduled pods: {unscheduled}{pods_note}", file=out)
    if state.registry:
        print(
            f"image registry: {state.registry['address']} (mirrors docker.io, registry.k8s.io, "
            "quay.io, ghcr.io for every node)",
            file=out,
        )
    if not state.addons:
        print("add-ons: none (--no-addons: no cluster DNS, no LoadBalancer addresses)", file=out)
    elif alive and cp.get("server"):
        for line in _addon_lines(state):
            print(line, file=out)
    if state.client:
        routes = ", ".join(f"{p} via {v}" for p, v in state.client.get("routes", {}).items())
        print(
            f"outside client: `{state.client['name']}` {state.client['lan_ip']} (routes {routes})",
            file=out,
        )
    changes = [
        f"config.conf {k}: {v[1]} (daemonset.yaml: {v[0]})"
        for k, v in state.config_overrides.items()
    ]
    changes += [f"env {k}={v[1]} (daemonset.yaml: {v[0]})" for k, v in state.env_overrides.items()]
    if changes:
        print(
            "kube-proxy-py is daemonset.yaml applied as written, except: " + "; ".join(changes),
            file=out,
        )
    for note in state.notes:
        print(f"note: {note}", file=out)
    if state.phase == "failed":
        print(f"error: {state.error}", file=out)
    return alive and healthy and state.phase == "ready"


def _addon_lines(state: LabState) -> list[str]:
    """What the add-ons serve, read from the API (a line saying why if it cannot)."""
    from proxy.lab import metallb

    try:
        dep = _api_get(state, "/apis/apps/v1/namespaces/kube-system/deployments/coredns")
        services = _api_get(state, "/api/v1/services")["items"]
    except (OSError, LabError, ValueError, KeyError, ApiError) as e:
        return [f"add-ons: status unavailable ({e})"]
    ready = int((dep.get("status") or {}).get("readyReplicas") or 0)
    wanted = int((dep.get("spec") or {}).get("replicas") or 0)
    in_use = sum(
        1
        for svc in services
        if (svc.get("status") or {}).get("loadBalancer", {}).get("ingress")
        and not (svc.get("spec") or {}).get("loadBalancerClass")
    )
    return [
        f"cluster DNS: kube-dns {coredns.DNS_SERVICE_IP} (CoreDNS {addonbuild.COREDNS_VERSION}, "
        f"{ready}/{wanted} ready); outside resolver {RESOLVER_IP} knows "
        + ", ".join(sorted(coredns.OUTSIDE_NAMES)),
        f"load balancers: MetalLB {addonbuild.METALLB_VERSION} (L2), pool {metallb.POOL_RANGE} "
        f"on the LAN, {in_use} address(es) in use",
    ]


def status(state_dir: Path, *, out: TextIO = sys.stdout) -> int:
    _require_root("status")
    state = load_state(state_dir)
    if state is None:
        raise _no_lab(state_dir)
    ok = print_status(state, out)
    if not state.supervisor_alive():
        print(f"\n`{_command_hint(state_dir, 'down')}` cleans up what it left", file=out)
    return EXIT_OK if ok else EXIT_FAIL


def kubectl_argv(state: LabState, args: Sequence[str]) -> list[str]:
    cp = state.control_plane
    return hostns.exec_argv(
        cp["namespace"],
        [
            cp["kubectl"],
            f"--kubeconfig={cp['kubeconfig']}",
            f"--cache-dir={cp['kubectl_cache']}",
            *args,
        ],
    )


def kubectl(state_dir: Path, args: Sequence[str]) -> int:
    """Exec kubectl inside the control-plane namespace (stdio and exit code pass through)."""
    _require_root("kubectl")
    state = _running_state(state_dir)
    argv = kubectl_argv(state, list(args))
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(argv[0], argv, env)


def _pod_namespace(state: LabState, target: str) -> str:
    """The network namespace of a Pod (``name`` or ``namespace/name``) as a path,
    ``/proc/<pid>/ns/net`` of one of its processes (found in the pod's cgroup, which the
    kubelet names ``pod<uid>``)."""
    from proxy.lab import cgroups

    namespace, _, name = target.rpartition("/")
    namespace = namespace or "default"
    try:
        pod = _api_get(state, f"/api/v1/namespaces/{namespace}/pods/{name}")
    except LabError as exc:
        raise LabError(
            f"`{target}` is no node, `client`, `control-plane`, `lan` nor a pod ({exc}); "
            f"nodes: {', '.join(n.name for n in state.nodes)}"
        ) from exc
    spec = pod.get("spec") or {}
    if spec.get("hostNetwork"):
        return f"{state.lab_id}-{spec.get('nodeName')}"
    node = spec.get("nodeName")
    uid = pod["metadata"]["uid"]
    if not node or not (pod.get("status") or {}).get("podIP"):
        raise LabError(
            f"pod {namespace}/{name} is not running yet "
            f"(phase {(pod.get('status') or {}).get('phase')})"
        )
    for pid in sorted(cgroups.pods_pids(cgroups.node_path(state.lab_id, node), uid)):
        path = f"/proc/{pid}/ns/net"
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino != os.stat(f"/proc/{os.getpid()}/ns/net").st_ino:
                return path
    raise LabError(f"pod {namespace}/{name} has no running process on {node}")


def shell_target(state: LabState, target: str) -> str:
    """The namespace for a node name, ``client``, ``control-plane``, ``lan`` or a pod."""
    from proxy.lab.cluster import CONTROL_PLANE

    if target in {n.name for n in state.nodes} | {CLIENT, CONTROL_PLANE, "lan"}:
        return f"{state.lab_id}-{target}"
    return _pod_namespace(state, target)


def shell(state_dir: Path, target: str, command: Sequence[str]) -> int:
    _require_root("shell")
    state = _running_state(state_dir)
    ns = shell_target(state, target)
    cmd = list(command)
    if cmd[:1] == ["--"]:
        cmd = cmd[1:]
    if not cmd:
        cmd = [os.environ.get("SHELL") or shutil.which("bash") or "/bin/sh"]
        print(f"{ns}: a shell in {target}'s network namespace (exit to leave)", file=sys.stderr)
    env = dict(os.environ)
    env["KPP_LAB_NETNS"] = ns
    argv = hostns.exec_argv(ns, cmd)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(argv[0], argv, env)


def load_image(state_dir: Path, archive: Path, *, out: TextIO = sys.stdout) -> int:
    """``lab load-image FILE.tar``: push its images into the running lab's registry."""
    from proxy.lab import images
    from proxy.lab.node import MIRRORED_REGISTRIES
    from proxy.lab.oci import OciError
    from proxy.lab.regclient import RegistryError
    from proxy.lab.rootfs import ImageBuildError

    _require_root("load-image")
    state = _running_state(state_dir)
    if not state.registry:
        raise LabError(f"lab {state.lab_id} has no registry (started by an older version)")
    url = f"http://{state.registry['address']}"
    try:
        added = images.load_image_archive(
            archive, url, netns=state.registry["namespace"], registries=MIRRORED_REGISTRIES
        )
    except (OSError, ImageBuildError, OciError, RegistryError) as exc:
        raise LabError(f"{archive}: {exc}") from exc
    if not added:
        raise LabError(f"{archive} holds no tagged image (a `docker save NAME:TAG` archive has)")
    for ref in added:
        print(f"loaded {ref} into the lab registry ({state.registry['address']})", file=out)
    return EXIT_OK


# --------------------------------------------------------------------------- supervisor entry


def supervise(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m proxy.lab.lab supervise")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--lab-id", required=True)
    parser.add_argument("--nodes", type=int, default=DEFAULT_NODES)
    parser.add_argument("--mode", choices=MODES, default=DEFAULT_MODE)
    parser.add_argument("--compare", action="store_true")
    parser.add_argument("--no-addons", dest="addons", action="store_false")
    args = parser.parse_args(list(argv))
    from proxy import logs

    logs.setup()
    state_dir = Path(args.state_dir)
    state = LabState(
        lab_id=args.lab_id,
        state_dir=str(state_dir),
        mode=args.mode,
        node_count=args.nodes,
        compare=args.compare,
        addons=args.addons,
    )
    return Supervisor(state).run()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["supervise"]:
        return supervise(args[1:])
    print(
        "usage: python -m proxy.lab.lab supervise --state-dir DIR --lab-id ID ...", file=sys.stderr
    )
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
