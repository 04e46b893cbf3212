"""What both modes' chain names are made of: upstream kube-proxy's hash, the first
characters of base32(sha256(text)) (:mod:`proxy.iptables.names`, :mod:`proxy.nftables.names`)."""

from __future__ import annotations

import functools
import hashlib
from typing import Protocol as TypingProtocol


class PortLike(TypingProtocol):
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
def b32(text: str, chars: int = 16) -> str:
    """The first ``chars`` (≤ 16) characters of base32(sha256(text)).

    Base32 maps each 5 bytes to 8 characters, so 16 characters need only the digest's first
    10 bytes; encoding those as one integer is much faster than base64.b32encode of all 32.
    """
    value = int.from_bytes(hashlib.sha256(text.encode()).digest()[:10], "big")
    return "".join(_B32[(value >> (75 - 5 * i)) & 31] for i in range(chars))


def protocol_text(sp: PortLike) -> str:
    return str(sp.protocol).lower()
