"""Command line: ``kube-proxy-py render|apply|cleanup|lab …``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy import __version__
from proxy import apivalidation as av
from proxy.config import ConfigError, NodePortAddresses, ProxyConfig, ProxyMode, parse_cidrs
from proxy.kernel.executor import Executor, KernelError
from proxy.model import IPAddress, IPFamily
from proxy.plan import Plan, plan, unserved_family_notes
from proxy.source.file import LoadedState, StateFileError, load_state

log = logging.getLogger("kube-proxy-py")

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_KERNEL = 3

LAB_EXTRA = ("scapy", "cryptography")
"""What the lab, the harness (probes) and the lab benchmarks import beyond the agent's
dependencies: the ``lab`` extra (pyproject.toml)."""
LAB_EXTRA_HINT = "pip install 'kube-proxy-py[lab]'"
LAB_IP_FAMILIES = ("ipv4", "ipv6", "dual")
"""``lab up --ip-family`` (proxy.lab.topology.IP_FAMILIES, not imported by the parser)."""


class UsageError(Exception):
    """Bad command line input; the message says what and how to fix it."""


def _err(msg: str) -> None:
    print(f"kube-proxy-py: {msg}", file=sys.stderr)


def _add_state_flags(p: argparse.ArgumentParser, *, explain: bool = False) -> None:
    """The flags that turn a state file into plans (``explain``: the mode defaults to
    nftables, and the family is the packet's)."""
    p.add_argument(
        "--state",
        required=True,
        metavar="FILE",
        help="Service/EndpointSlice/Node manifests as `kubectl get -o yaml` prints "
        "them (YAML or JSON, multi-document or a List); '-' reads stdin",
    )
    p.add_argument(
        "--mode",
        "--proxy-mode",
        dest="mode",
        required=not explain,
        default=ProxyMode.NFTABLES.value,
        choices=[m.value for m in ProxyMode],
        help="which backend to render for" + (" (default nftables)" if explain else ""),
    )
    p.add_argument(
        "--hostname-override",
        required=True,
        metavar="NODE",
        help="this node's name: local endpoints, its Node object's IPs and zone",
    )
    p.add_argument(
        "--cluster-cidr",
        default="",
        metavar="CIDR[,CIDR]",
        help="pod CIDR(s); cluster IP traffic from outside them is masqueraded",
    )
    p.add_argument(
        "--nodeport-addresses",
        default="",
        metavar="LIST",
        help="'primary' or comma-separated CIDRs of node addresses that accept "
        "NodePorts (default: iptables all local addresses, nftables primary)",
    )
    p.add_argument(
        "--masquerade-all", action="store_true", help="masquerade all traffic sent to cluster IPs"
    )
    p.add_argument(
        "--metrics-service-counters",
        action="store_true",
        help="also count packets and bytes per Service port and verdict in the rules",
    )
    p.add_argument(
        "--service-node-port-range",
        default="30000-32767",
        metavar="LOW-HIGH",
        help="the API server's node port range: a nodePort or healthCheckNodePort outside it "
        "is reported and its Service skipped, as the API server refuses it (default "
        "30000-32767, kube-apiserver's)",
    )
    if explain:
        return
    p.add_argument(
        "--ip-family",
        default="auto",
        choices=[*IP_FAMILY_CHOICES, "auto"],
        help="which IP families' rules: ipv4, ipv6 or dual (default auto: render the "
        "families the Services' ClusterIPs have, IPv4 when none; apply as the agent "
        "does, every family the node can program)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="exit with status 1 if any object is invalid (default: skip it)",
    )


IP_FAMILY_CHOICES: dict[str, tuple[IPFamily, ...]] = {
    "ipv4": (IPFamily.V4,),
    "ipv6": (IPFamily.V6,),
    "dual": (IPFamily.V4, IPFamily.V6),
}


def _add_bench_parsers(sub: Any) -> None:
    """``kube-proxy-py bench …``: benchmarks, never part of the test suite (issue 6)."""
    bench = sub.add_parser("bench", help="benchmarks (root; each figure printed with its command)")
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="BENCH_COMMAND")

    sync = bench_sub.add_parser(
        "sync",
        help="plan/render time and memory, full sync vs raw nft -f / iptables-restore of the "
        "same text, for a synthetic cluster in fresh namespaces",
    )
    sync.add_argument("--services", type=int, default=1000)
    sync.add_argument("--endpoints", type=int, default=10, help="endpoints per service")
    sync.add_argument("--mode", default="both", choices=["iptables", "nftables", "both"])
    sync.add_argument("--repeat", type=int, default=3, help="runs per stage (median reported)")
    _iptables_option(sync)
    sync.add_argument("--json", metavar="PATH", help="also write the results as JSON")

    lat = bench_sub.add_parser(
        "latency",
        help="API write -> rule in the kernel, agent RSS and CPU (also under churn), "
        "kube-proxy-py or upstream, in a lab cluster",
    )
    lat.add_argument("--services", type=int, default=1000)
    lat.add_argument("--endpoints", type=int, default=10, help="endpoints per service")
    lat.add_argument("--changes", type=int, default=100, help="EndpointSlice changes timed")
    lat.add_argument("--mode", default="both", choices=["iptables", "nftables", "both"])
    _iptables_option(lat)
    lat.add_argument(
        "--min-sync-period",
        default="default",
        type=_bench_duration,
        help="the agents' --iptables-min-sync-period (Go duration), or 'default' to leave "
        "it out so each runs with its own default (both 1s)",
    )
    lat.add_argument(
        "--impl",
        default="ours",
        choices=["ours", "upstream", "both"],
        help="kube-proxy-py, upstream kube-proxy (built by `lab build`), or both in turn",
    )
    lat.add_argument(
        "--churn-minutes",
        type=float,
        default=0,
        help="after the timed changes, keep rewriting random EndpointSlices for this long, "
        "sampling the agent's RSS and CPU (0: no churn)",
    )
    lat.add_argument("--churn-rate", type=float, default=2.0, help="churn changes per second")
    lat.add_argument(
        "--sample-every", type=float, default=5.0, help="seconds between RSS/CPU samples"
    )
    _bench_family_option(lat)
    lat.add_argument("--json", metavar="PATH", help="also write the results as JSON")

    dp = bench_sub.add_parser(
        "datapath",
        help="new-connection rate and first-packet (connect) latency through a node, via a "
        "ClusterIP and direct, at several Service counts",
    )
    dp.add_argument(
        "--services", default="10,1000,10000", help="comma-separated Service counts (in all)"
    )
    dp.add_argument("--mode", default="both", choices=["iptables", "nftables", "both"])
    dp.add_argument(
        "--impl",
        default="both",
        choices=["ours", "counters", "upstream", "both", "all"],
        help="kube-proxy-py, kube-proxy-py with --metrics-service-counters (counters), "
        "upstream kube-proxy; both: ours and upstream; all: the three",
    )
    _iptables_option(dp)
    dp.add_argument("--connections", type=int, default=3000, help="connections per round")
    dp.add_argument("--rounds", type=int, default=5, help="rounds per target (median reported)")
    _bench_family_option(dp)
    dp.add_argument("--json", metavar="PATH", help="also write the results as JSON")

    rep = bench_sub.add_parser(
        "report", help="merge bench JSON into benchmarks.json, benchmarks.md and benchmarks.png"
    )
    rep.add_argument("--results", required=True, metavar="DIR", help="directory of *.json")
    rep.add_argument("--out", default="docs", metavar="DIR", help="where to write (docs/)")
    rep.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib)")

    every = bench_sub.add_parser(
        "all",
        help="every benchmark at issue 6's sizes, one at a time, then the report "
        "(about 3 hours on 2 cores; resumable)",
        description="Runs, one after another: bench sync at 1k, 5k, 10k and 30k Services "
        "x 10 endpoints (both modes); bench latency at 1k and 10k (100 changes, both modes, "
        "both agents, each with its default min sync period; at 10k also 10 minutes of "
        "churn); bench datapath at 10, 1k and 10k Services (both modes, both agents). "
        "Estimated wall time on a 2-core machine: about 3 hours (sync ~70 min, latency "
        "~75 min, datapath ~25 min); --dry-run prints the plan with per-step estimates.",
    )
    every.add_argument("--out", required=True, metavar="DIR", help="results directory")
    every.add_argument(
        "--docs", default="docs", metavar="DIR", help="write the report here ('' to skip)"
    )
    every.add_argument("--only", default="", help="comma-separated subset: sync,latency,datapath")
    every.add_argument("--force", action="store_true", help="rerun steps that have results")
    every.add_argument("--dry-run", action="store_true", help="print the plan and exit")


def _bench_family_option(parser: Any) -> None:
    parser.add_argument(
        "--ip-family",
        default="ipv4",
        choices=["ipv4", "ipv6"],
        help="run the lab as an IPv4 or an IPv6-only cluster (Services, endpoints, "
        "addresses of that family)",
    )


def _iptables_option(parser: Any) -> None:
    from proxy.bench import iptvariant

    parser.add_argument(
        "--iptables",
        default=iptvariant.DEFAULT,
        choices=iptvariant.VARIANTS,
        help="the iptables backend both agents use in iptables mode (default "
        f"{iptvariant.DEFAULT}: iptables-nft-restore of 10k Services takes over 14 "
        "minutes on the bench machine)",
    )


def _bench_duration(text: str) -> str:
    if text == "default":
        return text
    from proxy.agent.options.govalues import parse_go_duration

    try:
        parse_go_duration(text, "--min-sync-period")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kube-proxy-py",
        description="A kube-proxy replacement: Service rules for iptables or nftables.",
    )
    parser.add_argument("--version", action="version", version=f"kube-proxy-py {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    render = sub.add_parser("render", help="print the rules a state file produces")
    _add_state_flags(render)
    apply = sub.add_parser(
        "apply", help="program the current network namespace from a state file (one transaction)"
    )
    _add_state_flags(apply)
    from proxy.explain.command import add_explain_parser

    add_explain_parser(sub, _add_state_flags)
    cleanup = sub.add_parser("cleanup", help="remove every rule kube-proxy-py created")
    cleanup.add_argument(
        "--mode",
        "--proxy-mode",
        dest="mode",
        default="all",
        choices=[*[m.value for m in ProxyMode], "all"],
        help="which backend's rules to remove (default: both)",
    )

    tour = sub.add_parser(
        "tour",
        help="a guided, self-checking tour of Service networking in throwaway namespaces (root)",
    )
    tour.add_argument(
        "--mode",
        "--proxy-mode",
        dest="mode",
        default="nftables",
        choices=[m.value for m in ProxyMode],
    )
    tour.add_argument("--no-color", action="store_true", help="plain output even on a terminal")
    tour.add_argument("--step", action="store_true", help="pause between steps")

    from proxy.agent.options.parse import add_run_arguments

    run = sub.add_parser(
        "run",
        help="the node agent: watch the API and program this node (upstream kube-proxy's flags "
        "and config file)",
        usage="kube-proxy-py run [flags]",
        allow_abbrev=False,
    )
    add_run_arguments(run)

    lab = sub.add_parser("lab", help="the lab: a real control plane with namespace nodes")
    lab_sub = lab.add_subparsers(dest="lab_command", metavar="LAB_COMMAND")
    build = lab_sub.add_parser(
        "build",
        help="build (or reuse) the pinned upstream binaries: the control plane and kubelet, "
        "the node components (containerd, runc, CNI plugins, registry), the add-ons "
        "(CoreDNS, MetalLB), then the images; prints their five directories last, one a "
        "line: Kubernetes, node, CNI, add-ons, images",
    )
    build.add_argument("--force", action="store_true", help="rebuild everything even if cached")
    _add_lab_lifecycle_parsers(lab_sub)

    _add_bench_parsers(sub)
    return parser


@dataclass(frozen=True)
class Rendered:
    plan: Plan
    text: str


def _config(args: argparse.Namespace, from_kernel: bool) -> ProxyConfig:
    try:
        npa = NodePortAddresses.parse(args.nodeport_addresses)
        cidrs = parse_cidrs(args.cluster_cidr, "--cluster-cidr")
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc
    host_addrs: tuple[IPAddress, ...] = ()
    if from_kernel and npa.cidrs:
        from proxy.kernel.addresses import local_addresses
        from proxy.kernel.executor import Executor

        host_addrs = local_addresses(Executor())
    return ProxyConfig(
        node_name=args.hostname_override,
        mode=ProxyMode(args.mode),
        cluster_cidrs=cidrs,
        nodeport_addresses=npa,
        masquerade_all=args.masquerade_all,
        host_addresses=host_addrs,
        service_counters=args.metrics_service_counters,
    )


def _port_range(text: str) -> tuple[int, int]:
    """``LOW-HIGH`` (kube-apiserver also takes ``LOW+SIZE``)."""
    low, sep, rest = text.partition("-")
    size = False
    if not sep:
        low, sep, rest = text.partition("+")
        size = bool(sep)
    digits = all(x.isascii() and x.isdigit() and len(x) <= 5 for x in (low, rest))
    if sep and digits:
        lo, hi = int(low), int(rest)
        hi = lo + hi - 1 if size else hi
        if 1 <= lo <= hi <= 65535:
            return lo, hi
    raise UsageError(
        f"--service-node-port-range: {av.show(text)} is not LOW-HIGH within 1-65535 "
        "(e.g. 30000-32767)"
    )


def _load(args: argparse.Namespace) -> LoadedState:
    why = av.dns1123_subdomain(args.hostname_override)
    if why is not None:
        raise UsageError(
            f"--hostname-override: {av.show(args.hostname_override)} is not a valid Node name "
            f"({why}); give the name `kubectl get nodes` shows"
        )
    port_range = _port_range(args.service_node_port_range)
    try:
        state = load_state(args.state, args.hostname_override, port_range)
    except StateFileError as exc:
        raise UsageError(str(exc)) from exc
    for p in state.problems:
        _err(f"skipped {p.ref.kind} {p}")
    for item in state.ignored:
        _err(f"ignored {item}: only Service, EndpointSlice and Node objects are used")
    if state.snapshot.node is None:
        names = ", ".join(n.name for n in state.nodes) or "none"
        _err(
            f"warning: no Node named {args.hostname_override!r} in {args.state} "
            f"(Nodes there: {names}); endpoints are not local to this node, topology hints "
            "are ignored and primary-IP NodePorts have no address"
        )
    return state


def _families_in(state: LoadedState) -> tuple[IPFamily, ...]:
    """The IP families of the state's Services (their ClusterIPs), IPv4 first; IPv4
    when there are none."""
    seen = {IPFamily.of(ip) for svc in state.snapshot.services for ip in svc.cluster_ips}
    return tuple(f for f in (IPFamily.V4, IPFamily.V6) if f in seen) or (IPFamily.V4,)


def _plans_for(
    args: argparse.Namespace,
    state: LoadedState,
    families: tuple[IPFamily, ...],
    from_kernel: bool,
) -> list[Plan]:
    cfg = _config(args, from_kernel)
    return [plan(state.snapshot, cfg, family, state.problems) for family in families]


def _unserved(state: LoadedState, families: tuple[IPFamily, ...], why: str) -> list[str]:
    if len(families) == 2:
        return []
    return [str(s) for s in unserved_family_notes(state.snapshot.services, families, why)]


HEADER_LINE_MAX = 1000


def _header(plans: list[Plan], notes: list[str]) -> str:
    """The ``#`` lines above rendered rules. Whatever they quote from the input is escaped
    (:func:`proxy.apivalidation.printable`): piped into ``nft -f`` or
    ``iptables-restore``, no header line can become a rule."""
    first = plans[0]
    lines = [
        f"kube-proxy-py {__version__} {p.mode} rules for node {p.node_name} ({p.family}): "
        f"{len(p.service_ports)} service ports, {p.endpoint_count} endpoints"
        for p in plans
    ]
    lines += [str(s) for s in first.skipped]  # every family's plan says the same
    lines += notes
    lines += [f"invalid, skipped: {pr}" for pr in first.problems]
    return "".join(f"# {av.printable(line, HEADER_LINE_MAX)}\n" for line in lines)


def _family_banner(p: Plan) -> str:
    """The comment before one family's rules when several are printed: which tool takes
    them (iptables-restore cannot read IPv6 rules, nor ip6tables-restore IPv4 ones)."""
    if p.mode is ProxyMode.NFTABLES:
        table = "ip" if p.family is IPFamily.V4 else "ip6"
        return f"# ---- {p.family}: table {table} kube-proxy (nft -f)\n"
    tool = "iptables-restore" if p.family is IPFamily.V4 else "ip6tables-restore"
    return f"# ---- {p.family}: input for {tool} (pick one family with --ip-family to pipe it)\n"


def cmd_render(args: argparse.Namespace) -> int:
    from proxy.modes import mode_for

    state = _load(args)
    families = IP_FAMILY_CHOICES.get(args.ip_family) or _families_in(state)
    why = f"--ip-family {args.ip_family}" if args.ip_family != "auto" else "auto"
    plans = _plans_for(args, state, families, from_kernel=False)
    mode = mode_for(plans[0].mode)
    out = [_header(plans, _unserved(state, families, why))]
    for p in plans:
        if len(plans) > 1:
            out.append(_family_banner(p))
        out.append(mode.full_sync_text(mode.renderer()(p, None)))
    sys.stdout.write("".join(out))
    return EXIT_INVALID if args.strict and state.problems else EXIT_OK


def _apply_families(
    args: argparse.Namespace, executor: Executor, state: LoadedState
) -> tuple[tuple[IPFamily, ...], str]:
    """The families ``apply`` programs, and why the others are not: as the agent, every
    family the node can program (primary first), unless ``--ip-family`` says."""
    from proxy.agent.families import FamilyError, choose_families, primary_family
    from proxy.modes import supported_families

    support = supported_families(executor, ProxyMode(args.mode))
    wanted = IP_FAMILY_CHOICES.get(args.ip_family)
    if wanted is None:
        try:
            return choose_families(primary_family(state.snapshot.node), support)
        except FamilyError as exc:
            raise UsageError(str(exc)) from exc
    missing = [f"{f}: {support[f]}" for f in wanted if support[f]]
    if missing:
        raise UsageError(
            f"--ip-family {args.ip_family}: this node cannot program "
            + "; ".join(missing)
            + " (choose another --ip-family)"
        )
    return wanted, f"--ip-family {args.ip_family}"


def cmd_apply(args: argparse.Namespace) -> int:
    from proxy.modes import mode_for, other_modes, remove_rules

    state = _load(args)
    executor = Executor()
    families, why = _apply_families(args, executor, state)
    plans = _plans_for(args, state, families, from_kernel=True)
    mode = mode_for(plans[0].mode)
    done = []
    for p in plans:
        writer = mode.writer(executor, p.family)
        writer.full_sync(mode.renderer()(p, None))
        done.append(
            f"{p.family}: {len(p.service_ports)} service ports, {p.endpoint_count} endpoints "
            f"with {writer.description}"
        )
    # as the agent does when it starts: the other mode's rules would still DNAT
    for what in remove_rules(executor, other_modes(plans[0].mode), families):
        _err(f"removed the {what} rules of the other mode")
    for s in plans[0].skipped:
        log.info("service skipped", extra={"object": str(s.ref), "reason": s.reason})
    for note in _unserved(state, families, why):
        _err(f"not programmed: {note}")
    print(
        "applied " + "; ".join(done)
        + (f"; skipped {len(state.problems)} invalid objects" if state.problems else ""),
        file=sys.stderr,
    )  # fmt: skip
    return EXIT_INVALID if args.strict and state.problems else EXIT_OK


def cmd_explain(args: argparse.Namespace) -> int:
    from proxy.explain import command
    from proxy.explain.packet import PacketError

    state = _load(args)
    try:
        return command.run(args, state, _config(args, from_kernel=False))
    except PacketError as exc:
        raise UsageError(str(exc)) from exc


def cmd_cleanup(args: argparse.Namespace) -> int:
    from proxy.kernel.executor import Executor
    from proxy.modes import remove_rules

    modes = list(ProxyMode) if args.mode == "all" else [ProxyMode(args.mode)]
    removed = remove_rules(Executor(), modes)
    print("removed rules: " + (", ".join(removed) if removed else "none found"), file=sys.stderr)
    return EXIT_OK


class _PassthroughParser(argparse.ArgumentParser):
    """``lab kubectl``: its own ``--state-dir`` (and ``-h`` as the very first argument)
    up front; everything else goes to kubectl unparsed, options included."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        rest = list(sys.argv[1:] if args is None else args)
        own: list[str] = []
        while rest and (rest[0] == "--state-dir" or rest[0].startswith("--state-dir=")):
            own.append(rest.pop(0))
            if own[-1] == "--state-dir" and rest:
                own.append(rest.pop(0))
        if rest[:1] in (["-h"], ["--help"]):
            own.append(rest.pop(0))
        if rest[:1] == ["--"]:
            rest.pop(0)
        parsed, extras = super().parse_known_args(own, namespace)
        parsed.args = rest
        return parsed, extras


def _add_lab_lifecycle_parsers(lab_sub: argparse._SubParsersAction[Any]) -> None:
    state_help = (
        "the lab's state directory (default $KUBE_PROXY_PY_LAB_DIR or ~/.cache/kube-proxy-py/lab)"
    )
    up = lab_sub.add_parser(
        "up",
        help="start a lab (control plane, nodes with a real kubelet and containerd, an image "
        "registry, kube-proxy-py as daemonset.yaml's pods, an outside client) that keeps "
        "running; root",
    )
    up.add_argument("--nodes", type=int, default=None, metavar="N", help="nodes (default 2, 1-6)")
    up.add_argument(
        "--mode",
        "--proxy-mode",
        dest="mode",
        default=None,
        choices=[m.value for m in ProxyMode],
        help="kube-proxy-py's mode (default nftables)",
    )
    up.add_argument(
        "--compare",
        action="store_true",
        default=None,
        help="also run upstream kube-proxy on an extra node, node-upstream",
    )
    up.add_argument(
        "--ip-family",
        default=None,
        choices=LAB_IP_FAMILIES,
        help="the cluster's IP families: ipv4 (default), ipv6 (IPv6-only) or dual "
        "(dual-stack, IPv4 primary): nodes, pods, Services, the outside client, cluster "
        "DNS and LoadBalancer addresses of each",
    )
    up.add_argument(
        "--no-addons",
        dest="addons",
        action="store_const",
        const=False,
        default=None,
        help="a bare cluster: no CoreDNS (cluster DNS) and no MetalLB (LoadBalancer "
        "addresses); starts about 17 s sooner",
    )
    down = lab_sub.add_parser("down", help="stop the lab and remove everything it created")
    status = lab_sub.add_parser("status", help="the lab's nodes, their proxies' health and pods")
    kubectl = lab_sub.add_parser(
        "kubectl",
        help="kubectl with the lab's admin kubeconfig (runs inside the lab)",
        usage="kube-proxy-py lab kubectl [--state-dir DIR] [--] KUBECTL_ARGS...",
    )
    kubectl.__class__ = _PassthroughParser
    kubectl.add_argument("args", nargs="*", help="kubectl's arguments, passed as they are")
    shell = lab_sub.add_parser(
        "shell",
        help="a shell (or a command) in a node's, pod's, `client`'s or `control-plane`'s "
        "network namespace",
        usage="kube-proxy-py lab shell [--state-dir DIR] NODE_OR_POD [-- COMMAND...]",
    )
    shell.add_argument("target", metavar="NODE_OR_POD", help="node-1, client, ns/pod, ...")
    shell.add_argument(
        "shell_command",
        metavar="COMMAND",
        nargs=argparse.REMAINDER,
        help="command (default: $SHELL)",
    )
    load = lab_sub.add_parser(
        "load-image",
        help="push the images of a `docker save` or OCI archive into the lab registry "
        "(like `kind load image-archive`)",
        usage="kube-proxy-py lab load-image [--state-dir DIR] FILE.tar",
    )
    load.add_argument("archive", metavar="FILE.tar", help="a docker save or OCI image archive")
    demo = lab_sub.add_parser(
        "demo",
        help="a guided, self-checking tour of Service networking on the lab "
        "(starts a lab if none runs)",
    )
    demo.add_argument("--no-color", action="store_true", help="plain output even on a terminal")
    demo.add_argument("--step", action="store_true", help="pause between steps")
    demo.add_argument(
        "--ip-family",
        default=None,
        choices=LAB_IP_FAMILIES,
        help="the IP families of the lab it starts when none runs (as `lab up --ip-family`; "
        "a running lab of other families is refused); the tour uses the primary family",
    )
    explain = lab_sub.add_parser(
        "explain",
        help="what a packet from FROM to TO meets in the lab: the rules' verdict and why (root)",
        description="Explain what the rules of the node a packet meets first do with it: "
        "FROM and TO are pods (ns/pod), Services (ns/svc or a DNS name, TO only), nodes, "
        "`client` or addresses; TO may carry :PORT (default: the Service's first port).",
    )
    explain.add_argument("source", metavar="FROM", help="ns/pod, node-1, client or an address")
    explain.add_argument("target", metavar="TO[:PORT]", help="ns/svc, a DNS name, ns/pod, "
                         "node-1, client or an address, with an optional :PORT")  # fmt: skip
    explain.add_argument("--proto", default=None, choices=["tcp", "udp", "sctp", "icmp"],
                         help="default: the Service port's protocol, else tcp")  # fmt: skip
    explain.add_argument("--via", default=None, metavar="NODE",
                         help="the node the packet enters (default: from FROM and TO)")  # fmt: skip
    explain.add_argument("--verify", action="store_true",
                         help="send the packet from FROM with tracing on in that node and "
                         "compare what the kernel did (exit 4 when it differs)")  # fmt: skip
    explain.add_argument("--output", "-o", default="text", choices=["text", "json"])
    seeds = lab_sub.add_parser(
        "seeds",
        help="replay the learners' notes (seeds/) on the lab, command by command, checking "
        "each claim (starts a lab if none runs)",
        usage="kube-proxy-py lab seeds [N ...] [--state-dir DIR] [--no-color] [--parallel] "
        "[--manifests DIR]",
    )
    seeds.add_argument(
        "numbers", nargs="*", type=int, metavar="N", help="the notes to replay, 0-4 (default all)"
    )
    seeds.add_argument("--no-color", action="store_true", help="plain output even on a terminal")
    seeds.add_argument(
        "--parallel",
        action="store_true",
        help="run the walkthroughs at once (each has its own namespace), print them in order",
    )
    seeds.add_argument(
        "--manifests",
        metavar="DIR",
        default=None,
        help="only write the notes' manifests into DIR/seed-N/ (to follow a note by hand)",
    )
    for p in (up, down, status, kubectl, shell, load, demo, seeds, explain):
        p.add_argument("--state-dir", default=None, metavar="DIR", help=state_help)


def cmd_lab(args: argparse.Namespace) -> int:
    if args.lab_command == "build":
        from proxy.lab import addonbuild, nodebuild
        from proxy.lab.build import BuildError, build
        from proxy.lab.imagecache import images_dir
        from proxy.lab.imagepush import ensure_cached_registry
        from proxy.lab.oci import OciError
        from proxy.lab.regclient import RegistryError
        from proxy.lab.rootfs import ImageBuildError

        try:
            directory = build(force=args.force)
            node = nodebuild.build(force=args.force)
            extra = addonbuild.build(force=args.force)
            ensure_cached_registry(force=args.force)
        except (BuildError, ImageBuildError, OciError, RegistryError) as exc:
            _err(str(exc))
            return EXIT_USAGE
        print(directory)
        print(node.bin_dir)
        print(node.cni_dir)
        print(extra.bin_dir)
        print(images_dir())
        return EXIT_OK
    if args.lab_command == "seeds":
        from proxy.demo.seeds.notes import SeedsError
        from proxy.demo.seeds.parse import seed_numbers
        from proxy.demo.seeds.run import main as seeds_main
        from proxy.demo.seeds.run import write_manifests
        from proxy.lab.errors import LabError
        from proxy.lab.state import resolve_state_dir

        try:
            if args.manifests:
                for path in write_manifests(Path(args.manifests), seed_numbers(args.numbers)):
                    print(path)
                return EXIT_OK
            return seeds_main(
                resolve_state_dir(args.state_dir),
                seed_numbers(args.numbers),
                color=False if args.no_color else None,
                parallel=args.parallel,
            )
        except (SeedsError, LabError) as exc:
            _err(f"lab seeds: {exc}")
            return EXIT_INVALID
    lifecycle = ("up", "down", "status", "kubectl", "shell", "load-image", "demo", "explain")
    if args.lab_command in lifecycle:
        from proxy.lab.commands import down, kubectl, loadimage, shell, status, up
        from proxy.lab.errors import LabError
        from proxy.lab.state import resolve_state_dir

        state_dir = resolve_state_dir(args.state_dir)
        try:
            if args.lab_command == "explain":
                from proxy.demo.labexplain import lab_explain

                return lab_explain(
                    state_dir,
                    args.source,
                    args.target,
                    proto=args.proto,
                    via=args.via,
                    verify=args.verify,
                    output=args.output,
                )
            if args.lab_command == "demo":
                from proxy.demo.labdemo import DemoError
                from proxy.demo.labdemo import main as demo_main

                try:
                    return demo_main(
                        state_dir,
                        color=False if args.no_color else None,
                        pause=args.step,
                        ip_family=args.ip_family,
                    )
                except DemoError as exc:
                    _err(f"lab demo: {exc}")
                    return EXIT_INVALID
            if args.lab_command == "up":
                return up.up(
                    state_dir,
                    nodes=args.nodes,
                    mode=args.mode,
                    compare=args.compare,
                    with_addons=args.addons,
                    ip_family=args.ip_family,
                )
            if args.lab_command == "down":
                return down.down(state_dir)
            if args.lab_command == "status":
                return status.status(state_dir)
            if args.lab_command == "kubectl":
                return kubectl.kubectl(state_dir, args.args)
            if args.lab_command == "load-image":
                return loadimage.load_image(state_dir, Path(args.archive))
            return shell.shell(state_dir, args.target, args.shell_command)
        except LabError as exc:
            _err(f"lab {args.lab_command}: {exc}")
            return EXIT_INVALID
    _err("lab: give a command: build, up, down, status, kubectl, shell, load-image, demo or seeds")
    return EXIT_USAGE


def cmd_tour(args: argparse.Namespace) -> int:
    import os

    if os.geteuid() != 0:
        _err("tour: run as root (it builds network namespaces and programs their rules)")
        return EXIT_USAGE
    from proxy.demo.tour import main as tour_main

    return tour_main(args.mode, False if args.no_color else None, args.step)


def cmd_bench(args: argparse.Namespace) -> int:
    command = args.bench_command
    if command == "sync":
        from proxy.bench.sync import main_sync

        return main_sync(args)
    if command == "latency":
        from proxy.bench.latency import main_latency

        return main_latency(args)
    if command == "datapath":
        from proxy.bench.datapath import main_datapath

        return main_datapath(args)
    if command == "report":
        from proxy.bench.report import main_report

        return main_report(args)
    if command == "all":
        from proxy.bench.all import main_all

        return main_all(args)
    _err("bench: give a command: sync, latency, datapath, report or all")
    return EXIT_USAGE


def _run_agent(argv: list[str]) -> int:
    """``run`` parses its own flags: upstream kube-proxy's, with its precedence rules."""
    import os
    import signal

    # As a container's PID 1 the process ignores SIGTERM until it has a handler: until the
    # agent installs its own (an orderly stop), a SIGTERM ends it at once (nothing to keep).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: os._exit(0))
    from proxy.agent.options.parse import parse_run_args

    try:
        opts = parse_run_args(argv)
    except ConfigError as exc:
        _err(f"run: {exc}")
        return EXIT_USAGE
    from proxy.agent.main import run as run_agent

    return run_agent(opts)


def _needs_lab_extra(args: argparse.Namespace) -> bool:
    """lab and tour, and the benchmarks that run a lab cluster or probes."""
    if args.command in ("lab", "tour"):
        return True
    return args.command == "bench" and args.bench_command in ("latency", "datapath", "all")


def _missing_lab_extra() -> list[str]:
    import importlib.util

    return [name for name in LAB_EXTRA if importlib.util.find_spec(name) is None]


def main(argv: Sequence[str] | None = None) -> int:
    from proxy import logs

    logs.setup()
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["run"]:
        return _run_agent(args_list[1:])
    parser = build_parser()
    args = parser.parse_args(args_list)
    from proxy.agent.options.parse import option_without_value

    if (option := option_without_value(parser, args)) is not None:
        _err(f"{option}: no value given ('--' is not one); e.g. {option}=VALUE")
        return EXIT_USAGE
    handlers = {
        "explain": cmd_explain,
        "render": cmd_render,
        "apply": cmd_apply,
        "cleanup": cmd_cleanup,
        "lab": cmd_lab,
        "bench": cmd_bench,
        "tour": cmd_tour,
    }
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    missing = _missing_lab_extra() if _needs_lab_extra(args) else []
    if missing:
        _err(
            f"{args.command} needs {' and '.join(missing)}, which the agent does not: "
            f"install the lab extra ({LAB_EXTRA_HINT})"
        )
        return EXIT_USAGE
    try:
        return handlers[args.command](args)
    except UsageError as exc:
        _err(str(exc))
        return EXIT_USAGE
    except KernelError as exc:
        line = exc.failing_line()
        _err(
            f"the kernel refused the transaction, {exc.outcome()}: {exc}"
            + (f"\n  offending line: {av.printable(line, 500)}" if line else "")
        )
        return EXIT_KERNEL
    except FileNotFoundError as exc:
        _err(f"{exc.filename}: not found; install it (iptables, nftables, iproute2 packages)")
        return EXIT_KERNEL
    except PermissionError as exc:
        _err(f"permission denied ({exc}); run as root or with CAP_NET_ADMIN")
        return EXIT_KERNEL
