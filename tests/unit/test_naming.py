import base64
import hashlib
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from proxy import naming
from proxy.iptables import names as ipt_names
from proxy.model import Protocol
from proxy.nftables import names as nft_names


@dataclass(frozen=True)
class SP:
    namespace: str
    name: str
    port_name: str
    protocol: Protocol = Protocol.TCP

    @property
    def service_port_name(self) -> str:
        return f"{self.namespace}/{self.name}" + (f":{self.port_name}" if self.port_name else "")


def test_iptables_check_vector() -> None:
    # the vector design.md gives (and upstream's unit tests use)
    assert ipt_names.svc_chain(SP("ns1", "svc1", "p80")) == "KUBE-SVC-XPGD46QRK7WJZT7O"


def test_iptables_chain_families_share_the_hash() -> None:
    sp = SP("ns1", "svc1", "p80")
    suffix = ipt_names.svc_chain(sp).removeprefix("KUBE-SVC-")
    assert ipt_names.svl_chain(sp) == "KUBE-SVL-" + suffix
    assert ipt_names.ext_chain(sp) == "KUBE-EXT-" + suffix
    assert ipt_names.fw_chain(sp) == "KUBE-FW-" + suffix
    assert len(suffix) == 16


def test_protocol_changes_the_hash() -> None:
    assert ipt_names.svc_chain(SP("ns1", "svc1", "p80")) != ipt_names.svc_chain(
        SP("ns1", "svc1", "p80", Protocol.UDP)
    )


def test_endpoint_chain_hashes_the_endpoint() -> None:
    sp = SP("ns1", "svc1", "p80")
    a = ipt_names.sep_chain(sp, "10.180.0.1:80")
    b = ipt_names.sep_chain(sp, "10.180.0.2:80")
    assert a.startswith("KUBE-SEP-") and len(a) == len("KUBE-SEP-") + 16
    assert a != b


def test_nftables_names() -> None:
    sp = SP("ns1", "svc1", "p80")
    assert nft_names.service_chain(sp) == "service-ULMVA6XW-ns1/svc1/tcp/p80"
    assert nft_names.external_chain(sp) == "external-ULMVA6XW-ns1/svc1/tcp/p80"
    ep = nft_names.endpoint_chain(sp, "10.180.0.1:80")
    assert ep.startswith("endpoint-") and ep.endswith("-ns1/svc1/tcp/p80__10.180.0.1/80")


def test_nftables_ipv6_endpoint_has_no_colons() -> None:
    ep = nft_names.endpoint_chain(SP("ns", "s", "p"), "[fd00::1]:8080")
    assert ep.endswith("__fd00..1/8080")
    assert ":" not in ep


def test_nftables_names_are_truncated_to_the_kernel_limit() -> None:
    long = "x" * 63
    sp = SP(long, long, long)
    name = nft_names.endpoint_chain(sp, "[fd00:1:2:3:4:5:6:7]:65535")
    assert len(name) < nft_names.NFT_NAME_MAX


@given(st.text(max_size=80))
def test_fast_base32_prefix_matches_base64(text: str) -> None:
    full = base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()
    assert naming.b32(text) == full[:16]
    assert naming.b32(text, 8) == full[:8]
