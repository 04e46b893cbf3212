"""iptables mode's transactions as ``iptables-restore`` input: the full sync, the
partial sync (changed chains only) and its undo, and the cleanup."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass

from proxy.iptables.model import ExistingIptables, IptablesRuleset
from proxy.iptables.names import KUBE_FIREWALL, OUR_GUARD_JUMP, is_owned_chain

RESTORE_BATCH_LINES = 2048
"""Lines per piece of a full-sync input: the tool parses a piece while the next is
built, and the whole input (about 50 MB at 10,000 Services) is never held at once."""


def restore_pieces(
    ruleset: IptablesRuleset,
    existing: ExistingIptables | Callable[[], ExistingIptables] | None = None,
) -> Iterator[str]:
    """A full-sync ``iptables-restore --noflush`` input, as newline-terminated pieces
    built one after another.

    Declaring a chain (``:NAME - [0:0]``) creates it or flushes it, so every chain of ours
    is rewritten whole; chains of ours that the ruleset no longer has are flushed and
    deleted; jump rules in built-in chains are inserted when missing and duplicates
    removed. Nothing else in the tables is touched.

    Only each table's tail (stale chains, jump fixes) depends on what the tables hold, and
    the nat table, by far the larger, comes first: ``existing`` may be a function, called
    once its rules are written, so a save of the tables runs while the tool parses them.
    """
    have: ExistingIptables | None = None
    for table in ("nat", "filter"):
        chains = ruleset.tables()[table]
        yield "\n".join([f"*{table}", *(f":{name} - [0:0]" for name in chains)]) + "\n"
        batch: list[str] = []
        for name, rules in chains.items():
            batch.extend(f"-A {name} {r}" for r in rules)
            if len(batch) >= RESTORE_BATCH_LINES:
                yield "\n".join(batch) + "\n"
                batch = []
        if batch:
            yield "\n".join(batch) + "\n"  # every rule is out before the save is awaited
            batch = []
        if have is None:  # asked once, for the first table's tail
            have = existing() if callable(existing) else existing or ExistingIptables()
        stale = sorted(have.owned_chains(table) - set(chains))
        batch += (f":{name} - [0:0]" for name in stale)  # flushed: no rule refers onwards
        batch += _jump_fixes(ruleset, have, table)
        batch += (f"-X {name}" for name in stale)
        batch.append("COMMIT")
        yield "\n".join(batch) + "\n"


def restore_text(ruleset: IptablesRuleset, existing: ExistingIptables | None = None) -> str:
    """:func:`restore_pieces` as one text."""
    return "".join(restore_pieces(ruleset, existing))


def _jump_fixes(ruleset: IptablesRuleset, existing: ExistingIptables, table: str) -> list[str]:
    """Insert missing jumps (keeping upstream's order at the head of each built-in chain),
    delete duplicates and stale jumps to our chains."""
    lines: list[str] = []
    wanted_by_chain: dict[str, list[str]] = {}
    for j in ruleset.jumps:
        if j.table == table:
            wanted_by_chain.setdefault(j.chain, []).append(j.spec)
    chains_in_table = set(wanted_by_chain) | {c for (t, c) in existing.builtin_rules if t == table}
    for chain in sorted(chains_in_table):
        wanted = wanted_by_chain.get(chain, [])
        have = list(existing.builtin_rules.get((table, chain), ()))
        seen: set[str] = set()
        for spec in have:
            target = _target(spec)
            ours = target is not None and is_owned_chain(target)
            if ours and (spec not in wanted or spec in seen):
                lines.append(f"-D {chain} {spec}")
            seen.add(spec)
        # insert in reverse so the final order matches `wanted`
        missing = [s for s in wanted if s not in have]
        for spec in reversed(missing):
            lines.append(f"-I {chain} 1 {spec}")
    return lines


_TARGET = re.compile(r"(?:^|\s)-j (\S+)")


def _target(spec: str) -> str | None:
    m = _TARGET.search(spec)
    return m.group(1) if m else None


KUBELET_SHARED = frozenset((KUBE_FIREWALL,))
"""Chains the kubelet creates too (its martian-packet guard, KUBE-FIREWALL, the same rule
as ours). Upstream never deletes them; we delete one only when nothing but our own jumps
(marked with our comment) lead to it, so a cleanup leaves nothing of ours and never takes
the kubelet's guard away (the kubelet does not recreate it while its canary stands)."""


def _foreign_jump_targets(existing: ExistingIptables, table: str) -> frozenset[str]:
    """Shared chains that a built-in chain jumps to without our comment."""
    return frozenset(
        tgt
        for (t, _), specs in existing.builtin_rules.items()
        if t == table
        for spec in specs
        if (tgt := _target(spec)) in KUBELET_SHARED and OUR_GUARD_JUMP not in spec
    )


def cleanup_text(existing: ExistingIptables) -> str:
    """Remove every chain and jump of ours (and nothing else: not a chain the kubelet
    also uses, nor its jumps) in one transaction."""
    out: list[str] = []
    for table in ("filter", "nat"):
        kept = _foreign_jump_targets(existing, table)
        owned = sorted(existing.owned_chains(table) - kept)
        jumps = [
            f"-D {chain} {spec}"
            for (t, chain), specs in sorted(existing.builtin_rules.items())
            if t == table
            for spec in specs
            if (tgt := _target(spec)) is not None
            and is_owned_chain(tgt)
            and (tgt not in kept or OUR_GUARD_JUMP in spec)
        ]
        if not owned and not jumps:
            continue
        out.append(f"*{table}")
        out.extend(f":{name} - [0:0]" for name in owned)
        out.extend(jumps)
        out.extend(f"-X {name}" for name in owned)
        out.append("COMMIT")
    return "\n".join(out) + ("\n" if out else "")


@dataclass(frozen=True)
class PartialRestore:
    """A partial sync from ``old`` to ``new``: its restore input, and the inverse change
    (for a table committed before the transaction failed)."""

    old: IptablesRuleset
    new: IptablesRuleset
    text: str

    def __bool__(self) -> bool:
        return bool(self.text)

    def undo_text(self, tables: Collection[str]) -> str:
        """What puts ``tables`` back from ``new`` to ``old``."""
        return partial_restore_text(self.new, self.old, tables)


def partial_restore(old: IptablesRuleset, new: IptablesRuleset) -> PartialRestore:
    return PartialRestore(old, new, partial_restore_text(old, new))


def partial_restore_text(
    old: IptablesRuleset, new: IptablesRuleset, tables: Collection[str] | None = None
) -> str:
    """Like upstream's partial sync: rewrite only chains whose rules changed, delete chains
    that are gone; jump rules in built-in chains are left to the next full sync. Empty when
    nothing changed. ``tables``: only those."""
    out: list[str] = []
    old_tables = old.tables()
    for table, chains in new.tables().items():
        if tables is not None and table not in tables:
            continue
        before = old_tables[table]
        changed = [name for name, rules in chains.items() if before.get(name) != rules]
        removed = [name for name in before if name not in chains]
        if not changed and not removed:
            continue
        out.append(f"*{table}")
        out.extend(f":{name} - [0:0]" for name in (*changed, *removed))
        for name in changed:
            out.extend(f"-A {name} {r}" for r in chains[name])
        out.extend(f"-X {name}" for name in removed)
        out.append("COMMIT")
    return "\n".join(out) + "\n" if out else ""
