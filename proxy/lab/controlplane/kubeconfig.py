"""Kubeconfigs: self-contained (the CA and the user's credentials embedded), mode 0600."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class KubeconfigUser:
    """Credentials for a kubeconfig: a bearer token, or a client certificate and key."""

    name: str
    token: str | None = None
    client_cert_pem: bytes | None = None
    client_key_pem: bytes | None = None

    def __post_init__(self) -> None:
        has_cert = self.client_cert_pem is not None and self.client_key_pem is not None
        if (self.token is None) == (not has_cert):
            raise ValueError(
                f"kubeconfig user {self.name!r}: give either a token or a client cert and key"
            )


def render_kubeconfig(
    server: str, ca_pem: bytes, user: KubeconfigUser, *, namespace: str | None = None
) -> dict[str, Any]:
    """A self-contained kubeconfig (CA and client credentials embedded)."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    creds: dict[str, str] = {}
    if user.token is not None:
        creds["token"] = user.token
    if user.client_cert_pem is not None and user.client_key_pem is not None:
        creds["client-certificate-data"] = b64(user.client_cert_pem)
        creds["client-key-data"] = b64(user.client_key_pem)
    context: dict[str, str] = {"cluster": "kpp-lab", "user": user.name}
    if namespace is not None:
        context["namespace"] = namespace
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "kpp-lab",
                "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)},
            }
        ],
        "users": [{"name": user.name, "user": creds}],
        "contexts": [{"name": "kpp-lab", "context": context}],
        "current-context": "kpp-lab",
        "preferences": {},
    }


def write_kubeconfig(
    path: Path,
    server: str,
    ca_pem: bytes,
    user: KubeconfigUser,
    *,
    namespace: str | None = None,
) -> Path:
    """Write a self-contained kubeconfig for user (mode 0600); return its path."""
    config = render_kubeconfig(server, ca_pem, user, namespace=namespace)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(config, f, indent=2)
    return path
