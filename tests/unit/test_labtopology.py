"""The lab's addresses in each IP family (pure): every IPv4 address has its IPv6 twin."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from proxy.cli import LAB_IP_FAMILIES, build_parser
from proxy.lab import topology
from proxy.lab.cluster import (
    CONTROL_PLANE,
    cluster_cidrs,
    controller_manager_network_args,
    lab_spec,
)
from proxy.lab.errors import LabError
from proxy.lab.supervisor import supervisor_argv


def test_an_ipv4_lab_is_todays_lab() -> None:
    spec, zones = topology.lab_topology(2, False)
    assert spec.versions == (4,)
    assert [(n.name, n.lan_ips, n.pod_cidrs) for n in spec.nodes] == [
        ("node-1", ("192.168.50.11",), ("10.244.1.0/24",)),
        ("node-2", ("192.168.50.12",), ("10.244.2.0/24",)),
    ]
    assert zones == {"node-1": "zone-a", "node-2": "zone-b"}
    assert lab_spec(spec).client(CONTROL_PLANE).lan_ips == ("192.168.50.2",)


def test_a_dual_stack_lab_gives_every_host_both_families_ipv4_first() -> None:
    spec, _ = topology.lab_topology(1, True, "dual")
    assert spec.versions == (4, 6)
    node = spec.node("node-1")
    assert node.lan_ips == ("192.168.50.11", "fd00:192:168:50::11")
    assert node.pod_cidrs == ("10.244.1.0/24", "fd00:10:244:1::/64")
    upstream = spec.node(topology.UPSTREAM_NODE)
    assert upstream.pod_cidrs == ("10.244.30.0/24", "fd00:10:244:30::/64")
    clients = {c.name: c.lan_ips for c in lab_spec(spec).clients}
    assert clients == {
        "client": ("192.168.50.100", "fd00:192:168:50::100"),
        "registry": ("192.168.50.3", "fd00:192:168:50::3"),
        "resolver": ("192.168.50.4", "fd00:192:168:50::4"),
        CONTROL_PLANE: ("192.168.50.2", "fd00:192:168:50::2"),
    }
    assert spec.lan_cidrs == ("192.168.50.0/24", "fd00:192:168:50::/64")


def test_an_ipv6_lab_has_no_ipv4_address() -> None:
    spec, _ = topology.lab_topology(2, False, "ipv6")
    full = lab_spec(spec)
    assert full.versions == (6,)
    every = [a for n in full.nodes for a in (*n.lan_ips, *n.pod_cidrs)]
    every += [a for c in full.clients for a in c.lan_ips]
    assert every and all(":" in a for a in every)
    assert full.client(CONTROL_PLANE).lan_ip == "fd00:192:168:50::2"


def test_an_unknown_family_is_refused_naming_the_choices() -> None:
    with pytest.raises(LabError, match="--ip-family ipv5: choose one of ipv4, ipv6, dual"):
        topology.lab_topology(1, False, "ipv5")


def test_service_and_cluster_cidrs_and_well_known_cluster_ips_per_family() -> None:
    assert topology.service_cidrs((4, 6)) == ("10.96.0.0/16", "fd00:10:96::/112")
    assert topology.service_ips("10.96.0.10", (4, 6)) == ("10.96.0.10", "fd00:10:96::10")
    assert topology.service_ip("10.96.0.1", 6) == "fd00:10:96::1"  # the kubernetes Service
    with pytest.raises(ValueError, match="outside fd00:10:96::/112"):
        topology.service_ip("10.96.1.10", 6)
    assert cluster_cidrs((6,)) == ("fd00:10:244::/48",)
    assert controller_manager_network_args((4, 6)) == [
        "--cluster-cidr=10.244.0.0/16,fd00:10:244::/48",
        "--node-cidr-mask-size-ipv4=24",
        "--node-cidr-mask-size-ipv6=64",
    ]


def test_addresses_in_urls_and_host_port_pairs() -> None:
    assert topology.host_port("fd00:192:168:50::3", 5000) == "[fd00:192:168:50::3]:5000"
    assert topology.host_port("192.168.50.3", 5000) == "192.168.50.3:5000"
    assert topology.url_host("fd00:192:168:50::2") == "[fd00:192:168:50::2]"


def test_lab_up_takes_ip_family_and_hands_it_to_the_supervisor() -> None:
    assert set(LAB_IP_FAMILIES) == set(topology.IP_FAMILIES)
    args = build_parser().parse_args(["lab", "up", "--ip-family", "dual"])
    assert args.ip_family == "dual"
    assert build_parser().parse_args(["lab", "up"]).ip_family is None  # default: ipv4
    argv = supervisor_argv(Path("/s"), "kpp-lab-x", 1, "nftables", False, True, "ipv6")
    assert argv[argv.index("--ip-family") + 1] == "ipv6"


def test_a_running_lab_of_other_families_is_refused_by_lab_demo(tmp_path: Path) -> None:
    from proxy.host.process import proc_cmdline
    from proxy.lab.commands.up import running_or_started
    from proxy.lab.state import LabState, ProcRecord, save_state

    state = LabState("kpp-lab-abc123", str(tmp_path), "nftables", 1, False, ip_family="dual")
    state.phase = "ready"
    # This process stands in for the lab's supervisor (alive, start time and marker match).
    state.supervisor = ProcRecord.of("supervisor", os.getpid(), [proc_cmdline(os.getpid())])
    save_state(state)
    for wanted in (None, "dual"):
        found = running_or_started(tmp_path, ip_family=wanted)
        assert found is not None and found.lab_id == "kpp-lab-abc123"
    with pytest.raises(
        LabError, match="is --ip-family dual, not ipv6: run `kube-proxy-py lab down"
    ):
        running_or_started(tmp_path, ip_family="ipv6")


def test_a_dual_stack_api_servers_certificate_names_both_families(tmp_path: Path) -> None:
    import ipaddress

    from cryptography import x509

    from proxy.lab.controlplane.certs import write_pki

    nets = [ipaddress.ip_network(c) for c in topology.service_cidrs((4, 6))]
    lan = topology.addresses("192.168.50.2", (4, 6))
    write_pki(tmp_path, nets, list(lan))
    cert = x509.load_pem_x509_certificate((tmp_path / "apiserver.crt").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    # the `kubernetes` Service's ClusterIP of each family, and the LAN address of each
    assert {"10.96.0.1", "fd00:10:96::1", "192.168.50.2", "fd00:192:168:50::2"} <= ips
