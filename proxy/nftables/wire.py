"""An incremental nftables transaction as nf_tables netlink messages (pure: no I/O).

Covers what endpoint and Service changes write between full syncs: regular chains
added, flushed and deleted; affinity sets and endpoint maps added; sets and maps
deleted; elements of the table's maps and sets added and deleted; and rules, each
statement encoding itself (:mod:`proxy.nftables.statements`), e.g.::

    meta l4proto tcp dnat to numgen random mod 3 offset 5120 map @endpoints-tcp-2a
    numgen random mod 3 == 0 goto endpoint-chain
    meta l4proto tcp dnat to 10.244.1.11:8080
    ip saddr @affinity-set goto endpoint-chain
    update @affinity-set { ip saddr }
    ip saddr 10.244.0.0/16 goto service-chain comment "short-circuit pod traffic"
    fib saddr type local meta mark set meta mark | 0x00004000
    goto external-chain

Each is encoded the way nft 1.0.6 encodes it, so the kernel holds the same rules
whichever way they were written; ``tests/netns/test_nftwire.py`` compares the kernel's
own dumps of both (an endpoint map's declaration too: nft's ``typeof`` user data is
written the same way). Anything else (base chains, other new sets and maps, statements
not covered such as anonymous sets, comments longer than nft allows) raises
:class:`Unsupported` and the caller hands the transaction to ``nft -f`` instead.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from proxy.kernel.nfnetlink import (
    NFPROTO_IPV4,
    NFPROTO_IPV6,
    NFT_MSG_DELCHAIN,
    NFT_MSG_DELRULE,
    NFT_MSG_DELSET,
    NFT_MSG_DELSETELEM,
    NFT_MSG_NEWCHAIN,
    NFT_MSG_NEWRULE,
    NFT_MSG_NEWSET,
    NFT_MSG_NEWSETELEM,
    NLM_F_APPEND,
    NLM_F_CREATE,
    Message,
    attr,
    be32,
    nest,
    strz,
)
from proxy.model import IPFamily
from proxy.nftables import exprs as x
from proxy.nftables.exprs import Unsupported
from proxy.nftables.model import Element, NftOp, NftSet, NftTransaction
from proxy.nftables.names import TABLE
from proxy.nftables.statements import NFTA_RULE_CHAIN, SetType, safe_comment

# ---------------------------------------------------------------------------------------
# elements

NFTA_SET_ELEM_LIST_TABLE = 1
NFTA_SET_ELEM_LIST_SET = 2
NFTA_SET_ELEM_LIST_ELEMENTS = 3
NFTA_SET_ELEM_KEY = 1
NFTA_SET_ELEM_DATA = 2
NFTA_SET_ELEM_USERDATA = 6


def _element(set_type: SetType, e: Element, family: IPFamily, with_data: bool) -> bytes:
    key = set_type.encode_key(e.key, family)
    parts = [nest(NFTA_SET_ELEM_KEY, attr(x.NFTA_DATA_VALUE, key))]
    if with_data:
        if set_type.is_map != (e.value is not None):
            raise Unsupported(f"element {e.key_text()!r} does not fit type {set_type.text()!r}")
        if e.value is not None:
            parts.append(nest(NFTA_SET_ELEM_DATA, set_type.encode_data(e.value, family)))
        if e.comment:
            parts.append(attr(NFTA_SET_ELEM_USERDATA, x.comment(safe_comment(e.comment))))
    return nest(x.NFTA_LIST_ELEM, *parts)


# ---------------------------------------------------------------------------------------
# transactions

NFTA_CHAIN_TABLE = 1
NFTA_CHAIN_NAME = 3
NFTA_SET_TABLE = 1
NFTA_SET_NAME = 2


NFTA_SET_FLAGS = 3
NFTA_SET_KEY_TYPE = 4
NFTA_SET_KEY_LEN = 5
NFTA_SET_ID = 10
NFTA_SET_TIMEOUT = 11
NFTA_SET_USERDATA = 13
NFT_SET_TIMEOUT = 0x10
NFT_SET_EVAL = 0x20
KEY_TYPES = {"ipv4_addr": (7, 4), "ipv6_addr": (8, 16)}
"""nft's datatype numbers and lengths of the set keys covered."""

PROTO_DESC = {"tcp": 8, "udp": 6, "sctp": 10}
"""nft's numbers for the transport headers (its proto_desc_id)."""
NFTA_SET_DATA_TYPE = 6
NFTA_SET_DATA_LEN = 7
NFT_SET_MAP = 0x8
TYPE_INTEGER = 4
TYPE_INET_SERVICE = 13
CONCAT_BITS = 6
"""nft numbers a concatenated type by shifting each field's type in (TYPE_BITS)."""


def _udata(kind: int, *payload: bytes) -> bytes:
    """One TLV of nft's set user data (type, length, value; values host-endian u32)."""
    value = b"".join(payload)
    return bytes([kind, len(value)]) + value


def _u(kind: int, value: int) -> bytes:
    return _udata(kind, x.host32(value))


def _endpoint_map_udata(v4: bool, proto: str) -> bytes:
    """What nft records for ``typeof numgen random mod 1 : ip daddr . tcp dport``: the key
    and data byte orders and the expressions they were declared by, so that it can print
    the map's elements and check the rules using it."""

    def payload(index: int, desc: int, field: int) -> bytes:
        # concatenation member ``index``: expression 7 (payload) of (header, field)
        return _udata(index, _u(0, 7), _udata(1, _u(0, desc), _u(1, field)))

    # ip header (12) field daddr (12), ip6 header (13) field daddr (9); dport is field 2
    daddr = payload(0, 12, 12) if v4 else payload(0, 13, 9)
    return b"".join(
        [
            _u(0, 1),  # key byte order: host
            _u(1, 0),  # data byte order: mixed (a concatenation)
            # key typeof: expression 23 (numgen), random (1), mod 1, offset 0
            _udata(3, _u(0, 23), _udata(1, _u(0, 1), _u(1, 1), _u(2, 0))),
            # data typeof: expression 13 (concatenation) of daddr . th dport
            _udata(4, _u(0, 13), _udata(1, daddr, payload(1, PROTO_DESC[proto], 2))),
            _u(6, 0),  # data is not an interval
        ]
    )


def _new_endpoint_map(name: str, v4: bool, proto: str, set_id: int) -> bytes:
    addr_type, addr_len = KEY_TYPES["ipv4_addr" if v4 else "ipv6_addr"]
    return b"".join(
        [
            strz(NFTA_SET_TABLE, TABLE),
            strz(NFTA_SET_NAME, name),
            be32(NFTA_SET_FLAGS, NFT_SET_MAP),
            be32(NFTA_SET_KEY_TYPE, TYPE_INTEGER),
            be32(NFTA_SET_KEY_LEN, 4),
            be32(NFTA_SET_DATA_TYPE, addr_type << CONCAT_BITS | TYPE_INET_SERVICE),
            be32(NFTA_SET_DATA_LEN, addr_len + 4),
            be32(NFTA_SET_ID, set_id),
            attr(NFTA_SET_USERDATA, _endpoint_map_udata(v4, proto)),
        ]
    )


def _new_set(s: NftSet, set_id: int, family: IPFamily) -> bytes:
    """An affinity set (dynamic, with a timeout, keyed by a client address) or an
    endpoint map: the kinds an incremental sync creates."""
    plain = not s.comment and s.timeout is None and not s.flags
    typeof = s.typeof
    if typeof is not None and plain and typeof.protocol in PROTO_DESC:
        if typeof.family is not family:
            raise Unsupported(f"{s.spec()!r} in a {family} table")
        return _new_endpoint_map(s.name, family is IPFamily.V4, typeof.protocol, set_id)
    affinity = (
        typeof is None
        and len(s.type.key) == 1
        and s.type.key[0] in KEY_TYPES
        and not s.type.data
        and s.flags == ("dynamic", "timeout")
        and s.timeout is not None
        and s.timeout >= 0
        and not s.comment
        and s.size is None
    )
    if not affinity or s.timeout is None:
        raise Unsupported(f"set declaration {s.spec()!r}")
    key_type, key_len = KEY_TYPES[s.type.key[0]]
    return b"".join(
        [
            strz(NFTA_SET_TABLE, TABLE),
            strz(NFTA_SET_NAME, s.name),
            be32(NFTA_SET_FLAGS, NFT_SET_TIMEOUT | NFT_SET_EVAL),
            be32(NFTA_SET_KEY_TYPE, key_type),
            be32(NFTA_SET_KEY_LEN, key_len),
            be32(NFTA_SET_ID, set_id),
            attr(NFTA_SET_TIMEOUT, struct.pack(">Q", s.timeout * 1000)),
            # user data: key byte order (NFTNL_UDATA_SET_KEYBYTEORDER) big endian
            attr(NFTA_SET_USERDATA, bytes([0, 4]) + x.host32(2)),
        ]
    )


def _messages(op: NftOp, family: IPFamily, set_id: int) -> Iterator[Message]:
    nfproto = NFPROTO_IPV4 if family is IPFamily.V4 else NFPROTO_IPV6
    table = strz(1, TABLE)  # every object's TABLE attribute is number 1
    what = op.text(f"{'ip' if family is IPFamily.V4 else 'ip6'} {TABLE}")[:200]
    key = (op.verb, op.kind)
    if key == ("add", "chain"):
        if op.hook is not None:
            raise Unsupported("base chain")
        payload = table + strz(NFTA_CHAIN_NAME, op.name)
        yield Message(NFT_MSG_NEWCHAIN, nfproto, payload, NLM_F_CREATE, what)
    elif key == ("flush", "chain"):
        yield Message(NFT_MSG_DELRULE, nfproto, table + strz(NFTA_RULE_CHAIN, op.name), 0, what)
    elif key == ("delete", "chain"):
        yield Message(NFT_MSG_DELCHAIN, nfproto, table + strz(NFTA_CHAIN_NAME, op.name), 0, what)
    elif op.verb == "add" and op.kind in ("set", "map"):
        if op.declaration is None:
            raise Unsupported(f"{op.kind} {op.name} without its declaration")
        payload = _new_set(op.declaration, set_id, family)
        yield Message(NFT_MSG_NEWSET, nfproto, payload, NLM_F_CREATE, what)
    elif op.verb == "delete" and op.kind in ("set", "map"):
        yield Message(NFT_MSG_DELSET, nfproto, table + strz(NFTA_SET_NAME, op.name), 0, what)
    elif key == ("add", "rule") and op.rule is not None:
        payload = op.rule.encode(TABLE, op.name, family)
        yield Message(NFT_MSG_NEWRULE, nfproto, payload, NLM_F_CREATE | NLM_F_APPEND, what)
    elif op.kind == "element" and op.verb in ("add", "delete"):
        adding = op.verb == "add"
        if op.set_type is None:
            raise Unsupported(f"elements of {op.name} without its type")
        elems = [_element(op.set_type, e, family, adding) for e in op.elements]
        payload = (
            table
            + strz(NFTA_SET_ELEM_LIST_SET, op.name)
            + nest(NFTA_SET_ELEM_LIST_ELEMENTS, *elems)
        )
        mtype = NFT_MSG_NEWSETELEM if adding else NFT_MSG_DELSETELEM
        yield Message(mtype, nfproto, payload, NLM_F_CREATE if adding else 0, what)
    else:
        raise Unsupported(f"{op.verb} {op.kind}")


def messages(tx: NftTransaction) -> list[Message]:
    """The transaction's netlink messages, in order; :class:`Unsupported` if any of its
    statements is not covered (then none of it should be sent this way)."""
    return [m for i, op in enumerate(tx.ops, 1) for m in _messages(op, tx.family, i)]
