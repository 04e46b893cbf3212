"""``--iptables nft|legacy``: both agents get the chosen backend, and records say which."""

from __future__ import annotations

import os
import subprocess

import pytest

from proxy.bench import iptvariant
from proxy.bench.targets import mode_label
from proxy.iptables.kernel import VARIANT_ENV


@pytest.mark.parametrize("variant", iptvariant.VARIANTS)
def test_using_puts_the_variants_tools_first_and_restores_the_environment(
    variant: str,
) -> None:
    shown = {"legacy": "(legacy)", "nft": "(nf_tables)"}[variant]  # what --version says
    before = {k: os.environ.get(k) for k in ("PATH", VARIANT_ENV)}
    with iptvariant.using(variant):
        assert os.environ[VARIANT_ENV] == variant
        for tool in ("iptables", "iptables-restore", "ip6tables-save"):
            out = subprocess.run([tool, "--version"], capture_output=True, text=True).stdout
            assert shown in out, (tool, out)
    assert {k: os.environ.get(k) for k in ("PATH", VARIANT_ENV)} == before


def test_unknown_variant_is_refused() -> None:
    with pytest.raises(ValueError, match="use one of legacy, nft"), iptvariant.using("xt"):
        pass


def test_labels() -> None:
    assert mode_label({"mode": "iptables", "iptables": "legacy"}) == "iptables-legacy"
    assert mode_label({"mode": "iptables"}) == "iptables"  # older records
    assert mode_label({"mode": "nftables", "iptables": ""}) == "nftables"


def test_commands_and_records_name_the_backend_only_where_iptables_runs() -> None:
    assert iptvariant.option("iptables", "nft") == " --iptables nft"
    assert iptvariant.option("both", "legacy") == " --iptables legacy"
    assert iptvariant.option("nftables", "legacy") == ""
    assert iptvariant.recorded("iptables", "legacy") == "legacy"
    assert iptvariant.recorded("nftables", "legacy") == ""
