"""``lab status``: the lab, its nodes and proxies' health, the add-ons, what differs
from daemonset.yaml."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TextIO

from proxy.apiclient.client import ApiError
from proxy.lab import addonbuild, coredns
from proxy.lab.clients import api_get, node_health
from proxy.lab.commands.preconditions import no_lab, require_root
from proxy.lab.errors import EXIT_FAIL, EXIT_OK, LabError
from proxy.lab.state import SUPERVISOR_LOG, LabState, command_hint, load_state
from proxy.lab.topology import RESOLVER_IP, addresses, family_name, versions_of


def _fmt_age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def print_status(state: LabState, out: TextIO = sys.stdout) -> bool:
    """Print the lab's status; True when every node's proxy is healthy."""
    alive = state.supervisor_alive()
    age = _fmt_age(time.time() - (state.ready_at or state.created))
    running = (
        "running" if alive and state.phase == "ready" else ("starting" if alive else "NOT running")
    )
    sup_pid = state.supervisor.pid if state.supervisor else "?"
    print(
        f"lab {state.lab_id}: {running} for {age} (supervisor pid {sup_pid}), "
        f"state in {state.state_dir}",
        file=out,
    )
    cp = state.control_plane
    if cp.get("server"):
        print(
            f"API server: {cp['server']} (inside the lab only; "
            f"`{command_hint(state.path, 'kubectl')} ...` uses it)",
            file=out,
        )
    apiserver_restarts = state.restarts.get("kube-apiserver", 0)
    if apiserver_restarts:
        print(
            f"kube-apiserver exited and was started again {apiserver_restarts} time(s) "
            f"(log: {Path(state.state_dir) / SUPERVISOR_LOG})",
            file=out,
        )
    versions = versions_of(state.ip_family)
    print(f"mode: {state.mode}; IP family: {state.ip_family} ({family_name(versions)})", file=out)
    pods_per_node: dict[str, int] = {}
    pods_note = ""
    if alive and cp.get("server"):
        try:
            items = api_get(state, "/api/v1/pods")["items"]
            for pod in items:
                node = (pod.get("spec") or {}).get("nodeName") or "(unscheduled)"
                pods_per_node[node] = pods_per_node.get(node, 0) + 1
        except (OSError, LabError, ValueError, ApiError) as exc:
            pods_note = f" (pod count unavailable: {exc})"
    healthy = True
    rows = [("NODE", "LAN IP", "POD CIDR", "ZONE", "PROXY", "HEALTH", "KUBELET", "PODS")]
    for node in state.nodes:
        health = "-"
        if alive:
            status, _ = node_health(node.namespace)
            if status == 200:
                health = "healthy"
            else:
                health = f"unhealthy ({status})" if status else "not answering"
                healthy = False
        proxy = node.proxy + " (DaemonSet pod)"
        agent = "-"
        rec = state.processes.get(f"node/{node.name}")
        if rec is not None:
            agent = "running" if rec.is_ours() else "DEAD"
            restarts = state.restarts.get(f"node/{node.name}", 0)
            if restarts:
                agent += f" ({restarts} restarts)"
        rows.append(
            (
                node.name,
                ",".join(node.lan_ips),
                ",".join(node.pod_cidrs),
                node.zone,
                proxy,
                health,
                agent,
                str(pods_per_node.get(node.name, 0)),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(),
            file=out,
        )
    unscheduled = pods_per_node.get("(unscheduled)", 0)
    if unscheduled or pods_note:
        print(f"  unscheduled pods: {unscheduled}{pods_note}", file=out)
    if state.registry:
        print(
            f"image registry: {state.registry['address']} (mirrors docker.io, registry.k8s.io, "
            "quay.io, ghcr.io for every node)",
            file=out,
        )
    if not state.addons:
        print("add-ons: none (--no-addons: no cluster DNS, no LoadBalancer addresses)", file=out)
    elif alive and cp.get("server"):
        for line in _addon_lines(state, versions):
            print(line, file=out)
    if state.client:
        routes = ", ".join(f"{p} via {v}" for p, v in state.client.get("routes", {}).items())
        client_ips = state.client.get("lan_ips") or [state.client["lan_ip"]]
        print(
            f"outside client: `{state.client['name']}` {', '.join(client_ips)} (routes {routes})",
            file=out,
        )
    changes = [
        f"config.conf {k}: {v[1]} (daemonset.yaml: {v[0]})"
        for k, v in state.config_overrides.items()
    ]
    changes += [f"env {k}={v[1]} (daemonset.yaml: {v[0]})" for k, v in state.env_overrides.items()]
    if changes:
        print(
            "kube-proxy-py is daemonset.yaml applied as written, except: " + "; ".join(changes),
            file=out,
        )
    for note in state.notes:
        print(f"note: {note}", file=out)
    if state.phase == "failed":
        print(f"error: {state.error}", file=out)
    return alive and healthy and state.phase == "ready"


def _addon_lines(state: LabState, versions: tuple[int, ...]) -> list[str]:
    """What the add-ons serve, read from the API (a line saying why if it cannot)."""
    from proxy.lab import addons, metallb

    try:
        dep = api_get(state, "/apis/apps/v1/namespaces/kube-system/deployments/coredns")
        services = api_get(state, "/api/v1/services")["items"]
    except (OSError, LabError, ValueError, KeyError, ApiError) as e:
        return [f"add-ons: status unavailable ({e})"]
    ready = int((dep.get("status") or {}).get("readyReplicas") or 0)
    wanted = int((dep.get("spec") or {}).get("replicas") or 0)
    in_use = sum(
        1
        for svc in services
        if (svc.get("status") or {}).get("loadBalancer", {}).get("ingress")
        and not (svc.get("spec") or {}).get("loadBalancerClass")
    )
    return [
        f"cluster DNS: kube-dns {', '.join(addons.dns_service_ips(versions))} (CoreDNS "
        f"{addonbuild.COREDNS_VERSION}, {ready}/{wanted} ready); outside resolver "
        f"{', '.join(addresses(RESOLVER_IP, versions))} knows "
        + ", ".join(sorted(coredns.OUTSIDE_NAMES)),
        f"load balancers: MetalLB {addonbuild.METALLB_VERSION} (L2), pool "
        f"{', '.join(metallb.pool_ranges(versions))} on the LAN, {in_use} address(es) in use",
    ]


def status(state_dir: Path, *, out: TextIO = sys.stdout) -> int:
    require_root("status")
    state = load_state(state_dir)
    if state is None:
        raise no_lab(state_dir)
    ok = print_status(state, out)
    if not state.supervisor_alive():
        print(f"\n`{command_hint(state_dir, 'down')}` cleans up what it left", file=out)
    return EXIT_OK if ok else EXIT_FAIL
