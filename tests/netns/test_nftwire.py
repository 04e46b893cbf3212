"""Transactions sent as netlink messages leave the kernel exactly as ``nft -f`` does.

Each test applies the same transaction twice, through nft in one namespace and through
:mod:`proxy.nftables.wire` in another, then compares the kernel's own dumps (rule
expressions and element attributes byte for byte, comments included) and nft's listing.
"""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from proxy.config import ProxyConfig, ProxyMode
from proxy.kernel import nfnetlink as nl
from proxy.kernel.executor import Executor, KernelError
from proxy.model import IPFamily
from proxy.nftables import diff as nft_diff
from proxy.nftables import model as nft_model
from proxy.nftables import names as nft_names
from proxy.nftables import render as nft_render
from proxy.nftables import wire as nftwire
from proxy.nftables.exprs import Unsupported
from proxy.nftables.kernel import NftKernel
from proxy.nftables.model import NftElement, NftOp, NftSet, NftTransaction
from proxy.nftables.statements import (
    DROP,
    AddressInSet,
    AddressMatch,
    AddressNotInPrefixes,
    DnatMap,
    DnatTo,
    EndpointMapTypeof,
    FibLocal,
    L4ProtoMatch,
    NumgenMatch,
    SetMark,
    SetType,
    UpdateSet,
    Verdict,
    goto,
    jump,
    rule,
)
from proxy.plan import plan
from proxy.source.file import build_state
from tests.conftest import netns_pair

pytestmark = pytest.mark.netns

V4_PORT_MAP = SetType(("ipv4_addr", "inet_proto", "inet_service"), ("verdict",))
V6_PORT_MAP = SetType(("ipv6_addr", "inet_proto", "inet_service"), ("verdict",))
NODEPORT_MAP = SetType(("inet_proto", "inet_service"), ("verdict",))


@pytest.fixture
def pair() -> Iterator[tuple[str, str]]:
    with netns_pair("nft", "wire") as names:
        yield names


def nft_run(ns: str, script: str) -> None:
    subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script, text=True, check=True
    )


def listing(ns: str, family: IPFamily) -> str:
    fam = "ip" if family is IPFamily.V4 else "ip6"
    return subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "list", "table", fam, nft_names.TABLE],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def kernel_dump(ns: str, family: IPFamily) -> dict[str, Any]:
    """Rules (expressions and user data as the kernel returns them, in chain order) and
    set elements (unordered) of our table, handles left out."""
    proto = nl.NFPROTO_IPV4 if family is IPFamily.V4 else nl.NFPROTO_IPV6
    table = nl.strz(1, nft_names.TABLE)
    with nl.NfTablesSocket(ns) as sock:
        rules: dict[str, list[tuple[bytes, bytes]]] = {}
        for r in sock.dump(nl.NFT_MSG_GETRULE, proto, table):
            rules.setdefault(nl.text(r[2]), []).append((r[4], r.get(7, b"")))
        elements: dict[str, list[bytes]] = {}
        sets: dict[str, dict[int, bytes]] = {}
        for s in sock.dump(nl.NFT_MSG_GETSET, proto, table):
            name = nl.text(s[2])
            sets[name] = {k: v for k, v in s.items() if k != 16}  # NFTA_SET_HANDLE
            got = sock.dump(nl.NFT_MSG_GETSETELEM, proto, table + nl.strz(2, name))
            elements[name] = sorted(e for o in got for e in _list(o.get(3, b"")))
    return {"rules": rules, "elements": elements, "sets": sets}


def _list(blob: bytes) -> list[bytes]:
    """The entries of a netlink list attribute, each whole."""
    out, offset = [], 0
    while offset + 4 <= len(blob):
        size = int.from_bytes(blob[offset : offset + 2], "little")
        out.append(blob[offset : offset + size])
        offset += (size + 3) & ~3
    return out


def base_script(family: IPFamily) -> str:
    fam, addr = ("ip", "ipv4_addr") if family is IPFamily.V4 else ("ip6", "ipv6_addr")
    t = f"{fam} {nft_names.TABLE}"
    return "\n".join(
        [
            f'add table {t} {{ comment "rules for kube-proxy" ; }}',
            *(f"add chain {t} {c}" for c in ("reject-chain", "svc", "ep", "ext", "old")),
            f"add set {t} aff {{ type {addr} ; flags dynamic,timeout ; timeout 10800s ; }}",
            f"add map {t} service-ips {{ type {addr} . inet_proto . inet_service : verdict ; }}",
            f"add map {t} service-nodeports {{ type {NODEPORT_MAP.text()} ; }}",
            f"add set {t} cluster-ips {{ type {addr} ; }}",
            f"add set {t} hairpin {{ type {addr} . {addr} . inet_proto . inet_service ; }}",
            f"add set {t} gone {{ type {addr} ; }}",
            f"add rule {t} old goto ep",
            *(
                f"add map {t} {m} {{ typeof numgen random mod 1 : {fam} daddr . udp dport ; }}"
                for m in ("old-endpoints", "doomed-endpoints")
            ),
            "",
        ]
    )


def covered_ops(family: IPFamily) -> tuple[NftOp, ...]:
    """Every statement shape the encoder covers."""
    v4 = family is IPFamily.V4
    ep1, ep2 = (
        (("10.244.1.11", 8080), ("10.244.2.7", 53)) if v4 else (("fd00::b", 8080), ("fd00::7", 53))
    )
    cluster_ip = "10.96.0.10" if v4 else "fd00:96::a"
    pod = "10.244.1.11" if v4 else "fd00::b"
    nets = (
        ("10.244.0.0/16", "10.240.0.0/12", "10.0.0.0/8", "10.244.1.5/32", "0.0.0.0/0")
        if v4
        else ("fd00:10::/64", "fd00:10::/60", "fd00::/8", "fd00::1/128", "::/0")
    )
    port_map = V4_PORT_MAP if v4 else V6_PORT_MAP
    addr = "ipv4_addr" if v4 else "ipv6_addr"
    emap_type = SetType(("mark",), (addr, "inet_service"))

    def emap(name: str, proto: str) -> NftOp:
        decl = NftSet(name, emap_type, typeof=EndpointMapTypeof(family, proto))
        return NftOp("add", "map", name, declaration=decl)

    tcp, udp, sctp = L4ProtoMatch("tcp"), L4ProtoMatch("udp"), L4ProtoMatch("sctp")
    mark = SetMark(0x4000)
    map_rules = [
        rule(tcp, DnatMap(2, 0, "endpoints-0a")),
        rule(tcp, DnatMap(1, 4194304, "endpoints-0a")),
        rule(udp, DnatMap(1, 3, "endpoints-udp")),
        rule(sctp, DnatMap(4, 0, "endpoints-sctp")),
    ]
    rules = [
        rule(NumgenMatch(3, 0), tcp, DnatTo(*ep1)),
        rule(NumgenMatch(2, 0), udp, DnatTo(*ep2)),
        rule(sctp, DnatTo(*ep1)),
        rule(AddressInSet(family, "saddr", "aff"), goto("ep")),
        rule(NumgenMatch(2, 0), goto("ep")),
        rule(mark),
        rule(
            AddressMatch(family, "saddr", nets[0]), goto("ep"), comment="short-circuit pod traffic"
        ),
        *(rule(AddressMatch(family, "saddr", n), goto("ep")) for n in nets[1:]),
        rule(AddressMatch(family, "saddr", nets[0], negate=True), goto("ep")),
        rule(AddressMatch(family, "daddr", nets[3]), jump("ep")),
        rule(FibLocal(), mark, comment="masquerade local"),
        rule(FibLocal(), goto("ep"), comment="short-circuit local traffic"),
        rule(DROP),
        rule(goto("ep")),
    ]
    aff2 = NftSet("aff2", SetType((addr,)), flags=("dynamic", "timeout"), timeout=60)
    return (
        NftOp("add", "chain", "fresh"),
        NftOp("flush", "chain", "svc"),
        *(NftOp("add", "rule", "svc", rule=r) for r in rules),
        NftOp("add", "rule", "ep", rule=rule(UpdateSet(family, "aff"))),
        NftOp("add", "set", "aff2", declaration=aff2),
        NftOp("add", "rule", "ep", rule=rule(AddressInSet(family, "saddr", "aff2"), goto("svc"))),
        NftOp("add", "rule", "ep", rule=rule(UpdateSet(family, "aff2"))),
        NftOp("add", "rule", "fresh", rule=rule(Verdict("accept"))),
        NftOp(
            "add",
            "element",
            "service-ips",
            set_type=port_map,
            elements=(
                NftElement((cluster_ip, "tcp", 53), goto("svc"), 'kube-system/dns:"tcp"'),
                NftElement((cluster_ip, "udp", 53), DROP),
                NftElement((cluster_ip, "sctp", 9), goto("reject-chain"), "a, b"),
            ),
        ),
        NftOp(
            "add",
            "element",
            "service-nodeports",
            set_type=NODEPORT_MAP,
            elements=(NftElement(("tcp", 30080), goto("ext"), "ns/x"),),
        ),
        NftOp(
            "add",
            "element",
            "cluster-ips",
            set_type=SetType((addr,)),
            elements=(NftElement((cluster_ip,)),),
        ),
        NftOp(
            "add",
            "element",
            "hairpin",
            set_type=SetType((addr, addr, "inet_proto", "inet_service")),
            elements=(NftElement((pod, pod, "tcp", 8080)),),
        ),
        # endpoint maps: created, filled (comments too), used by DNAT with and without an
        # offset (the rules come last, once every map they use exists), TCP, UDP and SCTP
        emap("endpoints-0a", "tcp"),
        NftOp(
            "add",
            "element",
            "endpoints-0a",
            set_type=emap_type,
            elements=(
                NftElement((0,), (pod, 8080), "ns/web:http"),
                NftElement((1,), (cluster_ip, 80)),
                NftElement((4194304,), (pod, 53), "ns/dns:dns"),
            ),
        ),
        NftOp("flush", "chain", "old"),
        NftOp("delete", "chain", "old"),
        NftOp("delete", "set", "gone"),
        NftOp("delete", "map", "doomed-endpoints"),
        emap("endpoints-udp", "udp"),
        emap("endpoints-sctp", "sctp"),
        *(
            NftOp("add", "element", name, set_type=emap_type, elements=(NftElement(key, data),))
            for name, key, data in (
                ("old-endpoints", (7,), (pod, 80)),
                ("endpoints-udp", (3,), (pod, 53)),
            )
        ),
        *(NftOp("add", "rule", "svc", rule=r) for r in map_rules),
    )


@pytest.mark.parametrize("family", list(IPFamily), ids=str)
def test_every_covered_statement_matches_nft(pair: tuple[str, str], family: IPFamily) -> None:
    by_nft, by_wire = pair
    for ns in pair:
        nft_run(ns, base_script(family))
    tx = NftTransaction(family, covered_ops(family))
    nft_run(by_nft, tx.text())
    with nl.NfTablesSocket(by_wire) as sock:
        sock.transact(nftwire.messages(tx))
    assert kernel_dump(by_wire, family) == kernel_dump(by_nft, family)
    assert listing(by_wire, family) == listing(by_nft, family)
    # and then taking elements out again
    removal = NftTransaction(
        family,
        tuple(
            NftOp("delete", "element", op.name, set_type=op.set_type, elements=op.elements[:1])
            for op in tx.ops
            if op.kind == "element"
        ),
    )
    nft_run(by_nft, removal.text())
    with nl.NfTablesSocket(by_wire) as sock:
        sock.transact(nftwire.messages(removal))
    assert kernel_dump(by_wire, family) == kernel_dump(by_nft, family)


def _ruleset(objs: list[dict[str, Any]]) -> nft_model.NftRuleset:
    state = build_state(objs, "node-a")
    cfg = ProxyConfig(
        "node-a", mode=ProxyMode.NFTABLES, cluster_cidrs=(ipaddress.ip_network("10.244.0.0/16"),)
    )
    return nft_render.render(plan(state.snapshot, cfg))


def _service(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    base = {"clusterIP": "10.96.0.20", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {**base, **spec},
    }


def _slice(name: str, ips: list[str], node: str = "node-a") -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{name}-1",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": name},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [ip], "conditions": {"ready": True}, "nodeName": node} for ip in ips
        ],
    }


STICKY = {"sessionAffinity": "ClientIP"}
LOCAL = {"type": "NodePort", "externalTrafficPolicy": "Local", "externalIPs": ["192.0.2.9"]}
CHANGES = {
    "endpoint added": (
        [_service("web", {}), _slice("web", ["10.244.1.1"])],
        [_service("web", {}), _slice("web", ["10.244.1.1", "10.244.1.2"])],
    ),
    "endpoints gone": (
        [_service("web", {}), _slice("web", ["10.244.1.1"])],
        [_service("web", {})],
    ),
    "service added with node port and local policy": (
        [],
        [_service("edge", LOCAL), _slice("edge", ["10.244.1.3", "10.244.2.4"])],
    ),
    "local endpoint moves away": (
        [_service("edge", LOCAL), _slice("edge", ["10.244.1.3", "10.244.2.4"])],
        [_service("edge", LOCAL), _slice("edge", ["10.244.2.4"], node="node-b")],
    ),
    "service removed": ([_service("web", {}), _slice("web", ["10.244.1.1"])], []),
    "endpoint removed from an endpoint map": (
        [_service("web", {}), _slice("web", ["10.244.1.1", "10.244.1.2", "10.244.1.3"])],
        [_service("web", {}), _slice("web", ["10.244.1.1", "10.244.1.3"])],
    ),
    "the endpoint map's last service removed": (
        [_service("web", {}), _slice("web", ["10.244.1.1", "10.244.1.2"])],
        [],
    ),
    "session affinity endpoint added": (
        [_service("sticky", STICKY), _slice("sticky", ["10.244.1.1"])],
        [_service("sticky", STICKY), _slice("sticky", ["10.244.1.1", "10.244.1.2"])],
    ),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_agent_changes_go_over_netlink_and_match_nft(pair: tuple[str, str], change: str) -> None:
    """Changes an agent writes between full syncs: all covered, all equal to nft's."""
    before, after = (_ruleset(objs) for objs in CHANGES[change])
    by_nft, by_wire = (NftKernel(Executor(ns)) for ns in pair)
    for k in (by_nft, by_wire):
        k.full_sync(before)
    tx = nft_diff.incremental(before, after)
    assert tx, "the change writes something"
    nftwire.messages(tx)  # covered: raises Unsupported otherwise
    by_nft.apply(tx.text())
    by_wire.apply_transaction(tx)
    assert by_wire.text_fallbacks == 0
    assert kernel_dump(pair[1], IPFamily.V4) == kernel_dump(pair[0], IPFamily.V4)
    assert listing(pair[1], IPFamily.V4) == listing(pair[0], IPFamily.V4)


def test_refused_batch_changes_nothing_and_names_the_statement(
    pair: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    ns = pair[1]
    nft_run(ns, base_script(IPFamily.V4))
    before = kernel_dump(ns, IPFamily.V4)
    tx = NftTransaction(
        IPFamily.V4,
        (
            NftOp("flush", "chain", "svc"),
            NftOp("add", "rule", "svc", rule=rule(goto("ep"))),
            NftOp("add", "rule", "no-such-chain", rule=rule(goto("ep"))),
        ),
    )
    kernel = NftKernel(Executor(ns))
    with pytest.raises(KernelError) as err:
        kernel.apply_transaction(tx)
    assert "message 2" in str(err.value)
    assert "add rule ip kube-proxy no-such-chain goto ep" in str(err.value)
    assert "No such file or directory" in str(err.value)
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert [getattr(r, "via", None) for r in refusals] == ["nf_tables"]  # netlink, not nft
    assert kernel_dump(ns, IPFamily.V4) == before
    # the socket is still good for the next transaction
    kernel.apply_transaction(NftTransaction(IPFamily.V4, tx.ops[:2]))
    assert kernel_dump(ns, IPFamily.V4)["rules"]["svc"] != before["rules"].get("svc")


def test_uncovered_statements_go_through_nft(pair: tuple[str, str]) -> None:
    ns = pair[1]
    nft_run(ns, base_script(IPFamily.V4))
    aff = NftSet("new-aff", SetType(("ipv4_addr",)), flags=("dynamic", "timeout"))
    nets = ("192.0.2.0/24", "198.51.100.0/24")
    tx = NftTransaction(
        IPFamily.V4,
        (
            NftOp("add", "set", "new-aff", declaration=aff),
            NftOp(
                "add",
                "rule",
                "svc",
                rule=rule(AddressNotInPrefixes(IPFamily.V4, "saddr", nets), DROP),
            ),
        ),
    )
    with pytest.raises(Unsupported):
        nftwire.messages(tx)
    kernel = NftKernel(Executor(ns))
    kernel.apply_transaction(tx)
    assert kernel.text_fallbacks == 1  # the agent's kubeproxy_py_nft_text_fallbacks_total
    text = listing(ns, IPFamily.V4)
    assert "set new-aff" in text
    assert "ip saddr != { 192.0.2.0/24, 198.51.100.0/24 } drop" in text


def test_existing_reads_chains_hooks_sets_and_maps(pair: tuple[str, str]) -> None:
    ns = pair[0]
    kernel = NftKernel(Executor(ns))
    assert kernel.existing() == nft_model.ExistingNft()
    nft_run(ns, base_script(IPFamily.V4))
    nft_run(
        ns,
        "add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }\n"
        "add chain ip kube-proxy filter-input { type filter hook input priority 0 ; }\n"
        "add table ip other\nadd chain ip other elsewhere\n",
    )
    have = kernel.existing()
    assert have.table_exists
    assert have.chains == {"reject-chain", "svc", "ep", "ext", "old", "nat-output", "filter-input"}
    assert have.base_chains == {
        "nat-output": nft_model.BaseHook("nat", "output", -100),
        "filter-input": nft_model.BaseHook("filter", "input", 0),
    }
    assert have.sets == {"aff": 10800, "cluster-ips": None, "hairpin": None, "gone": None}
    assert have.maps == {"service-ips", "service-nodeports", "old-endpoints", "doomed-endpoints"}
