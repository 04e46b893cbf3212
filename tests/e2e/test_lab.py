"""``kube-proxy-py lab up|down|status|kubectl|shell`` through the CLI, and the launcher.

The lab tests run ``python -m proxy lab …`` as subprocesses with a temporary
``--state-dir``, exactly as a user would, and check that ``lab down`` (also after the
supervisor was SIGKILLed, or is stuck) leaves nothing behind: no namespace, process,
root-namespace rule, listener, mount, mount-point directory or state file.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from proxy.cli import build_parser
from proxy.harness.process import SOURCE_ROOT
from proxy.lab import lab as labmod
from proxy.lab import nsutil
from proxy.lab.build import BIN_ENV

ROOT_ONLY = pytest.mark.netns
LAB_PORTS = {2379, 2380, 6443, 10249, 10256, 10257, 10259}
MOUNT_POINTS = ("/var/lib/kube-proxy-py", "/run/secrets/kubernetes.io", "/lib/modules")
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
    spec, zones = labmod.lab_topology(3, compare=True)
    assert [(n.name, n.lan_ip, n.pod_cidr) for n in spec.nodes] == [
        ("node-1", "192.168.50.11", "10.244.1.0/24"),
        ("node-2", "192.168.50.12", "10.244.2.0/24"),
        ("node-3", "192.168.50.13", "10.244.3.0/24"),
        ("node-upstream", "192.168.50.30", "10.244.30.0/24"),
    ]
    assert [zones[n] for n in ("node-1", "node-2", "node-3")] == ["zone-a", "zone-b", "zone-a"]
    assert [(c.name, c.lan_ip, c.routes_to_pods) for c in spec.clients] == [
        ("client", "192.168.50.100", True)
    ]
    for bad in (0, labmod.MAX_NODES + 1):
        with pytest.raises(labmod.LabError, match="1 to"):
            labmod.lab_topology(bad, compare=False)


def test_plan_runs_the_daemonsets_container(tmp_path: Path) -> None:
    objects = labmod.manifest_objects()
    plan = labmod.plan_container(
        objects,
        node="node-2",
        node_ip="192.168.50.12",
        mode="iptables",
        node_dir=tmp_path,
        api_host="192.168.50.2",
        api_port=6443,
    )
    container = next(d for d in objects if d["kind"] == "DaemonSet")["spec"]["template"]["spec"][
        "containers"
    ][0]
    declared = [a.replace("$(NODE_NAME)", "node-2") for a in container["command"]]
    assert list(plan.declared_command) == declared
    assert list(plan.command) == [sys.executable, "-m", "proxy", *declared[1:]]
    assert plan.env["NODE_NAME"] == "node-2"
    assert plan.env["KUBERNETES_SERVICE_HOST"] == "192.168.50.2"
    assert plan.env["KUBERNETES_SERVICE_PORT"] == "6443"
    assert plan.overrides["KUBERNETES_SERVICE_HOST"][1] == "192.168.50.2"
    targets = {m.target: m for m in plan.mounts}
    for vm in container["volumeMounts"]:
        assert vm["mountPath"] in targets
    assert targets[labmod.SERVICEACCOUNT_MOUNT].read_only
    assert targets["/var/lib/kube-proxy-py"].read_only
    config = Path(targets["/var/lib/kube-proxy-py"].source) / "config.conf"
    assert "mode: iptables" in plan.files[str(config)]
    # Every volume source lives in the node's directory unless it is an existing host path.
    for mount in plan.mounts:
        assert mount.source.startswith(str(tmp_path)) or Path(mount.source).exists()
    for directory in plan.dirs:
        Path(directory).mkdir(parents=True, exist_ok=True)
    for path, text in plan.files.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    assert labmod.check_container_args(plan) == ()


# --------------------------------------------------------------------------- launcher


def mountinfo() -> list[str]:
    """Mount points of our mount namespace."""
    return [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]


@ROOT_ONLY
def test_container_launcher_mounts_are_private(tmp_path: Path) -> None:
    tag = f"kpp-launcher-{os.getpid()}"
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "config.conf").write_text("mode: nftables\n")
    single = tmp_path / "token"
    single.write_text("secret\n")
    deep = f"/var/lib/{tag}/a/b"
    file_target = f"/var/run/{tag}.token"  # /var/run is a symlink to /run on Debian
    before_mounts = mountinfo()
    before_var_lib = sorted(os.listdir("/var/lib"))
    script = textwrap.dedent(
        f"""
        import os, sys
        print("cfg", open("{deep}/config.conf").read().strip())
        print("tok", open("{file_target}").read().strip())
        # (Python itself adds LC_CTYPE under the C locale: PEP 538)
        print("env", sorted(set(os.environ) - {{"PWD", "LC_CTYPE"}}), os.environ.get("FOO"))
        print("cwd", os.getcwd())
        print("var_lib", sorted(os.listdir("/var/lib")))
        try:
            open("{deep}/new", "w")
        except OSError as e:
            print("ro", e.errno)
        sys.stdout.flush()
        sys.stdin.readline()  # hold until the test looked at the host
        """
    )
    argv = [
        sys.executable,
        "-m",
        "proxy.lab.container",
        "--mount",
        f"{volume}:{deep}:ro",
        "--mount",
        f"{single}:{file_target}",
        "--env",
        "FOO=bar",
        "--env",
        f"PYTHONPATH={SOURCE_ROOT}",
        "--",
        sys.executable,
        "-c",
        script,
    ]
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        lines = [proc.stdout.readline().strip() for _ in range(6)]
        # While it runs: the host sees none of it.
        assert not Path(f"/var/lib/{tag}").exists()
        assert not Path(f"/run/{tag}.token").exists()
        assert mountinfo() == before_mounts
        assert sorted(os.listdir("/var/lib")) == before_var_lib
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert lines[0] == "cfg mode: nftables"
    assert lines[1] == "tok secret"
    assert lines[2] == "env ['FOO', 'PYTHONPATH'] bar"  # exactly the --env values
    assert lines[3] == "cwd /"
    # The shadowed /var/lib shows every original entry plus the new mount point.
    assert lines[4] == f"var_lib {sorted([*before_var_lib, tag])!r}"
    assert lines[5] == "ro 30"  # EROFS
    assert mountinfo() == before_mounts
    assert not Path(f"/var/lib/{tag}").exists()


@ROOT_ONLY
def test_container_launcher_reports_a_missing_volume(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "proxy.lab.container",
            "--mount",
            f"{tmp_path}/nope:/x",
            "--",
            "true",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 126
    assert "volume source" in done.stderr and "does not exist" in done.stderr


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
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", labmod.STATE_ENV)}
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


def assert_nothing_left(lab: Lab, records: list[labmod.ProcRecord]) -> None:
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


def records_of(lab: Lab) -> list[labmod.ProcRecord]:
    state = labmod.load_state(lab.state_dir)
    assert state is not None and state.supervisor is not None
    return [state.supervisor, *state.processes.values()]


@pytest.fixture(scope="module")
def running_lab(k8s_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    state_dir = tmp_path_factory.mktemp("lab") / "state"
    lab = start_lab(k8s_bin, state_dir, "--nodes", "2")
    try:
        yield lab
    finally:
        lab.cli("down")  # idempotent: a no-op after test_down_leaves_nothing


@pytest.mark.e2e
@pytest.mark.netns
def test_up_shows_progress_and_status(running_lab: Lab) -> None:
    out = running_lab.up_output
    for step in (
        "building Kubernetes",
        "creating network namespaces",
        "starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler",
        "registering nodes node-1, node-2",
        "starting pod agents",
        "starting kube-proxy-py on node-1 (nftables)",
        "kube-proxy-py/node-2 healthy",
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
    assert re.search(
        r"node-1\s+192\.168\.50\.11\s+10\.244\.1\.0/24\s+zone-a\s+kube-proxy-py\s+healthy", out
    ), out
    assert re.search(
        r"node-2\s+192\.168\.50\.12\s+10\.244\.2\.0/24\s+zone-b\s+kube-proxy-py\s+healthy", out
    ), out
    assert "KUBERNETES_SERVICE_HOST=192.168.50.2" in out
    assert "`client` 192.168.50.100" in out


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


@pytest.mark.e2e
@pytest.mark.netns
def test_kubectl_get_nodes(running_lab: Lab) -> None:
    done = running_lab.cli("kubectl", "get", "nodes", "-o", "json")
    assert done.returncode == 0, done.stderr
    nodes = {n["metadata"]["name"]: n for n in json.loads(done.stdout)["items"]}
    assert sorted(nodes) == ["node-1", "node-2"]
    for i, name in enumerate(("node-1", "node-2"), start=1):
        node = nodes[name]
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True"
        assert node["spec"]["podCIDR"] == f"10.244.{i}.0/24"
        assert not node["spec"].get("taints")
        assert {"type": "InternalIP", "address": f"192.168.50.1{i}"} in node["status"]["addresses"]
        assert (
            node["metadata"]["labels"]["topology.kubernetes.io/zone"] == ("zone-a", "zone-b")[i - 1]
        )
    plain = running_lab.cli("kubectl", "get", "nodes")
    assert len(re.findall(r"\bReady\b", plain.stdout)) == 2, plain.stdout


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
def test_agent_runs_as_the_daemonsets_container(running_lab: Lab) -> None:
    state = labmod.load_state(running_lab.state_dir)
    assert state is not None
    record = state.processes["kube-proxy-py/node-1"]
    assert record.is_ours()
    pid = record.pid
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    assert argv[1:] == [
        "-m", "proxy", "run", "--config=/var/lib/kube-proxy-py/config.conf",
        "--hostname-override=node-1",
    ]  # fmt: skip
    environ = dict(
        item.split("=", 1)
        for item in Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
        if item
    )
    assert environ["NODE_NAME"] == "node-1"
    assert environ["KUBERNETES_SERVICE_HOST"] == "192.168.50.2"
    assert environ["KUBERNETES_SERVICE_PORT"] == "6443"
    assert "KUBECONFIG" not in environ
    # Its volumes exist in its own mount namespace only.
    root = Path(f"/proc/{pid}/root")
    assert "mode: nftables" in (root / "var/lib/kube-proxy-py/config.conf").read_text()
    # /var/run -> /run is an absolute symlink: through /proc/PID/root it would resolve
    # against our root, so use the real path.
    sa = root / "run/secrets/kubernetes.io/serviceaccount"
    assert (sa / "token").read_text().count(".") == 2  # a JWT
    assert (sa / "namespace").read_text() == "kube-system"
    assert os.stat(f"/proc/{pid}/ns/mnt").st_ino != os.stat("/proc/self/ns/mnt").st_ino
    assert nsutil.pid_in_netns(pid, f"{running_lab.lab_id}-node-1")
    assert tuple(Path(p).exists() for p in MOUNT_POINTS) == running_lab.before.paths
    # The API server listens inside the lab only.
    assert _listeners() == running_lab.before.listeners


@pytest.mark.e2e
@pytest.mark.netns
def test_deployment_and_expose_are_reachable(running_lab: Lab) -> None:
    if not running_lab.state.get("pod_agent"):
        pytest.skip("no pod agent (proxy/lab/podagent.py) in this checkout: Pods stay Pending")
    kubectl = running_lab.cli
    assert (
        kubectl(
            "kubectl", "create", "deployment", "web", "--image=web", "--replicas=3", "--port=80"
        ).returncode
        == 0
    )
    assert (
        kubectl("kubectl", "expose", "deployment", "web", "--port=80", "--type=NodePort").returncode
        == 0
    )
    waited = kubectl(
        "kubectl",
        "wait",
        "--for=condition=Available",
        "deployment/web",
        "--timeout=120s",
        timeout=150,
    )
    assert waited.returncode == 0, waited.stdout + waited.stderr
    pods = json.loads(kubectl("kubectl", "get", "pods", "-l", "app=web", "-o", "json").stdout)[
        "items"
    ]
    names = {p["metadata"]["name"] for p in pods}
    assert len(names) == 3
    svc = json.loads(kubectl("kubectl", "get", "svc", "web", "-o", "json").stdout)
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
    pod = pods[0]
    shown = running_lab.cli(
        "shell", f"default/{pod['metadata']['name']}", "--", "ip", "-br", "addr"
    )
    assert shown.returncode == 0, shown.stderr
    assert f"{pod['status']['podIP']}/32" in shown.stdout


@pytest.mark.e2e
@pytest.mark.netns
def test_shell_runs_in_the_namespace_and_passes_the_exit_code(running_lab: Lab) -> None:
    done = running_lab.cli("shell", "node-1", "--", "ip", "-br", "addr")
    assert done.returncode == 0, done.stderr
    assert "192.168.50.11/24" in done.stdout
    assert running_lab.cli("shell", "client", "--", "sh", "-c", "exit 7").returncode == 7
    unknown = running_lab.cli("shell", "no-such-thing", "--", "true")
    assert unknown.returncode == 1 and "no node" in unknown.stderr


@pytest.mark.e2e
@pytest.mark.netns
def test_down_leaves_nothing(running_lab: Lab) -> None:
    records = records_of(running_lab)
    assert all(r.is_ours() for r in records), [r.label for r in records if not r.is_ours()]
    done = running_lab.cli("down", timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "deleted" in done.stdout and f"lab {running_lab.lab_id} is down" in done.stdout
    assert_nothing_left(running_lab, records)
    again = running_lab.cli("down")
    assert again.returncode == 0 and "no lab is running" in again.stdout
    status = running_lab.cli("status")
    assert status.returncode == 1 and "no lab is running" in status.stderr


@pytest.mark.e2e
@pytest.mark.netns
def test_compare_then_crash_then_down(k8s_bin: Path, tmp_path: Path) -> None:
    lab = start_lab(k8s_bin, tmp_path / "state", "--nodes", "1", "--compare")
    try:
        assert "starting upstream kube-proxy on node-upstream" in lab.up_output
        upstream = f"{lab.lab_id}-node-upstream"
        status, body = labmod.node_health(upstream)
        assert status == 200 and "lastUpdated" in body
        state = labmod.load_state(lab.state_dir)
        assert state is not None
        record = state.processes["kube-proxy/node-upstream"]
        assert record.is_ours() and "/kube-proxy " in labmod.proc_cmdline(record.pid) + " "
        shown = lab.cli("status")
        assert re.search(
            r"node-upstream\s+192\.168\.50\.30\s+10\.244\.30\.0/24\s+\S+\s+kube-proxy\s+healthy",
            shown.stdout,
        ), shown.stdout

        records = records_of(lab)
        assert state.supervisor is not None
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
def test_down_with_a_stuck_supervisor(
    k8s_bin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = start_lab(k8s_bin, tmp_path / "state", "--nodes", "1")
    try:
        records = records_of(lab)
        supervisor = records[0]
        os.kill(supervisor.pid, signal.SIGSTOP)  # alive, but will never act on SIGTERM
        monkeypatch.setattr(labmod, "STOP_TIMEOUT", 2.0)
        out = io.StringIO()
        assert labmod.down(lab.state_dir, out=out) == 0, out.getvalue()
        assert "did not stop" in out.getvalue()
        deadline = time.monotonic() + 10
        while labmod.proc_starttime(supervisor.pid) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert_nothing_left(lab, records)
    finally:
        with_supervisor = labmod.load_state(lab.state_dir) if lab.state_dir.exists() else None
        sup = with_supervisor.supervisor if with_supervisor is not None else None
        if sup is not None and sup.is_ours():
            os.kill(sup.pid, signal.SIGCONT)
        lab.cli("down")
