"""The list+watch reflector against a real etcd + kube-apiserver (no mocks).

One control plane (etcd + API server, no controllers) serves the whole module; each test
works in its own namespace and looks only at its own objects. Waits poll with generous
deadlines; nothing asserts on durations.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from proxy.apiclient.client import ApiClient, ApiError
from proxy.lab.controlplane.controlplane import ControlPlane
from proxy.source.reflector import (
    LAST_APPLIED_ANNOTATION,
    EventType,
    Reflector,
    ResourceSpec,
    endpointslices_spec,
    node_spec,
    services_spec,
)
from tests.e2e.test_controlplane import NotYet, wait_for

pytestmark = pytest.mark.e2e

T = TypeVar("T")
WAIT = 60.0
TRIGGER_TIME = "endpoints.kubernetes.io/last-change-trigger-time"


# --------------------------------------------------------------------------- helpers


class Recorder:
    """Collects what a reflector delivers (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: list[tuple[EventType, str, dict[str, Any]]] = []
        self.synced = 0

    def on_event(self, event: EventType, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        key = f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else meta["name"]
        with self._lock:
            self.events.append((event, key, obj))

    def on_synced(self) -> None:
        with self._lock:
            self.synced += 1

    def seen(self, prefix: str = "") -> list[tuple[EventType, str]]:
        with self._lock:
            return [(e, k) for e, k, _ in self.events if k.startswith(prefix)]

    def last(self, key: str) -> tuple[EventType, dict[str, Any]]:
        with self._lock:
            for e, k, o in reversed(self.events):
                if k == key:
                    return e, o
        raise NotYet(f"nothing delivered for {key}")

    def state(self, prefix: str = "") -> set[str]:
        """Keys currently present, replaying the events."""
        present: set[str] = set()
        for e, k in self.seen(prefix):
            if e == "DELETED":
                present.discard(k)
            else:
                present.add(k)
        return present

    def wait(self, what: str, cond: Callable[[], bool], timeout: float = WAIT) -> None:
        def probe() -> bool | None:
            return True if cond() else None

        wait_for(what, probe, timeout)


@contextlib.contextmanager
def reflecting(
    client: ApiClient, spec: ResourceSpec, *, synced: bool = True, **kwargs: Any
) -> Iterator[tuple[Reflector, Recorder]]:
    rec = Recorder()
    r = Reflector(client, spec, rec.on_event, on_synced=rec.on_synced, **kwargs)
    r.start()
    try:
        if synced:
            rec.wait(f"{spec.kind} reflector synced", lambda: r.has_synced)
        yield r, rec
    finally:
        r.stop(timeout=10)
        assert not r.running, "reflector thread still running after stop()"


class Partition:
    """A loopback TCP relay to the API server that a test can cut and heal.

    Cut: every relayed connection is shut down and new ones are closed at once, as if the
    network between node and control plane failed.
    """

    def __init__(self, target_port: int) -> None:
        self._target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._cut = False
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True, name="partition")
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._closed or self._cut:
                    client.close()
                    continue
            try:
                upstream = socket.create_connection(self._target, timeout=10)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            socks, self._socks = self._socks, []
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def heal(self) -> None:
        with self._lock:
            self._cut = False

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self.cut()
        self._listener.close()
        self._thread.join(5)


def service(ns: str, name: str, *, labels: dict[str, str] | None = None,
            cluster_ip: str | None = None, annotations: dict[str, str] | None = None
            ) -> dict[str, Any]:  # fmt: skip
    spec: dict[str, Any] = {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    if cluster_ip is not None:
        spec["clusterIP"] = cluster_ip
    meta: dict[str, Any] = {"name": name, "namespace": ns, "labels": labels or {}}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec}


def endpoint_slice(ns: str, name: str, svc: str, *, headless: bool = False,
                   annotations: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    labels = {"kubernetes.io/service-name": svc}
    if headless:  # what the EndpointSlice controller sets for a Service without a cluster IP
        labels["service.kubernetes.io/headless"] = ""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns, "labels": labels,
                     "annotations": annotations or {}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": True}}],
    }  # fmt: skip


def kapply(cp: ControlPlane, *objs: dict[str, Any]) -> None:
    cp.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                     "items": list(objs)}))  # fmt: skip


def rv_int(rv: str) -> int:
    # resourceVersions are opaque to clients; with etcd they are revisions, and this test
    # compares them only to show that a bookmark moved the reflector forward.
    return int(rv)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cp(bare_control_plane: ControlPlane) -> ControlPlane:
    """The e2e package's etcd + kube-apiserver (tests/e2e/conftest.py)."""
    return bare_control_plane


@pytest.fixture(scope="module")
def admin(cp: ControlPlane) -> Iterator[ApiClient]:
    client = ApiClient.from_config(str(cp.kubeconfig))
    yield client
    client.close()


def namespace(cp: ControlPlane, name: str) -> str:
    cp.kubectl("create", "namespace", name)
    return name


# --------------------------------------------------------------------------- tests


def test_api_client_get_watch_and_errors(cp: ControlPlane, admin: ApiClient) -> None:
    svc = admin.get_json("/api/v1/namespaces/default/services/kubernetes")
    assert svc["spec"]["clusterIP"] == "10.96.0.1"
    with pytest.raises(ApiError) as err:
        admin.get_json("/api/v1/namespaces/default/services/absent")
    assert err.value.status == 404 and err.value.reason == "NotFound"
    assert 'services "absent" not found' in str(err.value)

    ns = namespace(cp, "r-client")
    path = f"/api/v1/namespaces/{ns}/configmaps"
    rv = admin.get_json(path)["metadata"]["resourceVersion"]
    stream = admin.watch(path, {"resourceVersion": rv}, timeout=2)
    cp.kubectl("create", "configmap", "c1", "-n", ns)
    events = list(stream)  # ends when the server closes the watch (timeoutSeconds=2)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "c1")]


def test_list_then_watch_delivers_adds_updates_deletes(cp: ControlPlane, admin: ApiClient) -> None:
    ns = namespace(cp, "r-basic")
    kapply(cp, service(ns, "before"))
    with reflecting(admin, services_spec()) as (r, rec):
        # Initial list: everything as ADDED (incl. default/kubernetes), then synced once.
        assert ("ADDED", f"{ns}/before") in rec.seen()
        assert ("ADDED", "default/kubernetes") in rec.seen()
        assert rec.synced == 1 and r.has_synced
        assert r.last_resource_version not in ("", "0")

        kapply(cp, service(ns, "after", annotations={"team": "net"}))
        rec.wait("ADDED after", lambda: ("ADDED", f"{ns}/after") in rec.seen(ns))
        cp.kubectl("label", "service", "after", "-n", ns, "tier=web")
        rec.wait("MODIFIED after", lambda: ("MODIFIED", f"{ns}/after") in rec.seen(ns))
        cp.kubectl("delete", "service", "before", "-n", ns)
        rec.wait("DELETED before", lambda: ("DELETED", f"{ns}/before") in rec.seen(ns))

        assert rec.seen(ns) == [
            ("ADDED", f"{ns}/before"),
            ("ADDED", f"{ns}/after"),
            ("MODIFIED", f"{ns}/after"),
            ("DELETED", f"{ns}/before"),
        ]
        _, obj = rec.last(f"{ns}/after")
        meta = obj["metadata"]
        assert obj["kind"] == "Service" and obj["apiVersion"] == "v1"
        assert meta["labels"]["tier"] == "web"
        deleted = rec.last(f"{ns}/before")[1]["metadata"]["resourceVersion"]
        assert r.last_resource_version == deleted  # the newest event's
        # Stripped: managedFields and kubectl's last-applied copy; other annotations kept.
        assert "managedFields" not in meta
        assert meta["annotations"] == {"team": "net"}
        assert r.stats.lists == 1
    assert rec.synced == 1


def test_list_items_are_stripped_and_keep_the_trigger_time(
    cp: ControlPlane, admin: ApiClient
) -> None:
    ns = namespace(cp, "r-strip")
    stamp = "2026-01-02T03:04:05Z"
    kapply(cp, endpoint_slice(ns, "web-abc", "web", annotations={TRIGGER_TIME: stamp}))
    with reflecting(admin, endpointslices_spec()) as (_, rec):
        _, obj = rec.last(f"{ns}/web-abc")
    assert obj["kind"] == "EndpointSlice" and obj["apiVersion"] == "discovery.k8s.io/v1"
    assert obj["metadata"]["annotations"] == {TRIGGER_TIME: stamp}
    assert LAST_APPLIED_ANNOTATION not in json.dumps(obj)
    assert "managedFields" not in obj["metadata"]
    assert obj["endpoints"][0]["addresses"] == ["10.244.1.5"]


def test_selectors_filter_like_upstream_kube_proxy(cp: ControlPlane, admin: ApiClient) -> None:
    ns = namespace(cp, "r-select")
    kapply(
        cp,
        service(ns, "plain"),
        service(ns, "other-proxy", labels={"service.kubernetes.io/service-proxy-name": "x"}),
        service(ns, "headless", cluster_ip="None"),
        endpoint_slice(ns, "plain-1", "plain"),
        endpoint_slice(ns, "headless-1", "headless", headless=True),
    )
    with (
        reflecting(admin, services_spec()) as (_, svcs),
        reflecting(admin, endpointslices_spec()) as (_, slices),
    ):
        assert svcs.state(ns) == {f"{ns}/plain"}
        assert slices.state(ns) == {f"{ns}/plain-1"}

        # The server-side filter follows label changes: leaving the selection is DELETED,
        # entering it is ADDED.
        cp.kubectl("label", "service", "plain", "-n", ns,
                   "service.kubernetes.io/service-proxy-name=x")  # fmt: skip
        svcs.wait("plain leaves", lambda: ("DELETED", f"{ns}/plain") in svcs.seen(ns))
        cp.kubectl("label", "service", "other-proxy", "-n", ns,
                   "service.kubernetes.io/service-proxy-name-")  # fmt: skip
        svcs.wait("other-proxy enters", lambda: f"{ns}/other-proxy" in svcs.state(ns))
        kapply(cp, service(ns, "headless-2", cluster_ip="None"), service(ns, "last"))
        svcs.wait("last", lambda: f"{ns}/last" in svcs.state(ns))
        assert svcs.state(ns) == {f"{ns}/other-proxy", f"{ns}/last"}
        assert not [k for _, k in svcs.seen(ns) if "headless" in k]
        assert not [k for _, k in slices.seen(ns) if "headless" in k]


def test_node_field_selector_sees_only_its_node(cp: ControlPlane, admin: ApiClient) -> None:
    for n in ("r-node-a", "r-node-b"):
        kapply(cp, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}})
    with reflecting(admin, node_spec("r-node-a")) as (r, rec):
        assert rec.seen() == [("ADDED", "r-node-a")]
        cp.kubectl("label", "node", "r-node-b", "zone=b")
        cp.kubectl("label", "node", "r-node-a", "zone=a")
        rec.wait("MODIFIED r-node-a", lambda: ("MODIFIED", "r-node-a") in rec.seen())
        assert rec.seen() == [("ADDED", "r-node-a"), ("MODIFIED", "r-node-a")]
        assert rec.last("r-node-a")[1]["metadata"]["labels"]["zone"] == "a"
        assert r.last_resource_version == rec.last("r-node-a")[1]["metadata"]["resourceVersion"]


def test_bookmarks_advance_the_resource_version_without_events(
    cp: ControlPlane, admin: ApiClient
) -> None:
    ns = namespace(cp, "r-bookmark")
    hidden = service(ns, "hidden", labels={"service.kubernetes.io/service-proxy-name": "x"})
    kapply(cp, hidden)
    # Short watches: the watch cache sends a bookmark 2 s before each watch's timeout.
    with reflecting(admin, services_spec(), watch_timeout=3) as (r, rec):
        delivered = len(rec.seen())
        start_rv = rv_int(r.last_resource_version)
        # A change the selector hides still moves the Services watch cache forward; only
        # a bookmark can carry that resourceVersion to us.
        cp.kubectl("label", "service", "hidden", "-n", ns, "bump=1")
        hidden_rv = rv_int(
            cp.api("GET", f"/api/v1/namespaces/{ns}/services/hidden")["metadata"]["resourceVersion"]
        )
        assert hidden_rv > start_rv
        rec.wait(
            "a bookmark past the hidden change",
            lambda: rv_int(r.last_resource_version) >= hidden_rv,
        )
        assert r.stats.bookmarks >= 1
        assert r.stats.lists == 1  # not a relist
        assert len(rec.seen()) == delivered  # nothing delivered, BOOKMARK included
        assert {e for e, _, _ in rec.events} <= {"ADDED", "MODIFIED", "DELETED"}


def test_resumes_after_an_apiserver_restart(cp: ControlPlane, admin: ApiClient) -> None:
    ns = namespace(cp, "r-restart")
    kapply(cp, service(ns, "old"))
    with reflecting(admin, services_spec(), backoff_initial=0.2, backoff_max=2) as (r, rec):
        rec.wait("watching", lambda: r.stats.watches >= 1)
        cp.restart_apiserver()
        kapply(cp, service(ns, "new"))
        rec.wait("ADDED new", lambda: ("ADDED", f"{ns}/new") in rec.seen(ns))
        assert r.stats.errors >= 1  # it did notice the outage
        assert rec.state(ns) == {f"{ns}/old", f"{ns}/new"}
        assert rec.seen(ns).count(("ADDED", f"{ns}/old")) == 1
        assert rec.synced == 1


def test_relist_after_410_delivers_deletions_made_while_disconnected(
    cp: ControlPlane, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="proxy.source.reflector")
    ns = namespace(cp, "r-gap")
    kapply(cp, *(service(ns, n) for n in ("keep", "gone-1", "gone-2")))
    port = int(cp.server.rsplit(":", 1)[1])
    relay = Partition(port)
    client = ApiClient.from_config(str(cp.kubeconfig), master=f"https://127.0.0.1:{relay.port}")
    try:
        with reflecting(client, services_spec(), backoff_initial=0.2, backoff_max=1) as (r, rec):
            assert rec.state(ns) == {f"{ns}/keep", f"{ns}/gone-1", f"{ns}/gone-2"}
            rec.wait("watching", lambda: r.stats.watches >= 1)
            old_rv = r.last_resource_version
            relay.cut()
            rec.wait("the reflector notices the cut", lambda: r.stats.errors >= 1)

            cp.kubectl("delete", "service", "gone-1", "gone-2", "-n", ns)
            kapply(cp, service(ns, "born"))
            cp.kubectl("label", "service", "keep", "-n", ns, "changed=yes")
            # Make the old resourceVersion unservable: compact etcd, and restart the API
            # server so that its watch cache no longer holds the history either.
            cp.compact_etcd()
            cp.restart_apiserver()
            relay.heal()

            rec.wait("gap replayed by a relist",
                     lambda: rec.state(ns) == {f"{ns}/keep", f"{ns}/born"})  # fmt: skip
            assert r.stats.lists >= 2, "the deletions must come from a relist"
            gap = rec.seen(ns)[3:]
            assert sorted(gap) == sorted([
                ("DELETED", f"{ns}/gone-1"),
                ("DELETED", f"{ns}/gone-2"),
                ("ADDED", f"{ns}/born"),
                ("MODIFIED", f"{ns}/keep"),
            ])  # fmt: skip
            _, stub = rec.last(f"{ns}/gone-1")
            assert stub["kind"] == "Service" and stub["metadata"]["namespace"] == ns
            assert rv_int(r.last_resource_version) > rv_int(old_rv)
            assert rec.synced == 1  # relists do not call on_synced again

            # And it keeps watching after the relist.
            cp.kubectl("delete", "service", "born", "-n", ns)
            rec.wait("DELETED born", lambda: ("DELETED", f"{ns}/born") in rec.seen(ns))
    finally:
        client.close()
        relay.close()
    expired = [rec for rec in caplog.records if "expired" in rec.getMessage()]
    assert expired, "expected the 410 to be logged"
    mine = [rec for rec in caplog.records if rec.name.startswith("proxy.source")]
    assert all(rec.levelno < logging.ERROR for rec in mine)  # an outage is not an error


def rbac_client(cp: ControlPlane, ns: str, name: str) -> ApiClient:
    cp.kubectl("create", "serviceaccount", name, "-n", ns)
    token = cp.service_account_token(ns, name)
    return ApiClient.from_config(str(cp.token_kubeconfig(name, token)))


def test_service_account_with_the_kube_proxy_cluster_role_is_enough(cp: ControlPlane) -> None:
    ns = namespace(cp, "r-rbac")
    cp.kubectl("create", "clusterrole", "r-kpp-reader", "--verb=list,watch",
               "--resource=services,endpointslices.discovery.k8s.io,nodes")  # fmt: skip
    cp.kubectl("create", "clusterrolebinding", "r-kpp-reader", "--clusterrole=r-kpp-reader",
               f"--serviceaccount={ns}:kpp")  # fmt: skip
    kapply(cp, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "r-rbac-node"}})
    client = rbac_client(cp, ns, "kpp")
    try:
        with (
            reflecting(client, services_spec()) as (_, svcs),
            reflecting(client, endpointslices_spec()),
            reflecting(client, node_spec("r-rbac-node")) as (_, nodes),
        ):
            assert ("ADDED", "default/kubernetes") in svcs.seen()
            assert nodes.seen() == [("ADDED", "r-rbac-node")]
            kapply(cp, service(ns, "svc"))
            svcs.wait("watch works too", lambda: ("ADDED", f"{ns}/svc") in svcs.seen(ns))
    finally:
        client.close()


def test_forbidden_is_logged_and_retried_not_fatal(
    cp: ControlPlane, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="proxy.source.reflector")
    ns = namespace(cp, "r-denied")
    client = rbac_client(cp, ns, "nobody")

    def denials() -> list[logging.LogRecord]:
        return [
            rec for rec in caplog.records
            if rec.levelno == logging.ERROR and getattr(rec, "status", None) == 403
        ]  # fmt: skip

    try:
        with reflecting(client, services_spec(), synced=False, backoff_initial=0.1,
                        backoff_max=0.5) as (r, rec):  # fmt: skip
            rec.wait("two 403s logged", lambda: len(denials()) >= 2)
            assert r.running and not r.has_synced
            fields = denials()[0].__dict__  # the `extra` of the log call
            assert "forbidden" in fields["error"]
            assert f"system:serviceaccount:{ns}:nobody" in fields["error"]
            assert "services" in fields["needs"]

            # Once RBAC allows it, the retries succeed. (Not the built-in `view` role: it
            # is aggregated by kube-controller-manager, which this control plane lacks.)
            cp.kubectl("create", "clusterrole", "r-denied", "--verb=list,watch",
                       "--resource=services")  # fmt: skip
            cp.kubectl("create", "clusterrolebinding", "r-denied", "--clusterrole=r-denied",
                       f"--serviceaccount={ns}:nobody")  # fmt: skip
            rec.wait("synced after the grant", lambda: r.has_synced)
            assert rec.synced == 1
    finally:
        client.close()


def test_stop_interrupts_a_blocked_watch(cp: ControlPlane, admin: ApiClient) -> None:
    rec = Recorder()
    r = Reflector(admin, node_spec("r-no-such-node"), rec.on_event, watch_timeout=600)
    r.start()
    try:
        rec.wait("watching", lambda: r.has_synced and r.stats.watches >= 1)
    finally:
        # The watch would block for 10+ minutes; stop() must close it rather than wait.
        r.stop(timeout=10)
    assert not r.running
    assert rec.seen() == []


# --------------------------------------------------------------------------- exec credentials

EXEC_PLUGIN = """\
import datetime, json, pathlib, sys
here = pathlib.Path(sys.argv[0]).parent
runs = here / "runs"
runs.write_text(str(int(runs.read_text() or 0) + 1) if runs.exists() else "1")
status = {}
if (here / "token").exists():
    status["token"] = (here / "token").read_text().strip()
else:
    status["clientCertificateData"] = (here / "client.crt").read_text()
    status["clientKeyData"] = (here / "client.key").read_text()
lifetime = float(sys.argv[1])
if lifetime:
    when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=lifetime)
    status["expirationTimestamp"] = when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1",
                  "kind": "ExecCredential", "status": status}))
"""


def exec_kubeconfig(cp: ControlPlane, where: Path, lifetime: float) -> Path:
    """A kubeconfig whose user is ``./plugin.py LIFETIME`` (relative to the file)."""
    where.mkdir()
    plugin = where / "plugin.py"
    plugin.write_text(f"#!{sys.executable}\n{EXEC_PLUGIN}")
    plugin.chmod(0o755)
    doc = json.loads(cp.kubeconfig.read_text())
    doc["users"] = [{"name": "exec", "user": {"exec": {
        "apiVersion": "client.authentication.k8s.io/v1", "command": "./plugin.py",
        "args": [str(lifetime)], "interactiveMode": "Never"}}}]  # fmt: skip
    doc["contexts"][0]["context"]["user"] = "exec"
    path = where / "kubeconfig"
    path.write_text(json.dumps(doc))
    return path


def whoami(client: ApiClient) -> str:
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    reply = client.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", review)
    return str(reply["status"]["userInfo"]["username"])


def test_exec_plugin_token_is_rerun_after_a_401_and_cached_until_then(
    cp: ControlPlane, tmp_path: Path
) -> None:
    ns = namespace(cp, "r-exec")
    cp.kubectl("create", "serviceaccount", "plugged", "-n", ns)
    kubeconfig = exec_kubeconfig(cp, tmp_path / "p", lifetime=0)  # no expiry
    (tmp_path / "p" / "token").write_text("not-a-token")
    with ApiClient.from_config(str(kubeconfig)) as client:
        with pytest.raises(ApiError) as err:
            whoami(client)
        assert err.value.status == 401
        (tmp_path / "p" / "token").write_text(cp.service_account_token(ns, "plugged"))
        assert whoami(client) == f"system:serviceaccount:{ns}:plugged"
        assert whoami(client) == f"system:serviceaccount:{ns}:plugged"
    assert (tmp_path / "p" / "runs").read_text() == "2"  # once, again after the 401 only


def test_exec_plugin_runs_again_when_its_credential_expires(
    cp: ControlPlane, tmp_path: Path
) -> None:
    kubeconfig = exec_kubeconfig(cp, tmp_path / "p", lifetime=0.5)
    pair = cp.ca.issue("exec-cert-user", organizations=["exec-group"], client=True)
    (tmp_path / "p" / "client.crt").write_bytes(pair.cert_pem)
    (tmp_path / "p" / "client.key").write_bytes(pair.key_pem)
    with ApiClient.from_config(str(kubeconfig)) as client:
        assert whoami(client) == "exec-cert-user"  # a client certificate from the plugin
        assert (tmp_path / "p" / "runs").read_text() == "1"
        time.sleep(0.6)  # past the credential's expirationTimestamp
        assert whoami(client) == "exec-cert-user"
        assert (tmp_path / "p" / "runs").read_text() == "2"
