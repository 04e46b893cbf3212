"""The control plane inside a lab network namespace, reached over the lab's LAN.

Node agents run in node namespaces and cannot reach the root namespace's loopback, and no
test namespace is ever linked to the root namespace. So the control plane runs in a LAN
client namespace of a harness Topology ("control-plane", 192.168.50.2): node namespaces
reach https://192.168.50.2:6443 over the LAN bridge, the test process (root namespace)
uses `ip netns exec` and sockets created inside that namespace, and nothing of it listens
in the root namespace.

The first tests check proxy.host.netns and proxy.host.sockets on their own, in a bare namespace.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.harness import Topology
from proxy.host import netns as hostns
from proxy.host.sockets import NetnsHTTPConnection, connect_in_netns
from proxy.host.spec import ClientSpec, TopologySpec, default_spec
from proxy.lab.build import K8S_VERSION
from proxy.lab.controlplane.components import APISERVER, CONTROLLER_MANAGER, ETCD
from proxy.lab.controlplane.controlplane import ControlPlane
from proxy.lab.controlplane.errors import ControlPlaneError, KubectlError
from proxy.lab.ports import listeners_of, tcp_listeners
from tests.e2e.test_controlplane import NotYet, pid_alive, wait_for

pytestmark = pytest.mark.e2e

CP_IP = "192.168.50.2"
SPARE_IP = "192.168.50.3"

RootState = dict[str, frozenset[str]]


def _spec() -> TopologySpec:
    """The default nodes and outside client, plus two control plane hosts on the LAN.

    No pods: no node agent runs here, and workload servers would only cost CPU.
    """
    spec = default_spec()
    return dataclasses.replace(
        spec,
        pods=(),
        clients=(
            *spec.clients,
            ClientSpec("control-plane", CP_IP),
            ClientSpec("cp-spare", SPARE_IP),
        ),
    )


def _ip_json(*args: str) -> list[dict[str, Any]]:
    done = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True)
    return list(json.loads(done.stdout or "[]"))


def _root_state() -> RootState:
    """The root namespace's interfaces, addresses and routes (all tables)."""
    links = frozenset(str(link["ifname"]) for link in _ip_json("link", "show"))
    addresses = frozenset(
        f"{link['ifname']} {a['local']}/{a['prefixlen']}"
        for link in _ip_json("address", "show")
        for a in link.get("addr_info", [])
    )
    routes = frozenset(
        f"{r.get('table', 'main')} {r.get('type', '')} {r['dst']} {r.get('dev', '')}"
        for r in _ip_json("route", "show", "table", "all")
    )
    return {"links": links, "addresses": addresses, "routes": routes}


def _listening(pid: int, *, own_namespace: bool) -> set[tuple[str, int]]:
    return {(lst.address, lst.port) for lst in listeners_of(pid, own_namespace=own_namespace)}


@pytest.fixture(scope="module")
def root_before() -> RootState:
    if os.geteuid() != 0:
        pytest.skip("needs root: builds network namespaces")
    return _root_state()


@pytest.fixture(scope="module")
def topo(root_before: RootState) -> Iterator[Topology]:
    topology = Topology(_spec()).up()
    try:
        yield topology
    finally:
        names = topology.namespaces
        topology.down()  # raises HarnessError if a process or namespace is left
        assert not [n for n in names if hostns.netns_path(n).exists()]


@pytest.fixture(scope="module")
def cp(k8s_bin: Path, topo: Topology) -> Iterator[ControlPlane]:
    with ControlPlane(
        k8s_bin, netns=topo.ns("control-plane"), bind_address=CP_IP, with_controllers=True
    ) as plane:
        yield plane


# -- proxy.host.netns and .sockets on their own (a bare namespace with lo up) --------


def _tcp_socket_inodes() -> set[int]:
    """Inodes of every TCP socket of the calling thread's network namespace."""
    inodes: set[int] = set()
    for table in ("tcp", "tcp6"):
        lines = Path(f"/proc/thread-self/net/{table}").read_text().splitlines()[1:]
        inodes |= {int(line.split()[9]) for line in lines}
    return inodes


def _listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock


@pytest.mark.netns
def test_run_in_netns_never_moves_the_caller(netns: str) -> None:
    ours = hostns.thread_netns_id()
    assert hostns.netns_id(netns) != ours
    assert hostns.run_in_netns(netns, hostns.thread_netns_id) == hostns.netns_id(netns)
    assert hostns.thread_netns_id() == ours

    with pytest.raises(ZeroDivisionError):
        hostns.run_in_netns(netns, lambda: 1 // 0)
    assert hostns.thread_netns_id() == ours

    with pytest.raises(hostns.NetnsError, match="no network namespace 'kpp-none-such'"):
        hostns.run_in_netns("kpp-none-such", hostns.thread_netns_id)
    with pytest.raises(ValueError, match="not a network namespace name"):
        hostns.run_in_netns("../etc", hostns.thread_netns_id)
    assert hostns.thread_netns_id() == ours


@pytest.mark.netns
def test_sockets_keep_the_namespace_they_were_made_in(netns: str) -> None:
    listener = hostns.run_in_netns(netns, _listener)
    with listener:
        port = listener.getsockname()[1]
        inode = os.fstat(listener.fileno()).st_ino
        assert inode in {lst.inode for lst in hostns.run_in_netns(netns, tcp_listeners)}
        assert inode not in {lst.inode for lst in tcp_listeners()}

        # Created on a throwaway thread, used from this one.
        with connect_in_netns(netns, "127.0.0.1", port, timeout=5) as client:
            server, peer = listener.accept()
            with server:
                client.sendall(b"ping")
                assert server.recv(4) == b"ping"
                assert peer[0] == "127.0.0.1"
    with pytest.raises(ConnectionRefusedError, match=f"in netns {netns}"):
        connect_in_netns(netns, "127.0.0.1", port, timeout=5)


@pytest.mark.netns
def test_http_connection_in_netns(netns: str) -> None:
    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f"hello {self.path}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Hello, bind_and_activate=False)
    httpd.socket.close()
    httpd.socket = hostns.run_in_netns(netns, _listener)
    port = httpd.socket.getsockname()[1]
    serving = threading.Thread(target=httpd.serve_forever, daemon=True)
    serving.start()
    try:
        conn = NetnsHTTPConnection(netns, "127.0.0.1", port, timeout=5)
        try:
            conn.connect()
            assert conn.sock is not None
            client_inode = os.fstat(conn.sock.fileno()).st_ino
            assert client_inode in hostns.run_in_netns(netns, _tcp_socket_inodes)
            assert client_inode not in _tcp_socket_inodes()
            conn.request("GET", "/from-root")
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (200, b"hello /from-root")
        finally:
            conn.close()
    finally:
        httpd.shutdown()
        httpd.server_close()
        serving.join(timeout=5)


# -- the control plane in the "control-plane" namespace --------------------------------


def test_components_run_in_the_namespace_and_listen_only_there(
    cp: ControlPlane, topo: Topology, k8s_bin: Path
) -> None:
    ns = topo.ns("control-plane")
    assert cp.netns == ns
    assert cp.server == f"https://{CP_IP}:6443"
    assert cp.etcd_url == "http://127.0.0.1:2379"
    expected = {
        ETCD: {("127.0.0.1", 2379), ("127.0.0.1", 2380)},
        APISERVER: {(CP_IP, 6443)},
        CONTROLLER_MANAGER: {("127.0.0.1", 10257)},
    }
    assert set(cp.pids) == set(expected)
    assert set(cp.ports.values()) == {port for pairs in expected.values() for _, port in pairs}

    ss = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    for name, pid in cp.pids.items():
        # The tracked pid is the component itself (ip netns exec execs in place) …
        assert os.readlink(f"/proc/{pid}/exe") == os.path.realpath(k8s_bin / name)
        assert hostns.pid_in_netns(pid, ns), f"{name} (pid {pid}) is not in {ns}"
        # … it listens in its namespace exactly where expected, and nothing in ours.
        assert _listening(pid, own_namespace=True) == expected[name], name
        assert _listening(pid, own_namespace=False) == set(), name
        assert f"pid={pid}," not in ss, f"{name} listens in the root namespace:\n{ss}"


def test_root_namespace_is_untouched(cp: ControlPlane, root_before: RootState) -> None:
    assert _root_state() == root_before


def test_kubectl_and_api_from_the_test_process(cp: ControlPlane, topo: Topology) -> None:
    version = json.loads(cp.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == K8S_VERSION

    created = cp.api(
        "POST",
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "t-netns-api"}},
    )
    assert created["metadata"]["name"] == "t-netns-api"
    got = json.loads(cp.kubectl("get", "namespace", "t-netns-api", "-o", "json").stdout)
    assert got["metadata"]["uid"] == created["metadata"]["uid"]

    with pytest.raises(KubectlError) as err:
        cp.kubectl("get", "configmap", "no-such-map", "-n", "t-netns-api")
    assert f"(in netns {topo.ns('control-plane')})" in str(err.value)
    assert "NotFound" in str(err.value)


def test_kubernetes_service_endpoint_is_the_lan_address(cp: ControlPlane) -> None:
    def lan_slice() -> dict[str, Any]:
        slices = cp.api(
            "GET",
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
            "?labelSelector=kubernetes.io/service-name%3Dkubernetes",
        )["items"]
        for s in slices:
            addresses = [a for ep in s.get("endpoints") or [] for a in ep["addresses"]]
            if addresses == [CP_IP]:
                return dict(s)
        raise NotYet(f"EndpointSlices of default/kubernetes: {json.dumps(slices)}")

    eps = wait_for("the kubernetes Service's endpoint", lan_slice)
    assert [(p["name"], p["port"]) for p in eps["ports"]] == [("https", 6443)]


_NODE_CHECK = r"""
import http.client, json, ssl, sys
ca, cert, key, host, port = sys.argv[1:6]
tls = ssl.create_default_context(cafile=ca)  # verifies the IP SAN of `host`
tls.load_cert_chain(cert, key)
conn = http.client.HTTPSConnection(host, int(port), timeout=20, context=tls)
conn.request("GET", "/version")
resp = conn.getresponse()
body = json.loads(resp.read())
print(json.dumps({"status": resp.status, "peer": conn.sock.getpeername()[0], "version": body}))
"""


def test_node_namespaces_reach_the_api_server_over_the_lan(
    cp: ControlPlane, topo: Topology
) -> None:
    # A plain TLS client in node-a, verifying the serving certificate for 192.168.50.2.
    done = topo.run(
        "node-a",
        [
            sys.executable,
            "-c",
            _NODE_CHECK,
            str(cp.ca_file),
            str(cp.pki_dir / "admin.crt"),
            str(cp.pki_dir / "admin.key"),
            CP_IP,
            "6443",
        ],
    )
    reply = json.loads(done.stdout)
    assert reply["status"] == 200
    assert reply["peer"] == CP_IP
    assert reply["version"]["gitVersion"] == K8S_VERSION

    # kubectl in node-b with a ServiceAccount token, as a node agent would authenticate.
    cp.kubectl("create", "serviceaccount", "kube-proxy-py", "-n", "kube-system")
    token = cp.service_account_token("kube-system", "kube-proxy-py")
    kubeconfig = cp.token_kubeconfig("kube-proxy-py", token)
    assert json.loads(kubeconfig.read_text())["clusters"][0]["cluster"]["server"] == cp.server
    done = topo.run(
        "node-b",
        [
            str(cp.bin_dir / "kubectl"),
            f"--kubeconfig={kubeconfig}",
            f"--cache-dir={cp.workdir / 'kubectl-cache-node-b'}",
            "auth",
            "whoami",
            "-o",
            "json",
        ],
    )
    who = json.loads(done.stdout)
    assert who["status"]["userInfo"]["username"] == (
        "system:serviceaccount:kube-system:kube-proxy-py"
    )


def _etcd_range(cp: ControlPlane, revision: int) -> tuple[int, dict[str, Any]]:
    body = {"key": "Lw==", "limit": 1, "revision": str(revision)}  # key "/"
    status, raw = cp.http_request("POST", f"{cp.etcd_url}/v3/kv/range", json.dumps(body).encode())
    return status, json.loads(raw)


def test_compact_etcd_and_restart_apiserver(cp: ControlPlane, topo: Topology) -> None:
    ns = topo.ns("control-plane")
    cp.kubectl("create", "configmap", "survivor", "-n", "default", "--from-literal=k=v")
    head = int(_etcd_range(cp, 0)[1]["header"]["revision"])
    assert _etcd_range(cp, head - 1)[0] == 200

    compacted = cp.compact_etcd()
    assert compacted >= head
    status, reply = _etcd_range(cp, compacted - 1)
    assert status != 200
    assert "compacted" in reply.get("message", reply.get("error", ""))

    server, old_pid = cp.server, cp.pids[APISERVER]
    cp.restart_apiserver()
    new_pid = cp.pids[APISERVER]
    assert cp.server == server
    assert new_pid != old_pid
    assert not pid_alive(old_pid, "kube-apiserver")
    assert hostns.pid_in_netns(new_pid, ns)
    assert _listening(new_pid, own_namespace=True) == {(CP_IP, 6443)}
    cm = json.loads(cp.kubectl("get", "configmap", "survivor", "-o", "json").stdout)
    assert cm["data"] == {"k": "v"}


def test_bad_placements_fail_clearly_before_starting_anything(
    k8s_bin: Path, topo: Topology, cp: ControlPlane
) -> None:
    with pytest.raises(ValueError, match="not a loopback address"):
        ControlPlane(k8s_bin, bind_address=CP_IP)
    with pytest.raises(ValueError, match="wildcard"):
        ControlPlane(k8s_bin, netns=topo.ns("cp-spare"), bind_address="0.0.0.0")

    spare = topo.ns("cp-spare")
    cases = [
        # The address belongs to another namespace (the error lists the ones it has).
        (spare, CP_IP, [f"not usable in network namespace {spare}", SPARE_IP]),
        # The module's control plane holds the fixed ports there.
        (
            topo.ns("control-plane"),
            CP_IP,
            ["etcd/client 127.0.0.1:2379", "kube-apiserver/secure 192.168.50.2:6443"],
        ),
        ("kpp-no-such-netns", CP_IP, ["no network namespace 'kpp-no-such-netns'"]),
    ]
    for netns, address, messages in cases:
        plane = ControlPlane(k8s_bin, netns=netns, bind_address=address)
        with pytest.raises(ControlPlaneError) as err:
            plane.start(timeout=30)
        for message in messages:
            assert message in str(err.value)
        assert plane.spawned == []
        with pytest.raises(ControlPlaneError, match="no work directory"):
            plane.workdir  # noqa: B018 (nothing was created)
    assert cp.kubectl("get", "namespace", "default").returncode == 0


def test_stop_leaves_nothing_in_the_namespace(
    k8s_bin: Path, topo: Topology, root_before: RootState
) -> None:
    ns = topo.ns("cp-spare")
    plane = ControlPlane(k8s_bin, netns=ns, bind_address=SPARE_IP)
    plane.start()
    try:
        spawned, workdir = plane.spawned, plane.workdir
        assert {name for name, _ in spawned} == {ETCD, APISERVER}
        assert set(hostns.pids_in([ns])[ns]) == {pid for _, pid in spawned}
        assert plane.kubectl("get", "namespace", "default").returncode == 0
    finally:
        plane.stop()
    assert [(n, p) for n, p in spawned if pid_alive(p, n)] == []
    assert hostns.pids_in([ns])[ns] == []
    assert hostns.run_in_netns(ns, tcp_listeners) == []
    assert not workdir.exists()
    assert plane.pids == {}
    assert _root_state() == root_before
