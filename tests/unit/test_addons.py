"""The lab's cluster add-ons, pure parts: CoreDNS's objects and the outside resolver's
files, MetalLB's manifest and pool, their pinned builds and their images' layout."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.host.spec import v6_twin
from proxy.lab import addonbuild, addons, coredns, metallb, nodebuild, oci
from proxy.lab.node import NodeConfig, render_files

# ------------------------------------------------------------------ CoreDNS


def _by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {str(o["kind"]): o for o in objects}


def test_kube_dns_service_is_kubeadms() -> None:
    objs = _by_kind(coredns.cluster_dns_objects("registry.k8s.io/coredns/coredns:v1.14.6"))
    svc = objs["Service"]
    assert svc["metadata"]["name"] == "kube-dns"
    assert svc["metadata"]["namespace"] == "kube-system"
    spec = svc["spec"]
    assert spec["clusterIP"] == "10.96.0.10"
    ports = {(p["port"], p["protocol"]) for p in spec["ports"]}
    assert ports == {(53, "UDP"), (53, "TCP"), (9153, "TCP")}
    assert spec["selector"] == {"k8s-app": "kube-dns"}


def test_coredns_deployment_runs_the_corefile_with_the_nodes_resolver() -> None:
    image = "registry.k8s.io/coredns/coredns:v1.14.6"
    objs = _by_kind(coredns.cluster_dns_objects(image))
    dep = objs["Deployment"]
    spec = dep["spec"]["template"]["spec"]
    assert dep["spec"]["replicas"] == 2
    assert spec["dnsPolicy"] == "Default"  # forward . /etc/resolv.conf is the node's
    (container,) = spec["containers"]
    assert container["image"] == image
    assert container["args"] == ["-conf", "/etc/coredns/Corefile"]
    assert container["securityContext"]["capabilities"] == {
        "add": ["NET_BIND_SERVICE"],
        "drop": ["ALL"],
    }
    corefile = objs["ConfigMap"]["data"]["Corefile"]
    for line in (
        "kubernetes cluster.local in-addr.arpa ip6.arpa {",
        "forward . /etc/resolv.conf {",
        "cache 30 {",
        "loop",
        "reload",
        "loadbalance",
    ):
        assert line in corefile
    rules = objs["ClusterRole"]["rules"]
    assert {"endpointslices"} == set(rules[1]["resources"])


def test_objects_are_valid_yaml_documents_kubectl_accepts() -> None:
    text = "\n---\n".join(yaml.safe_dump(o) for o in coredns.cluster_dns_objects("x"))
    docs = list(yaml.safe_load_all(text))
    assert [d["kind"] for d in docs] == [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "Deployment",
        "Service",
    ]


def test_kube_dns_has_a_cluster_ip_per_family() -> None:
    dual = _by_kind(coredns.cluster_dns_objects("x", addons.dns_service_ips((4, 6))))
    spec = dual["Service"]["spec"]
    assert spec["clusterIP"] == "10.96.0.10"
    assert spec["clusterIPs"] == ["10.96.0.10", "fd00:10:96::10"]
    assert spec["ipFamilyPolicy"] == "PreferDualStack"
    assert spec["ipFamilies"] == ["IPv4", "IPv6"]
    ipv6 = _by_kind(coredns.cluster_dns_objects("x", addons.dns_service_ips((6,))))["Service"]
    assert ipv6["spec"]["clusterIP"] == "fd00:10:96::10" and "clusterIPs" not in ipv6["spec"]


def test_outside_names_have_aaaa_records_in_an_ipv6_lab() -> None:
    dual = coredns.resolver_zones((4, 6))["example.com"]
    assert "db.example.com. 60 IN A 192.168.50.4" in dual
    assert "db.example.com. 60 IN AAAA fd00:192:168:50::4" in dual
    assert "ns.example.com. 3600 IN AAAA fd00:192:168:50::4" in dual
    ipv6 = coredns.resolver_zones((6,))["example.com"]
    assert " IN A " not in ipv6 and "ns.example.com. 3600 IN AAAA fd00:192:168:50::4" in ipv6
    assert coredns.resolver_zones() == coredns.resolver_zones((4,))  # IPv4: as before


def test_outside_resolver_serves_one_zone_per_name_and_nxdomain_otherwise() -> None:
    zones = coredns.resolver_zones()
    assert set(zones) == {"example.com", "githubusercontent.com"}
    assert "db.example.com. 60 IN A 192.168.50.4" in zones["example.com"]
    assert zones["example.com"].splitlines()[1].startswith("@ 3600 IN SOA ")
    corefile = coredns.resolver_corefile("/state/resolver")
    assert "file /state/resolver/example.com.zone" in corefile
    assert "example.com:53 {" in corefile and "githubusercontent.com:53 {" in corefile
    assert "rcode NXDOMAIN" in corefile.split(".:53 {", 1)[1]


def test_node_resolv_conf_names_the_outside_resolver(tmp_path: Path) -> None:
    base = dict(
        name="node-1",
        lab_id="kpp-lab-x",
        internal_ip="192.168.50.11",
        pod_cidr="10.244.1.0/24",
        zone="zone-a",
        directory=str(tmp_path),
        api_server="https://192.168.50.2:6443",
        registry="192.168.50.3:5000",
        pause_image="registry.k8s.io/pause:3.10.2",
        k8s_bin="/k",
        node_bin="/n",
        cni_bin="/c",
    )
    with_dns = NodeConfig(**base, nameservers=(coredns.RESOLVER_IP,))  # type: ignore[arg-type]
    assert render_files(with_dns)["etc/kubernetes/resolv.conf"] == "nameserver 192.168.50.4\n"
    assert NodeConfig.from_json(with_dns.to_json()) == with_dns
    bare = NodeConfig(**base)  # type: ignore[arg-type]
    assert "nameserver" not in render_files(bare)["etc/kubernetes/resolv.conf"]


# ------------------------------------------------------------------ MetalLB

MANIFEST = """\
apiVersion: v1
kind: Namespace
metadata: {name: metallb-system}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: controller, namespace: metallb-system}
spec:
  template:
    spec:
      containers: [{name: controller, image: quay.io/metallb/controller:v0.15.2}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: speaker, namespace: metallb-system}
spec:
  template:
    spec:
      containers: [{name: speaker, image: quay.io/metallb/speaker:v0.15.2}]
"""


def test_metallb_manifest_is_applied_as_shipped(tmp_path: Path) -> None:
    path = tmp_path / "metallb-native.yaml"
    path.write_text(MANIFEST)
    objects = metallb.install_objects(path)
    assert [o["kind"] for o in objects] == ["Namespace", "Deployment", "DaemonSet"]
    assert metallb.images(objects) == [
        "quay.io/metallb/controller:v0.15.2",
        "quay.io/metallb/speaker:v0.15.2",
    ]


def test_a_manifest_without_the_speaker_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(MANIFEST.rsplit("---", 1)[0])
    with pytest.raises(metallb.MetalLBError, match="no DaemonSet speaker"):
        metallb.install_objects(path)
    with pytest.raises(metallb.MetalLBError, match="cannot read"):
        metallb.install_objects(tmp_path / "absent.yaml")


def test_pool_is_on_the_lab_lan_and_advertised_in_l2() -> None:
    pool, adv = metallb.pool_objects()
    assert pool["kind"] == "IPAddressPool" and adv["kind"] == "L2Advertisement"
    assert pool["spec"]["addresses"] == ["192.168.50.200-192.168.50.250"]
    assert adv["spec"]["ipAddressPools"] == [pool["metadata"]["name"]]
    assert {pool["metadata"]["namespace"], adv["metadata"]["namespace"]} == {"metallb-system"}


def test_an_ipv6_pool_is_the_twin_of_the_ipv4_one() -> None:
    assert metallb.pool_ranges((6,)) == ["fd00:192:168:50::200-fd00:192:168:50::250"]
    pool, _ = metallb.pool_objects(metallb.pool_ranges((4, 6)))
    assert pool["spec"]["addresses"] == [
        "192.168.50.200-192.168.50.250",
        "fd00:192:168:50::200-fd00:192:168:50::250",
    ]
    first, _, last = metallb.POOL_RANGE_IPV6.partition("-")
    assert v6_twin(metallb.POOL_RANGE.split("-")[0]) == first
    assert v6_twin(metallb.POOL_RANGE.split("-")[1]) == last


def test_the_shipped_manifest_when_built() -> None:
    path = addonbuild.metallb_manifest()
    if not path.is_file():
        pytest.skip(f"MetalLB not built yet ({path}); `kube-proxy-py lab build` builds it")
    objects = metallb.install_objects(path)
    assert sorted(metallb.images(objects)) == [
        f"quay.io/metallb/controller:{addonbuild.METALLB_VERSION}",
        f"quay.io/metallb/speaker:{addonbuild.METALLB_VERSION}",
    ]


# ------------------------------------------------------------------ builds


def test_addon_pins_and_go_mod_replace() -> None:
    assert nodebuild.versions(addonbuild.ADDONS) == {"coredns": "v1.14.6", "metallb": "v0.15.2"}
    assert nodebuild.all_binaries(addonbuild.ADDONS) == ("coredns", "controller", "speaker")
    text = nodebuild.render_go_mod(addonbuild.METALLB, "1.24.0")
    assert "require go.universe.tf/metallb v0.15.2\n" in text
    assert text.endswith(
        "replace github.com/metallb/frr-k8s => github.com/metallb/frr-k8s v0.0.21\n"
    )
    assert "replace" not in nodebuild.render_go_mod(addonbuild.COREDNS, "1.25.0")


def test_addon_version_flags_skip_an_unknown_revision() -> None:
    with_rev = nodebuild.ldflags(addonbuild.COREDNS, "abc123")
    assert "-X github.com/coredns/coredns/coremain.GitCommit=abc123" in with_rev
    assert "GitCommit" not in nodebuild.ldflags(addonbuild.COREDNS, None)
    assert "internal/version.gitCommit=abc" in nodebuild.ldflags(addonbuild.METALLB, "abc")


def _exe(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_a_missing_kept_file_makes_its_component_missing(tmp_path: Path) -> None:
    paths = addonbuild.layout(tmp_path)
    records: dict[str, object] = {}
    for step in addonbuild.ADDONS.steps:
        for name in step.binaries:
            _exe(paths.bin_dir / name)
            records[name] = nodebuild.stamp_record(step, None, "go1.26.8", "2026-01-01T00:00:00Z")
    paths.stamp.parent.mkdir(parents=True, exist_ok=True)
    paths.stamp.write_text(json.dumps(nodebuild.stamp_document(records, addonbuild.ADDONS)))
    assert addonbuild.missing(paths) == ["controller", "speaker"]  # no metallb-native.yaml
    kept = addonbuild.metallb_manifest(paths)
    kept.parent.mkdir(parents=True)
    kept.write_text(MANIFEST)
    assert addonbuild.missing(paths) == []
    stamp = json.loads(paths.stamp.read_text())
    assert stamp["binaries"]["speaker"]["replace"] == {"github.com/metallb/frr-k8s": "v0.0.21"}


# ------------------------------------------------------------------ image layout


def test_file_capabilities_match_setcap() -> None:
    name, value = oci.file_capabilities(10)
    assert name == "security.capability"
    # what `setcap cap_net_bind_service=+ep FILE` writes (VFS_CAP_REVISION_2, effective)
    assert value.hex() == "0100000200040000000000000000000000000000"


def test_setcap_agrees_where_it_is_installed(tmp_path: Path) -> None:
    setcap = shutil.which("setcap")
    if setcap is None or os.geteuid() != 0:
        pytest.skip("needs setcap and root")
    target = tmp_path / "bin"
    target.write_bytes(b"\x7fELF")
    subprocess.run([setcap, "cap_net_bind_service=+ep", str(target)], check=True)
    assert os.getxattr(target, "security.capability") == oci.file_capabilities(10)[1]


def test_layer_carries_xattrs_as_pax_records() -> None:
    entry = oci.Entry("coredns", "file", 0o755, data=b"bin", xattrs=(oci.file_capabilities(10),))
    buf = io.BytesIO()
    oci.write_tar([entry], buf)
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tar:
        member = tar.getmember("coredns")
        raw = member.pax_headers["SCHILY.xattr.security.capability"]
    assert raw.encode("utf-8", "surrogateescape") == oci.file_capabilities(10)[1]
