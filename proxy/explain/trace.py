"""What the kernel did with one traced packet (pure): the lines of ``nft monitor trace``
and the packet's conntrack entry become a :class:`KernelOutcome`, which :func:`compare`
holds against an :class:`~proxy.explain.engine.Explanation`.

``nft monitor trace`` reports iptables rules too when iptables is its nft backend (as
upstream kube-proxy's images and ours use): their matches and targets are printed in nft
syntax, their comments are not. (``xtables-monitor --trace`` prints iptables syntax, but
v1.8.9 stops at the first IPv6 rule with a protocol match.)"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from proxy.explain.engine import Explanation, Verdict
from proxy.model import IPAddress

TRACE_TABLE = "kpp-explain-trace"
"""Our own table that sets ``nftrace`` on the packet (never part of an outcome)."""

LINE_MAX = 4000
"""A trace line longer than this is cut: rule text comes from the kernel, but nothing
read from a subprocess is unbounded."""


@dataclass(frozen=True)
class TracedRule:
    """One rule (or a base chain's policy) the packet met, as the monitor printed it."""

    table: str
    chain: str
    rule: str
    verdict: str
    """``accept``, ``drop``, ``jump X``, ``goto X``, ``continue``, ``return`` …"""
    note: str | None = None
    """The rule's comment where the trace does not show it (iptables rules)."""

    @property
    def comment(self) -> str | None:
        found = re.search(r'comment "((?:[^"\\]|\\.)*)"', self.rule)
        return found[1] if found else self.note

    @property
    def statement(self) -> str:
        """The rule without its comment and its counter."""
        return normalized(re.sub(r'comment "(?:[^"\\]|\\.)*"', "", self.rule))

    @property
    def masquerades(self) -> bool:
        return self.verdict == "accept" and bool(
            re.search(r"(^|\s)masquerade(\s|$)", self.statement)
        )

    @property
    def rejects(self) -> bool:
        return bool(re.search(r"(^|\s)reject(\s|$)", self.statement))

    @property
    def drops(self) -> bool:
        return self.verdict == "drop" and not self.rejects


def normalized(rule: str) -> str:
    """A rule as ``nft`` prints it, without counter values and extra spaces (a trace
    and a listing then print the same rule the same way)."""
    return " ".join(re.sub(r"counter packets \d+ bytes \d+", "counter", rule).split())


_NFT = re.compile(
    r"^trace id (?P<id>\S+) (?P<family>\S+) (?P<table>\S+) (?P<chain>\S+) "
    r"(?:rule (?P<rule>.*?) \(verdict (?P<verdict>[^)]*)\)"
    r"|policy (?P<policy>\S+)|verdict (?P<v2>.+))\s*$"
)


def parse_nft_trace(lines: Iterable[str]) -> list[tuple[str, TracedRule]]:
    """``nft monitor`` lines → (trace id, rule) for every rule or policy a packet met,
    our own tracing table left out."""
    out: list[tuple[str, TracedRule]] = []
    for raw in lines:
        m = _NFT.match(raw[:LINE_MAX].rstrip())
        if m is None or m["table"] == TRACE_TABLE:
            continue
        if m["rule"] is not None:
            out.append(
                (m["id"], TracedRule(m["table"], m["chain"], m["rule"].strip(), m["verdict"]))
            )
        elif m["policy"] is not None:
            out.append((m["id"], TracedRule(m["table"], m["chain"], "policy", m["policy"])))
    return out


def packet_rules(events: list[tuple[str, TracedRule]]) -> tuple[TracedRule, ...]:
    """The rules the traced packet met, in order. Every trace id counts: the kernel gives
    a packet a new one when it copies it on the way (a pod's packet crossing a bridge is
    traced under one id up to routing and another after), and a retransmission meets the
    same rules again."""
    return tuple(rule for _, rule in events)


_SPORT = re.compile(
    r"\b(?:tcp|udp|sctp|th) sport (\d+)|\bicmpv?6? id (\d+)|SPORT=(\d+)|\bID=(\d+) SEQ="
)


def packet_source_port(lines: Iterable[str]) -> int | None:
    """The source port (ICMP: the echo id) of the first packet ``nft monitor trace``
    described (its ``packet:`` line)."""
    for raw in lines:
        line = raw[:LINE_MAX]
        if "packet:" not in line:
            continue
        m = _SPORT.search(line)
        if m is not None:
            return int(next(g for g in m.groups() if g is not None))
    return None


def chain_rules(listing: str) -> dict[str, list[str]]:
    """``nft list table`` output → each chain's rules (normalized), in order."""
    chains: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in listing.splitlines()[:100_000]:
        line = raw.strip()
        if line.startswith("chain ") and line.endswith("{"):
            current = chains.setdefault(line.split()[1], [])
        elif line == "}":
            current = None
        elif current is not None and line and not line.startswith(("type ", "policy ")):
            current.append(normalized(line))
    return chains


def saved_comments(save: str) -> dict[str, list[str | None]]:
    """``iptables-save -t TABLE`` output → each chain's rule comments, in order."""
    out: dict[str, list[str | None]] = {}
    for line in save.splitlines()[:100_000]:
        if line.startswith("-A "):
            chain = line.split()[1]
            found = re.search(r'--comment (?:"((?:[^"\\]|\\.)*)"|(\S+))', line)
            out.setdefault(chain, []).append((found[1] or found[2]) if found else None)
    return out


def with_comments(
    rules: tuple[TracedRule, ...],
    listings: dict[str, dict[str, list[str]]],
    comments: dict[str, dict[str, list[str | None]]],
) -> tuple[TracedRule, ...]:
    """iptables rules traced by nft carry no comment: each is found by its place in its
    chain (``nft list table``) and given the comment ``iptables-save`` shows there."""
    out = []
    for r in rules:
        texts = listings.get(r.table, {}).get(r.chain, [])
        notes = comments.get(r.table, {}).get(r.chain, [])
        statement = normalized(r.rule)
        i = texts.index(statement) if statement in texts else None
        note = notes[i] if i is not None and i < len(notes) else None
        out.append(TracedRule(r.table, r.chain, r.rule, r.verdict, note))
    return tuple(out)


@dataclass(frozen=True)
class ConntrackEntry:
    orig_src: IPAddress
    orig_dst: IPAddress
    reply_src: IPAddress
    reply_dst: IPAddress
    reply_sport: int | None
    orig_sport: int | None = None
    reply_dport: int | None = None

    @property
    def dnat(self) -> str | None:
        """The DNAT target ``ip:port`` (``[ip]:port``), None when not DNATed."""
        if self.reply_src == self.orig_dst:
            return None
        host = f"[{self.reply_src}]" if self.reply_src.version == 6 else str(self.reply_src)
        return host if self.reply_sport is None else f"{host}:{self.reply_sport}"

    @property
    def masqueraded(self) -> bool:
        """The source was rewritten: its address, or its port (masquerading is fully
        random, so even a node's own address gets a new port)."""
        if self.reply_dst != self.orig_src:
            return True
        return None not in (self.orig_sport, self.reply_dport) and (
            self.reply_dport != self.orig_sport
        )


def parse_conntrack(line: str) -> ConntrackEntry | None:
    """One ``conntrack -L`` line (original tuple, then reply tuple)."""
    fields = re.findall(r"\b(src|dst|sport|dport)=(\S+)", line[:LINE_MAX])
    src = [v for k, v in fields if k == "src"]
    dst = [v for k, v in fields if k == "dst"]
    sport = [int(v) for k, v in fields if k == "sport" and v.isdigit()]
    dport = [int(v) for k, v in fields if k == "dport" and v.isdigit()]
    if len(src) < 2 or len(dst) < 2:
        return None
    try:
        return ConntrackEntry(
            ipaddress.ip_address(src[0]),
            ipaddress.ip_address(dst[0]),
            ipaddress.ip_address(src[1]),
            ipaddress.ip_address(dst[1]),
            sport[1] if len(sport) >= 2 else None,
            sport[0] if len(sport) >= 2 else None,
            dport[1] if len(dport) >= 2 else None,
        )
    except ValueError:
        return None


@dataclass(frozen=True)
class KernelOutcome:
    verdict: Verdict
    rules: tuple[TracedRule, ...]
    endpoint: str | None = None
    masqueraded: bool | None = None
    detail: str = ""


def classify(
    rules: tuple[TracedRule, ...], entry: ConntrackEntry | None, ours: Iterable[str]
) -> KernelOutcome:
    """The kernel's verdict: a reject or drop by one of ``ours`` (table or chain name
    prefixes that are kube-proxy-py's), else DNAT when the conntrack entry says so, else
    routed as any packet."""
    prefixes = tuple(ours)

    def mine(r: TracedRule) -> bool:
        return r.table.startswith(prefixes) or r.chain.startswith(prefixes)

    for r in rules:
        if mine(r) and r.rejects:
            return KernelOutcome(Verdict.REJECT, rules, detail=f"rejected in {r.chain}")
        if mine(r) and r.drops:
            return KernelOutcome(Verdict.DROP, rules, detail=f"dropped in {r.chain}")
    if entry is not None and entry.dnat is not None:
        # a masquerade to the address the packet already had leaves conntrack unchanged:
        # the trace says whether the masquerade rule ran
        masq = entry.masqueraded or any(mine(r) and r.masquerades for r in rules)
        return KernelOutcome(
            Verdict.DNAT,
            rules,
            endpoint=entry.dnat,
            masqueraded=masq,
            detail=f"conntrack: DNAT to {entry.dnat}"
            + (f", masqueraded (the reply goes to {entry.reply_dst})" if masq else ""),
        )
    if not rules and entry is None:
        return KernelOutcome(Verdict.NOT_A_SERVICE, rules, detail="no trace and no conntrack entry")
    return KernelOutcome(Verdict.NOT_A_SERVICE, rules, detail="no kube-proxy-py rule changed it")


def compare(e: Explanation, k: KernelOutcome) -> tuple[str, ...]:
    """Where the kernel's outcome differs from the explanation (empty: they agree)."""
    if e.verdict is not k.verdict:
        return (
            f"the explanation says {e.verdict.value}, "
            f"the kernel did {k.verdict.value} ({k.detail})",
        )
    if e.verdict is not Verdict.DNAT:
        return ()
    chosen = [ep for ep in e.endpoints if ep.kept and ep.probability > 0]
    match = next((ep for ep in chosen if ep.target == k.endpoint), None)
    if match is None:
        targets = ", ".join(ep.target for ep in chosen)
        return (
            f"the kernel DNATed to {k.endpoint}, not one of the endpoints explained ({targets})",
        )
    if k.masqueraded is not None and k.masqueraded != match.masquerade:
        said = "masqueraded" if match.masquerade else "not masqueraded"
        did = "masqueraded it" if k.masqueraded else "did not masquerade it"
        return (f"the explanation says {said} to {match.target}, the kernel {did}",)
    return ()
