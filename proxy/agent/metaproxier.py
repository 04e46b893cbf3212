"""One proxier per IP family behind one sync (upstream's meta-proxier).

A dual-stack node runs an IPv4 and an IPv6 proxier, each with its own plan, renderer,
tables (``ip kube-proxy``/``ip6 kube-proxy``, or iptables/ip6tables) and kernel writer.
Upstream's meta-proxier hands each Service to both and each EndpointSlice to the proxier
of its ``addressType``; here the sync takes the cluster state once and gives every family
the same snapshot and the part of the changes that concerns it
(:meth:`proxy.agent.state.Changes.for_family`): a Service change reaches both, an IPv6
EndpointSlice change only the IPv6 proxier. The planner keeps each family to its own
ClusterIPs, endpoints and node addresses.

The families are synced one after the other in one bounded-frequency run. A family whose
sync fails does not hold the other back; the changes are put back so the failed family
(which makes a full sync next) sees them again, and the other finds nothing new to write.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from proxy.agent.proxier import Proxier
from proxy.agent.state import ClusterState
from proxy.traffic import TrafficSample, merged

log = logging.getLogger(__name__)


class MetaProxier:
    """Syncs every family's :class:`Proxier` from one take of the cluster state."""

    def __init__(self, state: ClusterState, proxiers: Sequence[Proxier]) -> None:
        if not proxiers:
            raise ValueError("a meta-proxier needs at least one proxier")
        families = [p.family for p in proxiers]
        if len(set(families)) != len(families):
            raise ValueError(f"one proxier per IP family, got {families}")
        self.state = state
        self.proxiers = tuple(proxiers)
        for p in self.proxiers:
            p.on_wrote = self._wrote_by(p)

    def _wrote_by(self, writer: Proxier) -> Callable[[int | None, int | None], None]:
        def wrote(before: int | None, after: int | None) -> None:
            for other in self.proxiers:
                if other is not writer:
                    other.ours_moved_generation(before, after)

        return wrote

    def traffic(self) -> list[TrafficSample]:
        """The service traffic counters of every family, summed per service port."""
        return merged(p.traffic() for p in self.proxiers)

    def cleanup_other_mode(self) -> None:
        """Switching modes: remove the rules the other modes left, in every family."""
        for p in self.proxiers:
            p.cleanup_other_mode()

    def sync_proxy_rules(self) -> bool:
        """One sync of every family; True when all succeeded (the bounded-frequency
        runner retries on False)."""
        snapshot, changes, problems = self.state.take()
        failed = [
            p.family
            for p in self.proxiers
            if not p.sync(snapshot, changes.for_family(p.family), problems)
        ]
        if not failed:
            return True
        self.state.requeue(changes)
        if len(failed) < len(self.proxiers):
            log.warning(
                "sync failed for one IP family; the other is programmed",
                extra={"failed": ",".join(failed)},
            )
        return False
