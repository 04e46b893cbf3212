"""This node's name: --hostname-override, the file's hostnameOverride, $NODE_NAME or the
host name, trimmed, lower-cased and checked as a Node name."""

from __future__ import annotations

import socket
from collections.abc import Mapping

from proxy import apivalidation as av
from proxy.config import ConfigError

NODE_NAME_ENV = "NODE_NAME"


def _valid_node_name(name: str, source: str) -> str:
    if "$(" in name:
        raise ConfigError(
            f"node name {name!r} from {source} holds an unexpanded $(VAR) reference: declare "
            "the variable in the container's env (the kubelet expands only declared ones), "
            "e.g. NODE_NAME from fieldRef spec.nodeName"
        )
    if av.dns1123_subdomain(name) is not None:
        raise ConfigError(
            f"node name {name!r} from {source} is not a valid Node name (lower-case letters, "
            "digits, '-' and '.', at most 253 characters); pass --hostname-override=NODE"
        )
    return name


def node_name(flag: str | None, from_file: str, env: Mapping[str, str]) -> str:
    """--hostname-override, else the file's hostnameOverride, else $NODE_NAME, else hostname."""
    if flag:
        if not flag.strip():
            raise ConfigError(
                "--hostname-override: only spaces; give the Node's name or leave the flag out"
            )
        return _valid_node_name(flag.strip().lower(), "--hostname-override")
    candidates = (
        (from_file, "config field hostnameOverride"),
        (env.get(NODE_NAME_ENV, ""), f"${NODE_NAME_ENV}"),
    )
    for value, source in candidates:
        if value.strip():
            return _valid_node_name(value.strip().lower(), source)
    host = socket.gethostname().strip()
    if not host:
        raise ConfigError(
            f"cannot tell this node's name: the host name is empty and ${NODE_NAME_ENV} is "
            "unset; pass --hostname-override=NODE"
        )
    return _valid_node_name(host.lower(), "the host name")
