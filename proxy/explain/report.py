"""An :class:`~proxy.explain.engine.Explanation` as text for a person, or as JSON.

The JSON form is stable (``schema`` names its version; docs/explain.md documents every
field): new fields may be added, none renamed or removed within a version.
"""

from __future__ import annotations

import json
from typing import Any

from proxy import apivalidation as av
from proxy.explain.engine import Explanation, Verdict
from proxy.model import IPFamily

SCHEMA = "kube-proxy-py/explain/v1"
LINE_MAX = 2000
"""No printed line is longer; names from the state are valid Kubernetes names, but a
reason may quote several."""

VERDICT_WORDS = {
    Verdict.DNAT: "DNAT",
    Verdict.REJECT: "REJECT",
    Verdict.DROP: "DROP",
    Verdict.NOT_A_SERVICE: "not a Service (routed normally)",
}


def as_dict(e: Explanation) -> dict[str, Any]:
    pkt = e.packet
    sp = e.port_plan
    affinity: dict[str, Any] | None = None
    if e.affinity_seconds is not None:
        entry = (
            {"endpoint": e.affinity.endpoint, "seconds_left": e.affinity.seconds_left}
            if e.affinity is not None
            else None
        )
        affinity = {"timeout_seconds": e.affinity_seconds, "entry": entry}
    return {
        "schema": SCHEMA,
        "verdict": e.verdict.value,
        "reason": e.reason,
        "service": e.service,
        "service_port": (
            None
            if sp is None
            else {
                "namespace": sp.namespace,
                "name": sp.name,
                "port_name": sp.port_name,
                "port": sp.port,
                "protocol": sp.protocol.value,
                "node_port": sp.node_port,
            }
        ),
        "path": e.path.value if e.path is not None else None,
        "endpoints": [
            {
                "address": ep.address,
                "port": ep.port,
                "node": ep.node,
                "kept": ep.kept,
                "reason": ep.reason,
                "probability": round(ep.probability, 6),
                "masquerade": ep.masquerade,
            }
            for ep in e.endpoints
        ],
        "selection": e.selection or None,
        "session_affinity": affinity,
        "masquerade": e.masquerade,
        "masquerade_reason": e.masquerade_reason or None,
        "reject_with": e.reject_with,
        "packet": {
            "src": str(pkt.src),
            "dst": str(pkt.dst),
            "protocol": pkt.protocol_name,
            "dport": pkt.dport,
            "entry": pkt.entry.value,
        },
        "node": e.node,
        "mode": e.mode.value,
        "ip_family": "ipv4" if pkt.family is IPFamily.V4 else "ipv6",
        "steps": list(e.steps),
    }


def to_json(e: Explanation) -> str:
    return json.dumps(as_dict(e), indent=2) + "\n"


def to_text(e: Explanation) -> str:
    pkt = e.packet
    lines = [f"packet      {pkt}, on node {e.node} ({e.mode} mode, {pkt.family})"]
    if e.service is not None:
        lines.append(f"service     {e.service} ({e.path})")
    for i, step in enumerate(e.steps, 1):
        lines.append(f"{'steps' if i == 1 else '':<11} {i}. {step}")
    if e.endpoints:
        lines.append("endpoints")
        width = max(len(ep.target) for ep in e.endpoints)
        for ep in e.endpoints:
            mark = "kept" if ep.kept else "filtered"
            share = f"{ep.probability:.0%}" if ep.kept else "-"
            lines.append(
                f"  {mark:<8} {ep.target:<{width}}  {share:>4}  {ep.node or '(no node)'}: "
                f"{ep.reason}"
            )
    verdict = VERDICT_WORDS[e.verdict]
    if e.reject_with:
        verdict += f" with {e.reject_with}"
    if e.selection:
        lines.append(f"choice      {e.selection}")
    if e.verdict is Verdict.DNAT:
        lines.append(f"masquerade  {'yes' if e.masquerade else 'no'}: {e.masquerade_reason}")
    lines.append(f"verdict     {verdict}")
    lines.append(f"why         {e.reason}")
    return "".join(av.printable(line, LINE_MAX) + "\n" for line in lines)
