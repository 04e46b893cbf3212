"""nftables statements as typed objects: each prints as nft text (:meth:`text`, what the
full sync's ``nft -f`` script holds) and encodes as nf_tables netlink expressions
(:meth:`encode`, what an incremental sync sends); nothing is parsed back from text.

A :class:`Rule` is statements and a comment; :class:`SetType` declares a set's or map's
key and data and encodes :data:`ElementKey` values. The statements nft's netlink encoding
is not written for here (``ct state``, ``masquerade``, ``reject``, verdict-map lookups,
anonymous sets, ``fib daddr``) raise :class:`~proxy.nftables.exprs.Unsupported` from
:meth:`encode`: a transaction holding one goes to ``nft -f`` (and is counted).
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field
from typing import Protocol

from proxy import comments
from proxy.kernel.nfnetlink import NFPROTO_IPV4, NFPROTO_IPV6, attr, be32, nest, strz
from proxy.model import IPFamily
from proxy.nftables import exprs as x
from proxy.nftables.exprs import Unsupported

NFT_COMMENT_MAX = 128
"""nft refuses a comment longer than this many characters, and with it the whole
transaction (upstream had the same bug: kubernetes/kubernetes#139515)."""


@functools.lru_cache(maxsize=4096)
def safe_comment(text: str) -> str:
    """``text`` fit for a double-quoted nft comment (:func:`comments.quotable`; cached:
    a service port's elements all carry its name)."""
    return comments.quotable(text, NFT_COMMENT_MAX)


def _ipx(family: IPFamily) -> str:
    return "ip" if family is IPFamily.V4 else "ip6"


def _nfproto(family: IPFamily) -> int:
    return NFPROTO_IPV4 if family is IPFamily.V4 else NFPROTO_IPV6


class Statement(Protocol):
    """One statement of a rule (a match, an action or a verdict)."""

    def text(self) -> str: ...

    def encode(self, family: IPFamily) -> list[bytes]:
        """Its expressions in a table of ``family``; :class:`Unsupported` if not covered."""
        ...


# ---------------------------------------------------------------------------------------
# matches


@dataclass(frozen=True, slots=True)
class NumgenMatch:
    """``numgen random mod N == V``: true for one in N new connections."""

    mod: int
    value: int

    def text(self) -> str:
        return f"numgen random mod {self.mod} == {self.value}"

    def encode(self, family: IPFamily) -> list[bytes]:
        if not 0 < self.mod <= 0xFFFFFFFF or not 0 <= self.value <= 0xFFFFFFFF:
            raise Unsupported("numgen")
        # NFTA_NG_DREG 1, NFTA_NG_MODULUS 2, NFTA_NG_TYPE 3 (random 1)
        ng = x.expr("numgen", be32(1, x.REG_1), be32(2, self.mod), be32(3, 1))
        return [ng, x.cmp(x.host32(self.value))]


@dataclass(frozen=True, slots=True)
class L4ProtoMatch:
    """``meta l4proto tcp``."""

    protocol: str

    def text(self) -> str:
        return f"meta l4proto {self.protocol}"

    def encode(self, family: IPFamily) -> list[bytes]:
        return [x.meta_load(x.META_L4PROTO), x.cmp(bytes([x.protocol(self.protocol)]))]


@dataclass(frozen=True, slots=True)
class AddressMatch:
    """``ip saddr 10.0.0.0/8``, ``ip6 daddr != ::1``: an address in (or not in) a prefix."""

    family: IPFamily
    field: str
    """``saddr`` or ``daddr``."""
    prefix: str
    """An address or a network, as nft is given it."""
    negate: bool = False

    def text(self) -> str:
        op = "!= " if self.negate else ""
        return f"{_ipx(self.family)} {self.field} {op}{self.prefix}"

    def encode(self, family: IPFamily) -> list[bytes]:
        offset, size = _address_field(self.family, self.field, family)
        try:
            net = ipaddress.ip_network(self.prefix, strict=True)
        except ValueError:
            raise Unsupported(f"address {self.prefix!r}") from None
        if IPFamily.of(net) is not family:
            raise Unsupported(f"{self.prefix} in a {family} table")
        op = int(self.negate)
        prefix = net.prefixlen
        if prefix and prefix % 8 == 0:  # byte-aligned: compare the leading bytes
            return [
                x.payload(offset, prefix // 8),
                x.cmp(net.network_address.packed[: prefix // 8], op),
            ]
        return [
            x.payload(offset, size),
            x.bitwise(size, net.netmask.packed, bytes(size)),
            x.cmp(net.network_address.packed, op),
        ]


@dataclass(frozen=True, slots=True)
class AddressInSet:
    """``ip saddr @set``: an address looked up in a named set."""

    family: IPFamily
    field: str
    set_name: str

    def text(self) -> str:
        return f"{_ipx(self.family)} {self.field} @{self.set_name}"

    def encode(self, family: IPFamily) -> list[bytes]:
        offset, size = _address_field(self.family, self.field, family)
        # NFTA_LOOKUP_SET 1, NFTA_LOOKUP_SREG 2
        return [x.payload(offset, size), x.expr("lookup", strz(1, self.set_name), be32(2, x.REG_1))]


def _address_field(rule_family: IPFamily, field: str, family: IPFamily) -> tuple[int, int]:
    if rule_family is not family:
        raise Unsupported(f"{_ipx(rule_family)} {field} in a {family} table")
    if field == "saddr":
        return x.SADDR[family]
    if field == "daddr":
        return x.DADDR[family]
    raise Unsupported(f"{_ipx(family)} {field}")


@dataclass(frozen=True, slots=True)
class AddressNotInPrefixes:
    """``ip saddr != { 192.0.2.0/24, 198.51.100.0/24 }`` (an anonymous set)."""

    family: IPFamily
    field: str
    prefixes: tuple[str, ...]

    def text(self) -> str:
        return f"{_ipx(self.family)} {self.field} != {{ {', '.join(self.prefixes)} }}"

    def encode(self, family: IPFamily) -> list[bytes]:
        raise Unsupported("anonymous set")


@dataclass(frozen=True, slots=True)
class FibLocal:
    """``fib saddr type local``: the source (or destination) is an address of this host."""

    field: str = "saddr"

    def text(self) -> str:
        return f"fib {self.field} type local"

    def encode(self, family: IPFamily) -> list[bytes]:
        if self.field != "saddr":
            raise Unsupported(f"fib {self.field}")
        # NFTA_FIB_DREG 1, NFTA_FIB_RESULT 2 (addrtype 3), NFTA_FIB_FLAGS 3 (saddr 1)
        fib = x.expr("fib", be32(1, x.REG_1), be32(2, 3), be32(3, 1))
        return [fib, x.cmp(x.host32(2))]  # RTN_LOCAL


@dataclass(frozen=True, slots=True)
class CtMatch:
    """``ct state new``, ``ct status dnat``: a connection tracking key's value."""

    key: str
    value: str

    def text(self) -> str:
        return f"ct {self.key} {self.value}"

    def encode(self, family: IPFamily) -> list[bytes]:
        raise Unsupported(self.text())


@dataclass(frozen=True, slots=True)
class MarkTest:
    """``meta mark & 0xM != 0x00000000``: any bit of the mask set."""

    mask: int

    def text(self) -> str:
        return f"meta mark & {self.mask:#010x} != 0x00000000"

    def encode(self, family: IPFamily) -> list[bytes]:
        raise Unsupported("meta mark &")


@dataclass(frozen=True, slots=True)
class ConcatLookup:
    """``ip daddr . meta l4proto . th dport vmap @map`` (``vmap``), or ``@set`` alone: a
    concatenation of packet fields looked up in a named set or verdict map."""

    fields: tuple[str, ...]
    """nft's spelling of each field (``ip daddr``, ``meta l4proto``, ``th dport``)."""
    set_name: str
    vmap: bool = False

    def text(self) -> str:
        how = "vmap " if self.vmap else ""
        return f"{' . '.join(self.fields)} {how}@{self.set_name}"

    def encode(self, family: IPFamily) -> list[bytes]:
        raise Unsupported("concatenation lookup")


# ---------------------------------------------------------------------------------------
# actions


@dataclass(frozen=True, slots=True)
class SetMark:
    """``meta mark set meta mark | 0xM`` (``^`` when ``toggle``)."""

    mark: int
    toggle: bool = False

    def text(self) -> str:
        return f"meta mark set meta mark {'^' if self.toggle else '|'} {self.mark:#010x}"

    def encode(self, family: IPFamily) -> list[bytes]:
        if self.toggle or not 0 <= self.mark <= 0xFFFFFFFF:
            raise Unsupported("meta mark")
        # (reg & ~mark) ^ mark, then back into the mark (NFTA_META_KEY 2, NFTA_META_SREG 3)
        return [
            x.meta_load(x.META_MARK),
            x.bitwise(4, x.host32(~self.mark), x.host32(self.mark)),
            x.expr("meta", be32(2, x.META_MARK), be32(3, x.REG_1)),
        ]


@dataclass(frozen=True, slots=True)
class UpdateSet:
    """``update @set { ip saddr }``: add or refresh the source address in a dynamic set."""

    family: IPFamily
    set_name: str

    def text(self) -> str:
        return f"update @{self.set_name} {{ {_ipx(self.family)} saddr }}"

    def encode(self, family: IPFamily) -> list[bytes]:
        offset, size = _address_field(self.family, "saddr", family)
        # NFTA_DYNSET_SET_NAME 1, NFTA_DYNSET_OP 3 (update 1), NFTA_DYNSET_SREG_KEY 4
        dynset = x.expr("dynset", strz(1, self.set_name), be32(3, 1), be32(4, x.REG_1))
        return [x.payload(offset, size), dynset]


@dataclass(frozen=True, slots=True)
class L4ProtoIn:
    """``meta l4proto { tcp, udp, sctp }``: one of the protocols Services carry."""

    protocols: tuple[str, ...] = ("tcp", "udp", "sctp")

    def text(self) -> str:
        return f"meta l4proto {{ {', '.join(self.protocols)} }}"

    def encode(self, family: IPFamily) -> list[bytes]:
        raise Unsupported(self.text())


@dataclass(frozen=True, slots=True)
class CountInSet:
    """``update @set { KEY counter }``: add or refresh ``KEY`` in a dynamic set and count
    the packet and its bytes in that element."""

    fields: tuple[str, ...]
    set_name: str

    def text(self) -> str:
        return f"update @{self.set_name} {{ {' . '.join(self.fields)} counter }}"

    def encode(self, family: IPFamily) -> list[bytes]:
        raise Unsupported(self.text())


def _nat(family: IPFamily, port_reg: int) -> bytes:
    # NFTA_NAT_TYPE 1 (dnat 1), FAMILY 2, REG_ADDR_MIN 3, REG_PROTO_MIN 5, FLAGS 7
    # (NF_NAT_RANGE_PROTO_SPECIFIED 2)
    return x.expr(
        "nat",
        be32(1, 1),
        be32(2, _nfproto(family)),
        be32(3, x.REG_1),
        be32(5, port_reg),
        be32(7, 2),
    )


@dataclass(frozen=True, slots=True)
class DnatTo:
    """``dnat to 10.0.0.1:80`` / ``dnat to [fd00::1]:80``."""

    ip: str
    port: int

    def text(self) -> str:
        if ":" in self.ip:
            return f"dnat to [{self.ip}]:{self.port}"
        return f"dnat to {self.ip}:{self.port}"

    def encode(self, family: IPFamily) -> list[bytes]:
        return [
            x.immediate(x.REG_1, attr(x.NFTA_DATA_VALUE, x.address(self.ip, family))),
            x.immediate(x.REG_2, attr(x.NFTA_DATA_VALUE, x.port(self.port))),
            _nat(family, x.REG_2),
        ]


@dataclass(frozen=True, slots=True)
class DnatMap:
    """``dnat to numgen random mod N [offset B] map @m``: the key picks an
    ``address . port`` (one register pair) out of an endpoint map."""

    mod: int
    offset: int
    map_name: str

    def text(self) -> str:
        offset = f" offset {self.offset}" if self.offset else ""
        return f"dnat to numgen random mod {self.mod}{offset} map @{self.map_name}"

    def encode(self, family: IPFamily) -> list[bytes]:
        if not (0 < self.mod <= 0xFFFFFFFF and 0 <= self.offset <= 0xFFFFFFFF):
            raise Unsupported("dnat map")
        ng = [be32(1, x.REG_1), be32(2, self.mod), be32(3, 1)]
        if self.offset:
            ng.append(be32(4, self.offset))  # NFTA_NG_OFFSET
        # NFTA_LOOKUP_SET 1, SREG 2, DREG 3
        lookup = x.expr("lookup", strz(1, self.map_name), be32(2, x.REG_1), be32(3, x.REG_1))
        # the port follows the address: 32-bit register 9 (bytes 4..7), or register 2
        port_reg = x.REG32_01 if family is IPFamily.V4 else x.REG_2
        return [x.expr("numgen", *ng), lookup, _nat(family, port_reg)]


@dataclass(frozen=True, slots=True)
class Masquerade:
    """``masquerade fully-random``."""

    def text(self) -> str:
        return "masquerade fully-random"

    def encode(self, family: IPFamily) -> list[bytes]:
        raise Unsupported("masquerade")


@dataclass(frozen=True, slots=True)
class Reject:
    """``reject``."""

    def text(self) -> str:
        return "reject"

    def encode(self, family: IPFamily) -> list[bytes]:
        raise Unsupported("reject")


# ---------------------------------------------------------------------------------------
# verdicts

_VERDICT_CODES = {"drop": x.NF_DROP, "accept": x.NF_ACCEPT, "jump": x.NFT_JUMP, "goto": x.NFT_GOTO}


@dataclass(frozen=True, slots=True)
class Verdict:
    """``goto chain``, ``jump chain``, ``drop`` or ``accept``: a rule's last statement,
    or a verdict map element's data."""

    kind: str
    chain: str = ""

    def text(self) -> str:
        return f"{self.kind} {self.chain}" if self.chain else self.kind

    def data(self) -> bytes:
        """The verdict as data (NFTA_DATA_VERDICT)."""
        code = _VERDICT_CODES.get(self.kind)
        if code is None or bool(self.chain) != (self.kind in ("jump", "goto")):
            raise Unsupported(f"verdict {self.text()!r}")
        return x.verdict(code, self.chain)

    def encode(self, family: IPFamily) -> list[bytes]:
        return [x.immediate(x.VERDICT_REG, self.data())]


@functools.cache
def l4proto(protocol: str) -> L4ProtoMatch:
    """``meta l4proto tcp`` (one object per protocol)."""
    return L4ProtoMatch(protocol)


FIB_LOCAL_SOURCE = FibLocal()
MASQUERADE = Masquerade()
REJECT = Reject()


def goto(chain: str) -> Verdict:
    return Verdict("goto", chain)


def jump(chain: str) -> Verdict:
    return Verdict("jump", chain)


DROP = Verdict("drop")


# ---------------------------------------------------------------------------------------
# rules

NFTA_RULE_TABLE = 1
NFTA_RULE_CHAIN = 2
NFTA_RULE_EXPRESSIONS = 4
NFTA_RULE_USERDATA = 7


@dataclass(frozen=True, slots=True)
class Rule:
    """A rule: statements, then an optional comment. Equal rules are equal objects; the
    text is built once per object."""

    statements: tuple[Statement, ...]
    comment: str = ""
    _text: str = field(default="", init=False, repr=False, compare=False)

    def text(self) -> str:
        out = self._text
        if not out:
            out = " ".join([s.text() for s in self.statements])
            if self.comment:
                out += f' comment "{safe_comment(self.comment)}"'
            object.__setattr__(self, "_text", out)  # a cache: equality and hash ignore it
        return out

    def references(self, set_name: str) -> bool:
        """Whether a statement looks ``set_name`` up or updates it."""
        for s in self.statements:
            if set_name in (getattr(s, "set_name", None), getattr(s, "map_name", None)):
                return True
        return False

    def expressions(self, family: IPFamily) -> list[bytes]:
        out: list[bytes] = []
        last = len(self.statements) - 1
        for i, s in enumerate(self.statements):
            if isinstance(s, Verdict) and i != last:
                raise Unsupported("statements after a verdict")
            out.extend(s.encode(family))
        return out

    def encode(self, table: str, chain: str, family: IPFamily) -> bytes:
        """The attributes of this rule appended to ``chain``."""
        parts = [
            strz(NFTA_RULE_TABLE, table),
            strz(NFTA_RULE_CHAIN, chain),
            nest(NFTA_RULE_EXPRESSIONS, *self.expressions(family)),
        ]
        if self.comment:
            parts.append(attr(NFTA_RULE_USERDATA, x.comment(safe_comment(self.comment))))
        return b"".join(parts)


def rule(*statements: Statement, comment: str = "") -> Rule:
    return Rule(statements, comment)


# ---------------------------------------------------------------------------------------
# set and map types, element keys and data

Field = str | int
"""One field of an element key or data: an address or protocol name as text, a port or
an integer as a number."""
ElementKey = tuple[Field, ...]


def field_text(fields: ElementKey) -> str:
    """``10.96.0.1 . tcp . 80`` (the common lengths spelled out: a full sync prints
    every element)."""
    n = len(fields)
    if n == 1:
        return f"{fields[0]}"
    if n == 2:
        return f"{fields[0]} . {fields[1]}"
    if n == 3:
        return f"{fields[0]} . {fields[1]} . {fields[2]}"
    return " . ".join(map(str, fields))


def _field(kind: str, value: Field, family: IPFamily) -> bytes:
    if kind in ("ipv4_addr", "ipv6_addr"):
        want = IPFamily.V4 if kind == "ipv4_addr" else IPFamily.V6
        if want is not family:
            raise Unsupported(f"{kind} in a {family} table")
        return x.address(str(value), family)
    if kind == "inet_proto" and isinstance(value, str):
        return bytes([x.protocol(value)])
    if kind == "inet_service" and isinstance(value, int):
        return x.port(value)
    if kind == "mark" and isinstance(value, int):  # numgen's result, in host byte order
        if not 0 <= value <= 0xFFFFFFFF:
            raise Unsupported(f"integer {value!r}")
        return x.host32(value)
    raise Unsupported(f"{value!r} as {kind!r}")


def _concat(kinds: tuple[str, ...], values: ElementKey, family: IPFamily) -> bytes:
    """A key or map data: each field of a concatenation padded to 4 bytes, as nft does."""
    if len(kinds) != len(values):
        raise Unsupported(f"{field_text(values)!r} does not fit type {' . '.join(kinds)!r}")
    fields = [_field(k, v, family) for k, v in zip(kinds, values, strict=True)]
    if len(fields) == 1:
        return fields[0]
    return b"".join(f + b"\0" * (-len(f) % 4) for f in fields)


@dataclass(frozen=True, slots=True)
class SetType:
    """A set's key type, and a map's data type (``ipv4_addr . inet_proto . inet_service :
    verdict``)."""

    key: tuple[str, ...]
    data: tuple[str, ...] = ()

    @property
    def is_map(self) -> bool:
        return bool(self.data)

    def text(self) -> str:
        out = " . ".join(self.key)
        return f"{out} : {' . '.join(self.data)}" if self.data else out

    def encode_key(self, key: ElementKey, family: IPFamily) -> bytes:
        return _concat(self.key, key, family)

    def encode_data(self, value: ElementData, family: IPFamily) -> bytes:
        if isinstance(value, Verdict):
            if self.data != ("verdict",):
                raise Unsupported(f"a verdict in a map of {self.text()!r}")
            return value.data()
        return attr(x.NFTA_DATA_VALUE, _concat(self.data, value, family))


ElementData = Verdict | ElementKey
"""A map element's data: a verdict, or fields (``10.244.1.5 . 8080``)."""


@dataclass(frozen=True, slots=True)
class EndpointMapTypeof:
    """``typeof numgen random mod 1 : ip daddr . tcp dport``: an endpoint map declared by
    the expressions that use it (no type name fits numgen's result)."""

    family: IPFamily
    protocol: str

    def text(self) -> str:
        return f"numgen random mod 1 : {_ipx(self.family)} daddr . {self.protocol} dport"
