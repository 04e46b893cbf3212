import ipaddress

import pytest

from proxy import manifests as m
from proxy.model import (
    ServiceType,
    TrafficPolicy,
    parse_endpoint_slice,
    parse_node,
    parse_service,
)


def test_service_parses() -> None:
    obj = m.service(
        "web",
        "10.96.0.10",
        [m.Port(80, "http", target_port="web", node_port=30080)],
        type="LoadBalancer",
        external_ips=["203.0.113.7"],
        lb_ips=["198.51.100.1"],
        source_ranges=["192.0.2.0/24"],
        affinity_seconds=60,
        external_policy="Local",
        health_check_node_port=31000,
    )
    svc, problems = parse_service(obj)
    assert problems == []
    assert svc is not None
    assert svc.type is ServiceType.LOAD_BALANCER
    assert svc.cluster_ips == (ipaddress.ip_address("10.96.0.10"),)
    assert svc.ports[0].target_port == "web" and svc.ports[0].node_port == 30080
    assert svc.external_ips == (ipaddress.ip_address("203.0.113.7"),)
    assert svc.load_balancer_ips == (ipaddress.ip_address("198.51.100.1"),)
    assert svc.load_balancer_source_ranges == (ipaddress.ip_network("192.0.2.0/24"),)
    assert svc.affinity_seconds == 60
    assert svc.external_traffic_policy is TrafficPolicy.LOCAL
    assert svc.health_check_node_port == 31000
    assert svc.skip_reason is None


def test_affinity_default_timeout() -> None:
    obj = m.service("web", "10.96.0.10", [m.Port(80)])
    obj["spec"]["sessionAffinity"] = "ClientIP"
    svc, _ = parse_service(obj)
    assert svc is not None and svc.affinity_seconds == 10800


def test_lb_ip_mode_proxy_is_not_programmed() -> None:
    obj = m.service(
        "web",
        "10.96.0.10",
        [m.Port(80)],
        type="LoadBalancer",
        lb_ips=["198.51.100.1"],
        lb_ip_mode="Proxy",
    )
    svc, problems = parse_service(obj)
    assert problems == [] and svc is not None and svc.load_balancer_ips == ()


@pytest.mark.parametrize(
    ("mutate", "field", "fragment"),
    [
        (
            lambda s: s["spec"].update(clusterIP="10.96.0.999", clusterIPs=["10.96.0.999"]),
            "spec.clusterIPs[0]",
            "must be a valid IP address",
        ),
        (lambda s: s["spec"]["ports"][0].update(port=70000), "spec.ports[0].port", "out of range"),
        (lambda s: s["spec"]["ports"][0].update(port=0), "spec.ports[0].port", "out of range"),
        (
            lambda s: s["spec"]["ports"][0].update(protocol="ICMP"),
            "spec.ports[0].protocol",
            "unknown protocol 'ICMP'",
        ),
        (
            lambda s: s["spec"]["ports"].append(dict(s["spec"]["ports"][0], port=81)),
            "spec.ports[1].name",
            "duplicate port name 'http'",
        ),
        (
            lambda s: s["spec"]["ports"][0].update(targetPort="Not_A_Name"),
            "spec.ports[0].targetPort",
            "must contain only alpha-numeric characters",
        ),
        (
            lambda s: s["spec"]["ports"][0].update(nodePort=99999),
            "spec.ports[0].nodePort",
            "out of range",
        ),
        (
            lambda s: s["spec"].update(externalIPs=["nope"]),
            "spec.externalIPs[0]",
            "must be a valid IP address",
        ),
        (
            lambda s: s["spec"].update(sessionAffinity="Cookie"),
            "spec.sessionAffinity",
            "unsupported value 'Cookie'",
        ),
        (
            lambda s: s["spec"].update(
                sessionAffinity="ClientIP",
                sessionAffinityConfig={"clientIP": {"timeoutSeconds": 0}},
            ),
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            "1-86400",
        ),
        (
            lambda s: s["spec"].update(externalTrafficPolicy="Nearest"),
            "spec.externalTrafficPolicy",
            "may only be set for externally-accessible services",
        ),
        (lambda s: s["spec"].update(type="Magic"), "spec.type", "unsupported value 'Magic'"),
        (lambda s: s["metadata"].update(name="Bad_Name"), "metadata.name", "RFC 1123 label"),
        (lambda s: s["spec"].update(ports="80"), "spec.ports", "expected a list"),
    ],
)
def test_invalid_service_is_reported_with_field(mutate, field: str, fragment: str) -> None:  # type: ignore[no-untyped-def]
    obj = m.service("web", "10.96.0.10", [m.Port(80, "http")])
    mutate(obj)
    svc, problems = parse_service(obj)
    assert svc is None
    texts = [str(p) for p in problems]
    assert any(p.field == field and fragment in p.message for p in problems), texts
    assert all(t.startswith(("default/web: ", "default/Bad_Name: ")) for t in texts)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda s: s["spec"].update(clusterIP="None", clusterIPs=["None"]), "headless"),
        (
            lambda s: s["spec"].update(type="ExternalName", externalName="db.example.com"),
            "ExternalName",
        ),
        (
            lambda s: s["metadata"]["labels"].update(
                {"service.kubernetes.io/service-proxy-name": "other"}
            ),
            "another proxy",
        ),
    ],
)
def test_skipped_services_carry_a_reason(mutate, reason: str) -> None:  # type: ignore[no-untyped-def]
    obj = m.service("web", "10.96.0.10", [m.Port(80)])
    mutate(obj)
    svc, problems = parse_service(obj)
    assert problems == []
    assert svc is not None and svc.skip_reason is not None and reason in svc.skip_reason


def test_slice_parses_conditions_and_hints() -> None:
    obj = m.endpoint_slice(
        "web",
        [
            m.EP("10.244.1.5", node="a", zone="z1", zone_hints=("z1",), node_hints=("a",)),
            m.EP("10.244.1.6", node="b", ready=False, serving=True, terminating=True),
        ],
        [("http", 8080, "TCP")],
    )
    sl, problems = parse_endpoint_slice(obj)
    assert problems == [] and sl is not None
    assert sl.service_name == "web"
    first, second = sl.endpoints
    assert first.zone_hints == frozenset({"z1"}) and first.node_hints == frozenset({"a"})
    assert (second.ready, second.serving, second.terminating) == (False, True, True)


def test_slice_conditions_default_like_the_api() -> None:
    obj = m.endpoint_slice("web", [m.EP("10.244.1.5")], [("", 80, "TCP")])
    obj["endpoints"][0].pop("conditions")
    sl, _ = parse_endpoint_slice(obj)
    assert sl is not None
    ep = sl.endpoints[0]
    assert (ep.ready, ep.serving, ep.terminating) == (True, True, False)


@pytest.mark.parametrize(
    ("mutate", "field", "fragment"),
    [
        (
            lambda s: s["endpoints"][0].update(addresses=["10.0.0.300"]),
            "endpoints[0].addresses[0]",
            "must be a valid IP",
        ),
        (
            lambda s: s["endpoints"][0].update(addresses=["fd00::1"]),
            "endpoints[0].addresses[0]",
            "not an IPv4 address",
        ),
        (
            lambda s: s["endpoints"][0].update(addresses=[]),
            "endpoints[0].addresses",
            "at least 1 address",
        ),
        (lambda s: s["ports"][0].update(port=-1), "ports[0].port", "out of range"),
        (lambda s: s["ports"][0].update(protocol="tcp"), "ports[0].protocol", "unknown protocol"),
        (lambda s: s.update(addressType="IPX"), "addressType", "unsupported value 'IPX'"),
        (
            lambda s: s["metadata"]["labels"].clear(),
            "metadata.labels[kubernetes.io/service-name]",
            "belongs to no Service",
        ),
        (
            lambda s: s["endpoints"][0]["conditions"].update(ready="yes"),
            "endpoints[0].conditions.ready",
            "not a boolean",
        ),
    ],
)
def test_invalid_slice_is_reported(mutate, field: str, fragment: str) -> None:  # type: ignore[no-untyped-def]
    obj = m.endpoint_slice("web", [m.EP("10.244.1.5")], [("", 80, "TCP")])
    mutate(obj)
    sl, problems = parse_endpoint_slice(obj)
    assert sl is None
    assert any(p.field == field and fragment in p.message for p in problems), problems


def test_node_parses_addresses_zone_and_cidrs() -> None:
    n, problems = parse_node(m.node("node-a", "192.168.50.11", zone="z1", pod_cidr="10.244.1.0/24"))
    assert problems == [] and n is not None
    assert n.zone == "z1"
    assert str(n.addresses[0]) == "192.168.50.11"
    assert str(n.pod_cidrs[0]) == "10.244.1.0/24"


@pytest.mark.parametrize(
    "garbage", [None, 5, "text", [], {"kind": "Service"}, {"metadata": "x", "spec": []}]
)
def test_garbage_never_raises(garbage: object) -> None:
    for parse in (parse_service, parse_endpoint_slice, parse_node):
        obj = garbage if isinstance(garbage, dict) else {"metadata": garbage}
        result, problems = parse(obj)
        assert result is None and problems


def test_the_headless_label_does_not_skip_a_service() -> None:
    """Upstream filters only EndpointSlices by service.kubernetes.io/headless; a Service
    with a ClusterIP and that label is proxied (found by the differential test)."""
    obj = m.service("web", "10.96.0.10", [m.Port(80)])
    obj["metadata"]["labels"]["service.kubernetes.io/headless"] = ""
    svc, problems = parse_service(obj)
    assert problems == [] and svc is not None and svc.skip_reason is None


def test_unset_serving_means_serving_even_when_not_ready() -> None:
    obj = m.endpoint_slice("web", [m.EP("10.244.1.5", "node-a")], [("", 80, "TCP")])
    obj["endpoints"][0]["conditions"] = {"ready": False, "terminating": True}
    sl, problems = parse_endpoint_slice(obj)
    assert problems == [] and sl is not None
    ep = sl.endpoints[0]
    assert (ep.ready, ep.serving, ep.terminating) == (False, True, True)
