"""``lab kubectl``: the built kubectl, run inside the control plane's namespace."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from proxy.host import netns as hostns
from proxy.lab.commands.preconditions import require_root, running_state
from proxy.lab.state import LabState


def kubectl_argv(state: LabState, args: Sequence[str]) -> list[str]:
    cp = state.control_plane
    return hostns.exec_argv(
        cp["namespace"],
        [
            cp["kubectl"],
            f"--kubeconfig={cp['kubeconfig']}",
            f"--cache-dir={cp['kubectl_cache']}",
            *args,
        ],
    )


def kubectl(state_dir: Path, args: Sequence[str]) -> int:
    """Exec kubectl inside the control-plane namespace (stdio and exit code pass through)."""
    require_root("kubectl")
    state = running_state(state_dir)
    argv = kubectl_argv(state, list(args))
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(argv[0], argv, env)
