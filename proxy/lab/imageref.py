"""Image references as users write them, normalised the way Docker and containerd do.

``busybox`` → ``docker.io/library/busybox:latest``; ``registry.k8s.io/pause:3.10.2`` stays
as it is. The lab's one registry mirrors every upstream registry, so the repository it
stores an image under is the reference's path without the registry host
(``library/busybox``, ``pause``) — exactly what containerd asks a mirror for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DOCKER_HUB = "docker.io"
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_DOMAIN = re.compile(r"[A-Za-z0-9.-]+(?::[0-9]+)?")


class ReferenceError(ValueError):
    """The text is not an image reference; the message says which part is wrong."""


@dataclass(frozen=True)
class Reference:
    domain: str
    path: str
    tag: str
    digest: str = ""

    @property
    def repository(self) -> str:
        """The repository name on the lab registry (the path, no host)."""
        return self.path

    @property
    def name(self) -> str:
        return f"{self.domain}/{self.path}"

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def parse(text: str) -> Reference:
    """Parse and normalise ``text`` (``nginx``, ``curlimages/curl:8``, ``host:5000/a/b@sha…``)."""
    raw = text.strip()
    if not raw or len(raw) > 512:
        raise ReferenceError(f"not an image reference: {text[:80]!r}")
    digest = ""
    if "@" in raw:
        raw, digest = raw.split("@", 1)
        if not _DIGEST.fullmatch(digest):
            raise ReferenceError(f"{text!r}: digest must be sha256:<64 hex>")
    tag = ""
    slash = raw.rfind("/")
    colon = raw.rfind(":")
    if colon > slash:
        raw, tag = raw[:colon], raw[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise ReferenceError(f"{text!r}: bad tag {tag!r}")
    parts = raw.split("/")
    first = parts[0]
    if len(parts) > 1 and ("." in first or ":" in first or first == "localhost"):
        if not _DOMAIN.fullmatch(first):
            raise ReferenceError(f"{text!r}: bad registry host {first!r}")
        domain, rest = first, parts[1:]
    else:
        domain, rest = DOCKER_HUB, parts
    if domain == "index.docker.io":
        domain = DOCKER_HUB
    if domain == DOCKER_HUB and len(rest) == 1:
        rest = ["library", *rest]
    for part in rest:
        if not _COMPONENT.fullmatch(part):
            raise ReferenceError(
                f"{text!r}: path component {part!r} must be lower-case letters, digits "
                "and single separators (. _ __ -)"
            )
    if not tag and not digest:
        tag = "latest"
    return Reference(domain, "/".join(rest), tag, digest)


def normalize(text: str) -> str:
    """``busybox`` → ``docker.io/library/busybox:latest``."""
    return str(parse(text))
