"""nf_tables expressions and values as netlink attributes (pure: no I/O).

The building blocks :mod:`proxy.nftables.statements` encodes its statements with, written
the way nft 1.0.6 writes them (the same expressions, registers and byte orders:
``nft --debug=netlink`` shows them).
"""

from __future__ import annotations

import ipaddress
import struct

from proxy.kernel.nfnetlink import attr, be32, nest, strz
from proxy.model import IPFamily


class Unsupported(ValueError):
    """Something the netlink encoding does not cover (nft handles it)."""


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

META_MARK = 3
META_L4PROTO = 16

SADDR = {IPFamily.V4: (12, 4), IPFamily.V6: (8, 16)}
DADDR = {IPFamily.V4: (16, 4), IPFamily.V6: (24, 16)}
"""Offset and length of the source and destination address in the network header."""


# ---------------------------------------------------------------------------------------
# values


def address(text: str, family: IPFamily) -> bytes:
    ip = ipaddress.ip_address(text)
    if IPFamily.of(ip) is not family:
        raise Unsupported(f"{text} is not an address of family {family}")
    return ip.packed


def protocol(name: str) -> int:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise Unsupported(f"protocol {name!r}") from None


def port(value: int) -> bytes:
    if not 0 <= value <= 0xFFFF:
        raise Unsupported(f"port {value!r}")
    return struct.pack(">H", value)


def host32(value: int) -> bytes:
    """A 32-bit value as nft puts it in a register: host byte order."""
    return struct.pack("=I", value & 0xFFFFFFFF)


def verdict(code: int, chain: str = "") -> bytes:
    """A verdict as data (an immediate's or a verdict map element's)."""
    inner = be32(NFTA_VERDICT_CODE, code)
    if chain:
        inner += strz(NFTA_VERDICT_CHAIN, chain)
    return nest(NFTA_DATA_VERDICT, inner)


def comment(text: str) -> bytes:
    """nft's user data holding a comment (one TLV: type 0, length, text, NUL)."""
    raw = text.encode() + b"\0"
    if len(raw) > COMMENT_MAX + 1:
        raise Unsupported("comment longer than nft allows")
    return bytes([0, len(raw)]) + raw


# ---------------------------------------------------------------------------------------
# expressions


def expr(name: str, *attrs: bytes) -> bytes:
    return nest(NFTA_LIST_ELEM, strz(NFTA_EXPR_NAME, name), nest(NFTA_EXPR_DATA, *attrs))


def cmp(data: bytes, op: int = 0, reg: int = REG_1) -> bytes:
    # NFTA_CMP_SREG 1, NFTA_CMP_OP 2 (eq 0, neq 1), NFTA_CMP_DATA 3
    return expr("cmp", be32(1, reg), be32(2, op), nest(3, attr(NFTA_DATA_VALUE, data)))


def immediate(reg: int, data: bytes) -> bytes:
    # NFTA_IMMEDIATE_DREG 1, NFTA_IMMEDIATE_DATA 2
    return expr("immediate", be32(1, reg), nest(2, data))


def payload(offset: int, length: int) -> bytes:
    # NFTA_PAYLOAD_DREG 1, BASE 2 (network header 1), OFFSET 3, LEN 4
    return expr("payload", be32(1, REG_1), be32(2, 1), be32(3, offset), be32(4, length))


def meta_load(key: int) -> bytes:
    # NFTA_META_DREG 1, NFTA_META_KEY 2
    return expr("meta", be32(2, key), be32(1, REG_1))


def bitwise(length: int, mask: bytes, xor: bytes) -> bytes:
    """Register 1 := (register 1 & mask) ^ xor."""
    # NFTA_BITWISE_SREG 1, DREG 2, LEN 3, MASK 4, XOR 5
    return expr(
        "bitwise",
        be32(1, REG_1),
        be32(2, REG_1),
        be32(3, length),
        nest(4, attr(NFTA_DATA_VALUE, mask)),
        nest(5, attr(NFTA_DATA_VALUE, xor)),
    )
