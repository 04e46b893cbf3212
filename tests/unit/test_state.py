from __future__ import annotations

import copy
import logging

import pytest

from proxy import manifests as m
from proxy.agent.state import TRIGGER_TIME_ANNOTATION, ClusterState, parse_trigger_time
from proxy.model import IPFamily


def svc(port: int = 80, rv: str = "1") -> dict:  # type: ignore[type-arg]
    obj = m.service("web", "10.96.0.10", [m.Port(port)])
    obj["metadata"]["resourceVersion"] = rv
    return obj


def test_events_build_a_snapshot_and_track_changes() -> None:
    calls: list[int] = []
    st = ClusterState("node-a", on_change=lambda: calls.append(1))
    st.handle("Service", "ADDED", svc())
    sl = m.endpoint_slice("web", [m.EP("10.244.1.5", "node-a")], [("", 80, "TCP")])
    sl["metadata"]["annotations"] = {TRIGGER_TIME_ANNOTATION: "2026-11-23T03:00:00Z"}
    st.handle("EndpointSlice", "ADDED", sl)
    snap, changes, problems = st.take()
    assert len(snap.services) == 1 and len(snap.slices) == 1 and problems == ()
    assert changes.services == {("default", "web")}
    assert changes.service_events == 1 and changes.endpoint_events == 1
    assert changes.trigger_times == [parse_trigger_time("2026-11-23T03:00:00Z")]
    assert changes.first_queued is not None and len(calls) == 2
    # take() resets the changes; an identical update is not a change
    st.handle("Service", "MODIFIED", svc(rv="2"))
    assert st.take()[1].services == set()
    st.handle("EndpointSlice", "DELETED", sl)
    snap, changes, _ = st.take()
    assert snap.slices == () and changes.services == {("default", "web")}


def test_invalid_new_object_is_skipped_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    st = ClusterState("node-a")
    bad = svc(port=70000)
    with caplog.at_level(logging.WARNING):
        st.handle("Service", "ADDED", bad)
        st.handle("Service", "ADDED", bad)  # same version again (a relist): logged once
    snap, changes, problems = st.take()
    assert snap.services == () and changes.services == set()
    assert [str(p) for p in problems] == [
        "default/web: spec.ports[0].port: 70000 is out of range 1-65535",
        "default/web: spec.ports[0].targetPort: 70000 is out of range 1-65535",
    ]
    records = [r for r in caplog.records if r.getMessage() == "invalid object skipped"]
    assert len(records) == 2 and records[0].object == "default/web"  # type: ignore[attr-defined]
    assert st.invalid_counts() == {"Service": 1, "EndpointSlice": 0, "Node": 0}


def test_invalid_update_keeps_the_last_valid_version() -> None:
    st = ClusterState("node-a")
    st.handle("Service", "ADDED", svc(80, rv="1"))
    st.take()
    st.handle("Service", "MODIFIED", svc(70000, rv="2"))
    snap, changes, problems = st.take()
    assert [s.ports[0].port for s in snap.services] == [80]
    assert problems and changes.services == set()
    st.handle("Service", "MODIFIED", svc(81, rv="3"))  # fixed: problems cleared
    snap, changes, problems = st.take()
    assert [s.ports[0].port for s in snap.services] == [81] and problems == ()
    st.handle("Service", "DELETED", svc(81, rv="4"))
    assert st.take()[0].services == ()


def test_node_changes_are_flagged_only_for_our_node() -> None:
    st = ClusterState("node-a")
    st.handle("Node", "ADDED", m.node("node-b", "192.168.50.12"))
    assert not st.take()[1].node_changed
    node = m.node("node-a", "192.168.50.11", zone="z1")
    st.handle("Node", "ADDED", node)
    snap, changes, _ = st.take()
    assert changes.node_changed and snap.node is not None and snap.node.zone == "z1"
    st.handle("Node", "MODIFIED", copy.deepcopy(node))
    assert not st.take()[1].node_changed
    node["metadata"]["labels"]["topology.kubernetes.io/zone"] = "z2"
    st.handle("Node", "MODIFIED", node)
    assert st.take()[1].node_changed


def test_requeue_restores_pending_changes() -> None:
    st = ClusterState("node-a")
    st.handle("Service", "ADDED", svc())
    _, changes, _ = st.take()
    st.requeue(changes)
    assert st.pending_counts() == (1, 0)
    assert st.take()[1].services == {("default", "web")}


def test_sync_flags() -> None:
    st = ClusterState("node-a")
    assert not st.has_synced("Service", "EndpointSlice")
    st.mark_synced("Service")
    st.mark_synced("EndpointSlice")
    assert st.has_synced("Service", "EndpointSlice")


def test_trigger_time_parsing() -> None:
    assert parse_trigger_time("2026-11-23T03:00:00Z") == parse_trigger_time(
        "2026-11-23T03:00:00+00:00"
    )
    assert parse_trigger_time("yesterday") is None and parse_trigger_time(None) is None


def test_slice_index_follows_adds_moves_and_deletes() -> None:
    """The snapshot's slices-by-Service index always equals grouping its slices."""

    def grouped(snap: object) -> dict[tuple[str, str], tuple[object, ...]]:
        out: dict[tuple[str, str], list[object]] = {}
        for sl in snap.slices:  # type: ignore[attr-defined]
            out.setdefault((sl.namespace, sl.service_name), []).append(sl)
        return {k: tuple(v) for k, v in out.items()}

    st = ClusterState("node-a")
    a1 = m.endpoint_slice("a", [m.EP("10.244.1.5", "node-a")], [("", 80, "TCP")], name="a-1")
    a2 = m.endpoint_slice("a", [m.EP("10.244.1.6", "node-a")], [("", 80, "TCP")], name="a-2")
    for sl in (a1, a2):
        st.handle("EndpointSlice", "ADDED", sl)
    snap = st.take()[0]
    assert snap.slice_index == grouped(snap) and len(snap.slice_index[("default", "a")]) == 2
    # an update in place keeps the order; a slice moving to another Service moves
    changed = copy.deepcopy(a1)
    changed["endpoints"][0]["addresses"] = ["10.244.1.7"]
    st.handle("EndpointSlice", "MODIFIED", changed)
    snap = st.take()[0]
    assert snap.slice_index == grouped(snap)
    assert [sl.name for sl in snap.slice_index[("default", "a")]] == ["a-1", "a-2"]
    moved = copy.deepcopy(a2)
    moved["metadata"]["labels"]["kubernetes.io/service-name"] = "b"
    st.handle("EndpointSlice", "MODIFIED", moved)
    snap, changes, _ = st.take()
    assert snap.slice_index == grouped(snap) and changes.services == {
        ("default", "a"),
        ("default", "b"),
    }
    st.handle("EndpointSlice", "DELETED", a1)
    st.handle("EndpointSlice", "DELETED", moved)
    snap = st.take()[0]
    assert snap.slice_index == {} and snap.service_index == {}


def test_changes_are_split_by_ip_family_as_upstream_splits_slices_by_address_type() -> None:
    st = ClusterState("node-a")
    st.handle("Service", "ADDED", m.service("db", "10.96.0.11", [m.Port(80)]))
    v4 = m.endpoint_slice("web", [m.EP("10.244.1.5", "node-a")], [("", 80, "TCP")])
    v6 = m.endpoint_slice("web", [m.EP("fd00:10:244:1::5", "node-a")], [("", 80, "TCP")])
    v6["metadata"]["name"] = "web-v6"
    v6["addressType"] = "IPv6"
    v6["metadata"]["annotations"] = {TRIGGER_TIME_ANNOTATION: "2026-11-23T03:00:00Z"}
    st.handle("EndpointSlice", "ADDED", v4)
    st.handle("EndpointSlice", "ADDED", v6)
    _, changes, _ = st.take()
    assert changes.services == {("default", "db"), ("default", "web")}
    ipv4, ipv6 = changes.for_family(IPFamily.V4), changes.for_family(IPFamily.V6)
    # the Service change concerns both families, each slice only its own
    assert ipv4.services == ipv6.services == {("default", "db"), ("default", "web")}
    assert ipv4.trigger_times == [] and ipv6.trigger_times == changes.trigger_times
    st.handle("EndpointSlice", "DELETED", v6)
    _, changes, _ = st.take()
    assert changes.for_family(IPFamily.V4).services == set()
    assert changes.for_family(IPFamily.V6).services == {("default", "web")}
    # a failed sync's changes go back whole, family by family
    st.requeue(changes)
    st.handle("Service", "ADDED", m.service("api", "10.96.0.12", [m.Port(80)]))
    _, again, _ = st.take()
    assert again.for_family(IPFamily.V4).services == {("default", "api")}
    assert again.for_family(IPFamily.V6).services == {("default", "api"), ("default", "web")}
    assert again.endpoint_events == changes.endpoint_events
