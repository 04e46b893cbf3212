"""A real lab node: kubelet + containerd in a network namespace and a mount namespace.

    nsenter --net=/run/netns/<lab>-node-1 python -m proxy.lab.node --config DIR/node.json

What kind does with a Docker container per node, a lab node does with namespaces on this
machine's kernel:

- **network**: the node's namespace from the lab topology (its LAN address, routes to the
  other nodes' pod CIDRs); pods get their addresses from the CNI ``bridge`` plugin
  (``cni0``, gateway ``.1`` of the podCIDR) and ``host-local`` IPAM, as kindnet's
  bridge+host-local does; ``portmap`` serves hostPorts.
- **mounts**: a private mount namespace (``/`` rslave: host mounts reach in, nothing
  reaches out) in which the node's directories are bound over the paths kind's node
  image uses — ``/etc/containerd``, ``/etc/kubernetes``, ``/etc/cni/net.d``,
  ``/opt/cni/bin``, ``/var/lib/{containerd,kubelet,cni}``, ``/var/log/{pods,containers}``
  — and a tmpfs is mounted on ``/run`` (containerd's sockets and shims, the node's own
  ``/run/xtables.lock``). Missing mount points are made in private shadows
  (:mod:`proxy.lab.mounts`), never on the host.
- **kernel settings** the kubelet insists on (``vm.overcommit_memory=1``,
  ``kernel.panic=10``, ``kernel.panic_on_oops=1`` …) are host-wide: a kubelet would write
  them into this machine's kernel. Each node instead sees files holding exactly those
  values bound over ``/proc/sys/...``, so it finds what it expects and changes nothing.
- **cgroups** (v1 hybrid host): the node's subtree ``/kube-proxy-py-lab/<lab>/<node>`` in
  every hierarchy (:mod:`proxy.lab.cgroups`); this launcher, containerd, the kubelet and
  the shims live in ``runtime``, the kubelet puts pods under ``kubepods`` (``cgroupRoot``,
  ``cgroupDriver: cgroupfs``, ``failCgroupV1: false``).

The launcher starts containerd, waits for its socket, starts the kubelet and restarts
either with back-off if it exits (systemd's ``Restart=always`` on a kind node). SIGTERM
stops the kubelet, then containerd, then kills whatever is left in the node's cgroups
(containers and shims), so the node leaves nothing behind.

The configuration (:class:`NodeConfig`) is plain data rendered into files by pure
functions (:func:`containerd_config`, :func:`kubelet_config`, :func:`cni_config`,
:func:`registry_hosts`), tested without root.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from proxy.host.process import spawn_logged
from proxy.lab import cgroups
from proxy.lab.mounts import Mount, mount_tmpfs, private_mount_namespace, setup_mounts

log = logging.getLogger("proxy.lab.node")

MIRRORED_REGISTRIES: tuple[str, ...] = ("docker.io", "registry.k8s.io", "quay.io", "ghcr.io")
"""Registries every node's containerd resolves through the lab registry, as kind users
name images (``nginx``, ``registry.k8s.io/pause``…)."""

CONTAINERD_SOCKET = "/run/containerd/containerd.sock"
KUBELET_PORT = 10250
KUBELET_HEALTHZ_PORT = 10248
KERNEL_SETTINGS: dict[str, str] = {
    "vm/overcommit_memory": "1",
    "vm/panic_on_oom": "0",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
    "kernel/keys/root_maxkeys": "1000000",
    "kernel/keys/root_maxbytes": "25000000",
}
"""What the kubelet's container manager requires of ``/proc/sys`` (it writes them when
``protectKernelDefaults`` is off): bound per node, never written to the host."""

NODE_PATHS: tuple[tuple[str, str], ...] = (
    ("etc/containerd", "/etc/containerd"),
    ("etc/kubernetes", "/etc/kubernetes"),
    ("etc/cni/net.d", "/etc/cni/net.d"),
    ("var/lib/containerd", "/var/lib/containerd"),
    ("var/lib/kubelet", "/var/lib/kubelet"),
    ("var/lib/cni", "/var/lib/cni"),
    ("var/log/pods", "/var/log/pods"),
    ("var/log/containers", "/var/log/containers"),
)
"""(directory under the node's directory, the path it is bound on inside the node)."""


@dataclass(frozen=True)
class NodeConfig:
    """Everything one lab node needs; written as ``node.json`` next to its files."""

    name: str
    lab_id: str
    internal_ip: str
    pod_cidr: str
    zone: str
    directory: str
    """The node's directory on the host (``<state>/nodes/<name>``)."""
    api_server: str
    registry: str
    """``host:port`` of the lab registry (plain HTTP) on the LAN."""
    pause_image: str
    k8s_bin: str
    node_bin: str
    cni_bin: str
    cluster_dns: tuple[str, ...] = ("10.96.0.10",)
    cluster_domain: str = "cluster.local"
    nameservers: tuple[str, ...] = ()
    """The node's own resolvers (its ``resolv.conf``, which kubelet gives to pods with
    ``dnsPolicy: Default`` such as CoreDNS's)."""
    max_pods: int = 110
    labels: Mapping[str, str] = field(default_factory=dict)
    verbosity: int = 2
    internal_ip_secondary: str | None = None
    """A dual-stack node's address of the other family (``internal_ip`` is primary)."""
    pod_cidr_secondary: str | None = None

    @property
    def internal_ips(self) -> tuple[str, ...]:
        """Primary first (kubelet's ``--node-ip``)."""
        second = self.internal_ip_secondary
        return (self.internal_ip,) if second is None else (self.internal_ip, second)

    @property
    def pod_cidrs(self) -> tuple[str, ...]:
        """Primary first (the Node's ``spec.podCIDRs``)."""
        second = self.pod_cidr_secondary
        return (self.pod_cidr,) if second is None else (self.pod_cidr, second)

    @property
    def cgroup_root(self) -> str:
        return cgroups.node_path(self.lab_id, self.name)

    @property
    def runtime_cgroup(self) -> str:
        return f"{self.cgroup_root}/{cgroups.RUNTIME}"

    @property
    def gateway(self) -> str:
        """The primary pod CIDR's gateway (``cni0``'s address)."""
        return gateway_of(self.pod_cidr)

    def to_json(self) -> str:
        data = asdict(self)
        data["cluster_dns"] = list(self.cluster_dns)
        data["nameservers"] = list(self.nameservers)
        data["labels"] = dict(self.labels)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> NodeConfig:
        data: dict[str, Any] = json.loads(text)
        data["cluster_dns"] = tuple(data.get("cluster_dns", ()))
        data["nameservers"] = tuple(data.get("nameservers", ()))
        return cls(**data)


# ------------------------------------------------------------------ rendered files


def gateway_of(pod_cidr: str) -> str:
    """The first address of a pod CIDR: ``10.244.1.1``, ``fd00:10:244:1::1``."""
    return str(ipaddress.ip_network(pod_cidr)[1])


def _toml_str(value: str) -> str:
    """A TOML basic string (JSON's escapes are valid TOML for the values used here)."""
    return json.dumps(value)


def containerd_config(cfg: NodeConfig) -> str:
    """``/etc/containerd/config.toml`` (containerd 2.x, config version 3)."""
    cri_runtime = "plugins.'io.containerd.cri.v1.runtime'"
    cri_images = "plugins.'io.containerd.cri.v1.images'"
    lines = [
        "# kube-proxy-py lab node " + cfg.name + " (written by proxy.lab.node)",
        "version = 3",
        'root = "/var/lib/containerd"',
        'state = "/run/containerd"',
        "",
        "[grpc]",
        f"  address = {_toml_str(CONTAINERD_SOCKET)}",
        "",
        f"[{cri_images}]",
        '  snapshotter = "overlayfs"',
        "  # every image is pulled from the lab registry through the mirrors below",
        f"[{cri_images}.pinned_images]",
        f"  sandbox = {_toml_str(cfg.pause_image)}",
        f"[{cri_images}.registry]",
        '  config_path = "/etc/containerd/certs.d"',
        "",
        f"[{cri_runtime}]",
        "  # runc cannot raise oom_score_adj here: this machine's root lacks",
        "  # CAP_SYS_RESOURCE (containers get at least the runtime's own score)",
        "  restrict_oom_score_adj = true",
        "  # pod network namespaces under containerd's state, inside the node's mounts,",
        "  # not in the host's /run/netns",
        "  netns_mounts_under_state_dir = true",
        "  tolerate_missing_hugetlb_controller = true",
        "  disable_hugetlb_controller = true",
        f"[{cri_runtime}.containerd]",
        '  default_runtime_name = "runc"',
        f"[{cri_runtime}.containerd.runtimes.runc]",
        '  runtime_type = "io.containerd.runc.v2"',
        f"[{cri_runtime}.containerd.runtimes.runc.options]",
        "  SystemdCgroup = false",
        f"  BinaryName = {_toml_str(str(Path(cfg.node_bin) / 'runc'))}",
        f"[{cri_runtime}.cni]",
        '  bin_dirs = ["/opt/cni/bin"]',
        '  conf_dir = "/etc/cni/net.d"',
        "",
        "[plugins.'io.containerd.grpc.v1.cri']",
        '  stream_server_address = "127.0.0.1"',
        '  stream_server_port = "0"',
        "",
    ]
    return "\n".join(lines)


def registry_hosts(cfg: NodeConfig) -> dict[str, str]:
    """``certs.d/<registry>/hosts.toml`` for every mirrored registry: the lab registry
    only (``server`` is the same mirror, so nothing ever leaves the lab)."""
    mirror = f"http://{cfg.registry}"
    files: dict[str, str] = {}
    for registry in MIRRORED_REGISTRIES:
        files[f"{registry}/hosts.toml"] = "\n".join(
            [
                f"# {registry} is served by the lab registry (kube-proxy-py lab)",
                f"server = {_toml_str(mirror)}",
                "",
                f"[host.{_toml_str(mirror)}]",
                '  capabilities = ["pull", "resolve"]',
                "",
            ]
        )
    return files


def cni_config(cfg: NodeConfig) -> dict[str, Any]:
    """``/etc/cni/net.d/10-kube-proxy-py-lab.conflist``: bridge + host-local + portmap."""
    return {
        "cniVersion": "1.0.0",
        "name": "kube-proxy-py-lab",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    # One range set per family: a pod gets an address of each.
                    "ranges": [
                        [{"subnet": cidr, "gateway": gateway_of(cidr)}] for cidr in cfg.pod_cidrs
                    ],
                    "routes": [
                        {"dst": "::/0" if ":" in cidr else "0.0.0.0/0"} for cidr in cfg.pod_cidrs
                    ],
                    "dataDir": "/var/lib/cni/networks",
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(cfg: NodeConfig) -> dict[str, Any]:
    """``/etc/kubernetes/kubelet-config.yaml`` (KubeletConfiguration v1beta1)."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": "/etc/kubernetes/pki/ca.crt"},
        },
        "authorization": {"mode": "Webhook"},
        "address": cfg.internal_ip,
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": KUBELET_HEALTHZ_PORT,
        "tlsCertFile": "/etc/kubernetes/pki/kubelet.crt",
        "tlsPrivateKeyFile": "/etc/kubernetes/pki/kubelet.key",
        "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCKET}",
        # cgroup v1 (hybrid) host: allowed explicitly since v1.35, cgroupfs paths under
        # the node's own subtree.
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": cfg.cgroup_root,
        "cgroupsPerQOS": True,
        "failSwapOn": False,
        "clusterDNS": list(cfg.cluster_dns),
        "clusterDomain": cfg.cluster_domain,
        "resolvConf": "/etc/kubernetes/resolv.conf",
        "maxPods": cfg.max_pods,
        "volumePluginDir": "/var/lib/kubelet/volumeplugins",
        "staticPodPath": "",
        "serializeImagePulls": False,
        # Every node shares this machine's disk: no image GC or disk eviction (as kind).
        "imageGCHighThresholdPercent": 100,
        "evictionHard": {
            "nodefs.available": "0%",
            "nodefs.inodesFree": "0%",
            "imagefs.available": "0%",
        },
        "protectKernelDefaults": False,
        "shutdownGracePeriod": "0s",
        "nodeStatusReportFrequency": "10s",
        "nodeStatusUpdateFrequency": "10s",
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
    }


def kubelet_argv(cfg: NodeConfig) -> list[str]:
    labels = {"topology.kubernetes.io/zone": cfg.zone, **cfg.labels}
    return [
        str(Path(cfg.k8s_bin) / "kubelet"),
        "--config=/etc/kubernetes/kubelet-config.yaml",
        "--kubeconfig=/etc/kubernetes/kubelet.conf",
        "--root-dir=/var/lib/kubelet",
        "--cert-dir=/var/lib/kubelet/pki",
        f"--hostname-override={cfg.name}",
        f"--node-ip={','.join(cfg.internal_ips)}",
        "--node-labels=" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
        f"--v={cfg.verbosity}",
    ]


def containerd_argv(cfg: NodeConfig) -> list[str]:
    return [str(Path(cfg.node_bin) / "containerd"), "--config=/etc/containerd/config.toml"]


def resolv_conf(cfg: NodeConfig) -> str:
    """The node's ``resolv.conf`` (kubelet's ``resolvConf``)."""
    if not cfg.nameservers:
        return "# no resolver outside the cluster\n"
    return "".join(f"nameserver {ip}\n" for ip in cfg.nameservers)


def render_files(cfg: NodeConfig) -> dict[str, str]:
    """Every generated file, by path under the node's directory (PKI not included)."""
    files = {
        "etc/containerd/config.toml": containerd_config(cfg),
        "etc/cni/net.d/10-kube-proxy-py-lab.conflist": json.dumps(cni_config(cfg), indent=2) + "\n",
        "etc/kubernetes/kubelet-config.yaml": yaml.safe_dump(kubelet_config(cfg), sort_keys=False),
        "etc/kubernetes/resolv.conf": resolv_conf(cfg),
    }
    for path, text in registry_hosts(cfg).items():
        files[f"etc/containerd/certs.d/{path}"] = text
    for name, value in KERNEL_SETTINGS.items():
        files[f"sysctl/{name.replace('/', '.')}"] = value + "\n"
    return files


def mounts(cfg: NodeConfig) -> list[Mount]:
    """The binds that make the node's view (``/run`` is a tmpfs, mounted first)."""
    root = Path(cfg.directory)
    binds = [Mount(str(root / sub), target) for sub, target in NODE_PATHS]
    binds.append(Mount(cfg.cni_bin, "/opt/cni/bin", read_only=True))
    binds += [
        Mount(str(root / "sysctl" / name.replace("/", ".")), f"/proc/sys/{name}")
        for name in KERNEL_SETTINGS
    ]
    return binds


def prepare(cfg: NodeConfig) -> Path:
    """Write the node's files and directories (not its PKI); the ``node.json`` path."""
    root = Path(cfg.directory)
    for sub, _ in NODE_PATHS:
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "logs").mkdir(parents=True, exist_ok=True)
    for rel, text in render_files(cfg).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    config = root / "node.json"
    config.write_text(cfg.to_json())
    return config


# ------------------------------------------------------------------ the launcher


class _Stop(Exception):
    pass


@dataclass
class _Daemon:
    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0

    def start(self) -> None:
        self.process, _ = spawn_logged(
            self.argv, self.log_path, env=self.env, deathsig=signal.SIGKILL, new_session=False
        )
        log.info("started %s pid=%d", self.name, self.process.pid)

    def stop(self, timeout: float) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


class NodeLauncher:
    """Runs one node's containerd and kubelet inside the node's namespaces."""

    def __init__(self, cfg: NodeConfig) -> None:
        self.cfg = cfg
        logs = Path(cfg.directory) / "logs"
        env = {
            "PATH": f"{cfg.node_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root",
        }
        self.containerd = _Daemon("containerd", containerd_argv(cfg), logs / "containerd.log", env)
        self.kubelet = _Daemon("kubelet", kubelet_argv(cfg), logs / "kubelet.log", env)
        self._stopping = False

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True
        raise _Stop

    def enter(self) -> None:
        """Clear what an earlier launcher of this node left behind, join the node's
        cgroup, make the private mounts.

        A launcher killed with SIGKILL takes containerd and the kubelet with it (they die
        with their parent), but the shims and containers live on in the node's cgroup,
        unreachable: their sockets were in that launcher's private ``/run``. The new
        kubelet would start every pod again beside them (two kube-proxy-py agents on one
        node), so they are killed first, as a rebooted node starts with none."""
        leftovers = cgroups.pids(self.cfg.cgroup_root) - {os.getpid()}
        if leftovers:
            log.warning(
                "node %s: killing %d process(es) an earlier launcher left in %s",
                self.cfg.name,
                len(leftovers),
                self.cfg.cgroup_root,
            )
            for problem in cgroups.remove(self.cfg.cgroup_root):
                log.warning("node %s: %s", self.cfg.name, problem)
        cgroups.join(self.cfg.runtime_cgroup)
        private_mount_namespace()
        mount_tmpfs("/run", "mode=755,size=64m")
        setup_mounts(mounts(self.cfg))

    def _wait_socket(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not os.path.exists(CONTAINERD_SOCKET):
            proc = self.containerd.process
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(
                    f"containerd exited with {proc.returncode}: see {self.containerd.log_path}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"containerd made no socket in {timeout:.0f}s")
            time.sleep(0.05)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            self.containerd.start()
            self._wait_socket()
            self.kubelet.start()
            print(json.dumps({"event": "ready", "node": self.cfg.name}), flush=True)
            while True:
                for daemon in (self.containerd, self.kubelet):
                    self._keep(daemon)
                time.sleep(0.5)
        except _Stop:
            pass
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            self.kubelet.stop(10)
            self.containerd.stop(10)
            problems = cgroups.remove(self.cfg.cgroup_root)
            for problem in problems:
                log.warning("node %s teardown: %s", self.cfg.name, problem)
        return 0

    def _keep(self, daemon: _Daemon) -> None:
        proc = daemon.process
        if proc is None or proc.poll() is None:
            return
        now = time.monotonic()
        if daemon.next_start == 0.0:
            delay = min(30.0, 2.0 ** min(daemon.restarts, 5))
            daemon.next_start = now + delay
            log.warning(
                "%s exited with %s on node %s; restarting in %.0fs",
                daemon.name,
                proc.returncode,
                self.cfg.name,
                delay,
            )
        elif now >= daemon.next_start:
            daemon.restarts += 1
            daemon.next_start = 0.0
            daemon.start()


def launcher_argv(netns: str, config: Path, python: str = sys.executable) -> list[str]:
    """How the supervisor starts a node: only the *network* namespace is entered here
    (``ip netns exec`` would also remount /sys, hiding the cgroup mounts)."""
    return [
        "nsenter",
        f"--net=/run/netns/{netns}",
        "--",
        python,
        "-m",
        "proxy.lab.node",
        "--config",
        str(config),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m proxy.lab.node")
    parser.add_argument("--config", required=True, type=Path, help="the node's node.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    cfg = NodeConfig.from_json(args.config.read_text())
    launcher = NodeLauncher(cfg)
    try:
        launcher.enter()
    except Exception as exc:
        print(f"kube-proxy-py lab node {cfg.name}: {exc}", file=sys.stderr)
        with contextlib.suppress(Exception):
            cgroups.remove(cfg.cgroup_root)
        return 126
    return launcher.run()


if __name__ == "__main__":
    sys.exit(main())
