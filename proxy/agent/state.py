"""What the agent knows about the cluster: Services, EndpointSlices and its Node.

Reflector threads feed raw API objects in; the sync loop takes an immutable
:class:`Snapshot` out, together with what changed since the last sync. An invalid object is
reported (log + problem list for the metrics) and skipped: a new one is ignored, an update
that turns a valid object invalid keeps the last valid version in force, so a bad edit never
takes a working Service down with it.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.model import (
    AddressType,
    EndpointSlice,
    IPFamily,
    Node,
    Problem,
    Service,
    parse_endpoint_slice,
    parse_node,
    parse_service,
)
from proxy.plan import Snapshot

log = logging.getLogger(__name__)

TRIGGER_TIME_ANNOTATION = "endpoints.kubernetes.io/last-change-trigger-time"
MAX_TRIGGER_TIMES = 10_000
"""Trigger times kept for the programming-latency metric while syncs fail (the oldest are
dropped beyond this: memory stays bounded however long the kernel refuses)."""
Key = tuple[str, str]


_FAMILY_OF_SLICE = {AddressType.IPV4: IPFamily.V4, AddressType.IPV6: IPFamily.V6}


@dataclass
class Changes:
    """What happened since the previous sync.

    Like upstream's meta-proxier, which hands each EndpointSlice to the proxier of its
    ``addressType`` only, a change remembers which IP family it concerns: a Service
    change concerns every family, an EndpointSlice change only its own (an FQDN slice
    none). :meth:`for_family` is what one family's proxier has to sync."""

    services: set[Key] = field(default_factory=set)
    """(namespace, service name) whose Service or EndpointSlices changed."""
    service_events: int = 0
    endpoint_events: int = 0
    trigger_times: list[float] = field(default_factory=list)
    """Wall-clock times (epoch seconds) of the endpoint changes, from the slices'
    last-change-trigger-time annotation, for network programming latency."""
    node_changed: bool = False
    first_queued: float | None = None
    """Monotonic time of the oldest change not yet synced."""
    service_objects: set[Key] = field(default_factory=set)
    """The keys of ``services`` whose Service object changed (every family's concern)."""
    slice_families: dict[IPFamily, set[Key]] = field(default_factory=dict)
    """The keys of ``services`` whose EndpointSlices of a family changed."""
    trigger_families: list[IPFamily | None] = field(default_factory=list)
    """The family of each of ``trigger_times``."""

    @property
    def empty(self) -> bool:
        return not (self.services or self.node_changed)

    def service_changed(self, key: Key) -> None:
        self.services.add(key)
        self.service_objects.add(key)

    def slice_changed(self, key: Key, family: IPFamily | None) -> None:
        self.services.add(key)
        if family is not None:
            self.slice_families.setdefault(family, set()).add(key)

    def add_trigger_time(self, t: float, family: IPFamily | None = None) -> None:
        self.trigger_times.append(t)
        self.trigger_families.append(family)
        if len(self.trigger_times) > MAX_TRIGGER_TIMES:
            del self.trigger_times[: len(self.trigger_times) - MAX_TRIGGER_TIMES]
            del self.trigger_families[: len(self.trigger_families) - MAX_TRIGGER_TIMES]

    def for_family(self, family: IPFamily) -> Changes:
        """The part of these changes one family's proxier syncs: every changed Service
        object, the Services whose slices of ``family`` changed, their trigger times."""
        mine = self.slice_families.get(family, set())
        times = [
            t for t, f in zip(self.trigger_times, self.trigger_families, strict=True) if f is family
        ]
        return Changes(
            services=self.service_objects | mine,
            service_events=self.service_events,
            endpoint_events=self.endpoint_events,
            trigger_times=times,
            node_changed=self.node_changed,
            first_queued=self.first_queued,
            service_objects=set(self.service_objects),
            slice_families={family: set(mine)} if mine else {},
            trigger_families=[family] * len(times),
        )

    def merge(self, other: Changes) -> None:
        """Add ``other`` (changes a failed sync took back) to these."""
        self.services |= other.services
        self.service_objects |= other.service_objects
        for family, keys in other.slice_families.items():
            self.slice_families.setdefault(family, set()).update(keys)
        self.service_events += other.service_events
        self.endpoint_events += other.endpoint_events
        for t, f in zip(other.trigger_times, other.trigger_families, strict=True):
            self.add_trigger_time(t, f)
        self.node_changed |= other.node_changed
        if other.first_queued is not None and (
            self.first_queued is None or other.first_queued < self.first_queued
        ):
            self.first_queued = other.first_queued


def _text(meta: Any, key: str, default: str) -> str:
    value = meta.get(key, default) if isinstance(meta, Mapping) else default
    return value if isinstance(value, str) else default


def _key(obj: Mapping[str, Any]) -> Key:
    """(namespace, name); a namespaced object without a namespace is in ``default``, as
    the model reads it (Nodes only use the name)."""
    meta = obj.get("metadata")
    return (_text(meta, "namespace", "default") or "default", _text(meta, "name", "?"))


def _rv(obj: Mapping[str, Any]) -> str:
    return _text(obj.get("metadata"), "resourceVersion", "")


def parse_trigger_time(value: object) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class ClusterState:
    def __init__(
        self,
        node_name: str,
        on_change: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        on_invalid: Callable[[str, int], None] = lambda kind, count: None,
    ) -> None:
        """``on_invalid(kind, now_skipped)`` runs when an invalid version of an object is
        first seen, and when an object of ``kind`` stops being invalid."""
        self.node_name = node_name
        self._on_change = on_change
        self._on_invalid = on_invalid
        self._clock = clock
        self._lock = threading.Lock()
        self._services: dict[Key, Service] = {}
        self._slices: dict[Key, EndpointSlice] = {}
        self._service_slices: dict[Key, dict[Key, EndpointSlice]] = {}
        self._slice_index: dict[Key, tuple[EndpointSlice, ...]] = {}
        """Slices by their Service's key (what the planner groups by), kept as we go."""
        self._node: Node | None = None
        self._problems: dict[tuple[str, Key], tuple[Problem, ...]] = {}
        self._reported: dict[tuple[str, Key], str] = {}
        self._changes = Changes()
        self._synced: set[str] = set()
        self._invalid_events = 0

    # -- feeding ------------------------------------------------------------------------
    def mark_synced(self, kind: str) -> None:
        with self._lock:
            self._synced.add(kind)
        self._on_change()

    def has_synced(self, *kinds: str) -> bool:
        with self._lock:
            return all(k in self._synced for k in kinds)

    def handle(self, kind: str, event: str, obj: Mapping[str, Any]) -> None:
        """Apply one watch event (ADDED, MODIFIED, DELETED) for a Service, EndpointSlice or
        Node. Safe to call from any thread."""
        with self._lock:
            invalid_before = self._invalid_events
            if kind == "Service":
                changed = self._handle_service(event, obj)
            elif kind == "EndpointSlice":
                changed = self._handle_slice(event, obj)
            elif kind == "Node":
                changed = self._handle_node(event, obj)
            else:
                raise ValueError(f"unknown kind {kind!r}")
            if changed and self._changes.first_queued is None:
                self._changes.first_queued = self._clock()
            invalid_changed = self._invalid_events != invalid_before
            skipped = sum(1 for k, _ in self._problems if k == kind)
        if invalid_changed:
            self._on_invalid(kind, skipped)
        if changed:
            self._on_change()

    def _invalid(self, kind: str, key: Key, obj: Mapping[str, Any], probs: list[Problem]) -> None:
        pkey = (kind, key)
        self._problems[pkey] = tuple(probs)
        rv = _rv(obj)
        if self._reported.get(pkey) == rv:
            return  # already logged this version (relists deliver it again)
        self._reported[pkey] = rv
        self._invalid_events += 1
        kept = (
            "the last valid version stays in force"
            if (
                (kind == "Service" and key in self._services)
                or (kind == "EndpointSlice" and key in self._slices)
            )
            else "ignored"
        )
        for p in probs:
            log.warning(
                "invalid object skipped",
                extra={
                    "kind": kind,
                    "object": str(p.ref),
                    "field": p.field,
                    "problem": p.message,
                    "outcome": kept,
                },
            )

    def _valid(self, kind: str, key: Key) -> None:
        if self._problems.pop((kind, key), None) is not None:
            self._invalid_events += 1
        self._reported.pop((kind, key), None)

    def _handle_service(self, event: str, obj: Mapping[str, Any]) -> bool:
        key = _key(obj)
        self._changes.service_events += 1
        if event == "DELETED":
            self._valid("Service", key)
            if self._services.pop(key, None) is None:
                return False
            self._changes.service_changed(key)
            return True
        svc, probs = parse_service(obj)
        if svc is None:
            self._invalid("Service", key, obj, probs)
            return False
        self._valid("Service", key)
        if self._services.get(key) == svc:
            return False
        self._services[key] = svc
        self._changes.service_changed(key)
        return True

    def _index_slice(self, key: Key, old: EndpointSlice | None, new: EndpointSlice | None) -> None:
        for sl, present in ((old, False), (new, True)):
            if sl is None:
                continue
            svc = (sl.namespace, sl.service_name)
            group = self._service_slices.setdefault(svc, {})
            if present:
                group[key] = sl
            elif new is None or (new.namespace, new.service_name) != svc:
                group.pop(key, None)  # (an update in place keeps the slice's position)
            if group:
                self._slice_index[svc] = tuple(group.values())
            else:
                del self._service_slices[svc]
                self._slice_index.pop(svc, None)

    def _handle_slice(self, event: str, obj: Mapping[str, Any]) -> bool:
        key = _key(obj)
        self._changes.endpoint_events += 1
        old = self._slices.get(key)
        if event == "DELETED":
            self._valid("EndpointSlice", key)
            if old is None:
                return False
            del self._slices[key]
            self._index_slice(key, old, None)
            self._changes.slice_changed(
                (old.namespace, old.service_name), _FAMILY_OF_SLICE.get(old.address_type)
            )
            return True
        sl, probs = parse_endpoint_slice(obj)
        if sl is None:
            self._invalid("EndpointSlice", key, obj, probs)
            return False
        self._valid("EndpointSlice", key)
        if old == sl:
            return False
        self._slices[key] = sl
        self._index_slice(key, old, sl)
        family = _FAMILY_OF_SLICE.get(sl.address_type)
        self._changes.slice_changed((sl.namespace, sl.service_name), family)
        if old is not None and old.service_name != sl.service_name:
            self._changes.slice_changed((old.namespace, old.service_name), family)
        meta = obj.get("metadata")
        annotations = meta.get("annotations") if isinstance(meta, Mapping) else None
        if isinstance(annotations, Mapping):
            t = parse_trigger_time(annotations.get(TRIGGER_TIME_ANNOTATION))
            if t is not None:
                self._changes.add_trigger_time(t, family)
        return True

    def _handle_node(self, event: str, obj: Mapping[str, Any]) -> bool:
        if _key(obj)[1] != self.node_name:
            return False
        if event == "DELETED":
            changed = self._node is not None
            self._node = None
        else:
            node, probs = parse_node(obj)
            if node is None:
                self._invalid("Node", ("", self.node_name), obj, probs)
                return False
            self._valid("Node", ("", self.node_name))
            old = self._node
            self._node = node
            changed = old is None or (
                old.addresses,
                dict(old.labels),
                old.pod_cidrs,
                old.deleting,
            ) != (node.addresses, dict(node.labels), node.pod_cidrs, node.deleting)
        if changed:
            self._changes.node_changed = True
        return changed

    # -- reading ------------------------------------------------------------------------
    def _snapshot(self) -> Snapshot:
        return Snapshot(
            tuple(self._services.values()),
            tuple(self._slices.values()),
            self._node,
            service_index=dict(self._services),
            slice_index=dict(self._slice_index),
        )

    def services(self) -> tuple[Service, ...]:
        """The Services now (the pending changes stay pending)."""
        with self._lock:
            return tuple(self._services.values())

    def take(self) -> tuple[Snapshot, Changes, tuple[Problem, ...]]:
        """The current snapshot and problems, and the changes since the last take()."""
        with self._lock:
            snapshot = self._snapshot()
            changes, self._changes = self._changes, Changes()
            problems = tuple(p for probs in self._problems.values() for p in probs)
        return snapshot, changes, problems

    def requeue(self, changes: Changes) -> None:
        """Put back changes a failed sync took, so they count as pending again."""
        with self._lock:
            self._changes.merge(changes)

    def pending_counts(self) -> tuple[int, int]:
        """(service events, endpoint events) not yet synced."""
        with self._lock:
            return self._changes.service_events, self._changes.endpoint_events

    @property
    def node(self) -> Node | None:
        with self._lock:
            return self._node

    def invalid_counts(self) -> dict[str, int]:
        """Objects currently skipped as invalid, by kind."""
        counts = {"Service": 0, "EndpointSlice": 0, "Node": 0}
        with self._lock:
            for kind, _ in self._problems:
                counts[kind] += 1
        return counts
