"""nftables mode's object model: the table as chains, sets/maps and their elements, how
service ports' fragments make it up, and the statements of an incremental transaction."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple

from proxy.model import IPFamily, Protocol
from proxy.nftables.names import CLUSTER_IPS, HAIRPIN_CONNECTIONS, TABLE
from proxy.nftables.statements import (
    ElementData,
    ElementKey,
    EndpointMapTypeof,
    Rule,
    SetType,
    field_text,
    safe_comment,
)

PortKey = tuple[str, str, str, Protocol]
"""A service port: namespace, Service name, port name, protocol."""


@dataclass(frozen=True)
class BaseHook:
    type: str
    hook: str
    priority: int

    def spec(self) -> str:
        return f"type {self.type} hook {self.hook} priority {self.priority}"


@dataclass(frozen=True)
class NftChain:
    name: str
    rules: tuple[Rule, ...] = ()
    hook: BaseHook | None = None


@dataclass(frozen=True, slots=True)
class NftElement:
    key: ElementKey
    value: ElementData | None = None
    """A map element's data (a verdict, or fields); None in a set."""
    comment: str = ""

    def key_text(self) -> str:
        return field_text(self.key)

    def text(self) -> str:
        # a full sync prints every element: the common shapes are spelled out
        key, value, comment = self.key, self.value, self.comment
        out = f"{key[0]}" if len(key) == 1 else field_text(key)
        if comment:
            out = f'{out} comment "{safe_comment(comment)}"'
        if value is None:
            return out
        if type(value) is tuple:
            if len(value) == 2:  # an endpoint: address . port
                return f"{out} : {value[0]} . {value[1]}"
            return f"{out} : {field_text(value)}"
        return f"{out} : {value.text()}"  # type: ignore[union-attr]


class EndpointElement(NamedTuple):
    """An endpoint map's element, ``number : address . port``. A table holds one per
    endpoint of every multi-endpoint service port: a named tuple of plain values is the
    cheapest immutable object to build, and the garbage collector stops tracking it."""

    number: int
    """numgen's result that picks it (the chain's offset + the endpoint's position)."""
    ip: str
    port: int
    comment: str = ""

    @property
    def key(self) -> ElementKey:
        return (self.number,)

    @property
    def value(self) -> ElementData:
        return (self.ip, self.port)

    def key_text(self) -> str:
        return f"{self.number}"

    def text(self) -> str:
        if self.comment:
            head = f'{self.number} comment "{safe_comment(self.comment)}"'
            return f"{head} : {self.ip} . {self.port}"
        return f"{self.number} : {self.ip} . {self.port}"


Element = NftElement | EndpointElement


@dataclass(frozen=True)
class NftSet:
    """A set or verdict map. ``dynamic`` sets (affinity) keep their elements across syncs."""

    name: str
    type: SetType
    elements: tuple[Element, ...] = ()
    flags: tuple[str, ...] = ()
    timeout: int | None = None
    comment: str = ""
    typeof: EndpointMapTypeof | None = None
    """Declared by expressions (``typeof numgen random mod 1 : ip daddr . tcp dport``)
    when no type name fits; ``type`` still names the key and data types."""
    size: int | None = None
    """The most elements a dynamic set holds."""

    @property
    def is_map(self) -> bool:
        return self.type.is_map

    @property
    def dynamic(self) -> bool:
        return "dynamic" in self.flags

    def spec(self) -> str:
        typeof = self.typeof
        parts = [f"typeof {typeof.text()}" if typeof else f"type {self.type.text()}"]
        if self.flags:
            parts.append("flags " + ",".join(self.flags))
        if self.size is not None:
            parts.append(f"size {self.size}")
        if self.timeout is not None:
            parts.append(f"timeout {self.timeout}s")
        if self.comment:
            parts.append(f'comment "{safe_comment(self.comment)}"')
        return " ; ".join(parts) + " ;"


@dataclass(frozen=True, eq=False)
class NftRuleset:
    """Our table: plan-wide chains and sets (``core``), one fragment per service port,
    and the elements of the sets service ports share (counted: two ports of one Service
    share its ClusterIP). ``chains`` and ``sets`` are the table merged, built on first
    use: an incremental sync only compares the fragments of the service ports that were
    rendered again (``updated``)."""

    family: IPFamily
    core: Fragment
    fragments: Mapping[PortKey, Fragment]
    shared: Mapping[str, Mapping[ElementKey, int]]
    updated: frozenset[PortKey] | None = None
    """The service ports whose fragments may differ from those of the ruleset rendered
    before it with the same cache (rendered again); None: any."""

    @cached_property
    def _merged(self) -> tuple[Mapping[str, NftChain], Mapping[str, NftSet]]:
        return self.merged()

    def merged(self) -> tuple[Mapping[str, NftChain], Mapping[str, NftSet]]:
        """Chains and sets of the whole table, built anew (``chains``/``sets`` keep theirs;
        a full sync uses this so the agent does not hold a second copy of the table)."""
        b = TableBuilder(self.family)
        b.merge(self.core)
        for frag in self.fragments.values():
            b.merge(frag)
        for set_name, counts in self.shared.items():
            for key in counts:
                b.element(set_name, key)
        return b.build_parts()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NftRuleset):
            return NotImplemented
        return (self.family, self.chains, self._set_contents) == (
            other.family,
            other.chains,
            other._set_contents,
        )

    @property
    def _set_contents(self) -> dict[str, tuple[NftSet, frozenset[Element]]]:
        """Sets compared as sets: element order is not part of the table."""
        return {
            n: (dataclasses.replace(s, elements=()), frozenset(s.elements))
            for n, s in self.sets.items()
        }

    __hash__ = None  # type: ignore[assignment]

    @property
    def chains(self) -> Mapping[str, NftChain]:
        return self._merged[0]

    @property
    def sets(self) -> Mapping[str, NftSet]:
        return self._merged[1]

    @property
    def nft_family(self) -> str:
        return "ip" if self.family is IPFamily.V4 else "ip6"

    @property
    def rule_count(self) -> int:
        return sum(len(c.rules) for c in self.chains.values())

    @property
    def element_count(self) -> int:
        return sum(len(s.elements) for s in self.sets.values())


@dataclass(frozen=True)
class ExistingNft:
    """What our table holds now: names of chains and sets/maps, and set timeouts."""

    table_exists: bool = False
    chains: frozenset[str] = frozenset()
    base_chains: Mapping[str, BaseHook] = field(default_factory=dict)
    """Existing base chains' hooks (type, hook, priority)."""
    sets: Mapping[str, int | None] = field(default_factory=dict)
    """set name → timeout in seconds (None when it has none)."""
    maps: frozenset[str] = frozenset()


class TableBuilder:
    def __init__(self, family: IPFamily) -> None:
        self.family = family
        self.chains: dict[str, list[Rule] | tuple[Rule, ...]] = {}
        self.hooks: dict[str, BaseHook] = {}
        self.sets: dict[str, NftSet] = {}
        self.elements: dict[str, list[Element]] = {}

    def chain(self, name: str, hook: BaseHook | None = None) -> None:
        self.chains.setdefault(name, [])
        if hook is not None:
            self.hooks[name] = hook

    def rule(self, chain: str, rule: Rule) -> None:
        rules = self.chains.setdefault(chain, [])
        assert isinstance(rules, list), f"chain {chain} is from a cached fragment"
        rules.append(rule)

    def declare(self, s: NftSet) -> None:
        self.sets.setdefault(s.name, s)
        self.elements.setdefault(s.name, [])

    def element(
        self, set_name: str, key: ElementKey, value: ElementData | None = None, comment: str = ""
    ) -> None:
        self.elements.setdefault(set_name, []).append(NftElement(key, value, comment))

    def endpoint(self, map_name: str, number: int, ip: str, port: int, comment: str = "") -> None:
        self.elements.setdefault(map_name, []).append(EndpointElement(number, ip, port, comment))

    def fragment(self) -> Fragment:
        """What this builder holds, frozen (a service port's share of the ruleset)."""
        return Fragment(
            chains=tuple((n, tuple(r)) for n, r in self.chains.items()),
            sets=tuple(self.sets.values()),
            elements=tuple((n, tuple(e)) for n, e in self.elements.items() if e),
            hooks=tuple(self.hooks.items()),
        )

    def merge(self, f: Fragment) -> None:
        for name, rules in f.chains:
            self.chains[name] = rules
        self.hooks.update(f.hooks)
        for s in f.sets:
            self.declare(s)
        for set_name, elements in f.elements:
            self.elements.setdefault(set_name, []).extend(elements)

    def build_parts(self) -> tuple[dict[str, NftChain], dict[str, NftSet]]:
        chains = {
            n: NftChain(n, tuple(rules), self.hooks.get(n)) for n, rules in self.chains.items()
        }
        sets = {
            n: dataclasses.replace(s, elements=tuple(self.elements[n]))
            for n, s in self.sets.items()
        }
        return chains, sets


@dataclass(frozen=True)
class Fragment:
    chains: tuple[tuple[str, tuple[Rule, ...]], ...]
    sets: tuple[NftSet, ...]
    elements: tuple[tuple[str, tuple[Element, ...]], ...]
    hooks: tuple[tuple[str, BaseHook], ...] = ()
    cluster_ip: str = ""
    hairpins: tuple[ElementKey, ...] = ()
    """Keys of its local endpoints in the hairpin-connections set."""


def shared_keys(frag: Fragment) -> tuple[tuple[str, tuple[ElementKey, ...]], ...]:
    """The elements a fragment adds to sets that several service ports share."""
    return ((CLUSTER_IPS, ((frag.cluster_ip,),)), (HAIRPIN_CONNECTIONS, frag.hairpins))


def set_kind(s: NftSet) -> str:
    return "map" if s.is_map else "set"


@dataclass(frozen=True)
class NftOp:
    """One statement of an incremental transaction, kept structured so that the kernel
    layer can send it as netlink messages; :meth:`text` is its nft spelling."""

    verb: str
    """``add``, ``delete`` or ``flush``."""
    kind: str
    """``chain``, ``rule``, ``set``, ``map`` or ``element``."""
    name: str
    """The chain, set or map."""
    rule: Rule | None = None
    hook: BaseHook | None = None
    declaration: NftSet | None = None
    """A new set or map (its elements are added by ``element`` statements)."""
    set_type: SetType | None = None
    """An element's set or map type (``ipv4_addr . inet_proto . inet_service``)."""
    elements: tuple[Element, ...] = ()
    """Elements added, or deleted (their keys)."""

    def text(self, table: str) -> str:
        head = f"{self.verb} {self.kind} {table} {self.name}"
        if self.rule is not None:
            return f"{head} {self.rule.text()}"
        if self.kind == "element":
            adding = self.verb == "add"
            body = ", ".join(e.text() if adding else e.key_text() for e in self.elements)
            return f"{head} {{ {body} }}"
        if self.verb == "add" and self.hook is not None:
            return f"{head} {{ {self.hook.spec()} ; }}"
        if self.verb == "add" and self.declaration is not None:
            return f"{head} {{ {self.declaration.spec()} }}"
        return head


@dataclass(frozen=True)
class NftTransaction:
    """The statements of one incremental transaction on one family's table."""

    family: IPFamily
    ops: tuple[NftOp, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.ops)

    @property
    def table(self) -> str:
        return f"{'ip' if self.family is IPFamily.V4 else 'ip6'} {TABLE}"

    def text(self) -> str:
        """The ``nft -f`` script (empty when there is nothing to do)."""
        t = self.table
        return "".join(op.text(t) + "\n" for op in self.ops)
