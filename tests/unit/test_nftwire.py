"""The netlink encoder's pure parts: keys, statements, batches, and what it leaves to nft."""

from __future__ import annotations

import struct

import pytest

from proxy.kernel import nfnetlink as nl
from proxy.model import IPFamily
from proxy.nftables import wire as nftwire
from proxy.nftables.exprs import Unsupported
from proxy.nftables.model import (
    BaseHook,
    Element,
    EndpointElement,
    NftElement,
    NftOp,
    NftSet,
    NftTransaction,
)
from proxy.nftables.statements import (
    DROP,
    AddressInSet,
    AddressMatch,
    AddressNotInPrefixes,
    ConcatLookup,
    CtMatch,
    DnatMap,
    DnatTo,
    ElementKey,
    EndpointMapTypeof,
    FibLocal,
    L4ProtoMatch,
    Masquerade,
    NumgenMatch,
    Reject,
    Rule,
    SetMark,
    SetType,
    Statement,
    UpdateSet,
    Verdict,
    goto,
    jump,
    rule,
)

V4, V6 = IPFamily.V4, IPFamily.V6
SERVICE_KEY = SetType(("ipv4_addr", "inet_proto", "inet_service"), ("verdict",))


def test_concatenated_keys_pad_every_field_to_four_bytes() -> None:
    key = SERVICE_KEY.encode_key(("10.96.0.10", "udp", 53), V4)
    assert key == bytes([10, 96, 0, 10, 17, 0, 0, 0, 0, 53, 0, 0])
    assert SetType(("ipv4_addr",)).encode_key(("10.96.0.10",), V4) == bytes([10, 96, 0, 10])
    v6_type = SetType(("ipv6_addr", "inet_proto", "inet_service"))
    v6 = v6_type.encode_key(("fd00::1", "tcp", 80), V6)
    assert len(v6) == 16 + 4 + 4 and v6[16] == 6 and v6[20:22] == b"\x00\x50"
    assert SetType(("mark",)).encode_key((5,), V4) == struct.pack("=I", 5)


@pytest.mark.parametrize(
    ("set_type", "key", "family"),
    [
        (SetType(("ipv4_addr", "inet_proto")), ("10.0.0.1",), V4),  # too few fields
        (SetType(("ipv4_addr",)), ("fd00::1",), V4),  # wrong family
        (SetType(("ipv6_addr",)), ("fd00::1",), V4),  # another family's type
        (SetType(("inet_proto", "inet_service")), ("icmp", 80), V4),  # unknown protocol
        (SetType(("inet_proto", "inet_service")), ("tcp", 70000), V4),  # port out of range
        (SetType(("inet_proto", "inet_service")), ("tcp", "80"), V4),  # a port as text
        (SetType(("mark",)), (1 << 32,), V4),  # integer out of range
        (SetType(("ether_addr",)), ("aa:bb:cc:dd:ee:ff",), V4),  # type not covered
    ],
)
def test_keys_that_do_not_fit_are_left_to_nft(
    set_type: SetType, key: ElementKey, family: IPFamily
) -> None:
    with pytest.raises(Unsupported):
        set_type.encode_key(key, family)


@pytest.mark.parametrize(
    ("statements", "text"),
    [
        ((NumgenMatch(3, 0), goto("ep")), "numgen random mod 3 == 0 goto ep"),
        ((L4ProtoMatch("tcp"), DnatTo("10.0.0.1", 80)), "meta l4proto tcp dnat to 10.0.0.1:80"),
        ((L4ProtoMatch("udp"), DnatTo("fd00::1", 53)), "meta l4proto udp dnat to [fd00::1]:53"),
        ((FibLocal(), SetMark(0x4000)), "fib saddr type local meta mark set meta mark | 0x00004000"),
        ((AddressMatch(V4, "saddr", "10.0.0.0/8"), jump("x")), "ip saddr 10.0.0.0/8 jump x"),
        ((AddressMatch(V6, "daddr", "::1", negate=True), DROP), "ip6 daddr != ::1 drop"),
        ((AddressInSet(V4, "saddr", "aff"), Verdict("accept")), "ip saddr @aff accept"),
        ((UpdateSet(V6, "aff"),), "update @aff { ip6 saddr }"),
        ((L4ProtoMatch("tcp"), DnatMap(3, 0, "m")), "meta l4proto tcp dnat to numgen random mod 3 map @m"),
        ((DnatMap(2, 512, "m"),), "dnat to numgen random mod 2 offset 512 map @m"),
        ((CtMatch("state", "new"), jump("firewall-check")), "ct state new jump firewall-check"),
        ((ConcatLookup(("ip daddr", "meta l4proto", "th dport"), "service-ips", vmap=True),),
         "ip daddr . meta l4proto . th dport vmap @service-ips"),
        ((AddressNotInPrefixes(V4, "saddr", ("192.0.2.0/24", "198.51.100.0/24")), DROP),
         "ip saddr != { 192.0.2.0/24, 198.51.100.0/24 } drop"),
        ((SetMark(0x4000, toggle=True), Masquerade()),
         "meta mark set meta mark ^ 0x00004000 masquerade fully-random"),
    ],
)  # fmt: skip
def test_statements_print_as_nft_text(statements: tuple[Statement, ...], text: str) -> None:
    assert rule(*statements).text() == text
    assert rule(*statements, comment='say "hi"').text() == f"{text} comment \"say 'hi'\""


@pytest.mark.parametrize(
    "r",
    [
        rule(CtMatch("state", "new"), jump("firewall-check")),
        rule(ConcatLookup(("ip daddr", "meta l4proto", "th dport"), "service-ips", vmap=True)),
        rule(AddressNotInPrefixes(V4, "saddr", ("192.0.2.0/24", "198.51.100.0/24")), DROP),
        rule(Masquerade()),
        rule(Reject()),
        rule(FibLocal("daddr"), goto("x")),
        rule(AddressInSet(V6, "saddr", "aff"), goto("ep")),  # another family's statement
        rule(AddressMatch(V4, "saddr", "fd00::/64"), goto("ep")),  # another family's prefix
        rule(AddressMatch(V4, "saddr", "10.0.0.1/8"), goto("ep")),  # host bits set
        rule(UpdateSet(V6, "aff")),
        rule(goto("a"), goto("b")),
        rule(Verdict("goto")),  # a goto without its chain
        rule(L4ProtoMatch("icmp"), DnatTo("10.0.0.1", 80)),
        rule(L4ProtoMatch("tcp"), DnatTo("fd00::1", 80)),
        rule(L4ProtoMatch("tcp"), DnatMap(0, 0, "endpoints-tcp-00")),
        rule(L4ProtoMatch("tcp"), DnatMap(2, 1 << 32, "endpoints-tcp-00")),
        rule(NumgenMatch(0, 0), goto("ep")),
        rule(SetMark(0x4000, toggle=True)),
    ],
)
def test_uncovered_rules_are_left_to_nft(r: Rule) -> None:
    tx = NftTransaction(V4, (NftOp("add", "rule", "svc", rule=r),))
    with pytest.raises(Unsupported):
        nftwire.messages(tx)


def test_base_chains_and_sets_other_than_affinity_sets_and_endpoint_maps_are_left_to_nft() -> None:
    addr = SetType(("ipv4_addr",))
    emap = SetType(("mark",), ("ipv4_addr", "inet_service"))
    for op in (
        NftOp("add", "chain", "nat-output", hook=BaseHook("nat", "output", -100)),
        NftOp("add", "set", "aff", declaration=NftSet("aff", addr, flags=("dynamic", "timeout"))),
        NftOp("add", "set", "ips", declaration=NftSet("ips", addr, comment="IPs")),
        NftOp("add", "map", "m", declaration=NftSet("m", SERVICE_KEY)),
        # an endpoint map of the other family, or of a protocol not covered
        NftOp("add", "map", "e", declaration=NftSet("e", emap, typeof=EndpointMapTypeof(V6, "tcp"))),
        NftOp("add", "map", "e", declaration=NftSet("e", emap, typeof=EndpointMapTypeof(V4, "th"))),
        NftOp("add", "map", "e"),  # no declaration
    ):  # fmt: skip
        with pytest.raises(Unsupported):
            nftwire.messages(NftTransaction(V4, (op,)))


def test_elements_that_do_not_fit_their_map_are_left_to_nft() -> None:
    for elements in (
        (NftElement(("10.96.0.1", "tcp", 80)),),  # a map element without data
        (NftElement(("10.96.0.1", "tcp", 80), ("10.0.0.1", 80)),),  # fields, not a verdict
    ):
        op = NftOp("add", "element", "m", set_type=SERVICE_KEY, elements=elements)
        with pytest.raises(Unsupported):
            nftwire.messages(NftTransaction(V4, (op,)))


def test_a_comment_is_one_user_data_entry_with_its_length() -> None:
    payload = rule(goto("ep"), comment="pods").encode("kube-proxy", "svc", V4)
    assert payload.endswith(nl.attr(7, b"\x00\x05pods\x00"))
    # a comment longer than nft allows is cut as in the text
    long = rule(goto("ep"), comment="x" * 200)
    assert long.text() == 'goto ep comment "' + "x" * 128 + '"'
    udata = bytes([0, 129]) + b"x" * 128 + b"\x00"
    assert long.encode("kube-proxy", "svc", V4).endswith(nl.attr(7, udata))


def test_a_batch_is_framed_begin_messages_end_with_consecutive_sequence_numbers() -> None:
    tx = NftTransaction(
        IPFamily.V4,
        (
            NftOp("flush", "chain", "svc"),
            NftOp("add", "rule", "svc", rule=rule(L4ProtoMatch("tcp"), DnatTo("10.244.1.1", 8080))),
            NftOp(
                "delete",
                "element",
                "cluster-ips",
                set_type=SetType(("ipv4_addr",)),
                elements=(NftElement(("10.96.0.1",)),),
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
            NftOp("add", "rule", "svc", rule=rule(goto("ep"))),
            NftOp(
                "add",
                "element",
                "service-ips",
                set_type=SetType(("ipv6_addr", "inet_proto", "inet_service"), ("verdict",)),
                elements=(NftElement(("fd00::1", "tcp", 80), goto("svc"), "ns/web:http"),),
            ),
            NftOp("delete", "element", "cluster-ips", elements=(NftElement(("fd00::1",)),)),
            NftOp(
                "add",
                "map",
                "endpoints-tcp-00",
                declaration=NftSet(
                    "endpoints-tcp-00",
                    SetType(("mark",), ("ipv6_addr", "inet_service")),
                    typeof=EndpointMapTypeof(IPFamily.V6, "tcp"),
                ),
            ),
        ),
    )
    assert tx.text() == (
        "add chain ip6 kube-proxy svc\n"
        "add rule ip6 kube-proxy svc goto ep\n"
        'add element ip6 kube-proxy service-ips { fd00::1 . tcp . 80 comment "ns/web:http"'
        " : goto svc }\n"
        "delete element ip6 kube-proxy cluster-ips { fd00::1 }\n"
        "add map ip6 kube-proxy endpoints-tcp-00"
        " { typeof numgen random mod 1 : ip6 daddr . tcp dport ; }\n"
    )
    assert not NftTransaction(IPFamily.V4)


def test_a_rule_names_the_sets_it_uses() -> None:
    r = rule(AddressInSet(V4, "saddr", "aff"), goto("ep"))
    assert r.references("aff") and not r.references("ep")
    assert rule(L4ProtoMatch("tcp"), DnatMap(2, 0, "endpoints-tcp-00")).references(
        "endpoints-tcp-00"
    )
    assert rule(UpdateSet(V4, "aff")).references("aff")
    # equal rules are equal whether or not their text was built
    printed = rule(goto("ep"), comment="x")
    assert printed.text() == 'goto ep comment "x"'
    assert printed == rule(goto("ep"), comment="x")
    assert hash(printed) == hash(rule(goto("ep"), comment="x"))


def test_an_endpoint_element_prints_and_encodes_as_the_generic_element() -> None:
    emap = SetType(("mark",), ("ipv4_addr", "inet_service"))
    endpoint = EndpointElement(5, "10.0.0.1", 80, "ns/web:http")
    generic = NftElement((5,), ("10.0.0.1", 80), "ns/web:http")
    assert endpoint.text() == generic.text() == '5 comment "ns/web:http" : 10.0.0.1 . 80'
    assert endpoint.key_text() == generic.key_text() == "5"

    def payloads(e: Element, verb: str) -> list[bytes]:
        op = NftOp(verb, "element", "m", set_type=emap, elements=(e,))
        return [m.payload for m in nftwire.messages(NftTransaction(V4, (op,)))]

    for verb in ("add", "delete"):
        assert payloads(endpoint, verb) == payloads(generic, verb)
