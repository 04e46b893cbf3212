"""Hypothesis strategies: random valid Services/EndpointSlices/Nodes, and garbage versions."""

from __future__ import annotations

import ipaddress
from typing import Any

from hypothesis import strategies as st

from proxy import manifests as m

NODES = ("node-a", "node-b", "node-c")
ZONES = ("z1", "z2")
names = st.from_regex(r"[a-z]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
port_names = st.from_regex(r"[a-z]([a-z0-9]{0,5})?", fullmatch=True)
protocols = st.sampled_from(["TCP", "UDP", "SCTP"])


FAMILIES = ("IPv4", "IPv6")
STACKS = st.sampled_from(["IPv4", "IPv6", "IPv4,IPv6", "IPv6,IPv4"])
"""A Service's ``ipFamilies``: single-stack of either family, or dual-stack primary first."""
V6_PREFIX = {"10.244.0.0": "fd00:10:244", "203.0.0.0": "fd00:203", "198.51.0.0": "fd00:198:51"}


def ipv4_in(prefix: str) -> st.SearchStrategy[str]:
    a, b = prefix.split(".")[:2]
    return st.builds(lambda c, d: f"{a}.{b}.{c}.{d}", st.integers(0, 255), st.integers(1, 254))


def ipv6_in(prefix: str) -> st.SearchStrategy[str]:
    """Canonical IPv6 addresses in the IPv6 twin of an IPv4 ``prefix``."""
    base = V6_PREFIX[prefix]
    return st.builds(
        lambda c, d: str(ipaddress.ip_address(f"{base}:{c:x}::{d:x}")),
        st.integers(0, 255),
        st.integers(1, 254),
    )


def address_in(prefix: str, family: str) -> st.SearchStrategy[str]:
    return ipv4_in(prefix) if family == "IPv4" else ipv6_in(prefix)


def _cluster_ip(index: int, family: str) -> str:
    if family == "IPv4":
        return f"10.96.{index // 250}.{index % 250 + 1}"
    return f"fd00:10:96::{index + 1:x}"


@st.composite
def service_and_slices(draw: st.DrawFn, index: int) -> list[dict[str, Any]]:
    svc_type = draw(st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer"]))
    n_ports = draw(st.integers(1, 3))
    pnames = draw(st.lists(port_names, min_size=n_ports, max_size=n_ports, unique=True))
    numbers = draw(st.lists(st.integers(1, 65535), min_size=n_ports, max_size=n_ports, unique=True))
    ports: list[m.Port] = []
    for i, (pname, number) in enumerate(zip(pnames, numbers, strict=True)):
        node_port = None
        if svc_type != "ClusterIP":
            node_port = 30000 + index * 8 + i
        target: int | str = draw(st.one_of(st.integers(1, 65535), st.just("web")))
        ports.append(
            m.Port(
                number,
                pname if n_ports > 1 else draw(st.sampled_from(["", pname])),
                draw(protocols),
                target_port=target,
                node_port=node_port,
            )
        )
    ext_policy = draw(st.sampled_from([None, "Cluster", "Local"]))
    families = draw(STACKS).split(",")
    any_family = st.sampled_from(families)
    svc = m.service(
        f"svc{index}-{draw(names)}"[:63],
        _cluster_ip(index, families[0]),
        ports,
        secondary_cluster_ip=_cluster_ip(index, families[1]) if len(families) > 1 else None,
        namespace=draw(st.sampled_from(["default", "kube-system", "team-a"])),
        type=svc_type,
        external_ips=draw(
            st.lists(any_family.flatmap(lambda f: address_in("203.0.0.0", f)), max_size=2).map(
                lambda ips: list(dict.fromkeys(ips))
            )
        ),
        lb_ips=draw(
            st.lists(any_family.flatmap(lambda f: address_in("198.51.0.0", f)), max_size=2).map(
                lambda ips: list(dict.fromkeys(ips))
            )
        )
        if svc_type == "LoadBalancer"
        else (),
        lb_ip_mode=draw(st.sampled_from([None, "VIP", "Proxy"])),
        source_ranges=draw(
            st.lists(
                st.sampled_from(
                    [
                        "10.0.0.0/8",
                        "10.1.0.0/16",
                        "192.168.50.0/24",
                        "203.0.113.0/24",
                        "0.0.0.0/0",
                        "fd00::/8",
                        "fd00:192:168:50::/64",
                        "::/0",
                    ]
                ),
                max_size=3,
            )
        )
        if svc_type == "LoadBalancer"
        else (),
        affinity_seconds=draw(st.one_of(st.none(), st.integers(1, 86400))),
        external_policy=ext_policy if svc_type != "ClusterIP" else None,
        internal_policy=draw(st.sampled_from([None, "Cluster", "Local"])),
        health_check_node_port=32700 + index
        if ext_policy == "Local" and svc_type == "LoadBalancer"
        else None,
    )
    svc_name = svc["metadata"]["name"]
    ns = svc["metadata"]["namespace"]
    objs: list[dict[str, Any]] = [svc]
    for s in range(draw(st.integers(0, 2))):
        family = draw(any_family)  # a slice holds one family's endpoints (addressType)
        eps = []
        for _ in range(draw(st.integers(0, 5))):
            ready = draw(st.booleans())
            eps.append(
                m.EP(
                    draw(address_in("10.244.0.0", family)),
                    node=draw(st.sampled_from([*NODES, None])),
                    ready=ready,
                    serving=draw(st.booleans()),
                    terminating=draw(st.booleans()),
                    zone=draw(st.sampled_from([*ZONES, None])),
                    zone_hints=tuple(
                        draw(st.lists(st.sampled_from(ZONES), max_size=2, unique=True))
                    ),
                    node_hints=tuple(
                        draw(st.lists(st.sampled_from(NODES), max_size=2, unique=True))
                    ),
                )
            )
        slice_ports = [(p.name, draw(st.integers(1, 65535)), p.protocol) for p in ports]
        objs.append(
            m.endpoint_slice(
                svc_name,
                eps,
                slice_ports,
                name=f"{svc_name}-{s}",
                namespace=ns,
                address_type=family,
            )
        )
    return objs


@st.composite
def cluster_states(draw: st.DrawFn, max_services: int = 6) -> list[dict[str, Any]]:
    addresses = draw(
        st.sampled_from(
            [
                ("192.168.50.11",),
                ("fd00:192:168:50::11",),
                ("192.168.50.11", "fd00:192:168:50::11"),
                ("fd00:192:168:50::11", "192.168.50.11"),
            ]
        )
    )
    objs: list[dict[str, Any]] = [
        m.node("node-a", *addresses, zone=draw(st.sampled_from([*ZONES, None])))
    ]
    for i in range(draw(st.integers(0, max_services))):
        objs.extend(draw(service_and_slices(i)))
    return objs


garbage = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-2, 70000),
        st.text(max_size=8),
        st.sampled_from(["None", "TCP", "10.0.0.1", "::1", "Local", "ClientIP"]),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def corrupted(draw: st.DrawFn) -> dict[str, Any]:
    """A valid object with one field somewhere replaced by garbage."""
    obj: Any = draw(st.sampled_from(draw(service_and_slices(0))))
    path: list[Any] = []
    node = obj
    while isinstance(node, dict | list) and node and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
        path.append(key)
        node = node[key]
    target = obj
    for key in path[:-1]:
        target = target[key]
    if path:
        target[path[-1]] = draw(garbage)
    return obj  # type: ignore[no-any-return]
