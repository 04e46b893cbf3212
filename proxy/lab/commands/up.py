"""``lab up``: start the supervisor (detached) and follow its progress until the lab is
ready; ``running_or_started`` for the commands that need a lab."""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import TextIO

from proxy.host.process import child_env, log_tail_lines
from proxy.lab.cleanup import cleanup
from proxy.lab.commands import down as labdown
from proxy.lab.commands.preconditions import require_root
from proxy.lab.commands.status import print_status
from proxy.lab.errors import EXIT_FAIL, EXIT_OK, LabError
from proxy.lab.state import (
    PROGRESS_FILE,
    SUPERVISOR_LOG,
    LabState,
    ProcRecord,
    command_hint,
    foreign_entries,
    load_state,
    locked,
    save_state,
)
from proxy.lab.supervisor import SUPERVISOR_MARKER, supervisor_argv
from proxy.lab.topology import (
    DEFAULT_IP_FAMILY,
    DEFAULT_MODE,
    DEFAULT_NODES,
    MODES,
    family_name,
    lab_topology,
    versions_of,
)


def _up_flags(
    nodes: int | None,
    mode: str | None,
    compare: bool | None,
    with_addons: bool = True,
    ip_family: str | None = None,
) -> str:
    flags = "" if nodes is None else f" --nodes {nodes}"
    flags += "" if mode is None else f" --mode {mode}"
    flags += "" if ip_family is None else f" --ip-family {ip_family}"
    return flags + (" --compare" if compare else "") + ("" if with_addons else " --no-addons")


def up(
    state_dir: Path,
    *,
    nodes: int | None,
    mode: str | None,
    compare: bool | None,
    with_addons: bool | None = None,
    ip_family: str | None = None,
    out: TextIO = sys.stdout,
) -> int:
    require_root("up")
    want_nodes = DEFAULT_NODES if nodes is None else nodes
    want_addons = with_addons is not False
    want_mode = DEFAULT_MODE if mode is None else mode
    want_family = DEFAULT_IP_FAMILY if ip_family is None else ip_family
    lab_topology(want_nodes, bool(compare), want_family)  # validates --nodes, --ip-family
    if want_mode not in MODES:
        raise LabError(f"--mode {want_mode}: choose one of {', '.join(MODES)}")
    with locked(state_dir):
        state = load_state(state_dir)
        if state is not None and state.supervisor_alive():
            if state.phase == "ready":
                differs = []
                if nodes is not None and nodes != state.node_count:
                    differs.append(f"--nodes {nodes} (it has {state.node_count})")
                if mode is not None and mode != state.mode:
                    differs.append(f"--mode {mode} (it runs {state.mode})")
                if compare is not None and compare != state.compare:
                    differs.append("--compare" if compare else "no --compare")
                if with_addons is not None and with_addons != state.addons:
                    differs.append("add-ons" if with_addons else "--no-addons")
                if ip_family is not None and ip_family != state.ip_family:
                    differs.append(f"--ip-family {ip_family} (it is {state.ip_family})")
                print(f"a lab is already running ({state.lab_id}, state in {state_dir})", file=out)
                print_status(state, out)
                if differs:
                    print(
                        f"\nit differs from what you asked for: {'; '.join(differs)}. "
                        f"Run `{command_hint(state_dir, 'down')}` first, then "
                        f"`{command_hint(state_dir, 'up')}"
                        f"{_up_flags(nodes, mode, compare, want_addons, ip_family)}`.",
                        file=out,
                    )
                    return EXIT_FAIL
                return EXIT_OK
            attach_to = state.lab_id
        else:
            attach_to = None
    if attach_to is not None:
        print(f"a lab is already starting ({attach_to}); following its progress", file=out)
        return _follow(state_dir, None, attach_to, out)
    with locked(state_dir):
        state = load_state(state_dir)
        if state is not None and state.supervisor_alive():
            raise LabError(
                f"lab {state.lab_id} was started meanwhile; "
                f"see `{command_hint(state_dir, 'status')}`"
            )
        if state is not None:
            print(
                f"found lab {state.lab_id} whose supervisor is gone (crashed or killed): "
                "cleaning up first",
                file=out,
            )
            for line in cleanup(state_dir, state).lines():
                print(f"  {line}", file=out)
        elif state_dir.exists():
            stray = foreign_entries(state_dir)
            if stray:
                raise LabError(
                    f"{state_dir} is not empty and holds no lab state "
                    f"({stray}); give an empty or new --state-dir"
                )
            for name in (PROGRESS_FILE, SUPERVISOR_LOG):
                (state_dir / name).unlink(missing_ok=True)
        state_dir.mkdir(parents=True, exist_ok=True)
        lab_id = f"kpp-lab-{secrets.token_hex(3)}"
        argv = supervisor_argv(
            state_dir, lab_id, want_nodes, want_mode, bool(compare), want_addons, want_family
        )
        print(
            f"starting lab {lab_id}: {want_nodes} node(s), {want_mode} mode, "
            f"{family_name(versions_of(want_family))}"
            + (", upstream kube-proxy on node-upstream" if compare else "")
            + ("" if want_addons else ", no add-ons")
            + f" (state in {state_dir})",
            file=out,
        )
        with open(state_dir / SUPERVISOR_LOG, "ab") as logf:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                cwd="/",
                env=child_env(),
                start_new_session=True,
            )
        # Until the supervisor writes its own, this state already names it (another
        # `lab up` waiting for the lock then follows it instead of starting a second one).
        save_state(
            LabState(
                lab_id=lab_id,
                state_dir=str(state_dir),
                mode=want_mode,
                node_count=want_nodes,
                compare=bool(compare),
                addons=want_addons,
                ip_family=want_family,
                supervisor=ProcRecord.of("supervisor", popen.pid, [SUPERVISOR_MARKER]),
            )
        )
    try:
        return _follow(state_dir, popen, lab_id, out)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the lab", file=out)
        return labdown.down(state_dir, out=out) or EXIT_FAIL


def _follow(
    state_dir: Path, popen: subprocess.Popen[bytes] | None, lab_id: str, out: TextIO
) -> int:
    """Print the supervisor's progress until the lab is ready (0) or failed (1)."""

    def hint(sub: str) -> str:
        return command_hint(state_dir, sub)

    progress_path = state_dir / PROGRESS_FILE
    offset = 0

    def pump() -> None:
        nonlocal offset
        try:
            with open(progress_path) as f:
                f.seek(offset)
                while True:
                    line = f.readline()
                    if not line.endswith("\n"):
                        break
                    offset = f.tell()
                    with contextlib.suppress(ValueError, KeyError):
                        item = json.loads(line)
                        print(f"[{item['t']:6.1f}s] {item['msg']}", file=out, flush=True)
        except FileNotFoundError:
            pass

    while True:
        pump()
        state = load_state(state_dir)
        exited = (
            popen.poll() is not None
            if popen is not None
            else not (state and state.supervisor_alive())
        )
        if state is not None and state.phase == "ready" and not exited:
            pump()
            print("", file=out)
            print_status(state, out)
            print(
                "\nnext:\n"
                f"  {hint('kubectl')} get nodes -o wide\n"
                f"  {hint('kubectl')} create deployment web --image=nginx --replicas=3 --port=80\n"
                f"  {hint('kubectl')} expose deployment web --port=80 --type=LoadBalancer\n"
                f"  {hint('kubectl')} get svc web   (EXTERNAL-IP: an address from MetalLB)\n"
                f"  {hint('kubectl')} run curl --image=curlimages/curl -i --rm --restart=Never "
                "-- curl -s web   (cluster DNS)\n"
                f"  {hint('shell')} node-1      (a shell in node-1's network namespace)\n"
                f"  {hint('shell')} client      (the outside client)\n"
                f"  {hint('demo')}      (a guided tour)\n"
                f"  {hint('seeds')}     (the learners' notes, replayed)\n"
                f"  {hint('down')}",
                file=out,
            )
            return EXIT_OK
        if exited or (state is not None and state.phase in ("failed", "stopped")):
            # Let the supervisor finish its own teardown first.
            if popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    popen.wait(timeout=labdown.STOP_TIMEOUT)
            elif state is not None and state.supervisor is not None:
                deadline = time.monotonic() + labdown.STOP_TIMEOUT
                while state.supervisor.is_ours() and time.monotonic() < deadline:
                    time.sleep(0.2)
            pump()
            print(
                f"\nthe lab failed to start; last lines of {state_dir / SUPERVISOR_LOG}:", file=out
            )
            print(log_tail_lines(state_dir / SUPERVISOR_LOG, 25), file=out)
            print("\ncleaning up", file=out)
            with locked(state_dir):
                for line in cleanup(state_dir, state, lab_id).lines():
                    print(f"  {line}", file=out)
            return EXIT_FAIL
        time.sleep(0.2)


def running_or_started(
    state_dir: Path, *, out: TextIO = sys.stdout, ip_family: str | None = None
) -> LabState | None:
    """The running lab; when none runs (or it is not ready), one is started as `lab up`
    with its defaults (and ``ip_family``) would. None when starting failed: `up` has
    printed why. A running lab of other IP families than ``ip_family`` is refused."""
    state = load_state(state_dir)
    if state is not None and state.supervisor_alive() and state.phase == "ready":
        if ip_family is not None and ip_family != state.ip_family:
            raise LabError(
                f"the running lab {state.lab_id} is --ip-family {state.ip_family}, not "
                f"{ip_family}: run `{command_hint(state_dir, 'down')}` first, or leave out "
                "--ip-family to use it"
            )
        return state
    flags = "" if ip_family is None else f" --ip-family {ip_family}"
    print(
        f"no lab is running: starting one (`kube-proxy-py lab up{flags}`)\n", file=out, flush=True
    )
    if up(state_dir, nodes=None, mode=None, compare=None, ip_family=ip_family, out=out) != 0:
        return None
    state = load_state(state_dir)
    if state is None:
        raise LabError(f"the lab did not record its state in {state_dir}")
    return state
