"""nftables mode's transactions as nft text and statements: the full sync that makes the
table exactly a ruleset, the incremental change between two rulesets, and the cleanup."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping

from proxy.model import IPFamily
from proxy.nftables import endpointmaps
from proxy.nftables.model import (
    Element,
    ExistingNft,
    NftOp,
    NftRuleset,
    NftSet,
    NftTransaction,
    PortKey,
    set_kind,
    shared_keys,
)
from proxy.nftables.names import TABLE, TABLE_COMMENT, TRAFFIC_SETS
from proxy.nftables.statements import ElementKey
from proxy.traffic import Destination


def full_sync_text(ruleset: NftRuleset, existing: ExistingNft | None = None) -> str:
    """One ``nft -f`` transaction that makes our table exactly ``ruleset`` (the lines of
    :func:`full_sync_lines`)."""
    return "\n".join(full_sync_lines(ruleset, existing)) + "\n"


def full_sync_lines(ruleset: NftRuleset, existing: ExistingNft | None = None) -> Iterator[str]:
    """The lines of one ``nft -f`` transaction that makes our table exactly ``ruleset``,
    produced as they are written (at 10,000 services the whole text is tens of MB).

    Every chain and non-dynamic set/map is (re)declared, flushed and refilled; our chains,
    sets and maps that the ruleset no longer has are deleted; dynamic (affinity) sets keep
    their entries unless their timeout changed. Nothing outside our table is touched.
    """
    existing = existing or ExistingNft()
    chains, sets = ruleset.merged()
    fam = ruleset.nft_family
    t = f"{fam} {TABLE}"
    yield f'add table {t} {{ comment "{TABLE_COMMENT}" ; }}'
    # A base chain whose hook or priority differs (an older layout, or upstream's) cannot
    # be changed in place: delete it first (its rules go with it) and add it anew below.
    for name, c in chains.items():
        have = existing.base_chains.get(name)
        regular_now = name in existing.chains and name not in existing.base_chains
        if c.hook is not None and ((have is not None and have != c.hook) or regular_now):
            yield f"delete chain {t} {name}"
    recreate = [
        s.name
        for s in sets.values()
        if s.dynamic and s.name in existing.sets and existing.sets[s.name] != s.timeout
    ]
    for c in chains.values():
        if c.hook is not None:
            yield f"add chain {t} {c.name} {{ {c.hook.spec()} ; }}"
        else:
            yield f"add chain {t} {c.name}"
    for s in sets.values():
        if s.name not in recreate:
            yield f"add {'map' if s.is_map else 'set'} {t} {s.name} {{ {s.spec()} }}"
    stale_chains = sorted(existing.chains - set(chains))
    stale_sets = sorted(set(existing.sets) - set(sets))
    stale_maps = sorted(existing.maps - set(sets))
    for name in (*chains, *stale_chains):
        yield f"flush chain {t} {name}"
    for s in sets.values():
        if not s.dynamic:
            yield f"flush {'map' if s.is_map else 'set'} {t} {s.name}"
    for name in stale_chains:
        yield f"delete chain {t} {name}"
    for name in (*stale_sets, *recreate):
        yield f"delete set {t} {name}"
    for name in stale_maps:
        yield f"delete map {t} {name}"
    for name in recreate:
        s = sets[name]
        yield f"add set {t} {s.name} {{ {s.spec()} }}"
    for c in chains.values():
        for r in c.rules:
            yield f"add rule {t} {c.name} {r.text()}"
    for s in sets.values():
        if s.elements and not s.dynamic:
            body = ", ".join([e.text() for e in s.elements])
            yield f"add element {t} {s.name} {{ {body} }}"


def cleanup_text(family: IPFamily) -> str:
    """Delete our whole table (and nothing else)."""
    return f"delete table {'ip' if family is IPFamily.V4 else 'ip6'} {TABLE}\n"


def forget_traffic_text(family: IPFamily, stale: Mapping[str, Iterable[Destination]]) -> str:
    """One transaction deleting the elements ``stale`` names (set name → destinations)
    from our traffic counting sets: counters of service ports no rule has any more.
    Each is added first, so the transaction holds when one expired since it was read
    (nft 1.0.6 has no ``destroy``; adding an element that exists changes nothing). The
    destinations were read from the kernel; only well-formed ones of ``family`` are
    written back (address, ``tcp``/``udp``/``sctp``, a port), anything else is left."""
    t = f"{'ip' if family is IPFamily.V4 else 'ip6'} {TABLE}"
    lines = []
    for name, destinations in sorted(stale.items()):
        keys = sorted(
            f"{ip} . {proto} . {port}"
            for ip, proto, port in destinations
            if IPFamily.of(ip) is family and proto in _PROTOCOLS and 0 < port < 65536
        )
        if keys and name in TRAFFIC_SETS.values():
            body = ", ".join(keys)
            lines.append(f"add element {t} {name} {{ {body} }}\n")
            lines.append(f"delete element {t} {name} {{ {body} }}\n")
    return "".join(lines)


_PROTOCOLS = frozenset({"tcp", "udp", "sctp"})


def incremental_text(old: NftRuleset, new: NftRuleset) -> str:
    """The nft script of :func:`incremental`."""
    return incremental(old, new).text()


def incremental(old: NftRuleset, new: NftRuleset) -> NftTransaction:
    """One transaction turning the table from ``old`` (what we applied last) into ``new``,
    touching only what changed (see :func:`diff`). Only the service ports whose fragments
    may differ and the plan-wide part are compared: when ``new`` was rendered right after
    ``old`` with the same cache, those ``new.updated`` names (the cost then follows the
    change, not the number of services); else every fragment is compared."""
    if old.family is not new.family:
        return diff(old, new)
    changed: list[PortKey]
    if new.updated is not None:
        changed = [k for k in new.updated if k in old.fragments or k in new.fragments]
    else:
        changed = [k for k, f in new.fragments.items() if old.fragments.get(k) != f]
        changed.extend(k for k in old.fragments if k not in new.fragments)
    if not changed and old.core is new.core and old.shared == new.shared:
        return NftTransaction(new.family)
    touched: dict[str, dict[ElementKey, None]] = {name: {} for name in new.shared}
    for k in changed:
        for frag in (old.fragments.get(k), new.fragments.get(k)):
            if frag is not None:
                for set_name, keys in shared_keys(frag):
                    touched[set_name].update(dict.fromkeys(keys))

    # of the (hundreds of) endpoint maps, only those the change touches or adds/removes
    def maps(rs: NftRuleset) -> set[str]:
        return {st.name for st in rs.core.sets if endpointmaps.is_map_name(st.name)}

    used = maps(old) ^ maps(new)
    for k in changed:
        for frag in (old.fragments.get(k), new.fragments.get(k)):
            if frag is not None:
                used.update(name for name, _ in frag.elements)

    def part(rs: NftRuleset) -> NftRuleset:
        frags = {k: f for k in changed if (f := rs.fragments.get(k)) is not None}
        shared = {
            name: {key: 1 for key in touched.get(name, ()) if counts.get(key)}
            for name, counts in rs.shared.items()
        }
        sets = tuple(
            st for st in rs.core.sets if st.name in used or not endpointmaps.is_map_name(st.name)
        )
        return NftRuleset(rs.family, dataclasses.replace(rs.core, sets=sets), frags, shared)

    return diff(part(old), part(new))


def diff_text(old: NftRuleset, new: NftRuleset) -> str:
    """The nft script of :func:`diff`."""
    return diff(old, new).text()


def diff(old: NftRuleset, new: NftRuleset) -> NftTransaction:
    """One transaction turning the table from ``old`` (what we applied last) into ``new``,
    touching only what changed: new/changed chains are (re)filled, map and set elements
    are added and deleted one by one, removed chains and sets are deleted. Empty when
    nothing changed.

    Order matters inside the transaction: elements and rules that reference a chain or set
    must be gone before it is deleted, and a chain must exist before anything jumps to it.
    """
    out: list[NftOp] = []
    recreated = {
        name
        for name, s in new.sets.items()
        if name in old.sets and old.sets[name].spec() != s.spec()
    }
    changed = [
        name
        for name, c in new.chains.items()
        if name in old.chains
        and (
            old.chains[name].rules != c.rules
            or any(r.references(s) for s in recreated for r in c.rules)
        )
    ]
    added_chains = [name for name in new.chains if name not in old.chains]
    removed_chains = [name for name in old.chains if name not in new.chains]
    added_sets = [s for name, s in new.sets.items() if name not in old.sets]
    removed_sets = [s for name, s in old.sets.items() if name not in new.sets]

    def add_set(s: NftSet) -> NftOp:
        return NftOp("add", set_kind(s), s.name, declaration=s)

    def elements(verb: str, s: NftSet, elems: tuple[Element, ...]) -> NftOp:
        return NftOp(verb, "element", s.name, set_type=s.type, elements=elems)

    for name in added_chains:
        out.append(NftOp("add", "chain", name, hook=new.chains[name].hook))
    out.extend(add_set(s) for s in added_sets)

    additions: list[NftOp] = []
    for name, s in new.sets.items():
        if s.dynamic or name not in old.sets or name in recreated:
            continue
        before = {e.key: e for e in old.sets[name].elements}
        after = {e.key: e for e in s.elements}
        gone = tuple(e for k, e in before.items() if after.get(k) != e)
        if gone:
            out.append(elements("delete", s, gone))
        fresh = tuple(e for k, e in after.items() if before.get(k) != e)
        if fresh:
            additions.append(elements("add", s, fresh))

    out.extend(NftOp("flush", "chain", name) for name in changed)
    for name in recreated:
        s = new.sets[name]
        out.append(NftOp("delete", set_kind(s), name))
        out.append(add_set(s))
    for name in (*changed, *added_chains):
        out.extend(NftOp("add", "rule", name, rule=r) for r in new.chains[name].rules)
    out.extend(elements("add", s, s.elements) for s in added_sets if s.elements and not s.dynamic)
    out.extend(additions)

    out.extend(NftOp("flush", "chain", name) for name in removed_chains)
    out.extend(NftOp("delete", "chain", name) for name in removed_chains)
    out.extend(NftOp("delete", set_kind(s), s.name) for s in removed_sets)
    return NftTransaction(new.family, tuple(out))
