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
import contextlib
import functools
import ipaddress
import logging
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from proxy.apiclient import transport
from proxy.apiclient.client import ApiClient
from proxy.apiclient.config import ClientConfig
from proxy.host import netns as hostns
from proxy.host import sockets
from proxy.lab.build import BIN_ENV, K8S_VERSION
from proxy.lab.controlplane import etcd
from proxy.lab.controlplane.apiserver import advertise_args, apiserver_argv
from proxy.lab.controlplane.certs import write_pki
from proxy.lab.controlplane.components import (
    APISERVER,
    CONTROLLER_MANAGER,
    ETCD,
    KUBECTL,
    NETNS_PORTS,
    SCHEDULER,
    host_port,
)
from proxy.lab.controlplane.controllermanager import (
    DEFAULT_CONTROLLERS,
    controller_manager_argv,
    runs_serviceaccount_controller,
)
from proxy.lab.controlplane.errors import ControlPlaneError, KubectlError
from proxy.lab.controlplane.kubeconfig import KubeconfigUser, write_kubeconfig
from proxy.lab.controlplane.processes import (
    ComponentProcesses,
    PortCollision,
    component_env,
)
from proxy.lab.controlplane.scheduler import scheduler_argv
from proxy.lab.pki import CertificateAuthority, CertKey
from proxy.lab.ports import LOOPBACK, port_is_free

log = logging.getLogger(__name__)


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
        self._components = ComponentProcesses(
            self._bin_dir, netns, lambda: self.workdir, self._fix_hint
        )
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
        return [n for n, p in self._components.running.items() if p.popen.poll() is not None]

    @property
    def pids(self) -> dict[str, int]:
        """Pid of every process this fixture started and that has not been reaped.

        With ``netns`` too these are the components' own pids (``ip netns exec`` execs in
        place; checked once each component is ready)."""
        return {
            n: p.popen.pid
            for n, p in self._components.running.items()
            if p.popen.returncode is None
        }

    @property
    def spawned(self) -> list[tuple[str, int]]:
        """(component, pid) of every process ever started, incl. restarts and retries."""
        return list(self._components.spawned)

    @property
    def ports(self) -> dict[str, int]:
        """Every port in use, keyed ``component/role`` (e.g. ``etcd/client``)."""
        return {
            f"{n}/{role}": port
            for n, p in self._components.running.items()
            for role, port in p.ports.items()
        }

    def ssl_context(self) -> ssl.SSLContext:
        """TLS for the API server as admin: trusts the fixture's CA, presents the admin cert."""
        if self._tls is None:
            raise ControlPlaneError("the control plane is not started: call start()")
        return self._tls

    def log_path(self, component: str) -> Path:
        return self._components.log_path(component)

    def _port(self, component: str, role: str) -> int:
        proc = self._components.running.get(component)
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
            ",".join(self._components.running),
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
            for proc in reversed(list(self._components.running.values())):
                self._components.terminate(proc)
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
            old = self._components.running.get(APISERVER)
            if old is None or self._stopped:
                raise ControlPlaneError("kube-apiserver is not running: start() first")
            self._components.terminate(old)
            t0 = time.monotonic()
            proc = self._components.spawn(APISERVER, old.argv, old.ports)
            try:
                self._components.wait_ready(
                    proc,
                    self._apiserver_ready,
                    time.monotonic() + timeout,
                    timeout,
                    "GET /readyz = ok",
                )
            except PortCollision as e:
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
        return etcd.compact(self._http, self.etcd_url)

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
            env=component_env(),
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
        return write_kubeconfig(
            path, server or self.server, self.ca.cert_pem, user, namespace=namespace
        )

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
                taken.append(f"{name}/{role} {host_port(host, port)}")
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
        certs = write_pki(self.pki_dir, self._service_nets, self._extra_sans)
        self._ca = certs.ca
        self._tls = certs.admin_tls
        self._admin = certs.admin

    # ------------------------------------------------------------------ components

    def _start_etcd(self, deadline: float, timeout: float) -> None:
        data = self.workdir / "etcd-data"

        def reset() -> None:
            shutil.rmtree(data, ignore_errors=True)

        self._components.launch(
            ETCD,
            ("client", "peer"),
            functools.partial(etcd.etcd_argv, self._bin_dir / ETCD, data),
            lambda: etcd.is_healthy(self._http, self.etcd_url),
            deadline,
            timeout,
            "GET /health = true",
            host=self._listen_host(ETCD),
            before_retry=reset,
        )

    def _start_apiserver(self, deadline: float, timeout: float) -> None:
        def argv(ports: dict[str, int]) -> list[str]:
            return apiserver_argv(
                self._bin_dir / APISERVER,
                etcd_url=self.etcd_url,
                bind_address=self._bind_address,
                secure_port=ports["secure"],
                workdir=self.workdir,
                pki=self.pki_dir,
                service_cidr=self._service_cidr,
                advertise=advertise_args(self._bind_address, self._advertise_address),
                extra=self._extra_apiserver_args,
            )

        self._components.launch(
            APISERVER,
            ("secure",),
            argv,
            self._apiserver_ready,
            deadline,
            timeout,
            "GET /readyz = ok",
            host=self._listen_host(APISERVER),
        )
        secure_port = self._port(APISERVER, "secure")
        self._server = f"https://{host_port(self._bind_address, secure_port)}"
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
        self._components.wait_ready(
            self._components.running[APISERVER],
            lambda: self._get_ok("/api/v1/namespaces/default/services/kubernetes"),
            deadline,
            timeout,
            "the default/kubernetes Service exists",
        )

    def _start_controller_manager(self, deadline: float, timeout: float) -> None:
        kcfg = self.client_cert_kubeconfig(CONTROLLER_MANAGER, "system:kube-controller-manager")

        def argv(ports: dict[str, int]) -> list[str]:
            return controller_manager_argv(
                self._bin_dir / CONTROLLER_MANAGER,
                kubeconfig=kcfg,
                secure_port=ports["secure"],
                workdir=self.workdir,
                pki=self.pki_dir,
                service_cidr=self._service_cidr,
                controllers=self._controllers,
                extra=self._extra_kcm_args,
            )

        self._components.launch(
            CONTROLLER_MANAGER,
            ("secure",),
            argv,
            lambda: self._healthz(CONTROLLER_MANAGER),
            deadline,
            timeout,
            "GET /healthz = ok",
            host=self._listen_host(CONTROLLER_MANAGER),
        )
        if runs_serviceaccount_controller(self._controllers):
            # A real effect of the controllers: the ServiceAccount admission plugin
            # rejects Pods until the serviceaccount controller made `default`.
            self._components.wait_ready(
                self._components.running[CONTROLLER_MANAGER],
                lambda: self._get_ok("/api/v1/namespaces/default/serviceaccounts/default"),
                deadline,
                timeout,
                "the default/default ServiceAccount exists",
            )

    def _start_scheduler(self, deadline: float, timeout: float) -> None:
        kcfg = self.client_cert_kubeconfig(SCHEDULER, "system:kube-scheduler")

        def argv(ports: dict[str, int]) -> list[str]:
            return scheduler_argv(
                self._bin_dir / SCHEDULER,
                kubeconfig=kcfg,
                secure_port=ports["secure"],
                workdir=self.workdir,
                pki=self.pki_dir,
                extra=self._extra_scheduler_args,
            )

        self._components.launch(
            SCHEDULER,
            ("secure",),
            argv,
            lambda: self._healthz(SCHEDULER),
            deadline,
            timeout,
            "GET /healthz = ok",
            host=self._listen_host(SCHEDULER),
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
        url = f"https://{host_port(self._bind_address, secure_port)}/readyz"
        status, body = self._http("GET", url, timeout=5.0)
        return status == 200 and body.strip() == b"ok"

    def _get_ok(self, path: str) -> bool:
        status, _ = self._http("GET", self.server + path)
        return status == 200

    def _healthz(self, component: str) -> bool:
        url = f"https://{LOOPBACK}:{self._port(component, 'secure')}/healthz"
        status, body = self._http("GET", url, timeout=5.0)
        return status == 200 and body.strip() == b"ok"
