"""Where a policy chain's endpoints live in the shared endpoint maps (pure).

A ``service-*`` / ``local-*`` chain with two or more endpoints and no session affinity
picks its endpoint with one rule::

    meta l4proto tcp dnat to numgen random mod 3 offset 5120 map @endpoints-tcp-2a

``numgen random mod n offset b`` yields b..b+n-1; those keys of map ``endpoints-tcp-2a`` hold
the chain's endpoints (``address . port``). Why not one rule per endpoint: the kernel
re-validates every rule reachable from the base chains whenever a transaction adds a
rule, so an endpoint change cost ~80 ms at 10,000 services with a rule cascade and
~10 ms with one rule per chain. Why not one map per chain: the kernel finds sets by name
with a list walk, so 10,000 maps take minutes to load. Why not one map for all: every
element added to a map is checked against every rule that uses it. So: ``BUCKETS`` maps,
a chain's map picked by a hash of its name.

Inside a map, key space is cut into windows of ``WINDOW`` keys; a chain needs
``ceil(n / WINDOW)`` consecutive windows and asks for them at a hash of its name (one
of the first ``HOMES`` windows). The first chain in (window, name) order keeps its place
on a collision and the next takes the first free run after it, so the layout is a
function of the chains alone (a full render and an incremental one agree) and a chain
moves only when a colliding chain is added or grows.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

BUCKETS = 256
WINDOW = 1024
WINDOWS = (1 << 32) // WINDOW
"""Windows per map: numgen's result is a 32-bit key."""
HOMES = 4096
"""Chains ask for a window below this: offsets stay short enough to read, and a
collision only moves the later chain onward."""


@dataclass(frozen=True)
class Slot:
    """A chain's place: map ``map_name``, keys ``offset`` .. ``offset + WINDOW*windows``."""

    map_name: str
    offset: int
    windows: int


def _hash(chain: str) -> int:
    return int.from_bytes(hashlib.blake2b(chain.encode(), digest_size=8).digest(), "big")


def map_name(chain: str, protocol: str) -> str:
    """The endpoint map a chain's endpoints go in: one set of maps per protocol, as
    nft 1.0.6 only accepts new rules into a map declared ``typeof … tcp dport`` (not
    ``th dport``) after a ``meta l4proto tcp`` match once the map is in the kernel."""
    return f"endpoints-{protocol}-{_hash(chain) % BUCKETS:02x}"


def is_map_name(name: str) -> bool:
    return name.startswith("endpoints-")


def protocol_of(map_name: str) -> str:
    """The protocol of an endpoint map's services (``tcp`` for ``endpoints-tcp-2a``)."""
    return map_name.split("-")[1]


def windows_for(endpoints: int) -> int:
    return max(1, -(-endpoints // WINDOW))


def home(chain: str) -> int:
    """The first window a chain asks for."""
    return (_hash(chain) // BUCKETS) % HOMES


def place(demands: Mapping[str, int]) -> dict[str, int]:
    """First windows of chains sharing one map (``demands``: chain → windows needed)."""
    starts: list[int] = []  # taken runs of windows, sorted: starts[i] .. ends[i]
    ends: list[int] = []
    out: dict[str, int] = {}
    for start_at, chain in sorted((home(c), c) for c in demands):
        n = demands[chain]
        start = _free_run(starts, ends, start_at, n)
        out[chain] = start
        i = bisect.bisect(starts, start)
        starts.insert(i, start)
        ends.insert(i, start + n)
    return out


def _free_run(starts: list[int], ends: list[int], start: int, n: int) -> int:
    """The first run of ``n`` free windows at or after ``start``."""
    while True:
        if start + n > WINDOWS:
            raise ValueError("endpoint map is full")
        i = bisect.bisect(ends, start)  # the first taken run ending after ``start``
        if i == len(starts) or starts[i] >= start + n:
            return start
        start = ends[i]


def map_slots(name: str, demands: Mapping[str, int]) -> dict[str, Slot]:
    """Slots of the chains sharing endpoint map ``name`` (chain → windows needed)."""
    return {chain: Slot(name, first * WINDOW, demands[chain])
            for chain, first in place(demands).items()}  # fmt: skip
