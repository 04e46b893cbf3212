"""Which IP families a node programs: upstream's rule, as a plain function.

Dual-stack whenever the node can program both families (the mode's tools and the
kernel's IPv6 allow it: :func:`proxy.modes.supported_families`), whatever the Node's
addresses; otherwise the primary family alone. The primary family is that of the Node's
first address.
"""

from __future__ import annotations

from collections.abc import Mapping

from proxy.model import IPFamily, Node


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
