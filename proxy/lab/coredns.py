"""Cluster DNS for the lab, as kubeadm installs it, and the resolver it forwards to.

:func:`cluster_dns_objects` are the objects ``kubeadm init`` creates in its ``addon/coredns``
phase (kubeadm v1.37.2, ``cmd/kubeadm/app/phases/addons/dns``): the ServiceAccount
``coredns``, the ClusterRole and ClusterRoleBinding ``system:coredns``, the ConfigMap
``coredns`` with kubeadm's Corefile, the Deployment ``coredns`` (2 replicas) and the
Service ``kube-dns`` at ``10.96.0.10`` (53/UDP, 53/TCP, 9153/TCP; ``fd00:10:96::10`` in an
IPv6 lab, both in a dual-stack one). The pods run with
``dnsPolicy: Default``, so CoreDNS's ``forward . /etc/resolv.conf`` goes to the node's
resolver: every lab node's ``resolv.conf`` names :data:`RESOLVER_IP`.

That resolver is the lab's stand-in for the DNS of the network outside the cluster
(there is no internet here): the same CoreDNS binary, run by the lab supervisor in its
own namespace on the lab LAN, authoritative for the zones of :data:`OUTSIDE_NAMES` and
answering NXDOMAIN for everything else.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

from proxy.host.spec import v6_twin

DNS_DOMAIN = "cluster.local"
DNS_SERVICE_IP = "10.96.0.10"
"""kubeadm's default: the 10th address of the Service CIDR."""
REPLICAS = 2
RESOLVER = "resolver"
RESOLVER_IP = "192.168.50.4"
OUTSIDE_NAMES: Mapping[str, str] = {
    "db.example.com": RESOLVER_IP,
    "raw.githubusercontent.com": RESOLVER_IP,
}
"""The names the lab's outside resolver knows (the learners' notes' ExternalName targets).
They point at the resolver's own host: the lab has no other machine outside the cluster
that serves them."""

COREFILE = f"""\
.:53 {{
    errors
    health {{
       lameduck 5s
    }}
    ready
    kubernetes {DNS_DOMAIN} in-addr.arpa ip6.arpa {{
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }}
    prometheus :9153
    forward . /etc/resolv.conf {{
       max_concurrent 1000
    }}
    cache 30 {{
       disable success {DNS_DOMAIN}
       disable denial {DNS_DOMAIN}
    }}
    loop
    reload
    loadbalance
}}
"""
"""kubeadm's Corefile for ``dnsDomain: cluster.local``."""


def _zone_of(name: str) -> str:
    return ".".join(name.split(".")[-2:])


def _records(name: str, ipv4: str, versions: Sequence[int], ttl: int = 60) -> list[str]:
    """``name``'s A and/or AAAA records (the AAAA record: the address's IPv6 twin)."""
    return [
        f"{name}. {ttl} IN A {ipv4}" if v == 4 else f"{name}. {ttl} IN AAAA {v6_twin(ipv4)}"
        for v in versions
    ]


def resolver_zones(versions: Sequence[int] = (4,)) -> dict[str, str]:
    """Zone name -> zone file text for every zone :data:`OUTSIDE_NAMES` lives in, with A
    records in an IPv4 lab, AAAA records in an IPv6 one, both in a dual-stack one."""
    zones: dict[str, list[str]] = {}
    for name, ip in sorted(OUTSIDE_NAMES.items()):
        zone = _zone_of(name)
        zones.setdefault(zone, []).extend(_records(name, ip, versions))
    return {
        zone: "\n".join(
            [
                f"$ORIGIN {zone}.",
                f"@ 3600 IN SOA ns.{zone}. hostmaster.{zone}. 1 7200 3600 1209600 60",
                f"@ 3600 IN NS ns.{zone}.",
                *_records(f"ns.{zone}", RESOLVER_IP, versions, ttl=3600),
                *records,
            ]
        )
        + "\n"
        for zone, records in zones.items()
    }


def resolver_corefile(zone_dir: str) -> str:
    """The outside resolver's Corefile: authoritative for each zone of
    :func:`resolver_zones` (file ``<zone_dir>/<zone>.zone``), NXDOMAIN for every other
    name: it is the whole "internet" the lab has."""
    blocks = [
        f"{zone}:53 {{\n    errors\n    log\n    file {zone_dir}/{zone}.zone\n}}\n"
        for zone in sorted(resolver_zones((4,)))
    ]
    blocks.append(
        ".:53 {\n    errors\n    log\n    template ANY ANY {\n        rcode NXDOMAIN\n    }\n}\n"
    )
    return "\n".join(blocks)


def node_resolv_conf() -> str:
    """An IPv4 lab node's ``/etc/resolv.conf`` (kubelet's ``resolvConf``)."""
    return f"# the lab's outside resolver ({RESOLVER})\nnameserver {RESOLVER_IP}\n"


def _meta(name: str, namespace: str | None = "kube-system", **labels: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    if labels:
        meta["labels"] = dict(labels)
    return meta


def dns_service_spec(cluster_ips: Sequence[str]) -> dict[str, Any]:
    """The addressing part of the ``kube-dns`` Service: one ClusterIP per family of the
    lab (primary first); both families are ``PreferDualStack``, as kubeadm makes it on a
    dual-stack cluster."""
    if len(cluster_ips) == 1:
        return {"clusterIP": cluster_ips[0]}
    return {
        "clusterIP": cluster_ips[0],
        "clusterIPs": list(cluster_ips),
        "ipFamilyPolicy": "PreferDualStack",
        "ipFamilies": [f"IPv{ipaddress.ip_address(ip).version}" for ip in cluster_ips],
    }


def cluster_dns_objects(
    image: str, cluster_ips: Sequence[str] = (DNS_SERVICE_IP,)
) -> list[dict[str, Any]]:
    """What kubeadm's CoreDNS add-on phase creates, with ``image`` for the Deployment and
    ``cluster_ips`` (one per family of the lab) for the ``kube-dns`` Service."""
    k8s_app = {"k8s-app": "kube-dns"}
    rbac = "rbac.authorization.k8s.io/v1"
    container = {
        "name": "coredns",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "resources": {
            "limits": {"memory": "170Mi"},
            "requests": {"cpu": "100m", "memory": "70Mi"},
        },
        "args": ["-conf", "/etc/coredns/Corefile"],
        "volumeMounts": [{"name": "config-volume", "mountPath": "/etc/coredns", "readOnly": True}],
        "ports": [
            {"containerPort": 53, "name": "dns", "protocol": "UDP"},
            {"containerPort": 53, "name": "dns-tcp", "protocol": "TCP"},
            {"containerPort": 9153, "name": "metrics", "protocol": "TCP"},
            {"containerPort": 8080, "name": "liveness-probe", "protocol": "TCP"},
            {"containerPort": 8181, "name": "readiness-probe", "protocol": "TCP"},
        ],
        "livenessProbe": {
            "httpGet": {"path": "/health", "port": "liveness-probe", "scheme": "HTTP"},
            "initialDelaySeconds": 60,
            "timeoutSeconds": 5,
            "successThreshold": 1,
            "failureThreshold": 5,
        },
        "readinessProbe": {
            "httpGet": {"path": "/ready", "port": "readiness-probe", "scheme": "HTTP"}
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
        },
    }
    anti_affinity = {
        "weight": 100,
        "podAffinityTerm": {
            "labelSelector": {
                "matchExpressions": [{"key": "k8s-app", "operator": "In", "values": ["kube-dns"]}]
            },
            "topologyKey": "kubernetes.io/hostname",
        },
    }
    pod_spec = {
        "priorityClassName": "system-cluster-critical",
        "serviceAccountName": "coredns",
        "affinity": {
            "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [anti_affinity]}
        },
        "tolerations": [
            {"key": "CriticalAddonsOnly", "operator": "Exists"},
            {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"},
        ],
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "containers": [container],
        "dnsPolicy": "Default",
        "volumes": [
            {
                "name": "config-volume",
                "configMap": {
                    "name": "coredns",
                    "items": [{"key": "Corefile", "path": "Corefile"}],
                },
            }
        ],
    }
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta("coredns")},
        {
            "apiVersion": rbac,
            "kind": "ClusterRole",
            "metadata": _meta("system:coredns", None),
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["endpoints", "services", "pods", "namespaces"],
                    "verbs": ["list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["list", "watch"],
                },
            ],
        },
        {
            "apiVersion": rbac,
            "kind": "ClusterRoleBinding",
            "metadata": _meta("system:coredns", None),
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:coredns",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": "kube-system"}],
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _meta("coredns"),
            "data": {"Corefile": COREFILE},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _meta("coredns", **k8s_app),
            "spec": {
                "replicas": REPLICAS,
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
                "selector": {"matchLabels": k8s_app},
                "template": {"metadata": {"labels": k8s_app}, "spec": pod_spec},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                **_meta(
                    "kube-dns",
                    **k8s_app,
                    **{"kubernetes.io/cluster-service": "true", "kubernetes.io/name": "CoreDNS"},
                ),
                "annotations": {"prometheus.io/port": "9153", "prometheus.io/scrape": "true"},
            },
            "spec": {
                **dns_service_spec(cluster_ips),
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                    {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153},
                ],
                "selector": k8s_app,
            },
        },
    ]
