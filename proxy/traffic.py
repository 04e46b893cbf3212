"""Per Service port traffic counters (``--metrics-service-counters``), pure: what the
modes read from their rules becomes samples labelled namespace, service, port, verdict.

nftables counts per service destination (address, protocol, port: a ClusterIP,
ExternalIP or LoadBalancer IP port, or a node address and NodePort); :func:`attribute`
gives each destination to the service port that owns it in the plan. iptables counts in
per service port rules whose comment names the port (:func:`parse_counted_comment`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from proxy.model import IPAddress
from proxy.plan import Plan, ServicePortPlan

VERDICTS = ("dnat", "reject", "drop")

Destination = tuple[IPAddress, str, int]
"""Address, protocol (lower case), port."""
Counts = Mapping[str, Mapping[Destination, tuple[int, int]]]
"""verdict → destination → (packets, bytes)."""


@dataclass(frozen=True, order=True)
class TrafficSample:
    namespace: str
    service: str
    port: str
    """The port's name, or its number when it has none."""
    verdict: str
    packets: int
    bytes: int


def port_label(sp: ServicePortPlan) -> str:
    return sp.port_name or str(sp.port)


def owners(plan: Plan) -> Callable[[Destination], ServicePortPlan | None]:
    """Which service port a counted destination belongs to: a destination of a service
    port's ClusterIP, ExternalIPs or LoadBalancer IPs is that port's; any other with a
    NodePort's protocol and port is the NodePort's."""
    vips: dict[Destination, ServicePortPlan] = {}
    node_ports: dict[tuple[str, int], ServicePortPlan] = {}
    for sp in plan.service_ports:
        proto = sp.protocol.lowercase
        for ip in (sp.cluster_ip, *sp.external_ips, *sp.load_balancer_ips):
            vips[(ip, proto, sp.port)] = sp
        if sp.node_port:
            node_ports[(proto, sp.node_port)] = sp
    return lambda d: vips.get(d) or node_ports.get((d[1], d[2]))


def attribute(
    owner_of: Callable[[Destination], ServicePortPlan | None], counts: Counts
) -> list[TrafficSample]:
    """``counts`` (one mode's reading of one family) as samples per service port, each
    destination given to its owner (:func:`owners` of the plan). Destinations no service
    port owns any more (a deleted Service, until the agent deletes its element) are left
    out."""
    samples = [
        TrafficSample(owner.namespace, owner.name, port_label(owner), verdict, *pair)
        for verdict, per_destination in counts.items()
        for destination, pair in per_destination.items()
        if (owner := owner_of(destination)) is not None
    ]
    return merged([samples])


def merged(groups: Iterable[Iterable[TrafficSample]]) -> list[TrafficSample]:
    """Samples of several families (or readings) summed per label set."""
    sums: dict[tuple[str, str, str, str], list[int]] = {}
    for group in groups:
        for s in group:
            total = sums.setdefault((s.namespace, s.service, s.port, s.verdict), [0, 0])
            total[0] += s.packets
            total[1] += s.bytes
    return sorted(TrafficSample(*key, p, b) for key, (p, b) in sums.items())


def nft_set_counts(listing: Mapping[str, object]) -> dict[Destination, tuple[int, int]]:
    """``nft -j list set`` output of a traffic set → destination → (packets, bytes)."""
    out: dict[Destination, tuple[int, int]] = {}
    items = listing.get("nftables")
    for item in items if isinstance(items, list) else ():
        body = item.get("set") if isinstance(item, dict) else None
        elements = body.get("elem") if isinstance(body, dict) else None
        for element in elements if isinstance(elements, list) else ():
            found = _element(element)
            if found is not None:
                out[found[0]] = found[1]
    return out


def _element(raw: object) -> tuple[Destination, tuple[int, int]] | None:
    elem = raw.get("elem") if isinstance(raw, dict) else None
    if not isinstance(elem, dict):
        return None
    val, counter = elem.get("val"), elem.get("counter")
    concat = val.get("concat") if isinstance(val, dict) else None
    if not (isinstance(concat, list) and len(concat) == 3 and isinstance(counter, dict)):
        return None
    ip, proto, port = concat
    packets, size = counter.get("packets"), counter.get("bytes")
    if not all(isinstance(v, int) for v in (port, packets, size)) or not isinstance(proto, str):
        return None
    try:
        address = ipaddress.ip_address(str(ip))
    except ValueError:
        return None
    return (address, proto, port), (packets, size)  # type: ignore[return-value]


def parse_counted_comment(comment: str) -> tuple[str, str, str, str] | None:
    """An iptables counting rule's comment, ``ns/name:port verdict`` (``ns/name verdict``
    for an unnamed port, whose number follows: ``ns/name:#80 verdict``) → namespace,
    service, port label, verdict."""
    spn, _, verdict = comment.rpartition(" ")
    if verdict not in VERDICTS or "/" not in spn:
        return None
    namespace, _, rest = spn.partition("/")
    name, _, port = rest.partition(":")
    if not namespace or not name or not port:
        return None
    return namespace, name, port.removeprefix("#"), verdict


K = TypeVar("K", bound=Hashable)
Pair = tuple[int, int]


def _plus(a: Pair, b: Pair) -> Pair:
    return a[0] + b[0], a[1] + b[1]


class Monotonic(Generic[K]):
    """Counters that only grow, over readings of kernel counters that restart: an
    nftables element that expires and comes back at 0, an iptables rule rewritten by a
    sync. A counter read lower than before has restarted: what it had counted is kept
    aside and added; one no longer read keeps its total. Summed per service port, the
    exported figures then never go down while the agent runs (Prometheus would take any
    dip for a reset and count the whole sum again)."""

    def __init__(self) -> None:
        self._last: dict[K, Pair] = {}
        self._base: dict[K, Pair] = {}

    def update(self, readings: Mapping[K, Pair], keep: Callable[[K], bool]) -> dict[K, Pair]:
        """The totals after ``readings``; counters ``keep`` says no to (their Service is
        gone) are forgotten, which bounds what is held."""
        for key in [k for k in (*self._last, *self._base) if not keep(k)]:
            self._last.pop(key, None)
            self._base.pop(key, None)
        out: dict[K, Pair] = {}
        for key in {*self._last, *self._base, *(k for k in readings if keep(k))}:
            base, last, now = self._base.get(key, (0, 0)), self._last.get(key), readings.get(key)
            if last is not None and (now is None or now[0] < last[0] or now[1] < last[1]):
                base = _plus(base, last)  # gone or restarted: keep what it had counted
            self._base[key] = base
            if now is None:
                self._last.pop(key, None)
                out[key] = base
            else:
                self._last[key] = now
                out[key] = _plus(base, now)
        return out
