"""daemonset.yaml: accepted by the real kube-apiserver, least privilege, and a command line
that ``kube-proxy-py run`` parses; config.conf read the same way by upstream kube-proxy.

Tests marked e2e need the pinned Kubernetes binaries (tests/e2e/conftest.py); the others
only read the files.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy import __version__
from proxy.agent.options.envrefs import expand_env_references
from proxy.agent.options.flags import IGNORED_FLAGS, OWN_FLAGS, REJECTED_FLAGS, SUPPORTED_FLAGS
from proxy.agent.options.govalues import parse_go_duration
from proxy.agent.options.parse import parse_run_args
from proxy.agent.options.settings import AgentOptions
from proxy.config import NodePortAddresses, ProxyMode
from proxy.lab.controlplane.controlplane import ControlPlane
from tests.unit.test_options import KUBEADM_CONFIG_CONF

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "daemonset.yaml"
DOCKERFILE = ROOT / "Dockerfile"
SERVICE_ACCOUNT = "system:serviceaccount:kube-system:kube-proxy-py"
NODE = "kind-worker"


def documents() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d is not None]


def one(kind: str) -> dict[str, Any]:
    found = [d for d in documents() if d["kind"] == kind]
    assert len(found) == 1, f"daemonset.yaml should hold exactly one {kind}, has {len(found)}"
    return found[0]


def container() -> dict[str, Any]:
    containers = one("DaemonSet")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def config_conf() -> str:
    text: str = one("ConfigMap")["data"]["config.conf"]
    return text


def agent_argv(config_file: Path) -> list[str]:
    """The container's command after ``kube-proxy-py run``, as the kubelet would start it
    on node NODE, with the ConfigMap's config.conf at config_file."""
    c = container()
    argv = [*c.get("command", []), *c.get("args", [])]
    assert argv[:2] == ["kube-proxy-py", "run"], argv
    mounted = _mounted_config_path()
    assert f"--config={mounted}" in argv, f"--config should point at the mounted {mounted}"
    expanded = expand_env_references(argv[2:], {"NODE_NAME": NODE})
    return [f"--config={config_file}" if a == f"--config={mounted}" else a for a in expanded]


def _mounted_config_path() -> str:
    spec = one("DaemonSet")["spec"]["template"]["spec"]
    cm_name = one("ConfigMap")["metadata"]["name"]
    volume = next(
        v["name"] for v in spec["volumes"] if v.get("configMap", {}).get("name") == cm_name
    )
    mount = next(m for m in container()["volumeMounts"] if m["name"] == volume)
    return f"{mount['mountPath']}/config.conf"


def parsed_agent(tmp_path: Path) -> AgentOptions:
    path = tmp_path / "config.conf"
    path.write_text(config_conf())
    return parse_run_args(agent_argv(path), {"NODE_NAME": NODE})


# --------------------------------------------------------------------------- files only


def test_cluster_role_grants_exactly_list_watch_on_services_endpointslices_nodes() -> None:
    grants = {
        (group, resource, verb)
        for rule in one("ClusterRole")["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert all(
        set(rule) == {"apiGroups", "resources", "verbs"} for rule in one("ClusterRole")["rules"]
    )
    assert grants == {
        ("", "services", "list"),
        ("", "services", "watch"),
        ("", "nodes", "list"),
        ("", "nodes", "watch"),
        ("discovery.k8s.io", "endpointslices", "list"),
        ("discovery.k8s.io", "endpointslices", "watch"),
    }


def test_the_daemonset_runs_as_the_bound_service_account() -> None:
    account = one("ServiceAccount")["metadata"]
    binding = one("ClusterRoleBinding")
    pod = one("DaemonSet")["spec"]["template"]["spec"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": one("ClusterRole")["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
    ]
    assert pod["serviceAccountName"] == account["name"]
    assert {
        d["metadata"].get("namespace")
        for d in documents()
        if d["kind"] not in ("ClusterRole", "ClusterRoleBinding")
    } == {"kube-system"}


def test_daemonset_command_parses_as_the_lab_will_run_it(tmp_path: Path) -> None:
    env = {e["name"]: e for e in container()["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    opts = parsed_agent(tmp_path)
    assert opts.warnings == (), "config.conf or the command sets something ignored:\n" + "\n".join(
        opts.warnings
    )
    assert (opts.node_name, opts.mode, opts.kubeconfig, opts.cleanup) == (
        NODE,
        ProxyMode.NFTABLES,
        None,
        False,
    )
    assert [str(c) for c in opts.cluster_cidrs] == ["10.244.0.0/16"]
    assert (opts.sync_period, opts.min_sync_period, opts.config_sync_period) == (30.0, 1.0, 900.0)
    assert opts.nodeport_addresses == NodePortAddresses()


def test_probes_reach_the_health_server_the_config_binds(tmp_path: Path) -> None:
    opts = parsed_agent(tmp_path)
    c = container()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert opts.healthz_bind_address.rsplit(":", 1) == ["0.0.0.0", str(ports["healthz"])]
    assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "healthz"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}


def test_pod_security_settings() -> None:
    pod = one("DaemonSet")["spec"]["template"]["spec"]
    security = container()["securityContext"]
    assert (pod["hostNetwork"], pod["priorityClassName"], pod["tolerations"]) == (
        True,
        "system-node-critical",
        [{"operator": "Exists"}],
    )
    assert "privileged" not in security
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}


def test_image_and_dockerfile_agree() -> None:
    text = DOCKERFILE.read_text()
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))  # type: ignore[union-attr]
    bases = re.findall(r"^FROM (\S+)", text, re.M)
    assert container()["image"] == f"kube-proxy-py:{__version__}"
    assert container()["command"][0] == entrypoint[0] == "kube-proxy-py"
    assert set(bases) == {"python:3.11-slim-bookworm"}


# --------------------------------------------------------------------------- API server


@pytest.fixture(scope="module")
def cp(bare_control_plane: ControlPlane) -> ControlPlane:
    """The e2e package's etcd + kube-apiserver (tests/e2e/conftest.py)."""
    return bare_control_plane


def _dry_run(cp: ControlPlane, manifest: str) -> subprocess.CompletedProcess[str]:
    return cp.kubectl("apply", "--dry-run=server", "-f", "-", input=manifest, check=False)


@pytest.mark.e2e
def test_server_side_dry_run_accepts_every_object(cp: ControlPlane) -> None:
    result = _dry_run(cp, MANIFEST.read_text())
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for doc in documents():
        kind, name = doc["kind"].lower(), doc["metadata"]["name"]
        pattern = re.compile(rf"^{kind}(\.[a-z0-9.]+)?/{name} created \(server dry run\)$")
        assert any(pattern.match(line) for line in lines), (
            f"{kind}/{name} missing in:\n{result.stdout}"
        )
    assert len(lines) == len(documents())
    gone = cp.kubectl("get", "daemonset", "-n", "kube-system", "kube-proxy-py", check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr, "a dry run must not create anything"


def _broken_restart_policy(ds: dict[str, Any]) -> None:
    ds["spec"]["template"]["spec"]["restartPolicy"] = "Never"


def _broken_unknown_field(ds: dict[str, Any]) -> None:
    ds["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"


def _broken_capability_type(ds: dict[str, Any]) -> None:
    ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] = (
        "NET_ADMIN"
    )


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("breaks", "expected"),
    [
        (_broken_restart_policy, 'spec.template.spec.restartPolicy: Unsupported value: "Never"'),
        (
            _broken_unknown_field,
            'unknown field "spec.template.spec.containers[0].imagePullPolicyy"',
        ),
        (_broken_capability_type, "cannot unmarshal string into Go struct field Capabilities"),
    ],
)
def test_server_side_dry_run_rejects_a_broken_copy(
    cp: ControlPlane, breaks: Any, expected: str
) -> None:
    ds = copy.deepcopy(one("DaemonSet"))
    breaks(ds)
    result = _dry_run(cp, json.dumps(ds))
    assert result.returncode != 0, f"accepted a broken DaemonSet:\n{result.stdout}"
    assert expected in result.stderr


@pytest.mark.e2e
def test_rbac_allows_what_the_agent_needs_and_nothing_more(cp: ControlPlane) -> None:
    rbac = [
        d
        for d in documents()
        if d["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding")
    ]
    manifest = "\n---\n".join(yaml.safe_dump(d) for d in rbac)
    cp.kubectl("apply", "-f", "-", input=manifest)
    try:
        for verb, resource, allowed in [
            ("list", "services", True),
            ("watch", "services", True),
            ("list", "endpointslices.discovery.k8s.io", True),
            ("watch", "endpointslices.discovery.k8s.io", True),
            ("list", "nodes", True),
            ("watch", "nodes", True),
            ("get", "nodes", False),
            ("patch", "nodes", False),
            ("list", "endpoints", False),
            ("list", "pods", False),
            ("list", "secrets", False),
            ("create", "events", False),
            ("create", "events.events.k8s.io", False),
        ]:
            answer = cp.kubectl(
                "auth", "can-i", verb, resource, f"--as={SERVICE_ACCOUNT}", check=False
            )
            assert answer.stdout.strip() == ("yes" if allowed else "no"), (
                verb,
                resource,
                answer.stdout,
            )
    finally:
        cp.kubectl("delete", "--ignore-not-found", "-f", "-", input=manifest)


# --------------------------------------------------------------------------- upstream kube-proxy


def _upstream_effective_config(
    k8s_bin: Path, tmp_path: Path, conf: str, *flags: str
) -> dict[str, Any]:
    """What upstream kube-proxy makes of conf and flags (``--write-config-to``, no cluster)."""
    src, out = tmp_path / "in.conf", tmp_path / "out.yaml"
    src.write_text(conf)
    result = subprocess.run(
        [str(k8s_bin / "kube-proxy"), f"--config={src}", *flags, f"--write-config-to={out}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "lenient decoding" not in result.stderr, "upstream's strict decoding rejected a field"
    written: dict[str, Any] = yaml.safe_load(out.read_text())
    return written


TUNED_NFTABLES_CONF = """\
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clusterCIDR: 10.244.0.0/16,fd00:10:244::/56
hostnameOverride: From-File
bindAddress: "::"
healthzBindAddress: "::1"
nftables: {syncPeriod: 1m, minSyncPeriod: 0s, masqueradeBit: 0, masqueradeAll: true}
iptables: {syncPeriod: 5s, masqueradeBit: 3}
nodePortAddresses: [10.0.0.0/8]
configSyncPeriod: 1h
logging: {verbosity: 2}
"""


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("name", "conf"),
    [
        ("daemonset.yaml config.conf", None),
        ("kubeadm/kind config.conf", KUBEADM_CONFIG_CONF),
        ("tuned nftables", TUNED_NFTABLES_CONF),
    ],
)
def test_upstream_kube_proxy_reads_config_files_as_we_do(
    k8s_bin: Path, tmp_path: Path, name: str, conf: str | None
) -> None:
    text = config_conf() if conf is None else conf
    path = tmp_path / "ours.conf"
    path.write_text(text)
    ours = parse_run_args([f"--config={path}", "--hostname-override=Flag-Node", "-v=1"], {})
    theirs = _upstream_effective_config(
        k8s_bin, tmp_path, text, "--hostname-override=Flag-Node", "-v=1"
    )
    section = theirs[ours.mode.value]
    assert theirs["mode"] == ours.mode.value, name
    assert theirs["hostnameOverride"] == ours.node_name
    assert theirs["logging"]["verbosity"] == ours.verbosity
    assert theirs["clusterCIDR"] == ",".join(str(c) for c in ours.cluster_cidrs)
    assert theirs["clientConnection"]["kubeconfig"] == (ours.kubeconfig or "")
    assert parse_go_duration(section["syncPeriod"], "") == ours.sync_period
    assert parse_go_duration(section["minSyncPeriod"], "") == ours.min_sync_period
    assert parse_go_duration(theirs["configSyncPeriod"], "") == ours.config_sync_period
    assert (section["masqueradeBit"], section["masqueradeAll"]) == (
        ours.masquerade_bit,
        ours.masquerade_all,
    )
    assert theirs["iptables"]["localhostNodePorts"] == ours.localhost_nodeports
    assert (theirs["healthzBindAddress"], theirs["metricsBindAddress"]) == (
        ours.healthz_bind_address,
        ours.metrics_bind_address,
    )
    mode_default = ["primary"] if ours.mode is ProxyMode.NFTABLES else None
    expected_npa = (
        str(ours.nodeport_addresses).split(",") if str(ours.nodeport_addresses) else mode_default
    )
    assert theirs["nodePortAddresses"] == expected_npa


@pytest.mark.e2e
def test_flag_tables_cover_exactly_upstream_kube_proxys_flags(
    k8s_bin: Path, tmp_path: Path
) -> None:
    help_text = subprocess.run(
        [str(k8s_bin / "kube-proxy"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout
    upstream = set(re.findall(r"^\s+(?:-\w, )?(--[a-z0-9-]+)", help_text, re.M))
    ours = {s.name for s in (*SUPPORTED_FLAGS, *IGNORED_FLAGS, *REJECTED_FLAGS)}
    hidden_deprecated = {"--healthz-port", "--metrics-port"}
    assert upstream == (ours - hidden_deprecated - OWN_FLAGS) | {"--help", "--version"}
    out = tmp_path / "out.yaml"
    accepted = subprocess.run(
        [
            str(k8s_bin / "kube-proxy"),
            "--healthz-port=10256",
            "--metrics-port=10249",
            f"--write-config-to={out}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert accepted.returncode == 0, accepted.stderr
