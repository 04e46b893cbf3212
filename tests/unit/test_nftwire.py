"""The netlink encoder's pure parts: keys, batches, and what it leaves to nft."""

from __future__ import annotations

import struct

import pytest

from proxy.kernel import nfnetlink as nl
from proxy.model import IPFamily
from proxy.nftables import wire as nftwire
from proxy.nftables.model import BaseHook, NftElement, NftOp, NftTransaction


def test_concatenated_keys_pad_every_field_to_four_bytes() -> None:
    key = nftwire.element_key(
        "ipv4_addr . inet_proto . inet_service : verdict", "10.96.0.10 . udp . 53", IPFamily.V4
    )
    assert key == bytes([10, 96, 0, 10, 17, 0, 0, 0, 0, 53, 0, 0])
    assert nftwire.element_key("ipv4_addr", "10.96.0.10", IPFamily.V4) == bytes([10, 96, 0, 10])
    v6 = nftwire.element_key("ipv6_addr . inet_proto . inet_service", "fd00::1 . tcp . 80",
                             IPFamily.V6)  # fmt: skip
    assert len(v6) == 16 + 4 + 4 and v6[16] == 6 and v6[20:22] == b"\x00\x50"


@pytest.mark.parametrize(
    ("set_type", "key", "family"),
    [
        ("ipv4_addr . inet_proto", "10.0.0.1", IPFamily.V4),  # too few fields
        ("ipv4_addr", "fd00::1", IPFamily.V4),  # wrong family
        ("inet_proto . inet_service", "icmp . 80", IPFamily.V4),  # unknown protocol
        ("inet_proto . inet_service", "tcp . 70000", IPFamily.V4),  # port out of range
        ("ether_addr", "aa:bb:cc:dd:ee:ff", IPFamily.V4),  # type not covered
    ],
)
def test_keys_that_do_not_fit_are_left_to_nft(set_type: str, key: str, family: IPFamily) -> None:
    with pytest.raises(nftwire.Unsupported):
        nftwire.element_key(set_type, key, family)


@pytest.mark.parametrize(
    "rule",
    [
        "ct state new jump firewall-check",
        "ip daddr . meta l4proto . th dport vmap @service-ips",
        "ip saddr != { 192.0.2.0/24, 198.51.100.0/24 } drop",
        "masquerade fully-random",
        "reject",
        "ip6 saddr @aff goto ep",  # another family's statement
        "goto a goto b",
        'goto ep comment "' + "x" * 200 + '"',
        "meta l4proto tcp dnat to numgen random mod 0 map @endpoints-tcp-00",
        "meta l4proto tcp dnat to numgen random mod 2 offset 4294967296 map @endpoints-tcp-00",
        "meta l4proto tcp dnat to numgen random mod 2 map endpoints-tcp-00",
        "meta l4proto tcp dnat to numgen inc mod 2 map @endpoints-tcp-00",
    ],
)
def test_uncovered_rules_are_left_to_nft(rule: str) -> None:
    tx = NftTransaction(IPFamily.V4, (NftOp("add", "rule", "svc", rule=rule),))
    with pytest.raises(nftwire.Unsupported):
        nftwire.messages(tx)


def test_base_chains_and_sets_other_than_affinity_sets_and_endpoint_maps_are_left_to_nft() -> None:
    for op in (
        NftOp("add", "chain", "nat-output", hook=BaseHook("nat", "output", -100)),
        NftOp("add", "set", "aff", spec="type ipv4_addr ; flags dynamic,timeout ;"),
        NftOp("add", "map", "m", spec="type inet_proto . inet_service : verdict ;"),
        # an endpoint map of the other family, or keyed by another expression
        NftOp("add", "map", "e", spec="typeof numgen random mod 1 : ip6 daddr . tcp dport ;"),
        NftOp("add", "map", "e", spec="typeof numgen random mod 1 : ip daddr . th dport ;"),
    ):
        with pytest.raises(nftwire.Unsupported):
            nftwire.messages(NftTransaction(IPFamily.V4, (op,)))


def test_a_comment_is_one_user_data_entry_with_its_length() -> None:
    payload = nftwire.rule_payload("svc", 'goto ep comment "pods"', IPFamily.V4)
    assert payload.endswith(nl.attr(7, b"\x00\x05pods\x00"))


def test_a_batch_is_framed_begin_messages_end_with_consecutive_sequence_numbers() -> None:
    tx = NftTransaction(
        IPFamily.V4,
        (
            NftOp("flush", "chain", "svc"),
            NftOp("add", "rule", "svc", rule="meta l4proto tcp dnat to 10.244.1.1:8080"),
            NftOp(
                "delete",
                "element",
                "cluster-ips",
                set_type="ipv4_addr",
                elements=(NftElement("10.96.0.1"),),
            ),
        ),
    )
    data = nl.batch_bytes(nftwire.messages(tx), first_seq=41)
    seen = []
    offset = 0
    while offset < len(data):
        size, mtype, flags, seq, _ = struct.unpack_from("=IHHII", data, offset)
        seen.append((mtype, seq, bool(flags & nl.NLM_F_CREATE)))
        offset += (size + 3) & ~3
    sub = nl.NFNL_SUBSYS_NFTABLES << 8
    assert seen == [
        (nl.NFNL_MSG_BATCH_BEGIN, 41, False),
        (sub | nl.NFT_MSG_DELRULE, 42, False),
        (sub | nl.NFT_MSG_NEWRULE, 43, True),
        (sub | nl.NFT_MSG_DELSETELEM, 44, False),
        (nl.NFNL_MSG_BATCH_END, 45, False),
    ]


def test_transaction_text_is_the_nft_script() -> None:
    tx = NftTransaction(
        IPFamily.V6,
        (
            NftOp("add", "chain", "svc"),
            NftOp("add", "rule", "svc", rule="goto ep"),
            NftOp(
                "add",
                "element",
                "service-ips",
                set_type="ipv6_addr . inet_proto . inet_service : verdict",
                elements=(NftElement("fd00::1 . tcp . 80", "goto svc", "ns/web:http"),),
            ),
            NftOp("delete", "element", "cluster-ips", elements=(NftElement("fd00::1"),)),
        ),
    )
    assert tx.text() == (
        "add chain ip6 kube-proxy svc\n"
        "add rule ip6 kube-proxy svc goto ep\n"
        'add element ip6 kube-proxy service-ips { fd00::1 . tcp . 80 comment "ns/web:http"'
        " : goto svc }\n"
        "delete element ip6 kube-proxy cluster-ips { fd00::1 }\n"
    )
    assert not NftTransaction(IPFamily.V4)
