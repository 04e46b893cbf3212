"""proxy.server: health state, /healthz /livez /metrics, health check node ports.

Servers bind 127.0.0.1 (port 0, or a port found free just before); time comes from an
injected clock, never from sleeping.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from proxy.metrics import ProxyMetrics
from proxy.model import IPFamily
from proxy.server import (
    HealthCheckNodePorts,
    HealthServer,
    MetricsServer,
    ProxyHealth,
    ServerError,
    go_time,
    node_eligible,
    parse_address,
    service_health_body,
)

TIMEOUT = 60.0  # 2 x a 30s sync period


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def get(
    address: tuple[str, int], path: str = "/", method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(*address, timeout=5)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


# ---------------------------------------------------------------------------------------
# ProxyHealth


def test_healthy_while_starting_up_even_with_queued_changes() -> None:
    clock = FakeClock()
    health = ProxyHealth(TIMEOUT, clock=clock)
    assert health.healthy()
    health.queued_update()
    clock.now += 10 * TIMEOUT
    # upstream only judges families whose loop has started or synced
    assert health.healthy()
    report = health.report()
    assert report.last_updated is None and report.families == {}


def test_queued_change_not_synced_within_the_timeout_is_unhealthy() -> None:
    clock = FakeClock()
    health = ProxyHealth(TIMEOUT, clock=clock)
    health.started()
    clock.now += 5
    health.queued_update()
    clock.now += 1
    health.queued_update()  # later changes do not reset the oldest
    clock.now += TIMEOUT - 1 - 0.001
    assert health.healthy()
    clock.now += 0.001
    assert not health.healthy()
    health.updated()
    assert health.healthy()


def test_a_synced_proxy_without_pending_changes_stays_healthy_forever() -> None:
    clock = FakeClock()
    health = ProxyHealth(TIMEOUT, clock=clock)
    health.updated()
    clock.now += 100 * TIMEOUT
    assert health.healthy()


def test_families_are_judged_separately_and_all_must_be_healthy() -> None:
    clock = FakeClock()
    health = ProxyHealth(TIMEOUT, clock=clock)
    health.updated(family=IPFamily.V4)
    health.updated(family=IPFamily.V6)
    health.queued_update(family=IPFamily.V6)
    clock.now += TIMEOUT
    report = health.report()
    assert not report.healthy
    assert report.families[IPFamily.V4].healthy and not report.families[IPFamily.V6].healthy


def test_explicit_now_overrides_the_clock() -> None:
    health = ProxyHealth(TIMEOUT, clock=lambda: 0.0)
    health.started(now=1000.0)
    health.queued_update(now=1000.0)
    assert health.healthy(now=1000.0 + TIMEOUT - 1)
    assert not health.healthy(now=1000.0 + TIMEOUT)


def test_node_eligibility_from_the_node_object() -> None:
    assert node_eligible({"metadata": {"name": "n"}, "spec": {}})
    assert node_eligible(None)
    assert not node_eligible({"metadata": {"deletionTimestamp": "2024-01-01T00:00:00Z"}})
    tainted = {
        "spec": {"taints": [{"key": "ToBeDeletedByClusterAutoscaler", "effect": "NoSchedule"}]}
    }
    assert not node_eligible(tainted)
    other = {"spec": {"taints": [{"key": "node.kubernetes.io/unschedulable"}]}}
    assert node_eligible(other)


def test_go_time_spelling() -> None:
    assert go_time(None) == "0001-01-01T00:00:00Z"
    assert go_time(1_700_000_000.0) == "2023-11-14T22:13:20Z"
    assert go_time(1_700_000_000.25) == "2023-11-14T22:13:20.25Z"


# ---------------------------------------------------------------------------------------
# /healthz and /livez


@pytest.fixture
def healthz() -> Iterator[tuple[HealthServer, ProxyHealth, FakeClock, ProxyMetrics]]:
    clock = FakeClock()
    health = ProxyHealth(TIMEOUT, clock=clock)
    metrics = ProxyMetrics()
    server = HealthServer(health, metrics, address="127.0.0.1:0")
    server.start()
    try:
        yield server, health, clock, metrics
    finally:
        server.stop()


def test_healthz_and_livez_bodies_and_headers_when_healthy(healthz: Any) -> None:
    server, health, clock, _ = healthz
    health.updated(now=clock.now - 5)
    status, headers, body = get(server.address, "/healthz")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "Server" not in headers and "Date" in headers
    now = go_time(clock.now)
    assert json.loads(body) == {
        "lastUpdated": now,  # "now" while healthy, as upstream
        "currentTime": now,
        "nodeEligible": True,
        "healthy": True,
        "status": {"IPv4": {"lastUpdated": go_time(clock.now - 5), "healthy": True}},
    }
    assert list(json.loads(body)) == [
        "lastUpdated",
        "currentTime",
        "nodeEligible",
        "healthy",
        "status",
    ]
    status, _, body = get(server.address, "/livez")
    assert status == 200 and "nodeEligible" not in json.loads(body)


def test_before_any_sync_the_body_has_no_status_and_zero_time(healthz: Any) -> None:
    server, _, clock, _ = healthz
    status, _, body = get(server.address, "/livez")
    assert status == 200
    assert json.loads(body) == {
        "lastUpdated": go_time(clock.now),
        "currentTime": go_time(clock.now),
        "healthy": True,
    }


def test_late_sync_makes_both_endpoints_503(healthz: Any) -> None:
    server, health, clock, metrics = healthz
    health.updated()
    synced_at = clock.now
    clock.now += 1
    health.queued_update()
    clock.now += TIMEOUT
    for path in ("/healthz", "/livez"):
        status, _, body = get(server.address, path)
        doc = json.loads(body)
        assert status == 503, path
        assert doc["healthy"] is False and doc["lastUpdated"] == go_time(synced_at)
        assert doc["status"]["IPv4"]["healthy"] is False
    health.updated()
    assert get(server.address, "/healthz")[0] == 200
    text = metrics.render().decode()
    assert 'kubeproxy_proxy_healthz_total{code="503"} 1.0' in text
    assert 'kubeproxy_proxy_healthz_total{code="200"} 1.0' in text
    assert 'kubeproxy_proxy_livez_total{code="503"} 1.0' in text


def test_node_being_deleted_fails_healthz_but_not_livez(healthz: Any) -> None:
    server, health, clock, _ = healthz
    health.updated(now=clock.now - 5)
    health.set_node_eligible(False)
    status, _, body = get(server.address, "/healthz")
    doc = json.loads(body)
    assert status == 503
    assert doc["nodeEligible"] is False and doc["healthy"] is True
    assert doc["lastUpdated"] == go_time(clock.now - 5)  # not "now": /healthz is failing
    assert get(server.address, "/livez")[0] == 200
    health.set_node_eligible(True)
    assert get(server.address, "/healthz")[0] == 200


def test_unknown_path_is_404_and_head_has_no_body(healthz: Any) -> None:
    server, _, _, _ = healthz
    status, _, body = get(server.address, "/metrics")
    assert status == 404 and body == b"404 page not found\n"
    status, headers, body = get(server.address, "/healthz?verbose=1", method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0


def test_address_in_use_says_what_to_do(healthz: Any) -> None:
    server, health, _, _ = healthz
    host, port = server.address
    other = HealthServer(health, address=f"{host}:{port}")
    with pytest.raises(
        ServerError,
        match=rf"address 127\.0\.0\.1:{port} in use: is another kube-proxy running\? set --healthz-bind-address",
    ):
        other.start()


def test_bad_addresses_are_rejected_with_the_flag_name() -> None:
    assert parse_address("0.0.0.0:10256", "--x") == ("0.0.0.0", 10256)
    assert parse_address("[::1]:10249", "--x") == ("::1", 10249)
    assert parse_address(":10249", "--x") == ("0.0.0.0", 10249)
    with pytest.raises(ServerError, match="--metrics-bind-address"):
        MetricsServer(ProxyMetrics(), address="localhost")


def test_stop_closes_the_port_and_start_stop_are_idempotent() -> None:
    server = HealthServer(ProxyHealth(TIMEOUT), address="127.0.0.1:0")
    server.start()
    server.start()
    port = server.address[1]
    assert get(server.address, "/livez")[0] == 200
    server.stop()
    server.stop()
    assert refused(port)


# ---------------------------------------------------------------------------------------
# /metrics


def test_metrics_server_serves_metrics_healthz_and_proxy_mode() -> None:
    metrics = ProxyMetrics("nftables")
    metrics.observe_sync(True, 0.01)
    server = MetricsServer(metrics, address="127.0.0.1:0")
    server.start()
    try:
        status, headers, body = get(server.address, "/metrics")
        assert status == 200
        assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = body.decode()
        assert (
            'kubeproxy_sync_full_proxy_rules_duration_seconds_count{ip_family="IPv4"} 1.0' in text
        )
        assert "# TYPE kubeproxy_sync_proxy_rules_last_timestamp_seconds gauge" in text
        assert get(server.address, "/healthz")[::2] == (200, b"ok")
        status, headers, body = get(server.address, "/proxyMode")
        assert (status, body) == (200, b"nftables")
        assert headers["Content-Type"] == "text/plain; charset=utf-8"
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------
# health check node ports


@pytest.fixture
def hc() -> Iterator[tuple[HealthCheckNodePorts, ProxyHealth, FakeClock]]:
    clock = FakeClock()
    health = ProxyHealth(TIMEOUT, clock=clock)
    health.updated()
    ports = HealthCheckNodePorts(health, addresses=("127.0.0.1",))
    try:
        yield ports, health, clock
    finally:
        ports.stop()


def test_service_health_body_is_upstreams_byte_for_byte() -> None:
    # 127 bytes, as a real kube-proxy answers for this service
    body = service_health_body("default/wp-nginx-service", 1, True)
    assert len(body) == 127
    assert body.decode() == (
        '{\n\t"service": {\n\t\t"namespace": "default",\n\t\t"name": "wp-nginx-service"\n\t},\n'
        '\t"localEndpoints": 1,\n\t"serviceProxyHealthy": true\n}'
    )


def test_local_endpoints_answer_200_and_none_answer_503(hc: Any) -> None:
    ports, _, _ = hc
    p = free_port()
    assert ports.update({"ns1/web": (p, 2)}) == {}
    status, headers, body = get(("127.0.0.1", p), "/healthz")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Load-Balancing-Endpoint-Weight"] == "2"
    assert body == service_health_body("ns1/web", 2, True)
    assert get(("127.0.0.1", p), "/any/path")[0] == 200  # every path answers

    ports.update({"ns1/web": (p, 0)})
    status, headers, body = get(("127.0.0.1", p))
    assert status == 503 and headers["X-Load-Balancing-Endpoint-Weight"] == "0"
    assert json.loads(body)["localEndpoints"] == 0


def test_unhealthy_proxy_answers_503_even_with_local_endpoints(hc: Any) -> None:
    ports, health, clock = hc
    p = free_port()
    ports.update({"ns1/web": (p, 1)})
    health.queued_update()
    clock.now += TIMEOUT
    status, _, body = get(("127.0.0.1", p))
    assert status == 503
    assert json.loads(body) == {
        "service": {"namespace": "ns1", "name": "web"},
        "localEndpoints": 1,
        "serviceProxyHealthy": False,
    }
    # node eligibility is not part of the service health check (upstream)
    health.updated()
    health.set_node_eligible(False)
    assert get(("127.0.0.1", p))[0] == 200


def test_servers_follow_the_service_set(hc: Any) -> None:
    ports, _, _ = hc
    p1, p2, p3 = free_port(), free_port(), free_port()
    ports.update({"ns1/a": (p1, 1), "ns1/b": (p2, 1)})
    assert ports.ports == {"ns1/a": p1, "ns1/b": p2}
    # b removed, a moves to another port
    ports.update({"ns1/a": (p3, 1)})
    assert ports.ports == {"ns1/a": p3}
    assert refused(p1) and refused(p2)
    assert get(("127.0.0.1", p3))[0] == 200
    ports.stop()
    assert ports.ports == {} and refused(p3)


def test_a_port_that_cannot_be_opened_is_reported_and_retried(hc: Any) -> None:
    ports, _, _ = hc
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    busy = blocker.getsockname()[1]
    ok = free_port()
    try:
        failures = ports.update({"ns1/busy": (busy, 1), "ns1/ok": (ok, 1)})
        assert set(failures) == {"ns1/busy"} and "in use" in failures["ns1/busy"]
        assert ports.ports == {"ns1/ok": ok}
        assert get(("127.0.0.1", ok))[0] == 200
    finally:
        blocker.close()
    assert ports.update({"ns1/busy": (busy, 1), "ns1/ok": (ok, 1)}) == {}
    assert get(("127.0.0.1", busy))[0] == 200


def test_stopped_health_check_closes_kept_alive_connections(hc: Any) -> None:
    ports, _, _ = hc
    p = free_port()
    ports.update({"ns1/web": (p, 1)})
    conn = http.client.HTTPConnection("127.0.0.1", p, timeout=5)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200 and resp.getheader("Connection") != "close"
        ports.update({})
        with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
            conn.request("GET", "/")
            conn.getresponse().read()
    finally:
        conn.close()
