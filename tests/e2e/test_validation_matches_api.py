"""The offline validator accepts exactly what the real API server accepts (issue 14).

Each case is a Service or EndpointSlice, mostly valid, with one field changed; the real
kube-apiserver v1.37.2 is asked to create it (and it is deleted again: a server-side dry
run skips the node port range check) and our parser (plus the state file's node port range
check) must agree: accepted by both or refused by both. The few places where we refuse
what the API stores are listed in ``PROXY_ONLY`` with the reason.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from proxy import manifests as m
from proxy.lab.controlplane.controlplane import ControlPlane
from proxy.model import parse_endpoint_slice, parse_service
from proxy.source.file import build_state

pytestmark = pytest.mark.e2e

NS63 = "n" * 60 + "-ns"
Mutate = Callable[[dict[str, Any]], None]


def svc(**spec: Any) -> dict[str, Any]:
    obj = m.service("web", "10.96.5.5", [m.Port(80, "http", target_port=8080)])
    obj["spec"].update(spec)
    return obj


def set_(path: str, value: Any) -> Mutate:
    def mutate(obj: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = obj
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


def lb(**spec: Any) -> dict[str, Any]:
    obj = svc(type="LoadBalancer", **spec)
    obj["spec"]["ports"][0]["nodePort"] = 30601
    return obj


SERVICES: list[tuple[str, dict[str, Any], Mutate | None]] = [
    ("valid", svc(), None),
    ("name with a trailing newline", svc(), set_("metadata.name", "web\n")),
    ("name of 63 characters", svc(), set_("metadata.name", "w" * 63)),
    ("name of 64 characters", svc(), set_("metadata.name", "w" * 64)),
    ("name starting with a digit", svc(), set_("metadata.name", "1st-web")),
    ("name with a dot", svc(), set_("metadata.name", "web.x")),
    ("namespace of 63 characters", svc(), set_("metadata.namespace", NS63)),
    ("targetPort a quoted number", svc(), set_("spec.ports.0.targetPort", "8080")),
    ("targetPort non-ASCII digit", svc(), set_("spec.ports.0.targetPort", "٣")),
    ("targetPort a name", svc(), set_("spec.ports.0.targetPort", "http-alt")),
    ("targetPort 0", svc(), set_("spec.ports.0.targetPort", 0)),
    ("targetPort 70000", svc(), set_("spec.ports.0.targetPort", 70000)),
    ("port 70000", svc(), set_("spec.ports.0.port", 70000)),
    ("port name with a capital", svc(), set_("spec.ports.0.name", "Http")),
    ("protocol lower case", svc(), set_("spec.ports.0.protocol", "tcp")),
    ("clusterIP loopback", svc(clusterIP="127.0.0.1", clusterIPs=["127.0.0.1"]), None),
    ("clusterIP unspecified", svc(clusterIP="0.0.0.0", clusterIPs=["0.0.0.0"]), None),
    ("clusterIP leading zero", svc(clusterIP="10.96.5.050", clusterIPs=["10.96.5.050"]), None),
    ("clusterIPs disagree", svc(clusterIPs=["10.96.5.6"]), None),
    ("ipFamilies disagree", svc(ipFamilies=["IPv6"]), None),
    ("externalIP", svc(externalIPs=["203.0.113.5"]), None),
    ("externalIP loopback", svc(externalIPs=["127.0.0.1"]), None),
    ("externalIP link-local multicast", svc(externalIPs=["224.0.0.5"]), None),
    ("externalIP multicast", svc(externalIPs=["239.1.1.1"]), None),
    ("externalIP with a space", svc(externalIPs=["203.0.113.5 "]), None),
    ("nodePort on a ClusterIP Service", svc(), set_("spec.ports.0.nodePort", 30602)),
    ("nodePort 22", svc(type="NodePort"), set_("spec.ports.0.nodePort", 22)),
    ("nodePort in range", svc(type="NodePort"), set_("spec.ports.0.nodePort", 30603)),
    ("externalTrafficPolicy on ClusterIP", svc(externalTrafficPolicy="Local"), None),
    (
        "externalTrafficPolicy with externalIPs",
        svc(externalTrafficPolicy="Local", externalIPs=["203.0.113.6"]),
        None,
    ),
    (
        "LB with Local and hc port",
        lb(externalTrafficPolicy="Local", healthCheckNodePort=30604),
        None,
    ),
    (
        "hc port on a NodePort Service",
        svc(type="NodePort", externalTrafficPolicy="Local", healthCheckNodePort=30605),
        None,
    ),
    ("hc port 22", lb(externalTrafficPolicy="Local", healthCheckNodePort=22), None),
    ("affinity timeout 0", svc(sessionAffinity="ClientIP"), None),
    (
        "affinity config without affinity",
        svc(sessionAffinity="None", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 5}}),
        None,
    ),
    (
        "source ranges on NodePort",
        svc(type="NodePort", loadBalancerSourceRanges=["10.0.0.0/8"]),
        None,
    ),
    ("source range with host bits", lb(loadBalancerSourceRanges=["10.0.0.1/8"]), None),
    ("source range padded", lb(loadBalancerSourceRanges=[" 10.0.0.0/8 "]), None),
    ("type unknown", svc(type="Magic"), None),
    ("internalTrafficPolicy unknown", svc(internalTrafficPolicy="Nearest"), None),
    ("two unnamed ports", svc(), lambda o: o["spec"]["ports"].append({"port": 81})),
    ("no ports", svc(ports=[]), None),
    ("headless without ports", svc(clusterIP="None", clusterIPs=["None"], ports=[]), None),
    (
        "proxy-name label with a space",
        svc(),
        set_("metadata.labels", {"service.kubernetes.io/service-proxy-name": "a b"}),
    ),
]
# a zero affinity timeout: set after construction (svc() has no nested config)
SERVICES[SERVICES.index(("affinity timeout 0", svc(sessionAffinity="ClientIP"), None))] = (
    "affinity timeout 0",
    svc(sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 0}}),
    None,
)


def eps(*ips: str, family: str = "IPv4") -> dict[str, Any]:
    return m.endpoint_slice(
        "web", [m.EP(ip, "node-a") for ip in ips], [("http", 8080, "TCP")], address_type=family
    )


SLICES: list[tuple[str, dict[str, Any], Mutate | None]] = [
    ("valid", eps("10.244.1.5"), None),
    ("loopback endpoint", eps("127.0.0.1"), None),
    ("unspecified endpoint", eps("0.0.0.0"), None),
    ("link-local endpoint", eps("169.254.1.1"), None),
    ("link-local multicast endpoint", eps("224.0.0.5"), None),
    ("multicast endpoint", eps("239.1.1.1"), None),
    ("leading zero", eps("10.244.1.05"), None),
    ("IPv6 endpoint", eps("fd00::5", family="IPv6"), None),
    ("IPv6 endpoint not canonical", eps("fd00:0::5", family="IPv6"), None),
    ("IPv4 address in an IPv6 slice", eps("10.244.1.5", family="IPv6"), None),
    ("1,001 endpoints", eps(*(f"10.244.{i // 200}.{i % 200 + 1}" for i in range(1001))), None),
    ("port name with a capital", eps("10.244.1.5"), set_("ports.0.name", "Http")),
    ("nodeName not a name", eps("10.244.1.5"), set_("endpoints.0.nodeName", "Node_A")),
    ("name with a trailing newline", eps("10.244.1.5"), set_("metadata.name", "web-1\n")),
    (
        "nine zone hints",
        eps("10.244.1.5"),
        set_("endpoints.0.hints", {"forZones": [{"name": f"z{i}"} for i in range(9)]}),
    ),
    (
        "zone hint not a label value",
        eps("10.244.1.5"),
        set_("endpoints.0.hints", {"forZones": [{"name": "a b"}]}),
    ),
]

PROXY_ONLY = {
    "port 70000 in a slice": "the API takes any int32 as an EndpointSlice port; no packet can "
    "carry it and iptables-restore refuses the DNAT, so the slice is skipped",
    "slice without its Service label": "the API stores it; it belongs to no Service, so a "
    "proxy cannot use it (upstream ignores it too)",
}
SLICES += [
    ("port 70000 in a slice", eps("10.244.1.5"), set_("ports.0.port", 70000)),
    ("slice without its Service label", eps("10.244.1.5"), set_("metadata.labels", {})),
]


@pytest.fixture(scope="module")
def cp(bare_control_plane: ControlPlane) -> ControlPlane:
    """The e2e package's etcd + kube-apiserver (tests/e2e/conftest.py), with a namespace
    of a 63-character name (no namespace controller runs to delete it: it stays until
    the API server stops, after the package)."""
    bare_control_plane.api("POST", "/api/v1/namespaces", {"metadata": {"name": NS63}})
    return bare_control_plane


def api_accepts(cp: ControlPlane, obj: dict[str, Any]) -> tuple[bool, str]:
    """Create it for real and delete it again: a dry run skips the node port range check."""
    ns = obj["metadata"].get("namespace", "default")
    group = "api/v1" if obj["kind"] == "Service" else "apis/discovery.k8s.io/v1"
    plural = "services" if obj["kind"] == "Service" else "endpointslices"
    collection = f"{cp.server}/{group}/namespaces/{ns}/{plural}"
    status, body = cp.http_request("POST", collection, json.dumps(obj).encode())
    if status in (200, 201):
        name = json.loads(body)["metadata"]["name"]
        cp.http_request("DELETE", f"{collection}/{name}")
        return True, ""
    return False, body.decode(errors="replace")[:300]


def we_accept(obj: dict[str, Any]) -> tuple[bool, str]:
    if obj["kind"] == "Service":
        parsed, problems = parse_service(obj)
        if parsed is not None:
            problems = list(build_state([obj], "node-a").problems)  # the node port range
    else:
        _, problems = parse_endpoint_slice(obj)
    return not problems, "; ".join(str(p) for p in problems)


CASES = [("Service", *c) for c in SERVICES] + [("EndpointSlice", *c) for c in SLICES]


@pytest.mark.parametrize(("kind", "case", "base", "mutate"), CASES, ids=[c[1] for c in CASES])
def test_the_validator_agrees_with_the_api_server(
    cp: ControlPlane, kind: str, case: str, base: dict[str, Any], mutate: Mutate | None
) -> None:
    obj = copy.deepcopy(base)
    if mutate is not None:
        mutate(obj)
    api_ok, api_said = api_accepts(cp, obj)
    ours_ok, we_said = we_accept(obj)
    if case in PROXY_ONLY:
        assert api_ok and not ours_ok, (api_said, we_said)
        return
    assert ours_ok == api_ok, (
        f"API {'accepts' if api_ok else 'refuses'}: {api_said!r}; we say: {we_said!r}"
    )
