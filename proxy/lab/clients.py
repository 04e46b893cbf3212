"""Reaching a running lab from the root namespace: its API server as the lab's admin,
and a node's proxy ``/healthz`` (sockets made inside the lab's namespaces)."""

from __future__ import annotations

import functools
import http.client
import json
from pathlib import Path
from typing import Any

from proxy.apiclient.client import ApiClient
from proxy.apiclient.config import ClientConfig
from proxy.host import sockets
from proxy.lab.errors import LabError
from proxy.lab.state import LabState
from proxy.lab.topology import API_PORT, HEALTHZ_PORT


def http_get(netns: str, host: str, port: int, path: str, timeout: float = 3.0) -> tuple[int, str]:
    conn = sockets.NetnsHTTPConnection(netns, host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


def node_health(netns: str) -> tuple[int | None, str]:
    """``GET /healthz`` on the node's kube-proxy (status, body); (None, error) if none."""
    try:
        return http_get(netns, "127.0.0.1", HEALTHZ_PORT, "/healthz")
    except (OSError, http.client.HTTPException) as exc:
        return None, str(exc)


@functools.lru_cache(maxsize=4)
def _admin_client(netns: str, host: str, ca: str, cert: str, key: str) -> ApiClient:
    server = f"https://[{host}]:{API_PORT}" if ":" in host else f"https://{host}:{API_PORT}"
    config = ClientConfig(
        server=server,
        source=f"the lab's admin ({cert})",
        ca_pem=Path(ca).read_bytes(),
        client_cert_pem=Path(cert).read_bytes(),
        client_key_pem=Path(key).read_bytes(),
    )
    return ApiClient(config, connector=functools.partial(sockets.connect_in_netns, netns))


def api_client(state: LabState) -> ApiClient:
    """The lab's API server as the lab's admin, reached from inside the control plane's
    namespace (calls raise :class:`ApiError` when there is no answer)."""
    cp = state.control_plane
    return _admin_client(cp["namespace"], cp["host"], cp["ca"], cp["admin_cert"], cp["admin_key"])


def api_get(state: LabState, path: str, timeout: float = 5.0) -> Any:
    status, body = api_client(state).call("GET", path, timeout=timeout)
    if status != 200:
        raise LabError(f"GET {path}: HTTP {status}")
    return json.loads(body)
