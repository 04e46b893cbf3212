"""A small nfnetlink client for nf_tables: one batched transaction per call, and dumps.

Why not always ``nft``: nft 1.0.6 loads its cache of every chain in the namespace before
any transaction that adds a rule or an element. At 10,000 services that is ~10,500
chains and 80-120 ms per run, whatever the size of the change. The kernel needs none of
it: a transaction naming its table, chains and sets is all it takes. So small,
incremental changes are sent as netlink messages directly (see ``nftwire``); full syncs
keep going through ``nft -f``.

A batch is ``BATCH_BEGIN, messages…, BATCH_END`` in one ``sendmsg``: the kernel applies
all of it or, on any error, none of it. It processes the batch before ``sendmsg``
returns, so every error reply is already queued when we read (as nft does, we ask for
no acks: only failures answer).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Self

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11

NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN = 0x10
NFNL_MSG_BATCH_END = 0x11

NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_CREATE = 0x400
NLM_F_APPEND = 0x800
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_DUMP_INTR = 0x10
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF

NFPROTO_UNSPEC = 0
NFPROTO_IPV4 = 2
NFPROTO_IPV6 = 10

# nf_tables message types
NFT_MSG_NEWTABLE = 0
NFT_MSG_GETTABLE = 1
NFT_MSG_NEWCHAIN = 3
NFT_MSG_GETCHAIN = 4
NFT_MSG_DELCHAIN = 5
NFT_MSG_NEWRULE = 6
NFT_MSG_GETRULE = 7
NFT_MSG_DELRULE = 8
NFT_MSG_NEWSET = 9
NFT_MSG_GETSET = 10
NFT_MSG_DELSET = 11
NFT_MSG_NEWSETELEM = 12
NFT_MSG_GETSETELEM = 13
NFT_MSG_DELSETELEM = 14

HDR = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
NFGEN = struct.Struct("=BBH")  # nfgenmsg: family, version, res_id (big endian)
ATTR = struct.Struct("=HH")


class NetlinkError(OSError):
    """The kernel refused a message (``index`` into the batch, -1 for the batch itself)."""

    def __init__(self, code: int, index: int, what: str = "") -> None:
        self.index = index
        self.what = what
        where = f" ({what})" if what else ""
        super().__init__(code, f"nf_tables refused message {index}{where}: {os.strerror(code)}")


# ---------------------------------------------------------------------------------------
# attributes


def pad(n: int) -> int:
    """``n`` rounded up to the netlink alignment (4 bytes)."""
    return (n + 3) & ~3


def attr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute (type, length, payload padded to 4 bytes)."""
    size = ATTR.size + len(payload)
    return ATTR.pack(size, kind) + payload + b"\0" * (pad(size) - size)


def nest(kind: int, *attrs: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(attrs))


def strz(kind: int, text: str) -> bytes:
    return attr(kind, text.encode() + b"\0")


def be32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack(">I", value & 0xFFFFFFFF))


def be64(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack(">Q", value))


def attrs(buf: bytes, offset: int = 0) -> dict[int, bytes]:
    """The attributes in ``buf`` from ``offset``, by type (nesting flag masked off)."""
    out: dict[int, bytes] = {}
    end = len(buf)
    while offset + ATTR.size <= end:
        size, kind = ATTR.unpack_from(buf, offset)
        if size < ATTR.size:
            break
        out[kind & NLA_TYPE_MASK] = buf[offset + ATTR.size : offset + size]
        offset += pad(size)
    return out


def text(value: bytes) -> str:
    return value.rstrip(b"\0").decode()


def u32(value: bytes) -> int:
    return int(struct.unpack(">I", value[:4])[0])


def u64(value: bytes) -> int:
    return int(struct.unpack(">Q", value[:8])[0])


# ---------------------------------------------------------------------------------------
# messages


@dataclass(frozen=True)
class Message:
    """One nf_tables request: ``NFT_MSG_*`` type, extra netlink flags, family, attributes."""

    type: int
    family: int
    payload: bytes
    flags: int = 0
    what: str = ""
    """What it does, for error messages (the nft statement it stands for)."""


def frame(msg_type: int, flags: int, seq: int, family: int, payload: bytes, res: int = 0) -> bytes:
    """One nfnetlink message: nlmsghdr, nfgenmsg (``res``: the res_id), payload."""
    body = NFGEN.pack(family, 0, socket.htons(res)) + payload
    return HDR.pack(HDR.size + len(body), msg_type, flags, seq, 0) + body


def batch_bytes(messages: Sequence[Message], first_seq: int = 1) -> bytes:
    """The batch as sent: begin, the messages (sequence numbers from ``first_seq + 1``),
    end."""
    sub = NFNL_SUBSYS_NFTABLES
    parts = [frame(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, first_seq, NFPROTO_UNSPEC, b"", sub)]
    for i, m in enumerate(messages, start=first_seq + 1):
        mtype = (NFNL_SUBSYS_NFTABLES << 8) | m.type
        parts.append(frame(mtype, NLM_F_REQUEST | m.flags, i, m.family, m.payload))
    end_seq = first_seq + len(messages) + 1
    parts.append(frame(NFNL_MSG_BATCH_END, NLM_F_REQUEST, end_seq, NFPROTO_UNSPEC, b"", sub))
    return b"".join(parts)


def _replies(data: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """(type, flags, seq, payload) of each netlink message in one datagram."""
    offset = 0
    while offset + HDR.size <= len(data):
        size, mtype, flags, seq, _pid = HDR.unpack_from(data, offset)
        if size < HDR.size:
            return
        yield mtype, flags, seq, data[offset + HDR.size : offset + size]
        offset += pad(size)


def error_code(payload: bytes) -> int:
    """The errno of an NLMSG_ERROR reply (0: an acknowledgement)."""
    return -int(struct.unpack_from("=i", payload)[0])


SO_RCVBUFFORCE = 33  # not in Python's socket module


class NetfilterSocket:
    """One NETLINK_NETFILTER socket, in the current network namespace or in ``netns`` (a
    socket keeps the namespace it was created in; no thread of this process changes
    namespace), with acks capped and a receive buffer of :attr:`RCVBUF`."""

    RCVBUF = 1 << 22
    RCVBUF_FORCE = False
    """Try SO_RCVBUFFORCE first (CAP_NET_ADMIN may go past net.core.rmem_max)."""

    def __init__(self, netns: str | None = None) -> None:
        def make() -> socket.socket:
            return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)

        if netns is not None:
            from proxy.host.netns import run_in_netns

            self._sock = run_in_netns(netns, make)
        else:
            self._sock = make()
        try:
            self._sock.bind((0, 0))
            self._sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            options = [socket.SO_RCVBUF]
            if self.RCVBUF_FORCE:
                options.insert(0, SO_RCVBUFFORCE)
            for option in options:  # the first the kernel takes
                try:
                    self._sock.setsockopt(socket.SOL_SOCKET, option, self.RCVBUF)
                    break
                except OSError:
                    continue
        except BaseException:
            self._sock.close()
            raise
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next_seq(self, n: int) -> int:
        """The first of ``n`` consecutive sequence numbers (never wrapping inside them)."""
        if self._seq + n >= 0x7FFFFFFF:
            self._seq = 0
        first = self._seq + 1
        self._seq += n
        return first


class NfTablesSocket(NetfilterSocket):
    """One netlink socket to nf_tables (see :class:`NetfilterSocket`)."""

    def _drain(self) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(self._sock.recv(1 << 20, socket.MSG_DONTWAIT))
            except BlockingIOError:
                return out

    def transact(self, messages: Sequence[Message]) -> None:
        """Apply ``messages`` as one transaction: all of them, or (raising
        :class:`NetlinkError` for the first refused one) none."""
        if not messages:
            return
        self._drain()  # nothing stale may be taken for this batch's answer
        first = self._next_seq(len(messages) + 2)
        self._sock.sendall(batch_bytes(messages, first))
        failures: list[tuple[int, int]] = []
        for data in self._drain():
            for mtype, _flags, seq, payload in _replies(data):
                if mtype != NLMSG_ERROR:
                    continue
                code = error_code(payload)
                if code:
                    failures.append((seq - first - 1, code))
        if failures:
            index, code = min(failures)
            what = messages[index].what if 0 <= index < len(messages) else "the batch"
            raise NetlinkError(code, index, what)

    def request(self, msg_type: int, family: int, payload: bytes = b"") -> dict[int, bytes]:
        """One get request; the attributes of the answer (:class:`NetlinkError` if none)."""
        seq = self._next_seq(1)
        mtype = (NFNL_SUBSYS_NFTABLES << 8) | msg_type
        self._sock.sendall(frame(mtype, NLM_F_REQUEST | NLM_F_ACK, seq, family, payload))
        found: dict[int, bytes] | None = None
        while True:
            for mtype, _flags, rseq, body in _replies(self._sock.recv(1 << 20)):
                if rseq != seq:
                    continue
                if mtype == NLMSG_ERROR:
                    code = error_code(body)
                    if code:
                        raise NetlinkError(code, 0, "get")
                    if found is None:
                        raise NetlinkError(errno.ENOENT, 0, "get")
                    return found
                found = attrs(body, NFGEN.size)

    def dump(self, msg_type: int, family: int, payload: bytes = b"") -> list[dict[int, bytes]]:
        """The attributes of every object a dump request returns (taken again when the
        ruleset changed while it was being dumped)."""
        for _ in range(10):
            objects, interrupted = self._dump_once(msg_type, family, payload)
            if not interrupted:
                return objects
        raise NetlinkError(errno.EINTR, 0, "dump: the ruleset kept changing")

    def _dump_once(
        self, msg_type: int, family: int, payload: bytes
    ) -> tuple[list[dict[int, bytes]], bool]:
        seq = self._next_seq(1)
        mtype = (NFNL_SUBSYS_NFTABLES << 8) | msg_type
        self._sock.sendall(frame(mtype, NLM_F_REQUEST | NLM_F_DUMP, seq, family, payload))
        objects: list[dict[int, bytes]] = []
        interrupted = False
        while True:
            for mtype, flags, rseq, body in _replies(self._sock.recv(1 << 20)):
                if rseq != seq:
                    continue
                interrupted = interrupted or bool(flags & NLM_F_DUMP_INTR)
                if mtype == NLMSG_DONE:
                    return objects, interrupted
                if mtype == NLMSG_ERROR:
                    code = error_code(body)
                    if code:
                        raise NetlinkError(code, 0, "dump")
                    return objects, interrupted
                objects.append(attrs(body, NFGEN.size))
