"""``explain --verify``: the packet goes through the kernel with tracing on, and what the
kernel did is held against the explanation.

:class:`Tracer` works in any network namespace holding our rules (a lab node, a netns
test's node): a table of ours sets ``nftrace`` on the packet (matched by its addresses,
protocol and port), ``nft monitor trace`` prints (iptables rules too, with iptables'
nft backend)
every rule the packet meets, and the packet's conntrack entry says where it was DNATed
and whether its source was rewritten. :func:`verify_offline` builds a throwaway
namespace around the rendered rules for ``explain --verify`` from a state file.
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy import apivalidation as av
from proxy.config import ProxyMode
from proxy.explain import report
from proxy.explain.engine import Explanation
from proxy.explain.packet import Entry, Packet
from proxy.explain.trace import (
    TRACE_TABLE,
    KernelOutcome,
    TracedRule,
    chain_rules,
    classify,
    compare,
    packet_rules,
    packet_source_port,
    parse_conntrack,
    parse_nft_trace,
    saved_comments,
    with_comments,
)
from proxy.host import neighbours
from proxy.host import netns as hostns
from proxy.host.errors import HostError
from proxy.host.links import addr_add, ip_batch
from proxy.host.process import run_command
from proxy.model import IPFamily, Protocol
from proxy.plan import Plan

READY_TIMEOUT = 5.0
SETTLE = 3.0
"""At most this many seconds of reading trace lines after the packet was sent (the
marker comes much sooner)."""
MAX_LINES = 2000
"""At most this many monitor lines are kept (one packet meets a few dozen rules)."""


@dataclass(frozen=True)
class Check:
    explanation: Explanation
    outcome: KernelOutcome
    differences: tuple[str, ...]
    monitor: tuple[str, ...] = ()
    """What the monitor printed, as it printed it."""
    attempts: int = 1
    """Sends it took (the last one's trace is the one shown)."""

    @property
    def agrees(self) -> bool:
        return not self.differences


def _ipx(family: IPFamily) -> str:
    return "ip" if family is IPFamily.V4 else "ip6"


TRACE_PRIORITY = -190
"""After conntrack (-200: the packet's state is known, so only a connection's first
packets are traced), before any rule of ours (-110) and NAT (-100)."""


def trace_ruleset(packet: Packet) -> str:
    """Our tracing table: ``nftrace`` on for the packet (new connections of its
    addresses, protocol and port), before our rules and NAT."""
    ipx = _ipx(packet.family)
    match = f"{ipx} saddr {packet.src} {ipx} daddr {packet.dst} "
    if packet.protocol is None:
        proto = "icmp" if packet.family is IPFamily.V4 else "ipv6-icmp"
        match += f"meta l4proto {proto} "
    else:
        match += f"meta l4proto {packet.protocol.lowercase} th dport {packet.dport} "
    match += "ct state new "
    chains = "".join(
        f"  chain {hook} {{ type filter hook {hook} priority {TRACE_PRIORITY}; "
        f"{match}meta nftrace set 1; " + (MARKER_RULE if hook == "output" else "") + "}\n"
        for hook in ("prerouting", "output")
    )
    return f"table inet {TRACE_TABLE} {{\n{chains}}}\n"


MARKER_PORT = 9
MARKER_RULE = f"ip daddr 127.0.0.1 udp dport {MARKER_PORT} meta nftrace set 1; "
MARKER_ARGV = ["bash", "-c", f"echo > /dev/udp/127.0.0.1/{MARKER_PORT}"]
"""The marker: a datagram to the discard port on loopback (bash's /dev/udp: no process
beyond the shell)."""


def is_marker(line: str) -> bool:
    return (
        f"{TRACE_TABLE} output packet:" in line
        and "ip daddr 127.0.0.1" in line
        and f"udp dport {MARKER_PORT}" in line
    )


REMOVE = f"table inet {TRACE_TABLE} {{}}\ndelete table inet {TRACE_TABLE}\n"
"""Our tracing table removed, whether or not it exists (nft 1.0.6 has no ``destroy``)."""


class Tracer:
    """Traces one packet in a namespace; a context manager around sending it."""

    def __init__(self, netns: str, mode: ProxyMode, packet: Packet) -> None:
        self.netns, self.mode, self.packet = netns, mode, packet
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._proc: subprocess.Popen[str] | None = None

    def _argv(self) -> list[str]:
        return hostns.exec_argv(self.netns, ["stdbuf", "-oL", "nft", "monitor", "trace"])

    def _nft(self, text: str) -> None:
        run_command(hostns.exec_argv(self.netns, ["nft", "-f", "-"]), input=text)

    def _pump(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def _read_until(self, done: Callable[[str], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                return False
            if line is None:
                return False
            if len(self.lines) < MAX_LINES:
                self.lines.append(line.rstrip("\n"))
            if done(line):
                return True
        return False

    @contextlib.contextmanager
    def tracing(self) -> Iterator[None]:
        """Trace what happens while the block runs. One tracer at a time per namespace
        (a lock): two would share the tracing table and each other's trace lines."""
        with _netns_lock(self.netns), self._tracing():
            yield

    @contextlib.contextmanager
    def _tracing(self) -> Iterator[None]:
        self._nft(REMOVE)
        self._proc = subprocess.Popen(
            self._argv(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        threading.Thread(target=self._pump, daemon=True).start()
        try:
            self._wait_listening()
            self._nft(trace_ruleset(self.packet))
            self.lines.clear()
            yield
            self._drain()
        finally:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                self._nft(REMOVE)
            self._proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(5)
            if self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait()

    def _drain(self) -> None:
        """Read what the monitor prints up to the marker: a datagram the node sends to
        itself after the packet, traced too. The kernel reports a packet's rules as it
        meets them, so the marker's report comes after everything the packet met."""
        run_command(hostns.exec_argv(self.netns, MARKER_ARGV), check=False)
        self._read_until(is_marker, SETTLE)
        if self.lines and is_marker(self.lines[-1]):
            self.lines.pop()

    def _wait_listening(self) -> None:
        """Until the monitor has joined the trace multicast group (it does so some time
        after it starts; a packet traced before would be missed)."""
        assert self._proc is not None
        # /proc/PID/net is the network namespace of PID: the monitor's (ip netns exec
        # and stdbuf exec in place)
        listing = Path(f"/proc/{self._proc.pid}/net/netlink")
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if trace_listener(listing.read_text()):
                    return
            time.sleep(0.005)
        raise OSError(f"{' '.join(self._argv()[-3:])}: not listening after {READY_TIMEOUT:g}s")

    def source_port(self) -> int | None:
        """The traced packet's source port (ICMP: its echo id), from the monitor's
        description of the first packet."""
        return packet_source_port(self.lines)

    def rules(self) -> tuple[TracedRule, ...]:
        return packet_rules(parse_nft_trace(self.lines))


@contextlib.contextmanager
def _netns_lock(netns: str) -> Iterator[None]:
    """An exclusive lock on the namespace itself (``flock`` on its ``/run/netns`` file:
    nothing is left behind, and it is released if we die)."""
    import fcntl

    path = netns if netns.startswith("/") else hostns.netns_path(netns)
    with open(path, "rb") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


NETLINK_NETFILTER = 12
NFNLGRP_NFTRACE = 9


def trace_listener(proc_net_netlink: str) -> bool:
    """Whether ``/proc/net/netlink`` (of one namespace) shows a netfilter socket in the
    trace group."""
    for line in proc_net_netlink.splitlines()[1:]:
        cols = line.split()
        if len(cols) > 3 and cols[1] == str(NETLINK_NETFILTER):
            with contextlib.suppress(ValueError):
                if int(cols[3], 16) & (1 << (NFNLGRP_NFTRACE - 1)):
                    return True
    return False


def conntrack_entry(netns: str, packet: Packet, sport: int | None) -> Any:
    """The packet's conntrack entry in ``netns`` (by its original addresses, protocol,
    port and, when known, source port or ICMP id), or None."""
    fam = "ipv4" if packet.family is IPFamily.V4 else "ipv6"
    argv = ["conntrack", "-L", "-f", fam, "-s", str(packet.src), "-d", str(packet.dst)]
    if packet.protocol is None:
        argv += ["-p", "icmp" if packet.family is IPFamily.V4 else "icmpv6"]
        if sport is not None:
            argv += ["--icmp-id", str(sport)]
    else:
        argv += ["-p", packet.protocol.lowercase, "--dport", str(packet.dport)]
        if sport is not None:
            argv += ["--sport", str(sport)]
    out = run_command(hostns.exec_argv(netns, argv), check=False).stdout
    entries = [e for line in out.splitlines() if (e := parse_conntrack(line)) is not None]
    return entries[0] if entries else None


def iptables_comments(
    netns: str, family: IPFamily, rules: tuple[TracedRule, ...]
) -> tuple[TracedRule, ...]:
    """The traced iptables rules with their comments (:func:`with_comments`)."""
    tables = sorted({r.table for r in rules if r.table in ("nat", "filter")})
    tool = "iptables-nft-save" if family is IPFamily.V4 else "ip6tables-nft-save"
    listings, comments = {}, {}
    for table in tables:
        argv = ["nft", "list", "table", _ipx(family), table]
        listings[table] = chain_rules(run_command(hostns.exec_argv(netns, argv)).stdout)
        save = run_command(hostns.exec_argv(netns, [tool, "-t", table])).stdout
        comments[table] = saved_comments(save)
    return with_comments(rules, listings, comments)


def ours(mode: ProxyMode) -> tuple[str, ...]:
    return ("kube-proxy",) if mode is ProxyMode.NFTABLES else ("KUBE-",)


ATTEMPTS = 3
"""Sends of the packet before concluding the kernel did something else than explained:
a packet can be lost before it reaches the node (a neighbour not resolved yet), and a
trace can miss events, under load. The kernel is deterministic for one packet and one
ruleset, so a real difference shows up every time and still fails."""


def check_in(netns: str, mode: ProxyMode, why: Explanation, send: Callable[[], object]) -> Check:
    """Trace the explained packet in ``netns`` while ``send()`` sends it, and compare;
    sent again (a new connection each time) while the kernel's outcome differs, up to
    :data:`ATTEMPTS` times."""
    check: Check | None = None
    for attempt in range(1, ATTEMPTS + 1):
        tracer = Tracer(netns, mode, why.packet)
        with tracer.tracing():
            send()
        rules = tracer.rules()
        if mode is ProxyMode.IPTABLES:
            rules = iptables_comments(netns, why.packet.family, rules)
        sport = tracer.source_port()
        entry = conntrack_entry(netns, why.packet, sport) if sport is not None else None
        outcome = classify(rules, entry, ours(mode))
        check = Check(why, outcome, compare(why, outcome), tuple(tracer.lines), attempt)
        if check.agrees:
            break
    assert check is not None
    return check


# -- offline: a throwaway namespace around the rendered rules ------------------------------


def _names() -> tuple[str, str, str]:
    tag = f"kpp-explain-{os.getpid()}"
    return f"{tag}-node", f"{tag}-peer", f"{tag}-sink"


GATEWAY = {IPFamily.V4: ("169.254.77.1", "169.254.77.2"), IPFamily.V6: ("fe80::77:1", "fe80::77:2")}


def verify_offline(plan: Plan, packet: Packet, why: Explanation) -> Check:
    """Program ``plan`` into a fresh namespace standing for the node, send the packet
    from where it enters (a peer namespace for pod and external traffic; the node itself
    otherwise), and compare what the kernel did with ``why``. Every namespace is deleted
    afterwards."""
    from proxy.modes import mode_for

    node, peer, sink = _names()
    fam = packet.family
    host = 32 if fam is IPFamily.V4 else 128
    gw_node, gw_far = GATEWAY[fam]
    hostns.create([node, peer, sink])
    try:
        ip_batch(None, [
            f"link add kx-up netns {node} type veth peer name kx-sink netns {sink}",
            f"link add kx-in netns {node} type veth peer name kx-peer netns {peer}",
        ])  # fmt: skip
        node_ips = [
            a for a in plan_addresses(plan) if a != packet.src or packet.entry is Entry.NODE
        ]
        cmds = ["link set lo up", "link set kx-up up", "link set kx-in up"]
        cmds += [addr_add(f"{a}/{host}", "kx-up") for a in node_ips]
        if packet.entry is Entry.NODE and packet.src not in node_ips and not packet.src.is_loopback:
            cmds.append(addr_add(f"{packet.src}/{host}", "lo"))
        cmds += [addr_add(f"{gw_node}/{host}", "kx-in"), addr_add(f"{gw_node}/{host}", "kx-up")]
        ip_batch(node, cmds)
        ip_batch(
            sink, ["link set lo up", "link set kx-sink up", addr_add(f"{gw_far}/{host}", "kx-sink")]
        )
        ip_batch(
            peer,
            ["link set lo up", "link set kx-peer up", addr_add(f"{packet.src}/{host}", "kx-peer")],
        )
        sink_mac = _mac(sink, "kx-sink")
        peer_mac = _mac(peer, "kx-peer")
        in_mac = _mac(node, "kx-in")
        ip_batch(node, [
            f"neigh replace {gw_far} lladdr {sink_mac} dev kx-up nud permanent",
            f"route replace {gw_far}/{host} dev kx-up",
            f"route replace default via {gw_far} dev kx-up",
            f"neigh replace {packet.src} lladdr {peer_mac} dev kx-in nud permanent",
            f"route replace {packet.src}/{host} dev kx-in",
        ] if packet.entry is not Entry.NODE else [
            f"neigh replace {gw_far} lladdr {sink_mac} dev kx-up nud permanent",
            f"route replace {gw_far}/{host} dev kx-up",
            f"route replace default via {gw_far} dev kx-up",
        ])  # fmt: skip
        ip_batch(peer, [
            f"neigh replace {gw_node} lladdr {in_mac} dev kx-peer nud permanent",
            # with the source named: scapy takes a route's own, not the kernel's choice
            f"route replace {gw_node}/{host} dev kx-peer src {packet.src}",
            f"route replace default via {gw_node} dev kx-peer src {packet.src}",
        ])  # fmt: skip
        hostns.sysctl(node, {
            "net.ipv4.ip_forward": 1, "net.ipv6.conf.all.forwarding": 1,
            "net.ipv4.conf.all.rp_filter": 0, "net.ipv4.conf.default.rp_filter": 0,
        })  # fmt: skip
        mode = mode_for(plan.mode)
        from proxy.kernel.executor import Executor

        executor = Executor(node)
        if plan.mode is ProxyMode.IPTABLES:
            from proxy.iptables.kernel import IptablesKernel

            IptablesKernel(executor, fam, variant="nft").full_sync(mode.renderer()(plan, None))
        else:
            mode.writer(executor, fam).full_sync(mode.renderer()(plan, None))
        if packet.entry is Entry.NODE:
            return check_in(node, plan.mode, why, lambda: send(node, packet))
        return check_in(node, plan.mode, why, lambda: inject(peer, packet))
    finally:
        hostns.empty([node, peer, sink])
        hostns.delete([node, peer, sink])


def plan_addresses(plan: Plan) -> list[Any]:
    """The node addresses the plan knows of: its primary IP and its NodePort addresses."""
    found = [plan.node_ip] if plan.node_ip is not None else []
    found += [a for a in plan.nodeports.addresses if not a.is_loopback and a not in found]
    return found


def _mac(netns: str, dev: str) -> str:
    found = neighbours.link_mac(netns, dev)
    if found is None:
        raise HostError(f"{netns}: no interface {dev} (the throwaway namespace went away?)")
    return found


SEND_SCRIPT = """
import socket, sys
fam = socket.AF_INET if ":" not in sys.argv[2] else socket.AF_INET6
src, dst, proto, dport = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4] or 0)
if proto in ("tcp", "sctp"):
    kind = (socket.SOCK_STREAM, socket.IPPROTO_SCTP if proto == "sctp" else 0)
    s = socket.socket(fam, kind[0], kind[1])
    s.bind((src, 0))
    s.settimeout(0.3)
    try:
        s.connect((dst, dport))
    except OSError:
        pass
elif proto == "udp":
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.bind((src, 0))
    s.sendto(b"explain\\n", (dst, dport))
else:
    v6 = fam == socket.AF_INET6
    s = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
    s.bind((src, 0))
    body = bytes([128 if v6 else 8, 0, 0, 0, 0x12, 0x34, 0, 1]) + b"explain"
    if not v6:
        total = sum(int.from_bytes(body[i:i + 2], "big") for i in range(0, len(body) - 1, 2))
        total += body[-1] << 8 if len(body) % 2 else 0
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        body = body[:2] + (~total & 0xFFFF).to_bytes(2, "big") + body[4:]
    s.sendto(body, (dst, 0))
"""


def send(netns: str, packet: Packet) -> None:
    """Send the packet from ``netns`` with an ordinary socket (a socket crosses the
    sender's own output hook, which a node's traffic must)."""
    proto = packet.protocol_name if packet.protocol is not None else "icmp"
    argv = ["python3", "-c", SEND_SCRIPT, str(packet.src), str(packet.dst), proto,
            str(packet.dport or "")]  # fmt: skip
    run_command(hostns.exec_argv(netns, argv), check=False)


def inject(netns: str, packet: Packet) -> None:
    """Inject the packet with scapy from ``netns`` (a pod's or an outside client's: its
    packet socket skips that namespace's own hooks, and it has none of ours). SCTP,
    which the probes do not craft, goes through a socket."""
    from proxy.harness.probe import Prober

    if packet.protocol is Protocol.SCTP:
        send(netns, packet)
        return
    dst = str(packet.dst)
    with Prober(netns) as prober:
        if packet.protocol is None:
            prober.icmp_echo(dst, timeout=INJECT_WAIT)
        elif packet.protocol is Protocol.TCP:
            prober.tcp_syn(dst, packet.dport or 0, timeout=INJECT_WAIT)
        else:
            prober.udp_scapy(dst, packet.dport or 0, timeout=INJECT_WAIT)


INJECT_WAIT = 0.3
"""Seconds a probe waits for an answer (what the kernel did is read from the trace)."""


# -- output ---------------------------------------------------------------------------------


def _rule_line(r: TracedRule) -> str:
    what = "(the chain's policy)" if r.rule == "policy" else (r.comment or r.statement)
    return f"  {r.table} {r.chain}: {what}  -> {r.verdict}"


def to_text(c: Check) -> str:
    k = c.outcome
    lines = ["kernel      the packet was sent with tracing on; the rules it met:"]
    lines += [_rule_line(r) for r in k.rules] or [
        "  (no rule of any table traced: the packet did not reach the node's hooks; the "
        f"monitor printed {len(c.monitor)} line(s)"
        + (f", the first: {c.monitor[0][:200]}" if c.monitor else "")
        + ")"
    ]
    lines.append(f"kernel did  {k.verdict.value}: {k.detail}")
    if c.agrees:
        lines.append("verified    the kernel agrees with the explanation")
    else:
        lines += [f"DIFFERS     {d}" for d in c.differences]
    if c.attempts > 1:
        lines.append(
            f"sent        {c.attempts} times: the earlier sends' traces differed (a packet "
            "lost or a trace missing events under load); the last one is shown"
        )
    return "".join(av.printable(line, report.LINE_MAX) + "\n" for line in lines)


def as_dict(c: Check) -> dict[str, Any]:
    k = c.outcome
    return {
        "agrees": c.agrees,
        "differences": list(c.differences),
        "attempts": c.attempts,
        "kernel": {
            "verdict": k.verdict.value,
            "endpoint": k.endpoint,
            "masquerade": k.masqueraded,
            "detail": k.detail,
            "rules": [_rule_dict(r) for r in k.rules],
        },
    }


def _rule_dict(r: TracedRule) -> dict[str, Any]:
    return {
        "table": r.table,
        "chain": r.chain,
        "rule": r.rule,
        "comment": r.comment,
        "verdict": r.verdict,
    }
