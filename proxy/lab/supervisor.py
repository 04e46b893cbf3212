"""The lab supervisor: builds the lab, keeps its children running, tears it down.

The commands that drive it are in :mod:`proxy.lab.commands`; the state file they share
is :mod:`proxy.lab.state`. ``lab up`` starts a detached *supervisor* (``python -m
proxy.lab.supervisor supervise``, a session of its own) that builds the lab and then
stays, so the lab outlives the command. The lab is a real cluster built the way kind
builds one, with namespaces where kind uses Docker containers. The supervisor:

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
   (every default controller) and kube-scheduler in the control-plane namespace. With
   ``--ip-family ipv6`` every address is its IPv6 twin (``fd00:192:168:50::11``,
   ``fd00:10:244:1::/64``, Services from ``fd00:10:96::/112``); with ``dual`` the
   namespaces, nodes, pods and Service CIDRs have both, IPv4 primary (docs/lab-node.md);
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

``lab down`` (:mod:`proxy.lab.commands.down`) asks the supervisor to stop (SIGTERM) and
then, whatever happened, cleans up from the state (:mod:`proxy.lab.cleanup`): it kills
every recorded process that is still the one we started (pid *and* start time match),
kills whatever is left in the lab's cgroups (containers, shims, kubelets:
:func:`proxy.lab.cgroups.remove`) and removes them, empties and deletes every namespace
recorded or named ``<lab id>-*``, and removes the state directory. It works after a
crash and is idempotent.

Safety: nothing is linked to the root namespace (the LAN is a bridge in its own
namespace, whose "router" does not forward), no namespace has a route out, and the API
server listens only inside the control-plane namespace; ``lab kubectl`` runs kubectl
there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

import yaml

from proxy.apiclient.client import Backoff
from proxy.host import netns as hostns
from proxy.host.network import Network
from proxy.host.process import child_env, log_tail_lines, spawn_logged
from proxy.host.spec import pick, version_of
from proxy.lab import addonbuild, addons, coredns
from proxy.lab import registry as labregistry
from proxy.lab.cleanup import sweep_namespaces
from proxy.lab.clients import node_health
from proxy.lab.errors import EXIT_FAIL, EXIT_OK, EXIT_USAGE, LabError
from proxy.lab.state import PROGRESS_FILE, LabState, NodeRecord, ProcRecord, save_state
from proxy.lab.topology import (
    API_PORT,
    CLIENT,
    DEFAULT_IP_FAMILY,
    DEFAULT_MODE,
    DEFAULT_NODES,
    EXTERNAL_IP_CIDR,
    HEALTHZ_PORT,
    IP_FAMILIES,
    MODES,
    REGISTRY,
    RESOLVER,
    RESOLVER_IP,
    SERVICE_COUNTERS_FLAG,
    UPSTREAM_NODE,
    addresses,
    host_port,
    lab_topology,
    service_ips,
)

if TYPE_CHECKING:
    from proxy.lab.cluster import LabCluster
    from proxy.lab.nodebuild import NodeBinaries

log = logging.getLogger("proxy.lab.supervisor")  # also when run as __main__

READY_TIMEOUT = 120.0
RESTART_BACKOFF = (10.0, 300.0)
SUPERVISOR_MARKER = "proxy.lab.supervisor supervise"
"""In the supervisor's command line (its ProcRecord's marker)."""


def supervisor_argv(
    state_dir: Path,
    lab_id: str,
    nodes: int,
    mode: str,
    compare: bool,
    with_addons: bool,
    ip_family: str = DEFAULT_IP_FAMILY,
) -> list[str]:
    """The command ``lab up`` starts the supervisor with (a session of its own)."""
    return [
        sys.executable, "-m", "proxy.lab.supervisor", "supervise",
        "--state-dir", str(state_dir),
        "--lab-id", lab_id,
        "--nodes", str(nodes),
        "--mode", mode,
        "--ip-family", ip_family,
        *(["--compare"] if compare else []),
        *([] if with_addons else ["--no-addons"]),
    ]  # fmt: skip


def manifest_objects(path: Path | None = None) -> list[dict[str, Any]]:
    from proxy.lab.cluster import MANIFEST

    text = (path or MANIFEST).read_text()
    return [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]


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
        self.state.supervisor = ProcRecord.of("supervisor", os.getpid(), [SUPERVISOR_MARKER])
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
        from proxy.lab.cluster import CONTROL_PLANE, LabCluster, lab_spec

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

        spec, zones = lab_topology(self.state.node_count, self.state.compare, self.state.ip_family)
        versions = spec.versions
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
                n.lan_ip_secondary,
                n.pod_cidr_secondary,
            )
            for n in spec.nodes
        ]
        client_ips = spec.client(CLIENT).lan_ips
        self.state.client = {
            "name": CLIENT,
            "lan_ip": client_ips[0],
            "lan_ips": list(client_ips),
            "namespace": f"{lab_id}-{CLIENT}",
            # LoadBalancer addresses need no route: MetalLB answers ARP (IPv6: neighbour
            # solicitations) for them.
            "routes": dict(
                zip(
                    addresses(EXTERNAL_IP_CIDR, versions),
                    spec.nodes[0].lan_ips,
                    strict=True,
                )
            ),
        }
        self.state.registry = {
            "namespace": f"{lab_id}-{REGISTRY}",
            "address": host_port(spec.client(REGISTRY).lan_ip, labregistry.PORT),
        }
        self.save()
        self.cluster.start()
        cp = self.cluster.control_plane
        self.state.namespaces = list(topo.namespaces)
        self.state.control_plane.update(
            {
                "namespace": topo.ns(CONTROL_PLANE),
                "host": cp.bind_address,
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
            f"client {', '.join(client_ips)}: routes "
            f"{', '.join(self.state.client['routes'])} (ExternalIPs) via "
            f"{spec.nodes[0].name}; LoadBalancer addresses come from MetalLB on the LAN"
        )
        # Admission webhooks (MetalLB's) are called at their Service's ClusterIP; the
        # control plane is no node and runs no proxy, so a node's proxy serves it.
        for cidr in cp.service_cidr.split(","):
            topo.add_route(CONTROL_PLANE, cidr, pick(spec.nodes[0].lan_ips, version_of(cidr)))
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
            addons.deploy(self.cluster, self.progress, versions)
            addons.wait_ready(self.cluster, self.progress, versions)

    def build_node_side(self) -> NodeBinaries:
        """The node components and the images, built once and cached (``lab build``)."""
        from proxy.lab import nodebuild
        from proxy.lab.imagepush import ensure_cached_registry

        bins = nodebuild.build(out=self.progress)
        extra = addonbuild.build(out=self.progress)
        self.state.node_bins = {
            "bin": str(bins.bin_dir),
            "cni": str(bins.cni_dir),
            "addons": str(extra.bin_dir),
        }
        ensure_cached_registry(out=self.progress)
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
        labregistry.wait_ready(ns, self.cluster.spec.client(REGISTRY).lan_ip)

    def start_resolver(self) -> None:
        """The DNS of the network outside the cluster: CoreDNS on a hosts file."""
        ns = f"{self.state.lab_id}-{RESOLVER}"
        root = self.dir / RESOLVER
        root.mkdir(parents=True, exist_ok=True)
        versions = self.cluster.spec.versions
        for zone, text in coredns.resolver_zones(versions).items():
            (root / f"{zone}.zone").write_text(text)
        corefile = root / "Corefile"
        corefile.write_text(coredns.resolver_corefile(str(root)))
        binary = Path(self.state.node_bins["addons"]) / "coredns"
        self.progress(
            f"starting the outside resolver on {', '.join(addresses(RESOLVER_IP, versions))} "
            "port 53 (CoreDNS; knows " + ", ".join(sorted(coredns.OUTSIDE_NAMES)) + ")"
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
        from proxy.lab.controlplane.kubeconfig import KubeconfigUser
        from proxy.lab.images import PAUSE_IMAGE

        cp = self.cluster.control_plane
        versions = self.cluster.spec.versions
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
                internal_ip_secondary=node.lan_ip_secondary,
                pod_cidr_secondary=node.pod_cidr_secondary,
                zone=node.zone,
                directory=str(self.node_dir(node.name)),
                api_server=f"https://{host_port(cp.bind_address, API_PORT)}",
                registry=self.state.registry["address"],
                pause_image=PAUSE_IMAGE,
                k8s_bin=self.state.control_plane["bin_dir"],
                node_bin=self.state.node_bins["bin"],
                cni_bin=self.state.node_bins["cni"],
                nameservers=addresses(RESOLVER_IP, versions),
                cluster_dns=service_ips(coredns.DNS_SERVICE_IP, versions),
            )
            config = labnode.prepare(cfg)
            pki = Path(cfg.directory) / "etc" / "kubernetes" / "pki"
            pki.mkdir(parents=True, exist_ok=True)
            (pki / "ca.crt").write_bytes(cp.ca_file.read_bytes())
            cp.ca.issue(
                node.name, dns_names=[node.name], ip_addresses=list(node.lan_ips), server=True
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
                        {"spec": {"podCIDR": node.pod_cidr, "podCIDRs": list(node.pod_cidrs)}},
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
                    f"{child.log_path}:\n{log_tail_lines(child.log_path)}"
                )

    def deploy_kube_proxy_py(self) -> None:
        from proxy.lab import deploy
        from proxy.lab.cluster import cluster_cidrs

        api_host = self.cluster.control_plane.bind_address
        objects, changes = deploy.lab_objects(
            self.objects,
            mode=self.state.mode,
            cluster_cidr=",".join(cluster_cidrs(self.cluster.spec.versions)),
            api_host=api_host,
            healthz_bind_address=(
                f"[::]:{HEALTHZ_PORT}" if self.cluster.spec.versions[0] == 6 else None
            ),
            api_port=API_PORT,
            exclude_nodes=[UPSTREAM_NODE] if self.state.compare else [],
            extra_args=[SERVICE_COUNTERS_FLAG],
        )
        self.state.env_overrides = {k: list(v) for k, v in changes.env.items()}
        self.state.config_overrides = {k: list(v) for k, v in changes.config.items()}
        self.state.notes.extend(n for n in changes.other if n not in self.state.notes)
        self.save()
        self.progress(
            f"kubectl apply -f daemonset.yaml (mode {self.state.mode}; API server "
            f"{host_port(api_host, API_PORT)})"
        )
        self.cluster.apply(*objects)

    def deploy_upstream(self) -> None:
        from proxy.lab import deploy
        from proxy.lab.cluster import cluster_cidrs
        from proxy.lab.images import UPSTREAM_KUBE_PROXY_IMAGE

        self.progress(f"deploying upstream kube-proxy as a DaemonSet on {UPSTREAM_NODE}")
        self.cluster.apply(
            *deploy.upstream_objects(
                image=UPSTREAM_KUBE_PROXY_IMAGE,
                node=UPSTREAM_NODE,
                mode=self.state.mode,
                cluster_cidr=",".join(cluster_cidrs(self.cluster.spec.versions)),
                api_host=self.cluster.control_plane.bind_address,
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
        child.popen, _ = spawn_logged(
            child.argv,
            child.log_path,
            env=child.env,
            deathsig=child.deathsig,
            new_session=True,
            cwd="/",
            banner="starting",
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
        from proxy.lab.controlplane.components import APISERVER
        from proxy.lab.controlplane.errors import ControlPlaneError

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


def supervise(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m proxy.lab.supervisor supervise")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--lab-id", required=True)
    parser.add_argument("--nodes", type=int, default=DEFAULT_NODES)
    parser.add_argument("--mode", choices=MODES, default=DEFAULT_MODE)
    parser.add_argument("--compare", action="store_true")
    parser.add_argument("--no-addons", dest="addons", action="store_false")
    parser.add_argument("--ip-family", choices=IP_FAMILIES, default=DEFAULT_IP_FAMILY)
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
        ip_family=args.ip_family,
    )
    return Supervisor(state).run()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["supervise"]:
        return supervise(args[1:])
    print(
        "usage: python -m proxy.lab.supervisor supervise --state-dir DIR --lab-id ID ...",
        file=sys.stderr,
    )
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
