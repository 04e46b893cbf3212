"""A small ctnetlink client: dump a family's UDP conntrack entries, delete entries by
their original tuple, hundreds per datagram.

Why not pyroute2: it decodes every attribute of every entry into generic objects and
runs an asyncio loop per message, about 0.85 ms per entry; at 262,144 UDP entries (a full
table) a dump took 218 s on the agent's sync thread. Here the kernel filters on the
protocol, and each entry costs a few microseconds of Python (262,144 entries: ~2 s,
most of it the kernel's own work and making the caller's objects):

* The dump request asks for UDP only (``CTA_FILTER`` with ``CTA_FILTER_ORIG_FLAGS`` =
  protocol number, Linux 5.8+). Older kernels ignore the filter and send every entry of
  the family; the parser then keeps the UDP ones. A kernel that refuses the filter gets
  the request again without it.
* Only the two tuples are read. The kernel writes them first (``ctnetlink_fill_info``:
  ``CTA_TUPLE_ORIG`` then ``CTA_TUPLE_REPLY``, each ``{CTA_TUPLE_IP {SRC, DST},
  CTA_TUPLE_PROTO {NUM, SRC_PORT, DST_PORT}}``), so for an entry of the default zone the
  bytes from the first tuple on are a fixed template except for the addresses and ports.
  One masked comparison checks the whole template (attribute headers, the protocol
  number), one ``struct`` unpack reads the values. Anything else (another zone, an old
  kernel without ``NLA_F_NESTED`` on nests, a protocol that slipped through) goes through
  a generic walk of the attributes.

Deletes carry ``NLM_F_ACK``: every message answers, with 0 or an errno, matched to its
request by sequence number. The kernel handles the messages of one ``sendmsg`` before it
returns, so a batch costs one system call plus one read per answer.

A socket belongs to the network namespace it was created in; for another namespace it is
created on a throwaway thread that entered it (:func:`proxy.host.netns.run_in_netns`),
as :class:`proxy.kernel.nfnetlink.NfTablesSocket` does: the caller never moves.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from proxy.kernel.nfnetlink import (
    ATTR,
    HDR,
    NFGEN,
    NLA_TYPE_MASK,
    NLM_F_ACK,
    NLM_F_DUMP,
    NLM_F_DUMP_INTR,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NetfilterSocket,
    attr,
    error_code,
    frame,
    nest,
    pad,
)

NFNL_SUBSYS_CTNETLINK = 1
NLMSG_MIN_TYPE = 0x10

# enum cntl_msg_types
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_GET = 1
IPCTNL_MSG_CT_DELETE = 2

# enum ctattr_type
CTA_TUPLE_ORIG = 1
CTA_TUPLE_REPLY = 2
CTA_STATUS = 3
CTA_PROTOINFO = 4
CTA_TIMEOUT = 7
CTA_ZONE = 18
CTA_FILTER = 25

# enum ctattr_tuple, ctattr_ip, ctattr_l4proto
CTA_TUPLE_IP = 1
CTA_TUPLE_PROTO = 2
CTA_TUPLE_ZONE = 3
CTA_IP_V4_SRC = 1
CTA_IP_V4_DST = 2
CTA_IP_V6_SRC = 3
CTA_IP_V6_DST = 4
CTA_PROTO_NUM = 1
CTA_PROTO_SRC_PORT = 2
CTA_PROTO_DST_PORT = 3

# enum ctattr_filter; the flags are the kernel's (nf_conntrack_netlink.c), not in uapi
CTA_FILTER_ORIG_FLAGS = 1
CTA_FILTER_FLAG_PROTO_NUM = 1 << 3

# nf_conntrack_common.h
IPS_SEEN_REPLY = 1 << 1
IPS_ASSURED = 1 << 2
IPS_CONFIRMED = 1 << 3

_IP_ATTRS: dict[int, tuple[int, int]] = {
    socket.AF_INET: (CTA_IP_V4_SRC, CTA_IP_V4_DST),
    socket.AF_INET6: (CTA_IP_V6_SRC, CTA_IP_V6_DST),
}
_ADDR_LEN: dict[int, int] = {socket.AF_INET: 4, socket.AF_INET6: 16}
_PORT = struct.Struct(">H")

T = TypeVar("T")

Flow = tuple[str, str, int, int, str, int]
"""One UDP entry: original source, destination, source port, destination port; reply
source and source port (where the flow was actually sent)."""


class CtNetlinkError(OSError):
    """The kernel refused a ctnetlink request (``errno`` says why)."""

    def __init__(self, code: int, what: str) -> None:
        super().__init__(code, f"ctnetlink {what}: {os.strerror(code)}")


# ---------------------------------------------------------------------------------------
# messages


def tuple_attrs(family: int, src: str, dst: str, proto: int, sport: int, dport: int) -> bytes:
    """The content of a ``CTA_TUPLE_ORIG``/``CTA_TUPLE_REPLY`` nest (ports: TCP/UDP)."""
    src_kind, dst_kind = _IP_ATTRS[family]
    return nest(
        CTA_TUPLE_IP,
        attr(src_kind, socket.inet_pton(family, src)),
        attr(dst_kind, socket.inet_pton(family, dst)),
    ) + nest(
        CTA_TUPLE_PROTO,
        attr(CTA_PROTO_NUM, bytes([proto])),
        attr(CTA_PROTO_SRC_PORT, _PORT.pack(sport)),
        attr(CTA_PROTO_DST_PORT, _PORT.pack(dport)),
    )


def delete_payload(family: int, src: str, dst: str, proto: int, sport: int, dport: int) -> bytes:
    """``IPCTNL_MSG_CT_DELETE`` of the entry with this original tuple. (Never send a delete
    without a tuple: the kernel reads that as "flush the table".)"""
    return nest(CTA_TUPLE_ORIG, tuple_attrs(family, src, dst, proto, sport, dport))


# the dump filter: original tuple's protocol number = UDP
UDP_FILTER = nest(
    CTA_TUPLE_ORIG, nest(CTA_TUPLE_PROTO, attr(CTA_PROTO_NUM, bytes([socket.IPPROTO_UDP])))
) + nest(CTA_FILTER, attr(CTA_FILTER_ORIG_FLAGS, struct.pack("=I", CTA_FILTER_FLAG_PROTO_NUM)))


@dataclass(frozen=True)
class Request:
    """One ctnetlink request sent by :meth:`CtNetlinkSocket.send`."""

    type: int
    """``IPCTNL_MSG_*``."""
    family: int
    """``AF_INET`` or ``AF_INET6`` (the nfgenmsg family)."""
    payload: bytes
    flags: int = 0
    """Netlink flags beyond ``NLM_F_REQUEST | NLM_F_ACK`` (e.g. ``NLM_F_CREATE``)."""


# ---------------------------------------------------------------------------------------
# templates: the fixed bytes around the addresses and ports, found with the builders above
# (so that they cannot disagree with them) by building a message twice, every address and
# port byte 0x00 and then 0xff, and comparing


_EXTREMES: dict[int, tuple[str, str]] = {
    socket.AF_INET: ("0.0.0.0", "255.255.255.255"),
    socket.AF_INET6: ("::", ":".join(["ffff"] * 8)),
}


def _runs(a: bytes, b: bytes) -> list[tuple[int, int]]:
    """(start, length) of each run of bytes where ``a`` and ``b`` differ."""
    runs: list[tuple[int, int]] = []
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if x == y:
            continue
        if runs and runs[-1][0] + runs[-1][1] == i:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((i, 1))
    return runs


@dataclass(frozen=True)
class _Layout:
    """The bytes of one family's UDP entry in a dump, from the first tuple on, as the
    kernel writes them for an entry of the default zone: ``int.from_bytes(bytes) & mask
    == template`` checks every attribute header and the protocol number (UDP) at once;
    ``values`` reads orig src, dst, sport, dport, reply src, sport."""

    size: int
    mask: int
    template: int
    values: struct.Struct
    ntop: Callable[[bytes], str]


def _layout(family: int) -> _Layout:
    udp = socket.IPPROTO_UDP

    def both(ip: str, port: int) -> bytes:
        return nest(CTA_TUPLE_ORIG, tuple_attrs(family, ip, ip, udp, port, port)) + nest(
            CTA_TUPLE_REPLY, tuple_attrs(family, ip, ip, udp, port, port)
        )

    zero, ones = _EXTREMES[family]
    low, high = both(zero, 0), both(ones, 0xFFFF)
    mask = bytes(0xFF if x == y else 0 for x, y in zip(low, high, strict=True))
    runs = _runs(low, high)
    alen = _ADDR_LEN[family]
    # orig src, dst, sport, dport; reply src, dst, sport, dport
    if [n for _, n in runs] != [alen, alen, 2, 2] * 2:
        raise RuntimeError(f"unexpected tuple layout: {runs}")
    fmt, at = ">", 0
    for start, n in (runs[0], runs[1], runs[2], runs[3], runs[4], runs[6]):
        fmt += f"{start - at}x" + ("H" if n == 2 else f"{n}s")
        at = start + n
    ntop: Callable[[bytes], str] = (
        socket.inet_ntoa
        if family == socket.AF_INET
        else lambda raw: socket.inet_ntop(socket.AF_INET6, raw)
    )
    return _Layout(
        size=len(low),
        mask=int.from_bytes(mask, "little"),
        template=int.from_bytes(low, "little"),
        values=struct.Struct(fmt),
        ntop=ntop,
    )


class _DeleteBody:
    """``nfgenmsg + delete_payload(…)`` of one UDP entry of one family, from the constant
    chunks between its addresses and ports (~1 µs instead of ~10)."""

    def __init__(self, family: int) -> None:
        self.family = family
        udp = socket.IPPROTO_UDP
        zero, ones = _EXTREMES[family]
        low = NFGEN.pack(family, 0, 0) + delete_payload(family, zero, zero, udp, 0, 0)
        high = NFGEN.pack(family, 0, 0) + delete_payload(family, ones, ones, udp, 0xFFFF, 0xFFFF)
        runs = _runs(low, high)
        if [n for _, n in runs] != [_ADDR_LEN[family]] * 2 + [2, 2]:
            raise RuntimeError(f"unexpected delete message layout: {runs}")
        bounds = [0, *(x for start, n in runs for x in (start, start + n)), len(low)]
        self.chunks = [low[bounds[i] : bounds[i + 1]] for i in range(0, len(bounds), 2)]

    def build(self, src: str, dst: str, sport: int, dport: int) -> bytes:
        c, pton, port = self.chunks, socket.inet_pton, _PORT.pack
        return b"".join(
            (
                c[0],
                pton(self.family, src),
                c[1],
                pton(self.family, dst),
                c[2],
                port(sport),
                c[3],
                port(dport),
                c[4],
            )
        )


_LAYOUTS: dict[int, _Layout] = {af: _layout(af) for af in _EXTREMES}
_DELETE_BODIES: dict[int, _DeleteBody] = {af: _DeleteBody(af) for af in _EXTREMES}
_ERROR = struct.Struct("=IHHIIi")  # nlmsghdr + nlmsgerr.error


# ---------------------------------------------------------------------------------------
# parsing a dump


def _attributes(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, payload start, payload end) of each attribute in ``data[start:end]``."""
    while start + ATTR.size <= end:
        size, kind = ATTR.unpack_from(data, start)
        if size < ATTR.size or start + size > end:
            return
        yield kind & NLA_TYPE_MASK, start + ATTR.size, start + size
        start += pad(size)


_Tuple = tuple[bytes | None, bytes | None, int | None, int | None, int | None]


def _tuple(data: bytes, start: int, end: int) -> _Tuple:
    """(src, dst, protocol, sport, dport) of a tuple nest; None where absent."""
    src = dst = None
    proto = sport = dport = None
    for kind, a, b in _attributes(data, start, end):
        if kind == CTA_TUPLE_IP:
            for k, x, y in _attributes(data, a, b):
                if k in (CTA_IP_V4_SRC, CTA_IP_V6_SRC):
                    src = data[x:y]
                elif k in (CTA_IP_V4_DST, CTA_IP_V6_DST):
                    dst = data[x:y]
        elif kind == CTA_TUPLE_PROTO:
            for k, x, y in _attributes(data, a, b):
                if k == CTA_PROTO_NUM and y > x:
                    proto = data[x]
                elif k == CTA_PROTO_SRC_PORT and y - x >= 2:
                    sport = _PORT.unpack_from(data, x)[0]
                elif k == CTA_PROTO_DST_PORT and y - x >= 2:
                    dport = _PORT.unpack_from(data, x)[0]
    return src, dst, proto, sport, dport


def parse_entry(data: bytes, start: int, end: int, family: int) -> Flow | None:
    """The flow of one entry whose attributes are ``data[start:end]`` (after the
    nfgenmsg), by walking its attributes; None unless it is a complete UDP entry of
    ``family``."""
    orig = reply = None
    for kind, a, b in _attributes(data, start, end):
        if kind == CTA_TUPLE_ORIG:
            orig = _tuple(data, a, b)
        elif kind == CTA_TUPLE_REPLY:
            reply = _tuple(data, a, b)
        if orig is not None and reply is not None:
            break
    if orig is None or reply is None:
        return None
    osrc, odst, proto, osport, odport = orig
    rsrc, _, _, rsport, _ = reply
    alen = _ADDR_LEN[family]
    if proto != socket.IPPROTO_UDP or osport is None or odport is None or rsport is None:
        return None
    if osrc is None or odst is None or rsrc is None:
        return None
    if not len(osrc) == len(odst) == len(rsrc) == alen:
        return None
    ntop = _LAYOUTS[family].ntop
    return ntop(osrc), ntop(odst), osport, odport, ntop(rsrc), rsport


class UdpDump(Generic[T]):
    """The answer to one dump request of one family, fed datagram by datagram; each UDP
    entry becomes ``make(orig_src, orig_dst, orig_sport, orig_dport, reply_src,
    reply_sport)`` (see :data:`Flow`)."""

    def __init__(self, family: int, seq: int, make: Callable[[str, str, int, int, str, int], T]):
        self.family = family
        self.seq = seq
        self.make = make
        self.flows: list[T] = []
        self.returned = 0
        """Entries the kernel sent, before our own UDP check (the kernel's filter at work:
        equal to ``len(flows)`` on Linux 5.8+)."""
        self.interrupted = False
        """The kernel flagged the dump ``NLM_F_DUMP_INTR`` (the table changed meanwhile)."""
        self.done = False
        self.error = 0
        """The errno the kernel ended the dump with (0: none)."""
        self._names: dict[bytes, str] = {}
        """Each address's text, made once: a table holds few distinct addresses, and one
        string per address instead of three per entry saves ~40 MB at 262,144 entries."""

    def _name(self, raw: bytes) -> str:
        text = self._names[raw] = _LAYOUTS[self.family].ntop(raw)
        return text

    def feed(self, data: bytes) -> None:
        """Take one datagram of the answer (messages of other requests are skipped)."""
        # the hot loop of a dump (~2 µs per entry): everything it uses is a local name
        layout = _LAYOUTS[self.family]
        n, mask, template = layout.size, layout.mask, layout.template
        needed = HDR.size + NFGEN.size + n
        unpack_header, unpack_values = HDR.unpack_from, layout.values.unpack_from
        from_bytes, append, make = int.from_bytes, self.flows.append, self.make
        known, name = self._names.get, self._name
        family, seq, returned = self.family, self.seq, 0
        at, end = 0, len(data)
        while at + HDR.size <= end:
            size, mtype, flags, mseq, _pid = unpack_header(data, at)
            if size < HDR.size:
                break
            if mseq == seq:
                if flags & NLM_F_DUMP_INTR:
                    self.interrupted = True
                if mtype >= NLMSG_MIN_TYPE:
                    returned += 1
                    p = at + HDR.size + NFGEN.size
                    if size >= needed and from_bytes(data[p : p + n], "little") & mask == template:
                        osrc, odst, osport, odport, rsrc, rsport = unpack_values(data, p)
                        append(
                            make(
                                known(osrc) or name(osrc),
                                known(odst) or name(odst),
                                osport,
                                odport,
                                known(rsrc) or name(rsrc),
                                rsport,
                            )
                        )
                    else:
                        flow = parse_entry(data, p, at + size, family)
                        if flow is not None:
                            append(make(*flow))
                elif mtype == NLMSG_DONE:
                    self.done = True
                    if size >= HDR.size + 4:
                        self.error = error_code(data[at + HDR.size : at + size])
                elif mtype == NLMSG_ERROR:
                    self.done = True
                    self.error = error_code(data[at + HDR.size : at + size])
            at += (size + 3) & ~3
        self.returned += returned


# ---------------------------------------------------------------------------------------
# the socket


class CtNetlinkSocket(NetfilterSocket):
    """One netlink socket to ctnetlink (see
    :class:`~proxy.kernel.nfnetlink.NetfilterSocket`)."""

    RCVBUF = 1 << 23
    """Receive buffer: room for the answers of many batches."""
    RCVBUF_FORCE = True
    BATCH = 256
    """Requests per ``sendmsg``: their answers need ~0.5 MiB of receive buffer."""
    DATAGRAM = 1 << 16
    """Bytes per ``sendmsg`` at most (the kernel refuses more than its send buffer)."""
    RECV = 1 << 16
    """Bytes per read (the kernel fills dump datagrams up to 32 KiB)."""

    def dump_udp(
        self, family: int, make: Callable[[str, str, int, int, str, int], T]
    ) -> UdpDump[T]:
        """Every UDP entry of ``family`` (``AF_INET``/``AF_INET6``), each made by ``make``
        (see :class:`UdpDump`). Raises :class:`CtNetlinkError` when the kernel refuses
        the dump."""
        try:
            return self._dump(family, make, UDP_FILTER)
        except CtNetlinkError as exc:
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
        return self._dump(family, make, b"")  # a kernel that refuses the filter

    def _dump(
        self, family: int, make: Callable[[str, str, int, int, str, int], T], payload: bytes
    ) -> UdpDump[T]:
        seq = self._next_seq(1)
        mtype = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET
        self._sock.sendall(frame(mtype, NLM_F_REQUEST | NLM_F_DUMP, seq, family, payload))
        dump = UdpDump(family, seq, make)
        while not dump.done:
            dump.feed(self._sock.recv(self.RECV))
        if dump.error:
            raise CtNetlinkError(dump.error, "dump")
        return dump

    def delete(self, family: int, flows: Iterable[tuple[str, str, int, int]]) -> list[int]:
        """Delete UDP entries by original ``(src, dst, sport, dport)``; the errno of each
        (0: deleted, ``ENOENT``: there was no such entry)."""
        mtype = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE
        flags = NLM_F_REQUEST | NLM_F_ACK
        body = _DELETE_BODIES[family].build
        return self._acked([(mtype, flags, body(*flow)) for flow in flows])

    def send(self, requests: Sequence[Request]) -> list[int]:
        """Send requests, :attr:`BATCH` per datagram, each with ``NLM_F_ACK``; the errno
        of each (0: done). An answer the socket had no room for counts as ``ENOBUFS``."""
        return self._acked(
            [
                (
                    (NFNL_SUBSYS_CTNETLINK << 8) | r.type,
                    NLM_F_REQUEST | NLM_F_ACK | r.flags,
                    NFGEN.pack(r.family, 0, 0) + r.payload,
                )
                for r in requests
            ]
        )

    def _acked(self, messages: Sequence[tuple[int, int, bytes]]) -> list[int]:
        """(netlink type, flags, body after the nlmsghdr) of each message: the errno of
        each."""
        results: list[int] = []
        batch: list[tuple[int, int, bytes]] = []
        size = 0
        for message in messages:
            length = HDR.size + len(message[2])
            if batch and (len(batch) == self.BATCH or size + length > self.DATAGRAM):
                results += self._batch(batch)
                batch, size = [], 0
            batch.append(message)
            size += length
        if batch:
            results += self._batch(batch)
        return results

    def _batch(self, batch: Sequence[tuple[int, int, bytes]]) -> list[int]:
        seq0 = self._next_seq(len(batch))
        pack = HDR.pack
        self._sock.sendall(
            b"".join(
                pack(HDR.size + len(body), mtype, flags, seq, 0) + body
                for seq, (mtype, flags, body) in enumerate(batch, seq0)
            )
        )
        results = [-1] * len(batch)
        pending, lost = len(batch), False
        while pending:
            try:
                # every request answers once, unless the socket had no room (ENOBUFS):
                # after that, read only what is there
                data = self._sock.recv(self.RECV, socket.MSG_DONTWAIT if lost else 0)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                lost = True
                continue
            at = 0
            while at + _ERROR.size <= len(data):
                size, mtype, _flags, seq, _pid, code = _ERROR.unpack_from(data, at)
                if size < HDR.size:
                    break
                i = seq - seq0
                if mtype == NLMSG_ERROR and 0 <= i < len(batch) and results[i] < 0:
                    results[i] = -code
                    pending -= 1
                at += pad(size)
        return [errno.ENOBUFS if r < 0 else r for r in results]
