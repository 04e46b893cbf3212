"""``kube-proxy-py lab seeds``: the learners' notes in ``seeds/``, replayed on the lab.

Each of the five notes becomes a walkthrough: every command is printed as the note types
it and run for real against the lab (``kubectl`` is the lab's, through
``kube-proxy-py lab kubectl``), its output shown and the note's claim checked. Where a
note is wrong or out of date, the walkthrough runs what the note has, shows what really
happens and says why, then runs the corrected command; every such difference is listed
again in the summary. Commands the notes do not type (waiting for a rollout, a request
from the outside client ...) are marked ``# not in the note``.

Every walkthrough works in a namespace of its own (``seed-000`` ..., and the note's
``lab06`` for seed 004): its kubectl uses a kubeconfig whose context names that
namespace, so the notes' commands run exactly as typed. Each recreates its namespace
first and deletes it last. The manifests are :mod:`proxy.demo.seedmanifests`, written
into a scratch directory under the names the notes use.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import logging
import os
import re
import select
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TextIO

import yaml

from proxy.demo import seedmanifests as manifests
from proxy.demo.present import Presenter
from proxy.harness import netns as hnetns
from proxy.lab import lab as labmod
from proxy.lab import metallb
from proxy.lab.cluster import wait_for

OURS = "   # not in the note"
WAIT = 90.0
"""Seconds a walkthrough waits for the cluster to do something (pods, addresses, rules)."""
POLL = 0.3


class SeedsError(RuntimeError):
    """The lab cannot run the walkthroughs (not an unexpected outcome: a failure)."""


@dataclass(frozen=True)
class SeedNote:
    number: int
    file: str
    topic: str
    namespace: str


SEEDS: tuple[SeedNote, ...] = (
    SeedNote(
        0,
        "000_ae18fa0a313f7d33.txt",
        "pods behind a Service: DNS names, ClusterIP, why ping fails",
        "seed-000",
    ),
    SeedNote(
        1,
        "001_11b7ff294316ef06.txt",
        "pod IPs, a Service's ClusterIP and Endpoints, CoreDNS",
        "seed-001",
    ),
    SeedNote(
        2,
        "002_71c4ed2ede7c3a1a.txt",
        "discovery by env and DNS, kube-proxy's rules, external services, keep-alive",
        "seed-002",
    ),
    SeedNote(
        3,
        "003_7cbe46730cc72950.txt",
        "port-forward, ClusterIP, LoadBalancer, ExternalName, headless, endpoints",
        "seed-003",
    ),
    SeedNote(
        4,
        "004_56dfe1fbee3c49b1.txt",
        "ClusterIP, NodePort and LoadBalancer in namespace lab06",
        "lab06",
    ),
)


@dataclass(frozen=True)
class Deviation:
    """Where the lab and a note part ways: a command that behaved differently from the
    note (``kind`` "command") or a statement of the note the cluster contradicts
    ("claim"), and why."""

    kind: str
    what: str
    why: str


# --------------------------------------------------------------------------- pure helpers


def seed_numbers(given: Sequence[int] | None) -> list[int]:
    """The seeds to run, in order, once each (all of them when none are given)."""
    if not given:
        return [s.number for s in SEEDS]
    known = {s.number for s in SEEDS}
    unknown = sorted(set(given) - known)
    if unknown:
        raise SeedsError(
            f"no seed {', '.join(map(str, unknown))}: the notes are numbered "
            f"{min(known)} to {max(known)}"
        )
    return sorted(set(given))


def split_pipeline(line: str) -> list[str]:
    """A shell line split at the ``|`` that are outside quotes."""
    parts: list[str] = []
    quote = ""
    start = 0
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "|":
            parts.append(line[start:i].strip())
            start = i + 1
    parts.append(line[start:].strip())
    return parts


def find_substitution(line: str) -> tuple[int, int] | None:
    """The span of the first ``$( ... )`` outside single quotes, ``$(`` to ``)``."""
    quote = ""
    i = 0
    while i < len(line):
        ch = line[i]
        if quote == "'":
            quote = "" if ch == "'" else quote
        elif ch == "'":
            quote = "'"
        elif line.startswith("$(", i):
            depth = 0
            inner_quote = ""
            for j in range(i + 1, len(line)):
                c = line[j]
                if inner_quote:
                    inner_quote = "" if c == inner_quote else inner_quote
                elif c in "'\"":
                    inner_quote = c
                elif c == "(":
                    depth += 1
                elif c == ")":
                    depth -= 1
                    if depth == 0:
                        return i, j + 1
            raise ValueError(f"unbalanced $( in {line!r}")
        i += 1
    return None


def expand_substitutions(line: str, run: Callable[[str], str]) -> str:
    """``line`` with each ``$(command)`` replaced by ``run(command)``, stripped."""
    while (span := find_substitution(line)) is not None:
        start, end = span
        line = line[:start] + run(line[start + 2 : end - 1]).strip() + line[end:]
    return line


@dataclass(frozen=True)
class Typed:
    """A command line as a note types it: what runs, where, and an optional ``| grep``."""

    program: str
    """``kubectl``, or ``shell`` for ``kube-proxy-py lab shell TARGET -- COMMAND``."""
    args: tuple[str, ...]
    target: str = ""
    grep: str | None = None


def parse_typed(line: str) -> Typed:
    """``kubectl ...`` (or the notes' alias ``k``), ``kube-proxy-py lab kubectl -- ...``
    and ``kube-proxy-py lab shell TARGET -- ...``, each optionally ``| grep WORD``."""
    stages = split_pipeline(line)
    if len(stages) > 2:
        raise ValueError(f"one pipe at most: {line!r}")
    grep: str | None = None
    if len(stages) == 2:
        filt = shlex.split(stages[1])
        if len(filt) != 2 or filt[0] != "grep":
            raise ValueError(f"only `| grep WORD` can follow a command: {line!r}")
        grep = filt[1]
    words = shlex.split(stages[0])
    if words[:1] in (["kubectl"], ["k"]):
        return Typed("kubectl", tuple(words[1:]), grep=grep)
    if words[:3] == ["kube-proxy-py", "lab", "kubectl"]:
        rest = words[3:]
        return Typed("kubectl", tuple(rest[1:] if rest[:1] == ["--"] else rest), grep=grep)
    if words[:3] == ["kube-proxy-py", "lab", "shell"] and len(words) > 5 and words[4] == "--":
        return Typed("shell", tuple(words[5:]), target=words[3], grep=grep)
    raise ValueError(f"not a command a walkthrough runs: {line!r}")


def grep_lines(text: str, word: str) -> str:
    """The lines of ``text`` that contain ``word`` (``grep WORD``, fixed string)."""
    return "".join(ln for ln in text.splitlines(keepends=True) if word in ln)


def namespace_kubeconfig(admin: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    """A kubeconfig holding one context: the admin's cluster and user, ``namespace`` as
    the default namespace, made current. Listed before the admin kubeconfig in
    ``KUBECONFIG`` (kubectl merges the files; the first current-context wins), it gives
    kubectl a default namespace without copying any credential."""
    current = admin["current-context"]
    context = next(c["context"] for c in admin["contexts"] if c["name"] == current)
    name = f"{current}/{namespace}"
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "contexts": [
            {
                "name": name,
                "context": {
                    "cluster": context["cluster"],
                    "user": context["user"],
                    "namespace": namespace,
                },
            }
        ],
        "current-context": name,
    }


def without_kubeconfig_flag(argv: Sequence[str]) -> list[str]:
    """``argv`` without its ``--kubeconfig=...`` (which would override ``KUBECONFIG``)."""
    return [a for a in argv if not a.startswith("--kubeconfig=")]


API_PREFIX: Mapping[str, str] = {
    "namespaces": "/api/v1",
    "pods": "/api/v1",
    "services": "/api/v1",
    "endpointslices": "/apis/discovery.k8s.io/v1",
}


def api_path(
    resource: str, namespace: str | None = None, name: str | None = None, selector: str = ""
) -> str:
    """The API path of one object, or of a list filtered by a label selector."""
    path = API_PREFIX[resource]
    if namespace is not None:
        path += f"/namespaces/{urllib.parse.quote(namespace, safe='')}"
    path += f"/{resource}"
    if name is not None:
        path += f"/{urllib.parse.quote(name, safe='')}"
    if selector:
        path += "?" + urllib.parse.urlencode({"labelSelector": selector})
    return path


_NAME = re.compile(r"^Name:\s+(\S+?)\.?$")
_ADDRESS = re.compile(r"^Address(?: \d+)?:\s+([0-9a-fA-F.:]+)(?:\s|$)")
_CNAME = re.compile(r"^(\S+?)\.?\s+canonical name = (\S+?)\.?$")
_NOT_FOUND = re.compile(r"can't find (\S+?):? (NXDOMAIN|No answer|SERVFAIL)")


def nslookup_answers(output: str) -> dict[str, list[str]]:
    """Name -> addresses from busybox ``nslookup`` output (1.35's format, or the older
    ``Address 1: IP NAME``); the ``Server:`` block is not an answer."""
    answers: dict[str, list[str]] = {}
    name: str | None = None
    for raw in output.splitlines():
        line = raw.strip()
        if not line or line.startswith("Server:"):
            name = None
            continue
        if m := _NAME.match(line):
            name = m.group(1)
            answers.setdefault(name, [])
        elif name is not None and (m := _ADDRESS.match(line)) and m.group(1) not in answers[name]:
            answers[name].append(m.group(1))
    return answers


def nslookup_cnames(output: str) -> dict[str, str]:
    """Alias -> canonical name from ``nslookup`` output."""
    return {m.group(1): m.group(2) for ln in output.splitlines() if (m := _CNAME.match(ln))}


def nslookup_not_found(output: str) -> set[str]:
    """The names ``nslookup`` reports it could not find."""
    return {m.group(1) for m in _NOT_FOUND.finditer(output)}


@dataclass(frozen=True)
class PingSummary:
    name: str
    address: str
    transmitted: int
    received: int


def ping_summary(output: str) -> PingSummary | None:
    """What ``ping`` (busybox or iputils) says it pinged and how many replies came."""
    head = re.search(r"^PING (\S+) \(([0-9.]+)\)", output, re.M)
    stats = re.search(r"(\d+) packets transmitted, (\d+) (?:packets )?received", output)
    if not head or not stats:
        return None
    return PingSummary(head.group(1), head.group(2), int(stats.group(1)), int(stats.group(2)))


@dataclass(frozen=True)
class Answer:
    """One answer of the lab's nginx stand-in: ``<pod name> <client ip>:<port>``."""

    pod: str
    client: str
    port: int


_ANSWER = re.compile(r"^(\S+) ([0-9.]+):(\d+)\s*$")


def stand_in_answers(output: str) -> list[Answer]:
    return [
        Answer(m.group(1), m.group(2), int(m.group(3)))
        for ln in output.splitlines()
        if (m := _ANSWER.match(ln.strip()))
    ]


def env_vars(output: str) -> dict[str, str]:
    """``NAME=value`` lines (``env``'s output) as a dict."""
    pairs = (ln.split("=", 1) for ln in output.splitlines() if "=" in ln)
    return {k: v for k, v in pairs if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)}


def proxy_mode(config_conf: str) -> str:
    """The proxy mode a KubeProxyConfiguration (the ConfigMap's ``config.conf``) selects;
    empty means iptables, as for upstream kube-proxy on Linux."""
    config = yaml.safe_load(config_conf) or {}
    return str(config.get("mode") or "iptables")


def random_number(page: str) -> int | None:
    """The number the numbers-web page shows, if it got one."""
    m = re.search(r"Here it is: <b>(\d+)</b>", page)
    return int(m.group(1)) if m else None


def in_pool(address: str, pool: str = metallb.POOL_RANGE) -> bool:
    """Whether ``address`` is in a MetalLB range ``first-last``."""
    first, last = (ipaddress.IPv4Address(a) for a in pool.split("-"))
    try:
        return first <= ipaddress.IPv4Address(address) <= last
    except ValueError:
        return False


def table_rows(output: str) -> list[dict[str, str]]:
    """kubectl's default table output as rows keyed by column heading (columns are
    separated by two or more spaces; no cell is empty in the tables read here)."""
    lines = [ln for ln in output.splitlines() if ln.strip() and not ln.startswith("Warning:")]
    if not lines:
        return []
    header = re.split(r"\s{2,}", lines[0].strip())
    return [dict(zip(header, re.split(r"\s{2,}", ln.strip()), strict=False)) for ln in lines[1:]]


# --------------------------------------------------------------------------- presenting


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

    state: labmod.LabState
    mode: str
    nodes: dict[str, str]
    """Node name -> LAN address, kube-proxy-py's nodes only."""
    kubeconfig: str

    @classmethod
    def of(cls, state: labmod.LabState) -> LabView:
        nodes = {n.name: n.lan_ip for n in state.nodes if n.proxy == "kube-proxy-py"}
        view = cls(state, state.mode, nodes, state.control_plane["kubeconfig"])
        argv = labmod.kubectl_argv(
            state, ["get", "configmap", "kube-proxy-py", "-n", "kube-system", "-o", "json"]
        )
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise SeedsError(f"cannot read kube-proxy-py's ConfigMap: {done.stderr.strip()}")
        view.mode = proxy_mode(json.loads(done.stdout)["data"]["config.conf"])
        return view

    def netns(self, target: str) -> str:
        return labmod.shell_target(self.state, target)


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
        argv = without_kubeconfig_flag(labmod.kubectl_argv(self.lab.state, list(args)))
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
            argv, env = hnetns.exec_argv(self.netns(typed.target), typed.args), None
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
        status, body = labmod.api_client(self.lab.state).call(method, path, timeout=10)
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


def ping_reason(mode: str) -> str:
    """Why a ping to a ClusterIP gets no reply: in ``mode`` (this run's), then in the
    other mode."""
    other = next(m for m in PING_IN_MODE if m != mode)
    return (
        "A ClusterIP is on no interface: it exists only as IP + protocol + port matches "
        "in the DNAT rules kube-proxy-py writes on every node, and ICMP echo has no port. "
        f"Here, {PING_IN_MODE[mode]}. (In the other mode, {PING_IN_MODE[other]}.)"
    )


# ------------------------------------------------------------------------- seed 000

NODE_PORT_CLAIMS = (
    Deviation(
        "claim",
        "NodePort has no load balancing",
        "a NodePort spreads new connections over all of the Service's pods, on any node "
        "(seed 4 checks it)",
    ),
    Deviation(
        "claim",
        "NodePort does not work on kind",
        "NodePorts work on kind as anywhere; on kind the node addresses are on the Docker "
        "network, reachable from the host on Linux but not from a Mac without "
        "extraPortMappings. In the lab the outside client reaches them (seeds 3, 4)",
    ),
)
"""What seed 000 says of NodePorts, which seeds 003 and 004 check."""


class Seed0(Walkthrough):
    note = SEEDS[0]

    def steps(self) -> Sequence[Callable[[], None]]:
        return (
            self.two_deployments,
            self.exec_with_one_dash,
            self.ping_before_the_service,
            self.ping_a_pod_ip,
            self.the_service,
            self.ping_the_service,
            self.why_no_reply,
            self.what_it_says_of_node_ports,
        )

    def two_deployments(self) -> None:
        self.p.step("sleep-1 and sleep-2: two Deployments (the book's practice)")
        self.typed("kubectl apply -f sleep/sleep1.yaml -f sleep/sleep2.yaml", ours=True)
        self.typed(
            "kubectl wait --for=condition=Available deployment/sleep-1 "
            "deployment/sleep-2 --timeout=90s",
            ours=True,
        )
        self.running_pods("app=sleep-1", 1)
        self.running_pods("app=sleep-2", 1)
        ran = self.typed("kubectl get pods -o wide", ours=True)
        self.check(
            "one sleep-1 and one sleep-2 pod run",
            sum("Running" in ln for ln in ran.output.splitlines()) == 2,
        )

    def exec_with_one_dash(self) -> None:
        self.p.step("the note's first command: one dash before the command")
        line = "kubectl exec deploy/sleep-1 - ping -c 1 sleep-2"
        ran = self.typed(line)
        self.differs(
            line,
            "kubectl refuses it: the command must follow `--` (two dashes); with a single "
            "`-` kubectl cannot tell its own flags (`-c` is its --container) from the "
            "command's, and `exec POD COMMAND` without `--` is no longer accepted",
        )
        self.check(
            "kubectl refuses the line and says to use `--`",
            not ran.ok and "Use exec [POD] -- [COMMAND]" in ran.output,
        )

    def ping_before_the_service(self) -> None:
        self.p.step("ping sleep-2 before a Service named sleep-2 exists")
        ran = self.typed("kubectl exec deploy/sleep-1 -- ping -c 1 sleep-2")
        self.p.explain(
            "here DNS really is the reason: only a Service puts a name into cluster DNS, "
            "and there is no Service sleep-2 yet (pods get no DNS name of their own here)"
        )
        self.check(
            "the name sleep-2 does not resolve",
            not ran.ok and "bad address 'sleep-2'" in ran.output,
        )

    def ping_a_pod_ip(self) -> None:
        self.p.step("the Q&A's working command: ping a sleep-2 pod's IP")
        pod_ip = self.pods("app=sleep-2")[0]["status"]["podIP"]
        ran = self.typed(
            "kubectl exec deploy/sleep-1 -- ping -c 2 $(kubectl get pod -l "
            "app=sleep-2 --output jsonpath='{.items[0].status.podIP}')"
        )
        summary = ping_summary(ran.output)
        self.p.explain(
            "a pod IP belongs to a real interface (the pod's eth0): it answers ICMP like "
            "any host, across nodes too (the pod CIDRs are routed between the nodes)"
        )
        self.check(
            f"both echo requests to the pod IP {pod_ip} are answered",
            ran.ok and summary is not None and summary.address == pod_ip and summary.received == 2,
        )

    def the_service(self) -> None:
        self.p.step("the Service sleep-2 (port 80)")
        self.typed("kubectl apply -f sleep/sleep2-service.yaml", ours=True)
        ran = self.typed("kubectl get service sleep-2", ours=True)
        cip = self.cluster_ip("sleep-2")
        self.check(f"sleep-2 has the ClusterIP {cip}", cip in ran.output)

    def ping_the_service(self) -> None:
        self.p.step("the Q&A's failing command: ping sleep-2, the Service")
        cip = self.cluster_ip("sleep-2")
        line = "kubectl exec deploy/sleep-1 -- ping -c 1 sleep-2"
        ran = self.typed(line)
        summary = ping_summary(ran.output)
        self.claim(
            "the Q&A's answer: the ping fails because DNS may not work",
            f"DNS works: ping printed `PING sleep-2 ({cip})`, the ClusterIP. The book's "
            "first answer, crossed out in the note, was the right one: a Service's "
            "ClusterIP does not answer ping (next step)",
        )
        self.check(
            f"sleep-2 resolves to its ClusterIP {cip}, and no echo reply comes",
            not ran.ok and summary is not None and summary.address == cip and summary.received == 0,
        )

    def why_no_reply(self) -> None:
        self.p.step(f"why the ClusterIP does not answer ({self.lab.mode} mode)")
        from proxy.harness import Outcome
        from proxy.harness.probe import Prober

        cip = self.cluster_ip("sleep-2")
        pod = self.pods("app=sleep-1")[0]
        node = pod["spec"]["nodeName"]
        self.typed(self.rules_line(node, cip), ours=True, max_lines=8)
        if self.lab.mode == "nftables":
            self.typed(
                f"kube-proxy-py lab shell {node} -- nft list chain ip kube-proxy cluster-ips-check",
                ours=True,
            )
        self.p.command(
            f"from pod sleep-1 ({pod['status']['podIP']}): one ICMP echo request "
            f"to {cip}, sent by the walkthrough's packet prober{OURS}"
        )
        with Prober(self.netns(f"{self.namespace}/{pod['metadata']['name']}")) as prober:
            echo = prober.icmp_echo(cip, timeout=1.0)
        self.p.result(f"{echo.outcome}: {echo.detail}")
        self.p.explain(ping_reason(self.lab.mode))
        want = Outcome.REFUSED if self.lab.mode == "nftables" else Outcome.SILENT
        self.check(f"ping is {want} in {self.lab.mode} mode", echo.outcome is want)
        ran = self.typed("kubectl exec deploy/sleep-1 -- wget -O - http://sleep-2", ours=True)
        self.p.explain(
            "TCP port 80 does match the Service: kube-proxy-py DNATs the connection to the "
            "sleep-2 pod, and the pod itself refuses it (the sleep container listens on no "
            "port). Unlike the ping, the connection got to a pod"
        )
        self.check(
            "TCP to sleep-2:80 reaches the pod, which refuses it",
            f"({cip}:80)" in ran.output and "Connection refused" in ran.output,
        )

    def what_it_says_of_node_ports(self) -> None:
        self.p.step("what the note says of NodePorts (seeds 3 and 4 try them)")
        for deviation in NODE_PORT_CLAIMS:
            self.p.differs(deviation)


# ------------------------------------------------------------------------- seed 001


class Seed1(Walkthrough):
    note = SEEDS[1]

    def steps(self) -> Sequence[Callable[[], None]]:
        return (
            self.deployment,
            self.pod_ips_from_the_nodes,
            self.the_service,
            self.cluster_ip_inside_only,
            self.core_dns,
            self.run_with_a_terminal,
            self.resolve_kube_dns,
        )

    def deployment(self) -> None:
        self.p.step("the my-nginx Deployment, two replicas")
        self.typed("cat <<EOF | kubectl apply -f -", heredoc=manifests.MY_NGINX_DEPLOYMENT)
        self.typed("kubectl rollout status deployment/my-nginx --timeout=90s", ours=True)
        pods = self.running_pods("run=my-nginx", 2)
        ran = self.typed("kubectl get pods -l run=my-nginx -o wide")
        ips = {p["status"]["podIP"] for p in pods}
        self.check(
            "two my-nginx pods run, each with its own IP",
            len(ips) == 2 and all(ip in ran.output for ip in ips),
        )
        ran = self.typed("k get po -l run=my-nginx -o yaml | grep podIP")
        self.p.explain(
            "`k` is the note's alias for kubectl. The pod IPs come from each node's pod "
            "CIDR (10.244.1.0/24 on node-1, 10.244.2.0/24 on node-2); the note's "
            "10.46.0.8 and 10.32.0.12 were its cluster's network plugin's"
        )
        self.check("the podIP lines show both pod IPs", all(ip in ran.output for ip in ips))

    def pod_ips_from_the_nodes(self) -> None:
        self.p.step("curl [pod IP]:[containerPort] from a node")
        pods = self.running_pods("run=my-nginx", 2)
        answers: dict[str, list[Answer]] = {}
        for pod in sorted(pods, key=lambda p: str(p["spec"]["nodeName"])):
            ip = pod["status"]["podIP"]
            self.serves("node-1", f"{ip}:80")
            ran = self.typed(f"kube-proxy-py lab shell node-1 -- curl -s {ip}:80")
            answers[pod["metadata"]["name"]] = stand_in_answers(ran.output)
        self.differs(
            "curl 10.46.0.8:80 (the nginx welcome page)",
            "the lab's nginx is a stand-in: instead of the welcome page it answers with "
            "the pod's name and the client address it saw",
        )
        self.p.explain(
            "no NAT between a node and a pod: each pod saw the address node-1 sent from, "
            "its bridge address 10.244.1.1 to a pod on node-1, its LAN address "
            "192.168.50.11 to a pod on another node"
        )
        self.check(
            "each pod answers on its own IP, from node-1",
            all(len(a) == 1 and a[0].pod == name for name, a in answers.items())
            and len(answers) == 2,
        )

    def the_service(self) -> None:
        self.p.step("the Service my-nginx: a selector and a ClusterIP")
        self.typed("cat <<EOF | k create -f -", heredoc=manifests.MY_NGINX_SERVICE)
        ips = {p["status"]["podIP"] for p in self.running_pods("run=my-nginx", 2)}
        self.until(lambda: self.endpoint_ips("my-nginx") == ips, "both endpoints")
        ran = self.typed("k describe svc my-nginx")
        cip = self.cluster_ip("my-nginx")
        fields = dict(
            (k.strip(), v.strip())
            for k, _, v in (ln.partition(":") for ln in ran.output.splitlines())
        )
        endpoints = set(fields.get("Endpoints", "").split(","))
        self.p.explain(
            "the ClusterIP stays the Service's as long as the Service lives; the "
            "Endpoints are the selected pods' IP:targetPort (seed 3 replaces a pod)"
        )
        self.check(
            f"IP {cip}, port 80/TCP to targetPort 80/TCP, endpoints both pods",
            fields.get("IP") == cip
            and fields.get("TargetPort") == "80/TCP"
            and endpoints == {f"{ip}:80" for ip in ips},
        )

    def cluster_ip_inside_only(self) -> None:
        self.p.step("the ClusterIP works on every node, and only inside the cluster")
        cip = self.cluster_ip("my-nginx")
        served: list[Answer] = []
        for node in self.lab.nodes:
            self.serves(node, f"{cip}:80")
            ran = self.typed(f"kube-proxy-py lab shell {node} -- curl -s {cip}:80", ours=True)
            served += stand_in_answers(ran.output)
        outside = self.typed(f"kube-proxy-py lab shell client -- curl -sS -m 2 {cip}:80", ours=True)
        self.p.explain(
            "every node has the same DNAT rules for the ClusterIP; the outside client "
            "(192.168.50.100) has no route to the Service range and no rules: the "
            "address means nothing outside the cluster"
        )
        self.check(
            "each node reaches the ClusterIP; the outside client does not",
            len(served) == len(self.lab.nodes) and not outside.ok,
        )

    def core_dns(self) -> None:
        self.p.step("CoreDNS: its pods and the kube-dns Service")
        pods = self.typed("k get po -n kube-system -l k8s-app=kube-dns")
        svc = self.typed("k get svc -n kube-system kube-dns")
        rows = table_rows(svc.output)
        self.check(
            "two coredns pods Running; kube-dns is 10.96.0.10, 53/UDP,53/TCP,9153/TCP",
            sum("Running" in ln for ln in pods.output.splitlines()) == 2
            and rows[:1]
            == [
                {
                    "NAME": "kube-dns",
                    "TYPE": "ClusterIP",
                    "CLUSTER-IP": "10.96.0.10",
                    "EXTERNAL-IP": "<none>",
                    "PORT(S)": "53/UDP,53/TCP,9153/TCP",
                    "AGE": rows[0].get("AGE", ""),
                }
            ],
        )

    def run_with_a_terminal(self) -> None:
        self.p.step("the note's interactive pod, typed from a script")
        line = "kubectl run curl --image=radial/busyboxplus:curl -ti --rm"
        ran = self.typed(line, stdin=["nslookup kube-dns.kube-system.svc.cluster.local"])
        self.differs(
            line,
            "`-t` asks for a terminal, and a walkthrough has none: kubectl says `Unable to "
            "use a TTY`, cannot attach to a container that has a TTY without one, and "
            "shows its logs instead; the typed line never reaches the shell. Typed at a "
            "terminal it works as in the note. Without a terminal, `-i` alone attaches "
            "stdin (next step); --restart=Never keeps the shell from being restarted",
        )
        self.check("without a terminal `-t` cannot attach", "Unable to use a TTY" in ran.output)
        self.typed("kubectl delete pod curl --grace-period=0 --force --ignore-not-found", ours=True)
        self.p.explain(
            "the pod's shell waits on its TTY, and as PID 1 it ignores SIGTERM: --rm's "
            "delete keeps the pod (and its name) for the whole 30 s grace period; forcing "
            "the deletion frees the name at once (the kubelet then kills the container)"
        )
        self.wait_gone("pods", "curl")

    def resolve_kube_dns(self) -> None:
        self.p.step("resolve kube-dns from a pod in another namespace")
        fqdn = "kube-dns.kube-system.svc.cluster.local"
        ran = self.typed(
            "kubectl run curl --image=radial/busyboxplus:curl -i --rm --restart=Never",
            stdin=[
                f"nslookup {fqdn}",
                "nslookup kube-dns",
                "nslookup kube-dns.kube-system",
                "cat /etc/resolv.conf",
                "curl -s -o /dev/null -w '%{remote_ip}\\n' http://kube-dns.kube-system:9153/",
            ],
        )
        answers = nslookup_answers(ran.output)
        missing = nslookup_not_found(ran.output)
        via_curl = "10.96.0.10" in [ln.strip() for ln in ran.output.splitlines()]
        self.check(
            f"{fqdn} is 10.96.0.10, and the server that answered is 10.96.0.10",
            answers.get(fqdn) == ["10.96.0.10"]
            and re.search(r"^Server:\s+10\.96\.0\.10$", ran.output, re.M) is not None,
        )
        self.check(
            f"the bare name kube-dns is not found from namespace {self.namespace}",
            "kube-dns" not in answers and f"kube-dns.{self.namespace}.svc.cluster.local" in missing,
        )
        self.p.explain(
            f"the pod's resolv.conf searches {self.namespace}.svc.cluster.local, "
            "svc.cluster.local and cluster.local (ndots:5): a bare name is looked up in the "
            "pod's own namespace only, so another namespace's Service needs its namespace "
            "in the name"
        )
        if "kube-dns.kube-system" in missing:
            self.differs(
                "nslookup kube-dns.kube-system (the note: [service name].[namespace] resolves)",
                "the lab's busybox 1.35 nslookup tries the search list only for names "
                "without a dot, so it asks for kube-dns.kube-system as it is: NXDOMAIN. "
                "Programs that go through the C library's resolver (curl here, and by the "
                "note's account its image's older busybox 1.22 nslookup) try the search list "
                "first and find it, as the curl line shows",
            )
        self.check("curl resolves kube-dns.kube-system to 10.96.0.10 (the search list)", via_curl)
        self.p.explain(
            "the output's format differs from the note's (`Address 1: ...`): the note's "
            "image had busybox 1.22, the lab's stand-in has Debian's busybox 1.35"
        )


# ------------------------------------------------------------------------- seed 002


class Seed2(Walkthrough):
    note = SEEDS[2]

    def steps(self) -> Sequence[Callable[[], None]]:
        return (
            self.environment_variables,
            self.environment_is_fixed_at_start,
            self.dns_name,
            self.ping_curl_telnet,
            self.kube_proxy_rules,
            self.manual_endpoints,
            self.external_name,
            self.keep_alive,
        )

    def prepare(self) -> None:
        super().prepare()
        self.remove_external_db()

    def cleanup(self) -> None:
        self.remove_external_db()
        super().cleanup()

    def remove_external_db(self) -> None:
        """The one object the note puts outside the walkthrough's namespace."""
        self.api("DELETE", api_path("services", "default", "external-db"))

    def environment_variables(self) -> None:
        self.p.step("discovery by environment variables")
        self.typed("kubectl apply -f sleep/sleep2.yaml -f sleep/sleep2-service.yaml", ours=True)
        self.typed("kubectl apply -f sleep/sleep1.yaml", ours=True)
        self.typed(
            "kubectl wait --for=condition=Available deployment/sleep-1 "
            "deployment/sleep-2 --timeout=90s",
            ours=True,
        )
        self.running_pods("app=sleep-1", 1)
        cip = self.cluster_ip("sleep-2")
        ran = self.typed("kubectl exec deploy/sleep-1 -- env | grep SLEEP_2_SERVICE", ours=True)
        env = env_vars(ran.output)
        self.p.explain(
            "sleep-1's pod started after the Service sleep-2 existed, so the kubelet put "
            "SLEEP_2_SERVICE_HOST/_PORT (the name upper-cased, dashes as underscores) "
            "into its environment"
        )
        self.check(
            f"SLEEP_2_SERVICE_HOST={cip}, SLEEP_2_SERVICE_PORT=80",
            env.get("SLEEP_2_SERVICE_HOST") == cip and env.get("SLEEP_2_SERVICE_PORT") == "80",
        )

    def environment_is_fixed_at_start(self) -> None:
        self.p.step("a Service created later is not in a running pod's environment")
        self.typed("kubectl create service clusterip database --tcp=3306", ours=True)
        cip = self.cluster_ip("database")
        before = env_vars(
            self.typed("kubectl exec deploy/sleep-1 -- env | grep DATABASE", ours=True).output
        )
        self.typed("kubectl rollout restart deployment/sleep-1", ours=True)
        self.typed("kubectl rollout status deployment/sleep-1 --timeout=90s", ours=True)
        self.running_pods("app=sleep-1", 1)
        after = env_vars(
            self.typed("kubectl exec deploy/sleep-1 -- env | grep DATABASE", ours=True).output
        )
        self.p.explain(
            "environment variables are written once, when the container starts: the "
            "running pod never learns of the Service database; its replacement does"
        )
        self.check(
            "no DATABASE_SERVICE_HOST before the restart; after it, the ClusterIP",
            "DATABASE_SERVICE_HOST" not in before
            and after.get("DATABASE_SERVICE_HOST") == cip
            and after.get("DATABASE_SERVICE_PORT") == "3306",
        )

    def dns_name(self) -> None:
        self.p.step("discovery by DNS: {service}.{namespace}.svc.cluster.local")
        cip = self.cluster_ip("sleep-2")
        fqdn = f"sleep-2.{self.namespace}.svc.cluster.local"
        ran = self.typed(f"kubectl exec deploy/sleep-1 -- nslookup {fqdn}", ours=True)
        self.check(
            f"{fqdn} is the ClusterIP {cip}", nslookup_answers(ran.output).get(fqdn) == [cip]
        )

    def ping_curl_telnet(self) -> None:
        self.p.step("a Service IP: no ping, but HTTP and raw TCP (telnet) work")
        self.typed("kubectl apply -f kubia.yaml -f kubia-services.yaml", ours=True)
        self.typed("kubectl rollout status deployment/kubia --timeout=90s", ours=True)
        pods = {p["metadata"]["name"] for p in self.running_pods("app=kubia", 2)}
        self.until(lambda: len(self.endpoint_ips("kubia")) == 2, "kubia's endpoints")
        ping = self.typed("kubectl exec deploy/sleep-1 -- ping -c 1 -W 1 kubia", ours=True)
        web = self.typed("kubectl exec deploy/sleep-1 -- wget -q -O - http://kubia", ours=True)
        raw = self.typed(
            "kubectl exec deploy/sleep-1 -- sh -c \"printf 'GET / HTTP/1.0"
            "\\r\\n\\r\\n' | nc kubia 80\"",
            ours=True,
        )
        self.p.explain(
            "the sleep image has wget rather than curl, and nc sends what telnet would: "
            "both are TCP to port 80, which the rules DNAT to a kubia pod. "
            + ping_reason(self.lab.mode)
        )
        summary = ping_summary(ping.output)
        answered = {a.pod for a in stand_in_answers(web.output + raw.output)}
        self.check(
            "ping gets no reply; wget and nc are answered by kubia pods",
            summary is not None
            and summary.received == 0
            and bool(answered)
            and answered <= pods
            and "200 OK" in raw.output,
        )

    def kube_proxy_rules(self) -> None:
        self.p.step("the Service is an API object; every node's proxy writes its rules")
        cip = self.cluster_ip("kubia")
        ran = self.typed(
            "kubectl get pods -n kube-system -l k8s-app=kube-proxy-py -o wide", ours=True
        )
        per_node = {
            node: self.typed(self.rules_line(node, cip), ours=True, max_lines=8)
            for node in self.lab.nodes
        }
        self.p.explain(
            "the Service lives in the API (etcd), on no node. kube-proxy-py, one pod per "
            "node (the lab's kube-proxy), watches Services and EndpointSlices and writes "
            f"the same rules on every node ({self.lab.mode} mode)"
        )
        self.claim(
            "a request to a ClusterIP goes into the node's kube-proxy, which DNATs it",
            "no packet passes through kube-proxy (nor kube-proxy-py): it only writes "
            "rules, and the kernel's netfilter DNATs each new connection to a pod IP. "
            "Stop the proxy and existing rules keep working; only changes stop arriving",
        )
        running = sum("Running" in ln for ln in ran.output.splitlines())
        self.check(
            f"one proxy pod per node, and rules for {cip} on each",
            running == len(self.lab.nodes) and all(cip in r.output for r in per_node.values()),
        )

    def manual_endpoints(self) -> None:
        self.p.step("a Service without a selector, its Endpoints written by hand")
        self.typed("kubectl apply -f external-service.yaml", ours=True)
        self.until(
            lambda: self.endpoint_ips("external-service") == {"192.168.50.4"},
            "the mirrored EndpointSlice",
        )
        self.typed(
            "kubectl get endpointslices -l kubernetes.io/service-name=external-service", ours=True
        )
        cip = self.cluster_ip("external-service")
        line = f"kubectl exec deploy/sleep-1 -- nslookup db.example.com {cip}"

        def answered() -> Ran | None:
            ran = self.quietly(line)
            return ran if nslookup_answers(ran.output).get("db.example.com") else None

        self.until(answered, "the outside DNS server through the Service")
        ran = self.typed(line, ours=True)
        self.p.explain(
            "the endpoint is outside the cluster: the lab's outside DNS server, "
            "192.168.50.4:53. A DNS query sent to the Service's ClusterIP is DNATed to it "
            "(the Endpoints are mirrored into an EndpointSlice, which is what the proxy "
            "reads); the Endpoints object must have the Service's name. Since v1.33 "
            "Endpoints are deprecated: write the EndpointSlice yourself, labelled "
            "kubernetes.io/service-name=external-service (as `lab demo` does)"
        )
        self.check(
            f"a query to {cip} is answered by the server behind it (192.168.50.4)",
            nslookup_answers(ran.output).get("db.example.com") == ["192.168.50.4"],
        )

    def external_name(self) -> None:
        self.p.step("an ExternalName Service: external-db → db.example.com")
        self.p.explain(
            "the note's manifest names namespace default, so this part works there (the "
            "walkthrough's kubectl context switches to default, then back)"
        )
        with self.in_namespace("default"):
            self.typed("kubectl apply -f external-db.yaml", ours=True)
            svc = self.typed("kubectl get svc external-db")
            found = self.typed(
                self.rules_line(next(iter(self.lab.nodes)), "external-db"), ours=True
            )
        name = "external-db.default.svc.cluster.local"
        ran = self.typed(f"kubectl exec deploy/sleep-1 -- nslookup {name}", ours=True)
        self.claim(
            f"{name} is redirected to db.example.com",
            "nothing is redirected: cluster DNS answers the name with a CNAME record, "
            "db.example.com, and the client then looks that up and connects to its "
            "address itself. No ClusterIP, no proxy rule (the grep found none)",
        )
        rows = table_rows(svc.output)
        self.check(
            "EXTERNAL-IP db.example.com; a CNAME to it, then 192.168.50.4; no rules",
            rows[:1] != []
            and rows[0].get("EXTERNAL-IP") == "db.example.com"
            and nslookup_cnames(ran.output).get(name) == "db.example.com"
            and nslookup_answers(ran.output).get("db.example.com") == ["192.168.50.4"]
            and not found.output.strip(),
        )
        with self.in_namespace("default"):
            self.typed("kubectl delete -f external-db.yaml", ours=True)

    def keep_alive(self) -> None:
        self.p.step("keep-alive sticks to one pod; new connections spread")
        lb = self.load_balancer_ip("kubia-loadbalancer")
        self.typed("kubectl get svc kubia-loadbalancer", ours=True)
        self.serves("client", f"http://{lb}/")
        urls = " ".join([f"http://{lb}/"] * 4)
        one = stand_in_answers(
            self.typed(f"kube-proxy-py lab shell client -- curl -s {urls}", ours=True).output
        )
        loop = (
            f"kube-proxy-py lab shell client -- sh -c 'for i in 1 2 3 4 5 6 7 8 9 10; do "
            f"curl -s http://{lb}/; done'"
        )
        separate: list[Answer] = []
        for _ in range(3):  # ten fresh connections all on one of two pods: 1 in 512
            separate += stand_in_answers(self.typed(loop, ours=True).output)
            if len({a.pod for a in separate}) > 1:
                break
        self.p.explain(
            "curl given four URLs sends them over one kept-alive TCP connection: the "
            "proxy picks a pod once per connection (conntrack remembers the DNAT), so all "
            "four go to the same pod, from the same port, with sessionAffinity None. "
            "Separate curls are separate connections and spread over both pods. A "
            "browser keeps its connection alive, hence the note's observation"
        )
        self.check(
            "one connection: one pod; separate connections: both pods",
            len(one) == 4
            and len({(a.pod, a.port) for a in one}) == 1
            and len({a.pod for a in separate}) == 2,
        )
        self.p.explain(
            "the note's Ingress part is not replayed: the lab runs no Ingress controller "
            "(an Ingress object alone does nothing, as the note says)"
        )


# ------------------------------------------------------------------------- seed 003


class Seed3(Walkthrough):
    note = SEEDS[3]

    def steps(self) -> Sequence[Callable[[], None]]:
        return (
            self.port_forward,
            self.relabel_a_pod,
            self.apply_two_files,
            self.numbers_without_a_service,
            self.numbers_api_service,
            self.curl_from_a_pod,
            self.load_balancer,
            self.through_node_ports,
            self.external_name,
            self.selectorless_not_headless,
            self.an_address_that_answers,
            self.headless,
            self.endpoints_follow_pods,
        )

    def web_page(self) -> str:
        lb = self.load_balancer_ip("numbers-web")
        return self.typed(
            f"kube-proxy-py lab shell client -- curl -s -m 10 http://{lb}:8080/", ours=True
        ).output

    def port_forward(self) -> None:
        self.p.step("kubectl port-forward deploy/nginx-deploy 8000:80")
        self.typed("kubectl apply -f nginx-deploy.yaml", ours=True)
        self.typed("kubectl rollout status deployment/nginx-deploy --timeout=90s", ours=True)
        pod = self.running_pods("app=nginx-deploy", 1)[0]["metadata"]["name"]
        with self.forwarding("kubectl port-forward deploy/nginx-deploy 8000:80"):
            ran = self.typed(
                "kube-proxy-py lab shell control-plane -- curl -s http://localhost:8000/", ours=True
            )
        answers = stand_in_answers(ran.output)
        self.p.explain(
            "port-forward listens on localhost where kubectl runs (the lab's kubectl runs "
            "in its control-plane namespace, so the request is sent there too) and tunnels "
            "through the API server and the kubelet into the pod: the pod sees the "
            "connection come from its own 127.0.0.1. No Service is involved"
        )
        self.check(
            f"the pod {pod} answers through the forward, from 127.0.0.1",
            len(answers) == 1 and answers[0].pod == pod and answers[0].client == "127.0.0.1",
        )

    def relabel_a_pod(self) -> None:
        self.p.step("change a pod's label: it leaves its Deployment, it does not disappear")
        pod = self.running_pods("app=nginx-deploy", 1)[0]["metadata"]["name"]
        self.typed(f"kubectl label pod {pod} app=nginx-deploy-x --overwrite", ours=True)
        self.running_pods("app=nginx-deploy", 1)
        ran = self.typed("kubectl get pods -L app", ours=True)
        rows = {r["NAME"]: r for r in table_rows(ran.output)}
        self.claim(
            "changing a pod's label makes the pod disappear",
            "it does not: the pod keeps running with its new label, only its ReplicaSet "
            "lets go of it (no longer matches the selector) and starts a new pod to have "
            "its one replica again. From the Deployment's view the pod is gone",
        )
        self.check(
            f"{pod} still runs, as app=nginx-deploy-x, beside a new pod",
            rows.get(pod, {}).get("STATUS") == "Running"
            and rows.get(pod, {}).get("APP") == "nginx-deploy-x"
            and sum(r.get("APP") == "nginx-deploy" for r in rows.values()) == 1,
        )

    def apply_two_files(self) -> None:
        self.p.step("kubectl apply -f sleep/sleep1.yaml -f sleep/sleep2. yaml")
        line = "kubectl apply -f sleep/sleep1.yaml -f sleep/sleep2. yaml"
        ran = self.typed(line)
        self.differs(
            line,
            "the space in `sleep2. yaml` makes two arguments: `-f sleep/sleep2.` and a "
            "stray `yaml`, which kubectl apply refuses (`Unexpected args: [yaml]`) before "
            "applying anything",
        )
        self.check("kubectl refuses the stray argument", not ran.ok and "[yaml]" in ran.output)
        fixed = self.typed("kubectl apply -f sleep/sleep1.yaml -f sleep/sleep2.yaml")
        self.typed("kubectl apply -f sleep/sleep2-service.yaml", ours=True)
        self.typed(
            "kubectl wait --for=condition=Available deployment/sleep-1 "
            "deployment/sleep-2 --timeout=90s",
            ours=True,
        )
        self.check("without the space both Deployments are created", fixed.ok)

    def numbers_without_a_service(self) -> None:
        self.p.step("numbers-api and numbers-web, no Service yet")
        self.typed("kubectl apply -f numbers/api.yaml -f numbers/web.yaml", ours=True)
        self.typed(
            "kubectl wait --for=condition=Available deployment/numbers-api "
            "deployment/numbers-web --timeout=90s",
            ours=True,
        )
        web = self.running_pods("app=numbers-web", 1)[0]["status"]["podIP"]
        self.serves("node-1", f"http://{web}/")
        ran = self.typed(f"kube-proxy-py lab shell node-1 -- curl -s http://{web}/", ours=True)
        self.p.explain(
            "the web pod asks http://numbers-api/rng for a number; without a Service "
            "named numbers-api the name does not resolve"
        )
        self.check("the page says the RNG service is unavailable", "unavailable" in ran.output)

    def numbers_api_service(self) -> None:
        self.p.step("the numbers-api Service, as the note has it")
        self.p.command(f"cat numbers/api-service.yaml{OURS}")
        self.p.result(manifests.NUMBERS_API_SERVICE_AS_NOTED.expandtabs(8))
        noted = self.typed("kubectl apply -f numbers/api-service.yaml", ours=True)
        self.differs(
            "numbers/api-service.yaml: tab indentation",
            "YAML forbids tabs in indentation: kubectl cannot parse the file ("
            "`found character that cannot start any token`) and nothing is created",
        )
        self.write("numbers/api-service.yaml", manifests.NUMBERS_API_SERVICE_UNTABBED)
        self.p.explain("edited numbers/api-service.yaml: tabs replaced by spaces")
        untabbed = self.typed("kubectl apply -f numbers/api-service.yaml", ours=True)
        self.differs(
            "numbers/api-service.yaml: `type: ClusterIp`",
            "the API server rejects it: Service types are case-sensitive (`ClusterIP`)",
        )
        self.write("numbers/api-service.yaml", manifests.NUMBERS_API_SERVICE)
        self.p.explain("edited numbers/api-service.yaml: type ClusterIP")
        fixed = self.typed("kubectl apply -f numbers/api-service.yaml", ours=True)
        svc = self.typed("kubectl get svc numbers-api")
        web = self.running_pods("app=numbers-web", 1)[0]["status"]["podIP"]
        page = self.serves("node-1", f"http://{web}/", want="Here it is")
        self.p.command(f"kube-proxy-py lab shell node-1 -- curl -s http://{web}/{OURS}")
        self.show(page)
        self.p.explain(
            "the note's `it still does not work... why?`: here the page works as soon as "
            "the Service exists (the web pod resolves the name on every request). The file "
            "as the note shows it cannot have made that Service; if a page still fails, "
            "look at `kubectl get endpoints numbers-api` (does the selector match a pod?)"
        )
        self.check(
            "tabs: a parse error; ClusterIp: rejected; fixed: the page gets a number",
            not noted.ok
            and "cannot start any token" in noted.output
            and not untabbed.ok
            and 'Unsupported value: "ClusterIp"' in untabbed.output
            and fixed.ok
            and "ClusterIP" in svc.output
            and random_number(page) is not None,
        )

    def curl_from_a_pod(self) -> None:
        self.p.step("a throw-away curl pod")
        line = "kubectl run curl --image=curlimages/curl --restart=Never --rm -it -- sh"
        self.differs(
            line,
            "run here with `-i` instead of `-it`: a script has no terminal for `-t` (seed 1 "
            "shows what kubectl does then); `-i` feeds the shell the typed lines",
        )
        ran = self.typed(
            line.replace(" -it ", " -i "),
            ours=True,
            stdin=["curl -s http://numbers-api/rng", "echo"],
        )
        numbers = [ln.strip() for ln in ran.output.splitlines() if ln.strip().isdigit()]
        self.check("the pod's curl gets a number from http://numbers-api/rng", bool(numbers))

    def load_balancer(self) -> None:
        self.p.step("the LoadBalancer Service numbers-web: <pending>, then an address")
        self.typed("kubectl apply -f numbers/web-service.yaml")
        first = self.typed("kubectl get svc numbers-web")
        lb = self.load_balancer_ip("numbers-web")
        then = self.typed("kubectl get svc numbers-web")
        if "<pending>" not in first.output:
            self.p.explain("MetalLB was quicker than the first `kubectl get`: no <pending>")
        self.differs(
            "minikube service numbers-web --url / minikube tunnel",
            "not run: this is no minikube. The lab runs MetalLB (L2), which does what "
            "`minikube tunnel` does there: it gives the Service an EXTERNAL-IP from its "
            f"pool on the lab's LAN ({metallb.POOL_RANGE}; minikube tunnel shows "
            "127.0.0.1) and answers ARP for it from a node",
        )
        self.serves("client", f"http://{lb}:8080/", want="Here it is", timeout=10)
        page = self.web_page()
        self.check(
            f"EXTERNAL-IP {lb} from the pool; from outside the page shows a number",
            in_pool(lb) and lb in then.output and random_number(page) is not None,
        )

    def through_node_ports(self) -> None:
        self.p.step("the NodePort under the LoadBalancer, on every node")
        port = self.node_port("numbers-web")
        numbers: list[int | None] = []
        for node, ip in self.lab.nodes.items():
            self.serves("client", f"http://{ip}:{port}/", want="Here it is", timeout=10)
            ran = self.typed(
                f"kube-proxy-py lab shell client -- curl -s -m 10 http://{ip}:{port}/", ours=True
            )
            numbers.append(random_number(ran.output))
            self.p.explain(f"through {node}")
        self.p.explain(
            "a LoadBalancer Service is a NodePort Service plus an external address: the "
            f"nodePort {port} (8080:{port}/TCP) answers on every node, with or without a "
            "pod on it"
        )
        self.check(
            f"port {port} serves the page on each node",
            len(numbers) == len(self.lab.nodes) and None not in numbers,
        )

    def external_name(self) -> None:
        self.p.step("numbers-api as an ExternalName: raw.githubusercontent.com")
        line = "kubectl apply -f numbers-services/api-service-headless.yaml"
        self.typed(line)
        ran = self.typed("kubectl get svc numbers-api", ours=True)
        self.differs(
            line,
            "this is the headless section's file (kiamol's repository names the "
            "ExternalName one api-service-externalName.yaml): the Service stays a "
            "ClusterIP Service, now without a selector, with hand-written Endpoints",
        )
        still = [r.get("TYPE") for r in table_rows(ran.output)] == ["ClusterIP"]
        self.typed(
            "kubectl delete -f numbers-services/api-service-headless.yaml --ignore-not-found",
            ours=True,
        )
        self.typed("kubectl apply -f numbers-services/api-service-externalName.yaml")
        table = self.typed("kubectl get svc")
        row = next((r for r in table_rows(table.output) if r.get("NAME") == "numbers-api"), {})
        lookup = self.typed("kubectl exec deploy/sleep-1 -- nslookup numbers-api", ours=True)
        cname = nslookup_cnames(lookup.output).get(
            f"numbers-api.{self.namespace}.svc.cluster.local"
        )
        page = self.web_page()
        self.p.explain(
            "cluster DNS answers numbers-api with a CNAME to raw.githubusercontent.com, "
            "which the lab's outside DNS knows as 192.168.50.4. The web pod then connects "
            "there, and nothing in the lab serves HTTP at that address: the page says the "
            "API is unavailable. A CNAME changes only the address: the request still says "
            "`Host: numbers-api`, which the real raw.githubusercontent.com would not serve"
        )
        self.claim(
            "the page shows the static text file at the external address",
            "not in the lab: its stand-in for raw.githubusercontent.com answers DNS only",
        )
        self.check(
            "the wrong file leaves a ClusterIP; the right one: ExternalName, a CNAME",
            still
            and row.get("TYPE") == "ExternalName"
            and row.get("EXTERNAL-IP") == "raw.githubusercontent.com"
            and cname == "raw.githubusercontent.com"
            and "unavailable" in page,
        )

    def selectorless_not_headless(self) -> None:
        self.p.step("the note's 'headless' Service: a ClusterIP and an Endpoints object")
        self.typed("kubectl apply -f numbers-services/api-service-headless.yaml")
        svc = self.typed("kubectl get svc numbers-api")
        eps = self.typed("kubectl get endpoints numbers-api")
        self.typed(
            "kubectl get endpointslices -l kubernetes.io/service-name=numbers-api", ours=True
        )
        cip = self.cluster_ip("numbers-api")
        lookup = self.typed("kubectl exec deploy/sleep-1 -- nslookup numbers-api", ours=True)
        self.claim(
            "a headless Service: no selector, so no target pods, deployed with an Endpoints",
            "this Service is not headless: it has a ClusterIP (headless means "
            "`clusterIP: None`, and DNS then answers with the endpoints' addresses). It is "
            "a selectorless Service: its endpoints are the hand-written Endpoints, which "
            "the EndpointSlice mirroring controller copies into an EndpointSlice",
        )
        self.differs(
            "kubectl get endpoints numbers-api",
            "it also prints `Warning: v1 Endpoints is deprecated in v1.33+; use "
            "discovery.k8s.io/v1 EndpointSlice`: the Endpoints API still works, but the "
            "proxies read EndpointSlices",
        )
        self.until(
            lambda: manifests.FAKE_ENDPOINT in self.endpoint_ips("numbers-api"),
            "the mirrored EndpointSlice",
        )
        page = self.web_page()
        self.p.explain(
            f"the web pod connects to the ClusterIP {cip}, which is DNATed to "
            f"{manifests.FAKE_ENDPOINT}:80; no such host exists (the node sends it to "
            "the LAN's router, which drops it), so the web pod's request times out"
        )
        self.check(
            f"ClusterIP {cip}; Endpoints {manifests.FAKE_ENDPOINT}:80; DNS gives the "
            "ClusterIP; the page cannot get a number",
            cip in svc.output
            and f"{manifests.FAKE_ENDPOINT}:80" in eps.output
            and nslookup_answers(lookup.output).get(
                f"numbers-api.{self.namespace}.svc.cluster.local"
            )
            == [cip]
            and "unavailable" in page,
        )

    def an_address_that_answers(self) -> None:
        self.p.step("the same file with an address that answers")
        pod_ip = self.running_pods("app=numbers-api", 1)[0]["status"]["podIP"]
        text = manifests.NUMBERS_API_SELECTORLESS.replace(manifests.FAKE_ENDPOINT, pod_ip)
        self.write("numbers-services/api-service-headless.yaml", text)
        self.p.explain(
            f"edited numbers-services/api-service-headless.yaml: ip {pod_ip}, the "
            "numbers-api pod's, instead of " + manifests.FAKE_ENDPOINT
        )
        self.typed("kubectl apply -f numbers-services/api-service-headless.yaml", ours=True)
        self.until(lambda: self.endpoint_ips("numbers-api") == {pod_ip}, "the new endpoint")
        lb = self.load_balancer_ip("numbers-web")
        self.serves("client", f"http://{lb}:8080/", want="Here it is", timeout=10)
        page = self.web_page()
        self.p.explain(
            "a selectorless Service sends its traffic wherever its Endpoints say, inside "
            "or outside the cluster: here the numbers-api pod's IP, so the page works again"
        )
        self.check(
            "with a live address in the Endpoints, the page gets a number",
            random_number(page) is not None,
        )

    def headless(self) -> None:
        self.p.step("a real headless Service: clusterIP None")
        self.typed(
            "kubectl delete -f numbers-services/api-service-headless.yaml --ignore-not-found",
            ours=True,
        )
        self.typed("kubectl scale deployment numbers-api --replicas=2", ours=True)
        pods = {p["status"]["podIP"] for p in self.running_pods("app=numbers-api", 2)}
        self.typed("kubectl apply -f numbers-services/api-service-clusterip-none.yaml", ours=True)
        svc = self.typed("kubectl get svc numbers-api", ours=True)
        name = f"numbers-api.{self.namespace}.svc.cluster.local"
        line = "kubectl exec deploy/sleep-1 -- nslookup numbers-api"
        self.until(
            lambda: set(nslookup_answers(self.quietly(line).output).get(name, [])) == pods,
            "DNS to list both pods",
        )
        lookup = self.typed(line, ours=True)
        lb = self.load_balancer_ip("numbers-web")
        self.serves("client", f"http://{lb}:8080/", want="Here it is", timeout=10)
        page = self.web_page()
        self.p.explain(
            "no ClusterIP and no proxy rule: cluster DNS answers with the ready pods' "
            "addresses and the client connects to one of them directly"
        )
        rows = table_rows(svc.output)
        self.check(
            "CLUSTER-IP None; numbers-api resolves to both pod IPs; the page works",
            rows[:1] != []
            and rows[0].get("CLUSTER-IP") == "None"
            and set(nslookup_answers(lookup.output).get(name, [])) == pods
            and random_number(page) is not None,
        )

    def endpoints_follow_pods(self) -> None:
        self.p.step("a new pod, a new endpoint; the ClusterIP stays")
        cip = self.cluster_ip("sleep-2")
        before = self.typed("kubectl get endpoints sleep-2")
        old = self.endpoint_ips("sleep-2")
        self.typed("kubectl delete pods -l app=sleep-2")
        self.until(
            lambda: len(new := self.endpoint_ips("sleep-2")) == 1 and new != old,
            "the replacement pod's endpoint",
        )
        after = self.typed("kubectl get endpoints sleep-2")
        new = self.endpoint_ips("sleep-2")
        self.p.explain(
            "the Deployment replaced the pod (new IP); the endpoints controller updated "
            "the Endpoints and EndpointSlice, the proxies their rules; the Service and "
            "its ClusterIP did not change"
        )
        self.check(
            f"endpoints {sorted(old)} → {sorted(new)}; ClusterIP still {cip}",
            old != new
            and all(ip in before.output for ip in old)
            and all(ip in after.output for ip in new)
            and self.cluster_ip("sleep-2") == cip,
        )


# ------------------------------------------------------------------------- seed 004


class Seed4(Walkthrough):
    note = SEEDS[4]

    def steps(self) -> Sequence[Callable[[], None]]:
        return (
            self.cluster_ip_by_expose,
            self.cluster_ip_by_yaml,
            self.through_node_ports,
            self.load_balancer,
        )

    def spread(self, url: str, want: set[str]) -> list[Answer]:
        """Fresh connections from the outside client until every pod in ``want``
        answered (at most 3 rounds of 8)."""
        line = (
            f"kube-proxy-py lab shell client -- sh -c 'for i in 1 2 3 4 5 6 7 8; do "
            f"curl -s {url}; done'"
        )
        answers: list[Answer] = []
        for _ in range(3):
            answers += stand_in_answers(self.typed(line, ours=True).output)
            if {a.pod for a in answers} >= want:
                break
        return answers

    def cluster_ip_by_expose(self) -> None:
        self.p.step("a ClusterIP Service with kubectl expose")
        self.typed("kubectl apply -f deployment.yaml")
        self.typed(
            "kubectl rollout status deployment/nginx-deployment -n lab06 --timeout=90s", ours=True
        )
        self.running_pods("app=nginx", 2)
        self.typed("kubectl expose deployment nginx-deployment -n lab06 --name=nginx-service")
        ran = self.typed("kubectl get services -n lab06")
        cip = self.cluster_ip("nginx-service")
        self.serves("node-1", f"{cip}:80")
        web = self.typed(f"kube-proxy-py lab shell node-1 -- curl -s {cip}:80", ours=True)
        self.p.explain(
            "expose copied the Deployment's selector (app=nginx) and its containerPort 80 "
            "into a new ClusterIP Service"
        )
        rows = table_rows(ran.output)
        self.check(
            f"nginx-service: ClusterIP {cip}, 80/TCP, answered by a pod",
            rows[:1] != []
            and rows[0].get("TYPE") == "ClusterIP"
            and rows[0].get("PORT(S)") == "80/TCP"
            and len(stand_in_answers(web.output)) == 1,
        )

    def cluster_ip_by_yaml(self) -> None:
        self.p.step("the same with YAML: port 8080 → targetPort 80")
        self.typed("kubectl delete service nginx-service -n lab06", ours=True)
        self.p.explain("the note's two ways make the same Service: remove the first")
        self.typed("kubectl apply -f deployment.yaml")
        self.p.command(f"cat service.yaml{OURS}")
        self.p.result(manifests.LAB06["service.yaml"])
        self.typed("kubectl apply -f service.yaml")
        cip = self.cluster_ip("nginx-service")
        self.typed("kubectl get services -n lab06", ours=True)
        self.serves("node-1", f"{cip}:8080")
        web = self.typed(f"kube-proxy-py lab shell node-1 -- curl -s {cip}:8080", ours=True)
        self.p.explain(f"{{service IP}}:port → {{pod IP}}:targetPort: {cip}:8080 → a pod's :80")
        self.check(
            f"{cip}:8080 is answered by a pod's port 80", len(stand_in_answers(web.output)) == 1
        )

    def through_node_ports(self) -> None:
        self.p.step(f"a NodePort Service: nodePort {manifests.NODE_PORT} on every node")
        self.typed("kubectl apply -f service-nodeport.yaml", ours=True)
        self.typed("kubectl get services -n lab06", ours=True)
        pods = {p["metadata"]["name"] for p in self.running_pods("app=nginx", 2)}
        seen: dict[str, set[str]] = {}
        for node, ip in self.lab.nodes.items():
            url = f"http://{ip}:{manifests.NODE_PORT}/"
            self.serves("client", url)
            seen[node] = {a.pod for a in self.spread(url, pods)}
        self.p.explain(
            "every node accepts the nodePort and spreads new connections over all the "
            "Service's pods, wherever they run (the seed-000 note's `no load balancing` "
            "does not hold); with externalTrafficPolicy Cluster the pods see a node's "
            "address, not the client's"
        )
        self.check(
            f"from outside, each node's :{manifests.NODE_PORT} reaches both pods",
            len(seen) == len(self.lab.nodes) and all(s == pods for s in seen.values()),
        )

    def load_balancer(self) -> None:
        self.p.step("a LoadBalancer Service, without a cloud")
        self.typed("kubectl apply -f service-loadbalancer.yaml", ours=True)
        lb = self.load_balancer_ip("nginx-loadbalancer")
        ran = self.typed("kubectl get services -n lab06", ours=True)
        self.serves("client", f"http://{lb}/")
        web = self.typed(f"kube-proxy-py lab shell client -- curl -s http://{lb}/", ours=True)
        port = self.node_port("nginx-loadbalancer")
        self.p.explain(
            "the note is right that a LoadBalancer needs something outside Kubernetes to "
            "hand out addresses and bring their traffic to the nodes (a cloud's load "
            "balancer); on the lab's LAN MetalLB does it"
        )
        self.p.explain(
            f"built on NodePort: the Service has a nodePort ({port}) as well as the "
            f"external address {lb}, and kube-proxy-py DNATs both to the pods"
        )
        self.check(
            f"EXTERNAL-IP {lb} from the pool, a nodePort, answered from outside",
            in_pool(lb)
            and f"80:{port}/TCP" in ran.output
            and len(stand_in_answers(web.output)) == 1,
        )


WALKTHROUGHS: Mapping[int, type[Walkthrough]] = {
    0: Seed0,
    1: Seed1,
    2: Seed2,
    3: Seed3,
    4: Seed4,
}

# --------------------------------------------------------------------------- running


def run_seed(lab: LabView, number: int, color: bool, out: TextIO) -> SeedResult:
    note = SEEDS[number]
    presenter = SeedPresenter(out=out, color=color)
    presenter.title(f"Seed {note.number}: {note.file} — {note.topic}")
    start = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix=f"kpp-seed-{note.number}-"))
    try:
        walkthrough = WALKTHROUGHS[number](lab, presenter, workdir)
        walkthrough.run()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(file=out, flush=True)
    return SeedResult(
        note,
        presenter.passed,
        list(presenter.failures),
        list(presenter.deviations),
        time.monotonic() - start,
    )


def run_parallel(
    lab: LabView, numbers: Sequence[int], color: bool, out: TextIO
) -> list[SeedResult]:
    """Every walkthrough at once (each in its own namespace), printed in order."""
    results: dict[int, SeedResult] = {}
    buffers = {n: io.StringIO() for n in numbers}

    def one(n: int) -> None:
        try:
            results[n] = run_seed(lab, n, color, buffers[n])
        except Exception as exc:
            results[n] = SeedResult(SEEDS[n], 0, [f"walkthrough crashed: {exc}"], [], 0.0)

    threads = [threading.Thread(target=one, args=(n,), daemon=True) for n in numbers]
    for t in threads:
        t.start()
    for n, t in zip(numbers, threads, strict=True):
        t.join()
        out.write(buffers[n].getvalue())
        out.flush()
    return [results[n] for n in numbers]


def summarize(results: Sequence[SeedResult], lab: LabView, out: TextIO) -> None:
    heading = f"Summary ({lab.mode} mode, lab {lab.state.lab_id})"
    print(heading, file=out)
    print("=" * len(heading), file=out)
    for r in results:
        print(
            f"seed {r.note.number} ({r.note.file}): {r.passed} checks passed, "
            f"{len(r.failed)} failed ({r.seconds:.0f} s)",
            file=out,
        )
        for failure in r.failed:
            print(f"    FAILED {failure}", file=out)
    print(file=out)
    print("Where the notes and the lab differ", file=out)
    print("----------------------------------", file=out)
    for r in results:
        if not r.deviations:
            continue
        print(f"seed {r.note.number} ({r.note.file}):", file=out)
        for kind, label in (("command", "commands"), ("claim", "statements")):
            items = [d for d in r.deviations if d.kind == kind]
            if items:
                print(f"  {label}:", file=out)
            for d in items:
                print(f"    - {d.what}: {d.why}", file=out)
    out.flush()


def write_manifests(directory: Path, numbers: Sequence[int]) -> list[Path]:
    """The files of the chosen walkthroughs, under ``directory/seed-N/`` with the names
    the notes use (``kube-proxy-py lab seeds --manifests DIR``: to follow a note by hand).
    Existing files are overwritten."""
    written: list[Path] = []
    for number in numbers:
        for rel, text in manifests.FILES[number].items():
            path = directory / f"seed-{number}" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            written.append(path)
    return written


def main(
    state_dir: Path,
    numbers: Sequence[int] | None = None,
    *,
    color: bool | None = None,
    parallel: bool = False,
    out: TextIO = sys.stdout,
) -> int:
    logging.getLogger().setLevel(logging.WARNING)
    chosen = seed_numbers(numbers)
    state = labmod.load_state(state_dir)
    if state is None or not state.supervisor_alive() or state.phase != "ready":
        print("no lab is running: starting one (`kube-proxy-py lab up`)\n", file=out, flush=True)
        rc = labmod.up(state_dir, nodes=None, mode=None, compare=None)
        if rc != 0:
            return rc
        state = labmod.load_state(state_dir)
        if state is None:
            raise SeedsError(f"the lab did not record its state in {state_dir}")
    lab = LabView.of(state)
    use_color = out.isatty() if color is None else color
    print(
        f"kube-proxy-py lab seeds: the learners' notes on lab {state.lab_id} "
        f"({lab.mode} mode, nodes {', '.join(lab.nodes)})\n",
        file=out,
        flush=True,
    )
    if parallel:
        results = run_parallel(lab, chosen, use_color, out)
    else:
        results = [run_seed(lab, n, use_color, out) for n in chosen]
    summarize(results, lab, out)
    failed = sum(len(r.failed) for r in results)
    passed = sum(r.passed for r in results)
    print(file=out)
    if failed:
        print(f"lab seeds: {failed} of {passed + failed} checks failed", file=out)
        return 1
    print(f"lab seeds: all {passed} checks passed in {len(results)} walkthrough(s)", file=out)
    return 0
