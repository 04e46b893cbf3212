"""Fuzz targets: one function per input path of the product, ``bytes -> None``.

Each target feeds the bytes to the real code path and raises
:class:`~tests.fuzz.oracle.Finding` when the oracle is broken. Input formats (what the
corpus files hold):

``state``
    A state file as ``render --state`` reads it (YAML/JSON, one or many documents, a List).
    Rendered through ``cli.main`` twice (iptables from stdin; nftables from a file with
    ``--strict``), and once more through ``read_documents``/``build_state``/``plan`` and both
    renderers for IPv4 and IPv6 with sentinel objects appended: a bad object must not keep
    the sentinel Service out of the rules unless a Problem names it.
``agent``
    Lines ``<Kind> list <JSON page>`` or ``<Kind> watch <JSON event>`` (Kind: Service,
    EndpointSlice, Node; any other line is a Service watch line). Consecutive list lines
    of one kind are the pages of one list (served through ``ApiSession.get_json`` to
    ``Reflector._list``), consecutive watch lines one watch stream (bytes through
    ``WatchStream`` in small chunks to ``Reflector._handle_event``). Events go to
    ``ClusterState.handle``; after each group the agent's sync is replayed (``take``,
    incremental ``plan``, cached renders, partial/incremental texts) and compared with a
    fresh plan and render. Sentinel Services added before and after must be in the rules.
``kubeconfig``
    A kubeconfig; an optional first line ``#master URL`` gives ``--master``. Loaded with
    ``load_kubeconfig`` in a sandbox directory holding ``ca.crt``, ``client.crt``,
    ``client.key`` and ``token``; a loaded config must build an ``ApiClient`` whose
    headers are valid HTTP.
``options``
    An optional first line ``#argv ["--flag", ...]`` (``{config}`` stands for the config
    file), then a KubeProxyConfiguration file. Without the line: ``--config {config}``.
    ``parse_run_args`` must return options the agent can use, or raise ConfigError.
``cli``
    One line ``#argv [...]``: the arguments after ``render`` (``{state}`` stands for a
    valid state file). Exit 0/1/2, a message with 2, argparse's SystemExit(2) for bad
    flags; the rendered text inside the grammar.

Expected errors: StateFileError (exit 2), ConfigError, ApiError (the reflector retries).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import http.client
import io
import json
import logging
import os
import re
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from proxy import cli, logs
from proxy.agent.options.parse import parse_run_args
from proxy.agent.state import Changes, ClusterState
from proxy.apiclient.client import ApiClient, ApiError, ApiSession
from proxy.apiclient.config import ClientConfig, ExecPlugin, load_kubeconfig
from proxy.apiclient.transport import build_ssl_context
from proxy.config import ConfigError, ProxyConfig, ProxyMode
from proxy.explain import report as explain_report
from proxy.explain.engine import NodeView, explain
from proxy.explain.packet import Entry, make_packet
from proxy.iptables import model as ipt_model
from proxy.iptables import render as ipt_render
from proxy.iptables import restore as ipt_restore
from proxy.model import IPFamily, Problem
from proxy.nftables import diff as nft_diff
from proxy.nftables import model as nft_model
from proxy.nftables import render as nft_render
from proxy.plan import Plan, Snapshot, plan
from proxy.source.file import StateFileError, build_state, read_documents
from proxy.source.reflector import (
    Reflector,
    ResourceSpec,
    endpointslices_spec,
    node_spec,
    services_spec,
)
from proxy.tracker import PlanTracker
from tests.fuzz import grammar
from tests.fuzz.oracle import Finding, Findings, InputTimeout

NODE = "node-a"
MODES = ("iptables", "nftables")
FAMILIES = (IPFamily.V4, IPFamily.V6)

Target = Callable[[bytes], None]


def _uncaught(target: str, exc: BaseException) -> Finding:
    oracle = "memory" if isinstance(exc, MemoryError) else "uncaught"
    return Finding.from_exception(target, oracle, exc)


class Checks:
    """The findings of one input. Oracle checks add to it and go on, so one frequent
    finding does not hide the others an input shows; an uncaught exception ends only the
    stage it happened in."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.findings: list[Finding] = []

    def add(self, oracle: str, where: str, detail: str) -> None:
        self.findings.append(Finding(self.target, oracle, where, detail))

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        try:
            yield
        except Finding as found:
            self.findings.append(found)
        except InputTimeout:
            raise
        except Exception as exc:
            u = _uncaught(self.target, exc)
            self.findings.append(Finding(u.target, u.oracle, u.where, f"{name}: {u.detail}"))

    def done(self) -> None:
        unique = list({f.signature: f for f in reversed(self.findings)}.values())[::-1]
        if len(unique) == 1:
            raise unique[0]
        if unique:
            raise Findings(unique)


def _grammar(c: Checks, text: str, mode: str, where: str) -> None:
    violations = grammar.render_violations(text, mode)
    seen: set[str] = set()
    for v in violations:
        if v.rule not in seen:
            seen.add(v.rule)
            c.add("grammar", f"{mode}.{v.rule}@{where}", f"{where}: {v}")


# --------------------------------------------------------------------------- sandbox


@functools.cache
def sandbox() -> Path:
    """A private directory for the files targets write and read (made once a process):
    ``$KPP_FUZZ_SANDBOX`` (the runner's work directory), else a new temporary one."""
    given = os.environ.get("KPP_FUZZ_SANDBOX")
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
    else:
        path = Path(tempfile.mkdtemp(prefix="kpp-fuzz-"))
    (path / "token").write_text("fuzz-token\n")
    from proxy.lab.pki import CertificateAuthority

    ca = CertificateAuthority.create("kpp-fuzz-ca")
    pair = ca.issue("kube-proxy-py", organizations=["system:node-proxier"], client=True)
    (path / "ca.crt").write_bytes(ca.cert_pem)
    (path / "client.crt").write_bytes(pair.cert_pem)
    (path / "client.key").write_bytes(pair.key_pem)
    example = Path(__file__).resolve().parents[2] / "examples" / "my-nginx.yaml"
    (path / "state.yaml").write_bytes(example.read_bytes())
    return path


_UNSAFE_PATHS = re.compile(rb"/(dev|proc|sys)\b|\\x2f|\\u002f|\\U0000002f|\\/|\\N|\\_", re.I)
"""Inputs naming device or proc files (``/dev/zero``, ``/dev/stdin``) as a file to read are
skipped: reading them is the harness's hazard, not an input handling bug."""


# --------------------------------------------------------------------------- CLI plumbing


@dataclass
class CliResult:
    code: int | None
    """main's return value, or SystemExit's code."""
    exited: bool
    """SystemExit was raised (argparse)."""
    out: str
    err: str


@functools.cache
def _install_parser_cache() -> None:
    """cli.main builds its whole parser (every ``run`` and ``bench`` flag) on each call:
    70% of a small render. The parser does not depend on the input, so build it once."""
    cli.build_parser = functools.cache(cli.build_parser)


def run_cli(target: str, argv: Sequence[str], stdin: bytes = b"") -> CliResult:
    """``cli.main(argv)`` with stdio like a UTF-8 terminal's (stdin and stdout strict,
    stderr backslashreplace); any exception but SystemExit is a finding."""
    _install_parser_cache()
    out_buf, err_buf = io.BytesIO(), io.BytesIO()
    fin = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8", errors="strict", newline="\n")
    fout = io.TextIOWrapper(out_buf, encoding="utf-8", errors="strict", newline="\n")
    ferr = io.TextIOWrapper(err_buf, encoding="utf-8", errors="backslashreplace", newline="\n")
    saved = sys.stdin, sys.stdout, sys.stderr
    saved_handlers = logging.getLogger().handlers[:]
    sys.stdin, sys.stdout, sys.stderr = fin, fout, ferr
    code: int | None
    exited = False
    try:
        try:
            code = cli.main(list(argv))
        except SystemExit as exc:
            exited = True
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        fout.flush()
        ferr.flush()
    except InputTimeout:
        raise
    except BaseException as exc:
        raise _uncaught(target, exc) from exc
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved
        logging.getLogger().handlers[:] = saved_handlers
    return CliResult(
        code,
        exited,
        out_buf.getvalue().decode("utf-8", "replace"),
        err_buf.getvalue().decode("utf-8", "replace"),
    )


_STDERR_LINE = re.compile(r"(kube-proxy-py: |time=)")


def _check_stderr_lines(c: Checks, err: str, where: str) -> None:
    """Every message line is ours: a name with a newline must not start a line of its own."""
    for line in err.split("\n")[:-1] if err.endswith("\n") else err.split("\n"):
        if line and not _STDERR_LINE.match(line):
            c.add(
                "stderr-line",
                where,
                f"{where}: stderr line not from kube-proxy-py's message format: {line[:200]!r}",
            )
            return


def _check_exit(c: Checks, r: CliResult, allowed: set[int], where: str) -> None:
    if r.code not in allowed:
        c.add("exit-status", f"{r.code}@{where}", f"{where}: exit status {r.code!r}")
    if r.code == cli.EXIT_USAGE and "kube-proxy-py: " not in r.err and "error:" not in r.err:
        c.add("exit-message", where, f"{where}: exit 2 without a message")


def _mode_of(text: str) -> str:
    return "iptables" if "\n*nat\n" in text or text.startswith("*nat\n") else "nftables"


# --------------------------------------------------------------------------- sentinels


SENTINEL_IP = {IPFamily.V4: "10.255.255.254", IPFamily.V6: "fd00:ffff::fe"}
SENTINEL_EP = {IPFamily.V4: "10.254.254.254", IPFamily.V6: "fd00:fffe::fe"}


def sentinel_objects(namespace: str) -> list[dict[str, Any]]:
    """A valid dual-stack Service and its slices in ``namespace``: whatever else the input
    holds, they must be rendered (or a Problem must name them)."""
    svc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "sentinel", "namespace": namespace, "resourceVersion": "1"},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": SENTINEL_IP[IPFamily.V4],
            "clusterIPs": [SENTINEL_IP[IPFamily.V4], SENTINEL_IP[IPFamily.V6]],
            "ports": [{"name": "p", "port": 65000, "protocol": "TCP", "targetPort": 65001}],
        },
    }
    out = [svc]
    for fam, short in ((IPFamily.V4, "v4"), (IPFamily.V6, "v6")):
        out.append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"sentinel-{short}",
                    "namespace": namespace,
                    "resourceVersion": "1",
                    "labels": {"kubernetes.io/service-name": "sentinel"},
                },
                "addressType": str(fam),
                "ports": [{"name": "p", "port": 65001, "protocol": "TCP"}],
                "endpoints": [
                    {"addresses": [SENTINEL_EP[fam]], "conditions": {"ready": True}},
                ],
            }
        )
    return out


def check_sentinel(
    c: Checks, p: Plan, problems: Sequence[Problem], namespace: str, where: str
) -> None:
    """The sentinel's port is planned with its endpoint, or a Problem names the sentinel."""
    if any(pr.ref.namespace == namespace for pr in (*problems, *p.problems)):
        return
    ports = [sp for sp in p.service_ports if (sp.namespace, sp.name) == (namespace, "sentinel")]
    ep = SENTINEL_EP[p.family]
    if not ports:
        c.add(
            "blocked-object",
            f"{p.family}@{where}",
            f"{where}: the valid sentinel Service {namespace}/sentinel ({p.family}) is not "
            "planned and no Problem says why",
        )
        return
    if not any(str(e.ip) == ep for sp in ports for e in sp.reachable_endpoints):
        c.add(
            "blocked-object",
            f"endpoints-{p.family}@{where}",
            f"{where}: the sentinel's endpoint {ep} is missing and no Problem says why",
        )


def _config(mode: str) -> ProxyConfig:
    return ProxyConfig(node_name=NODE, mode=ProxyMode(mode))


def render_text(p: Plan, mode: str) -> str:
    if mode == "iptables":
        return ipt_restore.restore_text(ipt_render.render(p))
    return nft_diff.full_sync_text(nft_render.render(p))


# --------------------------------------------------------------------------- state


def target_state(data: bytes) -> None:
    c = Checks("state")
    base = ["render", "--hostname-override", NODE]
    with c.stage("render --state - (stdin)"):
        # stdin, iptables, no --strict: 0 or 2
        r = run_cli(c.target, [*base, "--state", "-", "--mode", "iptables"], stdin=data)
        _check_exit(c, r, {0, 2}, "cli.render-stdin")
        if r.code == 0:
            _grammar(c, r.out, "iptables", "cli.render-stdin")
        _check_stderr_lines(c, r.err, "cli.render-stdin")
    with c.stage("render --state FILE --strict"):
        # a file, nftables, --strict: 0, 1 (problems) or 2
        path = sandbox() / "state-input"
        path.write_bytes(data)
        r = run_cli(c.target, [*base, "--state", str(path), "--mode", "nftables", "--strict"])
        _check_exit(c, r, {0, 1, 2}, "cli.render-file")
        if r.code in (0, 1):
            _grammar(c, r.out, "nftables", "cli.render-file")
        _check_stderr_lines(c, r.err, "cli.render-file")
    with c.stage("read_documents/build_state/plan/render"):
        _state_functions(c, data)
    c.done()


def _state_functions(c: Checks, data: bytes) -> None:
    """Both families and both renderers, with sentinel objects appended."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return
    try:
        objects = read_documents(text, "fuzz")
    except StateFileError:
        return
    ns = "kpp-fuzz-sentinel"
    loaded = build_state([*objects, *sentinel_objects(ns)], NODE)
    for mode in MODES:
        for fam in FAMILIES:
            p = plan(loaded.snapshot, _config(mode), fam, loaded.problems)
            _grammar(c, render_text(p, mode), mode, f"render-{fam}")
            check_sentinel(c, p, loaded.problems, ns, f"build_state-{mode}")
            with c.stage(f"explain-{mode}-{fam}"):
                _explain_checks(c, p, loaded.snapshot.services, f"explain-{mode}")


EXPLAINED_PORTS = 4
"""Service ports of a plan whose ClusterIP, NodePort and a missing port are explained."""
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def _explain_checks(c: Checks, p: Plan, services: Any, where: str) -> None:
    """``explain`` over a plan made from hostile objects: a packet to the first service
    ports' ClusterIPs (from a pod, from outside), their NodePorts (from outside, to the
    node's IP) and a port nobody serves. The explanation must name the Service port the
    packet was sent to, keep only endpoints the plan may DNAT to with probabilities
    summing to 1, and print names as data (no control characters; JSON that parses)."""
    node = NodeView(frozenset({p.node_ip} if p.node_ip is not None else ()))
    src = "10.244.9.9" if p.family is IPFamily.V4 else "fd00:10:244:9::9"
    for sp in p.service_ports[:EXPLAINED_PORTS]:
        proto = sp.protocol.lowercase
        probes = [
            (make_packet(src, str(sp.cluster_ip), proto, sp.port, Entry.POD), sp),
            (make_packet(src, str(sp.cluster_ip), proto, sp.port, Entry.EXTERNAL), sp),
            (make_packet(src, str(sp.cluster_ip), "icmp", None, Entry.POD), None),
        ]
        if sp.node_port is not None and p.node_ip is not None:
            dst = str(p.node_ip)
            probes.append((make_packet(src, dst, proto, sp.node_port, Entry.EXTERNAL), sp))
        for packet, expected in probes:
            why = explain(p, packet, node=node, services=services)
            _check_explanation(c, why, expected, where)


def _check_explanation(c: Checks, why: Any, sp: Any, where: str) -> None:
    text = explain_report.to_text(why)
    if _CONTROL.search(text):
        c.add("explain-text", where, f"control character in: {text[:300]!r}")
    doc = json.loads(explain_report.to_json(why))
    if doc["verdict"] not in ("dnat", "reject", "drop", "not-a-service"):
        c.add("explain-verdict", where, f"verdict {doc['verdict']!r}")
    if sp is None:
        return
    if doc["verdict"] == "not-a-service" or doc["service"] is None:
        c.add("explain-service", where, f"{why.packet}: no Service port, {doc['reason']!r}")
        return
    kept = [e for e in why.endpoints if e.kept]
    allowed = {(str(e.ip), e.port) for e in sp.reachable_endpoints}
    if doc["verdict"] == "dnat":
        if doc["service"] != why.service or not kept:
            c.add("explain-dnat", where, f"{why.packet}: dnat without a kept endpoint")
        elif any((e.address, e.port) not in allowed for e in kept):
            c.add("explain-endpoint", where, f"{why.packet}: kept {kept} not in the plan")
        elif why.affinity is None and abs(sum(e.probability for e in kept) - 1) > 1e-6:
            c.add("explain-probability", where, f"{why.packet}: probabilities {kept}")


# --------------------------------------------------------------------------- agent


class _FakeResponse:
    """What ApiSession reads from http.client: a status, ``read`` and ``read1``."""

    def __init__(self, body: bytes, chunk: int, status: int = 200) -> None:
        self._body = body
        self._pos = 0
        self._chunk = chunk
        self.status = status
        self.will_close = False

    def read(self, n: int | None = None) -> bytes:
        end = len(self._body) if n is None or n < 0 else self._pos + n
        out = self._body[self._pos : end]
        self._pos += len(out)
        return out

    def read1(self, n: int = -1) -> bytes:
        size = self._chunk if n < 0 else min(n, self._chunk)
        out = self._body[self._pos : self._pos + size]
        self._pos += len(out)
        return out


class _FakeConnection:
    sock = None

    def close(self) -> None:
        pass


class _FakeTokens:
    def invalidate(self) -> None:
        pass


class _FakeClient:
    server = "https://fuzz.invalid:6443"
    tokens = _FakeTokens()

    def _forget(self, session: object) -> None:
        pass


class _ScriptedSession(ApiSession):
    """An ApiSession whose requests are answered with the input's bytes (get_json, watch
    and WatchStream are the real code)."""

    def __init__(self, chunk: int) -> None:
        super().__init__(cast(ApiClient, _FakeClient()))
        self.bodies: list[bytes] = []
        self.chunk = chunk

    def _request(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        read_timeout: float,
        body: bytes | None = None,
        content_type: str = "application/json",
    ) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection]:
        body = self.bodies.pop(0) if self.bodies else b'{"metadata": {}, "items": []}'
        resp = _FakeResponse(body, self.chunk)
        return cast(http.client.HTTPResponse, resp), cast(
            http.client.HTTPConnection, _FakeConnection()
        )


KINDS: dict[bytes, Callable[[], ResourceSpec]] = {
    b"Service": services_spec,
    b"EndpointSlice": endpointslices_spec,
    b"Node": lambda: node_spec(NODE),
}


def agent_script(data: bytes) -> list[tuple[str, str, list[bytes]]]:
    """(kind, "list"|"watch", payloads) groups, in input order."""
    groups: list[tuple[str, str, list[bytes]]] = []
    for raw in data.split(b"\n"):
        kind, op, payload = b"Service", b"watch", raw
        head = raw.split(b" ", 2)
        if len(head) == 3 and head[0] in KINDS and head[1] in (b"list", b"watch"):
            kind, op, payload = head[0], head[1], head[2]
        k, o = kind.decode(), op.decode()
        if groups and groups[-1][:2] == (k, o):
            groups[-1][2].append(payload)
        else:
            groups.append((k, o, [payload]))
    return groups


@dataclass
class _AgentSync:
    """The Proxier's sync, per mode: incremental plan + cached render, and the texts
    it would write."""

    mode: str
    tracker: PlanTracker = field(default_factory=PlanTracker)
    last_ruleset: ipt_model.IptablesRuleset | nft_model.NftRuleset | None = None
    ipt_cache: ipt_render.RenderCache = field(default_factory=ipt_render.RenderCache)
    nft_cache: nft_render.RenderCache = field(default_factory=nft_render.RenderCache)


class _LogCheck(logging.Handler):
    """Formats every record as the agent's logs do; a line break inside one is recorded."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(logs.LogfmtFormatter())
        self.broken: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record)
        if self.broken is None and ("\n" in line or "\r" in line):
            self.broken = line[:300]


@contextlib.contextmanager
def _capture_logs() -> Iterator[_LogCheck]:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    check = _LogCheck()
    root.handlers[:] = [check]
    root.setLevel(logging.INFO)
    try:
        yield check
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def target_agent(data: bytes) -> None:
    c = Checks("agent")
    state = ClusterState(NODE)
    touched: set[str] = set()

    def deliver(kind: str, event: str, obj: Mapping[str, Any], where: str) -> None:
        meta = obj.get("metadata") if isinstance(obj, Mapping) else None
        if isinstance(meta, Mapping):
            touched.add(str(meta.get("namespace")))
        with c.stage(f"ClusterState.handle from {where}"):
            state.handle(kind, event, obj)

    chunk = 1 + zlib.crc32(data) % 61
    syncs = {mode: _AgentSync(mode) for mode in MODES}
    with _capture_logs() as logcheck:
        for obj in sentinel_objects("kpp-fuzz-a"):
            deliver(obj["kind"], "ADDED", obj, "sentinel")
        reflectors: dict[str, tuple[Reflector, _ScriptedSession]] = {}
        for kind, op, payloads in agent_script(data):
            if kind not in reflectors:
                session = _ScriptedSession(chunk)
                r = Reflector(
                    cast(ApiClient, _FakeClient()),
                    KINDS[kind.encode()](),
                    functools.partial(_on_event, deliver, kind),
                    name=kind,
                )
                r._session = session
                reflectors[kind] = (r, session)
            r, session = reflectors[kind]
            with c.stage(f"Reflector {op} {kind}"):
                try:
                    if op == "list":
                        session.bodies = list(payloads)
                        r._list()
                    else:
                        session.bodies = [b"\n".join(payloads)]
                        for event in session.watch(r.spec.path, {}, timeout=300):
                            r._handle_event(event)
                except ApiError:
                    pass  # the reflector logs it and lists or watches again
            _sync_all(c, state, syncs)
        for obj in sentinel_objects("kpp-fuzz-b"):
            deliver(obj["kind"], "ADDED", obj, "sentinel")
        _sync_all(c, state, syncs)
    if logcheck.broken is not None:
        c.add("log-line", "logs", f"a log record spans lines: {logcheck.broken!r}")
    with c.stage("plan/render from the agent's state"):
        snapshot, _, problems = state.take()
        for mode in MODES:
            for fam in FAMILIES:
                p = plan(snapshot, _config(mode), fam, problems)
                _grammar(c, render_text(p, mode), mode, f"agent-full-{fam}")
                for ns in ("kpp-fuzz-a", "kpp-fuzz-b"):
                    if ns not in touched:
                        check_sentinel(c, p, problems, ns, f"agent-{mode}")
    c.done()


def _sync_all(c: Checks, state: ClusterState, syncs: Mapping[str, _AgentSync]) -> None:
    snapshot, changes, problems = state.take()
    for s in syncs.values():
        with c.stage(f"sync {s.mode}"):
            _agent_sync(c, snapshot, changes, problems, s)


def _on_event(
    deliver: Callable[[str, str, Mapping[str, Any], str], None],
    kind: str,
    event: str,
    obj: dict[str, Any],
) -> None:
    deliver(kind, event, obj, f"Reflector {kind} {event}")


def _agent_sync(
    c: Checks,
    snapshot: Snapshot,
    changes: Changes,
    problems: tuple[Problem, ...],
    s: _AgentSync,
) -> None:
    """One Proxier.sync_proxy_rules without the kernel: what it would write is inside the grammar,
    and the incremental plan and cached render equal a fresh plan and render."""
    cfg = _config(s.mode)
    update = s.tracker.update(snapshot, cfg, IPFamily.V4, problems, changes.services)
    p = update.plan
    fresh = plan(snapshot, cfg, IPFamily.V4, problems)
    ruleset: ipt_model.IptablesRuleset | nft_model.NftRuleset
    if s.mode == "iptables":
        ruleset = ipt_render.render(p, s.ipt_cache, update.updated)
        same = p == fresh and ruleset == ipt_render.render(fresh)
        delta = (
            ipt_restore.partial_restore_text(s.last_ruleset, ruleset)
            if isinstance(s.last_ruleset, ipt_model.IptablesRuleset)
            else ""
        )
    else:
        ruleset = nft_render.render(p, s.nft_cache, update.updated)
        same = p == fresh and ruleset == nft_render.render(fresh)
        delta = (
            nft_diff.incremental_text(s.last_ruleset, ruleset)
            if isinstance(s.last_ruleset, nft_model.NftRuleset)
            else ""
        )
    s.last_ruleset = ruleset
    if not same:
        c.add(
            "incremental-differs",
            s.mode,
            f"{s.mode}: the incremental plan/cached render differs from a fresh one",
        )
    _grammar(c, delta, s.mode, "agent-incremental")


# --------------------------------------------------------------------------- kubeconfig


def split_first_line(data: bytes, marker: bytes) -> tuple[bytes | None, bytes]:
    if data.startswith(marker):
        first, _, rest = data.partition(b"\n")
        return first[len(marker) :], rest
    return None, data


def target_kubeconfig(data: bytes) -> None:
    t = "kubeconfig"
    raw_master, body = split_first_line(data, b"#master ")
    if _UNSAFE_PATHS.search(data):
        return
    master = raw_master.decode("utf-8", "replace") if raw_master is not None else None
    path = sandbox() / "kubeconfig"
    path.write_bytes(body)
    try:
        cfg = load_kubeconfig(path, master)
    except ConfigError:
        return
    except InputTimeout:
        raise
    except Exception as exc:
        raise _uncaught(t, exc) from exc
    if cfg.exec_plugin is not None:
        # A loaded plugin is only checked, never run: the input names the command.
        _check_exec_plugin(t, cfg.exec_plugin)
        cfg = dataclasses.replace(cfg, exec_plugin=None)
    _check_client(t, cfg)


def _check_exec_plugin(t: str, plugin: ExecPlugin) -> None:
    """What would reach execve and the environment must be NUL-free strings."""
    for part in (plugin.command, *plugin.args, *(n + v for n, v in plugin.env)):
        if not isinstance(part, str) or "\0" in part:
            raise Finding(t, "bad-exec", "exec", f"exec plugin field {part!r}")
    if not plugin.command:
        raise Finding(t, "bad-exec", "command", "exec plugin with an empty command")


def _check_client(t: str, cfg: ClientConfig) -> None:
    """A config that loaded must make a client: TLS context (ConfigError allowed), a
    connection object for its host, valid request headers and URL."""
    try:
        try:
            build_ssl_context(cfg)
        except ConfigError:
            return
        client = ApiClient(cfg)
        try:
            client._new_connection()
            headers = client._headers()
            url = client._url("/api/v1/services", {"limit": "500"})
        finally:
            client.close()
    except InputTimeout:
        raise
    except Exception as exc:
        raise _uncaught(t, exc) from exc
    for name, value in headers.items():
        try:
            encoded = value.encode("latin-1")
        except UnicodeEncodeError:
            raise Finding(
                t, "bad-header", name, f"header {name} is not latin-1: {value[:100]!r}"
            ) from None
        if http.client._is_illegal_header_value(encoded):  # type: ignore[attr-defined]
            raise Finding(t, "bad-header", name, f"header {name} value {value[:100]!r}")
    if any(c in url for c in " \r\n\t") or any(ord(c) < 0x20 or ord(c) > 0x7E for c in url):
        raise Finding(t, "bad-url", "url", f"request URL {url[:200]!r}")


# --------------------------------------------------------------------------- options


def _os_arg(arg: str) -> bool:
    """Whether a process can receive ``arg`` in its argv: no NUL, and surrogates only as
    Python decodes undecodable bytes (surrogateescape)."""
    if "\x00" in arg:
        return False
    try:
        arg.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return True


def _argv(raw: bytes | None, default: list[str]) -> list[str]:
    if raw is None:
        return default
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return default
    if not isinstance(value, list):
        return default
    return [str(v) for v in value]


def target_options(data: bytes) -> None:
    t = "options"
    raw_argv, body = split_first_line(data, b"#argv ")
    path = sandbox() / "config.conf"
    path.write_bytes(body)
    argv = [a.replace("{config}", str(path)) for a in _argv(raw_argv, ["--config", "{config}"])]
    if not all(_os_arg(a) for a in argv):
        return  # no command line can hold these
    wants_exit = any(a in ("-h", "--help", "--version") for a in argv)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            opts = parse_run_args(argv, {"NODE_NAME": NODE})
    except ConfigError:
        return
    except SystemExit as exc:
        if wants_exit and exc.code in (0, None):
            return
        raise Finding(t, "exit", f"SystemExit-{exc.code}", f"SystemExit({exc.code!r})") from exc
    except InputTimeout:
        raise
    except Exception as exc:
        raise _uncaught(t, exc) from exc
    try:
        opts.proxy_config(())
        node_spec(opts.node_name)
    except InputTimeout:
        raise
    except Exception as exc:
        raise Finding.from_exception(t, "unusable-options", exc) from exc
    periods = (opts.sync_period, opts.min_sync_period, opts.config_sync_period)
    if not all(p == p and p >= 0 and p != float("inf") for p in periods):
        raise Finding(t, "unusable-options", "periods", f"sync periods {periods}")
    if opts.sync_period <= 0:
        raise Finding(t, "unusable-options", "sync_period", f"sync period {opts.sync_period}")


# --------------------------------------------------------------------------- cli


def target_cli(data: bytes) -> None:
    c = Checks("cli")
    raw_argv, _ = split_first_line(data, b"#argv ")
    state = str(sandbox() / "state.yaml")
    default = ["--state", "{state}", "--mode", "iptables", "--hostname-override", NODE]
    args = [a.replace("{state}", state) for a in _argv(raw_argv, default)]
    if not all(_os_arg(a) for a in args):
        return  # no command line can hold these
    if any(_UNSAFE_PATHS.search(a.encode("utf-8", "surrogateescape")) for a in args):
        return
    if args[:1] == ["explain"]:
        with c.stage("explain"):
            _explain_cli(c, args[1:])
        c.done()
        return
    with c.stage("render"):
        r = run_cli(c.target, ["render", *args], stdin=(sandbox() / "state.yaml").read_bytes())
        if r.exited:
            if not ((r.code == 2 and "error:" in r.err) or (r.code == 0 and _asks_for_help(args))):
                c.add("exit-status", f"SystemExit-{r.code}", f"SystemExit({r.code!r})")
        else:
            _check_exit(c, r, {0, 1, 2}, "cli.render")
            if r.code in (0, 1):
                _grammar(c, r.out, _mode_of(r.out), "cli.render")
            _check_stderr_lines(c, r.err, "cli.render")
    c.done()


def _asks_for_help(args: list[str]) -> bool:
    """Whether argparse may print help or the version and exit 0: ``--help`` or a prefix
    of it, ``--version``, or ``-h`` alone or leading a cluster of short flags
    (``-hostname-override=x`` is ``-h`` followed by more)."""
    return any(a == "--version" or a.startswith(("--he", "-h")) for a in args)


def _explain_cli(c: Checks, args: list[str]) -> None:
    """``explain`` with fuzzed flags (``--verify`` needs root and namespaces: left out):
    exit 0 with an explanation, or 2 with a message; the text prints names as data and
    ``-o json`` is one JSON document with a verdict."""
    if any(a.startswith("--ve") for a in args):
        return
    r = run_cli(c.target, ["explain", *args], stdin=(sandbox() / "state.yaml").read_bytes())
    if r.exited:
        if not ((r.code == 2 and "error:" in r.err) or (r.code == 0 and _asks_for_help(args))):
            c.add("exit-status", f"SystemExit-{r.code}", f"explain: SystemExit({r.code!r})")
        return
    _check_exit(c, r, {0, 2}, "cli.explain")
    _check_stderr_lines(c, r.err, "cli.explain")
    if r.code != 0:
        return
    if r.out.lstrip().startswith("{"):
        doc = json.loads(r.out)
        if doc.get("verdict") not in ("dnat", "reject", "drop", "not-a-service"):
            c.add("explain-verdict", "cli.explain", f"verdict {doc.get('verdict')!r}")
    elif _CONTROL.search(r.out):
        c.add("explain-text", "cli.explain", f"control character in: {r.out[:300]!r}")


TARGETS: dict[str, Target] = {
    "state": target_state,
    "agent": target_agent,
    "kubeconfig": target_kubeconfig,
    "options": target_options,
    "cli": target_cli,
}
