"""Which IP families a node programs: upstream's rule, as a plain function.

Dual-stack whenever the node can program both families (the mode's tools and the
kernel's IPv6 allow it: :func:`proxy.modes.supported_families`), whatever the Node's
addresses; otherwise the primary family alone. The primary family is that of the Node's
first address.
"""

from __future__ import annotations

from collections.abc import Mapping

from proxy.model import IPFamily, IPNetwork, Node


def primary_family(node: Node | None) -> IPFamily:
    """The node's primary IP family: that of its first InternalIP (upstream's
    detectNodeIPs), IPv4 when the Node or its addresses are unknown."""
    if node is not None and node.addresses:
        return IPFamily.of(node.addresses[0])
    return IPFamily.V4


def choose_families(
    primary: IPFamily, support: Mapping[IPFamily, str | None]
) -> tuple[tuple[IPFamily, ...], str]:
    """The families to program, primary first, and why the others are not (empty
    when both are). Like upstream: dual-stack whenever the node can program both IP
    families, whatever the Node's addresses; otherwise the primary family alone, which
    must be supported."""
    ok = [f for f in (primary, *(f for f in support if f is not primary)) if not support[f]]
    if primary not in ok:
        raise FamilyError(
            f"cannot program the node's primary IP family {primary}: {support[primary]}"
        )
    if len(ok) == len(support):
        return tuple(ok), ""
    why = "; ".join(f"{f}: {reason}" for f, reason in support.items() if reason)
    return (primary,), why


class FamilyError(RuntimeError):
    """The node cannot program its primary IP family (the message says why)."""


def config_warnings(
    primary: IPFamily,
    families: tuple[IPFamily, ...],
    cluster_cidrs: tuple[IPNetwork, ...],
    nodeport_cidrs: tuple[IPNetwork, ...],
    pod_cidrs: tuple[IPNetwork, ...],
) -> list[str]:
    """Settings of the wrong IP family for this node, said once at start (upstream's
    checkBadIPConfig and checkBadConfig): they are not fatal, but traffic of a family
    is then not treated as the operator probably meant."""
    other = IPFamily.V6 if primary is IPFamily.V4 else IPFamily.V4
    stack = f"{primary}-primary" if len(families) > 1 else f"{primary}-only"
    out: list[str] = []

    def only_other(cidrs: tuple[IPNetwork, ...]) -> bool:
        return bool(cidrs) and all(IPFamily.of(c) is other for c in cidrs)

    if only_other(cluster_cidrs):
        out.append(
            f"this node is {stack} but --cluster-cidr has only {other} CIDRs: {primary} "
            f"traffic from outside the pod network is not told apart (give one CIDR per "
            "family, comma-separated)"
        )
    if only_other(pod_cidrs):
        out.append(f"this node is {stack} but its Node's spec.podCIDRs are only {other}")
    if nodeport_cidrs:
        mine = [c for c in nodeport_cidrs if IPFamily.of(c) is primary]
        dual = any(
            len({IPFamily.of(c) for c in cidrs}) > 1
            for cidrs in (cluster_cidrs, nodeport_cidrs, pod_cidrs)
        )
        if not mine:
            out.append(
                f"this node is {primary}-primary but --nodeport-addresses has only {other} "
                f"CIDRs: NodePort connections are accepted on every local {primary} address"
            )
        elif dual and len(mine) == len(nodeport_cidrs):
            out.append(
                f"the cluster looks dual-stack but --nodeport-addresses has only {primary} "
                f"CIDRs: NodePort connections are accepted on every local {other} address"
            )
    return out
