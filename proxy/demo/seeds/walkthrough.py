"""What every walkthrough shares: the lab it runs on, its presenter, the step runner."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shlex
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from proxy.demo import seedmanifests as manifests
from proxy.demo.labexplain import LabExplained, explain_argv, explain_shown
from proxy.demo.present import Presenter
from proxy.demo.seeds.notes import OURS, POLL, WAIT, Deviation, SeedNote, SeedsError
from proxy.demo.seeds.parse import (
    Typed,
    api_path,
    expand_substitutions,
    grep_lines,
    namespace_kubeconfig,
    parse_typed,
    proxy_mode,
    without_kubeconfig_flag,
)
from proxy.host import netns as hostns
from proxy.lab import clients as labclients
from proxy.lab import state as labstate
from proxy.lab import topology as labtopology
from proxy.lab.cluster import wait_for
from proxy.lab.commands.kubectl import kubectl_argv
from proxy.lab.commands.shell import shell_target


@dataclass
class SeedPresenter(Presenter):
    """The demo's presenter, counting checks and showing where the note and the lab
    differ."""

    passed: int = 0
    deviations: list[Deviation] = field(default_factory=list)

    def check(self, ok: bool, what: str) -> None:
        super().check(ok, what)
        if ok:
            self.passed += 1

    def heredoc(self, lines: Sequence[str], end: str = "EOF") -> None:
        for line in [*lines, end]:
            print(self._c("33", f"    {line}"), file=self.out)
        self.out.flush()

    def differs(self, deviation: Deviation) -> None:
        self.deviations.append(deviation)
        label = "the note's command" if deviation.kind == "command" else "the note says"
        print(self._c("35", f"  ≠ {label}: {deviation.what}"), file=self.out)
        print(self._c("35", f"    {deviation.why}"), file=self.out, flush=True)


@dataclass(frozen=True)
class Ran:
    argv: tuple[str, ...]
    returncode: int
    output: str
    """stdout and stderr as a terminal shows them (or the ``grep``'s lines)."""

    @property
    def ok(self) -> bool:
        return self.returncode == 0


@dataclass(frozen=True)
class SeedResult:
    note: SeedNote
    passed: int
    failed: list[str]
    deviations: list[Deviation]
    seconds: float


# --------------------------------------------------------------------------- the lab


@dataclass
class LabView:
    """What every walkthrough needs to know about the running lab."""

    state: labstate.LabState
    mode: str
    nodes: dict[str, str]
    """Node name -> LAN address, kube-proxy-py's nodes only."""
    kubeconfig: str

    @classmethod
    def of(cls, state: labstate.LabState) -> LabView:
        nodes = {n.name: n.lan_ip for n in state.nodes if n.proxy == "kube-proxy-py"}
        view = cls(state, state.mode, nodes, state.control_plane["kubeconfig"])
        argv = kubectl_argv(
            state, ["get", "configmap", "kube-proxy-py", "-n", "kube-system", "-o", "json"]
        )
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise SeedsError(f"cannot read kube-proxy-py's ConfigMap: {done.stderr.strip()}")
        view.mode = proxy_mode(json.loads(done.stdout)["data"]["config.conf"])
        return view

    def netns(self, target: str) -> str:
        return shell_target(self.state, target)

    @property
    def versions(self) -> tuple[int, ...]:
        """The lab's IP versions, primary first (``(4, 6)`` on a dual-stack lab)."""
        return labtopology.versions_of(self.state.ip_family)

    def both(self, ipv4: str, *, service: bool = False) -> tuple[str, ...]:
        """A well-known address (``ipv4``) in each of the lab's families, primary first:
        on a dual-stack lab a name resolves to both, and a Service has both ClusterIPs."""
        if service:
            return labtopology.service_ips(ipv4, self.versions)
        return labtopology.addresses(ipv4, self.versions)


# --------------------------------------------------------------------------- walkthroughs


class StepError(RuntimeError):
    """A step could not go on (the cluster did not do what it needed)."""


class Walkthrough:
    """One note, replayed. Subclasses list their steps; each step checks itself."""

    note: ClassVar[SeedNote]

    def __init__(self, lab: LabView, out: SeedPresenter, workdir: Path) -> None:
        self.lab = lab
        self.p = out
        self.workdir = workdir
        self.namespace = self.note.namespace
        self._kubeconfigs: dict[str, Path] = {}
        for rel, text in manifests.FILES[self.note.number].items():
            self.write(rel, text)

    # -- plumbing ------------------------------------------------------------------------
    def write(self, rel: str, text: str) -> Path:
        path = self.workdir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def kubeconfig(self, namespace: str) -> str:
        if namespace not in self._kubeconfigs:
            admin = yaml.safe_load(Path(self.lab.kubeconfig).read_text())
            path = self.workdir / f".kubeconfig-{namespace}"
            path.write_text(json.dumps(namespace_kubeconfig(admin, namespace)))
            self._kubeconfigs[namespace] = path
        return f"{self._kubeconfigs[namespace]}{os.pathsep}{self.lab.kubeconfig}"

    def kubectl_argv(self, args: Sequence[str]) -> tuple[list[str], dict[str, str]]:
        argv = without_kubeconfig_flag(kubectl_argv(self.lab.state, list(args)))
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        env["KUBECONFIG"] = self.kubeconfig(self.namespace)
        return argv, env

    def netns(self, target: str) -> str:
        """The network namespace of a node, ``client``, ``control-plane`` or a pod.
        Finding a pod's walks the node's cgroups, which fails when another pod's cgroup
        goes away during the walk (pods come and go while the walkthroughs run): retried."""
        found: str = self.until(lambda: self.lab.netns(target), f"the namespace of {target}", 30)
        return found

    @contextlib.contextmanager
    def in_namespace(self, namespace: str) -> Iterator[None]:
        """kubectl's default namespace is ``namespace`` until the block ends."""
        saved, self.namespace = self.namespace, namespace
        try:
            yield
        finally:
            self.namespace = saved

    def execute(self, typed: Typed, stdin: str | None = None, timeout: float = 120) -> Ran:
        if typed.program == "kubectl":
            argv, env = self.kubectl_argv(typed.args)
        else:
            argv, env = hostns.exec_argv(self.netns(typed.target), typed.args), None
        done = subprocess.run(
            argv,
            input=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=self.workdir,
            env=env,
            timeout=timeout,
            check=False,
        )
        output = done.stdout if typed.grep is None else grep_lines(done.stdout, typed.grep)
        return Ran(tuple(argv), done.returncode, output)

    def api(self, method: str, path: str) -> dict[str, Any] | None:
        """One API call off the record (faster than kubectl for polling): the object, or
        None when there is none (404)."""
        status, body = labclients.api_client(self.lab.state).call(method, path, timeout=10)
        if status == 404:
            return None
        if status >= 300:
            raise StepError(f"{method} {path}: HTTP {status}: {body[:200]!r}")
        return json.loads(body)  # type: ignore[no-any-return]

    def read(self, resource: str, name: str | None = None, selector: str = "") -> Any:
        """An object (None if there is none) or, without ``name``, the list's items, in
        the walkthrough's namespace."""
        namespace = None if resource == "namespaces" else self.namespace
        found = self.api("GET", api_path(resource, namespace, name, selector))
        if name is None:
            return (found or {}).get("items", [])
        return found

    def service(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] | None = self.read("services", name)
        if found is None:
            raise StepError(f"there is no Service {self.namespace}/{name}")
        return found

    def quietly(self, line: str, timeout: float = 30) -> Ran:
        """A command line run off the record."""
        return self.execute(parse_typed(line), timeout=timeout)

    def typed(
        self,
        line: str,
        *,
        ours: bool = False,
        stdin: Sequence[str] | None = None,
        heredoc: str | None = None,
        max_lines: int = 40,
        timeout: float = 120,
    ) -> Ran:
        """Show ``line`` as typed, run it, show what it printed. ``stdin``: lines typed
        into the command (shown as a here-document); ``heredoc``: the text of a
        ``cat <<EOF | ...`` line."""
        shown = line + (" <<'EOF'" if stdin is not None else "")
        self.p.command(shown + (OURS if ours else ""))
        if heredoc is not None:
            self.p.heredoc(heredoc.rstrip("\n").splitlines())
            line = line.split("|", 1)[1].strip()
        if stdin is not None:
            self.p.heredoc(stdin)
        line = expand_substitutions(line, lambda inner: self.quietly(inner).output)
        data = heredoc if stdin is None else "".join(f"{s}\n" for s in stdin)
        ran = self.execute(parse_typed(line), stdin=data, timeout=timeout)
        self.show(ran.output, max_lines)
        return ran

    def explained(self, source: str, target: str, *flags: str) -> LabExplained:
        """``kube-proxy-py lab explain SOURCE TARGET FLAGS --verify`` (ours), shown with
        its output (the kernel's listing cut to the rules that decided)."""
        self.p.command(shlex.join(explain_argv(source, target, *flags)) + OURS)
        done = explain_shown(self.lab.state, source, target, *flags)
        self.p.result(done.short_text())
        return done

    def show(self, output: str, max_lines: int = 40) -> None:
        lines = output.rstrip("\n").splitlines()
        if not lines:
            self.p.result("(no output)")
            return
        if len(lines) > max_lines:
            lines = [*lines[:max_lines], f"... ({len(lines) - max_lines} more lines)"]
        self.p.result("\n".join(lines))

    @contextlib.contextmanager
    def forwarding(self, line: str) -> Iterator[None]:
        """``kubectl port-forward ...`` running (in the lab's control-plane namespace,
        where its ``localhost`` is) until the block ends."""
        self.p.command(line)
        argv, env = self.kubectl_argv(parse_typed(line).args)
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=self.workdir,
        )
        assert proc.stdout is not None
        try:
            ready, _, _ = select.select([proc.stdout], [], [], 30)
            first = proc.stdout.readline() if ready else ""
            self.p.result(first or "(nothing within 30 s)")
            if not first.startswith("Forwarding from"):
                raise StepError(f"kubectl port-forward did not start: {first.strip()}")
            yield
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def until(self, condition: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
        try:
            return wait_for(condition, timeout, interval=POLL, what=what)
        except TimeoutError as exc:
            raise StepError(str(exc)) from exc

    def check(self, what: str, ok: bool) -> None:
        self.p.check(ok, what)

    def differs(self, what: str, why: str) -> None:
        self.p.differs(Deviation("command", what, why))

    def claim(self, what: str, why: str) -> None:
        self.p.differs(Deviation("claim", what, why))

    # -- cluster reads -------------------------------------------------------------------
    def pods(self, selector: str) -> list[dict[str, Any]]:
        pods: list[dict[str, Any]] = self.read("pods", selector=selector)
        return [p for p in pods if not p["metadata"].get("deletionTimestamp")]

    def running_pods(self, selector: str, count: int) -> list[dict[str, Any]]:
        """Exactly ``count`` Ready pods and no others (old ones gone), once there are."""

        def ready() -> list[dict[str, Any]] | None:
            pods: list[dict[str, Any]] = self.read("pods", selector=selector)
            ok = len(pods) == count and all(
                not p["metadata"].get("deletionTimestamp")
                and any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in p["status"].get("conditions", [])
                )
                for p in pods
            )
            return pods if ok else None

        pods: list[dict[str, Any]] = self.until(ready, f"{count} ready pod(s) {selector}")
        return pods

    def cluster_ip(self, service: str) -> str:
        return str(self.service(service)["spec"]["clusterIP"])

    def endpoint_ips(self, service: str) -> set[str]:
        slices = self.read("endpointslices", selector=f"kubernetes.io/service-name={service}")
        return {
            ip
            for sl in slices
            for ep in sl.get("endpoints") or []
            if (ep.get("conditions") or {}).get("ready", True)
            for ip in ep.get("addresses", [])
        }

    def load_balancer_ip(self, service: str) -> str:
        def assigned() -> str | None:
            status = self.service(service).get("status", {}).get("loadBalancer", {})
            ips = [i.get("ip") for i in status.get("ingress") or [] if i.get("ip")]
            return str(ips[0]) if ips else None

        address: str = self.until(assigned, f"an EXTERNAL-IP for {service}")
        return address

    def node_port(self, service: str) -> int:
        return int(self.service(service)["spec"]["ports"][0]["nodePort"])

    def serves(self, target: str, url: str, want: str = "", timeout: float = 3) -> str:
        """Wait until ``curl URL`` from ``target`` answers (containing ``want``): rules
        and ARP take a moment to arrive."""
        line = f"kube-proxy-py lab shell {target} -- curl -s -m {timeout:g} {url}"

        def answered() -> str | None:
            ran = self.quietly(line, timeout=timeout + 10)
            return ran.output if ran.ok and want in ran.output and ran.output else None

        out: str = self.until(answered, f"{url} to answer from {target}")
        return out

    def rules_line(self, node: str, word: str) -> str:
        """The command line that lists ``node``'s proxy rules mentioning ``word``."""
        if self.lab.mode == "iptables":
            return f"kube-proxy-py lab shell {node} -- iptables-save -t nat | grep {word}"
        return f"kube-proxy-py lab shell {node} -- nft list table ip kube-proxy | grep {word}"

    def wait_gone(self, resource: str, name: str, timeout: float = WAIT) -> None:
        self.until(
            lambda: self.read(resource, name) is None, f"{resource}/{name} to be gone", timeout
        )

    # -- running -------------------------------------------------------------------------
    def steps(self) -> Sequence[Callable[[], None]]:
        raise NotImplementedError

    def prepare(self) -> None:
        """A fresh namespace (a failed run may have left the old one)."""
        self.api("DELETE", api_path("namespaces", name=self.namespace))
        self.wait_gone("namespaces", self.namespace, timeout=120)
        self.p.explain(
            f"`kubectl` below is the lab's (`kube-proxy-py lab kubectl --`), with "
            f"namespace {self.namespace} as its context's default namespace"
        )
        self.typed(f"kubectl create namespace {self.namespace}", ours=True)

    def cleanup(self) -> None:
        self.p.step("clean up")
        self.typed(f"kubectl delete namespace {self.namespace} --wait=false", ours=True)
        left = self.read("namespaces", self.namespace)
        self.p.explain(
            "the namespace controller deletes everything in the namespace, then the "
            "namespace itself, within seconds (a next run waits for it)"
        )
        self.check(
            f"namespace {self.namespace} is being deleted with everything in it",
            left is None or left.get("status", {}).get("phase") == "Terminating",
        )

    def run(self) -> None:
        try:
            self.prepare()
        except Exception as exc:
            self.p.result(f"error: {exc}")
            self.p.check(False, "prepare the namespace")
            return
        for step in self.steps():
            try:
                step()
            except Exception as exc:  # a step that cannot finish is a failed step
                self.p.result(f"error: {exc}")
                self.p.check(False, step.__name__.replace("_", " "))
        try:
            self.cleanup()
        except Exception as exc:
            self.p.result(f"error: {exc}")
            self.p.check(False, "clean up")


PING_IN_MODE: Mapping[str, str] = {
    "nftables": (
        "nftables mode rejects new traffic to a ClusterIP that matches no Service port "
        "(chain cluster-ips-check): an ICMP port-unreachable comes back, which busybox "
        "ping does not print"
    ),
    "iptables": (
        "iptables mode has no rule for it: the echo request follows the node's routing "
        "to the LAN's router, which drops it, and no answer comes at all"
    ),
}
