"""``lab explain``'s pure parts: FROM/TO parsing, live affinity entries, its output."""

from __future__ import annotations

import json

import pytest

from proxy.demo import labexplain
from proxy.demo.labexplain import LabExplained, LabView, _nft_entry, _split_port
from proxy.lab.errors import LabError


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("demo/my-nginx", ("demo/my-nginx", None)),
        ("demo/my-nginx:8080", ("demo/my-nginx", 8080)),
        ("node-2:30080", ("node-2", 30080)),
        ("10.96.0.10:80", ("10.96.0.10", 80)),
        ("fd00:10:96::10", ("fd00:10:96::10", None)),
        ("[fd00:10:96::10]:53", ("fd00:10:96::10", 53)),
    ],
)
def test_targets_and_ports(text: str, want: tuple[str, int | None]) -> None:
    assert _split_port(text) == want


@pytest.mark.parametrize("text", ["web:0", "web:70000", "web:http", "[fd00::1]:x"])
def test_a_bad_port_is_refused_with_its_text(text: str) -> None:
    with pytest.raises(LabError, match="is not a port number in 1-65535"):
        _split_port(text)


def test_service_names_that_are_not_names_never_reach_an_api_path() -> None:
    view = LabView.__new__(LabView)  # no lab: an API call would fail the test
    view.state = None  # type: ignore[assignment]
    for text in ("../../secrets/x", "a/b/c", "Web", "web.default.svc.cluster.local.evil.x"):
        assert view.service(text, "default") is None


def test_nft_affinity_listing() -> None:
    listing = {
        "nftables": [
            {"metainfo": {}},
            {"set": {"name": "affinity-X", "elem": [
                {"elem": {"val": "10.244.1.5", "timeout": 10800, "expires": 10790}},
                {"elem": {"val": "10.244.1.6", "expires": 5}},
            ]}},
        ]
    }  # fmt: skip
    text = json.dumps(listing)
    assert _nft_entry(text, "10.244.1.5") == 10790
    assert _nft_entry(text, "10.244.1.7") is None
    assert _nft_entry("not json", "10.244.1.5") is None


def test_a_target_without_rules_is_said_so() -> None:
    done = LabExplained("lab explain: pod demo/client -> Service demo/db\n", None, None,
                        "Service demo/db is an ExternalName Service: …")  # fmt: skip
    assert done.verdict == "not-a-service" and done.agrees
    assert done.text().endswith("Service demo/db is an ExternalName Service: …\n")
    doc = json.loads(done.json())
    assert doc["verdict"] == "not-a-service" and doc["schema"] == "kube-proxy-py/explain/v1"
    assert labexplain.explain_argv("a", "b", "--proto", "icmp")[-1] == "--verify"
