"""What ``lab up`` applies: daemonset.yaml with only the lab's values changed (pure)."""

from __future__ import annotations

import copy

import pytest
import yaml

from proxy.lab import deploy
from proxy.lab.cluster import MANIFEST


def objects() -> list[dict[str, object]]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if isinstance(d, dict)]


def lab(**changes: object) -> tuple[list[dict[str, object]], deploy.Changes]:
    values: dict[str, object] = {
        "mode": "iptables",
        "cluster_cidr": "10.244.0.0/16",
        "api_host": "192.168.50.2",
        "api_port": 6443,
    }
    values.update(changes)
    return deploy.lab_objects(objects(), **values)  # type: ignore[arg-type]


def env_of(objs: list[dict[str, object]]) -> dict[str, object]:
    ds = deploy.find(objs, "DaemonSet")
    container = ds["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_only_the_marked_values_change() -> None:
    original = objects()
    changed, changes = lab()
    assert [o["kind"] for o in changed] == [o["kind"] for o in original]
    env = env_of(changed)
    assert env["KUBERNETES_SERVICE_HOST"] == "192.168.50.2"
    assert env["KUBERNETES_SERVICE_PORT"] == "6443"
    assert changes.env == {"KUBERNETES_SERVICE_HOST": ("kind-control-plane", "192.168.50.2")}
    assert changes.config == {"mode": ("nftables", "iptables")}
    config = yaml.safe_load(deploy.find(changed, "ConfigMap")["data"]["config.conf"])
    assert config["mode"] == "iptables" and config["clusterCIDR"] == "10.244.0.0/16"
    # Everything else is the file's: compare with the two values put back.
    restored = copy.deepcopy(changed)
    for item in deploy.find(restored, "DaemonSet")["spec"]["template"]["spec"]["containers"][0][
        "env"
    ]:
        if item["name"] == "KUBERNETES_SERVICE_HOST":
            item["value"] = "kind-control-plane"
    cm = deploy.find(restored, "ConfigMap")
    cm["data"]["config.conf"] = cm["data"]["config.conf"].replace(
        "mode: iptables", "mode: nftables"
    )
    assert restored == original
    # The comments in config.conf survive (it is edited as text, not re-dumped).
    assert "# CHANGE" in cm["data"]["config.conf"]


def test_compare_keeps_kube_proxy_py_off_the_upstream_node() -> None:
    changed, changes = lab(exclude_nodes=["node-upstream"])
    spec = deploy.find(changed, "DaemonSet")["spec"]["template"]["spec"]
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"] == [
        {
            "matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": ["node-upstream"]}
            ]
        }
    ]
    assert changes.other and "node-upstream" in changes.other[0]


def test_the_lab_turns_the_service_counters_on_and_says_so() -> None:
    changed, changes = lab(extra_args=["--metrics-service-counters"])
    container = deploy.find(changed, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][-1] == "--metrics-service-counters"
    assert container["command"][:2] == ["kube-proxy-py", "run"]
    assert changes.other == ["the agent runs with --metrics-service-counters"]
    again, _ = lab(extra_args=["--metrics-service-counters", "--metrics-service-counters"])
    command = deploy.find(again, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
    assert command["command"].count("--metrics-service-counters") == 1


def test_a_manifest_without_the_daemonset_is_refused() -> None:
    only_rbac = [o for o in objects() if o["kind"] != "DaemonSet"]
    with pytest.raises(deploy.DeployError, match="no DaemonSet"):
        deploy.lab_objects(
            only_rbac, mode="nftables", cluster_cidr="10.244.0.0/16", api_host="h", api_port=1
        )


def test_upstream_daemonset_runs_the_built_image_on_one_node() -> None:
    objs = deploy.upstream_objects(
        image="registry.k8s.io/kube-proxy:v1.37.2",
        node="node-upstream",
        mode="nftables",
        cluster_cidr="10.244.0.0/16",
        api_host="192.168.50.2",
        api_port=6443,
        healthz_port=10256,
    )
    kinds = [o["kind"] for o in objs]
    assert kinds == ["ServiceAccount", "ClusterRoleBinding", "DaemonSet"]
    binding = objs[1]
    assert binding["roleRef"]["name"] == "system:node-proxier"
    spec = objs[2]["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"kubernetes.io/hostname": "node-upstream"}
    assert spec["hostNetwork"] is True
    container = spec["containers"][0]
    assert container["image"] == "registry.k8s.io/kube-proxy:v1.37.2"
    assert "--proxy-mode=nftables" in container["command"]
    assert "--hostname-override=$(NODE_NAME)" in container["command"]


def test_a_dual_stack_lab_gives_one_cluster_cidr_per_family() -> None:
    changed, changes = lab(cluster_cidr="10.244.0.0/16,fd00:10:244::/48")
    config = yaml.safe_load(deploy.find(changed, "ConfigMap")["data"]["config.conf"])
    assert config["clusterCIDR"] == "10.244.0.0/16,fd00:10:244::/48"
    assert changes.config["clusterCIDR"] == ("10.244.0.0/16", "10.244.0.0/16,fd00:10:244::/48")
    assert "healthzBindAddress" not in changes.config  # IPv4 primary: the file's serves it


def test_an_ipv6_lab_names_the_api_server_and_serves_healthz_on_ipv6() -> None:
    changed, changes = lab(
        cluster_cidr="fd00:10:244::/48",
        api_host="fd00:192:168:50::2",
        healthz_bind_address="[::]:10256",
    )
    assert env_of(changed)["KUBERNETES_SERVICE_HOST"] == "fd00:192:168:50::2"
    text = deploy.find(changed, "ConfigMap")["data"]["config.conf"]
    config = yaml.safe_load(text)  # "[::]:10256" quoted: unquoted YAML reads a list
    assert config["healthzBindAddress"] == "[::]:10256"
    assert config["clusterCIDR"] == "fd00:10:244::/48"
    assert changes.config["healthzBindAddress"] == ("0.0.0.0:10256", "[::]:10256")


def test_upstream_gets_the_cluster_cidr_of_each_family() -> None:
    objs = deploy.upstream_objects(
        image="registry.k8s.io/kube-proxy:v1.37.2",
        node="node-upstream",
        mode="iptables",
        cluster_cidr="10.244.0.0/16,fd00:10:244::/48",
        api_host="192.168.50.2",
        api_port=6443,
        healthz_port=10256,
    )
    command = objs[2]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "--cluster-cidr=10.244.0.0/16,fd00:10:244::/48" in command
