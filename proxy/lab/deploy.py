"""What ``lab up`` applies with ``kubectl apply -f``: ``daemonset.yaml`` and its lab values.

The lab deploys the repository's ``daemonset.yaml`` as an operator would, changing only
what the file marks CHANGE and what the lab's flags ask for, and it records every change
so ``lab status`` can show it:

- ``KUBERNETES_SERVICE_HOST``/``_PORT``: the lab's API server (``192.168.50.2:6443``);
- the ConfigMap's ``mode`` (``--mode``) and ``clusterCIDR`` (the lab's pod CIDR of each
  IP family), and in an IPv6-only lab its ``healthzBindAddress`` (``[::]:10256``: the
  kubelet probes the pod at the node's IPv6 address);
- with ``--compare``, a node affinity keeping kube-proxy-py off ``node-upstream``, where
  upstream kube-proxy runs as a DaemonSet of its own (:func:`upstream_objects`);
- ``--metrics-service-counters`` on the agent's command line: the lab counts traffic
  per Service, which its demo shows (the file leaves it off, as an operator would start).

Plain functions over parsed YAML; nothing here talks to the API.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

UPSTREAM_NAME = "kube-proxy"
UPSTREAM_SERVICE_ACCOUNT = "kube-proxy"
UPSTREAM_CLUSTER_ROLE = "system:node-proxier"


class DeployError(ValueError):
    """``daemonset.yaml`` lacks something the lab needs; the message says what."""


@dataclass
class Changes:
    """What the lab set differently from the file: name -> (file's value, lab's value)."""

    env: dict[str, tuple[str, str]] = field(default_factory=dict)
    config: dict[str, tuple[str, str]] = field(default_factory=dict)
    other: list[str] = field(default_factory=list)


def find(objects: Sequence[Mapping[str, Any]], kind: str) -> dict[str, Any]:
    for obj in objects:
        if obj.get("kind") == kind:
            return dict(obj)
    raise DeployError(f"daemonset.yaml has no {kind}")


def _set_config_field(text: str, key: str, value: str) -> tuple[str, str]:
    """``config.conf`` with the top-level ``key`` set (comments kept); the old value."""
    old = str((yaml.safe_load(text) or {}).get(key, "(unset)"))
    # A value YAML would read as something else ("[::]:10256": a list) is quoted.
    try:
        plain = yaml.safe_load(f"k: {value}") == {"k": value}
    except yaml.YAMLError:
        plain = False
    rendered = value if plain else json.dumps(value)
    pattern = rf"(?m)^{re.escape(key)}:.*$"
    text, count = re.subn(pattern, lambda _: f"{key}: {rendered}", text)
    if count == 0:
        text = text.rstrip("\n") + f"\n{key}: {rendered}\n"
    return text, old


def lab_objects(
    objects: Sequence[Mapping[str, Any]],
    *,
    mode: str,
    cluster_cidr: str,
    api_host: str,
    api_port: int,
    exclude_nodes: Sequence[str] = (),
    healthz_bind_address: str | None = None,
    extra_args: Sequence[str] = (),
) -> tuple[list[dict[str, Any]], Changes]:
    """The manifest's objects as the lab applies them, and what was changed.

    ``cluster_cidr``: one CIDR per family, comma-separated (primary first);
    ``healthz_bind_address``: set when the file's does not serve the node's primary
    family (an IPv6-only lab: the kubelet probes the pod at the node's IPv6 address)."""
    changes = Changes()
    result: list[dict[str, Any]] = []
    found = {"ConfigMap": False, "DaemonSet": False}
    for original in objects:
        obj = copy.deepcopy(dict(original))
        kind = obj.get("kind")
        if kind == "ConfigMap" and "config.conf" in (obj.get("data") or {}):
            found["ConfigMap"] = True
            text = obj["data"]["config.conf"]
            fields = [("mode", mode), ("clusterCIDR", cluster_cidr)]
            if healthz_bind_address is not None:
                fields.append(("healthzBindAddress", healthz_bind_address))
            for key, value in fields:
                text, old = _set_config_field(text, key, value)
                if old != value:
                    changes.config[key] = (old, value)
            obj["data"]["config.conf"] = text
        elif kind == "DaemonSet":
            found["DaemonSet"] = True
            _set_api_env(obj, api_host, api_port, changes)
            command = _containers(obj)[0].setdefault("command", [])
            for arg in extra_args:
                if arg not in command:
                    command.append(arg)
                    changes.other.append(f"the agent runs with {arg}")
            if exclude_nodes:
                _exclude(obj, exclude_nodes)
                changes.other.append(
                    "node affinity: not on " + ", ".join(exclude_nodes) + " (upstream runs there)"
                )
        result.append(obj)
    missing = [k for k, seen in found.items() if not seen]
    if missing:
        raise DeployError("daemonset.yaml has no " + " and no ".join(missing))
    return result, changes


def _containers(ds: Mapping[str, Any]) -> list[dict[str, Any]]:
    containers: list[dict[str, Any]] = ds["spec"]["template"]["spec"].get("containers") or []
    if not containers:
        raise DeployError("the DaemonSet declares no container")
    return containers


def _set_api_env(ds: dict[str, Any], host: str, port: int, changes: Changes) -> None:
    container = _containers(ds)[0]
    env: list[dict[str, Any]] = container.setdefault("env", [])
    for name, value in (("KUBERNETES_SERVICE_HOST", host), ("KUBERNETES_SERVICE_PORT", str(port))):
        item = next((e for e in env if e.get("name") == name), None)
        old = "(unset)" if item is None else str(item.get("value", "(from a reference)"))
        if item is None:
            env.append({"name": name, "value": value})
        else:
            item.pop("valueFrom", None)
            item["value"] = value
        if old != value:
            changes.env[name] = (old, value)


def _exclude(ds: dict[str, Any], nodes: Sequence[str]) -> None:
    spec = ds["spec"]["template"]["spec"]
    terms = (
        spec.setdefault("affinity", {})
        .setdefault("nodeAffinity", {})
        .setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
        .setdefault("nodeSelectorTerms", [{}])
    )
    for term in terms:
        term.setdefault("matchExpressions", []).append(
            {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": list(nodes)}
        )


def upstream_objects(
    *,
    image: str,
    node: str,
    mode: str,
    cluster_cidr: str,
    api_host: str,
    api_port: int,
    healthz_port: int,
) -> list[dict[str, Any]]:
    """Upstream kube-proxy as a DaemonSet pinned to ``node``, as kubeadm deploys it
    (ServiceAccount ``kube-proxy`` bound to ``system:node-proxier``), flags instead of
    kubeadm's ConfigMap."""
    labels = {"k8s-app": UPSTREAM_NAME}
    meta = {"name": UPSTREAM_NAME, "namespace": "kube-system", "labels": labels}
    args = [
        "--hostname-override=$(NODE_NAME)",
        f"--proxy-mode={mode}",
        f"--cluster-cidr={cluster_cidr}",
        # The conntrack table size is host-wide (hashsize in /sys): leave it alone.
        "--conntrack-max-per-core=0",
        f"--healthz-bind-address=0.0.0.0:{healthz_port}",
        "--metrics-bind-address=127.0.0.1:10249",
        "--v=2",
    ]
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": dict(meta)},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "kube-proxy-lab-upstream", "labels": labels},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": UPSTREAM_CLUSTER_ROLE,
            },
            "subjects": [
                {
                    "kind": "ServiceAccount",
                    "name": UPSTREAM_SERVICE_ACCOUNT,
                    "namespace": "kube-system",
                }
            ],
        },
        {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": dict(meta),
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": UPSTREAM_SERVICE_ACCOUNT,
                        "priorityClassName": "system-node-critical",
                        "hostNetwork": True,
                        "dnsPolicy": "Default",
                        "nodeSelector": {"kubernetes.io/hostname": node},
                        "tolerations": [{"operator": "Exists"}],
                        "containers": [
                            {
                                "name": UPSTREAM_NAME,
                                "image": image,
                                "imagePullPolicy": "IfNotPresent",
                                "command": ["/usr/local/bin/kube-proxy", *args],
                                "env": [
                                    {
                                        "name": "NODE_NAME",
                                        "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}},
                                    },
                                    {"name": "KUBERNETES_SERVICE_HOST", "value": api_host},
                                    {"name": "KUBERNETES_SERVICE_PORT", "value": str(api_port)},
                                ],
                                "securityContext": {"privileged": True},
                                "volumeMounts": [
                                    {"name": "xtables-lock", "mountPath": "/run/xtables.lock"},
                                    {
                                        "name": "lib-modules",
                                        "mountPath": "/lib/modules",
                                        "readOnly": True,
                                    },
                                ],
                            }
                        ],
                        "volumes": [
                            {
                                "name": "xtables-lock",
                                "hostPath": {"path": "/run/xtables.lock", "type": "FileOrCreate"},
                            },
                            {"name": "lib-modules", "hostPath": {"path": "/lib/modules"}},
                        ],
                    },
                },
            },
        },
    ]
