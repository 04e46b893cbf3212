"""What the lab commands check first: root, and a lab that is running."""

from __future__ import annotations

import os
from pathlib import Path

from proxy.lab.errors import LabError
from proxy.lab.state import LabState, command_hint, load_state


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise LabError(f"lab {what} needs root (it uses network namespaces)")


def no_lab(state_dir: Path) -> LabError:
    return LabError(f"no lab is running: start one with `{command_hint(state_dir, 'up')}`")


def running_state(state_dir: Path) -> LabState:
    state = load_state(state_dir)
    if state is None or not state.supervisor_alive() or state.phase != "ready":
        if state is not None and not state.supervisor_alive():
            raise LabError(
                f"lab {state.lab_id} is not running (its supervisor is gone): "
                f"`{command_hint(state_dir, 'down')}` cleans up, "
                f"`{command_hint(state_dir, 'up')}` starts a new one"
            )
        if state is not None and state.phase == "starting":
            raise LabError(f"lab {state.lab_id} is still starting: wait for `lab up` to finish")
        raise no_lab(state_dir)
    return state
