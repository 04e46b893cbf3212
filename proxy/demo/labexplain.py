"""``kube-proxy-py lab explain FROM TO[:PORT]``: ``explain`` on a running lab.

FROM and TO name things the way a person thinks of them: a pod (``ns/pod``, or ``pod`` in
``default``), a Service (``ns/svc`` or a DNS name: ``svc``, ``svc.ns``,
``svc.ns.svc.cluster.local``), a node (``node-1``), ``client`` (the machine outside the
cluster) or an address. The packet is explained from the plan of the node whose rules it
meets first, built from the lab's API objects and the agents' own configuration
(the DaemonSet's ConfigMap), with the live session affinity entries of that node's
kernel; ``--verify`` then sends it from FROM (scapy in a pod's or the client's
namespace, a socket on a node) with tracing on in that node.
"""

from __future__ import annotations

import ipaddress
import json
import re
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy import apivalidation as av
from proxy.explain import kernelcheck, report
from proxy.explain.engine import Explanation, NodeView, explain
from proxy.explain.packet import ENTRY_MEANING, Entry, Packet, PacketError, make_packet
from proxy.host import neighbours
from proxy.host import netns as hostns
from proxy.host.process import run_command
from proxy.lab import topology as labtopology
from proxy.lab.clients import api_get
from proxy.lab.commands.preconditions import require_root, running_state
from proxy.lab.commands.shell import shell_target
from proxy.lab.errors import EXIT_OK, LabError
from proxy.lab.state import LabState
from proxy.model import IPAddress, IPFamily
from proxy.plan import Plan, plan

EXIT_DIFFERS = 4
CLUSTER_DOMAIN = "svc.cluster.local"
CONFIG_MAP = "/api/v1/namespaces/kube-system/configmaps/kube-proxy-py"


@dataclass(frozen=True)
class Place:
    """What FROM or TO names."""

    what: str
    """How it is shown: ``pod default/client``, ``Service demo/web``, ``node node-1`` …"""
    addresses: tuple[IPAddress, ...]
    node: str | None = None
    """The node whose rules a packet from here meets (pods and nodes)."""
    netns: str | None = None
    entry: Entry | None = None
    port: int | None = None
    """A Service's first port, and its protocol below."""
    protocol: str | None = None
    skip: str | None = None
    """A Service kube-proxy-py has no rules for: why (headless, ExternalName)."""


def _ips(values: Any) -> tuple[IPAddress, ...]:
    out = []
    for v in values or ():
        try:
            out.append(ipaddress.ip_address(str(v.get("ip") if isinstance(v, dict) else v)))
        except ValueError:
            continue
    return tuple(out)


class LabView:
    """The lab's objects, read once."""

    def __init__(self, state: LabState) -> None:
        self.state = state
        self.nodes = {n.name for n in state.nodes}
        self.node_objects = self.items("/api/v1/nodes")
        self.node_ips = {
            n["metadata"]["name"]: _ips(
                a["address"]
                for a in (n.get("status") or {}).get("addresses", [])
                if a.get("type") == "InternalIP"
            )
            for n in self.node_objects
        }
        versions = labtopology.versions_of(state.ip_family)
        self.client_ips = _ips(labtopology.addresses(labtopology.CLIENT_IP, versions))
        self.pods = self.items("/api/v1/pods")

    def items(self, path: str) -> list[dict[str, Any]]:
        return list(api_get(self.state, path).get("items") or [])

    def pod_place(self, pod: Mapping[str, Any]) -> Place:
        meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
        name = f"{meta['namespace']}/{meta['name']}"
        node = spec.get("nodeName")
        if spec.get("hostNetwork"):
            return Place(
                f"pod {name} (host network of {node})",
                self.node_ips.get(node, ()),
                node,
                f"{self.state.lab_id}-{node}",
                Entry.NODE,
            )
        ips = _ips(status.get("podIPs")) or _ips(
            [status.get("podIP")] if status.get("podIP") else []
        )
        if not ips:
            raise LabError(f"pod {name} has no IP yet (phase {status.get('phase')})")
        return Place(f"pod {name}", ips, node, shell_target(self.state, name), Entry.POD)

    def resolve(self, text: str, *, source: bool, namespace: str = "default") -> Place:
        if text == labtopology.CLIENT:
            ns = f"{self.state.lab_id}-{labtopology.CLIENT}"
            return Place("the outside client", self.client_ips, None, ns, Entry.EXTERNAL)
        if text in self.nodes:
            return Place(
                f"node {text}",
                self.node_ips.get(text, ()),
                text,
                f"{self.state.lab_id}-{text}",
                Entry.NODE,
            )
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            ip = None
        if ip is not None:
            return self.address(ip)
        if not source and (svc := self.service(text, namespace)) is not None:
            return svc
        pod = self.pod(text)
        if pod is not None:
            return self.pod_place(pod)
        kinds = "a pod, a node, `client` or an address" + ("" if source else ", a Service")
        raise LabError(
            f"{text!r} is not {kinds} of this lab (nodes: {', '.join(sorted(self.nodes))})"
        )

    def address(self, ip: IPAddress) -> Place:
        for node, ips in self.node_ips.items():
            if ip in ips:
                return Place(
                    f"node {node} ({ip})", (ip,), node, f"{self.state.lab_id}-{node}", Entry.NODE
                )
        if ip in self.client_ips:
            return Place(
                f"the outside client ({ip})",
                (ip,),
                None,
                f"{self.state.lab_id}-{labtopology.CLIENT}",
                Entry.EXTERNAL,
            )
        for pod in self.pods:
            status = pod.get("status") or {}
            if ip in _ips(status.get("podIPs")) and not (pod.get("spec") or {}).get("hostNetwork"):
                place = self.pod_place(pod)
                return Place(place.what, (ip,), place.node, place.netns, place.entry)
        return Place(str(ip), (ip,))

    def pod(self, text: str) -> dict[str, Any] | None:
        namespace, _, name = text.rpartition("/")
        namespace = namespace or "default"
        return next(
            (
                p
                for p in self.pods
                if (p["metadata"]["namespace"], p["metadata"]["name"]) == (namespace, name)
            ),
            None,
        )

    def service(self, text: str, namespace: str) -> Place | None:
        """``ns/svc``, or a DNS name of a Service (searched from ``namespace``)."""
        if "/" in text:
            ns, _, name = text.partition("/")
        else:
            parts = text.removesuffix("." + CLUSTER_DOMAIN).removesuffix(".svc").split(".")
            if len(parts) > 2:
                return None
            name, ns = parts[0], (parts[1] if len(parts) == 2 else namespace)
        if av.dns1123_label(ns) is not None or av.dns1123_label(name) is not None:
            return None  # not a Service's name: never part of an API path
        try:
            svc = api_get(self.state, f"/api/v1/namespaces/{ns}/services/{name}")
        except LabError:
            return None
        spec = svc.get("spec") or {}
        ports = spec.get("ports") or [{}]
        port, proto = ports[0].get("port"), str(ports[0].get("protocol", "TCP")).lower()
        what = f"Service {ns}/{name}"
        if spec.get("type") == "ExternalName":
            return Place(
                what,
                (),
                skip=f"an ExternalName Service: DNS answers "
                f"{name}.{ns} with a CNAME to {spec.get('externalName')}; no proxy "
                "is involved",
            )
        if spec.get("clusterIP") == "None":
            return Place(
                what,
                (),
                skip="a headless Service: DNS answers with the pods' "
                "IPs and clients connect to them directly; explain a pod's IP",
            )
        return Place(
            what, _ips(spec.get("clusterIPs") or [spec.get("clusterIP")]), port=port, protocol=proto
        )

    def objects(self) -> list[dict[str, Any]]:
        """Services, EndpointSlices and Nodes as a state file would hold them."""
        out: list[dict[str, Any]] = []
        for path, kind, api in (
            ("/api/v1/services", "Service", "v1"),
            ("/apis/discovery.k8s.io/v1/endpointslices", "EndpointSlice", "discovery.k8s.io/v1"),
        ):
            out += [{**item, "kind": kind, "apiVersion": api} for item in self.items(path)]
        return out + [{**n, "kind": "Node", "apiVersion": "v1"} for n in self.node_objects]


def _config(state: LabState, node: str, host_addresses: tuple[IPAddress, ...]) -> Any:
    """The agents' configuration (their ConfigMap's ``config.conf``) for ``node``."""
    from dataclasses import replace

    from proxy.agent.options.configfile import read_config_file

    text = (api_get(state, CONFIG_MAP).get("data") or {}).get("config.conf", "")
    with tempfile.NamedTemporaryFile("w", suffix=".conf") as f:
        f.write(text)
        f.flush()
        opts = read_config_file(f.name, [])
    return replace(opts, node_name=node).proxy_config(host_addresses)


def entering_node(view: LabView, src: Place, dst: IPAddress, via: str | None) -> str:
    """The node whose rules the packet meets first."""
    if via is not None:
        if via not in view.nodes:
            raise LabError(
                f"--via {via!r}: not a node of this lab ({', '.join(sorted(view.nodes))})"
            )
        return via
    if src.node is not None:
        return src.node
    for node, ips in view.node_ips.items():
        if dst in ips:
            return str(node)
    ns = src.netns or f"{view.state.lab_id}-{labtopology.CLIENT}"
    gateway = neighbours.route_gateway(ns, str(dst))
    for node, ips in view.node_ips.items():
        if gateway and ipaddress.ip_address(gateway) in ips:
            return str(node)
    mac = neighbours.neighbour_mac(ns, str(dst))
    for node in view.nodes:
        if mac and mac in neighbours.link_macs(f"{view.state.lab_id}-{node}").values():
            return str(node)
    raise LabError(
        f"cannot tell which node {src.what} reaches {dst} through (no route via a node, no "
        "neighbour entry yet): send it once (e.g. curl), or name the node with --via NODE"
    )


def _output(ns: str, argv: list[str]) -> str:
    """What a command in ``ns`` printed (nothing when it failed: no entry)."""
    return run_command(hostns.exec_argv(ns, argv), check=False, timeout=10).stdout


def live_affinity(ns: str, mode: str, why: Explanation, timeout: int) -> dict[str, int]:
    """The packet source's session affinity entries on the node: endpoint → seconds left."""
    sp = why.port_plan
    if sp is None or sp.affinity_seconds is None:
        return {}
    src = str(why.packet.src)
    out: dict[str, int] = {}
    for ep in sp.reachable_endpoints:
        if mode == "nftables":
            from proxy.nftables import names

            fam = "ip" if sp.family is IPFamily.V4 else "ip6"
            listing = _output(
                ns,
                ["nft", "-j", "list", "set", fam, "kube-proxy", names.affinity_set(sp, ep.address)],
            )
            left = _nft_entry(listing, src)
        else:
            from proxy.iptables import names as ipt_names

            recent = f"/proc/net/xt_recent/{ipt_names.sep_chain(sp, ep.address)}"
            table = _output(ns, ["cat", recent])
            left = _recent_entry(table, src, ns, timeout)
        if left is not None and left > 0:
            out[ep.address] = left
    return out


def _nft_entry(listing: str, src: str) -> int | None:
    try:
        items = json.loads(listing or "{}").get("nftables", [])
    except ValueError:
        return None
    for item in items:
        for elem in (item.get("set") or {}).get("elem", []) if isinstance(item, dict) else []:
            body = elem.get("elem", {}) if isinstance(elem, dict) else {}
            value = body.get("val", elem) if isinstance(body, dict) else elem
            if str(value) == src:
                return int(body.get("expires", 0)) if isinstance(body, dict) else 0
    return None


def _recent_entry(table: str, src: str, ns: str, timeout: int) -> int | None:
    """``/proc/net/xt_recent/NAME``: the entry's last_seen (jiffies) against now."""
    m = re.search(rf"src={re.escape(src)} .*?last_seen: (\d+)", table)
    if m is None:
        return None
    timer = Path("/proc/timer_list").read_text(errors="replace")
    now = re.search(r"^jiffies: (\d+)", timer, re.M)
    hz = _kernel_hz()
    if now is None or hz is None:
        return timeout
    return timeout - (int(now[1]) - int(m[1])) // hz


def _kernel_hz() -> int | None:
    import os

    config = Path(f"/boot/config-{os.uname().release}")
    if config.exists():
        m = re.search(r"^CONFIG_HZ=(\d+)", config.read_text(errors="replace"), re.M)
        if m:
            return int(m[1])
    return None


@dataclass(frozen=True)
class LabExplained:
    """One ``lab explain``: what was asked, the explanation, and the kernel's check."""

    header: str
    why: Explanation | None
    """None: the target has no rules at all (``skipped`` says why)."""
    check: kernelcheck.Check | None = None
    skipped: str = ""

    def text(self) -> str:
        if self.why is None:
            return self.header + self.skipped + "\n"
        out = self.header + report.to_text(self.why)
        return out + (kernelcheck.to_text(self.check) if self.check is not None else "")

    def json(self) -> str:
        doc: dict[str, Any] = report.as_dict(self.why) if self.why is not None else {
            "schema": report.SCHEMA, "verdict": "not-a-service", "reason": self.skipped,
        }  # fmt: skip
        if self.check is not None:
            doc["verify"] = kernelcheck.as_dict(self.check)
        return json.dumps(doc, indent=2) + "\n"

    def short_text(self) -> str:
        """:meth:`text` without the chains' default policies and the traffic counting
        rules in the kernel's listing (the rules that decided stay): for walkthroughs."""
        noise = ("(the chain's policy)", "update @traffic-", "KUBE-SERVICE-TRAFFIC")
        lines = self.text().splitlines()
        return "\n".join(ln for ln in lines if not any(n in ln for n in noise)) + "\n"

    @property
    def agrees(self) -> bool:
        return self.check is None or self.check.agrees

    @property
    def verdict(self) -> str:
        return self.why.verdict.value if self.why is not None else "not-a-service"


def explain_in_lab(
    state: LabState,
    source: str,
    target: str,
    *,
    proto: str | None = None,
    via: str | None = None,
    verify: bool = False,
) -> LabExplained:
    """Explain (and with ``verify``, check in the kernel) a packet from ``source`` to
    ``target`` in the running lab ``state``."""
    view = LabView(state)
    src = view.resolve(source, source=True)
    host, port = _split_port(target)
    ns = src.what.split()[1].split("/")[0] if src.what.startswith("pod ") else "default"
    dst = view.resolve(host, source=False, namespace=ns)
    if dst.skip is not None:
        return LabExplained(f"lab explain: {src.what} -> {dst.what}\n", None, None,
                            f"{dst.what} is {dst.skip}")  # fmt: skip
    if not dst.addresses:
        raise LabError(f"{dst.what} has no address")
    dst_ip = dst.addresses[0]
    src_ip = next((a for a in src.addresses if a.version == dst_ip.version), None)
    if src_ip is None:
        raise LabError(f"{src.what} has no IPv{dst_ip.version} address to reach {dst_ip} from")
    protocol = proto or dst.protocol or "tcp"
    if protocol in ("icmp", "icmpv6"):
        port = None
    elif port is None:
        port = dst.port
    if src.entry is None:
        raise LabError(f"{src.what}: not a pod, node or the client of this lab")
    node = entering_node(view, src, dst_ip, via)
    entry = src.entry if src.node == node or src.entry is Entry.EXTERNAL else Entry.EXTERNAL
    try:
        packet = make_packet(str(src_ip), str(dst_ip), protocol, port, entry)
    except PacketError as exc:
        raise LabError(str(exc)) from exc
    node_ns = f"{state.lab_id}-{node}"
    from proxy.kernel.addresses import local_addresses
    from proxy.kernel.executor import Executor
    from proxy.source.file import build_state

    local = local_addresses(Executor(node_ns))
    config = _config(state, node, local)
    snapshot = build_state(view.objects(), node).snapshot
    the_plan: Plan = plan(snapshot, config, packet.family)
    here = NodeView(frozenset(local))
    # The engine is pure and fast: a first walk finds the service port the packet matches
    # (ClusterIP, NodePort, external IP…, as the kernel would), whose live affinity
    # entries the second walk takes in. Matching by hand here would repeat the engine.
    first = explain(the_plan, packet, node=here, services=snapshot.services)
    affinity = live_affinity(node_ns, state.mode, first, first.affinity_seconds or 0)
    why = explain(the_plan, packet, node=here, services=snapshot.services, affinity=affinity)
    note = (
        " (upstream kube-proxy runs there: this is what kube-proxy-py would do)"
        if node == labtopology.UPSTREAM_NODE
        else ""
    )
    header = (
        f"lab explain: {src.what} -> {dst.what}: the packet meets node {node}'s rules "
        f"{ENTRY_MEANING[entry]}{note}\n"
    )
    check = None
    if verify:
        check = kernelcheck.check_in(node_ns, the_plan.mode, why, _sender(src, packet))
    return LabExplained(header, why, check)


def explain_argv(source: str, target: str, *flags: str) -> list[str]:
    """The ``lab explain --verify`` command line a walkthrough shows, and its options."""
    return ["kube-proxy-py", "lab", "explain", source, target, *flags, "--verify"]


def explain_shown(state: LabState, source: str, target: str, *flags: str) -> LabExplained:
    """``explain_in_lab`` with the options of ``flags`` (``--proto P``, ``--via NODE``)."""
    proto = flags[flags.index("--proto") + 1] if "--proto" in flags else None
    via = flags[flags.index("--via") + 1] if "--via" in flags else None
    return explain_in_lab(state, source, target, proto=proto, via=via, verify=True)


def lab_explain(
    state_dir: Path,
    source: str,
    target: str,
    *,
    proto: str | None = None,
    via: str | None = None,
    verify: bool = False,
    output: str = "text",
) -> int:
    """``lab explain``: print the explanation; exit 4 when ``verify`` finds the kernel
    did something else."""
    require_root("explain")
    state = running_state(state_dir)
    done = explain_in_lab(state, source, target, proto=proto, via=via, verify=verify)
    sys.stdout.write(done.json() if output == "json" else done.text())
    return EXIT_OK if done.agrees else EXIT_DIFFERS


def _sender(src: Place, packet: Packet) -> Any:
    assert src.netns is not None
    netns = src.netns
    if src.entry is Entry.NODE:
        return lambda: kernelcheck.send(netns, packet)
    return lambda: kernelcheck.inject(netns, packet)


def _split_port(text: str) -> tuple[str, int | None]:
    """``host[:port]`` (``[v6]:port``; a bare IPv6 address has no port)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, _port(rest[1:]) if rest.startswith(":") else None
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, _port(port)
    return text, None


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 65535):
        raise LabError(f"{text!r} is not a port number in 1-65535")
    return int(text)
