"""The plan tracker: the last plan, and which service ports the next one changes.

Like upstream kube-proxy's change trackers, which hand the proxier the set of updated
Services, :class:`PlanTracker` keeps the last plan of one IP family with what planning it
left behind (each Service's port plans, who owns which destination, the planning order)
and plans again only the Services that changed since. Its :class:`PlanUpdate` says which
service ports may differ from the last plan; the renderers render only those again
(``render(plan, cache, updated)``). :func:`proxy.plan.plan` stays the full plan, without
any state.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from proxy.config import ProxyConfig
from proxy.model import EndpointSlice, IPFamily, Problem, Service
from proxy.plan import (
    Claims,
    Plan,
    PlanInputs,
    PortPlans,
    ServiceKey,
    ServicePortKey,
    ServicePortPlan,
    SkippedService,
    Snapshot,
    UpdatedServicePorts,
    assemble_plan,
    plan_services,
    resolve_conflicts,
    service_index,
    service_port_plans,
    slices_by_service,
)


@dataclass(frozen=True)
class PlanUpdate:
    plan: Plan
    updated: UpdatedServicePorts | None
    """The service ports that may differ from the tracker's previous plan; None when
    any may (the first plan, or the config, the Node or the family changed): render
    everything."""


@dataclass(frozen=True)
class _Tracked:
    """The last plan and what planning it left behind."""

    plan: Plan
    inputs: PlanInputs
    by_service: PortPlans
    """Each Service's port plans before conflict resolution (what the next plan reuses)."""
    claims: Claims | None
    """Who owns each destination, kept when no two Services conflicted (the next plan
    then only re-checks the Services that changed)."""
    order: tuple[ServiceKey, ...]
    """Every Service's (namespace, name), sorted: the planning order, reused while the
    set of Services stays the same."""
    order_keys: frozenset[ServiceKey]


class PlanTracker:
    """The last plan of one IP family; :meth:`update` plans what changed since."""

    def __init__(self) -> None:
        self._last: _Tracked | None = None

    @property
    def last(self) -> Plan | None:
        return self._last.plan if self._last is not None else None

    def reset(self) -> None:
        """Forget the last plan: the next update plans every Service (``updated`` None)."""
        self._last = None

    def update(
        self,
        snapshot: Snapshot,
        config: ProxyConfig,
        family: IPFamily = IPFamily.V4,
        problems: Iterable[Problem] = (),
        changed: Collection[ServiceKey] | None = None,
    ) -> PlanUpdate:
        """The plan of ``snapshot`` (equal to :func:`proxy.plan.plan`'s), and which
        service ports may differ from the last one.

        ``changed`` names every Service whose Service object or EndpointSlices changed
        since the last update (None: unknown). The port plans of the other Services are
        reused when the config, the Node and the family are the same: the cost then
        follows the size of the change, not of the cluster. Conflicts between Services are
        always resolved over all of them."""
        inputs = PlanInputs(config, snapshot.node, family)
        last = self._last
        if changed is None or (last is not None and last.inputs != inputs):
            last = None  # plan every Service
        wanted = frozenset(changed or ())
        reusable: PortPlans = last.by_service if last is not None else {}
        services = service_index(snapshot)
        slices = slices_by_service(snapshot, lambda k: k in wanted or k not in reusable)
        order, order_keys, same_order = _order(services, last, wanted)

        replanned = None
        if last is not None and same_order:
            replanned = _replan(wanted, services, reusable, inputs, slices)
        if last is not None and replanned is not None:
            by_service = replanned
            skipped = [s for s in last.plan.skipped if _service_of(s) not in wanted]
        else:
            by_service, skipped = plan_services(inputs, services, order, slices, reusable, wanted)

        ports = [sp for group in by_service.values() for sp in group]
        claims = None
        if last is not None and last.claims is not None:
            claims = last.claims.updated(
                (sp for k in wanted for sp in last.by_service.get(k, ())),
                (sp for k in wanted for sp in by_service.get(k, ())),
            )
        in_place = claims is not None  # no conflict then or now: only `wanted` changed
        conflicts: list[Problem] = []
        if claims is None:
            ports, conflicts, claims = resolve_conflicts(ports, config.node_name, inputs.zone)
        p = assemble_plan(inputs, ports, skipped, (*problems, *conflicts))

        updated: dict[ServicePortKey, ServicePortPlan | None] | None = None
        if last is not None and in_place:
            updated = {sp.key: None for k in wanted for sp in last.by_service.get(k, ())}
            updated.update((sp.key, sp) for k in wanted for sp in by_service.get(k, ()))
        elif last is not None:  # resolving conflicts may have changed other Services' ports
            updated = changed_ports(last.plan.service_ports, p.service_ports)
        self._last = _Tracked(p, inputs, by_service, claims, order, order_keys)
        return PlanUpdate(p, updated)


def changed_ports(
    old: Iterable[ServicePortPlan], new: Iterable[ServicePortPlan]
) -> dict[ServicePortKey, ServicePortPlan | None]:
    """The service ports that came, went or changed from ``old`` to ``new``."""
    before = {sp.key: sp for sp in old}
    out: dict[ServicePortKey, ServicePortPlan | None] = {}
    for sp in new:
        if before.pop(sp.key, None) != sp:
            out[sp.key] = sp
    out.update(dict.fromkeys(before))
    return out


def _service_of(skipped: SkippedService) -> ServiceKey:
    return (skipped.ref.namespace, skipped.ref.name)


def _order(
    services: Mapping[ServiceKey, Service], last: _Tracked | None, wanted: frozenset[ServiceKey]
) -> tuple[tuple[ServiceKey, ...], frozenset[ServiceKey], bool]:
    """The planning order, its keys, and whether it is the last plan's (no Service came or
    went: only the changed ones may have)."""
    if last is not None:
        order, keys = last.order, last.order_keys
        if len(order) == len(services) and all((k in services) == (k in keys) for k in wanted):
            return order, keys, True
    order = tuple(sorted(services))
    return order, frozenset(order), False


def _replan(
    wanted: Collection[ServiceKey],
    services: Mapping[ServiceKey, Service],
    reusable: PortPlans,
    inputs: PlanInputs,
    slices: Mapping[ServiceKey, Iterable[EndpointSlice]],
) -> dict[ServiceKey, tuple[ServicePortPlan, ...]] | None:
    """The last plan's port plans with only the ``wanted`` Services planned again, in the
    same order; None when one of them is, or was, skipped or without a ClusterIP of the
    family (then all Services are walked: the order of what is planned changes)."""
    by_service = dict(reusable)
    for key in wanted:
        svc = services.get(key)
        if key not in reusable or svc is None or svc.skip_reason is not None:
            return None
        planned = service_port_plans(svc, slices.get(key, ()), inputs)
        if planned is None:
            return None
        by_service[key] = planned
    return by_service
