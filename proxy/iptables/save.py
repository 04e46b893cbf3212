"""Reading ``iptables-save`` output: into :class:`~proxy.iptables.model.ExistingIptables`,
and (with ``-c``) the traffic counters."""

from __future__ import annotations

import re

from proxy.iptables.model import ExistingIptables
from proxy.traffic import TrafficSample, merged, parse_counted_comment

BUILTIN_CHAINS = frozenset(("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"))
_SYNC_LINES = re.compile(
    rb"\n((?:[*:]|-A (?:" + "|".join(sorted(BUILTIN_CHAINS)).encode() + rb") )[^\n]*)"
)
"""Table, chain and built-in-chain rule lines after a newline (a regex finds them 3×
faster than a loop over every line)."""


def _sync_lines(dump: bytes) -> list[str]:
    """The lines of ``dump`` a full sync needs, decoded (the rest never is)."""
    end = dump.find(b"\n")
    first = dump[: end if end >= 0 else len(dump)]
    lines = [m.decode() for m in _SYNC_LINES.findall(dump)]
    return [first.decode(), *lines] if _SYNC_LINES.match(b"\n" + first) else lines


def parse_save(text: str | bytes, *, every_rule: bool = True) -> ExistingIptables:
    """Parse ``iptables-save`` output (any tables) into :class:`ExistingIptables`.

    A full sync needs only the chain names and the built-in chains' rules: with
    ``every_rule=False`` the rules of other chains are skipped undecoded and unparsed (at
    5,000 Services that is ~250,000 lines, and building them cost a third of a second).
    """
    chains: dict[str, set[str]] = {}
    rules: dict[tuple[str, str], list[str]] = {}
    if every_rule:
        lines = (text.decode() if isinstance(text, bytes) else text).splitlines()
    else:
        lines = _sync_lines(text.encode() if isinstance(text, str) else text)
    table = ""
    for line in lines:
        head = line[:1]
        if head == "-":
            if not table or not line.startswith("-A "):
                continue
            _, chain, *rest = line.split(" ", 2)
            rules.setdefault((table, chain), []).append(rest[0] if rest else "")
        elif head == ":" and table:
            name = line[1:].split(" ", 1)[0]
            chains[table].add(name)
            if every_rule or name in BUILTIN_CHAINS:
                rules.setdefault((table, name), [])
        elif head == "*":
            table = line[1:].strip()
            chains.setdefault(table, set())
    frozen_rules = {k: tuple(v) for k, v in rules.items()}
    return ExistingIptables(
        chains={t: frozenset(c) for t, c in chains.items()},
        builtin_rules={k: v for k, v in frozen_rules.items() if k[1] in BUILTIN_CHAINS},
        rules=frozen_rules if every_rule else {},
    )


_COUNTED = re.compile(r'^\[(\d+):(\d+)\] -A KUBE-CNT-\S+ .*--comment "([^"]*)"')


def counted_samples(save: str) -> list[TrafficSample]:
    """``iptables-save -c -t filter`` → the traffic counters of our ``KUBE-CNT-`` chains
    (their comments name the service port and the verdict)."""
    out = []
    for line in save.splitlines():
        m = _COUNTED.match(line)
        parsed = parse_counted_comment(m[3]) if m else None
        if m is not None and parsed is not None:
            out.append(TrafficSample(*parsed, int(m[1]), int(m[2])))
    return merged([out])
