"""An incremental nftables transaction as nf_tables netlink messages (pure: no I/O).

Covers what endpoint and Service changes write between full syncs: regular chains
added, flushed and deleted; affinity sets and endpoint maps added; sets and maps
deleted; elements of the table's maps and sets added and deleted; and the rule shapes
service chains are made of::

    meta l4proto tcp dnat to numgen random mod 3 offset 5120 map @endpoints-tcp-2a
    numgen random mod 3 == 0 goto endpoint-chain
    meta l4proto tcp dnat to 10.244.1.11:8080
    ip saddr @affinity-set goto endpoint-chain
    update @affinity-set { ip saddr }
    ip saddr 10.244.0.0/16 goto service-chain comment "short-circuit pod traffic"
    fib saddr type local meta mark set meta mark | 0x00004000
    goto external-chain

Each statement is encoded the way nft 1.0.6 encodes it (the same expressions,
registers and byte orders: ``nft --debug=netlink`` shows them), so the kernel holds the
same rules whichever way they were written; ``tests/netns/test_nftwire.py`` compares
the kernel's own dumps of both (an endpoint map's declaration too: nft's ``typeof``
user data is written the same way). Anything else (base chains, other new sets and maps,
anonymous sets, comments longer than nft allows) raises :class:`Unsupported` and the
caller hands the transaction to ``nft -f`` instead.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from collections.abc import Callable, Iterator
from typing import ClassVar

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
from proxy.nftables.model import NftElement, NftOp, NftTransaction, safe_comment
from proxy.nftables.names import TABLE


class Unsupported(ValueError):
    """A statement this encoder does not cover (nft handles it)."""


NFTA_LIST_ELEM = 1
NFTA_DATA_VALUE = 1
NFTA_DATA_VERDICT = 2
NFTA_VERDICT_CODE = 1
NFTA_VERDICT_CHAIN = 2
NF_DROP = 0
NF_ACCEPT = 1
NFT_JUMP = -3
NFT_GOTO = -4
VERDICT_REG = 0
REG_1 = 1
REG_2 = 2
REG32_01 = 9
COMMENT_MAX = 128
"""nft's longest comment in characters (NFTNL_UDATA_COMMENT_MAXLEN); the user data TLV
holds it with its NUL."""

PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132}

# expression attributes (linux/netfilter/nf_tables.h)
NFTA_EXPR_NAME = 1
NFTA_EXPR_DATA = 2


# ---------------------------------------------------------------------------------------
# values


def _address(text: str, family: IPFamily) -> bytes:
    ip = ipaddress.ip_address(text)
    if IPFamily.of(ip) is not family:
        raise Unsupported(f"{text} is not an address of family {family}")
    return ip.packed


def _protocol(name: str) -> int:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise Unsupported(f"protocol {name!r}") from None


def _port(text: str) -> bytes:
    if not text.isdigit() or not 0 <= int(text) <= 0xFFFF:
        raise Unsupported(f"port {text!r}")
    return struct.pack(">H", int(text))


def _host32(value: int) -> bytes:
    """A 32-bit value as nft puts it in a register: host byte order."""
    return struct.pack("=I", value & 0xFFFFFFFF)


def _field(kind: str, text: str, family: IPFamily) -> bytes:
    if kind in ("ipv4_addr", "ipv6_addr"):
        want = IPFamily.V4 if kind == "ipv4_addr" else IPFamily.V6
        if want is not family:
            raise Unsupported(f"{kind} in a {family} table")
        return _address(text, family)
    if kind == "inet_proto":
        return bytes([_protocol(text)])
    if kind == "inet_service":
        return _port(text)
    if kind == "mark":  # an endpoint map's key: numgen's result, in host byte order
        if not text.isdigit() or int(text) > 0xFFFFFFFF:
            raise Unsupported(f"integer {text!r}")
        return _host32(int(text))
    raise Unsupported(f"set key type {kind!r}")


def _concat(types: str, text: str, family: IPFamily) -> bytes:
    """A key or map data: each field of a concatenation padded to 4 bytes, as nft does."""
    kinds = types.split(" . ")
    values = text.split(" . ")
    if len(kinds) != len(values):
        raise Unsupported(f"{text!r} does not fit type {types!r}")
    fields = [_field(k, v.strip(), family) for k, v in zip(kinds, values, strict=True)]
    if len(fields) == 1:
        return fields[0]
    return b"".join(f + b"\0" * (-len(f) % 4) for f in fields)


def element_key(set_type: str, key: str, family: IPFamily) -> bytes:
    """An element's key."""
    return _concat(set_type.split(" : ")[0], key, family)


def _verdict(text: str) -> bytes:
    words = text.split()
    if words == ["drop"]:
        inner = be32(NFTA_VERDICT_CODE, NF_DROP)
    elif words == ["accept"]:
        inner = be32(NFTA_VERDICT_CODE, NF_ACCEPT)
    elif len(words) == 2 and words[0] in ("goto", "jump"):
        code = NFT_GOTO if words[0] == "goto" else NFT_JUMP
        inner = be32(NFTA_VERDICT_CODE, code) + strz(NFTA_VERDICT_CHAIN, words[1])
    else:
        raise Unsupported(f"verdict {text!r}")
    return nest(NFTA_DATA_VERDICT, inner)


def _comment(text: str) -> bytes:
    """nft's user data holding a comment (one TLV: type 0, length, text, NUL)."""
    raw = text.encode() + b"\0"
    if len(raw) > COMMENT_MAX + 1:
        raise Unsupported("comment longer than nft allows")
    return bytes([0, len(raw)]) + raw


# ---------------------------------------------------------------------------------------
# elements

NFTA_SET_ELEM_LIST_TABLE = 1
NFTA_SET_ELEM_LIST_SET = 2
NFTA_SET_ELEM_LIST_ELEMENTS = 3
NFTA_SET_ELEM_KEY = 1
NFTA_SET_ELEM_DATA = 2
NFTA_SET_ELEM_USERDATA = 6


def _element(set_type: str, e: NftElement, family: IPFamily, with_data: bool) -> bytes:
    parts = [nest(NFTA_SET_ELEM_KEY, attr(NFTA_DATA_VALUE, element_key(set_type, e.key, family)))]
    if with_data:
        is_map = " : " in set_type
        if is_map != bool(e.value):
            raise Unsupported(f"element {e.key!r} does not fit type {set_type!r}")
        if e.value:
            data_type = set_type.split(" : ")[1]
            if data_type == "verdict":
                data = _verdict(e.value)
            else:
                data = attr(NFTA_DATA_VALUE, _concat(data_type, e.value, family))
            parts.append(nest(NFTA_SET_ELEM_DATA, data))
        if e.comment:
            parts.append(attr(NFTA_SET_ELEM_USERDATA, _comment(safe_comment(e.comment))))
    return nest(NFTA_LIST_ELEM, *parts)


# ---------------------------------------------------------------------------------------
# rules

NFTA_RULE_TABLE = 1
NFTA_RULE_CHAIN = 2
NFTA_RULE_EXPRESSIONS = 4
NFTA_RULE_USERDATA = 7


def _expr(name: str, *attrs: bytes) -> bytes:
    return nest(NFTA_LIST_ELEM, strz(NFTA_EXPR_NAME, name), nest(NFTA_EXPR_DATA, *attrs))


def _cmp(data: bytes, op: int = 0, reg: int = REG_1) -> bytes:
    # NFTA_CMP_SREG 1, NFTA_CMP_OP 2 (eq 0, neq 1), NFTA_CMP_DATA 3
    return _expr("cmp", be32(1, reg), be32(2, op), nest(3, attr(NFTA_DATA_VALUE, data)))


def _immediate(reg: int, data: bytes) -> bytes:
    # NFTA_IMMEDIATE_DREG 1, NFTA_IMMEDIATE_DATA 2
    return _expr("immediate", be32(1, reg), nest(2, data))


def _payload(offset: int, length: int) -> bytes:
    # NFTA_PAYLOAD_DREG 1, BASE 2 (network header 1), OFFSET 3, LEN 4
    return _expr("payload", be32(1, REG_1), be32(2, 1), be32(3, offset), be32(4, length))


def _meta_load(key: int) -> bytes:
    # NFTA_META_DREG 1, NFTA_META_KEY 2
    return _expr("meta", be32(2, key), be32(1, REG_1))


META_MARK = 3
META_L4PROTO = 16

_SADDR = {IPFamily.V4: (12, 4), IPFamily.V6: (8, 16)}
_DADDR = {IPFamily.V4: (16, 4), IPFamily.V6: (24, 16)}


class _Rule:
    """Compiles one rule's tokens, statement by statement."""

    def __init__(self, words: list[str], family: IPFamily) -> None:
        self.words = words
        self.family = family
        self.pos = 0
        self.out: list[bytes] = []

    def peek(self, n: int = 0) -> str:
        i = self.pos + n
        return self.words[i] if i < len(self.words) else ""

    def take(self, *expected: str) -> list[str]:
        got = self.words[self.pos : self.pos + len(expected)]
        for want, word in zip(expected, got, strict=False):
            if want != "*" and want != word:
                raise Unsupported(f"expected {want!r}, found {word!r}")
        if len(got) != len(expected):
            raise Unsupported("rule ends early")
        self.pos += len(expected)
        return got

    def compile(self) -> list[bytes]:
        while self.pos < len(self.words):
            word = self.peek()
            handler = self._statements.get(word)
            if handler is None:
                raise Unsupported(f"statement {word!r}")
            handler(self)
        return self.out

    # -- statements

    def numgen(self) -> None:
        _, _, _, mod, _, value = self.take("numgen", "random", "mod", "*", "==", "*")
        if not mod.isdigit() or not value.isdigit() or int(mod) == 0:
            raise Unsupported("numgen")
        # NFTA_NG_DREG 1, NFTA_NG_MODULUS 2, NFTA_NG_TYPE 3 (random 1)
        self.out.append(_expr("numgen", be32(1, REG_1), be32(2, int(mod)), be32(3, 1)))
        self.out.append(_cmp(_host32(int(value))))

    def meta(self) -> None:
        if self.peek(1) == "l4proto":
            _, _, proto = self.take("meta", "l4proto", "*")
            self.out.append(_meta_load(META_L4PROTO))
            self.out.append(_cmp(bytes([_protocol(proto)])))
            return
        _, _, _, _, _, op, value = self.take("meta", "mark", "set", "meta", "mark", "*", "*")
        if op != "|" or not re.fullmatch(r"0x[0-9a-fA-F]{1,8}", value):
            raise Unsupported("meta mark")
        mark = int(value, 16)
        self.out.append(_meta_load(META_MARK))
        # NFTA_BITWISE_SREG 1, DREG 2, LEN 3, MASK 4, XOR 5: (reg & ~mark) ^ mark
        self.out.append(
            _expr(
                "bitwise",
                be32(1, REG_1),
                be32(2, REG_1),
                be32(3, 4),
                nest(4, attr(NFTA_DATA_VALUE, _host32(~mark))),
                nest(5, attr(NFTA_DATA_VALUE, _host32(mark))),
            )
        )
        # NFTA_META_KEY 2, NFTA_META_SREG 3
        self.out.append(_expr("meta", be32(2, META_MARK), be32(3, REG_1)))

    def address(self) -> None:
        ipx = "ip" if self.family is IPFamily.V4 else "ip6"
        _, which = self.take(ipx, "*")
        if which not in ("saddr", "daddr"):
            raise Unsupported(f"{ipx} {which}")
        offset, size = (_SADDR if which == "saddr" else _DADDR)[self.family]
        op = 0
        if self.peek() == "!=":
            self.take("!=")
            op = 1
        operand = self.take("*")[0]
        if operand.startswith("@"):
            if op:
                raise Unsupported("negated set lookup")
            self.out.append(_payload(offset, size))
            # NFTA_LOOKUP_SET 1, NFTA_LOOKUP_SREG 2
            self.out.append(_expr("lookup", strz(1, operand[1:]), be32(2, REG_1)))
            return
        try:
            net = ipaddress.ip_network(operand, strict=True)
        except ValueError:
            raise Unsupported(f"address {operand!r}") from None
        if IPFamily.of(net) is not self.family:
            raise Unsupported(f"{operand} in a {self.family} table")
        prefix = net.prefixlen
        if prefix and prefix % 8 == 0:
            self.out.append(_payload(offset, prefix // 8))
            self.out.append(_cmp(net.network_address.packed[: prefix // 8], op))
            return
        self.out.append(_payload(offset, size))
        self.out.append(
            _expr(
                "bitwise",
                be32(1, REG_1),
                be32(2, REG_1),
                be32(3, size),
                nest(4, attr(NFTA_DATA_VALUE, net.netmask.packed)),
                nest(5, attr(NFTA_DATA_VALUE, bytes(size))),
            )
        )
        self.out.append(_cmp(net.network_address.packed, op))

    def update(self) -> None:
        ipx = "ip" if self.family is IPFamily.V4 else "ip6"
        _, name, _, _, _, _ = self.take("update", "*", "{", ipx, "saddr", "}")
        if not name.startswith("@"):
            raise Unsupported("update")
        self.out.append(_payload(*_SADDR[self.family]))
        # NFTA_DYNSET_SET_NAME 1, NFTA_DYNSET_OP 3 (update 1), NFTA_DYNSET_SREG_KEY 4
        self.out.append(_expr("dynset", strz(1, name[1:]), be32(3, 1), be32(4, REG_1)))

    def fib(self) -> None:
        self.take("fib", "saddr", "type", "local")
        # NFTA_FIB_DREG 1, NFTA_FIB_RESULT 2 (addrtype 3), NFTA_FIB_FLAGS 3 (saddr 1)
        self.out.append(_expr("fib", be32(1, REG_1), be32(2, 3), be32(3, 1)))
        self.out.append(_cmp(_host32(2)))  # RTN_LOCAL

    def dnat(self) -> None:
        if self.peek(2) == "numgen":
            self.dnat_map()
            return
        _, _, target = self.take("dnat", "to", "*")
        m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([0-9.]+):(\d+)", target)
        if m is None:
            raise Unsupported(f"dnat target {target!r}")
        ip, port = (m[1], m[2]) if m[1] else (m[3], m[4])
        self.out.append(_immediate(REG_1, attr(NFTA_DATA_VALUE, _address(ip, self.family))))
        self.out.append(_immediate(REG_2, attr(NFTA_DATA_VALUE, _port(port))))
        nfproto = NFPROTO_IPV4 if self.family is IPFamily.V4 else NFPROTO_IPV6
        # NFTA_NAT_TYPE 1 (dnat 1), FAMILY 2, REG_ADDR_MIN 3, REG_PROTO_MIN 5, FLAGS 7
        # (NF_NAT_RANGE_PROTO_SPECIFIED 2)
        self.out.append(
            _expr("nat", be32(1, 1), be32(2, nfproto), be32(3, REG_1), be32(5, REG_2), be32(7, 2))
        )

    def dnat_map(self) -> None:
        """``dnat to numgen random mod n [offset b] map @m``: the key picks an
        ``address . port`` (one register pair) out of an endpoint map."""
        _, _, _, _, _, mod = self.take("dnat", "to", "numgen", "random", "mod", "*")
        offset = "0"
        if self.peek() == "offset":
            offset = self.take("offset", "*")[1]
        name = self.take("map", "*")[1]
        if not (
            mod.isdigit()
            and 0 < int(mod) <= 0xFFFFFFFF
            and offset.isdigit()
            and int(offset) <= 0xFFFFFFFF
            and name.startswith("@")
        ):
            raise Unsupported("dnat map")
        ng = [be32(1, REG_1), be32(2, int(mod)), be32(3, 1)]
        if int(offset):
            ng.append(be32(4, int(offset)))  # NFTA_NG_OFFSET
        self.out.append(_expr("numgen", *ng))
        # NFTA_LOOKUP_SET 1, SREG 2, DREG 3
        self.out.append(_expr("lookup", strz(1, name[1:]), be32(2, REG_1), be32(3, REG_1)))
        v4 = self.family is IPFamily.V4
        nfproto = NFPROTO_IPV4 if v4 else NFPROTO_IPV6
        # the port follows the address: 32-bit register 9 (bytes 4..7), or register 2
        port_reg = REG32_01 if v4 else REG_2
        self.out.append(
            _expr(
                "nat", be32(1, 1), be32(2, nfproto), be32(3, REG_1), be32(5, port_reg), be32(7, 2)
            )
        )

    def verdict(self) -> None:
        word = self.peek()
        text = " ".join(self.take(word, "*")) if word in ("goto", "jump") else self.take(word)[0]
        if self.pos != len(self.words):
            raise Unsupported("statements after a verdict")
        self.out.append(_immediate(VERDICT_REG, _verdict(text)))

    _statements: ClassVar[dict[str, Callable[[_Rule], None]]] = {
        "numgen": numgen,
        "meta": meta,
        "ip": address,
        "ip6": address,
        "update": update,
        "fib": fib,
        "dnat": dnat,
        "goto": verdict,
        "jump": verdict,
        "drop": verdict,
        "accept": verdict,
    }


_COMMENT = re.compile(r'^(.*?) comment "([^"]*)"$')


def rule_payload(chain: str, rule: str, family: IPFamily) -> bytes:
    """The attributes of a new rule appended to ``chain``."""
    comment = None
    m = _COMMENT.match(rule)
    if m is not None:
        rule, comment = m[1], m[2]
    if '"' in rule:
        raise Unsupported("quoted text in a rule")
    exprs = _Rule(rule.split(), family).compile()
    parts = [
        strz(NFTA_RULE_TABLE, TABLE),
        strz(NFTA_RULE_CHAIN, chain),
        nest(NFTA_RULE_EXPRESSIONS, *exprs),
    ]
    if comment is not None:
        parts.append(attr(NFTA_RULE_USERDATA, _comment(comment)))
    return b"".join(parts)


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

_AFFINITY_SET = re.compile(r"type (ipv4_addr|ipv6_addr) ; flags dynamic,timeout ; timeout (\d+)s ;")
_ENDPOINT_MAP = re.compile(r"typeof numgen random mod 1 : (ip|ip6) daddr \. (tcp|udp|sctp) dport ;")
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
    return _udata(kind, _host32(value))


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


def _new_set(name: str, spec: str, set_id: int, family: IPFamily) -> bytes:
    """An affinity set (dynamic, with a timeout, keyed by a client address) or an
    endpoint map: the kinds an incremental sync creates."""
    em = _ENDPOINT_MAP.fullmatch(spec)
    if em is not None:
        v4 = em[1] == "ip"
        if v4 != (family is IPFamily.V4):
            raise Unsupported(f"{spec!r} in a {family} table")
        return _new_endpoint_map(name, v4, em[2], set_id)
    m = _AFFINITY_SET.fullmatch(spec)
    if m is None:
        raise Unsupported(f"set declaration {spec!r}")
    key_type, key_len = KEY_TYPES[m[1]]
    return b"".join(
        [
            strz(NFTA_SET_TABLE, TABLE),
            strz(NFTA_SET_NAME, name),
            be32(NFTA_SET_FLAGS, NFT_SET_TIMEOUT | NFT_SET_EVAL),
            be32(NFTA_SET_KEY_TYPE, key_type),
            be32(NFTA_SET_KEY_LEN, key_len),
            be32(NFTA_SET_ID, set_id),
            attr(NFTA_SET_TIMEOUT, struct.pack(">Q", int(m[2]) * 1000)),
            # user data: key byte order (NFTNL_UDATA_SET_KEYBYTEORDER) big endian
            attr(NFTA_SET_USERDATA, bytes([0, 4]) + _host32(2)),
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
        payload = _new_set(op.name, op.spec, set_id, family)
        yield Message(NFT_MSG_NEWSET, nfproto, payload, NLM_F_CREATE, what)
    elif op.verb == "delete" and op.kind in ("set", "map"):
        yield Message(NFT_MSG_DELSET, nfproto, table + strz(NFTA_SET_NAME, op.name), 0, what)
    elif key == ("add", "rule"):
        payload = rule_payload(op.name, op.rule, family)
        yield Message(NFT_MSG_NEWRULE, nfproto, payload, NLM_F_CREATE | NLM_F_APPEND, what)
    elif op.kind == "element" and op.verb in ("add", "delete"):
        adding = op.verb == "add"
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
