"""The topology spec's IP families: IPv4, IPv6-only and dual-stack, primary first."""

from __future__ import annotations

import dataclasses

import pytest

from proxy.host.spec import ClientSpec, NodeSpec, PodSpec, default_spec, v6_twin, with_versions


@pytest.mark.parametrize(
    ("value", "twin"),
    [
        ("10.244.1.11", "fd00:10:244:1::11"),
        ("10.96.0.10", "fd00:10:96::10"),
        ("10.244.1.0/24", "fd00:10:244:1::/64"),
        ("10.244.0.0/16", "fd00:10:244::/48"),
        ("192.168.50.0/24", "fd00:192:168:50::/64"),
    ],
)
def test_v6_twin(value: str, twin: str) -> None:
    assert v6_twin(value) == twin


def test_v6_twin_refuses_what_has_none() -> None:
    for bad in ("10.0.0.0/20", "fd00::1", "10.0.0"):
        with pytest.raises(ValueError):
            v6_twin(bad)


@pytest.mark.parametrize("versions", [(4,), (6,), (4, 6), (6, 4)])
def test_default_spec_in_every_family(versions: tuple[int, ...]) -> None:
    spec = default_spec(versions)
    assert spec.versions == versions
    for node in spec.nodes:
        assert [ip.count(":") > 0 for ip in node.lan_ips] == [v == 6 for v in versions]
        assert len(node.pod_cidrs) == len(versions)
    assert all(len(p.ips) == len(versions) for p in spec.pods)


def test_addresses_must_be_canonical_and_of_the_other_family() -> None:
    with pytest.raises(ValueError, match="canonical"):
        PodSpec("p", "node-a", "fd00:10:244:1:0::11")
    with pytest.raises(ValueError, match="other IP family"):
        PodSpec("p", "node-a", "10.244.1.11", ip_secondary="10.244.1.12")
    with pytest.raises(ValueError, match="same IP families"):
        NodeSpec("n", "192.168.50.11", "fd00:10:244:1::/64")


def test_every_object_has_each_family_of_the_topology() -> None:
    spec = default_spec((4, 6))
    v4_only = dataclasses.replace(spec.pods[0], ip_secondary=None)
    with pytest.raises(ValueError, match="IPv4/IPv6"):
        dataclasses.replace(spec, pods=(v4_only, *spec.pods[1:]))
    client = ClientSpec("c", "fd00:192:168:50::7")
    with pytest.raises(ValueError, match="client c"):
        dataclasses.replace(spec, clients=(client,))


def test_ipv6_pod_outside_its_node_cidr_is_refused() -> None:
    spec = default_spec((6,))
    stray = PodSpec("stray", "node-a", "fd00:10:244:2::99")
    with pytest.raises(ValueError, match="outside node-a's pod CIDR"):
        spec.with_pod(stray)


def test_with_versions_needs_an_ipv4_spec() -> None:
    with pytest.raises(ValueError, match="IPv4 topology"):
        with_versions(default_spec((6,)), (4, 6))
