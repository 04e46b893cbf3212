"""Run the distribution ``registry`` briefly, in a throwaway network namespace.

``lab build`` fills the registry's storage cache this way, and the tests push to it:
the namespace (``kpp-reg-<random>``) has only its loopback, so nothing else can reach
the registry and it can reach nothing. The process is killed by its pid and the
namespace deleted when the block ends, whatever happened inside it.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from proxy.lab.regclient import RegistryClient, RegistryError

ADDRESS = "127.0.0.1:5000"


def config_text(storage: Path, address: str = ADDRESS) -> str:
    """A registry ``config.yml`` (JSON is YAML): filesystem storage, plain HTTP, quiet logs."""
    return (
        json.dumps(
            {
                "version": 0.1,
                "log": {"level": "warn", "accesslog": {"disabled": True}},
                "storage": {"filesystem": {"rootdirectory": str(storage)}},
                "http": {"addr": address},
            },
            indent=2,
        )
        + "\n"
    )


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RegistryError(f"ip {' '.join(args)} failed: {proc.stderr.strip()} (needs root)")


@contextmanager
def serve_registry(
    binary: Path, storage: Path, *, timeout: float = 30.0
) -> Iterator[RegistryClient]:
    """A running registry on ``storage``; yields a client bound to its namespace."""
    if not os.access(binary, os.X_OK):
        raise RegistryError(
            f"no registry binary at {binary}: build the lab's node components first "
            "(kube-proxy-py lab build)"
        )
    storage.mkdir(parents=True, exist_ok=True)
    netns = f"kpp-reg-{uuid.uuid4().hex[:8]}"
    _ip("netns", "add", netns)
    proc: subprocess.Popen[bytes] | None = None
    with tempfile.TemporaryDirectory(prefix="kpp-registry-") as tmp:
        config, log_path = Path(tmp, "config.yml"), Path(tmp, "registry.log")
        config.write_text(config_text(storage))
        try:
            _ip("-n", netns, "link", "set", "lo", "up")
            with log_path.open("wb") as log:
                proc = subprocess.Popen(
                    ["ip", "netns", "exec", netns, str(binary), "serve", str(config)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            client = RegistryClient(f"http://{ADDRESS}", netns=netns)
            deadline = time.monotonic() + timeout
            while True:
                try:
                    client.ping()
                    break
                except RegistryError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        tail = log_path.read_text(errors="replace")[-2000:]
                        raise RegistryError(
                            f"the registry ({binary}) did not answer within {timeout:.0f} s:\n"
                            f"{tail}"
                        ) from None
                    time.sleep(0.1)
            yield client
        finally:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
            subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
