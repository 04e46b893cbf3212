"""Where policy chains' endpoints go in the shared endpoint maps."""

from __future__ import annotations

import itertools
import random

from proxy.nftables import endpointmaps as em


def runs(placed: dict[str, int], demands: dict[str, int]) -> list[tuple[int, int]]:
    return sorted((s, s + demands[c]) for c, s in placed.items())


def test_chains_get_their_home_window_when_free() -> None:
    demands = {f"service-{i}": 1 for i in range(20)}
    placed = em.place(demands)
    homes = [em.home(c) for c in demands]
    if len(set(homes)) == len(homes):
        assert placed == {c: em.home(c) for c in demands}


def test_collisions_and_large_chains_never_overlap() -> None:
    rng = random.Random(7)
    # many chains into few homes: collisions guaranteed; some need several windows
    demands = {f"c{i}": rng.choice([1, 1, 1, 3, 40]) for i in range(3000)}
    placed = em.place(demands)
    spans = runs(placed, demands)
    assert all(end <= em.WINDOWS for _, end in spans)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(spans))
    # a chain starts at or after its home (the first free run from there)
    assert all(placed[c] >= em.home(c) for c in demands)


def test_the_layout_does_not_depend_on_order() -> None:
    demands = {f"c{i}": 1 + i % 3 for i in range(500)}
    shuffled = dict(sorted(demands.items(), key=lambda kv: hash(kv[0]) % 97))
    assert em.place(demands) == em.place(shuffled)


def test_adding_a_chain_moves_only_chains_it_collides_with() -> None:
    demands = {f"c{i}": 1 for i in range(300)}
    before = em.place(demands)
    demands["new-chain"] = 2
    after = em.place(demands)
    moved = {c for c in before if before[c] != after[c]}
    start = after["new-chain"]
    # only chains at or after the newcomer's home can move, and only a few
    assert all(before[c] >= em.home("new-chain") for c in moved)
    assert len(moved) <= 3, moved
    assert start >= em.home("new-chain")


def test_chains_spread_over_maps_with_offsets_in_windows() -> None:
    chains = [(f"service-{i}", "tcp" if i % 3 else "udp", 1 + i % 2000) for i in range(2000)]
    by_map: dict[str, dict[str, int]] = {}
    for chain, proto, n in chains:
        by_map.setdefault(em.map_name(chain, proto), {})[chain] = em.windows_for(n)
    slots = {c: s for name, d in by_map.items() for c, s in em.map_slots(name, d).items()}
    assert set(slots) == {c for c, _, _ in chains}
    assert len({s.map_name for s in slots.values()}) > 200
    for chain, proto, n in chains:
        slot = slots[chain]
        assert slot.offset % em.WINDOW == 0 and slot.windows * em.WINDOW >= n
        assert slot.map_name == em.map_name(chain, proto)
        assert slot.map_name.startswith(f"endpoints-{proto}-")
