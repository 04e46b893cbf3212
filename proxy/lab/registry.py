"""The lab's image registry: the CNCF distribution ``registry``, on the lab LAN.

Every lab node's containerd mirrors docker.io, registry.k8s.io, quay.io and ghcr.io to
it (:mod:`proxy.lab.node`), so Pods name images as they would on kind. It serves plain
HTTP on ``192.168.50.3:5000`` inside the lab only.

Storage is two layers, so that ``lab up`` costs no copying and a lab never changes the
cache:

- the *cache* (``<cache>/registry``): what ``lab build`` pushed (the pause image, the
  stand-ins, kube-proxy-py's image from the Dockerfile);
- the lab's own *upper* directory (``<state>/registry/upper``): what ``lab load-image``
  adds while the lab runs; gone with ``lab down``.

The launcher (``python -m proxy.lab.registry``) makes a private mount namespace, mounts
the overlay of both on ``<state>/registry/merged`` and execs the registry on it; the
mount disappears with the process.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from proxy.host import netns as hostns
from proxy.host.sockets import connect_in_netns
from proxy.lab.build import cache_root
from proxy.lab.mounts import ContainerError, mount_overlay, private_mount_namespace

PORT = 5000


def storage_cache() -> Path:
    """Where ``lab build`` keeps the pushed images (the registry's own layout)."""
    return cache_root() / "registry"


def registry_config(address: str, root: str) -> str:
    """The registry's ``config.yml``: filesystem storage at ``root``, HTTP on ``address``."""
    config = {
        "version": 0.1,
        "log": {"level": "warn", "formatter": "text", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": root},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": address, "draintimeout": "1s"},
    }
    return json.dumps(config, indent=2) + "\n"  # YAML is a superset of JSON


def ready(netns: str, host: str, port: int = PORT, timeout: float = 1.0) -> bool:
    """``GET /v2/`` answers 200 (the registry's API version check)."""
    try:
        sock = connect_in_netns(netns, host, port, timeout=timeout)
    except OSError:
        return False
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    conn.sock = sock
    try:
        conn.request("GET", "/v2/")
        response = conn.getresponse()
        response.read(4096)
        return response.status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def wait_ready(netns: str, host: str, port: int = PORT, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready(netns, host, port):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the registry on {host}:{port} did not answer in {timeout:.0f}s")
        time.sleep(0.1)


def launcher_argv(
    netns: str,
    *,
    binary: Path,
    config: Path,
    lower: Path,
    upper: Path,
    work: Path,
    merged: Path,
    python: str = sys.executable,
) -> list[str]:
    """How the supervisor starts the lab registry in ``netns`` on the overlay."""
    return [
        "nsenter",
        f"--net={hostns.netns_path(netns)}",
        "--",
        python,
        "-m",
        "proxy.lab.registry",
        f"--lower={lower}",
        f"--upper={upper}",
        f"--work={work}",
        f"--merged={merged}",
        "--",
        str(binary),
        "serve",
        str(config),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m proxy.lab.registry")
    parser.add_argument("--lower", type=Path, required=True)
    parser.add_argument("--upper", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--merged", type=Path, required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the registry command after --")
    try:
        for directory in (args.lower, args.upper, args.work, args.merged):
            directory.mkdir(parents=True, exist_ok=True)
        private_mount_namespace()
        mount_overlay(args.merged, lower=args.lower, upper=args.upper, work=args.work)
    except (OSError, ContainerError) as exc:
        print(f"kube-proxy-py lab registry: {exc}", file=sys.stderr)
        return 126
    os.execv(command[0], command)


if __name__ == "__main__":
    sys.exit(main())
