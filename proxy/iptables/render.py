"""iptables backend, pure part: a :class:`Plan` becomes an ``iptables-restore`` transaction.

The chain layout and names are upstream kube-proxy's, so ``iptables-save`` output reads the
same as on a node running kube-proxy: ``KUBE-SERVICES`` dispatches on destination,
``KUBE-SVC-*``/``KUBE-SVL-*`` balance over ``KUBE-SEP-*`` endpoint chains with a
``statistic`` cascade, ``KUBE-EXT-*`` handles external destinations, ``KUBE-FW-*``
loadBalancerSourceRanges, and the filter table rejects or drops traffic to services
without endpoints.

Rules are written in the order ``iptables-save`` prints their matches, so a saved table
can be compared rule by rule with what we rendered.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from proxy import comments, naming
from proxy.model import IPFamily
from proxy.plan import EndpointCandidate, Filter, Plan, ServicePortPlan

# fixed chains, per table
KUBE_SERVICES = "KUBE-SERVICES"
KUBE_EXTERNAL_SERVICES = "KUBE-EXTERNAL-SERVICES"
KUBE_NODEPORTS = "KUBE-NODEPORTS"
KUBE_POSTROUTING = "KUBE-POSTROUTING"
KUBE_MARK_MASQ = "KUBE-MARK-MASQ"
KUBE_FORWARD = "KUBE-FORWARD"
KUBE_PROXY_FIREWALL = "KUBE-PROXY-FIREWALL"
KUBE_FIREWALL = "KUBE-FIREWALL"
KUBE_PROXY_CANARY = "KUBE-PROXY-CANARY"
_OUR_GUARD_JUMP = "kube-proxy localnet guard"
"""The comment on our jumps to KUBE-FIREWALL (the kubelet's own jumps have none)."""
"""Legacy iptables' drift canary (declared by the kernel layer, owned like our chains)."""

NAT_FIXED = (KUBE_SERVICES, KUBE_NODEPORTS, KUBE_POSTROUTING, KUBE_MARK_MASQ)
FILTER_FIXED = (
    KUBE_SERVICES,
    KUBE_EXTERNAL_SERVICES,
    KUBE_FORWARD,
    KUBE_NODEPORTS,
    KUBE_PROXY_FIREWALL,
)
PER_SERVICE_PREFIXES = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SEP-")
OWNED_FIXED = frozenset((*NAT_FIXED, *FILTER_FIXED, KUBE_FIREWALL, KUBE_PROXY_CANARY))


def is_owned_chain(name: str) -> bool:
    """Chains kube-proxy-py creates (and so may delete)."""
    return name in OWNED_FIXED or name.startswith(PER_SERVICE_PREFIXES)


@dataclass(frozen=True, order=True)
class JumpRule:
    """A rule we keep in a built-in chain, jumping to one of ours."""

    table: str
    chain: str
    spec: str
    """The rule after ``-A CHAIN``, exactly as iptables-save prints it."""


def _jump(table: str, chain: str, target: str, comment: str, match: str = "") -> JumpRule:
    pre = f"{match} " if match else ""
    return JumpRule(table, chain, f'{pre}-m comment --comment "{comment}" -j {target}')


_NEW = "-m conntrack --ctstate NEW"


def jump_rules(localhost_guard: bool) -> tuple[JumpRule, ...]:
    """Upstream's jumps from the built-in chains, in insertion order."""
    rules = [
        _jump("filter", "INPUT", KUBE_PROXY_FIREWALL, "kubernetes load balancer firewall", _NEW),
        _jump("filter", "INPUT", KUBE_NODEPORTS, "kubernetes health check service ports"),
        _jump(
            "filter",
            "INPUT",
            KUBE_EXTERNAL_SERVICES,
            "kubernetes externally-visible service portals",
            _NEW,
        ),
        _jump("filter", "FORWARD", KUBE_PROXY_FIREWALL, "kubernetes load balancer firewall", _NEW),
        _jump("filter", "FORWARD", KUBE_FORWARD, "kubernetes forwarding rules"),
        _jump("filter", "FORWARD", KUBE_SERVICES, "kubernetes service portals", _NEW),
        _jump(
            "filter",
            "FORWARD",
            KUBE_EXTERNAL_SERVICES,
            "kubernetes externally-visible service portals",
            _NEW,
        ),
        _jump("filter", "OUTPUT", KUBE_PROXY_FIREWALL, "kubernetes load balancer firewall", _NEW),
        _jump("filter", "OUTPUT", KUBE_SERVICES, "kubernetes service portals", _NEW),
        _jump("nat", "PREROUTING", KUBE_SERVICES, "kubernetes service portals"),
        _jump("nat", "OUTPUT", KUBE_SERVICES, "kubernetes service portals"),
        _jump("nat", "POSTROUTING", KUBE_POSTROUTING, "kubernetes postrouting rules"),
    ]
    if localhost_guard:
        rules += [
            _jump("filter", "INPUT", KUBE_FIREWALL, _OUR_GUARD_JUMP),
            _jump("filter", "OUTPUT", KUBE_FIREWALL, _OUR_GUARD_JUMP),
        ]
    return tuple(rules)


@dataclass(frozen=True)
class IptablesRuleset:
    """Our chains with their rules (rule text after ``-A CHAIN``), per table."""

    family: IPFamily
    nat: Mapping[str, tuple[str, ...]]
    filter: Mapping[str, tuple[str, ...]]
    jumps: tuple[JumpRule, ...]
    route_localnet: bool = False
    """iptables localhost NodePorts need ``net.ipv4.conf.all.route_localnet=1``."""

    def tables(self) -> dict[str, Mapping[str, tuple[str, ...]]]:
        return {"filter": self.filter, "nat": self.nat}

    @property
    def rule_count(self) -> int:
        return sum(len(r) for t in (self.nat, self.filter) for r in t.values())


@dataclass(frozen=True)
class ExistingIptables:
    """What ``iptables-save`` shows in the tables we touch (from :func:`parse_save`)."""

    chains: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """table → every chain name (built-in and user)."""
    builtin_rules: Mapping[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    """(table, built-in chain) → rule specs (after ``-A CHAIN``)."""
    rules: Mapping[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    """(table, chain) → rule specs for every chain."""

    def owned_chains(self, table: str) -> frozenset[str]:
        return frozenset(c for c in self.chains.get(table, ()) if is_owned_chain(c))


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


# ---------------------------------------------------------------------------------------
# rendering


IPT_COMMENT_MAX = 255
"""xt_comment holds 256 bytes with the NUL."""


def _q(comment: str) -> str:
    """``comment`` as one double-quoted iptables-restore word (:func:`comments.quotable`)."""
    return '"' + comments.quotable(comment, IPT_COMMENT_MAX) + '"'


def _comment(text: str) -> str:
    """The comment match carrying ``text``."""
    return f"-m comment --comment {_q(text)}"


class _Writer:
    """Accumulates chains (ordered) and their rules for one table."""

    def __init__(self) -> None:
        self.chains: dict[str, list[str]] = {}

    def chain(self, name: str) -> None:
        self.chains.setdefault(name, [])

    def add(self, chain: str, *parts: str) -> None:
        self.chains.setdefault(chain, []).append(" ".join(p for p in parts if p))

    def frozen(self) -> dict[str, tuple[str, ...]]:
        return {k: tuple(v) for k, v in self.chains.items()}

    def merge(
        self, chains: tuple[tuple[str, tuple[str, ...]], ...], shared: frozenset[str]
    ) -> None:
        """Add a fragment: rules for shared chains are appended, own chains taken whole."""
        for name, rules in chains:
            if name in shared:
                self.chains.setdefault(name, []).extend(rules)
            else:
                self.chains[name] = rules  # type: ignore[assignment]


@dataclass(frozen=True)
class _Fragment:
    nat: tuple[tuple[str, tuple[str, ...]], ...]
    filter: tuple[tuple[str, tuple[str, ...]], ...]


@dataclass
class RenderCache:
    """Rendered fragments of service ports, reused while their plan objects are."""

    params: object = None
    fragments: dict[int, tuple[ServicePortPlan, _Fragment]] = field(default_factory=dict)

    def start(self, params: object) -> None:
        if params != self.params:
            self.params = params
            self.fragments.clear()

    def fragment(
        self, plan: Plan, sp: ServicePortPlan, local_cidr: str | None, large: bool
    ) -> _Fragment:
        """``sp``'s chains; ``large`` is :func:`large_cluster` of the plan (part of the
        parameters given to :meth:`start`)."""
        hit = self.fragments.get(id(sp))
        if hit is not None and hit[0] is sp:
            return hit[1]
        nat, flt = _Writer(), _Writer()
        _render_port(plan, sp, nat, flt, local_cidr, large)
        frag = _Fragment(
            tuple((n, tuple(r)) for n, r in nat.chains.items()),
            tuple((n, tuple(r)) for n, r in flt.chains.items()),
        )
        self.fragments[id(sp)] = (sp, frag)
        return frag

    def keep_only(self, plan: Plan) -> None:
        live = {id(sp) for sp in plan.service_ports}
        for key in [k for k in self.fragments if k not in live]:
            del self.fragments[key]


def _host(ip: object, family: IPFamily) -> str:
    return f"{ip}/{32 if family is IPFamily.V4 else 128}"


def probability(n: int) -> str:
    """Upstream's statistic probability for the i-th of n remaining endpoints."""
    return f"{1.0 / n:0.10f}"


LARGE_CLUSTER_ENDPOINTS = 1000
"""Upstream's large-cluster threshold: above this many endpoint chains in all, the
per-endpoint rules (endpoint chains, and a service chain's jumps to them) carry no comment."""


def large_cluster(plan: Plan) -> bool:
    """Whether ``plan`` has more endpoint chains than :data:`LARGE_CLUSTER_ENDPOINTS`.

    Legacy iptables copies the whole table out of the kernel and back for every change, and
    a comment match takes ~290 bytes of it: at 10,000 Services × 10 endpoints, dropping the
    per-endpoint comments takes a third off every incremental restore (2.8 s → 1.9 s)."""
    return plan.endpoint_count > LARGE_CLUSTER_ENDPOINTS


def render(plan: Plan, cache: RenderCache | None = None) -> IptablesRuleset:
    """Render a plan into our nat and filter chains (pure; ``cache`` only saves work)."""
    fam = plan.family
    nat = _Writer()
    flt = _Writer()
    for c in NAT_FIXED:
        nat.chain(c)
    for c in FILTER_FIXED:
        flt.chain(c)
    mark = f"{plan.masquerade_mark:#x}"

    nat.add(KUBE_POSTROUTING, f"-m mark ! --mark {mark}/{mark}", "-j RETURN")
    nat.add(KUBE_POSTROUTING, f"-j MARK --set-xmark {mark}/0x0")  # == --xor-mark, as saved
    nat.add(
        KUBE_POSTROUTING,
        _comment("kubernetes service traffic requiring SNAT"),
        "-j MASQUERADE --random-fully",
    )
    nat.add(KUBE_MARK_MASQ, f"-j MARK --set-xmark {mark}/{mark}")  # == --or-mark, as saved

    flt.add(KUBE_FORWARD, "-m conntrack --ctstate INVALID", "-j DROP")
    flt.add(
        KUBE_FORWARD,
        _comment("kubernetes forwarding rules"),
        f"-m mark --mark {mark}/{mark}",
        "-j ACCEPT",
    )
    flt.add(
        KUBE_FORWARD,
        _comment("kubernetes forwarding conntrack rule"),
        "-m conntrack --ctstate RELATED,ESTABLISHED",
        "-j ACCEPT",
    )

    local_cidr = str(plan.cluster_cidr) if plan.cluster_cidr is not None else None
    cache = cache if cache is not None else RenderCache()
    large = large_cluster(plan)
    cache.start((fam, plan.masquerade_mark, plan.masquerade_all, local_cidr, large))
    nat_shared = frozenset((*NAT_FIXED, KUBE_FIREWALL))
    filter_shared = frozenset((*FILTER_FIXED, KUBE_FIREWALL))
    for sp in plan.service_ports:
        frag = cache.fragment(plan, sp, local_cidr, large)
        nat.merge(frag.nat, nat_shared)
        flt.merge(frag.filter, filter_shared)
    cache.keep_only(plan)

    # NodePort dispatch: must be the last rule of KUBE-SERVICES
    np_comment = _q("kubernetes service nodeports; NOTE: this must be the last rule in this chain")
    targets = plan.nodeports
    if targets.match_all_local:
        not_local = ""
        if fam is IPFamily.V6:
            not_local = "! -d ::1/128"
        elif not targets.include_localhost:
            not_local = "! -d 127.0.0.0/8"
        nat.add(
            KUBE_SERVICES,
            not_local,
            f"-m comment --comment {np_comment}",
            "-m addrtype --dst-type LOCAL",
            f"-j {KUBE_NODEPORTS}",
        )
    else:
        for ip in targets.addresses:
            nat.add(
                KUBE_SERVICES,
                f"-d {_host(ip, fam)}",
                f"-m comment --comment {np_comment}",
                f"-j {KUBE_NODEPORTS}",
            )

    localhost_guard = fam is IPFamily.V4 and targets.include_localhost
    if localhost_guard:
        flt.add(
            KUBE_FIREWALL,
            "! -s 127.0.0.0/8 -d 127.0.0.0/8",
            _comment("block incoming localnet connections"),
            "-m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT",
            "-j DROP",
        )
    return IptablesRuleset(
        family=fam,
        nat=nat.frozen(),
        filter=flt.frozen(),
        jumps=jump_rules(localhost_guard),
        route_localnet=localhost_guard,
    )


def _render_port(
    plan: Plan,
    sp: ServicePortPlan,
    nat: _Writer,
    flt: _Writer,
    local_cidr: str | None,
    large: bool,
) -> None:
    fam = plan.family
    spn = sp.service_port_name
    proto = f"-p {sp.protocol.lowercase}"
    dport = f"-m {sp.protocol.lowercase} --dport {sp.port}"
    cluster_chain = naming.svc_chain(sp)
    local_chain = naming.svl_chain(sp)
    ext = naming.ext_chain(sp)
    fw = naming.fw_chain(sp)
    internal_chain = local_chain if sp.internal_policy_local else cluster_chain
    external_policy_chain = local_chain if sp.external_policy_local else cluster_chain
    lb_target = fw if (sp.uses_firewall and sp.has_endpoints) else ext

    # declare per-service chains in a stable order
    if sp.uses_cluster_chain:
        nat.chain(cluster_chain)
    if sp.uses_local_chain:
        nat.chain(local_chain)
    if sp.uses_external_chain:
        nat.chain(ext)
    if sp.uses_firewall and sp.has_endpoints:
        nat.chain(fw)
    for ep in sp.reachable_endpoints:
        nat.chain(naming.sep_chain(sp, ep.address))

    cip = _host(sp.cluster_ip, fam)
    # -- cluster IP
    if sp.has_internal_endpoints:
        nat.add(
            KUBE_SERVICES,
            f"-d {cip}",
            proto,
            _comment(f"{spn} cluster IP"),
            dport,
            f"-j {internal_chain}",
        )
        if plan.masquerade_all:
            nat.add(
                internal_chain,
                f"-d {cip}",
                proto,
                _comment(f"{spn} cluster IP"),
                dport,
                f"-j {KUBE_MARK_MASQ}",
            )
        elif local_cidr is not None:
            nat.add(
                internal_chain,
                f"! -s {local_cidr} -d {cip}",
                proto,
                _comment(f"{spn} cluster IP"),
                dport,
                f"-j {KUBE_MARK_MASQ}",
            )
    else:
        verdict = sp.internal_filter or Filter.REJECT
        flt.add(
            KUBE_SERVICES,
            f"-d {cip}",
            proto,
            _comment(sp.filter_reason(verdict)),
            dport,
            f"-j {verdict.upper()}",
        )

    ext_filter = sp.external_filter
    # -- external IPs
    for ip in sp.external_ips:
        dst = f"-d {_host(ip, fam)}"
        if sp.has_endpoints:
            nat.add(KUBE_SERVICES, dst, proto, _comment(f"{spn} external IP"), dport, f"-j {ext}")
        if ext_filter is not None:
            flt.add(
                KUBE_EXTERNAL_SERVICES,
                dst,
                proto,
                _comment(sp.filter_reason(ext_filter)),
                dport,
                f"-j {ext_filter.upper()}",
            )
    # -- load balancer IPs
    for ip in sp.load_balancer_ips:
        dst = f"-d {_host(ip, fam)}"
        if sp.has_endpoints:
            nat.add(
                KUBE_SERVICES,
                dst,
                proto,
                _comment(f"{spn} loadbalancer IP"),
                dport,
                f"-j {lb_target}",
            )
            if sp.uses_firewall:
                flt.add(
                    KUBE_PROXY_FIREWALL,
                    dst,
                    proto,
                    _comment(f"{spn} traffic not accepted by {fw}"),
                    dport,
                    "-j DROP",
                )
        if ext_filter is not None:
            flt.add(
                KUBE_EXTERNAL_SERVICES,
                dst,
                proto,
                _comment(sp.filter_reason(ext_filter)),
                dport,
                f"-j {ext_filter.upper()}",
            )
    # -- node port
    if sp.node_port:
        np_dport = f"-m {sp.protocol.lowercase} --dport {sp.node_port}"
        if sp.has_endpoints:
            nat.add(KUBE_NODEPORTS, proto, _comment(spn), np_dport, f"-j {ext}")
        if ext_filter is not None:
            flt.add(
                KUBE_EXTERNAL_SERVICES,
                proto,
                _comment(sp.filter_reason(ext_filter)),
                "-m addrtype --dst-type LOCAL",
                np_dport,
                f"-j {ext_filter.upper()}",
            )
    if sp.health_check_node_port:
        flt.add(
            KUBE_NODEPORTS,
            "-p tcp",
            _comment(f"{spn} health check node port"),
            f"-m tcp --dport {sp.health_check_node_port}",
            "-j ACCEPT",
        )

    # -- external chain
    if sp.uses_external_chain:
        if not sp.external_policy_local:
            nat.add(
                ext,
                _comment(f"masquerade traffic for {spn} external destinations"),
                f"-j {KUBE_MARK_MASQ}",
            )
        else:
            if local_cidr is not None and sp.uses_cluster_chain:
                nat.add(
                    ext,
                    f"-s {local_cidr}",
                    _comment(f"pod traffic for {spn} external destinations"),
                    f"-j {cluster_chain}",
                )
            nat.add(
                ext,
                _comment(f"masquerade LOCAL traffic for {spn} external destinations"),
                "-m addrtype --src-type LOCAL",
                f"-j {KUBE_MARK_MASQ}",
            )
            if sp.uses_cluster_chain:
                nat.add(
                    ext,
                    _comment(f"route LOCAL traffic for {spn} external destinations"),
                    "-m addrtype --src-type LOCAL",
                    f"-j {cluster_chain}",
                )
        if sp.has_external_endpoints:
            nat.add(ext, f"-j {external_policy_chain}")

    # -- firewall chain (loadBalancerSourceRanges)
    if sp.uses_firewall and sp.has_endpoints:
        for src in sp.firewall_allowed_sources:
            nat.add(fw, f"-s {src}", _comment(f"{spn} loadbalancer IP"), f"-j {ext}")
        nat.add(fw, _comment(f"other traffic to {spn} will be dropped by KUBE-PROXY-FIREWALL"))

    # -- policy chains
    if sp.uses_cluster_chain:
        _balance(nat, sp, cluster_chain, sp.cluster_endpoints, large)
    if sp.uses_local_chain:
        _balance(nat, sp, local_chain, sp.local_endpoints, large)

    # -- endpoint chains
    ep_comment = "" if large else _comment(spn)
    for ep in sp.reachable_endpoints:
        sep = naming.sep_chain(sp, ep.address)
        nat.add(sep, f"-s {_host(ep.ip, fam)}", ep_comment, f"-j {KUBE_MARK_MASQ}")
        recent = (
            f"-m recent --set --name {sep} --mask {_full_mask(fam)} --rsource"
            if (sp.affinity_seconds is not None)
            else ""
        )
        nat.add(
            sep,
            proto,
            ep_comment,
            recent,
            f"-m {sp.protocol.lowercase}",
            f"-j DNAT --to-destination {ep.address}",
        )


def _full_mask(fam: IPFamily) -> str:
    return "255.255.255.255" if fam is IPFamily.V4 else "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"


def _balance(
    nat: _Writer,
    sp: ServicePortPlan,
    chain: str,
    endpoints: Iterable[EndpointCandidate],
    large: bool,
) -> None:
    """Affinity lookups first, then a statistic cascade: the i-th of n endpoints is taken
    with probability 1/(n-i), which makes the overall choice uniform."""
    eps = list(endpoints)
    spn = sp.service_port_name

    def comment(ep: EndpointCandidate) -> str:
        return "" if large else _comment(f"{spn} -> {ep.address}")

    if sp.affinity_seconds is not None:
        for ep in eps:
            sep = naming.sep_chain(sp, ep.address)
            nat.add(
                chain,
                comment(ep),
                f"-m recent --rcheck --seconds {sp.affinity_seconds} --reap --name {sep} "
                f"--mask {_full_mask(sp.family)} --rsource",
                f"-j {sep}",
            )
    n = len(eps)
    for i, ep in enumerate(eps):
        sep = naming.sep_chain(sp, ep.address)
        stat = f"-m statistic --mode random --probability {probability(n - i)}" if i < n - 1 else ""
        nat.add(chain, comment(ep), stat, f"-j {sep}")


# ---------------------------------------------------------------------------------------
# transactions


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
        if (tgt := _target(spec)) in KUBELET_SHARED and _OUR_GUARD_JUMP not in spec
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
            and (tgt not in kept or _OUR_GUARD_JUMP in spec)
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
