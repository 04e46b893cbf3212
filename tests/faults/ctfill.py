"""Fill a network namespace's conntrack table by creating entries over ctnetlink.

The conntrack table limit (``net.netfilter.nf_conntrack_max``) is global and read-only in
child namespaces, while the entry count is per namespace: a namespace's table is "full"
when it holds ``nf_conntrack_max`` entries. Sending that many packets from a client takes
minutes in Python and the kernel would evict them (unreplied entries are not ASSURED, and
a full table drops a non-assured entry to make room: ``early_drop``). So the entries are
created directly, the way ``conntrack -I`` does, but hundreds per netlink datagram: UDP,
status ASSURED|SEEN_REPLY (never evicted early), a long timeout, between addresses of the
benchmarking range 198.18.0.0/15 that nothing in the lab uses. Run inside the namespace::

    ip netns exec NS python -m tests.faults.ctfill --count 262144 --timeout 600

It prints one JSON line: how many entries were created, how many the kernel refused and
with which errors, the namespace's count afterwards and the seconds it took.
"""

from __future__ import annotations

import argparse
import errno
import json
import socket
import struct
import sys
import time
from collections import Counter
from pathlib import Path

from proxy.kernel.nfnetlink import NLA_F_NESTED, attr

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLMSG_ERROR = 0x2
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_PROTOINFO, CTA_TIMEOUT = 1, 2, 3, 4, 7
CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE = 1, 1
TCP_CONNTRACK_ESTABLISHED = 3
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST = 1, 2
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
IPS_ASSURED, IPS_CONFIRMED = 1 << 2, 1 << 3
SRC_BASE = int.from_bytes(socket.inet_aton("198.18.0.0"), "big")
DST_BASE = int.from_bytes(socket.inet_aton("198.19.0.0"), "big")
COUNT_FILE = Path("/proc/sys/net/netfilter/nf_conntrack_count")


def _tuple(kind: int, src: bytes, dst: bytes, sport: int, dport: int, proto_num: int) -> bytes:
    ip = attr(CTA_IP_V4_SRC, src) + attr(CTA_IP_V4_DST, dst)
    proto = (
        attr(CTA_PROTO_NUM, bytes([proto_num]))
        + attr(CTA_PROTO_SRC_PORT, struct.pack("!H", sport))
        + attr(CTA_PROTO_DST_PORT, struct.pack("!H", dport))
    )
    return attr(
        kind | NLA_F_NESTED,
        attr(CTA_TUPLE_IP | NLA_F_NESTED, ip) + attr(CTA_TUPLE_PROTO | NLA_F_NESTED, proto),
    )


def entry_message(index: int, timeout: int, seq: int, proto: str = "udp") -> bytes:
    """One IPCTNL_MSG_CT_NEW creating entry number ``index`` (distinct 5-tuples): UDP, or
    an ESTABLISHED TCP connection."""
    num = socket.IPPROTO_TCP if proto == "tcp" else socket.IPPROTO_UDP
    host, port = divmod(index, 50_000)
    src = (SRC_BASE + host).to_bytes(4, "big")
    dst = (DST_BASE + host).to_bytes(4, "big")
    sport, dport = 10_000 + port % 50_000, 53
    body = struct.pack("=BBH", socket.AF_INET, 0, 0)
    body += _tuple(CTA_TUPLE_ORIG, src, dst, sport, dport, num)
    body += _tuple(CTA_TUPLE_REPLY, dst, src, dport, sport, num)
    body += attr(CTA_STATUS, struct.pack("!I", IPS_ASSURED | IPS_CONFIRMED))
    body += attr(CTA_TIMEOUT, struct.pack("!I", timeout))
    if num == socket.IPPROTO_TCP:
        state = attr(CTA_PROTOINFO_TCP_STATE, bytes([TCP_CONNTRACK_ESTABLISHED]))
        body += attr(CTA_PROTOINFO | NLA_F_NESTED, attr(CTA_PROTOINFO_TCP | NLA_F_NESTED, state))
    kind = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW
    flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK
    return struct.pack("=IHHII", 16 + len(body), kind, flags, seq, 0) + body


def _drain(sock: socket.socket, errors: Counter[int], block: bool) -> int:
    """Read acknowledgements; returns how many arrived (errors counted by errno)."""
    acks = 0
    while True:
        try:
            data = sock.recv(1 << 20, 0 if block else socket.MSG_DONTWAIT)
        except BlockingIOError:
            return acks
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:  # acknowledgements were lost; go on
                errors[errno.ENOBUFS] += 1
                continue
            raise
        at = 0
        while at + 16 <= len(data):
            length, kind = struct.unpack_from("=IH", data, at)
            if kind == NLMSG_ERROR:
                (code,) = struct.unpack_from("=i", data, at + 16)
                acks += 1
                if code:
                    errors[-code] += 1
            at += (length + 3) & ~3
        block = False


class _Template:
    """``entry_message`` for many indexes, fast: one message patched in place (the
    offsets are found by building two messages and comparing them, then checked)."""

    def __init__(self, timeout: int, proto: str) -> None:
        self.base = bytearray(entry_message(0, timeout, 0, proto))

    def build(self, index: int, seq: int) -> bytes:
        host, port = divmod(index, 50_000)
        sport = 10_000 + port % 50_000
        msg = self.base
        struct.pack_into("=I", msg, 8, seq)
        src = (SRC_BASE + host).to_bytes(4, "big")
        dst = (DST_BASE + host).to_bytes(4, "big")
        # orig: src, dst, sport; reply: src=dst, dst=src, dport=sport (the layout of
        # entry_message: nlmsghdr 16, nfgenmsg 4, tuple 4, ip 4, then attributes)
        msg[32:36], msg[40:44], msg[60:62] = src, dst, struct.pack("!H", sport)
        msg[84:88], msg[92:96], msg[120:122] = dst, src, struct.pack("!H", sport)
        return bytes(msg)


def fill(count: int, timeout: int, proto: str = "udp", per_send: int = 512) -> dict[str, object]:
    start = time.monotonic()
    template = _Template(timeout, proto)
    for probe in (0, 1, 49_999, 50_000, 123_456, count - 1):
        if template.build(probe, 7) != entry_message(probe, timeout, 7, proto):
            raise AssertionError(f"message template differs from entry_message at {probe}")
    errors: Counter[int] = Counter()
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind((0, 0))
    acked = 0
    try:
        for first in range(0, count, per_send):
            batch = b"".join(
                template.build(i, i + 1) for i in range(first, min(count, first + per_send))
            )
            sock.send(batch)
            acked += _drain(sock, errors, block=True)
            # stop early once the kernel refuses everything (the table is full)
            if errors.get(errno.ENOMEM, 0) > 4 * per_send:
                break
        acked += _drain(sock, errors, block=False)
    finally:
        sock.close()
    refused = sum(n for code, n in errors.items() if code != errno.ENOBUFS)
    return {
        "requested": count,
        "acknowledged": acked,
        "refused": refused,
        "errors": {errno.errorcode.get(code, str(code)): n for code, n in errors.items()},
        "count_after": int(COUNT_FILE.read_text()),
        "seconds": round(time.monotonic() - start, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--timeout", type=int, default=600, help="entry timeout (s)")
    parser.add_argument("--proto", choices=("udp", "tcp"), default="udp")
    args = parser.parse_args(argv)
    print(json.dumps(fill(args.count, args.timeout, args.proto)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
