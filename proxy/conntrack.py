"""Stale UDP conntrack cleanup, through the kernel's conntrack netlink (no ``conntrack`` CLI).

UDP has no connection teardown: once the kernel has tracked a flow, every later datagram
of it (same 5-tuple) follows the conntrack entry, not the NAT rules. When the endpoint the
entry was DNATed to goes away, or when the first datagrams were never DNATed at all
(sent before the service had rules, or routed away), the flow keeps going to the wrong
place until the entry times out, which a chatty client (DNS, syslog, QUIC, …) never lets
happen. So after every sync the proxy deletes exactly those entries, and never flushes
the table.

Which entries are stale (upstream kube-proxy's reconciler, ``pkg/proxy/conntrack``
``CleanStaleEntries`` in v1.33+, in our words):

* Only UDP entries, only for UDP service ports that have at least one serving endpoint
  (a service port without endpoints is left alone: there is nowhere better to send the
  flow, and its traffic is rejected anyway).
* An entry whose original destination ``ip:port`` is a ClusterIP, ExternalIP or
  LoadBalancer IP of such a port is stale when its reply source ``ip:port`` (where the
  packets were actually sent) is not one of the port's serving endpoints. That covers an
  endpoint that disappeared, and also a flow that was never DNATed (reply source = the
  service IP itself): typically datagrams sent while the service had no rules yet, which
  went to routing; this is how "the service went from no endpoints to some" is handled
  without remembering the transition.
* An entry whose original destination port is the NodePort of such a port (any
  destination address: node IPs, localhost) is stale under the same reply-source rule.
* "Serving endpoints" deliberately ignores traffic policies, topology hints and
  terminating state, as upstream does: a flow to an endpoint that is still serving stays
  where it is even if a policy change means new flows would go elsewhere (UDP then
  behaves like TCP, whose established connections are never cut). Every endpoint the
  rules may DNAT to now is of course included.

One refinement over upstream: when an entry's original destination is a known service
``ip:port``, only that service port judges it. Upstream falls through to the NodePort
check as well, so a ClusterIP flow on port 30080 could be deleted because some other
service owns NodePort 30080; here it cannot.

The pure part (:func:`udp_targets`, :func:`stale_entries`) is separate from the kernel
part (:class:`ConntrackCleaner`) so that the rules above are unit-testable.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from proxy.model import Protocol
from proxy.plan import Plan, ServicePortPlan

log = logging.getLogger(__name__)

_AF = {4: socket.AF_INET, 6: socket.AF_INET6}


class ConntrackError(RuntimeError):
    """The conntrack table could not be read or changed (message says what to fix)."""


@dataclass(frozen=True)
class UdpTarget:
    """One UDP service port, as the planner sees it now."""

    service: str
    """``ns/name:port`` (``ns/name`` for an unnamed port), for logs."""
    ips: frozenset[str]
    """Cluster IP, external IPs and LoadBalancer IPs (one family)."""
    port: int
    node_port: int | None
    serving: frozenset[tuple[str, int]]
    """Endpoint ``(ip, port)`` pairs that flows of this port may legitimately reach now."""

    @property
    def object(self) -> str:
        """``ns/name`` of the Service."""
        return self.service.split(":", 1)[0]

    @property
    def family(self) -> int | None:
        """4 or 6, from the service IPs (None when there are none)."""
        for ip in self.ips:
            return ipaddress.ip_address(ip).version
        return None


@dataclass(frozen=True)
class FlowEntry:
    """The parts of one conntrack entry the cleanup looks at (UDP only)."""

    orig_src: str
    orig_dst: str
    orig_sport: int
    orig_dport: int
    reply_src: str
    reply_sport: int
    family: int
    """4 or 6."""

    def __str__(self) -> str:
        return (
            f"udp {_hostport(self.orig_src, self.orig_sport)} -> "
            f"{_hostport(self.orig_dst, self.orig_dport)} "
            f"(reply from {_hostport(self.reply_src, self.reply_sport)})"
        )


def _hostport(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _canon(ip: str) -> str:
    """One spelling per address (IPv6 in particular), so that lookups match."""
    return str(ipaddress.ip_address(ip))


# ---------------------------------------------------------------------------------------
# pure part


def _serving(sp: ServicePortPlan) -> frozenset[tuple[str, int]]:
    endpoints = {(str(c.ip), c.port) for c in sp.candidates if c.serving}
    endpoints |= {(str(c.ip), c.port) for c in sp.reachable_endpoints}
    return frozenset(endpoints)


def udp_targets(plan: Plan) -> tuple[UdpTarget, ...]:
    """The UDP service ports of a plan, with their service IPs, NodePort and endpoints."""
    targets: list[UdpTarget] = []
    for sp in plan.service_ports:
        if sp.protocol is not Protocol.UDP:
            continue
        ips = {str(sp.cluster_ip), *map(str, sp.external_ips), *map(str, sp.load_balancer_ips)}
        targets.append(
            UdpTarget(
                service=sp.service_port_name,
                ips=frozenset(ips),
                port=sp.port,
                node_port=sp.node_port,
                serving=_serving(sp),
            )
        )
    return tuple(targets)


@dataclass
class _Judge:
    """The service port an entry is checked against (several when they share a key)."""

    services: list[str]
    serving: set[tuple[str, int]]


def _index(
    targets: Iterable[UdpTarget],
) -> tuple[dict[tuple[int, str, int], _Judge], dict[tuple[int | None, int], _Judge]]:
    by_ip: dict[tuple[int, str, int], _Judge] = {}
    by_node_port: dict[tuple[int | None, int], _Judge] = {}
    for t in targets:
        serving = {(_canon(ip), port) for ip, port in t.serving}
        for ip in t.ips:
            addr = ipaddress.ip_address(ip)
            key = (addr.version, str(addr), t.port)
            judge = by_ip.setdefault(key, _Judge([], set()))
            judge.services.append(t.service)
            # a port without serving endpoints still owns its ip:port (recorded, with an
            # empty set): its entries are never judged by an unrelated NodePort
            judge.serving |= serving
        if t.node_port:
            judge = by_node_port.setdefault((t.family, t.node_port), _Judge([], set()))
            judge.services.append(t.service)
            judge.serving |= serving
    return by_ip, by_node_port


def classify(
    entries: Iterable[FlowEntry],
    targets: Iterable[UdpTarget],
    newly_served: Iterable[UdpTarget] = (),
) -> list[tuple[FlowEntry, str]]:
    """Stale entries, each with the ``ns/name:port`` it was judged stale for.

    ``newly_served`` (service ports that just went from no endpoints to some) are judged
    like ``targets``: their un-DNATed entries have a reply source that is not an endpoint,
    which is exactly what makes them stale. Passing them separately lets a caller that
    only tracks changed services still name them.
    """
    by_ip, by_node_port = _index([*targets, *newly_served])
    stale: list[tuple[FlowEntry, str]] = []
    for entry in entries:
        dst = _canon(entry.orig_dst)
        judge = by_ip.get((entry.family, dst, entry.orig_dport))
        if judge is None:
            judge = by_node_port.get((entry.family, entry.orig_dport)) or by_node_port.get(
                (None, entry.orig_dport)
            )
        if judge is None or not judge.serving:
            continue
        if (_canon(entry.reply_src), entry.reply_sport) not in judge.serving:
            stale.append((entry, judge.services[0]))
    return stale


def stale_entries(
    entries: Iterable[FlowEntry],
    targets: Iterable[UdpTarget],
    newly_served: Iterable[UdpTarget] = (),
) -> list[FlowEntry]:
    """The UDP entries to delete after a sync (see the module docstring for the rules)."""
    return [entry for entry, _ in classify(entries, targets, newly_served)]


# ---------------------------------------------------------------------------------------
# kernel part


class ConntrackCleaner:
    """Reads and deletes UDP conntrack entries over netlink.

    ``netns``: the named network namespace (``ip netns`` name) whose table to work on;
    None for the current one. pyroute2 opens the netlink socket in a short-lived child
    process that enters the namespace and hands the socket back, so this process (and
    every thread in it) never changes namespace, on success or on error. Every call opens
    and closes its own sockets; the cleaner holds no kernel state and is thread-safe.
    """

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    def __repr__(self) -> str:
        return f"ConntrackCleaner(netns={self.netns!r})"

    @contextmanager
    def _socket(self, family: int) -> Iterator[Any]:
        from pyroute2 import Conntrack

        kwargs: dict[str, Any] = {"nfgen_family": _AF[family]}
        if self.netns is not None:
            # flags=0: never create the namespace (pyroute2's default is O_CREAT)
            kwargs.update(netns=self.netns, flags=0)
        try:
            ct = Conntrack(**kwargs)
        except OSError as exc:
            raise self._error(exc) from exc
        try:
            yield ct
        except OSError as exc:
            raise self._error(exc) from exc
        finally:
            ct.close()

    def _error(self, exc: OSError) -> ConntrackError:
        where = f"network namespace {self.netns}" if self.netns else "this network namespace"
        if isinstance(exc, FileNotFoundError) and self.netns is not None:
            return ConntrackError(f"network namespace {self.netns!r} does not exist")
        if exc.errno in (errno.EPERM, errno.EACCES):
            return ConntrackError(
                f"reading conntrack in {where} needs CAP_NET_ADMIN (run as root or grant "
                "the capability)"
            )
        return ConntrackError(f"conntrack netlink in {where}: {exc}")

    def dump_udp(self, families: Iterable[int] = (4, 6)) -> list[FlowEntry]:
        """Every UDP entry of the given families (a dump interrupted by concurrent
        changes is used as far as it got, like upstream; the next sync sees the rest)."""
        from pyroute2.netlink.exceptions import NetlinkDumpInterrupted, NetlinkError
        from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

        out: list[FlowEntry] = []
        for family in sorted(set(families)):
            with self._socket(family) as ct:
                # the kernel filters on the protocol (Linux 5.8+); the check below keeps
                # older kernels, which ignore the filter, correct
                wanted = NFCTAttrTuple(family=_AF[family], proto=socket.IPPROTO_UDP)
                try:
                    for e in ct.dump_entries(tuple_orig=wanted):
                        entry = _flow(e, family)
                        if entry is not None:
                            out.append(entry)
                except NetlinkDumpInterrupted:
                    log.warning(
                        "conntrack dump interrupted; continuing with a partial list",
                        extra={"object": self.netns or "-", "family": f"IPv{family}"},
                    )
                except NetlinkError as exc:
                    if exc.code in (errno.EPERM, errno.EACCES):
                        raise self._error(PermissionError(exc.code, str(exc))) from exc
                    raise ConntrackError(f"listing IPv{family} conntrack entries: {exc}") from exc
        return out

    def delete(self, entries: Iterable[FlowEntry]) -> int:
        """Delete entries by their original tuple; returns how many the kernel removed
        (entries already gone are not errors; other failures are logged and skipped)."""
        return len(self._delete(entries))

    def _delete(self, entries: Iterable[FlowEntry]) -> list[FlowEntry]:
        from pyroute2.netlink.exceptions import NetlinkError
        from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

        by_family: dict[int, list[FlowEntry]] = {}
        for entry in entries:
            by_family.setdefault(entry.family, []).append(entry)
        deleted: list[FlowEntry] = []
        for family, group in sorted(by_family.items()):
            with self._socket(family) as ct:
                for entry in group:
                    tup = NFCTAttrTuple(
                        family=_AF[family],
                        saddr=entry.orig_src,
                        daddr=entry.orig_dst,
                        proto=socket.IPPROTO_UDP,
                        sport=entry.orig_sport,
                        dport=entry.orig_dport,
                    )
                    try:
                        ct.entry("del", tuple_orig=tup)
                    except NetlinkError as exc:
                        if exc.code != errno.ENOENT:
                            log.error(
                                "failed to delete conntrack entry",
                                extra={
                                    "object": self.netns or "-",
                                    "entry": str(entry),
                                    "error": str(exc),
                                },
                            )
                        continue
                    deleted.append(entry)
        return deleted

    def cleanup(self, targets: Iterable[UdpTarget], newly_served: Iterable[UdpTarget] = ()) -> int:
        """Dump, pick the stale entries, delete them; returns how many were deleted.

        Logs one line per service port that lost entries. Raises ConntrackError when
        the table cannot be read at all.
        """
        targets = tuple(targets)
        newly_served = tuple(newly_served)
        families = {t.family for t in (*targets, *newly_served) if t.family is not None}
        if not families:
            return 0
        stale = classify(self.dump_udp(families), targets, newly_served)
        if not stale:
            return 0
        service_of = dict(stale)
        deleted = self._delete(service_of)
        per_service = Counter(service_of[entry] for entry in deleted)
        for service, n in sorted(per_service.items()):
            log.info(
                "deleted stale UDP conntrack entries",
                extra={
                    "object": service.split(":", 1)[0],
                    "service_port": service,
                    "deleted": n,
                },
            )
        return len(deleted)


def _flow(entry: Any, family: int) -> FlowEntry | None:
    orig, reply = entry.tuple_orig, entry.tuple_reply
    if orig.proto != socket.IPPROTO_UDP or orig.sport is None or reply.sport is None:
        return None
    return FlowEntry(
        orig_src=orig.saddr,
        orig_dst=orig.daddr,
        orig_sport=orig.sport,
        orig_dport=orig.dport,
        reply_src=reply.saddr,
        reply_sport=reply.sport,
        family=family,
    )
