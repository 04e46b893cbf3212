"""What users see does not change: every rendering of the fixed corpus hashes as recorded.

``render_hashes.json`` was written before issue 17's restructure (commit of this test). A
difference means rendered rules or the agent's incremental writes changed for the same
input: if that is intended (a new semantic, a bug fix), say so in the commit and re-record
with ``python3 -m tests.golden.corpus --write``.
"""

from __future__ import annotations

import json

from tests.golden import corpus


def test_every_rendering_of_the_corpus_is_unchanged() -> None:
    recorded: dict[str, str] = json.loads(corpus.HASHES.read_text())
    current = corpus.compute()
    assert current.keys() == recorded.keys(), "the corpus itself changed"
    changed = sorted(k for k in recorded if current[k] != recorded[k])
    assert not changed, f"{len(changed)} renderings differ, e.g. {changed[:5]}"


def test_the_corpus_covers_both_modes_and_the_agent_deltas() -> None:
    recorded: dict[str, str] = json.loads(corpus.HASHES.read_text())
    kinds = {k.split("/", 1)[1] for k in recorded}
    assert {"iptables/plain", "nftables/masq-all", "iptables/delta", "nftables/ipv6"} <= kinds
    # distinct inputs give distinct outputs: the corpus is not 500 copies of one state
    assert len(set(recorded.values())) > len(recorded) // 3
