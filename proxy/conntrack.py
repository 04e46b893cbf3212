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
import os
import socket
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from proxy.kernel.ctnetlink import CtNetlinkError, CtNetlinkSocket
from proxy.model import IPFamily, Protocol
from proxy.plan import Plan, ServicePortPlan

log = logging.getLogger(__name__)

_AF = {IPFamily.V4: socket.AF_INET, IPFamily.V6: socket.AF_INET6}


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
    def family(self) -> IPFamily | None:
        """From the service IPs (None when there are none)."""
        for ip in self.ips:
            return IPFamily.of(ipaddress.ip_address(ip))
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
    family: IPFamily

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
) -> tuple[dict[tuple[IPFamily, str, int], _Judge], dict[tuple[IPFamily | None, int], _Judge]]:
    by_ip: dict[tuple[IPFamily, str, int], _Judge] = {}
    by_node_port: dict[tuple[IPFamily | None, int], _Judge] = {}
    for t in targets:
        serving = {(_canon(ip), port) for ip, port in t.serving}
        for ip in t.ips:
            addr = ipaddress.ip_address(ip)
            key = (IPFamily.of(addr), str(addr), t.port)
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
    # a table holds few distinct addresses and parsing one costs microseconds: each is
    # parsed once per call (262,144 entries: 1.2 s -> 0.1 s)
    canon: dict[str, str] = {}
    for entry in entries:
        dst = canon.get(entry.orig_dst)
        if dst is None:
            dst = canon[entry.orig_dst] = _canon(entry.orig_dst)
        judge = by_ip.get((entry.family, dst, entry.orig_dport))
        if judge is None:
            judge = by_node_port.get((entry.family, entry.orig_dport)) or by_node_port.get(
                (None, entry.orig_dport)
            )
        if judge is None or not judge.serving:
            continue
        src = canon.get(entry.reply_src)
        if src is None:
            src = canon[entry.reply_src] = _canon(entry.reply_src)
        if (src, entry.reply_sport) not in judge.serving:
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
    """Reads and deletes UDP conntrack entries over netlink (:mod:`proxy.kernel.ctnetlink`).

    ``netns``: the named network namespace (``ip netns`` name) whose table to work on;
    None for the current one. The netlink socket is created on a throwaway thread that
    entered the namespace, so this process (and every thread in it) never changes
    namespace, on success or on error; a missing namespace is never created. Every call
    opens and closes its own socket; the cleaner holds no kernel state and is
    thread-safe.
    """

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    def __repr__(self) -> str:
        return f"ConntrackCleaner(netns={self.netns!r})"

    @contextmanager
    def _socket(self) -> Iterator[CtNetlinkSocket]:
        try:
            sock = CtNetlinkSocket(self.netns)
        except OSError as exc:
            raise self._error(exc) from exc
        try:
            yield sock
        except OSError as exc:
            raise self._error(exc) from exc
        finally:
            sock.close()

    def _error(self, exc: OSError) -> ConntrackError:
        where = f"network namespace {self.netns}" if self.netns else "this network namespace"
        if (
            self.netns is not None
            and exc.errno == errno.ENOENT
            and not isinstance(exc, CtNetlinkError)
        ):
            return ConntrackError(f"network namespace {self.netns!r} does not exist")
        if exc.errno in (errno.EPERM, errno.EACCES):
            return ConntrackError(
                f"reading conntrack in {where} needs CAP_NET_ADMIN (run as root or grant "
                "the capability)"
            )
        return ConntrackError(f"conntrack netlink in {where}: {exc}")

    def dump_udp(self, families: Iterable[IPFamily] = tuple(IPFamily)) -> list[FlowEntry]:
        """Every UDP entry of the given families (a dump interrupted by concurrent
        changes is used as far as it got, like upstream; the next sync sees the rest)."""
        out: list[FlowEntry] = []
        with self._socket() as sock:
            for family in sorted(set(families)):
                try:
                    dump = sock.dump_udp(_AF[family], _flow_maker(family))
                except CtNetlinkError as exc:
                    if exc.errno in (errno.EPERM, errno.EACCES):
                        raise self._error(exc) from exc
                    raise ConntrackError(f"listing {family} conntrack entries: {exc}") from exc
                if dump.interrupted:
                    log.warning(
                        "conntrack dump interrupted; continuing with a partial list",
                        extra={"object": self.netns or "-", "family": str(family)},
                    )
                out += dump.flows
        return out

    def delete(self, entries: Iterable[FlowEntry]) -> int:
        """Delete entries by their original tuple; returns how many the kernel removed
        (entries already gone are not errors; other failures are logged and skipped)."""
        return len(self._delete(entries))

    def _delete(self, entries: Iterable[FlowEntry]) -> list[FlowEntry]:
        by_family: dict[IPFamily, list[FlowEntry]] = {}
        for entry in entries:
            by_family.setdefault(entry.family, []).append(entry)
        deleted: list[FlowEntry] = []
        if not by_family:
            return deleted
        with self._socket() as sock:
            for family, group in sorted(by_family.items()):
                codes = sock.delete(
                    _AF[family],
                    [(e.orig_src, e.orig_dst, e.orig_sport, e.orig_dport) for e in group],
                )
                for entry, code in zip(group, codes, strict=True):
                    if code == 0:
                        deleted.append(entry)
                    elif code != errno.ENOENT:  # ENOENT: already gone
                        log.error(
                            "failed to delete conntrack entry",
                            extra={
                                "object": self.netns or "-",
                                "entry": str(entry),
                                "error": os.strerror(code),
                            },
                        )
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


def _flow_maker(family: IPFamily) -> Callable[[str, str, int, int, str, int], FlowEntry]:
    """What the dump makes of each UDP entry of ``family``."""

    def make(
        orig_src: str,
        orig_dst: str,
        orig_sport: int,
        orig_dport: int,
        reply_src: str,
        reply_sport: int,
    ) -> FlowEntry:
        return FlowEntry(orig_src, orig_dst, orig_sport, orig_dport, reply_src, reply_sport, family)

    return make
