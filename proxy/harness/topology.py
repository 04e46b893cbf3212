"""The test topology: a :class:`~proxy.host.network.Network` whose pods run workload
servers, with a probe worker in any namespace.

Layout and teardown are the network's (:mod:`proxy.host.network`); here each pod with
ports gets a workload server (``python -m proxy.harness.workload``) once the network is
up, and :meth:`Topology.prober` starts a probe worker in a namespace on first use.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from proxy.harness.probe import Prober
from proxy.harness.workload import READY_PREFIX
from proxy.host import netns
from proxy.host.network import Network
from proxy.host.process import ManagedProcess, python_argv
from proxy.host.spec import PodSpec, TopologySpec

SERVER_READY_TIMEOUT = 60.0


class Topology(Network):
    """Nodes, pods and outside clients as network namespaces, workload servers in the
    pods, probe workers on demand; all stopped and removed by down()."""

    def __init__(self, spec: TopologySpec | None = None, *, id: str | None = None) -> None:
        super().__init__(spec, id=id)
        self._servers: dict[str, ManagedProcess] = {}
        self._probers: dict[str, Prober] = {}

    def prober(self, name: str) -> Prober:
        """The (cached) probe worker of a namespace; closed by down() or remove_pod()."""
        self._require_up()
        prober = self._probers.get(name)
        if prober is None:
            prober = Prober(self.ns(name), log=self._log(f"probe-{name}"))
            self._pids.append(prober.pid)
            self._probers[name] = prober
        return prober

    def set_pod_servers(self, name: str, running: bool) -> None:
        """Stop (dead endpoint) or restart a pod's workload server; idempotent."""
        self._require_up()
        pod = self.pod(name)
        server = self._servers.get(name)
        if running and (server is None or not server.running()):
            if pod.has_servers:
                self._start_servers([pod])
        elif not running and server is not None:
            del self._servers[name]
            server.stop()

    # -- the network's hooks --------------------------------------------------------

    def _started(self) -> None:
        self._start_servers([p for p in self.spec.pods if p.has_servers])

    def _pod_added(self, pod: PodSpec) -> None:
        if pod.has_servers:
            self._start_servers([pod])

    def _pod_removing(self, pod: PodSpec) -> None:
        prober = self._probers.pop(pod.name, None)
        if prober is not None:
            prober.close()
        server = self._servers.pop(pod.name, None)
        if server is not None:
            server.stop()

    def _stop_processes(self, *others: subprocess.Popen[bytes]) -> list[str]:
        problems: list[str] = []
        for name, prober in list(self._probers.items()):
            try:
                prober.close()
            except Exception as exc:
                problems.append(f"closing prober {name}: {exc}")
        self._probers.clear()
        servers = [s.popen for s in self._servers.values()]
        self._servers.clear()
        return problems + super()._stop_processes(*others, *servers)

    def _start_servers(self, pods: Sequence[PodSpec]) -> None:
        started: list[tuple[PodSpec, ManagedProcess]] = []
        for pod in pods:
            args = ["--name", pod.name]
            for flag, ports in (
                ("--tcp", pod.tcp_ports),
                ("--udp", pod.udp_ports),
                ("--http", pod.http_ports),
            ):
                for port in ports:
                    args += [flag, str(port)]
            argv = netns.exec_argv(self.ns(pod.name), python_argv("proxy.harness.workload", *args))
            process = ManagedProcess.start(
                argv,
                label=f"workload of pod {pod.name}",
                log=self._log(f"workload-{pod.name}"),
                stdout=subprocess.PIPE,
            )
            self._pids.append(process.pid)
            self._servers[pod.name] = process
            started.append((pod, process))
        for _, process in started:
            process.wait_ready(READY_PREFIX, SERVER_READY_TIMEOUT)
