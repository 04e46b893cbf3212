"""``kube-proxy-py lab up|down|status|kubectl|shell`` through the CLI, on real nodes.

The lab tests run ``python -m proxy lab …`` as subprocesses with a temporary
``--state-dir``, exactly as a user would: kubelets and containerd on every node, the
kube-proxy-py DaemonSet's pods from the image built from the Dockerfile, and every kubectl
verb a kind user types (exec, run -i --rm, attach, logs -f, port-forward, cp), Service
environment variables, probes, grace periods and restarts. ``lab down`` (also after the
supervisor was SIGKILLed, or is stuck) must leave nothing behind: no namespace, process,
cgroup, root-namespace rule, listener, mount, mount-point directory or state file.
"""

from __future__ import annotations

import io
import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from proxy.cli import build_parser
from proxy.host import netns as hostns
from proxy.host.process import SOURCE_ROOT, proc_cmdline, proc_starttime
from proxy.host.sockets import NetnsHTTPConnection
from proxy.lab import cgroups, imagecache, oci
from proxy.lab import clients as labclients
from proxy.lab import state as labstate
from proxy.lab import topology as labtopology
from proxy.lab.build import BIN_ENV
from proxy.lab.commands import down as labdown
from proxy.lab.errors import LabError

ROOT_ONLY = pytest.mark.netns
LAB_PORTS = {2379, 2380, 6443, 10249, 10256, 10257, 10259}
MOUNT_POINTS = (
    "/var/lib/kubelet",
    "/var/lib/containerd",
    "/var/lib/cni",
    "/etc/containerd",
    "/etc/cni",
    "/opt/cni",
    "/run/containerd",
    "/var/log/pods",
    "/var/log/containers",
    "/var/lib/kube-proxy-py",
)
"""Paths a node binds over inside its own mount namespace (and the DaemonSet's volume):
the host must not gain them."""
UP_TIMEOUT = 900.0  # a cold binary build happens in k8s_bin, not here; generous anyway


# --------------------------------------------------------------------------- no root


def test_lab_kubectl_passes_options_through() -> None:
    parser = build_parser()
    args = parser.parse_args(["lab", "kubectl", "-n", "kube-system", "get", "pods", "-o", "wide"])
    assert args.args == ["-n", "kube-system", "get", "pods", "-o", "wide"]
    assert args.state_dir is None
    args = parser.parse_args(["lab", "kubectl", "--state-dir", "/x", "--", "--help"])
    assert (args.state_dir, args.args) == ("/x", ["--help"])
    args = parser.parse_args(["lab", "shell", "--state-dir=/y", "node-1", "--", "ip", "-br", "a"])
    assert (args.state_dir, args.target, args.shell_command) == ("/y", "node-1", ["ip", "-br", "a"])


def test_topology_nodes_zones_and_compare_node() -> None:
    spec, zones = labtopology.lab_topology(3, compare=True)
    assert [(n.name, n.lan_ip, n.pod_cidr) for n in spec.nodes] == [
        ("node-1", "192.168.50.11", "10.244.1.0/24"),
        ("node-2", "192.168.50.12", "10.244.2.0/24"),
        ("node-3", "192.168.50.13", "10.244.3.0/24"),
        ("node-upstream", "192.168.50.30", "10.244.30.0/24"),
    ]
    assert [zones[n] for n in ("node-1", "node-2", "node-3")] == ["zone-a", "zone-b", "zone-a"]
    assert [(c.name, c.lan_ip) for c in spec.clients] == [
        ("client", "192.168.50.100"),
        ("registry", "192.168.50.3"),
        ("resolver", "192.168.50.4"),
    ]
    for bad in (0, labtopology.MAX_NODES + 1):
        with pytest.raises(LabError, match="1 to"):
            labtopology.lab_topology(bad, compare=False)


def mountinfo() -> list[str]:
    """Mount points of our mount namespace."""
    return [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]


@ROOT_ONLY
def test_node_mounts_are_private(tmp_path: Path) -> None:
    """What a lab node does to see its own /var/lib/kubelet, /run and kernel settings,
    seen from inside and from the host."""
    tag = f"kpp-mounts-{os.getpid()}"
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "config.toml").write_text("version = 3\n")
    setting = tmp_path / "panic"
    setting.write_text("10\n")
    deep = f"/var/lib/{tag}/a/b"
    before_mounts = mountinfo()
    before_var_lib = sorted(os.listdir("/var/lib"))
    before_panic = Path("/proc/sys/kernel/panic").read_text()
    script = textwrap.dedent(
        f"""
        import os, sys
        from pathlib import Path
        from proxy.lab import mounts
        mounts.private_mount_namespace()
        mounts.mount_tmpfs("/run", "mode=755,size=1m")
        mounts.setup_mounts([
            mounts.Mount("{volume}", "{deep}", read_only=True),
            mounts.Mount("{setting}", "/proc/sys/kernel/panic"),
        ])
        print("cfg", open("{deep}/config.toml").read().strip())
        print("run", sorted(os.listdir("/run")))
        print("panic", open("/proc/sys/kernel/panic").read().strip())
        print("var_lib", sorted(os.listdir("/var/lib")))
        try:
            open("{deep}/new", "w")
        except OSError as e:
            print("ro", e.errno)
        sys.stdout.flush()
        sys.stdin.readline()  # hold until the test looked at the host
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SOURCE_ROOT)},
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        lines = [proc.stdout.readline().strip() for _ in range(5)]
        # While it runs: the host sees none of it.
        assert not Path(f"/var/lib/{tag}").exists()
        assert mountinfo() == before_mounts
        assert sorted(os.listdir("/var/lib")) == before_var_lib
        assert Path("/proc/sys/kernel/panic").read_text() == before_panic
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert lines[0] == "cfg version = 3"
    assert lines[1] == "run []"  # a fresh tmpfs
    assert lines[2] == "panic 10"
    # The shadowed /var/lib shows every original entry plus the new mount point.
    assert lines[3] == f"var_lib {sorted([*before_var_lib, tag])!r}"
    assert lines[4] == "ro 30"  # EROFS
    assert mountinfo() == before_mounts
    assert not Path(f"/var/lib/{tag}").exists()


# --------------------------------------------------------------------------- the lab


@dataclass(frozen=True)
class HostView:
    netns: frozenset[str]
    rules: str
    listeners: frozenset[str]
    mounts: tuple[str, ...]
    paths: tuple[bool, ...]


def _rules() -> str:
    out = []
    for argv in (["iptables-save"], ["nft", "-s", "list", "ruleset"]):
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        text = re.sub(r"\[\d+:\d+\]", "", done.stdout)
        out.append("\n".join(line for line in text.splitlines() if not line.startswith("#")))
    return "\n".join(out)


def _listeners() -> frozenset[str]:
    """Root-namespace listeners on the lab's well-known ports (other tests may open
    ephemeral ones meanwhile)."""
    done = subprocess.run(["ss", "-H", "-ltnu"], capture_output=True, text=True, check=True)
    found = set()
    for line in done.stdout.splitlines():
        fields = line.split()
        port = int(fields[4].rsplit(":", 1)[1])
        if port in LAB_PORTS:
            found.add(f"{fields[0]} {fields[4]}")
    return frozenset(found)


def host_view() -> HostView:
    return HostView(
        netns=frozenset(os.listdir("/run/netns")) if Path("/run/netns").is_dir() else frozenset(),
        rules=_rules(),
        listeners=_listeners(),
        mounts=tuple(mountinfo()),
        paths=tuple(Path(p).exists() for p in MOUNT_POINTS),
    )


def lab_processes(lab_id: str, state_dir: Path) -> list[str]:
    """Live processes whose command line names this lab (by id or state directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if lab_id in cmdline or str(state_dir) in cmdline:
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found


@dataclass
class Lab:
    state_dir: Path
    env: dict[str, str]
    before: HostView
    up_output: str
    state: dict[str, Any]

    @property
    def lab_id(self) -> str:
        return str(self.state["lab_id"])

    def cli(
        self, command: str, *args: str, input: str | None = None, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        return lab_cli(self.env, command, self.state_dir, *args, input=input, timeout=timeout)

    def ns_python(self, target: str, code: str) -> str:
        done = self.cli("shell", target, "--", sys.executable, "-c", code)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout


def lab_cli(
    env: dict[str, str],
    command: str,
    state_dir: Path,
    *args: str,
    input: str | None = None,
    timeout: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "proxy", "lab", command, "--state-dir", str(state_dir), *args]
    return subprocess.run(
        argv, input=input, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def lab_env(k8s_bin: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", labstate.STATE_ENV)}
    env[BIN_ENV] = str(k8s_bin)
    env["PYTHONPATH"] = str(SOURCE_ROOT)
    return env


def start_lab(k8s_bin: Path, state_dir: Path, *args: str) -> Lab:
    before = host_view()
    env = lab_env(k8s_bin)
    done = lab_cli(env, "up", state_dir, *args, timeout=UP_TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr
    state = json.loads((state_dir / "state.json").read_text())
    return Lab(state_dir, env, before, done.stdout, state)


def assert_nothing_left(lab: Lab, records: list[labstate.ProcRecord]) -> None:
    after = host_view()
    assert not [n for n in after.netns if n.startswith(lab.lab_id)]
    assert not [r.label for r in records if r.is_ours()]
    assert lab_processes(lab.lab_id, lab.state_dir) == []
    assert after.rules == lab.before.rules
    assert after.listeners == lab.before.listeners
    assert [m for m in after.mounts if lab.lab_id in m or str(lab.state_dir) in m] == []
    assert after.paths == lab.before.paths
    assert not lab.state_dir.exists()
    assert not list(Path("/tmp").glob(f"{lab.lab_id}-*"))
    assert not cgroups.pids(cgroups.lab_path(lab.lab_id))
    assert not [h for h in cgroups.hierarchies() if (h / cgroups.LAB_ROOT / lab.lab_id).exists()]


def records_of(lab: Lab) -> list[labstate.ProcRecord]:
    state = labstate.load_state(lab.state_dir)
    assert state is not None and state.supervisor is not None
    return [state.supervisor, *state.processes.values()]


@pytest.fixture(scope="module")
def running_lab(default_lab: Lab) -> Lab:
    """The session's default lab (tests/e2e/conftest.py): test_demo.py has run the demo
    and the walkthroughs on it; test_down_leaves_nothing takes it down."""
    return default_lab


def kubectl(lab: Lab, *args: str, input: str | None = None, timeout: float = 120.0) -> str:
    """``lab kubectl ARGS``; its stdout (the test fails with kubectl's stderr otherwise)."""
    done = lab.cli("kubectl", *args, input=input, timeout=timeout)
    assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


def apply(lab: Lab, *objects: dict[str, Any]) -> None:
    kubectl(lab, "apply", "-f", "-", input="\n---\n".join(json.dumps(o) for o in objects))


def pod(name: str, command: list[str], **spec: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": "busybox", "command": command}
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"test": name}},
        "spec": {"containers": [container], **spec},
    }


def wait_ready(lab: Lab, *names: str, timeout: int = 120) -> None:
    targets = [f"pod/{n}" for n in names]
    kubectl(lab, "wait", "--for=condition=Ready", *targets, f"--timeout={timeout}s",
            timeout=timeout + 30)  # fmt: skip


def get_json(lab: Lab, *args: str) -> Any:
    return json.loads(kubectl(lab, "get", *args, "-o", "json"))


@pytest.mark.e2e
@pytest.mark.netns
def test_up_shows_progress_and_status(running_lab: Lab) -> None:
    out = running_lab.up_output
    for step in (
        "building Kubernetes",
        "creating network namespaces",
        "starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler",
        "starting the image registry on 192.168.50.3:5000",
        "starting kubelet + containerd on node-1, node-2",
        "node-1 Ready after",
        "(kubelet v1.37.2, containerd://2.3.7)",
        "kubectl apply -f daemonset.yaml (mode nftables",
        "Ready on node-2, /healthz 200",
        "starting the outside resolver on 192.168.50.4 port 53",
        "installing CoreDNS v1.14.6 (kube-dns 10.96.0.10",
        "MetalLB address pool lab-lan 192.168.50.200-192.168.50.250 (L2)",
        "add-ons ready after",
        "coredns 2/2, metallb controller 1/1, metallb speaker 2/2",
        "lab ready",
    ):
        assert step in out, out
    assert re.search(r"node-1\s+192\.168\.50\.11\s+10\.244\.1\.0/24\s+zone-a", out), out


@pytest.mark.e2e
@pytest.mark.netns
def test_status_shows_both_nodes_healthy(running_lab: Lab) -> None:
    done = running_lab.cli("status")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert f"lab {running_lab.lab_id}: running" in out
    assert "https://192.168.50.2:6443" in out
    for i, zone in ((1, "zone-a"), (2, "zone-b")):
        assert re.search(
            rf"node-{i}\s+192\.168\.50\.1{i}\s+10\.244\.{i}\.0/24\s+{zone}\s+"
            r"kube-proxy-py \(DaemonSet pod\)\s+healthy\s+running",
            out,
        ), out
    assert "KUBERNETES_SERVICE_HOST=192.168.50.2 (daemonset.yaml: kind-control-plane)" in out
    assert "image registry: 192.168.50.3:5000" in out
    assert "`client` 192.168.50.100" in out
    assert "cluster DNS: kube-dns 10.96.0.10 (CoreDNS v1.14.6, 2/2 ready)" in out
    assert "outside resolver 192.168.50.4 knows db.example.com, raw.githubusercontent.com" in out
    assert "load balancers: MetalLB v0.15.2 (L2), pool 192.168.50.200-192.168.50.250" in out


@pytest.mark.e2e
@pytest.mark.netns
def test_up_again_is_a_noop(running_lab: Lab) -> None:
    done = running_lab.cli("up")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "already running" in done.stdout
    state = json.loads((running_lab.state_dir / "state.json").read_text())
    assert state["lab_id"] == running_lab.lab_id
    assert state["supervisor"] == running_lab.state["supervisor"]
    other = running_lab.cli("up", "--mode", "iptables")
    assert other.returncode == 1
    assert "down" in other.stdout and "--mode iptables" in other.stdout
    bare = running_lab.cli("up", "--no-addons")
    assert bare.returncode == 1 and "differs from what you asked for: --no-addons" in bare.stdout


@pytest.mark.e2e
@pytest.mark.netns
def test_kubelets_registered_their_nodes(running_lab: Lab) -> None:
    nodes = {n["metadata"]["name"]: n for n in get_json(running_lab, "nodes")["items"]}
    assert sorted(nodes) == ["node-1", "node-2"]
    for i, name in enumerate(("node-1", "node-2"), start=1):
        node = nodes[name]
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True" and ready[0]["reason"] == "KubeletReady"
        info = node["status"]["nodeInfo"]
        assert info["kubeletVersion"] == "v1.37.2"
        assert info["containerRuntimeVersion"] == "containerd://2.3.7"
        assert node["spec"]["podCIDR"] == f"10.244.{i}.0/24"
        assert not node["spec"].get("taints")
        assert {"type": "InternalIP", "address": f"192.168.50.1{i}"} in node["status"]["addresses"]
        labels = node["metadata"]["labels"]
        assert labels["topology.kubernetes.io/zone"] == ("zone-a", "zone-b")[i - 1]
        assert labels["kubernetes.io/hostname"] == name
        # The kubelet holds a Lease it renews (the node lifecycle controller runs).
        lease = get_json(running_lab, "lease", name, "-n", "kube-node-lease")
        assert lease["spec"]["holderIdentity"] == name
    wide = kubectl(running_lab, "get", "nodes", "-o", "wide")
    assert len(re.findall(r"\bReady\b", wide)) == 2 and "containerd://2.3.7" in wide, wide


@pytest.mark.e2e
@pytest.mark.netns
def test_kubectl_passes_stdin_files_and_exit_codes(running_lab: Lab, tmp_path: Path) -> None:
    missing = running_lab.cli("kubectl", "get", "pod", "no-such-pod")
    assert missing.returncode == 1 and "not found" in missing.stderr
    conf = running_lab.cli(
        "kubectl", "-n", "kube-system", "get", "cm", "kube-proxy-py",
        "-o", r"jsonpath={.data.config\.conf}",
    )  # fmt: skip
    assert conf.returncode == 0 and "mode: nftables" in conf.stdout
    manifest = tmp_path / "cm.json"
    cm: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "from-file"},
    }
    manifest.write_text(json.dumps(cm))
    assert running_lab.cli("kubectl", "apply", "-f", str(manifest)).returncode == 0
    cm["metadata"]["name"] = "from-stdin"
    assert running_lab.cli("kubectl", "apply", "-f", "-", input=json.dumps(cm)).returncode == 0
    names = running_lab.cli("kubectl", "get", "cm", "-o", "name").stdout.split()
    assert {"configmap/from-file", "configmap/from-stdin"} <= set(names)


@pytest.mark.e2e
@pytest.mark.netns
def test_daemonset_pods_run_the_image_built_from_the_dockerfile(running_lab: Lab) -> None:
    pods = get_json(running_lab, "pods", "-n", "kube-system", "-l", "k8s-app=kube-proxy-py")
    by_node = {p["spec"]["nodeName"]: p for p in pods["items"]}
    assert sorted(by_node) == ["node-1", "node-2"]
    built = json.loads((imagecache.images_dir() / "kube-proxy-py.json").read_text())
    for name, item in by_node.items():
        assert item["status"]["phase"] == "Running"
        status = item["status"]["containerStatuses"][0]
        assert status["ready"] is True
        assert status["image"] == "docker.io/library/kube-proxy-py:0.1.0"
        # The image the kubelet ran is the one buildah built (pulled from the lab
        # registry through containerd's docker.io mirror).
        assert status["imageID"].endswith(built["digest"]), (status["imageID"], built)
        assert item["metadata"]["ownerReferences"][0]["kind"] == "DaemonSet"
        logs = kubectl(running_lab, "logs", "-n", "kube-system", item["metadata"]["name"])
        assert f"node={name} mode=nftables" in logs and "msg=synced" in logs, logs
    # Inside the container: its own mount namespace with the ConfigMap, in the node's
    # network namespace (hostNetwork), the ServiceAccount token projected by the kubelet.
    state = labstate.load_state(running_lab.state_dir)
    assert state is not None
    uid = by_node["node-1"]["metadata"]["uid"]
    agent = [
        pid
        for pid in cgroups.pods_pids(cgroups.node_path(running_lab.lab_id, "node-1"), uid)
        if "kube-proxy-py" in proc_cmdline(pid)
    ]
    assert agent, "no kube-proxy-py process in the pod's cgroup"
    pid = agent[0]
    root = Path(f"/proc/{pid}/root")
    assert "mode: nftables" in (root / "var/lib/kube-proxy-py/config.conf").read_text()
    sa = root / "run/secrets/kubernetes.io/serviceaccount"
    assert (sa / "token").read_text().count(".") == 2  # a JWT
    assert os.stat(f"/proc/{pid}/ns/mnt").st_ino != os.stat("/proc/self/ns/mnt").st_ino
    assert hostns.pid_in_netns(pid, f"{running_lab.lab_id}-node-1")
    assert tuple(Path(p).exists() for p in MOUNT_POINTS) == running_lab.before.paths
    # Starting in nftables mode removed any iptables rules of ours, but not the kubelet's
    # martian-packet guard (KUBE-FIREWALL), nor its canaries.
    filter_rules = subprocess.run(
        ["ip", "netns", "exec", f"{running_lab.lab_id}-node-1", "iptables-save", "-t", "filter"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "-A INPUT -j KUBE-FIREWALL" in filter_rules, filter_rules
    assert "block incoming localnet connections" in filter_rules
    assert ":KUBE-KUBELET-CANARY" in filter_rules
    # The API server listens inside the lab only.
    assert _listeners() == running_lab.before.listeners


@pytest.mark.e2e
@pytest.mark.netns
def test_exec_prints_the_pods_name_and_service_env(running_lab: Lab) -> None:
    kubectl(running_lab, "create", "deployment", "my-nginx", "--image=nginx", "--replicas=2")
    kubectl(running_lab, "expose", "deployment", "my-nginx", "--port=80")
    kubectl(running_lab, "rollout", "status", "deployment/my-nginx", "--timeout=120s",
            timeout=150)  # fmt: skip
    names = {p["metadata"]["name"] for p in get_json(running_lab, "pods", "-l", "app=my-nginx")[
        "items"]}  # fmt: skip
    hostname = kubectl(running_lab, "exec", "deploy/my-nginx", "--", "hostname").strip()
    assert hostname in names
    cluster_ip = get_json(running_lab, "svc", "my-nginx")["spec"]["clusterIP"]
    # A pod started after the Service gets its {NAME}_SERVICE_HOST/_PORT variables.
    apply(running_lab, pod("env-reader", ["sleep", "3600"]))
    wait_ready(running_lab, "env-reader")
    env = kubectl(running_lab, "exec", "env-reader", "--", "env")
    assert f"MY_NGINX_SERVICE_HOST={cluster_ip}" in env
    assert "MY_NGINX_SERVICE_PORT=80" in env
    assert f"MY_NGINX_PORT=tcp://{cluster_ip}:80" in env
    # And the Service answers through kube-proxy-py's rules, from a pod.
    body = kubectl(running_lab, "exec", "env-reader", "--", "wget", "-qO-", f"http://{cluster_ip}/")
    assert body.split()[0] in names


@pytest.mark.e2e
@pytest.mark.netns
def test_run_interactive_rm_and_attach(running_lab: Lab) -> None:
    done = running_lab.cli(
        "kubectl", "run", "asker", "--image=busybox", "--restart=Never", "-i", "--rm",
        "--", "sh", "-c", "read answer; echo got:$answer",
        input="forty-two\n", timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "got:forty-two" in done.stdout
    assert "deleted" in done.stdout + done.stderr
    gone = running_lab.cli("kubectl", "get", "pod", "asker")
    assert gone.returncode == 1 and "not found" in gone.stderr
    # attach to a running container's stdin/stdout
    # (it exits after answering, so attach returns: attach lasts as long as the container)
    reader = pod("reader", ["sh", "-c", "read line; echo got:$line"], restartPolicy="Never")
    reader["spec"]["containers"][0].update({"stdin": True, "stdinOnce": True})
    apply(running_lab, reader)
    wait_ready(running_lab, "reader")
    attached = running_lab.cli("kubectl", "attach", "-i", "reader", input="hello\n", timeout=60)
    assert "got:hello" in attached.stdout, attached.stdout + attached.stderr
    assert "got:hello" in kubectl(running_lab, "logs", "reader")


@pytest.mark.e2e
@pytest.mark.netns
def test_logs_follow(running_lab: Lab) -> None:
    script = "i=0; while true; do echo line-$i; i=$((i+1)); sleep 0.2; done"
    apply(running_lab, pod("counter", ["sh", "-c", script]))
    wait_ready(running_lab, "counter")
    argv = [sys.executable, "-m", "proxy", "lab", "kubectl", "--state-dir",
            str(running_lab.state_dir), "logs", "-f", "counter"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=running_lab.env)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().strip() for _ in range(15)]
    finally:
        proc.kill()
        proc.wait(timeout=10)
    numbers = [int(line.removeprefix("line-")) for line in lines]
    # -f streams: the lines keep coming in order, past what existed when it started.
    assert numbers == list(range(numbers[0], numbers[0] + 15))


@pytest.mark.e2e
@pytest.mark.netns
def test_port_forward_reaches_the_pod(running_lab: Lab) -> None:
    # Ready only once it serves: a started container may not listen yet, and kubectl
    # port-forward drops a connection the pod refuses (seen once in CI).
    serving = {"httpGet": {"path": "/", "port": 80}, "periodSeconds": 1}
    apply(running_lab, pod("forwarded", ["nginx"],
                           container={"image": "nginx", "readinessProbe": serving}))  # fmt: skip
    wait_ready(running_lab, "forwarded")
    argv = [sys.executable, "-m", "proxy", "lab", "kubectl", "--state-dir",
            str(running_lab.state_dir), "port-forward", "pod/forwarded", "18080:80"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=running_lab.env)
    try:
        assert proc.stdout is not None
        assert "Forwarding from 127.0.0.1:18080" in proc.stdout.readline()
        # kubectl runs in the control-plane namespace: its 127.0.0.1:18080 is there.
        conn = NetnsHTTPConnection(
            f"{running_lab.lab_id}-control-plane", "127.0.0.1", 18080, timeout=10
        )
        try:
            conn.request("GET", "/")
            body = conn.getresponse().read().decode()
        finally:
            conn.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert body.split()[0] == "forwarded"
    # The pod saw the connection come from its own loopback (the runtime's forwarder
    # connects inside the pod's network namespace).
    assert body.split()[1].startswith("127.0.0.1:")


@pytest.mark.e2e
@pytest.mark.netns
def test_cp_both_ways(running_lab: Lab, tmp_path: Path) -> None:
    apply(running_lab, pod("files", ["sleep", "3600"]))
    wait_ready(running_lab, "files")
    source = tmp_path / "note.txt"
    source.write_text("a note for the pod\n")
    kubectl(running_lab, "cp", str(source), "files:/tmp/note.txt")
    assert kubectl(running_lab, "exec", "files", "--", "cat", "/tmp/note.txt") == source.read_text()
    back = tmp_path / "hostname"
    kubectl(running_lab, "cp", "files:/etc/hostname", str(back))
    assert back.read_text().strip() == "files"


@pytest.mark.e2e
@pytest.mark.netns
def test_probes_restarts_and_grace_periods(running_lab: Lab) -> None:
    ready_file = pod(
        "probed",
        ["sleep", "3600"],
        container={
            "readinessProbe": {
                "exec": {"command": ["test", "-e", "/tmp/ready"]},
                "periodSeconds": 1,
            }
        },
    )
    crashing = pod("crashing", ["sh", "-c", "echo starting; exit 3"], restartPolicy="Always")
    unhealthy = pod(
        "unhealthy",
        ["sleep", "3600"],
        container={
            "livenessProbe": {
                "exec": {"command": ["false"]},
                "periodSeconds": 1,
                "failureThreshold": 1,
            }
        },
    )
    stubborn = pod(
        "stubborn",
        ["sh", "-c", "trap '' TERM; while true; do sleep 1; done"],
        terminationGracePeriodSeconds=2,
    )
    apply(running_lab, ready_file, crashing, unhealthy, stubborn)
    # Readiness: Running but not Ready until the probe passes.
    kubectl(running_lab, "wait", "--for=jsonpath={.status.phase}=Running", "pod/probed",
            "--timeout=120s", timeout=150)  # fmt: skip
    assert (
        get_json(running_lab, "pod", "probed")["status"]["containerStatuses"][0]["ready"] is False
    )
    kubectl(running_lab, "exec", "probed", "--", "touch", "/tmp/ready")
    wait_ready(running_lab, "probed")
    # Restarts: a container that exits, and one the liveness probe kills.
    for name in ("crashing", "unhealthy"):
        kubectl(running_lab, "wait", "--for=jsonpath={.status.containerStatuses[0].restartCount}=1",
                f"pod/{name}", "--timeout=180s", timeout=210)  # fmt: skip
    crashed = get_json(running_lab, "pod", "crashing")["status"]["containerStatuses"][0]
    assert crashed["lastState"]["terminated"]["exitCode"] == 3
    assert "starting" in kubectl(running_lab, "logs", "crashing", "--previous")
    events = kubectl(running_lab, "get", "events", "--field-selector=involvedObject.name=unhealthy")
    assert "Liveness probe failed" in events, events
    # Grace period: a container ignoring SIGTERM is killed when its 2 s are over, so the
    # delete finishes (the default 30 s would outlast kubectl's --timeout here).
    wait_ready(running_lab, "stubborn")
    kubectl(running_lab, "delete", "pod", "stubborn", "--wait=true", "--timeout=20s",
            timeout=60)  # fmt: skip
    kubectl(running_lab, "delete", "pod", "probed", "crashing", "unhealthy", "--wait=false")


@pytest.mark.e2e
@pytest.mark.netns
def test_deployment_and_expose_are_reachable(running_lab: Lab) -> None:
    web = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [
                        {
                            "name": "web",
                            "image": "kube-proxy-py-workload:0.1.0",
                            "args": ["--name", "$(POD_NAME)", "--tcp", "80"],
                            "env": [
                                {
                                    "name": "POD_NAME",
                                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                                }
                            ],
                            "ports": [{"containerPort": 80}],
                        }
                    ]
                },
            },
        },
    }
    apply(running_lab, web)
    kubectl(running_lab, "expose", "deployment", "web", "--port=80", "--type=NodePort")
    kubectl(running_lab, "rollout", "status", "deployment/web", "--timeout=120s", timeout=150)
    pods = get_json(running_lab, "pods", "-l", "app=web")["items"]
    names = {p["metadata"]["name"] for p in pods}
    assert len(names) == 3
    svc = get_json(running_lab, "svc", "web")
    cluster_ip, node_port = svc["spec"]["clusterIP"], svc["spec"]["ports"][0]["nodePort"]
    probe = textwrap.dedent(
        """
        import socket, sys, time
        host, port, want = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
        seen, deadline = set(), time.monotonic() + 60
        while len(seen) < want and time.monotonic() < deadline:
            try:
                with socket.create_connection((host, port), timeout=2) as s:
                    seen.add(s.recv(200).decode().split()[0])
            except OSError:
                time.sleep(0.2)
        print(" ".join(sorted(seen)))
        """
    )

    def reach(target: str, host: str, port: int) -> set[str]:
        done = running_lab.cli(
            "shell", target, "--", sys.executable, "-c", probe, host, str(port), "3"
        )
        assert done.returncode == 0, done.stderr
        return set(done.stdout.split())

    assert reach("node-1", cluster_ip, 80) == names
    assert reach("client", "192.168.50.12", node_port) == names
    first = pods[0]
    shown = running_lab.cli(
        "shell", f"default/{first['metadata']['name']}", "--", "ip", "-br", "addr"
    )
    assert shown.returncode == 0, shown.stderr
    assert f"{first['status']['podIP']}/24" in shown.stdout


@pytest.mark.e2e
@pytest.mark.netns
def test_an_image_no_registry_has_fails_to_pull(running_lab: Lab) -> None:
    apply(running_lab, pod("unknown-image", ["true"], container={"image": "example/nope:1"}))
    kubectl(running_lab, "wait",
            "--for=jsonpath={.status.containerStatuses[0].state.waiting.reason}=ErrImagePull",
            "pod/unknown-image", "--timeout=120s", timeout=150)  # fmt: skip
    kubectl(running_lab, "delete", "pod", "unknown-image", "--wait=false")


@pytest.mark.e2e
@pytest.mark.netns
def test_load_image_adds_an_image_pods_can_run(running_lab: Lab, tmp_path: Path) -> None:
    """``lab load-image`` (like ``kind load image-archive``): an image built elsewhere
    runs in a Pod; one named under a registry the nodes do not mirror is refused."""
    store = oci.BlobStore(tmp_path / "store")
    with oci.OciArchive(imagecache.images_dir() / "busybox.tar") as busybox:
        base = busybox.images()[0].view
        for blob in base.layers:
            with busybox.open_blob(blob.digest) as src, store.writer() as dst:
                dst.write(src.read())
        diff_ids = oci.image_config(busybox, base)["rootfs"]["diff_ids"]
    layers = [
        oci.Layer(desc, str(diff_id), "busybox")
        for desc, diff_id in zip(base.layers, diff_ids, strict=True)
    ]
    layers.append(oci.write_layer(store, [oci.file("greeting", "hello from a loaded image\n")],
                                  "the greeting"))  # fmt: skip
    manifest = oci.write_image(store, layers, oci.ImageConfig(cmd=["cat", "/greeting"]))
    archive = tmp_path / "hello.tar"
    oci.write_oci_archive(archive, store, manifest, ("docker.io/library/hello-lab:1",))
    done = running_lab.cli("load-image", str(archive))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "loaded docker.io/library/hello-lab:1 into the lab registry" in done.stdout
    out = running_lab.cli("kubectl", "run", "hello", "--image=hello-lab:1", "--restart=Never",
                          "-i", "--rm", "--quiet", timeout=180)  # fmt: skip
    assert "hello from a loaded image" in out.stdout, out.stdout + out.stderr
    elsewhere = tmp_path / "elsewhere.tar"
    oci.write_oci_archive(elsewhere, store, manifest, ("example.com/team/hello:1",))
    refused = running_lab.cli("load-image", str(elsewhere))
    assert refused.returncode == 1 and "example.com/team/hello:1" in refused.stderr
    assert "docker.io" in refused.stderr


@pytest.mark.e2e
@pytest.mark.netns
def test_rollout_restart_replaces_every_proxy_pod(running_lab: Lab) -> None:
    selector = ("-n", "kube-system", "-l", "k8s-app=kube-proxy-py")
    before = {p["metadata"]["name"] for p in get_json(running_lab, "pods", *selector)["items"]}
    kubectl(running_lab, "rollout", "restart", "daemonset/kube-proxy-py", "-n", "kube-system")
    kubectl(running_lab, "rollout", "status", "daemonset/kube-proxy-py", "-n", "kube-system",
            "--timeout=180s", timeout=210)  # fmt: skip
    after = get_json(running_lab, "pods", *selector)["items"]
    running = {p["metadata"]["name"] for p in after if not p["metadata"].get("deletionTimestamp")}
    assert len(running) == 2 and not running & before
    state = labstate.load_state(running_lab.state_dir)
    assert state is not None
    for node in state.nodes:
        status, _ = labclients.node_health(node.namespace)
        assert status == 200


@pytest.mark.e2e
@pytest.mark.netns
def test_shell_runs_in_the_namespace_and_passes_the_exit_code(running_lab: Lab) -> None:
    done = running_lab.cli("shell", "node-1", "--", "ip", "-br", "addr")
    assert done.returncode == 0, done.stderr
    assert "192.168.50.11/24" in done.stdout
    assert "cni0" in done.stdout  # the CNI bridge plugin's bridge
    assert running_lab.cli("shell", "client", "--", "sh", "-c", "exit 7").returncode == 7
    unknown = running_lab.cli("shell", "no-such-thing", "--", "true")
    assert unknown.returncode == 1 and "no node" in unknown.stderr


def agent_pids(lab: Lab, node: str) -> set[int]:
    """kube-proxy-py agent processes anywhere in the node's cgroup subtree."""
    found = set()
    for pid in cgroups.pids(cgroups.node_path(lab.lab_id, node)):
        words = proc_cmdline(pid).split()
        if any(Path(w).name == "kube-proxy-py" for w in words[:2]) and "run" in words:
            found.add(pid)
    return found


@pytest.mark.e2e
@pytest.mark.netns
def test_a_killed_node_comes_back_with_one_agent(running_lab: Lab) -> None:
    """SIGKILL to a node's launcher (its containerd and kubelet die with it, its
    containers would not): the supervisor starts the node again, which first kills what
    the old one left, so the node runs one kube-proxy-py agent again, not two."""
    (old,) = agent_pids(running_lab, "node-2")
    state = labstate.load_state(running_lab.state_dir)
    assert state is not None
    launcher = state.processes["node/node-2"]
    restarts = state.restarts.get("node/node-2", 0)
    os.kill(launcher.pid, signal.SIGKILL)
    deadline = time.monotonic() + 180
    while True:
        state = labstate.load_state(running_lab.state_dir)
        assert state is not None
        pids = agent_pids(running_lab, "node-2")
        healthy = labclients.node_health(f"{running_lab.lab_id}-node-2")[0] == 200
        if state.restarts.get("node/node-2", 0) > restarts and healthy and old not in pids:
            break
        assert time.monotonic() < deadline, f"node-2 not back: agents {pids}, healthy {healthy}"
        time.sleep(1)
    time.sleep(5)  # had the old containers survived, the kubelet would have started a 2nd
    assert len(agent_pids(running_lab, "node-2")) == 1
    log = (running_lab.state_dir / "nodes" / "node-2" / "logs" / "node.log").read_text()
    assert "an earlier launcher left" in log, log[-2000:]


@pytest.mark.e2e
@pytest.mark.netns
def test_down_leaves_nothing(running_lab: Lab) -> None:
    records = records_of(running_lab)
    assert all(r.is_ours() for r in records), [r.label for r in records if not r.is_ours()]
    assert cgroups.pids(cgroups.lab_path(running_lab.lab_id))  # containers are running
    done = running_lab.cli("down", timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "deleted" in done.stdout and f"lab {running_lab.lab_id} is down" in done.stdout
    assert_nothing_left(running_lab, records)
    again = running_lab.cli("down")
    assert again.returncode == 0 and "no lab is running" in again.stdout
    status = running_lab.cli("status")
    assert status.returncode == 1 and "no lab is running" in status.stderr


def _version(address: str) -> int:
    return ipaddress.ip_network(address, strict=False).version


def check_ip_families(lab: Lab, versions: tuple[int, ...], server_node: str, client_node: str,
                      *, through_proxy: bool) -> None:  # fmt: skip
    """A lab of IP ``versions`` (primary first): every Node's InternalIPs and podCIDRs,
    pods' podIPs, a PreferDualStack Service's ClusterIPs and its EndpointSlices are of
    those families; a pod on ``client_node`` reaches the server pod on ``server_node``
    and the outside client over each family, and the outside resolver answers it AAAA
    records (IPv6). ``through_proxy``: the client pod's node runs a proxy of every
    family (upstream kube-proxy), so it reaches the Service on each ClusterIP."""
    for item in get_json(lab, "nodes")["items"]:
        name = item["metadata"]["name"]
        internal = [a["address"] for a in item["status"]["addresses"] if a["type"] == "InternalIP"]
        assert [_version(a) for a in internal] == list(versions), (name, internal)
        assert [_version(c) for c in item["spec"]["podCIDRs"]] == list(versions), name
    server = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "fam-server", "labels": {"test": "fam-server"}},
        "spec": {
            "nodeName": server_node,
            "containers": [{"name": "main", "image": "nginx", "ports": [{"containerPort": 80}]}],
        },
    }
    asker = pod("fam-client", ["sleep", "3600"], nodeName=client_node)
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "fam-server"},
        "spec": {
            "ipFamilyPolicy": "PreferDualStack",
            "selector": {"test": "fam-server"},
            "ports": [{"port": 80, "targetPort": 80}],
        },
    }
    apply(lab, server, asker, service)
    wait_ready(lab, "fam-server", "fam-client")
    got_pod, got_svc = get_json(lab, "pod/fam-server", "svc/fam-server")["items"]
    server_ips = [p["ip"] for p in got_pod["status"]["podIPs"]]
    assert [_version(ip) for ip in server_ips] == list(versions), server_ips
    cluster_ips = got_svc["spec"]["clusterIPs"]
    assert [_version(ip) for ip in cluster_ips] == list(versions), cluster_ips
    want_types = {f"IPv{v}" for v in versions}

    def slices() -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        items = get_json(lab, "endpointslices", "-l", "kubernetes.io/service-name=fam-server")
        for sl in items["items"]:
            for ep in sl.get("endpoints") or []:
                found.setdefault(sl["addressType"], set()).update(ep["addresses"])
        return found

    deadline = time.monotonic() + 30
    while set(slices()) != want_types and time.monotonic() < deadline:
        time.sleep(0.5)
    assert slices() == {f"IPv{_version(ip)}": {ip} for ip in server_ips}

    # Every probe in one exec (each `lab kubectl` costs a second): one line per probe,
    # "<probe> <exit code> <output>".
    def url(ip: str) -> str:
        return f"http://[{ip}]/" if ":" in ip else f"http://{ip}/"

    probes = {f"pod {ip}": f"wget -qO- {url(ip)}" for ip in server_ips}
    if through_proxy:
        probes |= {f"service {ip}": f"wget -qO- {url(ip)}" for ip in cluster_ips}
    probes |= {f"client {ip}": f"ping -c 1 -W 5 {ip}" for ip in lab.state["client"]["lan_ips"]}
    resolver = labtopology.addresses(labtopology.RESOLVER_IP, versions)[0]
    if 6 in versions:
        probes["AAAA"] = f"nslookup -type=AAAA db.example.com {resolver}"
    script = "".join(
        f'out=$({command} 2>&1); echo "{name}|$?|$(echo $out)"\n'
        for name, command in probes.items()
    )
    lines = kubectl(lab, "exec", "fam-client", "--", "sh", "-c", script).splitlines()
    results = {name: (int(rc), out) for name, rc, out in (line.split("|", 2) for line in lines)}
    assert set(results) == set(probes), lines
    failed = {name: r for name, r in results.items() if r[0] != 0}
    assert not failed, failed
    for name, (_, out) in results.items():
        if name.startswith(("pod", "service")):  # the nginx stand-in names its pod
            assert out.split()[0] == "fam-server", (name, out)
    if 6 in versions:
        assert labtopology.twin(labtopology.RESOLVER_IP, 6) in results["AAAA"][1]


@pytest.mark.e2e
@pytest.mark.netns
def test_dual_stack_compare_then_crash_then_down(k8s_bin: Path, tmp_path: Path) -> None:
    """A dual-stack lab with upstream kube-proxy beside kube-proxy-py runs the guided demo
    (in the primary family, IPv4; both agents program both families); its supervisor is
    killed, then down."""
    lab = start_lab(k8s_bin, tmp_path / "state", "--compare", "--ip-family", "dual")
    try:
        assert "deploying upstream kube-proxy as a DaemonSet on node-upstream" in lab.up_output
        assert lab.state["ip_family"] == "dual"
        check_ip_families(lab, (4, 6), "node-1", labtopology.UPSTREAM_NODE, through_proxy=True)
        upstream = f"{lab.lab_id}-node-upstream"
        status, body = labclients.node_health(upstream)
        assert status == 200 and "lastUpdated" in body
        pods = get_json(lab, "pods", "-n", "kube-system", "-o", "wide")["items"]
        placed = {
            (p["metadata"]["labels"]["k8s-app"], p["spec"]["nodeName"])
            for p in pods
            if p["metadata"]["labels"].get("k8s-app") in ("kube-proxy-py", "kube-proxy")
        }
        assert placed == {("kube-proxy-py", "node-1"), ("kube-proxy-py", "node-2"),
                          ("kube-proxy", "node-upstream")}  # fmt: skip
        demo = lab.cli("demo", "--no-color", timeout=600)
        assert demo.returncode == 0, demo.stdout[-6000:] + demo.stderr[-2000:]
        assert "(nftables mode, IPv4/IPv6, lab " in demo.stdout
        assert "lab demo: all 10 steps behaved as expected." in demo.stdout
        upstream_pod = next(
            p for p in pods if p["metadata"]["labels"].get("k8s-app") == "kube-proxy"
        )
        image = upstream_pod["status"]["containerStatuses"][0]["image"]
        assert image == "registry.k8s.io/kube-proxy:v1.37.2"
        shown = lab.cli("status")
        assert re.search(
            r"node-upstream\s+192\.168\.50\.30,fd00:192:168:50::30\s+"
            r"10\.244\.30\.0/24,fd00:10:244:30::/64\s+\S+\s+kube-proxy "
            r"\(DaemonSet pod\)\s+healthy",
            shown.stdout,
        ), shown.stdout
        assert "IP family: dual (IPv4/IPv6)" in shown.stdout
        assert "node affinity: not on node-upstream" in shown.stdout

        records = records_of(lab)
        state = labstate.load_state(lab.state_dir)
        assert state is not None and state.supervisor is not None
        os.kill(state.supervisor.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while state.supervisor.is_ours() and time.monotonic() < deadline:
            time.sleep(0.1)
        crashed = lab.cli("status")
        assert crashed.returncode == 1 and "NOT running" in crashed.stdout
        refused = lab.cli("kubectl", "get", "nodes")
        assert refused.returncode == 1 and "not running" in refused.stderr
        done = lab.cli("down", timeout=180)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "supervisor is not running" in done.stdout
        assert_nothing_left(lab, records)
    finally:
        lab.cli("down")


@pytest.mark.e2e
@pytest.mark.netns
def test_ipv6_only_then_down_with_a_stuck_supervisor(
    k8s_bin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An IPv6-only lab (no IPv4 address anywhere but loopback) runs the guided demo: all
    ten steps, in IPv6 (CoreDNS's AAAA records, MetalLB's neighbour advertisements); its
    supervisor then stops answering signals, and down still removes everything."""
    lab = start_lab(k8s_bin, tmp_path / "state", "--ip-family", "ipv6")
    try:
        assert lab.state["ip_family"] == "ipv6"
        assert "API server: https://[fd00:192:168:50::2]:6443" in lab.up_output
        check_ip_families(lab, (6,), "node-1", "node-2", through_proxy=True)
        demo = lab.cli("demo", "--no-color", timeout=600)
        assert demo.returncode == 0, demo.stdout[-6000:] + demo.stderr[-2000:]
        assert "(nftables mode, IPv6, lab " in demo.stdout
        assert "lab demo: all 10 steps behaved as expected." in demo.stdout
        assert "announces fd00:192:168:50::2" in demo.stdout  # the pool: ::200-::250
        records = records_of(lab)
        supervisor = records[0]
        os.kill(supervisor.pid, signal.SIGSTOP)  # alive, but will never act on SIGTERM
        monkeypatch.setattr(labdown, "STOP_TIMEOUT", 2.0)
        out = io.StringIO()
        assert labdown.down(lab.state_dir, out=out) == 0, out.getvalue()
        assert "did not stop" in out.getvalue()
        deadline = time.monotonic() + 10
        while proc_starttime(supervisor.pid) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert_nothing_left(lab, records)
    finally:
        with_supervisor = labstate.load_state(lab.state_dir) if lab.state_dir.exists() else None
        sup = with_supervisor.supervisor if with_supervisor is not None else None
        if sup is not None and sup.is_ours():
            os.kill(sup.pid, signal.SIGCONT)
        lab.cli("down")
