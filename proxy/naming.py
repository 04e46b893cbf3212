"""Chain, set and map names, following upstream kube-proxy's scheme so runbooks keep working.

iptables: ``KUBE-SVC-`` + the first 16 base32 characters of sha256(servicePortName +
protocol); ``KUBE-SEP-`` also hashes ``ip:port``. nftables: readable names such as
``service-ULMVA6XW-ns1/svc1/tcp/p80`` (8 hash characters of the readable part).
"""

from __future__ import annotations

import functools
import hashlib
from typing import Protocol as TypingProtocol

NFT_NAME_MAX = 256  # NFT_CHAIN_MAXNAMELEN, including the terminating NUL


class _PortLike(TypingProtocol):
    @property
    def namespace(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def port_name(self) -> str: ...
    @property
    def service_port_name(self) -> str: ...
    @property
    def protocol(self) -> object: ...


_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


@functools.lru_cache(maxsize=1 << 17)
def _b32(text: str, chars: int = 16) -> str:
    """The first ``chars`` (≤ 16) characters of base32(sha256(text)).

    Base32 maps each 5 bytes to 8 characters, so 16 characters need only the digest's first
    10 bytes; encoding those as one integer is much faster than base64.b32encode of all 32.
    """
    value = int.from_bytes(hashlib.sha256(text.encode()).digest()[:10], "big")
    return "".join(_B32[(value >> (75 - 5 * i)) & 31] for i in range(chars))


def _proto(sp: _PortLike) -> str:
    return str(sp.protocol).lower()


# -- iptables -----------------------------------------------------------------------------


def port_proto_hash(service_port_name: str, protocol: str) -> str:
    return _b32(service_port_name + protocol)[:16]


def _ipt(prefix: str, sp: _PortLike) -> str:
    return prefix + port_proto_hash(sp.service_port_name, _proto(sp))


def svc_chain(sp: _PortLike) -> str:
    """Cluster traffic policy chain."""
    return _ipt("KUBE-SVC-", sp)


def svl_chain(sp: _PortLike) -> str:
    """Local traffic policy chain."""
    return _ipt("KUBE-SVL-", sp)


def ext_chain(sp: _PortLike) -> str:
    """External destinations (NodePort, ExternalIP, LB IP)."""
    return _ipt("KUBE-EXT-", sp)


def fw_chain(sp: _PortLike) -> str:
    """loadBalancerSourceRanges firewall."""
    return _ipt("KUBE-FW-", sp)


def sep_chain(sp: _PortLike, endpoint: str) -> str:
    """One endpoint (``endpoint`` is ``ip:port``)."""
    return "KUBE-SEP-" + _b32(sp.service_port_name + _proto(sp) + endpoint)[:16]


# -- nftables -----------------------------------------------------------------------------


def _hash_and_truncate(readable: str) -> str:
    name = _b32(readable, 8) + "-" + readable
    # the longest prefix we add is "endpoint-" (9 chars); keep room for it and the NUL
    limit = NFT_NAME_MAX - 1 - len("endpoint-")
    if len(name) > limit:
        name = name[: limit - 3] + "..."
    return name


def nft_port_base(sp: _PortLike) -> str:
    return _hash_and_truncate(f"{sp.namespace}/{sp.name}/{_proto(sp)}/{sp.port_name}")


def nft_endpoint_base(sp: _PortLike, endpoint: str) -> str:
    """``endpoint`` is ``ip:port`` or ``[ipv6]:port``; ':' becomes '/' or '.'."""
    if endpoint.startswith("["):
        host, _, port = endpoint[1:].partition("]:")
        flat = host.replace(":", ".") + "/" + port
    else:
        host, _, port = endpoint.rpartition(":")
        flat = host + "/" + port
    return _hash_and_truncate(f"{sp.namespace}/{sp.name}/{_proto(sp)}/{sp.port_name}__{flat}")


def nft_service_chain(sp: _PortLike) -> str:
    return "service-" + nft_port_base(sp)


def nft_local_chain(sp: _PortLike) -> str:
    return "local-" + nft_port_base(sp)


def nft_external_chain(sp: _PortLike) -> str:
    return "external-" + nft_port_base(sp)


def nft_firewall_chain(sp: _PortLike) -> str:
    return "firewall-" + nft_port_base(sp)


def nft_endpoint_chain(sp: _PortLike, endpoint: str) -> str:
    return "endpoint-" + nft_endpoint_base(sp, endpoint)


def nft_affinity_set(sp: _PortLike, endpoint: str) -> str:
    return "affinity-" + nft_endpoint_base(sp, endpoint)
