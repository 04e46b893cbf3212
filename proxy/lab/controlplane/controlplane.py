"""A real Kubernetes control plane: etcd + kube-apiserver (+ controllers, scheduler).

Used by the e2e tests and by the lab. Two placements:

- root namespace (``netns=None``, the default): every process listens on 127.0.0.1
  only, on ports picked free at start (a collision is retried with new ports).
- inside a lab network namespace (``netns="<topology id>-control-plane"``): every
  process runs under ``ip netns exec`` (which execs in place: the pid we track is the
  component's own), on the namespace's fixed well-known ports (etcd 2379/2380 on its
  127.0.0.1, kube-apiserver 6443 on ``bind_address``, the namespace's LAN address, and
  kube-controller-manager 10257 / kube-scheduler 10259 on its 127.0.0.1). Node agents
  in node namespaces then reach ``https://<bind_address>:6443`` over the lab's LAN;
  nothing listens in the root namespace. The test process stays in the root namespace:
  ``kubectl()`` runs as ``ip netns exec NS kubectl``, and ``api()`` and the readiness
  checks use sockets created inside the namespace (``proxy.host.sockets``).

Either way, state, keys and logs live in a per-fixture work directory that ``stop()``
removes.

    with ControlPlane(build(), with_controllers=True) as cp:
        cp.kubectl("create", "namespace", "demo")

    with Topology(spec_with_a_control_plane_client) as topo:
        with ControlPlane(build(), netns=topo.ns("control-plane"),
                          bind_address="192.168.50.2", with_controllers=True) as cp:
            topo.popen("node-a", ["kube-proxy-py", "run", f"--kubeconfig={cp.kubeconfig}"])

No kubelet runs: Pods never start by themselves. Tests bind a Pod to a Node with
``spec.nodeName`` and patch its status (phase, Ready condition, podIPs) themselves; the
real controllers (EndpointSlice, garbage collector, …) then do their part.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import functools
import http.client
import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from proxy.apiclient import transport
from proxy.apiclient.client import ApiClient
from proxy.apiclient.config import ClientConfig
from proxy.host import netns as hostns
from proxy.host import sockets
from proxy.host.process import die_with_parent
from proxy.lab.build import BIN_ENV, K8S_VERSION
from proxy.lab.pki import CertificateAuthority, CertKey, SigningKey
from proxy.lab.ports import LOOPBACK, free_port, port_is_free

log = logging.getLogger(__name__)

ETCD = "etcd"
APISERVER = "kube-apiserver"
CONTROLLER_MANAGER = "kube-controller-manager"
SCHEDULER = "kube-scheduler"
KUBECTL = "kubectl"

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"

DEFAULT_CONTROLLERS: tuple[str, ...] = ("*", "-node-lifecycle-controller")
"""Every default controller except node lifecycle.

No kubelet ever renews a Node's lease here, so the node lifecycle controller would mark
every Node NotReady after the grace period, flip its Pods to Ready=False (emptying the
EndpointSlices) and, five minutes later, evict them. Pass ``controllers=("*",)`` to
keep it.
"""

NETNS_PORTS: dict[tuple[str, str], int] = {
    (ETCD, "client"): 2379,
    (ETCD, "peer"): 2380,
    (APISERVER, "secure"): 6443,
    (CONTROLLER_MANAGER, "secure"): 10257,
    (SCHEDULER, "secure"): 10259,
}
"""The ports every component uses inside a lab namespace (the upstream defaults).

The namespace is the control plane's alone, so there is nobody to collide with, and
node agents get the familiar ``https://<address>:6443``.
"""

_PORT_ATTEMPTS = 4
_LOG_TAIL_LINES = 40
_STOP_GRACE_SECONDS = 5.0
_POLL_SECONDS = 0.2


class ControlPlaneError(RuntimeError):
    """The control plane could not start or do what was asked; the message says why."""


def _http_error(method: str, url: str, status: int, body: bytes) -> ControlPlaneError:
    """etcd's gateway answered with an error status."""
    text = body.decode(errors="replace").strip()
    with contextlib.suppress(ValueError, AttributeError):
        text = str(json.loads(body).get("message", text))
    return ControlPlaneError(f"{method} {url} → HTTP {status}: {text[:2000]}")


class KubectlError(subprocess.CalledProcessError):
    """kubectl exited non-zero; str() includes its stderr."""

    def __str__(self) -> str:
        err = self.stderr.strip() if isinstance(self.stderr, str) else ""
        cmd = [str(c) for c in self.cmd]
        where = ""
        if cmd[:3] == ["ip", "netns", "exec"] and len(cmd) > 4:
            where, cmd = f" (in netns {cmd[3]})", cmd[4:]
        return f"kubectl {' '.join(cmd[1:])}{where} failed (exit {self.returncode}): {err}"


class _PortCollision(Exception):
    """A component exited because one of its ports was taken meanwhile."""


@dataclass(frozen=True)
class KubeconfigUser:
    """Credentials for a kubeconfig: a bearer token, or a client certificate and key."""

    name: str
    token: str | None = None
    client_cert_pem: bytes | None = None
    client_key_pem: bytes | None = None

    def __post_init__(self) -> None:
        has_cert = self.client_cert_pem is not None and self.client_key_pem is not None
        if (self.token is None) == (not has_cert):
            raise ValueError(
                f"kubeconfig user {self.name!r}: give either a token or a client cert and key"
            )


def render_kubeconfig(
    server: str, ca_pem: bytes, user: KubeconfigUser, *, namespace: str | None = None
) -> dict[str, Any]:
    """A self-contained kubeconfig (CA and client credentials embedded)."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    creds: dict[str, str] = {}
    if user.token is not None:
        creds["token"] = user.token
    if user.client_cert_pem is not None and user.client_key_pem is not None:
        creds["client-certificate-data"] = b64(user.client_cert_pem)
        creds["client-key-data"] = b64(user.client_key_pem)
    context: dict[str, str] = {"cluster": "kpp-lab", "user": user.name}
    if namespace is not None:
        context["namespace"] = namespace
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "kpp-lab",
                "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)},
            }
        ],
        "users": [{"name": user.name, "user": creds}],
        "contexts": [{"name": "kpp-lab", "context": context}],
        "current-context": "kpp-lab",
        "preferences": {},
    }


def _host_port(host: str, port: int) -> str:
    """host:port for a URL (IPv6 literals in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class _Proc:
    name: str
    argv: list[str]
    """The component's own argv (without any ``ip netns exec`` prefix)."""
    log_path: Path
    popen: subprocess.Popen[bytes]
    ports: dict[str, int] = field(default_factory=dict)
    log_offset: int = 0
    """Where this run's output starts in the (appended) log file."""

    def tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        return _tail(self.log_path, lines, self.log_offset)


def _child_env() -> dict[str, str]:
    # etcd reads any ETCD_* variable as a flag; KUBECONFIG must not leak into components.
    return {k: v for k, v in os.environ.items() if not k.startswith("ETCD_") and k != "KUBECONFIG"}


def _tail(path: Path, lines: int = _LOG_TAIL_LINES, offset: int = 0) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


_live_lock = threading.Lock()
_live: dict[int, ControlPlane] = {}


@atexit.register
def _stop_all_at_exit() -> None:
    with _live_lock:
        planes = list(_live.values())
    for cp in planes:
        with contextlib.suppress(Exception):
            log.warning("stopping control plane at interpreter exit workdir=%s", cp.workdir)
            cp.stop()


class ControlPlane:
    """etcd + kube-apiserver (+ kube-controller-manager, kube-scheduler).

    On 127.0.0.1 of our namespace by default; with ``netns``, inside that (lab) network
    namespace, the API server on ``bind_address`` (see the module docstring).
    """

    def __init__(
        self,
        bin_dir: Path,
        *,
        with_controllers: bool = False,
        with_scheduler: bool = False,
        service_cidr: str = "10.96.0.0/16",
        workdir: Path | None = None,
        extra_apiserver_args: Sequence[str] = (),
        extra_controller_manager_args: Sequence[str] = (),
        extra_scheduler_args: Sequence[str] = (),
        controllers: Sequence[str] = DEFAULT_CONTROLLERS,
        extra_sans: Sequence[str] = (),
        advertise_address: str | None = None,
        keep_workdir: bool = False,
        netns: str | None = None,
        bind_address: str = LOOPBACK,
    ) -> None:
        """See the module docstring. The network placement:

        netns: a named network namespace (``/run/netns/NAME``, e.g. ``topo.ns(...)``) to
            run every component in; None = our own namespace, on loopback only.
        bind_address: the API server's address. In our namespace it must be a loopback
            address; inside ``netns`` any address of that namespace (checked at start),
            typically its LAN address. It is in the serving certificate, the kubeconfig's
            server URL and, unless it is loopback or ``advertise_address`` says
            otherwise, the advertised address (the ``kubernetes`` Service's endpoint).
        """
        self._bin_dir = Path(bin_dir)
        if netns is not None:
            hostns.netns_path(netns)  # the name only; existence is checked at start()
        self._netns = netns
        try:
            bind_ip = ipaddress.ip_address(bind_address)
        except ValueError as e:
            raise ValueError(f"bind_address {bind_address!r}: {e}") from e
        if bind_ip.is_unspecified:
            raise ValueError(
                f"bind_address {bind_address!r} is a wildcard; give the one address the API "
                "server listens on (its URL and certificate name it)"
            )
        if netns is None and not bind_ip.is_loopback:
            raise ValueError(
                f"bind_address {bind_address!r} is not a loopback address: in the root network "
                "namespace the control plane listens on loopback only. To serve a lab's LAN, "
                "run it inside a lab namespace (netns=...)."
            )
        self._bind_address = str(bind_ip)
        self._with_controllers = with_controllers
        self._with_scheduler = with_scheduler
        try:
            self._service_nets = [
                ipaddress.ip_network(c.strip(), strict=True) for c in service_cidr.split(",")
            ]
        except ValueError as e:
            raise ValueError(
                f"service_cidr {service_cidr!r} is not a CIDR (or two, comma-separated): {e}"
            ) from e
        self._service_cidr = ",".join(str(n) for n in self._service_nets)
        self._workdir_arg = Path(workdir) if workdir is not None else None
        self._extra_apiserver_args = list(extra_apiserver_args)
        self._extra_kcm_args = list(extra_controller_manager_args)
        self._extra_scheduler_args = list(extra_scheduler_args)
        self._controllers = list(controllers)
        self._extra_sans = list(extra_sans)
        if self._bind_address != LOOPBACK:
            self._extra_sans.append(self._bind_address)
        if advertise_address is not None:
            try:
                ipaddress.ip_address(advertise_address)
            except ValueError as e:
                raise ValueError(f"advertise_address {advertise_address!r}: {e}") from e
            self._extra_sans.append(advertise_address)
        self._advertise_address = advertise_address
        self._keep_workdir = keep_workdir

        self._workdir: Path | None = None
        self._owns_workdir = False
        self._procs: dict[str, _Proc] = {}
        self._spawned: list[tuple[str, int]] = []
        self._ca: CertificateAuthority | None = None
        self._tls: ssl.SSLContext | None = None
        self._kubeconfig: Path | None = None
        self._admin: CertKey | None = None
        self._client: ApiClient | None = None
        self._server: str | None = None
        self._started = False
        self._stopped = False
        self._lock = threading.RLock()
        self.timings: dict[str, float] = {}
        """Seconds from ``start()`` until each component was ready (for reports)."""

    # ------------------------------------------------------------------ properties

    @property
    def bin_dir(self) -> Path:
        return self._bin_dir

    @property
    def service_cidr(self) -> str:
        return self._service_cidr

    @property
    def netns(self) -> str | None:
        """The network namespace every component runs in (None: ours)."""
        return self._netns

    @property
    def bind_address(self) -> str:
        """The API server's listening address (in ``netns`` when that is set)."""
        return self._bind_address

    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            raise ControlPlaneError("the control plane has no work directory yet: call start()")
        return self._workdir

    @property
    def pki_dir(self) -> Path:
        return self.workdir / "pki"

    @property
    def ca_file(self) -> Path:
        return self.pki_dir / "ca.crt"

    @property
    def ca(self) -> CertificateAuthority:
        if self._ca is None:
            raise ControlPlaneError("the control plane has no CA yet: call start()")
        return self._ca

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (client certificate in group system:masters)."""
        if self._kubeconfig is None:
            raise ControlPlaneError("the control plane is not started: call start()")
        return self._kubeconfig

    @property
    def server(self) -> str:
        """The API server's URL, e.g. ``https://127.0.0.1:41234`` or, inside a lab
        namespace, ``https://192.168.50.2:6443`` (reachable from that namespace and, for
        a LAN address, from the lab's other namespaces; not from ours)."""
        if self._server is None:
            raise ControlPlaneError("the control plane is not started: call start()")
        return self._server

    @property
    def etcd_url(self) -> str:
        """etcd's client URL (on 127.0.0.1 of ``netns`` when that is set)."""
        return f"http://{LOOPBACK}:{self._port(ETCD, 'client')}"

    def exited(self) -> list[str]:
        """The components whose process has exited (checked now)."""
        return [n for n, p in self._procs.items() if p.popen.poll() is not None]

    @property
    def pids(self) -> dict[str, int]:
        """Pid of every process this fixture started and that has not been reaped.

        With ``netns`` too these are the components' own pids (``ip netns exec`` execs in
        place; checked once each component is ready)."""
        return {n: p.popen.pid for n, p in self._procs.items() if p.popen.returncode is None}

    @property
    def spawned(self) -> list[tuple[str, int]]:
        """(component, pid) of every process ever started, incl. restarts and retries."""
        return list(self._spawned)

    @property
    def ports(self) -> dict[str, int]:
        """Every port in use, keyed ``component/role`` (e.g. ``etcd/client``)."""
        return {
            f"{n}/{role}": port for n, p in self._procs.items() for role, port in p.ports.items()
        }

    def ssl_context(self) -> ssl.SSLContext:
        """TLS for the API server as admin: trusts the fixture's CA, presents the admin cert."""
        if self._tls is None:
            raise ControlPlaneError("the control plane is not started: call start()")
        return self._tls

    def log_path(self, component: str) -> Path:
        return self.workdir / "logs" / f"{component}.log"

    def _port(self, component: str, role: str) -> int:
        proc = self._procs.get(component)
        if proc is None or role not in proc.ports:
            raise ControlPlaneError(f"{component} is not running (no {role} port)")
        return proc.ports[role]

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, timeout: float = 120.0) -> ControlPlane:
        """Start every component and wait until each is ready; stop everything on failure."""
        with self._lock:
            if self._started:
                raise ControlPlaneError("a ControlPlane starts once; create a new one")
            self._started = True
            with _live_lock:
                _live[id(self)] = self
        t0 = time.monotonic()
        deadline = t0 + timeout
        try:
            self._check_binaries()
            self._check_netns()
            self._prepare_workdir()
            self._write_pki()
            self._start_etcd(deadline, timeout)
            self.timings[ETCD] = time.monotonic() - t0
            self._start_apiserver(deadline, timeout)
            self.timings[APISERVER] = time.monotonic() - t0
            if self._with_controllers:
                self._start_controller_manager(deadline, timeout)
                self.timings[CONTROLLER_MANAGER] = time.monotonic() - t0
            if self._with_scheduler:
                self._start_scheduler(deadline, timeout)
                self.timings[SCHEDULER] = time.monotonic() - t0
        except BaseException:
            self.stop()
            raise
        log.info(
            "control plane ready server=%s netns=%s components=%s elapsed=%.1fs workdir=%s",
            self._server,
            self._netns or "-",
            ",".join(self._procs),
            time.monotonic() - t0,
            self._workdir,
        )
        return self

    def stop(self) -> None:
        """Terminate every process (SIGTERM, then SIGKILL), reap it, remove the workdir."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            if self._client is not None:
                self._client.close()
            for proc in reversed(list(self._procs.values())):
                self._terminate(proc)
            if self._workdir is not None and self._owns_workdir:
                if self._keep_workdir:
                    log.info("control plane stopped; workdir kept at %s", self._workdir)
                else:
                    shutil.rmtree(self._workdir, ignore_errors=True)
                    log.info("control plane stopped; workdir %s removed", self._workdir)
            with _live_lock:
                _live.pop(id(self), None)

    def restart_apiserver(self, timeout: float = 60.0) -> None:
        """Stop kube-apiserver and start it again: same port, same etcd data, same flags."""
        with self._lock:
            old = self._procs.get(APISERVER)
            if old is None or self._stopped:
                raise ControlPlaneError("kube-apiserver is not running: start() first")
            self._terminate(old)
            t0 = time.monotonic()
            proc = self._spawn(APISERVER, old.argv, old.ports)
            try:
                self._wait_ready(
                    proc,
                    self._apiserver_ready,
                    time.monotonic() + timeout,
                    timeout,
                    "GET /readyz = ok",
                )
            except _PortCollision as e:
                raise ControlPlaneError(
                    f"kube-apiserver could not bind its port {old.ports['secure']} again: "
                    "another process took it while the API server was down. Stop that "
                    "process or start a new ControlPlane."
                ) from e
            log.info(
                "kube-apiserver restarted pid=%d after=%.1fs", proc.popen.pid, time.monotonic() - t0
            )

    def compact_etcd(self) -> int:
        """Compact etcd to its current revision (physically); return that revision.

        Uses etcd's v3 JSON gateway on the client URL: ``/v3/kv/range`` for the header
        revision, then ``/v3/kv/compaction``.

        Seen with v1.37: with the API server's watch cache on (the default), a watch from
        a resourceVersion older than the compaction is still served from the cache; it
        gets ``410 Expired`` ("too old resource version") after ``restart_apiserver()``
        (the new cache starts at the current revision), or at once when the API server
        runs with ``--watch-cache=false``.
        """
        status, body = self._http(
            "POST",
            f"{self.etcd_url}/v3/kv/range",
            json.dumps({"key": base64.b64encode(b"/").decode(), "limit": 1}).encode(),
        )
        if status != 200:
            raise _http_error("POST", f"{self.etcd_url}/v3/kv/range", status, body)
        revision = int(json.loads(body)["header"]["revision"])
        payload = json.dumps({"revision": str(revision), "physical": True}).encode()
        status, body = self._http(
            "POST", f"{self.etcd_url}/v3/kv/compaction", payload, timeout=30.0
        )
        if status != 200 and b"compacted" not in body:
            raise _http_error("POST", f"{self.etcd_url}/v3/kv/compaction", status, body)
        log.info("etcd compacted revision=%d", revision)
        return revision

    # ------------------------------------------------------------------ clients

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60.0,
        kubeconfig: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl with the admin kubeconfig (or the one given).

        With ``netns`` it runs inside that namespace (``ip netns exec NS kubectl ...``).
        """
        cmd = [
            str(self._bin_dir / KUBECTL),
            f"--kubeconfig={kubeconfig or self.kubeconfig}",
            f"--cache-dir={self.workdir / 'kubectl-cache'}",
            *args,
        ]
        if self._netns is not None:
            cmd = hostns.exec_argv(self._netns, cmd)
        result = subprocess.run(
            cmd,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_child_env(),
            check=False,
        )
        log.debug("kubectl %s rc=%d", " ".join(args), result.returncode)
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, cmd, result.stdout, result.stderr)
        return result

    def http_request(
        self,
        method: str,
        url: str,
        body: bytes | None = None,
        *,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> tuple[int, bytes]:
        """Raw HTTP(S) to one of the control plane's URLs (``server``, ``etcd_url``, …).

        The socket is created where the control plane runs (inside ``netns`` when set);
        HTTPS uses ``ssl_context()`` (admin client certificate). Returns (status, body)
        whatever the status.
        """
        return self._http(method, url, body, content_type=content_type, timeout=timeout)

    def api(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> Any:
        """Call the API server as admin; return the decoded JSON (raise ApiError ≥ 400)."""
        return self.client.request(method, path, body, content_type=content_type, timeout=timeout)

    @property
    def client(self) -> ApiClient:
        """An API client as admin whose sockets are made where the API server runs."""
        if self._client is not None:
            return self._client
        with self._lock:
            if self._client is None:
                if self._admin is None or self._server is None:
                    raise ControlPlaneError("the control plane is not started: call start()")
                config = ClientConfig(
                    server=self._server,
                    source=f"control plane {self.workdir} (admin)",
                    ca_pem=self.ca.cert_pem,
                    client_cert_pem=self._admin.cert_pem,
                    client_key_pem=self._admin.key_pem,
                )
                self._client = ApiClient(config, connector=self._connector())
            return self._client

    def _connector(self) -> transport.Connector:
        netns = self._netns
        if netns is None:
            return transport.direct_connect
        # Sockets created inside the namespace; we never leave ours.
        return functools.partial(sockets.connect_in_netns, netns)

    def write_kubeconfig(
        self,
        path: Path,
        user: KubeconfigUser,
        *,
        server: str | None = None,
        namespace: str | None = None,
    ) -> Path:
        """Write a self-contained kubeconfig for user (mode 0600); return its path."""
        config = render_kubeconfig(
            server or self.server, self.ca.cert_pem, user, namespace=namespace
        )
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(config, f, indent=2)
        return path

    def token_kubeconfig(self, name: str, token: str, *, namespace: str | None = None) -> Path:
        """A kubeconfig in the workdir authenticating with a bearer token (e.g. a SA's)."""
        return self.write_kubeconfig(
            self.workdir / "kubeconfigs" / f"{name}.kubeconfig",
            KubeconfigUser(name=name, token=token),
            namespace=namespace,
        )

    def client_cert_kubeconfig(
        self, name: str, common_name: str, organizations: Sequence[str] = ()
    ) -> Path:
        """A kubeconfig with a fresh client certificate (user = CN, groups = O)."""
        pair = self.ca.issue(common_name, organizations=organizations, client=True)
        return self.write_kubeconfig(
            self.workdir / "kubeconfigs" / f"{name}.kubeconfig",
            KubeconfigUser(name=name, client_cert_pem=pair.cert_pem, client_key_pem=pair.key_pem),
        )

    def service_account_token(
        self,
        namespace: str,
        name: str,
        *,
        audiences: Sequence[str] = (),
        expiration_seconds: int = 3600,
    ) -> str:
        """A bound token for an existing ServiceAccount (TokenRequest API)."""
        spec: dict[str, Any] = {"expirationSeconds": expiration_seconds}
        if audiences:
            spec["audiences"] = list(audiences)
        reply = self.api(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
        )
        return str(reply["status"]["token"])

    # ------------------------------------------------------------------ setup

    def _check_binaries(self) -> None:
        needed = [ETCD, APISERVER, KUBECTL]
        if self._with_controllers:
            needed.append(CONTROLLER_MANAGER)
        if self._with_scheduler:
            needed.append(SCHEDULER)
        missing = [b for b in needed if not os.access(self._bin_dir / b, os.X_OK)]
        if missing:
            raise ControlPlaneError(
                f"{self._bin_dir} lacks executable {', '.join(missing)}. Build them with "
                f"proxy.lab.build.build() (Kubernetes {K8S_VERSION}) or set {BIN_ENV} to a "
                "directory of release binaries."
            )

    def _check_netns(self) -> None:
        """In netns mode: the namespace exists, holds bind_address, and our ports are free.

        Runs before anything is created or started, so a wrong namespace or address
        costs nothing and says exactly what is wrong.
        """
        netns = self._netns
        if netns is None:
            return
        if os.geteuid() != 0:
            raise ControlPlaneError(
                f"running the control plane in network namespace {netns!r} needs root "
                "(ip netns exec, setns)"
            )
        try:
            hostns.netns_id(netns)
        except hostns.NetnsError as e:
            raise ControlPlaneError(f"{e}; create it first (e.g. a Topology client)") from e

        def bind_probe() -> None:
            family = socket.AF_INET6 if ":" in self._bind_address else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.bind((self._bind_address, 0))

        try:
            hostns.run_in_netns(netns, bind_probe)
        except OSError as e:
            if isinstance(e, hostns.NetnsError):
                raise ControlPlaneError(str(e)) from e
            raise ControlPlaneError(
                f"bind_address {self._bind_address} is not usable in network namespace "
                f"{netns} ({e.strerror or e}); its addresses: {self._netns_addresses()}"
            ) from e
        wanted = [(ETCD, "client"), (ETCD, "peer"), (APISERVER, "secure")]
        if self._with_controllers:
            wanted.append((CONTROLLER_MANAGER, "secure"))
        if self._with_scheduler:
            wanted.append((SCHEDULER, "secure"))
        taken: list[str] = []
        for name, role in wanted:
            host, port = self._listen_host(name), NETNS_PORTS[name, role]
            if not hostns.run_in_netns(netns, functools.partial(port_is_free, port, host)):
                taken.append(f"{name}/{role} {_host_port(host, port)}")
        if taken:
            raise ControlPlaneError(
                f"ports already in use in network namespace {netns}: {', '.join(taken)}. "
                "A control plane uses fixed ports inside its namespace: is another one "
                "running there? Stop it, or give this one a namespace of its own."
            )

    def _netns_addresses(self) -> str:
        assert self._netns is not None
        done = subprocess.run(
            ["ip", "-n", self._netns, "-brief", "address", "show"],
            capture_output=True,
            text=True,
            check=False,
        )
        return "; ".join(line.strip() for line in done.stdout.splitlines()) or "(none)"

    def _listen_host(self, component: str) -> str:
        """The address a component listens on (the API server: bind_address)."""
        return self._bind_address if component == APISERVER else LOOPBACK

    def _prepare_workdir(self) -> None:
        if self._workdir_arg is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="kpp-controlplane-"))
        else:
            wd = self._workdir_arg
            if wd.exists() and any(wd.iterdir()):
                raise ControlPlaneError(
                    f"workdir {wd} is not empty; stop() deletes the workdir, so give a "
                    "missing or empty directory"
                )
            wd.mkdir(parents=True, exist_ok=True)
            self._workdir = wd.resolve()
        self._owns_workdir = True
        (self._workdir / "logs").mkdir()
        log.info(
            "control plane starting workdir=%s bin_dir=%s netns=%s bind_address=%s",
            self._workdir,
            self._bin_dir,
            self._netns or "-",
            self._bind_address,
        )

    def _write_pki(self) -> None:
        pki = self.pki_dir
        ca = CertificateAuthority.create()
        self._ca = ca
        ca.pair.write(pki, "ca")
        ips = ["127.0.0.1", *(str(n[1]) for n in self._service_nets)]
        dns = [
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ]
        for san in self._extra_sans:
            try:
                ipaddress.ip_address(san)
                ips.append(san)
            except ValueError:
                dns.append(san)
        ca.issue("kube-apiserver", dns_names=dns, ip_addresses=ips, server=True).write(
            pki, "apiserver"
        )
        admin = ca.issue("kubernetes-admin", organizations=["system:masters"], client=True)
        admin.write(pki, "admin")
        # How the API server authenticates to kubelets (exec, logs, port-forward), as
        # kubeadm's apiserver-kubelet-client certificate does.
        ca.issue(
            "kube-apiserver-kubelet-client", organizations=["system:masters"], client=True
        ).write(pki, "apiserver-kubelet-client")
        for component in (CONTROLLER_MANAGER, SCHEDULER):
            ca.issue(
                component, dns_names=["localhost"], ip_addresses=["127.0.0.1"], server=True
            ).write(pki, f"{component}-serving")
        SigningKey.create().write(pki, "sa")
        # The aggregation layer's front proxy: without a requestheader CA the controller
        # manager and scheduler log an error every few seconds about the missing bundle.
        front = CertificateAuthority.create("kube-proxy-py-lab-front-proxy-ca")
        front.pair.write(pki, "front-proxy-ca")
        front.issue("front-proxy-client", client=True).write(pki, "front-proxy-client")
        tls = ssl.create_default_context(cafile=str(self.ca_file))
        tls.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        self._tls = tls
        self._admin = admin

    # ------------------------------------------------------------------ components

    def _start_etcd(self, deadline: float, timeout: float) -> None:
        data = self.workdir / "etcd-data"

        def argv(ports: dict[str, int]) -> list[str]:
            client = f"http://{LOOPBACK}:{ports['client']}"
            peer = f"http://{LOOPBACK}:{ports['peer']}"
            return [
                str(self._bin_dir / ETCD),
                "--name=kpp",
                f"--data-dir={data}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=kpp={peer}",
                "--initial-cluster-state=new",
                f"--initial-cluster-token=kpp-{os.getpid()}-{ports['peer']}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ]

        def ready() -> bool:
            status, body = self._http("GET", f"{self.etcd_url}/health", timeout=2.0)
            return status == 200 and json.loads(body).get("health") == "true"

        def reset() -> None:
            shutil.rmtree(data, ignore_errors=True)

        self._launch(
            ETCD,
            ("client", "peer"),
            argv,
            ready,
            deadline,
            timeout,
            "GET /health = true",
            before_retry=reset,
        )

    def _start_apiserver(self, deadline: float, timeout: float) -> None:
        pki = self.pki_dir

        def argv(ports: dict[str, int]) -> list[str]:
            return [
                str(self._bin_dir / APISERVER),
                f"--etcd-servers={self.etcd_url}",
                f"--bind-address={self._bind_address}",
                f"--secure-port={ports['secure']}",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={self.ca_file}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-cluster-ip-range={self._service_cidr}",
                "--authorization-mode=Node,RBAC",
                "--allow-privileged=true",
                f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
                f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
                # Kubelets are reached by their InternalIP (no DNS for node names here)
                # and must present a serving certificate from the lab CA.
                f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
                f"--kubelet-certificate-authority={self.ca_file}",
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                *self._advertise_args(),
                *self._extra_apiserver_args,
            ]

        self._launch(
            APISERVER,
            ("secure",),
            argv,
            self._apiserver_ready,
            deadline,
            timeout,
            "GET /readyz = ok",
        )
        secure_port = self._port(APISERVER, "secure")
        self._server = f"https://{_host_port(self._bind_address, secure_port)}"
        assert self._admin is not None
        self._kubeconfig = self.write_kubeconfig(
            self.workdir / "kubeconfigs" / "admin.kubeconfig",
            KubeconfigUser(
                "kubernetes-admin",
                client_cert_pem=self._admin.cert_pem,
                client_key_pem=self._admin.key_pem,
            ),
        )
        # /readyz can be ok a moment before the bootstrap controller has created the
        # default namespace and the `kubernetes` Service (which also proves that the
        # default ServiceCIDR allocates): wait for both so callers can create Services.
        self._wait_ready(
            self._procs[APISERVER],
            lambda: self._get_ok("/api/v1/namespaces/default/services/kubernetes"),
            deadline,
            timeout,
            "the default/kubernetes Service exists",
        )

    def _advertise_args(self) -> list[str]:
        if self._advertise_address is not None:
            return [f"--advertise-address={self._advertise_address}"]
        if not ipaddress.ip_address(self._bind_address).is_loopback:
            # A lab namespace's LAN address: the default (lease) endpoint reconciler
            # publishes it as the `kubernetes` Service's endpoint, as on a real cluster.
            return [f"--advertise-address={self._bind_address}"]
        # Without an address the API server advertises the host's default interface IP
        # (bind-address is loopback), and the `kubernetes` Service's endpoints would send
        # lab traffic to the host. Loopback cannot be an endpoint, so: no endpoints.
        return [f"--advertise-address={LOOPBACK}", "--endpoint-reconciler-type=none"]

    def _start_controller_manager(self, deadline: float, timeout: float) -> None:
        pki = self.pki_dir
        kcfg = self.client_cert_kubeconfig(CONTROLLER_MANAGER, "system:kube-controller-manager")

        def argv(ports: dict[str, int]) -> list[str]:
            return [
                str(self._bin_dir / CONTROLLER_MANAGER),
                f"--kubeconfig={kcfg}",
                f"--authentication-kubeconfig={kcfg}",
                f"--authorization-kubeconfig={kcfg}",
                f"--bind-address={LOOPBACK}",
                f"--secure-port={ports['secure']}",
                f"--cert-dir={self.workdir / 'kcm-certs'}",
                f"--tls-cert-file={pki / 'kube-controller-manager-serving.crt'}",
                f"--tls-private-key-file={pki / 'kube-controller-manager-serving.key'}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={self.ca_file}",
                f"--cluster-signing-cert-file={self.ca_file}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                f"--service-cluster-ip-range={self._service_cidr}",
                f"--controllers={','.join(self._controllers)}",
                # Its default is under /usr/libexec, which it would create on the host.
                f"--flex-volume-plugin-dir={self.workdir / 'flexvolume'}",
                *self._extra_kcm_args,
            ]

        self._launch(
            CONTROLLER_MANAGER,
            ("secure",),
            argv,
            lambda: self._healthz(CONTROLLER_MANAGER),
            deadline,
            timeout,
            "GET /healthz = ok",
        )
        sa_controller = "serviceaccount-controller"
        if (
            "*" in self._controllers or sa_controller in self._controllers
        ) and f"-{sa_controller}" not in self._controllers:
            # A real effect of the controllers: the ServiceAccount admission plugin
            # rejects Pods until the serviceaccount controller made `default`.
            self._wait_ready(
                self._procs[CONTROLLER_MANAGER],
                lambda: self._get_ok("/api/v1/namespaces/default/serviceaccounts/default"),
                deadline,
                timeout,
                "the default/default ServiceAccount exists",
            )

    def _start_scheduler(self, deadline: float, timeout: float) -> None:
        pki = self.pki_dir
        kcfg = self.client_cert_kubeconfig(SCHEDULER, "system:kube-scheduler")

        def argv(ports: dict[str, int]) -> list[str]:
            return [
                str(self._bin_dir / SCHEDULER),
                f"--kubeconfig={kcfg}",
                f"--authentication-kubeconfig={kcfg}",
                f"--authorization-kubeconfig={kcfg}",
                f"--bind-address={LOOPBACK}",
                f"--secure-port={ports['secure']}",
                f"--cert-dir={self.workdir / 'scheduler-certs'}",
                f"--tls-cert-file={pki / 'kube-scheduler-serving.crt'}",
                f"--tls-private-key-file={pki / 'kube-scheduler-serving.key'}",
                "--leader-elect=false",
                *self._extra_scheduler_args,
            ]

        self._launch(
            SCHEDULER,
            ("secure",),
            argv,
            lambda: self._healthz(SCHEDULER),
            deadline,
            timeout,
            "GET /healthz = ok",
        )

    # ------------------------------------------------------------------ process plumbing

    def _launch(
        self,
        name: str,
        roles: Sequence[str],
        argv: Callable[[dict[str, int]], list[str]],
        ready: Callable[[], bool],
        deadline: float,
        timeout: float,
        what: str,
        before_retry: Callable[[], None] | None = None,
    ) -> None:
        """Start name on fresh free ports; retry with new ports if one was taken.

        Inside a lab namespace the ports are fixed (NETNS_PORTS): one attempt.
        """
        host = self._listen_host(name)
        if self._netns is not None:
            ports = {role: NETNS_PORTS[name, role] for role in roles}
            proc = self._spawn(name, argv(ports), ports)
            try:
                self._wait_ready(proc, ready, deadline, timeout, what)
            except _PortCollision as e:
                raise ControlPlaneError(
                    f"{name} could not listen on its port(s) {ports} in network namespace "
                    f"{self._netns}: already in use (another control plane in that "
                    f"namespace?). Last log lines:\n{proc.tail()}"
                ) from e
            return
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            ports = {role: free_port(host) for role in roles}
            proc = self._spawn(name, argv(ports), ports)
            try:
                self._wait_ready(proc, ready, deadline, timeout, what)
                return
            except _PortCollision:
                log.warning(
                    "port collision component=%s ports=%s attempt=%d/%d; retrying with new ports",
                    name,
                    ports,
                    attempt,
                    _PORT_ATTEMPTS,
                )
                self._terminate(proc)
                del self._procs[name]
                if before_retry is not None:
                    before_retry()
        raise ControlPlaneError(
            f"{name} hit a port already in use {_PORT_ATTEMPTS} times in a row; something on "
            f"this machine keeps taking 127.0.0.1 ports. Last log lines:\n"
            f"{_tail(self.log_path(name))}"
        )

    def _spawn(self, name: str, argv: list[str], ports: dict[str, int]) -> _Proc:
        """Start one component (argv without netns prefix; it is added here)."""
        log_path = self.log_path(name)
        command = argv if self._netns is None else hostns.exec_argv(self._netns, argv)
        with open(log_path, "ab") as log_file:
            offset = log_file.tell()
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            log_file.write(f"--- {stamp} kpp starting: {' '.join(command)}\n".encode())
            log_file.flush()
            preexec: Callable[[], None] | None = None
            if threading.current_thread() is threading.main_thread():
                # SIGKILL the child if the Python process dies without stop(). SIGKILL,
                # not SIGTERM: etcd and the API server would get the signal together, and
                # a kube-apiserver shutting down gracefully while etcd is gone hangs (seen
                # with v1.37). PDEATHSIG fires when the *thread* that forked exits: main
                # thread only.
                preexec = die_with_parent(signal.SIGKILL)
            popen = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=_child_env(),
                start_new_session=True,
                preexec_fn=preexec,
            )
        proc = _Proc(name, argv, log_path, popen, dict(ports), offset)
        self._procs[name] = proc
        self._spawned.append((name, popen.pid))
        log.info(
            "component started name=%s pid=%d ports=%s netns=%s log=%s",
            name,
            popen.pid,
            ports,
            self._netns or "-",
            log_path,
        )
        return proc

    def _wait_ready(
        self, proc: _Proc, ready: Callable[[], bool], deadline: float, timeout: float, what: str
    ) -> None:
        t0 = time.monotonic()
        last_error = "not tried yet"
        while True:
            rc = proc.popen.poll()
            if rc is not None:
                tail = proc.tail()
                if "address already in use" in tail:
                    raise _PortCollision(proc.name)
                raise ControlPlaneError(
                    f"{proc.name} exited with code {rc} before it was ready ({what}).\n"
                    f"Last lines of {proc.log_path}:\n{tail}\n"
                    f"{self._fix_hint(proc.name)}"
                )
            try:
                if ready():
                    self._check_pid(proc)
                    log.info(
                        "component ready name=%s check=%r after=%.1fs",
                        proc.name,
                        what,
                        time.monotonic() - t0,
                    )
                    return
                last_error = "check returned not ready"
            except (OSError, http.client.HTTPException, ValueError, KeyError) as e:
                last_error = f"{type(e).__name__}: {e}"
            if time.monotonic() >= deadline:
                raise ControlPlaneError(
                    f"{proc.name} (pid {proc.popen.pid}) was not ready ({what}) within the "
                    f"{timeout:.0f}s start timeout; last check: {last_error}.\n"
                    f"Last lines of {proc.log_path}:\n{proc.tail()}\n"
                    f"{self._fix_hint(proc.name)} On a slow or busy machine pass a larger "
                    "timeout to start()."
                )
            time.sleep(_POLL_SECONDS)

    def _check_pid(self, proc: _Proc) -> None:
        """In netns mode: our pid is the component itself, and it runs in the namespace.

        ``ip netns exec`` execs in place (iproute2 forks only in ``-batch`` mode); if a
        future version forked, stop() would signal ``ip`` and leave the component behind.
        """
        if self._netns is None:
            return
        pid = proc.popen.pid
        try:
            exe = os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")
        except OSError:
            exe = "(gone)"
        want = os.path.realpath(self._bin_dir / proc.name)
        if exe != want or not hostns.pid_in_netns(pid, self._netns):
            raise ControlPlaneError(
                f"pid {pid} started as `ip netns exec {self._netns} {proc.name}` runs {exe} "
                f"(expected {want}) in network namespace {hostns.pid_netns_id(pid)} "
                f"(expected {hostns.netns_id(self._netns)}): the pid tracked for cleanup "
                "would not be the component's"
            )

    def _fix_hint(self, name: str) -> str:
        extra = {
            APISERVER: self._extra_apiserver_args,
            CONTROLLER_MANAGER: self._extra_kcm_args,
            SCHEDULER: self._extra_scheduler_args,
        }.get(name, [])
        hint = (
            f"Check the flags in the first log line against {name} {K8S_VERSION} "
            f"({self._bin_dir / name} --help)"
        )
        if extra:
            hint += f", in particular the extra args {extra}"
        return hint + "; pass keep_workdir=True to keep the logs after stop()."

    def _terminate(self, proc: _Proc) -> None:
        popen = proc.popen
        if popen.poll() is None:
            log.info("stopping component name=%s pid=%d", proc.name, popen.pid)
            with contextlib.suppress(ProcessLookupError):
                popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(_STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                log.warning(
                    "component did not exit after SIGTERM name=%s pid=%d; SIGKILL",
                    proc.name,
                    popen.pid,
                )
                with contextlib.suppress(ProcessLookupError):
                    popen.kill()
                popen.wait()
        else:
            popen.wait()

    # ------------------------------------------------------------------ HTTP

    def _http(
        self,
        method: str,
        url: str,
        body: bytes | None = None,
        *,
        content_type: str = "application/json",
        timeout: float = 5.0,
    ) -> tuple[int, bytes]:
        parts = urllib.parse.urlsplit(url)
        origin = ClientConfig(server=f"{parts.scheme}://{parts.netloc}", source=url)
        tls = self._tls if parts.scheme == "https" else None
        conn = transport.new_connection(origin, tls, timeout=timeout, connector=self._connector())
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        try:
            conn.request(method, target or "/", body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def _apiserver_ready(self) -> bool:
        secure_port = self._port(APISERVER, "secure")
        url = f"https://{_host_port(self._bind_address, secure_port)}/readyz"
        status, body = self._http("GET", url, timeout=5.0)
        return status == 200 and body.strip() == b"ok"

    def _get_ok(self, path: str) -> bool:
        status, _ = self._http("GET", self.server + path)
        return status == 200

    def _healthz(self, component: str) -> bool:
        url = f"https://{LOOPBACK}:{self._port(component, 'secure')}/healthz"
        status, body = self._http("GET", url, timeout=5.0)
        return status == 200 and body.strip() == b"ok"


__all__ = [
    "APISERVER",
    "CONTROLLER_MANAGER",
    "DEFAULT_CONTROLLERS",
    "ETCD",
    "NETNS_PORTS",
    "SCHEDULER",
    "CertKey",
    "ControlPlane",
    "ControlPlaneError",
    "KubeconfigUser",
    "KubectlError",
    "render_kubeconfig",
]
