"""The lab node's rendered configuration (pure: no root, no kernel)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import yaml

from proxy.lab import node as labnode


def config(tmp_path: Path, **changes: object) -> labnode.NodeConfig:
    values: dict[str, object] = {
        "name": "node-2",
        "lab_id": "ab12cd",
        "internal_ip": "192.168.50.12",
        "pod_cidr": "10.244.2.0/24",
        "zone": "zone-b",
        "directory": str(tmp_path / "nodes" / "node-2"),
        "api_server": "https://192.168.50.2:6443",
        "registry": "192.168.50.3:5000",
        "pause_image": "registry.k8s.io/pause:3.10.1",
        "k8s_bin": "/cache/k8s/bin",
        "node_bin": "/cache/node/bin",
        "cni_bin": "/cache/node/cni",
    }
    values.update(changes)
    return labnode.NodeConfig(**values)  # type: ignore[arg-type]


def test_containerd_config_is_toml_with_the_node_settings(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    parsed = tomllib.loads(labnode.containerd_config(cfg))
    assert parsed["version"] == 3
    assert parsed["grpc"]["address"] == labnode.CONTAINERD_SOCKET
    plugins = parsed["plugins"]
    images = plugins["io.containerd.cri.v1.images"]
    assert images["pinned_images"]["sandbox"] == "registry.k8s.io/pause:3.10.1"
    assert images["registry"]["config_path"] == "/etc/containerd/certs.d"
    runtime = plugins["io.containerd.cri.v1.runtime"]
    assert runtime["restrict_oom_score_adj"] is True
    assert runtime["netns_mounts_under_state_dir"] is True
    runc = runtime["containerd"]["runtimes"]["runc"]["options"]
    assert runc["SystemdCgroup"] is False
    assert runc["BinaryName"] == "/cache/node/bin/runc"


def test_every_mirrored_registry_resolves_to_the_lab_registry_only(tmp_path: Path) -> None:
    hosts = labnode.registry_hosts(config(tmp_path))
    assert sorted(hosts) == sorted(f"{r}/hosts.toml" for r in labnode.MIRRORED_REGISTRIES)
    for text in hosts.values():
        parsed = tomllib.loads(text)
        assert parsed["server"] == "http://192.168.50.3:5000"
        assert list(parsed["host"]) == ["http://192.168.50.3:5000"]


def test_cni_config_uses_the_node_pod_cidr(tmp_path: Path) -> None:
    cni = labnode.cni_config(config(tmp_path))
    bridge = cni["plugins"][0]
    assert bridge["type"] == "bridge" and bridge["isGateway"] is True
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.244.2.0/24", "gateway": "10.244.2.1"}]]
    assert [p["type"] for p in cni["plugins"]] == ["bridge", "portmap"]


def test_a_dual_stack_node_gets_a_range_and_a_default_route_per_family(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        internal_ip_secondary="fd00:192:168:50::12",
        pod_cidr_secondary="fd00:10:244:2::/64",
        cluster_dns=("10.96.0.10", "fd00:10:96::10"),
    )
    ipam = labnode.cni_config(cfg)["plugins"][0]["ipam"]
    assert ipam["ranges"] == [
        [{"subnet": "10.244.2.0/24", "gateway": "10.244.2.1"}],
        [{"subnet": "fd00:10:244:2::/64", "gateway": "fd00:10:244:2::1"}],
    ]
    assert ipam["routes"] == [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
    assert "--node-ip=192.168.50.12,fd00:192:168:50::12" in labnode.kubelet_argv(cfg)
    assert labnode.kubelet_config(cfg)["clusterDNS"] == ["10.96.0.10", "fd00:10:96::10"]
    assert labnode.NodeConfig.from_json(cfg.to_json()) == cfg


def test_an_ipv6_node_has_ipv6_only(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        internal_ip="fd00:192:168:50::12",
        pod_cidr="fd00:10:244:2::/64",
        registry="[fd00:192:168:50::3]:5000",
    )
    ipam = labnode.cni_config(cfg)["plugins"][0]["ipam"]
    assert ipam["ranges"] == [[{"subnet": "fd00:10:244:2::/64", "gateway": "fd00:10:244:2::1"}]]
    assert ipam["routes"] == [{"dst": "::/0"}]
    assert labnode.kubelet_config(cfg)["address"] == "fd00:192:168:50::12"
    assert "--node-ip=fd00:192:168:50::12" in labnode.kubelet_argv(cfg)
    hosts = tomllib.loads(labnode.registry_hosts(cfg)["docker.io/hosts.toml"])
    assert hosts["server"] == "http://[fd00:192:168:50::3]:5000"


def test_kubelet_config_for_a_cgroup_v1_host(tmp_path: Path) -> None:
    kc = labnode.kubelet_config(config(tmp_path))
    assert kc["failCgroupV1"] is False
    assert kc["cgroupDriver"] == "cgroupfs"
    assert kc["cgroupRoot"] == "/kube-proxy-py-lab/ab12cd/node-2"
    assert kc["address"] == "192.168.50.12"
    assert kc["clusterDNS"] == ["10.96.0.10"]
    assert kc["authentication"]["anonymous"]["enabled"] is False
    argv = labnode.kubelet_argv(config(tmp_path, labels={"lab": "yes"}))
    assert "--node-ip=192.168.50.12" in argv
    assert "--node-labels=lab=yes,topology.kubernetes.io/zone=zone-b" in argv


def test_prepare_writes_every_file_and_the_config_round_trips(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    path = labnode.prepare(cfg)
    assert labnode.NodeConfig.from_json(path.read_text()) == cfg
    root = Path(cfg.directory)
    for sub, _ in labnode.NODE_PATHS:
        assert (root / sub).is_dir()
    conflist = root / "etc/cni/net.d/10-kube-proxy-py-lab.conflist"
    assert json.loads(conflist.read_text())["name"] == "kube-proxy-py-lab"
    kubelet = yaml.safe_load((root / "etc/kubernetes/kubelet-config.yaml").read_text())
    assert kubelet["kind"] == "KubeletConfiguration"
    for name, value in labnode.KERNEL_SETTINGS.items():
        assert (root / "sysctl" / name.replace("/", ".")).read_text() == value + "\n"


def test_mounts_cover_the_kernel_settings_and_node_paths(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    targets = {m.target: m for m in labnode.mounts(cfg)}
    for _, target in labnode.NODE_PATHS:
        assert target in targets
    assert targets["/opt/cni/bin"].read_only
    for name in labnode.KERNEL_SETTINGS:
        assert f"/proc/sys/{name}" in targets
    for mount in targets.values():
        assert not mount.source.startswith("/proc")
