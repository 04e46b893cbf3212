"""etcd: its flags, and compaction through its v3 JSON gateway."""

from __future__ import annotations

import base64
import json
import logging
import os
from pathlib import Path
from typing import Protocol

from proxy.lab.controlplane.errors import http_error
from proxy.lab.ports import LOOPBACK

log = logging.getLogger(__name__)


class HttpRequest(Protocol):
    """Raw HTTP where the control plane runs: (status, body) whatever the status."""

    def __call__(
        self, method: str, url: str, body: bytes | None = None, *, timeout: float = 5.0
    ) -> tuple[int, bytes]: ...


def etcd_argv(binary: Path, data_dir: Path, ports: dict[str, int]) -> list[str]:
    """One etcd member on loopback (client and peer ports), no fsync: test data only."""
    client = f"http://{LOOPBACK}:{ports['client']}"
    peer = f"http://{LOOPBACK}:{ports['peer']}"
    return [
        str(binary),
        "--name=kpp",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=kpp={peer}",
        "--initial-cluster-state=new",
        f"--initial-cluster-token=kpp-{os.getpid()}-{ports['peer']}",
        "--unsafe-no-fsync",
        "--log-level=warn",
    ]


def is_healthy(http: HttpRequest, etcd_url: str) -> bool:
    """``GET /health`` says ``"health": "true"``."""
    status, body = http("GET", f"{etcd_url}/health", timeout=2.0)
    return status == 200 and json.loads(body).get("health") == "true"


def compact(http: HttpRequest, etcd_url: str) -> int:
    """Compact etcd to its current revision (physically); return that revision.

    ``/v3/kv/range`` for the header revision, then ``/v3/kv/compaction``.
    """
    status, body = http(
        "POST",
        f"{etcd_url}/v3/kv/range",
        json.dumps({"key": base64.b64encode(b"/").decode(), "limit": 1}).encode(),
    )
    if status != 200:
        raise http_error("POST", f"{etcd_url}/v3/kv/range", status, body)
    revision = int(json.loads(body)["header"]["revision"])
    payload = json.dumps({"revision": str(revision), "physical": True}).encode()
    status, body = http("POST", f"{etcd_url}/v3/kv/compaction", payload, timeout=30.0)
    if status != 200 and b"compacted" not in body:
        raise http_error("POST", f"{etcd_url}/v3/kv/compaction", status, body)
    log.info("etcd compacted revision=%d", revision)
    return revision
