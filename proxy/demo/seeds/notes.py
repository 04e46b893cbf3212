"""The five learners' notes the walkthroughs replay, and what a walkthrough records."""

from __future__ import annotations

from dataclasses import dataclass

OURS = "   # not in the note"
WAIT = 90.0
"""Seconds a walkthrough waits for the cluster to do something (pods, addresses, rules)."""
POLL = 0.3


class SeedsError(RuntimeError):
    """The lab cannot run the walkthroughs (not an unexpected outcome: a failure)."""


@dataclass(frozen=True)
class SeedNote:
    number: int
    file: str
    topic: str
    namespace: str


SEEDS: tuple[SeedNote, ...] = (
    SeedNote(
        0,
        "000_ae18fa0a313f7d33.txt",
        "pods behind a Service: DNS names, ClusterIP, why ping fails",
        "seed-000",
    ),
    SeedNote(
        1,
        "001_11b7ff294316ef06.txt",
        "pod IPs, a Service's ClusterIP and Endpoints, CoreDNS",
        "seed-001",
    ),
    SeedNote(
        2,
        "002_71c4ed2ede7c3a1a.txt",
        "discovery by env and DNS, kube-proxy's rules, external services, keep-alive",
        "seed-002",
    ),
    SeedNote(
        3,
        "003_7cbe46730cc72950.txt",
        "port-forward, ClusterIP, LoadBalancer, ExternalName, headless, endpoints",
        "seed-003",
    ),
    SeedNote(
        4,
        "004_56dfe1fbee3c49b1.txt",
        "ClusterIP, NodePort and LoadBalancer in namespace lab06",
        "lab06",
    ),
)


@dataclass(frozen=True)
class Deviation:
    """Where the lab and a note part ways: a command that behaved differently from the
    note (``kind`` "command") or a statement of the note the cluster contradicts
    ("claim"), and why."""

    kind: str
    what: str
    why: str
