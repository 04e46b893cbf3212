"""A kubelet stand-in for one lab node: runs the Pods bound to it as network namespaces.

    ip netns exec <node-ns> python -m proxy.lab.podagent --node NODE --kubeconfig PATH \\
        --lab-id ID --state-dir DIR [--max-grace SECONDS] [-v N]

It list-watches the Pods with ``spec.nodeName=NODE`` (all namespaces; the field selector
the Node authorizer requires of a ``system:node:NODE`` client) and reads its Node for
``spec.podCIDR`` and its InternalIP. For every Pod:

- **Network.** An IPv4 address from the podCIDR (never the network address, ``.1`` or the
  broadcast address; on start, the IPs existing pods report in ``status.podIP`` are
  reserved for them, so a restarted agent gives pods their old IPs back; addresses are
  handed out round-robin and never twice; /32 routes the node already has to something
  else are skipped). A namespace ``<lab-id>-pod-<8 hex>`` wired to the node Calico style
  (:mod:`proxy.lab.podnet`: pod ``eth0`` ip/32, default via 169.254.1.1 onlink; node side
  ``cali<11 hex>`` with proxy ARP and a /32 route).
- **Workload.** ``python -m proxy.harness.workload --name <pod name>`` inside the pod's
  namespace, serving every ``containerPort`` of every container: UDP for ``protocol: UDP``,
  HTTP for TCP ports whose name starts with ``http``, plain TCP otherwise (SCTP is not
  served; a warning is logged). One process stands for all the pod's containers. A pod
  that declares no port runs no process: it only gets its network.
- **Status** like a kubelet, as a merge patch of ``pods/<name>/status`` with the pod's UID
  as precondition: phase Running, ``podIP(s)``, ``hostIP(s)``, ``startTime``, conditions
  PodReadyToStartContainers/Initialized/ContainersReady/Ready/PodScheduled True once the
  workload printed its readiness line (it listens on every port then), and
  ``containerStatuses`` (running, ready, started, restartCount, placeholder image and
  container IDs). ``readinessProbe``/``livenessProbe`` are ignored: Ready means listening.
  A workload that dies is restarted (restartCount + 1).
- **hostNetwork pods** run nothing: they are reported Running/Ready with the node's
  InternalIP as podIP at once, and finalized at once when deleted.
- **Failures** (no free IP, a namespace or veth that cannot be created, a workload that
  does not start) are reported in the pod's status — phase Pending, condition
  PodReadyToStartContainers False, reason FailedCreatePodSandBox and the error as message,
  containers waiting in ContainerCreating — and as a Warning Event, then retried with
  backoff. API errors are retried (the reflector does its own). Nothing crashes the agent.

**Termination** (a Pod with ``metadata.deletionTimestamp``). The grace period is
``metadata.deletionGracePeriodSeconds``, else ``spec.terminationGracePeriodSeconds``, else
30 s, capped by ``--max-grace``; a later, shorter grace period (a second ``kubectl delete
--grace-period=N``) shortens the deadline, as a kubelet does. During it the workload keeps
serving and the status is left alone, so the pod stays Ready: a real kubelet keeps running
readiness probes during graceful termination ("probe workers must keep probing until the
container stops so a failing readiness probe can mark the pod NotReady during graceful
termination", pkg/kubelet/prober/prober_manager.go, v1.37), and without a probe a running
container stays ready until it exits. The EndpointSlice controller then publishes the
endpoint as ``serving: true`` (from Ready), ``terminating: true`` (from the
deletionTimestamp) and ``ready: false`` (``serving && !terminating``,
k8s.io/endpointslice utils.go podToEndpoint) — exactly what kube-proxy's
terminating-endpoint fallback needs. (A real kubelet sends SIGTERM at the start of the
grace period and SIGKILL at its end; our workload stands for an application that drains
for the whole period, as with a preStop sleep.) When the period is over the workload is
stopped (SIGTERM, then SIGKILL), the namespace deleted and the IP released; then, like a
kubelet's status manager, the terminal status is written (phase Succeeded if the workload
exited 0, else Failed; containers terminated; Ready False) and the Pod is deleted with
``gracePeriodSeconds: 0`` and a UID precondition. A Pod found already deleted when
nothing runs for it (e.g. deleted while the agent was down) is finalized at once.

**State.** ``<state-dir>/podagent-<node>.json`` lists every namespace, veth, IP and
workload pid the agent created (rewritten atomically on each change), so that
:func:`cleanup_from_state` can remove what a crashed agent left. A starting agent does
that itself with its node's file (refusing to start if the recorded agent still runs).

**SIGTERM/SIGINT**: every workload is stopped and every pod namespace deleted; the
process exits 0 and the Pods stay in the API, as when a kubelet goes away.

Safety: the agent only works inside a named namespace ``<lab-id>-…`` (never the root
namespace); every namespace it creates carries the lab id; veth pairs are created from
inside the pod namespace with the peer placed directly in the node namespace.

Mount namespace: ``ip netns exec`` runs its command in a private mount namespace (slave
mounts, its own /sys), where ``ip netns add`` would bind-mount the pod namespaces out of
the lab's sight. Started that way, the agent first joins the mount namespace of the
nearest ancestor that sees the same node namespace under /run/netns (the launcher's);
started with ``nsenter --net=/run/netns/<node-ns>`` there is nothing to do.

In-process use (tests): ``PodAgent(node, ApiClient.from_config(kubeconfig), lab_id=…,
state_dir=…, node_netns="<lab-id>-node-a").start()`` runs the agent's threads inside the
node namespace (``setns`` on its own threads only); ``stop()`` tears everything down.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import http.client
import ipaddress
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from proxy import __version__, logs
from proxy.harness import netns
from proxy.harness.errors import HarnessError
from proxy.harness.process import LineReader, ManagedProcess, log_tail, python_argv
from proxy.harness.workload import READY_PREFIX
from proxy.lab import nsutil, podnet
from proxy.source.api import ApiClient, ApiError, ConfigError, build_ssl_context
from proxy.source.reflector import EventType, Reflector, ResourceSpec, object_key

log = logging.getLogger(__name__)

LAB_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,23}$")
"""The harness's topology id rule (``proxy.harness.topology.ID_RE``)."""
NODE_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")
DEFAULT_GRACE_SECONDS = 30
WORKLOAD_MODULE = "proxy.harness.workload"
AGENT_MODULE = "proxy.lab.podagent"
READY_TIMEOUT = 60.0
"""Seconds a workload may take to print its readiness line."""
STOP_GRACE = 3.0
"""Seconds between SIGTERM and SIGKILL when stopping a workload."""
RESYNC_PERIOD = 5.0
"""Housekeeping: restart failed pod workers, refresh the node's address."""
USER_AGENT = f"kube-proxy-py-podagent/{__version__}"
STATE_VERSION = 1


class PodAgentError(RuntimeError):
    """The pod agent cannot start or clean up; the message says what to fix."""


class SetupError(RuntimeError):
    """A pod's network or workload could not be set up (reported, then retried)."""


# --------------------------------------------------------------------------- API writes


class _HTTPSConnection(http.client.HTTPSConnection):
    """HTTPS with a separate TLS server name (kubeconfig ``tls-server-name``)."""

    def __init__(
        self, host: str, port: int | None, *, context: ssl.SSLContext, server_hostname: str
    ) -> None:
        super().__init__(host, port, timeout=10.0, context=context)
        self._pa_context = context
        self._pa_server_hostname = server_hostname

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        try:
            self.sock = self._pa_context.wrap_socket(sock, server_hostname=self._pa_server_hostname)
        except BaseException:
            sock.close()
            raise


_STALE = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    BrokenPipeError,
    http.client.BadStatusLine,
)


class ApiWriter:
    """PATCH/DELETE/POST with the credentials of an :class:`ApiClient` (which only reads).

    One keep-alive connection, serialized by a lock (a kubelet's writes are few). Raises
    :class:`ApiError` like the client: ``status`` None for connection problems.
    """

    def __init__(self, client: ApiClient, *, timeout: float = 30.0) -> None:
        config = client.config
        parts = urllib.parse.urlsplit(config.server)
        self._host = parts.hostname or ""
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._ssl = build_ssl_context(config)
        self._server_hostname = config.tls_server_name or self._host
        self._tokens = client.tokens
        self._timeout = timeout
        self._lock = threading.Lock()
        self._conn: http.client.HTTPConnection | None = None
        self._closed = False

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = content_type
        token = self._tokens.get()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        with self._lock:
            status, raw = self._exchange(method, self._prefix + path, data, headers)
        if status == 401:
            self._tokens.invalidate()
        if status >= 400:
            raise _api_error(status, raw, method, path)
        if not raw:
            return {}
        try:
            obj = json.loads(raw)
        except ValueError as e:
            raise ApiError(None, "BadResponse", f"response is not JSON: {e}", path=path) from e
        return obj if isinstance(obj, dict) else {}

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop()

    def _exchange(
        self, method: str, url: str, data: bytes | None, headers: Mapping[str, str]
    ) -> tuple[int, bytes]:
        for attempt in (1, 2):
            if self._closed:
                raise ApiError(None, "Closed", "the writer was closed", method=method, path=url)
            reused = self._conn is not None
            conn = self._conn or self._new_connection()
            self._conn = conn
            try:
                if conn.sock is not None:
                    conn.sock.settimeout(self._timeout)
                conn.request(method, url, body=data, headers=dict(headers))
                resp = conn.getresponse()
                raw = resp.read()
            except _STALE as e:
                self._drop()
                if reused and attempt == 1:
                    continue  # the server had closed the idle keep-alive connection
                raise ApiError(None, "ConnectionError", str(e), method=method, path=url) from e
            except (OSError, http.client.HTTPException) as e:
                self._drop()
                raise ApiError(
                    None, "ConnectionError", str(e) or type(e).__name__, method=method, path=url
                ) from e
            if resp.will_close:
                self._drop()
            return resp.status, raw
        raise AssertionError("unreachable")  # pragma: no cover

    def _new_connection(self) -> http.client.HTTPConnection:
        if self._ssl is not None:
            return _HTTPSConnection(
                self._host, self._port, context=self._ssl, server_hostname=self._server_hostname
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=10.0)

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


def _api_error(status: int, raw: bytes, method: str, path: str) -> ApiError:
    try:
        obj = json.loads(raw)
    except ValueError:
        obj = None
    if isinstance(obj, dict) and obj.get("kind") == "Status":
        err = ApiError.from_status(obj, method=method, path=path)
        return ApiError(status, err.reason, err.message, method=method, path=path)
    text = raw.decode(errors="replace").strip()[:500]
    return ApiError(
        status, http.client.responses.get(status, "Error"), text, method=method, path=path
    )


# --------------------------------------------------------------------------- IP addresses


class IPAllocator:
    """IPv4 addresses of one pod CIDR, owned by pod UIDs.

    Never the network address, the first host (``.1``, a gateway by convention) or the
    broadcast address. New addresses are handed out round-robin after the last one, like
    the host-local IPAM plugin, so a released address is not reused at once.
    Thread-safe.
    """

    def __init__(self, cidr: str) -> None:
        try:
            network = ipaddress.ip_network(cidr, strict=True)
        except ValueError as e:
            raise PodAgentError(f"podCIDR {cidr!r} is not a CIDR: {e}") from e
        if not isinstance(network, ipaddress.IPv4Network):
            raise PodAgentError(f"podCIDR {cidr}: the lab's pod network is IPv4 only")
        if network.prefixlen > 29:
            raise PodAgentError(f"podCIDR {cidr} is too small (at most /29)")
        self.cidr = network
        self._first = int(network.network_address) + 2
        self._last = int(network.broadcast_address) - 1
        self._cursor = self._first - 1
        self._owner: dict[str, str] = {}
        """ip → uid"""
        self._ips: dict[str, str] = {}
        """uid → ip"""
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return self._last - self._first + 1

    def usable(self, ip: str) -> bool:
        try:
            value = int(ipaddress.IPv4Address(ip))
        except ValueError:
            return False
        return self._first <= value <= self._last

    def reserve(self, uid: str, ip: str) -> bool:
        """Give ``ip`` to ``uid`` if it is usable and free (or already its own)."""
        with self._lock:
            if not self.usable(ip) or self._owner.get(ip, uid) != uid or uid in self._ips:
                return self._ips.get(uid) == ip
            self._owner[ip] = uid
            self._ips[uid] = ip
            return True

    def assign(self, uid: str, preferred: str | None = None, exclude: Iterable[str] = ()) -> str:
        """The address of ``uid``: its current one, else ``preferred`` if free, else the
        next free one. Raises SetupError when the CIDR is exhausted."""
        excluded = set(exclude)
        with self._lock:
            current = self._ips.get(uid)
            if current is not None:
                return current
            if (
                preferred is not None
                and self.usable(preferred)
                and preferred not in self._owner
                and preferred not in excluded
            ):
                return self._take(uid, preferred)
            for step in range(1, self.size + 1):
                value = self._first + (self._cursor - self._first + step) % self.size
                ip = str(ipaddress.IPv4Address(value))
                if ip not in self._owner and ip not in excluded:
                    self._cursor = value
                    return self._take(uid, ip)
        raise SetupError(
            f"no free IP in podCIDR {self.cidr} ({self.size} usable, {len(self._owner)} "
            f"given to pods, {len(excluded)} routed by someone else)"
        )

    def _take(self, uid: str, ip: str) -> str:
        self._owner[ip] = uid
        self._ips[uid] = ip
        return ip

    def release(self, uid: str) -> None:
        with self._lock:
            ip = self._ips.pop(uid, None)
            if ip is not None:
                self._owner.pop(ip, None)

    def ip_of(self, uid: str) -> str | None:
        with self._lock:
            return self._ips.get(uid)

    def in_use(self) -> dict[str, str]:
        """ip → uid"""
        with self._lock:
            return dict(self._owner)


# --------------------------------------------------------------------------- Pod fields


def _meta(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = pod.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _spec(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    spec = pod.get("spec")
    return spec if isinstance(spec, Mapping) else {}


def _status(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    status = pod.get("status")
    return status if isinstance(status, Mapping) else {}


def pod_uid(pod: Mapping[str, Any]) -> str:
    return str(_meta(pod).get("uid") or "")


def is_host_network(pod: Mapping[str, Any]) -> bool:
    return bool(_spec(pod).get("hostNetwork"))


def deletion_requested(pod: Mapping[str, Any]) -> bool:
    return bool(_meta(pod).get("deletionTimestamp"))


def is_terminal(pod: Mapping[str, Any]) -> bool:
    return _status(pod).get("phase") in ("Succeeded", "Failed")


def grace_seconds(pod: Mapping[str, Any], max_grace: float | None = None) -> float:
    """The termination grace period a kubelet would apply (see the module docstring)."""
    value = _meta(pod).get("deletionGracePeriodSeconds")
    if not isinstance(value, int | float):
        value = _spec(pod).get("terminationGracePeriodSeconds")
    if not isinstance(value, int | float):
        value = DEFAULT_GRACE_SECONDS
    grace = max(0.0, float(value))
    return grace if max_grace is None else min(grace, max_grace)


@dataclass(frozen=True)
class ServedPorts:
    """What the workload serves for a pod's declared container ports."""

    tcp: tuple[int, ...] = ()
    udp: tuple[int, ...] = ()
    http: tuple[int, ...] = ()
    skipped: tuple[str, ...] = ()
    """Ports that cannot be served (``SCTP/5000``), for a warning."""

    def args(self) -> list[str]:
        args: list[str] = []
        for flag, ports in (("--tcp", self.tcp), ("--udp", self.udp), ("--http", self.http)):
            for port in ports:
                args += [flag, str(port)]
        return args

    def __bool__(self) -> bool:
        return bool(self.tcp or self.udp or self.http)


def served_ports(pod: Mapping[str, Any]) -> ServedPorts:
    """Every containerPort of every container (init containers excluded): UDP per protocol,
    HTTP for TCP ports named ``http…``, TCP otherwise. A TCP port declared both ways is
    served as HTTP."""
    tcp: set[int] = set()
    udp: set[int] = set()
    http: set[int] = set()
    skipped: list[str] = []
    for container in _spec(pod).get("containers") or []:
        if not isinstance(container, Mapping):
            continue
        for port in container.get("ports") or []:
            if not isinstance(port, Mapping):
                continue
            number = port.get("containerPort")
            if not isinstance(number, int) or not 1 <= number <= 65535:
                continue
            protocol = str(port.get("protocol") or "TCP").upper()
            name = str(port.get("name") or "")
            if protocol == "UDP":
                udp.add(number)
            elif protocol == "TCP":
                (http if name.startswith("http") else tcp).add(number)
            else:
                skipped.append(f"{protocol}/{number}")
    return ServedPorts(
        tcp=tuple(sorted(tcp - http)),
        udp=tuple(sorted(udp)),
        http=tuple(sorted(http)),
        skipped=tuple(skipped),
    )


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _containers(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [c for c in _spec(pod).get("containers") or [] if isinstance(c, Mapping)]


def _conditions(
    pod: Mapping[str, Any], wanted: Sequence[tuple[str, bool, str | None, str | None]]
) -> list[dict[str, Any]]:
    """Conditions (type, status, reason, message), keeping lastTransitionTime of those
    whose status did not change, as a kubelet does."""
    old: dict[str, Mapping[str, Any]] = {}
    for c in _status(pod).get("conditions") or []:
        if isinstance(c, Mapping) and isinstance(c.get("type"), str):
            old[c["type"]] = c
    now = _now()
    result: list[dict[str, Any]] = []
    for kind, ok, reason, message in wanted:
        value = "True" if ok else "False"
        previous = old.get(kind)
        since = now
        if previous is not None and previous.get("status") == value:
            since = str(previous.get("lastTransitionTime") or now)
        condition: dict[str, Any] = {
            "type": kind,
            "status": value,
            "lastProbeTime": None,
            "lastTransitionTime": since,
        }
        if reason:
            condition["reason"] = reason
        if message:
            condition["message"] = message
        result.append(condition)
    return result


_SCHEDULED: tuple[str, bool, str | None, str | None] = ("PodScheduled", True, None, None)


# --------------------------------------------------------------------------- state file


def state_path(state_dir: Path, node: str) -> Path:
    return Path(state_dir) / f"podagent-{node}.json"


def _log_dir(path: Path) -> Path:
    return path.with_name(path.stem + ".logs")


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _is_workload(pid: int) -> bool:
    return WORKLOAD_MODULE in _cmdline(pid)


def _is_agent(pid: int, lab_id: str, node: str) -> bool:
    """A live ``python -m proxy.lab.podagent`` for this lab and node (not us)."""
    if pid == os.getpid():
        return False
    argv = _cmdline(pid)
    if AGENT_MODULE not in argv:
        return False
    text = " ".join(argv) + " "
    same_lab = f"--lab-id {lab_id} " in text or f"--lab-id={lab_id} " in text
    same_node = not node or f"--node {node} " in text or f"--node={node} " in text
    return same_lab and same_node


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[:1] != ["Z"]


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise PodAgentError(f"{path}: not a readable pod agent state file: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("lab_id"), str):
        raise PodAgentError(f"{path}: not a pod agent state file (no lab_id)")
    return data


def cleanup_from_state(path: Path) -> None:
    """Remove what a pod agent recorded in its state file, then the file.

    Stops the recorded agent if it still runs (SIGTERM, then SIGKILL; only a process whose
    command line is ``proxy.lab.podagent`` for the same lab id), kills the recorded
    workload pids that are still workloads (``/proc/<pid>/cmdline`` names
    ``proxy.harness.workload``) and whatever else runs in the recorded pod namespaces,
    deletes the node ends of the recorded veths and the namespaces — only names that
    start with the recorded lab id — and removes the file and the workload logs. A missing
    file is not an error. Raises PodAgentError if something could not be removed.
    """
    path = Path(path)
    data = _read_state(path)
    if data is None:
        return
    lab_id = str(data["lab_id"])
    node = str(data.get("node") or "")
    prefix = f"{lab_id}-"
    problems: list[str] = []
    agent_pid = data.get("agent_pid")
    if isinstance(agent_pid, int) and _alive(agent_pid) and _is_agent(agent_pid, lab_id, node):
        left = netns.kill_pids([agent_pid], grace=30.0)  # SIGTERM: it cleans up itself
        if left:
            problems.append(f"pod agent {agent_pid} survived SIGKILL")
    pods = [p for p in data.get("pods") or [] if isinstance(p, dict)]
    pids = [p["pid"] for p in pods if isinstance(p.get("pid"), int)]
    leftover = netns.kill_pids([p for p in pids if _alive(p) and _is_workload(p)])
    if leftover:
        problems.append(f"workloads that survived SIGKILL: {leftover}")
    node_netns = str(data.get("node_netns") or "")
    for entry in pods:
        pod_ns = str(entry.get("netns") or "")
        if not pod_ns.startswith(prefix) or not node_netns.startswith(prefix):
            problems.append(f"skipped {entry}: namespace names must start with {prefix!r}")
            continue
        try:
            net = podnet.PodNetwork(
                netns=pod_ns,
                node_netns=node_netns,
                veth=str(entry.get("veth") or ""),
                ip=str(entry.get("ip") or ""),
            )
        except ValueError as e:
            problems.append(f"skipped {entry}: {e}")
            continue
        problems += podnet.remove(net)
    shutil.rmtree(_log_dir(path), ignore_errors=True)
    if problems:
        raise PodAgentError(f"cleanup of {path}: " + "; ".join(problems))
    path.unlink(missing_ok=True)
    log.info("cleaned up from state", extra={"state": str(path), "pods": len(pods)})


# --------------------------------------------------------------------------- backoff


class _Backoff:
    def __init__(self, initial: float = 0.5, maximum: float = 10.0) -> None:
        self._initial = initial
        self._max = maximum
        self._steps = 0

    def next(self) -> float:
        delay = min(self._max, self._initial * 2.0**self._steps)
        self._steps = min(self._steps + 1, 16)
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self._steps = 0


# --------------------------------------------------------------------------- pod worker


class _PodWorker:
    """One pod's lifecycle on its own thread (a kubelet pod worker): set up, report,
    serve, terminate after the grace period, finalize."""

    def __init__(self, agent: PodAgent, uid: str, key: str) -> None:
        self.agent = agent
        self.uid = uid
        self.key = key
        self.wake = threading.Event()
        self.gone = False
        """The object left the API (DELETED, or replaced by another UID): stop at once."""
        self.net: podnet.PodNetwork | None = None
        self.process: ManagedProcess | None = None
        self.restarts = 0
        self.started_at: str | None = None
        self.failure: str | None = None
        self._finished = False
        self._thread = threading.Thread(target=self._run, name=f"pod-{key}", daemon=True)

    # -- plumbing ----------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _extra(self, **fields: Any) -> dict[str, Any]:
        return {"object": self.key, "node": self.agent.node, **fields}

    def _pod(self) -> dict[str, Any] | None:
        return self.agent._pod_object(self.uid)

    def _quit(self) -> bool:
        return self.gone or self.agent.stopping

    def _wait(self, seconds: float) -> None:
        self.wake.wait(max(0.0, seconds))

    def _run(self) -> None:
        try:
            self._lifecycle()
        except Exception:
            log.exception("pod worker failed; tearing the pod down", extra=self._extra())
        finally:
            try:
                self._teardown()
            except Exception:
                log.exception("pod teardown failed", extra=self._extra())
            self.agent._worker_done(self, finished=self._finished)

    # -- lifecycle ---------------------------------------------------------------------

    def _lifecycle(self) -> None:
        pod = self._pod()
        if pod is None:
            return
        if is_host_network(pod):
            self._host_network()
            return
        if not self._set_up():
            return
        if not self._serve():
            return
        self._terminate()

    def _set_up(self) -> bool:
        """Network + workload, retried with backoff; False when there is nothing more to
        do (stopping, gone, or a deleted pod finalized without running)."""
        backoff = _Backoff()
        while True:
            self.wake.clear()
            if self._quit():
                return False
            pod = self._pod()
            if pod is None:
                return False
            if deletion_requested(pod):
                log.info("pod deleted before it ran; finalizing", extra=self._extra())
                self._finalize(pod, exit_code=0)
                return False
            try:
                self._create(pod)
                self.failure = None
                return True
            except (SetupError, HarnessError, OSError) as e:
                message = str(e)
                delay = backoff.next()
                log.error(
                    "pod setup failed; retrying",
                    extra=self._extra(error=message, retry_in=f"{delay:.1f}s"),
                )
                self._teardown(keep_ip=True)
                self._report_failure(pod, message)
                self._wait(delay)

    def _create(self, pod: Mapping[str, Any]) -> None:
        agent = self.agent
        preferred = _status(pod).get("podIP")
        ip = agent._assign_ip(self.uid, preferred if isinstance(preferred, str) else None)
        net = agent._new_network(self.uid, self.key, ip)
        podnet.create(net)  # on failure it removes what it made (and nothing else)
        self.net = net
        log.info("pod network created", extra=self._extra(ip=ip, netns=net.netns, veth=net.veth))
        self._start_workload(pod)

    def _start_workload(self, pod: Mapping[str, Any]) -> None:
        assert self.net is not None
        name = str(_meta(pod).get("name") or "")
        ports = served_ports(pod)
        if ports.skipped:
            log.warning(
                "ports the workload cannot serve are ignored",
                extra=self._extra(ports=",".join(ports.skipped)),
            )
        self.started_at = _now()
        if not ports:
            log.info("pod declares no port: no workload process", extra=self._extra())
            return
        argv = netns.exec_argv(
            self.net.netns, python_argv(WORKLOAD_MODULE, "--name", name, *ports.args())
        )
        log_path = self.agent._workload_log(self.net.netns)
        process = ManagedProcess.start(
            argv, label=f"workload of pod {self.key}", log=log_path, stdout=subprocess.PIPE
        )
        self.process = process
        self.agent._record(self.uid, pid=process.pid)
        line = self._wait_ready(process)
        self.started_at = _now()
        log.info(
            "workload ready",
            extra=self._extra(pid=process.pid, ready=line.decode(errors="replace")),
        )

    def _wait_ready(self, process: ManagedProcess) -> bytes:
        stdout = process.popen.stdout
        assert stdout is not None
        reader = LineReader(stdout.fileno())
        deadline = time.monotonic() + self.agent.ready_timeout
        try:
            while True:
                if self._quit():
                    raise SetupError("stopped while the workload was starting")
                if time.monotonic() > deadline:
                    raise SetupError(
                        f"workload not ready after {self.agent.ready_timeout:.0f}s: "
                        f"{log_tail(process.log) or '(no stderr)'}"
                    )
                try:
                    line = reader.readline(0.5)
                except TimeoutError:
                    continue
                if line is None:
                    try:
                        code: int | str = process.popen.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        code = "(still running, stdout closed)"
                    raise SetupError(
                        f"workload exited with {code} before it was ready: "
                        f"{log_tail(process.log) or '(no stderr)'}"
                    )
                if line.startswith(READY_PREFIX):
                    return line
        finally:
            stdout.close()

    def _serve(self) -> bool:
        """Report Running and keep the workload alive until the pod is deleted; False if
        the worker must end without the termination sequence (stopping, gone)."""
        backoff = _Backoff()
        reported = False
        restart = False
        while True:
            self.wake.clear()
            if self._quit():
                return False
            pod = self._pod()
            if pod is None:
                return False
            if deletion_requested(pod):
                return True
            if self.process is not None and not self.process.running():
                code = self.process.popen.returncode
                self.process = None
                self.restarts += 1
                restart = True
                log.warning(
                    "workload exited; restarting it",
                    extra=self._extra(exit_code=code, restarts=self.restarts),
                )
            if restart:
                try:
                    self._start_workload(pod)
                except (SetupError, HarnessError, OSError) as e:
                    if self.process is not None:
                        self.process.stop(STOP_GRACE)
                        self.process = None
                    delay = backoff.next()
                    log.error(
                        "workload restart failed; retrying",
                        extra=self._extra(error=str(e), retry_in=f"{delay:.1f}s"),
                    )
                    self._report_failure(pod, str(e))
                    self._wait(delay)
                    continue
                restart = False
                reported = False
            if not reported:
                reported = self._patch_status(pod, self._running_status(pod))
                if reported:
                    backoff.reset()
                    log.info("pod running", extra=self._extra(ip=self.net.ip if self.net else ""))
            self._wait(1.0 if reported else backoff.next())

    def _terminate(self) -> None:
        pod = self._pod()
        if pod is None:
            return
        grace = grace_seconds(pod, self.agent.max_grace)
        deadline = time.monotonic() + grace
        log.info("pod terminating", extra=self._extra(grace=f"{grace:g}s"))
        while True:
            self.wake.clear()
            if self._quit():
                return
            pod = self._pod()
            if pod is None:
                return
            new_grace = grace_seconds(pod, self.agent.max_grace)
            if new_grace < grace:
                deadline = min(deadline, time.monotonic() + new_grace)
                grace = new_grace
                log.info("grace period shortened", extra=self._extra(grace=f"{grace:g}s"))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._wait(min(remaining, 1.0))
        code = self._teardown()
        log.info("pod stopped", extra=self._extra(exit_code=code))
        self._finalize(pod, exit_code=code)

    def _host_network(self) -> None:
        backoff = _Backoff()
        reported = False
        self.started_at = _now()
        while True:
            self.wake.clear()
            if self._quit():
                return
            pod = self._pod()
            if pod is None:
                return
            if deletion_requested(pod):
                self._finalize(pod, exit_code=0)
                return
            if not reported:
                node_ip = self.agent.node_ip
                if node_ip is None:
                    log.warning("node has no InternalIP yet; waiting", extra=self._extra())
                else:
                    reported = self._patch_status(pod, self._running_status(pod, ip=node_ip))
                    if reported:
                        log.info("hostNetwork pod running", extra=self._extra(ip=node_ip))
            self._wait(1.0 if reported else backoff.next())

    def _finalize(self, pod: Mapping[str, Any], exit_code: int) -> None:
        """Terminal status, then delete with grace 0 and a UID precondition (retried)."""
        backoff = _Backoff()
        status_written = False
        while not self._quit():
            self.wake.clear()
            if not status_written:
                status_written = self._patch_status(pod, self._terminal_status(pod, exit_code))
                if self.gone:
                    break
                if not status_written:
                    self._wait(backoff.next())
                    continue
            namespace = str(_meta(pod).get("namespace") or "default")
            name = str(_meta(pod).get("name") or "")
            try:
                self.agent.writer.request(
                    "DELETE",
                    f"/api/v1/namespaces/{namespace}/pods/{name}",
                    {
                        "kind": "DeleteOptions",
                        "apiVersion": "v1",
                        "gracePeriodSeconds": 0,
                        "preconditions": {"uid": self.uid},
                    },
                )
            except ApiError as e:
                if e.status in (404, 409):
                    break  # gone already, or replaced by a pod of the same name
                delay = backoff.next()
                log.warning(
                    "deleting the pod failed; retrying",
                    extra=self._extra(error=str(e), retry_in=f"{delay:.1f}s"),
                )
                self._wait(delay)
                continue
            log.info("pod deleted", extra=self._extra())
            break
        self._finished = True

    def _teardown(self, *, keep_ip: bool = False) -> int:
        """Stop the workload, remove the network, release the IP (idempotent). The
        workload's exit status as a container's exitCode (0 without a process)."""
        code = 0
        if self.process is not None:
            status = self.process.stop(STOP_GRACE)
            code = 128 - status if status < 0 else status
            self.process = None
        if self.net is not None:
            problems = podnet.remove(self.net)
            if problems:
                # Keep the IP and the record: cleanup_from_state / the next stop retries.
                log.error(
                    "pod network removal failed", extra=self._extra(error="; ".join(problems))
                )
                return code
            log.info("pod network removed", extra=self._extra(netns=self.net.netns))
            self.net = None
        self.agent._forget(self.uid, release_ip=not keep_ip)
        return code

    # -- status ------------------------------------------------------------------------

    def _patch_status(self, pod: Mapping[str, Any], body: Mapping[str, Any]) -> bool:
        namespace = str(_meta(pod).get("namespace") or "default")
        name = str(_meta(pod).get("name") or "")
        try:
            self.agent.writer.request(
                "PATCH",
                f"/api/v1/namespaces/{namespace}/pods/{name}/status",
                body,
                content_type="application/merge-patch+json",
            )
        except ApiError as e:
            if e.status in (404, 409):
                # Deleted, or replaced by a pod of the same name (UID precondition).
                log.info("pod is gone; not reporting", extra=self._extra(error=str(e)))
                self.gone = True
                return False
            log.warning("status update failed; retrying", extra=self._extra(error=str(e)))
            return False
        return True

    def _host_ips(self) -> dict[str, Any]:
        node_ip = self.agent.node_ip
        if node_ip is None:
            return {}
        return {"hostIP": node_ip, "hostIPs": [{"ip": node_ip}]}

    def _container_id(self, container: str) -> str:
        return "containerd://" + _sha256(f"{self.uid}/{container}/{self.restarts}")

    def _container_status(
        self, container: Mapping[str, Any], state: dict[str, Any], ready: bool
    ) -> dict[str, Any]:
        name = str(container.get("name") or "")
        image = str(container.get("image") or "")
        return {
            "name": name,
            "image": image,
            "imageID": f"{image.split('@')[0]}@sha256:{_sha256(image)}",
            "containerID": self._container_id(name),
            "ready": ready,
            "started": ready,
            "restartCount": self.restarts,
            "state": state,
        }

    def _running_status(self, pod: Mapping[str, Any], ip: str | None = None) -> dict[str, Any]:
        pod_ip = ip if ip is not None else (self.net.ip if self.net else None)
        assert pod_ip is not None
        started = self.started_at or _now()
        old_start = _status(pod).get("startTime")
        status: dict[str, Any] = {
            "phase": "Running",
            **self._host_ips(),
            "podIP": pod_ip,
            "podIPs": [{"ip": pod_ip}],
            "startTime": old_start if isinstance(old_start, str) else started,
            "reason": None,
            "message": None,
            "conditions": _conditions(
                pod,
                [
                    ("PodReadyToStartContainers", True, None, None),
                    ("Initialized", True, None, None),
                    ("Ready", True, None, None),
                    ("ContainersReady", True, None, None),
                    _SCHEDULED,
                ],
            ),
            "containerStatuses": [
                self._container_status(c, {"running": {"startedAt": started}}, True)
                for c in _containers(pod)
            ],
        }
        return {"metadata": {"uid": self.uid}, "status": status}

    def _terminal_status(self, pod: Mapping[str, Any], exit_code: int) -> dict[str, Any]:
        now = _now()
        phase = "Succeeded" if exit_code == 0 else "Failed"
        reason = "Completed" if exit_code == 0 else "Error"
        containers = _containers(pod)
        unready = (
            f"containers with unready status: [{' '.join(str(c.get('name')) for c in containers)}]"
        )
        status: dict[str, Any] = {
            "phase": phase,
            **self._host_ips(),
            "conditions": _conditions(
                pod,
                [
                    ("PodReadyToStartContainers", False, None, None),
                    ("Initialized", True, None, None),
                    ("Ready", False, "PodCompleted" if exit_code == 0 else "PodFailed", unready),
                    (
                        "ContainersReady",
                        False,
                        "PodCompleted" if exit_code == 0 else "PodFailed",
                        unready,
                    ),
                    _SCHEDULED,
                ],
            ),
            "containerStatuses": [
                self._container_status(
                    c,
                    {
                        "terminated": {
                            "exitCode": exit_code,
                            "reason": reason,
                            "startedAt": self.started_at or now,
                            "finishedAt": now,
                            "containerID": self._container_id(str(c.get("name") or "")),
                        }
                    },
                    False,
                )
                for c in containers
            ],
        }
        return {"metadata": {"uid": self.uid}, "status": status}

    def _report_failure(self, pod: Mapping[str, Any], message: str) -> None:
        """Pending + FailedCreatePodSandBox in the status, and a Warning Event (once per
        distinct message)."""
        containers = _containers(pod)
        unready = (
            f"containers with unready status: [{' '.join(str(c.get('name')) for c in containers)}]"
        )
        status: dict[str, Any] = {
            "phase": "Pending",
            **self._host_ips(),
            "conditions": _conditions(
                pod,
                [
                    ("PodReadyToStartContainers", False, "FailedCreatePodSandBox", message),
                    ("Initialized", True, None, None),
                    ("Ready", False, "ContainersNotReady", unready),
                    ("ContainersReady", False, "ContainersNotReady", unready),
                    _SCHEDULED,
                ],
            ),
            "containerStatuses": [
                self._container_status(c, {"waiting": {"reason": "ContainerCreating"}}, False)
                for c in containers
            ],
        }
        self._patch_status(pod, {"metadata": {"uid": self.uid}, "status": status})
        if message != self.failure:
            self.failure = message
            self.agent._event(pod, "Warning", "FailedCreatePodSandBox", message)


# --------------------------------------------------------------------------- the agent


def _internal_ip(node: Mapping[str, Any]) -> str | None:
    for address in _status(node).get("addresses") or []:
        if isinstance(address, Mapping) and address.get("type") == "InternalIP":
            value = str(address.get("address") or "")
            with contextlib.suppress(ValueError):
                if ipaddress.ip_address(value).version == 4:
                    return value
    return None


def current_netns_name() -> str | None:
    """The ``/run/netns`` name of the calling thread's network namespace, if it has one."""
    me = nsutil.thread_netns_id()
    try:
        entries = sorted(nsutil.NETNS_DIR.iterdir())
    except OSError:
        return None
    for entry in entries:
        try:
            if nsutil.netns_id(entry.name) == me:
                return entry.name
        except (OSError, ValueError):
            continue
    return None


CLONE_NEWNS = 0x00020000


def _mount_ns(pid: int | str) -> tuple[int, int] | None:
    try:
        st = os.stat(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _parent_pid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def join_launcher_mount_namespace(node_netns: str) -> int | None:
    """Leave the private mount namespace ``ip netns exec`` gave us (single-threaded only).

    ``ip netns exec`` runs its command in a new mount namespace whose mounts are slaves of
    the caller's: a namespace created there with ``ip netns add`` (a bind mount under
    /run/netns) would be invisible to the lab, which could then neither reach nor clean
    it up. So the agent joins the mount namespace of its nearest ancestor that differs
    from its own and sees the same node namespace at ``/run/netns/<node_netns>`` (the
    lab's). The network namespace does not change. Returns that ancestor's pid, or None
    when there is nothing to do.
    """
    own = _mount_ns("self")
    target = nsutil.netns_id(node_netns)
    pid = _parent_pid(os.getpid())
    while pid is not None and pid > 1:
        other = _mount_ns(pid)
        if other is not None and other != own:
            try:
                st = os.stat(f"/proc/{pid}/root/run/netns/{node_netns}")
            except OSError:
                st = None
            if st is not None and (st.st_dev, st.st_ino) == target:
                break
        pid = _parent_pid(pid)
    else:
        return None
    if threading.active_count() > 1:
        raise PodAgentError("joining a mount namespace needs a single-threaded process")
    cwd = os.getcwd()
    fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNS) != 0:
            err = ctypes.get_errno()
            raise PodAgentError(f"setns(mount namespace of pid {pid}): {os.strerror(err)}")
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        os.chdir(cwd)  # setns(CLONE_NEWNS) moves us to the namespace's root
    return pid


class PodAgent:
    """The pod agent of one node (see the module docstring); ``start()`` … ``stop()``.

    ``node_netns``: the node's namespace. None means "the namespace this thread runs in"
    (the command line: ``ip netns exec <node-ns> python -m proxy.lab.podagent``);
    given, the agent's threads enter it (in-process use). Either way it must be a named
    namespace whose name starts with ``<lab_id>-``.
    """

    def __init__(
        self,
        node: str,
        client: ApiClient,
        *,
        lab_id: str,
        state_dir: Path,
        node_netns: str | None = None,
        max_grace: float | None = None,
        ready_timeout: float = READY_TIMEOUT,
        resync_period: float = RESYNC_PERIOD,
    ) -> None:
        if not LAB_ID_RE.fullmatch(lab_id):
            raise ValueError(f"lab id {lab_id!r} must match {LAB_ID_RE.pattern}")
        if not NODE_NAME_RE.fullmatch(node):
            raise ValueError(f"node name {node!r} is not a valid Node name")
        if max_grace is not None and max_grace < 0:
            raise ValueError(f"max_grace must be >= 0, got {max_grace}")
        self.node = node
        self.client = client
        self.lab_id = lab_id
        self.state_dir = Path(state_dir)
        self.state_path = state_path(self.state_dir, node)
        self.max_grace = max_grace
        self.ready_timeout = ready_timeout
        self.resync_period = resync_period
        self.writer = ApiWriter(client)
        self.node_ip: str | None = None
        self.error: BaseException | None = None
        """What ended the agent's main thread, if something did (see the log)."""
        self._node_netns_arg = node_netns
        self._node_netns: str | None = None
        self._stopping = threading.Event()
        self._lock = threading.RLock()
        self._pods: dict[str, dict[str, Any]] = {}
        """uid → latest Pod object"""
        self._uid_by_key: dict[str, str] = {}
        self._workers: dict[str, _PodWorker] = {}
        self._done: set[str] = set()
        """UIDs finalized (terminal status written, delete sent): never run again."""
        self._retry_at: dict[str, float] = {}
        self._records: dict[str, dict[str, Any]] = {}
        """uid → what exists for it (namespace, veth, ip, pid): the state file."""
        self._synced = False
        self._ipam: IPAllocator | None = None
        self._reflector: Reflector | None = None
        self._thread: threading.Thread | None = None
        self._started = False

    # -- public ------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def node_netns(self) -> str:
        if self._node_netns is None:
            raise RuntimeError("the pod agent is not started")
        return self._node_netns

    @property
    def synced(self) -> bool:
        return self._synced

    def pods(self) -> dict[str, dict[str, Any]]:
        """``ns/name`` → {uid, netns, veth, ip, pid} of every pod network that exists."""
        with self._lock:
            return {str(r["pod"]): dict(r) for r in self._records.values()}

    def start(self) -> PodAgent:
        """Check the namespace, clean up a previous run's leftovers, start watching."""
        if self._started:
            raise RuntimeError("the pod agent was already started")
        self._started = True
        self._node_netns = self._resolve_node_netns()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._clean_previous_run()
        self._save_state()
        ns = self._node_netns
        target = (
            self._main
            if self._node_netns_arg is None
            else (lambda: nsutil.run_in_netns(ns, self._main))
        )
        self._thread = threading.Thread(target=target, name=f"podagent-{self.node}", daemon=True)
        self._thread.start()
        log.info(
            "pod agent started",
            extra={"node": self.node, "netns": ns, "state": str(self.state_path)},
        )
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every workload and delete every pod namespace; the Pods stay in the API."""
        self._stopping.set()
        if self._thread is None:  # never started (or start() failed): nothing is ours
            self.writer.close()
            return
        with self._lock:
            reflector = self._reflector
            workers = list(self._workers.values())
        if reflector is not None:
            reflector.stop()
        for worker in workers:
            worker.wake.set()
        deadline = time.monotonic() + timeout
        for worker in workers:
            if not worker.join(max(0.0, deadline - time.monotonic())):
                log.error("pod worker did not stop in time", extra={"object": worker.key})
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(max(1.0, deadline - time.monotonic()))
        self._remove_leftovers()
        self.writer.close()
        with self._lock:
            left = dict(self._records)
        if left:
            self._save_state()
            log.error(
                "pod agent stopped; some pod networks could not be removed",
                extra={"node": self.node, "left": ",".join(r["netns"] for r in left.values())},
            )
        else:
            with contextlib.suppress(OSError):
                self.state_path.unlink(missing_ok=True)
            shutil.rmtree(_log_dir(self.state_path), ignore_errors=True)
            log.info("pod agent stopped", extra={"node": self.node})

    def __enter__(self) -> PodAgent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- start-up ----------------------------------------------------------------------

    def _resolve_node_netns(self) -> str:
        name = self._node_netns_arg
        if name is None:
            name = current_netns_name()
            if name is None:
                raise PodAgentError(
                    "the pod agent must run inside its node's named network namespace: "
                    f"ip netns exec {self.lab_id}-<node> python -m {AGENT_MODULE} …"
                )
        if not name.startswith(f"{self.lab_id}-"):
            raise PodAgentError(
                f"node namespace {name!r} does not belong to lab {self.lab_id!r} "
                f"(its name must start with {self.lab_id}-)"
            )
        try:
            ident = nsutil.netns_id(name)
        except (OSError, ValueError) as e:
            raise PodAgentError(f"node namespace {name!r}: {e}") from e
        if ident == nsutil.pid_netns_id(1):
            raise PodAgentError(f"{name!r} is the root network namespace; refusing to use it")
        return name

    def _clean_previous_run(self) -> None:
        data = _read_state(self.state_path)
        if data is None:
            return
        pid = data.get("agent_pid")
        if isinstance(pid, int) and _alive(pid) and _is_agent(pid, self.lab_id, self.node):
            raise PodAgentError(
                f"another pod agent (pid {pid}) runs for node {self.node} "
                f"(state file {self.state_path})"
            )
        log.info(
            "removing what a previous pod agent left",
            extra={"node": self.node, "state": str(self.state_path)},
        )
        cleanup_from_state(self.state_path)

    def _main(self) -> None:
        try:
            found = self._wait_for_node()
            if found is None:
                return
            cidr, self.node_ip = found
            self._ipam = IPAllocator(cidr)
            log.info(
                "node found",
                extra={"node": self.node, "pod_cidr": cidr, "node_ip": self.node_ip or "none"},
            )
            spec = ResourceSpec(
                kind="Pod", path="/api/v1/pods", field_selector=f"spec.nodeName={self.node}"
            )
            reflector = Reflector(
                self.client,
                spec,
                self._on_event,
                on_synced=self._on_synced,
                name=f"pods-{self.node}",
            )
            with self._lock:
                if self._stopping.is_set():
                    return
                self._reflector = reflector
                reflector.start()
            while not self._stopping.wait(self.resync_period):
                self._housekeeping()
        except Exception as e:
            self.error = e
            log.exception("pod agent failed", extra={"node": self.node})

    def _read_node(self) -> dict[str, Any]:
        return self.client.get_json(f"/api/v1/nodes/{self.node}")

    def _wait_for_node(self) -> tuple[str, str | None] | None:
        backoff = _Backoff(0.5, 10.0)
        while not self._stopping.is_set():
            try:
                node = self._read_node()
            except ApiError as e:
                log.warning(
                    "cannot read the node; retrying", extra={"node": self.node, "error": str(e)}
                )
            else:
                cidr = _spec(node).get("podCIDR")
                if isinstance(cidr, str) and cidr:
                    return cidr, _internal_ip(node)
                log.warning("node has no spec.podCIDR yet; waiting", extra={"node": self.node})
            self._stopping.wait(backoff.next())
        return None

    def _housekeeping(self) -> None:
        if self.node_ip is None:
            with contextlib.suppress(ApiError):
                self.node_ip = _internal_ip(self._read_node())
        with self._lock:
            for uid in list(self._pods):
                self._ensure_worker(uid)

    # -- events ------------------------------------------------------------------------

    def _on_event(self, event: EventType, obj: dict[str, Any]) -> None:
        key = object_key(obj)
        with self._lock:
            if event == "DELETED":
                uid = self._uid_by_key.pop(key, None)
                if uid is not None:
                    self._drop(uid)
                return
            uid = pod_uid(obj)
            if not uid:
                return
            old = self._uid_by_key.get(key)
            if old is not None and old != uid:
                self._drop(old)  # deleted and recreated while we were not watching
            self._uid_by_key[key] = uid
            self._pods[uid] = obj
            worker = self._workers.get(uid)
            if worker is not None:
                worker.wake.set()
            else:
                self._ensure_worker(uid)

    def _drop(self, uid: str) -> None:
        self._pods.pop(uid, None)
        self._done.discard(uid)
        self._retry_at.pop(uid, None)
        worker = self._workers.get(uid)
        if worker is not None:
            worker.gone = True
            worker.wake.set()

    def _on_synced(self) -> None:
        """The first full list: reserve the IPs pods already report, then run them."""
        assert self._ipam is not None
        with self._lock:
            reserved = 0
            for uid, pod in sorted(self._pods.items(), key=lambda item: object_key(item[1])):
                ip = _status(pod).get("podIP")
                if is_host_network(pod) or is_terminal(pod) or not isinstance(ip, str):
                    continue
                if self._ipam.reserve(uid, ip):
                    reserved += 1
                else:
                    log.warning(
                        "pod reports an IP that cannot be kept; it gets a new one",
                        extra={"object": object_key(pod), "ip": ip},
                    )
            self._synced = True
            log.info(
                "pods listed",
                extra={"node": self.node, "pods": len(self._pods), "reserved_ips": reserved},
            )
            for uid in list(self._pods):
                self._ensure_worker(uid)

    def _ensure_worker(self, uid: str) -> None:
        """Start a worker for a pod that needs one (lock held)."""
        if self._stopping.is_set() or not self._synced:
            return
        if uid in self._workers or uid in self._done:
            return
        if self._retry_at.get(uid, 0.0) > time.monotonic():
            return
        pod = self._pods.get(uid)
        if pod is None or (is_terminal(pod) and not deletion_requested(pod)):
            return
        worker = _PodWorker(self, uid, object_key(pod))
        self._workers[uid] = worker
        worker.start()

    def _worker_done(self, worker: _PodWorker, *, finished: bool) -> None:
        with self._lock:
            if self._workers.get(worker.uid) is worker:
                del self._workers[worker.uid]
            if finished:
                self._done.add(worker.uid)
            elif not worker.gone and not self._stopping.is_set():
                # Ended unexpectedly: housekeeping starts a new worker after a pause.
                self._retry_at[worker.uid] = time.monotonic() + self.resync_period

    def _pod_object(self, uid: str) -> dict[str, Any] | None:
        with self._lock:
            return self._pods.get(uid)

    # -- resources ---------------------------------------------------------------------

    def _assign_ip(self, uid: str, preferred: str | None) -> str:
        assert self._ipam is not None
        routes = podnet.host_routes(self.node_netns)
        with self._lock:
            ours = {str(r["veth"]) for r in self._records.values()}
        foreign = {ip for ip, dev in routes.items() if dev not in ours}
        return self._ipam.assign(uid, preferred, exclude=foreign)

    def _new_network(self, uid: str, key: str, ip: str) -> podnet.PodNetwork:
        """Unique names for a pod's namespace and veth, recorded before they exist."""
        node_ns = self.node_netns
        with self._lock:
            used_veths = {str(r["veth"]) for r in self._records.values()}
            used_ns = {str(r["netns"]) for r in self._records.values()}
        for salt in range(16):
            veth = podnet.veth_name(uid, salt)
            pod_ns = f"{self.lab_id}-pod-{veth[len(podnet.VETH_PREFIX) :][:8]}"
            if veth in used_veths or pod_ns in used_ns or netns.exists(pod_ns):
                continue
            if podnet.link_exists(node_ns, veth):
                continue
            net = podnet.PodNetwork(netns=pod_ns, node_netns=node_ns, veth=veth, ip=ip)
            with self._lock:
                self._records[uid] = {
                    "pod": key,
                    "uid": uid,
                    "netns": pod_ns,
                    "veth": veth,
                    "ip": ip,
                    "pid": None,
                }
            self._save_state()
            return net
        raise SetupError(f"no free namespace/veth name for pod {key}")

    def _record(self, uid: str, **fields: Any) -> None:
        with self._lock:
            record = self._records.get(uid)
            if record is None:
                return
            record.update(fields)
        self._save_state()

    def _forget(self, uid: str, *, release_ip: bool) -> None:
        with self._lock:
            removed = self._records.pop(uid, None)
        if release_ip and self._ipam is not None and self._ipam.ip_of(uid) is not None:
            self._ipam.release(uid)
            with self._lock:
                waiting = [w for w in self._workers.values() if w.failure is not None]
            for worker in waiting:
                worker.wake.set()  # a pod that found no free IP can try again now
        if removed is not None:
            self._save_state()

    def _remove_leftovers(self) -> None:
        """After the workers: remove what a stuck or failed worker left (stop only)."""
        with self._lock:
            records = list(self._records.items())
        for uid, record in records:
            pid = record.get("pid")
            if isinstance(pid, int) and _alive(pid) and _is_workload(pid):
                netns.kill_pids([pid])
            net = podnet.PodNetwork(
                netns=str(record["netns"]),
                node_netns=self.node_netns,
                veth=str(record["veth"]),
                ip=str(record["ip"]),
            )
            problems = podnet.remove(net)
            if problems:
                log.error(
                    "cannot remove a pod network",
                    extra={"object": record["pod"], "error": "; ".join(problems)},
                )
            else:
                self._forget(uid, release_ip=True)

    def _save_state(self) -> None:
        with self._lock:
            data = {
                "version": STATE_VERSION,
                "node": self.node,
                "lab_id": self.lab_id,
                "node_netns": self._node_netns,
                "agent_pid": os.getpid(),
                "pods": sorted(self._records.values(), key=lambda r: str(r["netns"])),
            }
            tmp = self.state_path.with_name(self.state_path.name + ".tmp")
            try:
                tmp.write_text(json.dumps(data, indent=2) + "\n")
                os.replace(tmp, self.state_path)
            except OSError as e:
                log.error(
                    "cannot write the state file",
                    extra={"state": str(self.state_path), "error": str(e)},
                )

    def _workload_log(self, pod_netns: str) -> Path:
        directory = _log_dir(self.state_path)
        directory.mkdir(parents=True, exist_ok=True)
        return directory / f"{pod_netns}.log"

    def _event(self, pod: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        """A core/v1 Event about the pod (best effort, as kubelet's recorder)."""
        meta = _meta(pod)
        namespace = str(meta.get("namespace") or "default")
        now = _now()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name')}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "namespace": namespace,
                "name": meta.get("name"),
                "uid": meta.get("uid"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": kind,
            "source": {"component": "kubelet", "host": self.node},
            "reportingComponent": "kube-proxy-py/podagent",
            "reportingInstance": self.node,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.writer.request("POST", f"/api/v1/namespaces/{namespace}/events", body)
        except ApiError as e:
            log.info(
                "cannot record an event", extra={"object": object_key(dict(pod)), "error": str(e)}
            )


# --------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m {AGENT_MODULE}",
        description="A kubelet stand-in for one lab node: runs its Pods as network "
        "namespaces with the built-in workload. Start it inside the node's namespace.",
    )
    parser.add_argument("--node", required=True, help="the Node this agent runs pods for")
    parser.add_argument(
        "--kubeconfig",
        required=True,
        help="credentials of the node (client certificate CN system:node:NODE, O system:nodes)",
    )
    parser.add_argument(
        "--lab-id", required=True, help="prefix of every namespace the agent may touch"
    )
    parser.add_argument(
        "--state-dir", required=True, type=Path, help="where podagent-NODE.json is kept"
    )
    parser.add_argument(
        "--max-grace",
        type=float,
        default=None,
        metavar="SECONDS",
        help="cap on every pod's termination grace period",
    )
    parser.add_argument("-v", "--v", type=int, default=0, dest="verbosity", help="log level")
    args = parser.parse_args(argv)
    if args.max_grace is not None and args.max_grace < 0:
        parser.error("--max-grace must be >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.kubeconfig = os.path.abspath(args.kubeconfig)
    args.state_dir = args.state_dir.absolute()
    logs.setup(args.verbosity)
    stop_requested: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop_requested.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    node_netns = current_netns_name()
    try:
        if node_netns is not None:
            joined = join_launcher_mount_namespace(node_netns)
            if joined is not None:
                log.info("joined the launcher's mount namespace", extra={"pid": joined})
    except (PodAgentError, OSError) as e:
        print(f"podagent: {e}", file=sys.stderr)
        return 2
    try:
        client = ApiClient.from_config(args.kubeconfig)
    except ConfigError as e:
        print(f"podagent: {e}", file=sys.stderr)
        return 2
    try:
        agent = PodAgent(
            args.node,
            client,
            lab_id=args.lab_id,
            state_dir=args.state_dir,
            max_grace=args.max_grace,
        ).start()
    except (PodAgentError, ValueError) as e:
        print(f"podagent: {e}", file=sys.stderr)
        client.close()
        return 2
    while not stop_requested and agent.alive:
        time.sleep(0.2)
    if stop_requested:
        log.info(
            "signal received; stopping", extra={"signal": signal.Signals(stop_requested[0]).name}
        )
    agent.stop()
    client.close()
    return 1 if agent.error is not None else 0


if __name__ == "__main__":
    raise SystemExit(main())
