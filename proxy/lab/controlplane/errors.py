"""What the control plane raises: :class:`ControlPlaneError` and :class:`KubectlError`."""

from __future__ import annotations

import contextlib
import json
import subprocess


class ControlPlaneError(RuntimeError):
    """The control plane could not start or do what was asked; the message says why."""


def http_error(method: str, url: str, status: int, body: bytes) -> ControlPlaneError:
    """etcd's gateway answered with an error status."""
    text = body.decode(errors="replace").strip()
    with contextlib.suppress(ValueError, AttributeError):
        text = str(json.loads(body).get("message", text))
    return ControlPlaneError(f"{method} {url} → HTTP {status}: {text[:2000]}")


class KubectlError(subprocess.CalledProcessError):
    """kubectl exited non-zero; str() includes its stderr."""

    def __str__(self) -> str:
        err = self.stderr.strip() if isinstance(self.stderr, str) else ""
        cmd = [str(c) for c in self.cmd]
        where = ""
        if cmd[:3] == ["ip", "netns", "exec"] and len(cmd) > 4:
            where, cmd = f" (in netns {cmd[3]})", cmd[4:]
        return f"kubectl {' '.join(cmd[1:])}{where} failed (exit {self.returncode}): {err}"
