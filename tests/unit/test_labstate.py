"""The lab's state file: a lab started by an older version must stay `lab down`-able, so
its JSON keys are pinned and an older file loads."""

from __future__ import annotations

import json
from pathlib import Path

from proxy.lab.state import (
    STATE_FILE,
    LabState,
    NodeRecord,
    ProcRecord,
    foreign_entries,
    load_state,
    save_state,
)

KEYS = {
    "lab_id", "state_dir", "mode", "node_count", "compare", "addons", "ip_family", "phase", "error",
    "created", "ready_at", "supervisor", "nodes", "namespaces", "control_plane", "client",
    "processes", "restarts", "env_overrides", "config_overrides", "notes", "created_paths",
    "registry", "node_bins", "version",
}  # fmt: skip


def test_the_state_file_keeps_its_keys_and_round_trips(tmp_path: Path) -> None:
    state = LabState("kpp-lab-abc123", str(tmp_path), "iptables", 1, False)
    state.supervisor = ProcRecord("supervisor", 4242, 99, ["proxy.lab.lab supervise"])
    state.nodes = [
        NodeRecord(
            "node-1", "192.168.50.11", "10.244.1.0/24", "zone-a", "x-node-1", "kube-proxy-py"
        )
    ]
    state.processes = {"etcd": ProcRecord("etcd", 4243, 100, ["/bin/etcd"])}
    save_state(state)
    data = json.loads((tmp_path / STATE_FILE).read_text())
    assert set(data) == KEYS
    assert set(data["supervisor"]) == {"label", "pid", "starttime", "markers"}
    assert set(data["nodes"][0]) == {
        "name", "lan_ip", "pod_cidr", "zone", "namespace", "proxy",
        "lan_ip_secondary", "pod_cidr_secondary",
    }  # fmt: skip
    assert load_state(tmp_path) == state


def test_a_dual_stack_lab_records_both_families_of_its_nodes(tmp_path: Path) -> None:
    state = LabState("kpp-lab-abc123", str(tmp_path), "nftables", 1, False, ip_family="dual")
    state.nodes = [
        NodeRecord(
            "node-1", "192.168.50.11", "10.244.1.0/24", "zone-a", "x-node-1", "kube-proxy-py",
            "fd00:192:168:50::11", "fd00:10:244:1::/64",
        )
    ]  # fmt: skip
    save_state(state)
    loaded = load_state(tmp_path)
    assert loaded is not None and loaded.ip_family == "dual"
    assert loaded.nodes[0].lan_ips == ("192.168.50.11", "fd00:192:168:50::11")
    assert loaded.nodes[0].pod_cidrs == ("10.244.1.0/24", "fd00:10:244:1::/64")


def test_an_older_state_file_without_newer_fields_loads(tmp_path: Path) -> None:
    old = {
        "lab_id": "kpp-lab-old",
        "state_dir": str(tmp_path),
        "mode": "nftables",
        "node_count": 2,
        "compare": False,
        "supervisor": {"label": "supervisor", "pid": 1, "starttime": 0, "markers": ["m"]},
        "processes": {},
        "nodes": [],
        "removed_in_a_later_version": 1,
    }
    (tmp_path / STATE_FILE).write_text(json.dumps(old))
    state = load_state(tmp_path)
    assert state is not None and state.lab_id == "kpp-lab-old" and state.addons
    assert state.ip_family == "ipv4"  # labs before --ip-family were IPv4
    assert state.supervisor == ProcRecord("supervisor", 1, 0, ["m"])
    assert not state.supervisor_alive()  # no start time recorded: never ours


def test_foreign_entries_ignores_the_labs_own_logs(tmp_path: Path) -> None:
    (tmp_path / "progress.log").write_text("")
    (tmp_path / "supervisor.log").write_text("")
    assert foreign_entries(tmp_path) == ""
    (tmp_path / "notes.txt").write_text("")
    assert foreign_entries(tmp_path) == "notes.txt"
