"""Hypothesis strategies: random valid Services/EndpointSlices/Nodes, and garbage versions."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from proxy import manifests as m

NODES = ("node-a", "node-b", "node-c")
ZONES = ("z1", "z2")
names = st.from_regex(r"[a-z]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
port_names = st.from_regex(r"[a-z]([a-z0-9]{0,5})?", fullmatch=True)
protocols = st.sampled_from(["TCP", "UDP", "SCTP"])


def ipv4_in(prefix: str) -> st.SearchStrategy[str]:
    a, b = prefix.split(".")[:2]
    return st.builds(lambda c, d: f"{a}.{b}.{c}.{d}", st.integers(0, 255), st.integers(1, 254))


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
    svc = m.service(
        f"svc{index}-{draw(names)}"[:63],
        f"10.96.{index // 250}.{index % 250 + 1}",
        ports,
        namespace=draw(st.sampled_from(["default", "kube-system", "team-a"])),
        type=svc_type,
        external_ips=draw(st.lists(ipv4_in("203.0.0.0"), max_size=2, unique=True)),
        lb_ips=draw(st.lists(ipv4_in("198.51.0.0"), max_size=2, unique=True))
        if svc_type == "LoadBalancer"
        else (),
        lb_ip_mode=draw(st.sampled_from([None, "VIP", "Proxy"])),
        source_ranges=draw(
            st.lists(
                st.sampled_from(
                    ["10.0.0.0/8", "10.1.0.0/16", "192.168.50.0/24", "203.0.113.0/24", "0.0.0.0/0"]
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
        eps = []
        for _ in range(draw(st.integers(0, 5))):
            ready = draw(st.booleans())
            eps.append(
                m.EP(
                    draw(ipv4_in("10.244.0.0")),
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
            m.endpoint_slice(svc_name, eps, slice_ports, name=f"{svc_name}-{s}", namespace=ns)
        )
    return objs


@st.composite
def cluster_states(draw: st.DrawFn, max_services: int = 6) -> list[dict[str, Any]]:
    objs: list[dict[str, Any]] = [
        m.node("node-a", "192.168.50.11", zone=draw(st.sampled_from([*ZONES, None])))
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
