"""``kube-proxy-py explain``: what one node's rules do with a packet, from a state file."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from proxy.explain.packet import Entry, PacketError, make_packet, parse_address
from proxy.model import IPAddress, IPFamily

EXIT_DIFFERS = 4
"""``--verify``: the kernel did something else than the explanation says."""


def add_explain_parser(sub: Any, add_state_flags: Callable[..., None]) -> None:
    p = sub.add_parser(
        "explain",
        help="what a node's rules do with one packet, and why (offline, from a state file)",
        description="Explain what kube-proxy-py's rules on one node do with the first packet "
        "of a new connection: which Service port matches (or why none does), every endpoint "
        "and why it is kept or filtered, how one is chosen, masquerading, and the verdict.",
    )
    add_state_flags(p, explain=True)
    p.add_argument("--src", default="", metavar="IP", help="the packet's source (default: "
                   "the node's primary IP with --entry node)")  # fmt: skip
    p.add_argument("--dst", required=True, metavar="IP", help="the packet's destination")
    p.add_argument("--dport", type=_port, default=None, metavar="N",
                   help="destination port (TCP, UDP, SCTP)")  # fmt: skip
    p.add_argument("--proto", default="tcp", metavar="P", help="tcp (default), udp, sctp or icmp")
    p.add_argument(
        "--entry",
        default="auto",
        choices=[*[e.value for e in Entry], "auto"],
        help="where the packet meets the node: from one of its pods, from the node itself, "
        "or from outside (default auto: node when --src is the node's, pod when it is in "
        "--cluster-cidr, else external)",
    )
    p.add_argument("--output", "-o", default="text", choices=["text", "json"])
    p.add_argument(
        "--verify",
        action="store_true",
        help="also send the packet through the rendered rules in a throwaway network "
        "namespace with tracing on, list the rules the kernel traversed, and exit 4 when "
        "the kernel's outcome differs from the explanation (root)",
    )


def _port(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number in 1-65535")
    return int(text)


def _entry(args: argparse.Namespace, src: IPAddress, local: frozenset[IPAddress],
           cidr: Any) -> Entry:  # fmt: skip
    if args.entry != "auto":
        return Entry(args.entry)
    if src.is_loopback or src in local:
        return Entry.NODE
    if cidr is not None and src in cidr:
        return Entry.POD
    return Entry.EXTERNAL


def run(args: argparse.Namespace, state: Any, config: Any) -> int:
    """``explain`` on a loaded state file (:class:`PacketError`: a bad packet flag)."""
    from proxy.explain.engine import NodeView, explain
    from proxy.plan import plan

    dst = parse_address(args.dst, "--dst")
    family = IPFamily.of(dst)
    node = state.snapshot.node
    local = frozenset(node.addresses if node is not None else ())
    src_text = args.src
    if not src_text:
        primary = node.primary_ip(family) if node is not None else None
        if args.entry not in ("node", "auto") or primary is None:
            raise PacketError(
                "--src: give the packet's source address (only --entry node defaults to the "
                "node's primary IP, which needs the Node in the state file)"
            )
        src_text, args.entry = str(primary), "node"
    src = parse_address(src_text, "--src")
    entry = _entry(args, src, local, config.cluster_cidr(family))
    packet = make_packet(src_text, args.dst, args.proto, args.dport, entry)
    the_plan = plan(state.snapshot, config, family, state.problems)
    why = explain(the_plan, packet, node=NodeView(local), services=state.snapshot.services)
    check = None
    if args.verify:
        from proxy.explain import kernelcheck

        check = kernelcheck.verify_offline(the_plan, packet, why)
    sys.stdout.write(_output(why, check, args.output))
    return EXIT_DIFFERS if check is not None and not check.agrees else 0


def _output(why: Any, check: Any, output: str) -> str:
    """The explanation (and the kernel's check), as text or as one JSON document."""
    from proxy.explain import kernelcheck, report

    if output != "json":
        return report.to_text(why) + (kernelcheck.to_text(check) if check is not None else "")
    doc = report.as_dict(why)
    if check is not None:
        doc["verify"] = kernelcheck.as_dict(check)
    return json.dumps(doc, indent=2) + "\n"
