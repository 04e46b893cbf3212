"""The control plane's processes: each component started in the control plane's network
namespace (or ours) with a log file of its own, waited for until ready, started again on
fresh ports when one was taken meanwhile, and stopped by its pid."""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from proxy.host import netns as hostns
from proxy.host.process import log_tail_lines, spawn_logged
from proxy.lab.controlplane.components import NETNS_PORTS
from proxy.lab.controlplane.errors import ControlPlaneError
from proxy.lab.ports import free_port

log = logging.getLogger(__name__)

PORT_ATTEMPTS = 4
LOG_TAIL_LINES = 40
STOP_GRACE_SECONDS = 5.0
POLL_SECONDS = 0.2


class PortCollision(Exception):
    """A component exited because one of its ports was taken meanwhile."""


@dataclass
class Component:
    """One running component process."""

    name: str
    argv: list[str]
    """The component's own argv (without any ``ip netns exec`` prefix)."""
    log_path: Path
    popen: subprocess.Popen[bytes]
    ports: dict[str, int] = field(default_factory=dict)
    log_offset: int = 0
    """Where this run's output starts in the (appended) log file."""

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return log_tail_lines(self.log_path, lines, self.log_offset)


def component_env() -> dict[str, str]:
    # etcd reads any ETCD_* variable as a flag; KUBECONFIG must not leak into components.
    return {k: v for k, v in os.environ.items() if not k.startswith("ETCD_") and k != "KUBECONFIG"}


class ComponentProcesses:
    """The components of one control plane, by name (see the module doc)."""

    def __init__(
        self,
        bin_dir: Path,
        netns: str | None,
        workdir: Callable[[], Path],
        fix_hint: Callable[[str], str],
    ) -> None:
        self._bin_dir = bin_dir
        self._netns = netns
        self._workdir = workdir
        self._fix_hint = fix_hint
        self.running: dict[str, Component] = {}
        """The last process started for each component (it may have exited since)."""
        self.spawned: list[tuple[str, int]] = []
        """(component, pid) of every process ever started, incl. restarts and retries."""

    def log_path(self, name: str) -> Path:
        return self._workdir() / "logs" / f"{name}.log"

    def launch(
        self,
        name: str,
        roles: Sequence[str],
        argv: Callable[[dict[str, int]], list[str]],
        ready: Callable[[], bool],
        deadline: float,
        timeout: float,
        what: str,
        *,
        host: str,
        before_retry: Callable[[], None] | None = None,
    ) -> None:
        """Start name on fresh free ports of host; retry with new ports if one was taken.

        Inside a lab namespace the ports are fixed (NETNS_PORTS): one attempt.
        """
        if self._netns is not None:
            ports = {role: NETNS_PORTS[name, role] for role in roles}
            proc = self.spawn(name, argv(ports), ports)
            try:
                self.wait_ready(proc, ready, deadline, timeout, what)
            except PortCollision as e:
                raise ControlPlaneError(
                    f"{name} could not listen on its port(s) {ports} in network namespace "
                    f"{self._netns}: already in use (another control plane in that "
                    f"namespace?). Last log lines:\n{proc.tail()}"
                ) from e
            return
        for attempt in range(1, PORT_ATTEMPTS + 1):
            ports = {role: free_port(host) for role in roles}
            proc = self.spawn(name, argv(ports), ports)
            try:
                self.wait_ready(proc, ready, deadline, timeout, what)
                return
            except PortCollision:
                log.warning(
                    "port collision component=%s ports=%s attempt=%d/%d; retrying with new ports",
                    name,
                    ports,
                    attempt,
                    PORT_ATTEMPTS,
                )
                self.terminate(proc)
                del self.running[name]
                if before_retry is not None:
                    before_retry()
        raise ControlPlaneError(
            f"{name} hit a port already in use {PORT_ATTEMPTS} times in a row; something on "
            f"this machine keeps taking 127.0.0.1 ports. Last log lines:\n"
            f"{log_tail_lines(self.log_path(name), LOG_TAIL_LINES)}"
        )

    def spawn(self, name: str, argv: list[str], ports: dict[str, int]) -> Component:
        """Start one component (argv without netns prefix; it is added here)."""
        log_path = self.log_path(name)
        command = argv if self._netns is None else hostns.exec_argv(self._netns, argv)
        # SIGKILL the child if the Python process dies without stop(). SIGKILL, not
        # SIGTERM: etcd and the API server would get the signal together, and a
        # kube-apiserver shutting down gracefully while etcd is gone hangs (seen with
        # v1.37). PDEATHSIG fires when the *thread* that forked exits: main thread only.
        main_thread = threading.current_thread() is threading.main_thread()
        popen, offset = spawn_logged(
            command,
            log_path,
            env=component_env(),
            deathsig=signal.SIGKILL if main_thread else None,
            new_session=True,
            cwd=self._workdir(),
            banner="kpp starting",
        )
        proc = Component(name, argv, log_path, popen, dict(ports), offset)
        self.running[name] = proc
        self.spawned.append((name, popen.pid))
        log.info(
            "component started name=%s pid=%d ports=%s netns=%s log=%s",
            name,
            popen.pid,
            ports,
            self._netns or "-",
            log_path,
        )
        return proc

    def wait_ready(
        self,
        proc: Component,
        ready: Callable[[], bool],
        deadline: float,
        timeout: float,
        what: str,
    ) -> None:
        t0 = time.monotonic()
        last_error = "not tried yet"
        while True:
            rc = proc.popen.poll()
            if rc is not None:
                tail = proc.tail()
                if "address already in use" in tail:
                    raise PortCollision(proc.name)
                raise ControlPlaneError(
                    f"{proc.name} exited with code {rc} before it was ready ({what}).\n"
                    f"Last lines of {proc.log_path}:\n{tail}\n"
                    f"{self._fix_hint(proc.name)}"
                )
            try:
                if ready():
                    self.check_pid(proc)
                    log.info(
                        "component ready name=%s check=%r after=%.1fs",
                        proc.name,
                        what,
                        time.monotonic() - t0,
                    )
                    return
                last_error = "check returned not ready"
            except (OSError, http.client.HTTPException, ValueError, KeyError) as e:
                last_error = f"{type(e).__name__}: {e}"
            if time.monotonic() >= deadline:
                raise ControlPlaneError(
                    f"{proc.name} (pid {proc.popen.pid}) was not ready ({what}) within the "
                    f"{timeout:.0f}s start timeout; last check: {last_error}.\n"
                    f"Last lines of {proc.log_path}:\n{proc.tail()}\n"
                    f"{self._fix_hint(proc.name)} On a slow or busy machine pass a larger "
                    "timeout to start()."
                )
            time.sleep(POLL_SECONDS)

    def check_pid(self, proc: Component) -> None:
        """In netns mode: our pid is the component itself, and it runs in the namespace.

        ``ip netns exec`` execs in place (iproute2 forks only in ``-batch`` mode); if a
        future version forked, stop() would signal ``ip`` and leave the component behind.
        """
        if self._netns is None:
            return
        pid = proc.popen.pid
        try:
            exe = os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")
        except OSError:
            exe = "(gone)"
        want = os.path.realpath(self._bin_dir / proc.name)
        if exe != want or not hostns.pid_in_netns(pid, self._netns):
            raise ControlPlaneError(
                f"pid {pid} started as `ip netns exec {self._netns} {proc.name}` runs {exe} "
                f"(expected {want}) in network namespace {hostns.pid_netns_id(pid)} "
                f"(expected {hostns.netns_id(self._netns)}): the pid tracked for cleanup "
                "would not be the component's"
            )

    def terminate(self, proc: Component) -> None:
        popen = proc.popen
        if popen.poll() is None:
            log.info("stopping component name=%s pid=%d", proc.name, popen.pid)
            with contextlib.suppress(ProcessLookupError):
                popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                log.warning(
                    "component did not exit after SIGTERM name=%s pid=%d; SIGKILL",
                    proc.name,
                    popen.pid,
                )
                with contextlib.suppress(ProcessLookupError):
                    popen.kill()
                popen.wait()
        else:
            popen.wait()
