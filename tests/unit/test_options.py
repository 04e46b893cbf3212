"""``kube-proxy-py run`` options: flags, the KubeProxyConfiguration file and precedence."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import re
import socket
from pathlib import Path

import pytest

from proxy.agent.options.configfile import CONFIG_API_VERSION, CONFIG_KIND
from proxy.agent.options.docs import reference_tables_markdown
from proxy.agent.options.envrefs import expand_env_references
from proxy.agent.options.fields import IGNORED_FIELDS, SUPPORTED_FIELDS
from proxy.agent.options.flags import IGNORED_FLAGS, REJECTED_FLAGS, SUPPORTED_FLAGS
from proxy.agent.options.govalues import parse_go_duration
from proxy.agent.options.parse import add_run_arguments, parse_run_args
from proxy.agent.options.settings import AgentOptions
from proxy.config import ConfigError, NodePortAddresses, ProxyMode

ROOT = Path(__file__).resolve().parents[2]
ENV = {"NODE_NAME": "node-a"}

# What kubeadm writes into the kube-proxy ConfigMap's config.conf (zero values and
# nulls: kubeadm leaves defaulting to kube-proxy), with kind's own settings: mode,
# conntrack.maxPerCore 0 (kind cannot set conntrack sysctls) and iptables.minSyncPeriod.
KUBEADM_CONFIG_CONF = """\
apiVersion: kubeproxy.config.k8s.io/v1alpha1
bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  acceptContentTypes: ""
  burst: 0
  contentType: ""
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 0
clusterCIDR: 10.244.0.0/16
configSyncPeriod: 0s
conntrack:
  maxPerCore: 0
  min: null
  tcpBeLiberal: false
  tcpCloseWaitTimeout: null
  tcpEstablishedTimeout: null
  udpStreamTimeout: 0s
  udpTimeout: 0s
detectLocal:
  bridgeInterface: ""
  interfaceNamePrefix: ""
detectLocalMode: ""
enableProfiling: false
healthzBindAddress: ""
hostnameOverride: ""
iptables:
  localhostNodePorts: null
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 1s
  syncPeriod: 0s
ipvs:
  excludeCIDRs: null
  minSyncPeriod: 0s
  scheduler: ""
  strictARP: false
  syncPeriod: 0s
  tcpFinTimeout: 0s
  tcpTimeout: 0s
  udpTimeout: 0s
kind: KubeProxyConfiguration
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: "0"
    text:
      infoBufferSize: "0"
  verbosity: 0
metricsBindAddress: ""
mode: iptables
nftables:
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
nodePortAddresses: null
oomScoreAdj: null
portRange: ""
showHiddenMetricsForVersion: ""
winkernel:
  enableDSR: false
  forwardHealthCheckVip: false
  networkName: ""
  rootHnsEndpointName: ""
  sourceVip: ""
"""

HEADER = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"


def parse(*argv: str, env: dict[str, str] | None = None) -> AgentOptions:
    return parse_run_args(list(argv), ENV if env is None else env)


def config(tmp_path: Path, body: str, name: str = "config.conf") -> str:
    path = tmp_path / name
    path.write_text(body)
    return str(path)


def with_config(tmp_path: Path, body: str, *argv: str) -> AgentOptions:
    return parse(f"--config={config(tmp_path, HEADER + body)}", *argv)


def error(*argv: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse(*argv, env=env)
    return str(info.value)


def config_error(tmp_path: Path, body: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(f"--config={config(tmp_path, body)}")
    return str(info.value)


# --------------------------------------------------------------------------- defaults


def test_defaults_are_upstreams() -> None:
    opts = parse()
    assert opts == AgentOptions(
        node_name="node-a",
        mode=ProxyMode.IPTABLES,
        kubeconfig=None,
        master=None,
        cluster_cidrs=(),
        nodeport_addresses=NodePortAddresses(),
        masquerade_all=False,
        masquerade_bit=14,
        localhost_nodeports=True,
        sync_period=30.0,
        min_sync_period=1.0,
        config_sync_period=900.0,
        healthz_bind_address="0.0.0.0:10256",
        metrics_bind_address="127.0.0.1:10249",
        cleanup=False,
        verbosity=0,
        config_file=None,
        warnings=(),
    )


def test_options_are_frozen() -> None:
    opts = parse()
    with pytest.raises(AttributeError):
        opts.mode = ProxyMode.NFTABLES  # type: ignore[misc]


def test_proxy_config_carries_the_planner_settings() -> None:
    opts = parse("--proxy-mode=nftables", "--cluster-cidr=10.244.0.0/16", "--masquerade-all")
    host = (ipaddress.ip_address("192.168.1.2"),)
    cfg = opts.proxy_config(host)
    assert (cfg.node_name, cfg.mode, cfg.masquerade_all, cfg.masquerade_bit) == (
        "node-a",
        ProxyMode.NFTABLES,
        True,
        14,
    )
    assert cfg.cluster_cidrs == (ipaddress.ip_network("10.244.0.0/16"),)
    assert cfg.host_addresses == host


# --------------------------------------------------------------------------- each flag


@pytest.mark.parametrize(
    ("argv", "attr", "expected"),
    [
        (["--proxy-mode=nftables"], "mode", ProxyMode.NFTABLES),
        (["--proxy-mode", "iptables"], "mode", ProxyMode.IPTABLES),
        (["--proxy-mode="], "mode", ProxyMode.IPTABLES),
        (["--kubeconfig=/etc/kp/kubeconfig"], "kubeconfig", "/etc/kp/kubeconfig"),
        (["--kubeconfig="], "kubeconfig", None),
        (["--master", "https://10.0.0.1:6443"], "master", "https://10.0.0.1:6443"),
        (
            ["--cluster-cidr=10.244.0.0/16,fd00:10:244::/56"],
            "cluster_cidrs",
            (ipaddress.ip_network("10.244.0.0/16"), ipaddress.ip_network("fd00:10:244::/56")),
        ),
        (["--nodeport-addresses=primary"], "nodeport_addresses", NodePortAddresses(primary=True)),
        (
            ["--nodeport-addresses", "10.0.0.0/8", "--nodeport-addresses=192.168.0.0/16"],
            "nodeport_addresses",
            NodePortAddresses.parse("10.0.0.0/8,192.168.0.0/16"),
        ),
        (
            ["--nodeport-addresses=all"],
            "nodeport_addresses",
            NodePortAddresses.parse("0.0.0.0/0,::/0"),
        ),
        (
            ["--nodeport-addresses=localhost,10.0.0.0/8"],
            "nodeport_addresses",
            NodePortAddresses.parse("127.0.0.0/8,::1/128,10.0.0.0/8"),
        ),
        (["--masquerade-all"], "masquerade_all", True),
        (["--masquerade-all=true"], "masquerade_all", True),
        (["--masquerade-all=F"], "masquerade_all", False),
        (["--iptables-masquerade-bit=3"], "masquerade_bit", 3),
        (["--iptables-masquerade-bit", "0"], "masquerade_bit", 0),
        (["--iptables-localhost-nodeports=false"], "localhost_nodeports", False),
        (["--iptables-sync-period=1m0s"], "sync_period", 60.0),
        (["--iptables-min-sync-period", "500ms"], "min_sync_period", 0.5),
        (["--iptables-min-sync-period=0"], "min_sync_period", 0.0),
        (["--config-sync-period=1h2m3s"], "config_sync_period", 3723.0),
        (["--healthz-bind-address=127.0.0.1:8080"], "healthz_bind_address", "127.0.0.1:8080"),
        (["--healthz-bind-address=10.1.2.3"], "healthz_bind_address", "10.1.2.3:10256"),
        (["--healthz-bind-address=::"], "healthz_bind_address", "[::]:10256"),
        (["--healthz-bind-address=[::1]:9000"], "healthz_bind_address", "[::1]:9000"),
        (["--healthz-port=0"], "healthz_bind_address", ""),
        (
            ["--healthz-bind-address=10.1.2.3", "--healthz-port=9999"],
            "healthz_bind_address",
            "10.1.2.3:9999",
        ),
        (
            ["--healthz-bind-address=10.1.2.3:1", "--healthz-port=9999"],
            "healthz_bind_address",
            "10.1.2.3:1",
        ),
        (["--metrics-bind-address=0.0.0.0"], "metrics_bind_address", "0.0.0.0:10249"),
        (
            ["--metrics-bind-address=::1", "--metrics-port=9100"],
            "metrics_bind_address",
            "[::1]:9100",
        ),
        (["--cleanup"], "cleanup", True),
        (["--cleanup=false"], "cleanup", False),
        (["-v", "2"], "verbosity", 2),
        (["-v=3"], "verbosity", 3),
        (["-v4"], "verbosity", 4),
        (["--v=5"], "verbosity", 5),
        (["--v", "6"], "verbosity", 6),
    ],
)
def test_each_flag(argv: list[str], attr: str, expected: object) -> None:
    assert getattr(parse(*argv), attr) == expected


def test_last_occurrence_of_a_flag_wins() -> None:
    assert parse("--proxy-mode=nftables", "--proxy-mode=iptables").mode is ProxyMode.IPTABLES


def test_sync_period_flags_apply_in_nftables_mode_like_upstream() -> None:
    opts = parse(
        "--proxy-mode=nftables", "--iptables-sync-period=7s", "--iptables-min-sync-period=0"
    )
    assert (opts.sync_period, opts.min_sync_period) == (7.0, 0.0)


def test_iptables_masquerade_bit_flag_does_not_set_the_nftables_bit() -> None:
    opts = parse("--proxy-mode=nftables", "--iptables-masquerade-bit=3")
    assert opts.masquerade_bit == 14
    assert any(
        "--iptables-masquerade-bit has no effect in nftables mode" in w for w in opts.warnings
    )


def test_localhost_nodeports_flag_in_nftables_mode_warns() -> None:
    opts = parse("--proxy-mode=nftables", "--iptables-localhost-nodeports=false")
    assert any("--iptables-localhost-nodeports has no effect" in w for w in opts.warnings)


def test_deprecated_port_flags_warn() -> None:
    opts = parse("--healthz-port=10256", "--metrics-port=10249")
    assert opts.warnings == (
        "--healthz-port is deprecated (upstream too); use --healthz-bind-address=IP:PORT",
        "--metrics-port is deprecated (upstream too); use --metrics-bind-address=IP:PORT",
    )


def test_metrics_port_zero_is_an_error_as_upstream_validation_makes_it() -> None:
    assert "--metrics-port=0" in error("--metrics-port=0")


# --------------------------------------------------------------------------- flag errors


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["--proxy-mode=ipvs"],
            "--proxy-mode: 'ipvs' is not implemented by kube-proxy-py; only iptables and nftables",
        ),
        (["--proxy-mode=kernelspace"], "'kernelspace' is not implemented by kube-proxy-py"),
        (
            ["--proxy-mode=userspace"],
            "--proxy-mode: 'userspace' is not a proxy mode; use iptables or nftables",
        ),
        (
            ["--iptables-sync-period=30"],
            "--iptables-sync-period: '30' is not a duration (missing unit after '30')",
        ),
        (["--iptables-sync-period=0s"], "--iptables-sync-period: must be greater than 0"),
        (["--iptables-min-sync-period=-1s"], "--iptables-min-sync-period: must be 0 or more"),
        (
            ["--iptables-min-sync-period=1m"],
            "--iptables-min-sync-period (60s) must not be longer than --iptables-sync-period (30s)",
        ),
        (["--config-sync-period=0s"], "--config-sync-period: must be greater than 0"),
        (
            ["--iptables-masquerade-bit=32"],
            "--iptables-masquerade-bit: 32 is out of range; use a bit number from 0 to 31",
        ),
        (["--iptables-masquerade-bit=x"], "--iptables-masquerade-bit: 'x' is not an integer"),
        (["--masquerade-all=yes"], "--masquerade-all: 'yes' is not a boolean; use true or false"),
        (
            ["--cluster-cidr=10.0.0.0/8,10.1.0.0/16"],
            "--cluster-cidr: give at most one CIDR per IP family",
        ),
        (["--cluster-cidr=10.0.0.0/33"], "--cluster-cidr: '10.0.0.0/33' is not a CIDR"),
        (
            ["--nodeport-addresses=primary,10.0.0.0/8"],
            "cannot combine 'primary' with other entries",
        ),
        (["--nodeport-addresses=all,all"], "--nodeport-addresses: keyword 'all' is listed twice"),
        (
            ["--nodeport-addresses=nodes"],
            "--nodeport-addresses: 'nodes' is not a CIDR or one of the keywords",
        ),
        (
            ["--healthz-bind-address=0.0.0.0/0"],
            "--healthz-bind-address: '0.0.0.0/0' is a CIDR; give IP or IP:port",
        ),
        (
            ["--healthz-bind-address=localhost:10256"],
            "--healthz-bind-address: 'localhost' in 'localhost:10256' is not an IP address",
        ),
        (
            ["--healthz-bind-address=1.2.3.4:70000"],
            "port '70000' in '1.2.3.4:70000' is not a port (1-65535)",
        ),
        (
            ["--metrics-bind-address=1.2.3.4:5:6"],
            "--metrics-bind-address: '1.2.3.4:5:6' is not IP or IP:port",
        ),
        (["--healthz-port=70000"], "--healthz-port: 70000 is not a port"),
        (["-v=x"], "-v: 'x' is not a verbosity level"),
        (
            ["--foo"],
            "kube-proxy-py run: unrecognized arguments: --foo; see kube-proxy-py run --help",
        ),
        (["--kube=/x"], "unrecognized arguments: --kube=/x"),
        (["extra"], "unrecognized arguments: extra"),
        (["--proxy-port-range=30000-32767"], "unrecognized arguments: --proxy-port-range"),
        (
            ["--init-only"],
            "argument --init-only: not supported by kube-proxy-py: there is no separate privileged init step",
        ),
        (
            ["--write-config-to=/tmp/x"],
            "argument --write-config-to: not supported by kube-proxy-py",
        ),
        (["--iptables-sync-period"], "argument --iptables-sync-period: expected one argument"),
    ],
)
def test_flag_errors_name_the_flag_and_the_fix(argv: list[str], expected: str) -> None:
    assert expected in error(*argv)


# --------------------------------------------------------------------------- ignored flags


def test_upstream_flags_we_do_not_implement_are_accepted_with_a_named_warning() -> None:
    opts = parse(
        "--ipvs-scheduler=rr",
        "--conntrack-max-per-core",
        "0",
        "--feature-gates=KubeProxyNFTablesLocalhostNodePorts=true",
        "--profiling",
        "--oom-score-adj=-500",
        "--detect-local-mode=NodeCIDR",
        "--pod-interface-name-prefix",
        "veth",
    )
    assert opts.warnings == (
        "--ipvs-scheduler=rr is not supported by kube-proxy-py and is ignored (IPVS mode is not implemented; use nftables)",
        "--conntrack-max-per-core=0 is not supported by kube-proxy-py and is ignored (kube-proxy-py never changes conntrack sysctls)",
        "--feature-gates=KubeProxyNFTablesLocalhostNodePorts=true is not supported by kube-proxy-py and is ignored (no feature gates are implemented)",
        "--profiling=true is not supported by kube-proxy-py and is ignored (no /debug/pprof endpoint)",
        "--oom-score-adj=-500 is not supported by kube-proxy-py and is ignored (kube-proxy-py leaves its OOM score to the kubelet (-997 for system-node-critical pods))",
        "--detect-local-mode=NodeCIDR is not supported by kube-proxy-py and is ignored (only ClusterCIDR local-traffic detection is implemented)",
        "--pod-interface-name-prefix=veth is not supported by kube-proxy-py and is ignored (only ClusterCIDR local-traffic detection is implemented)",
    )
    assert opts == dataclasses.replace(parse(), warnings=opts.warnings)


@pytest.mark.parametrize(
    "argv",
    [
        ["--bind-address=0.0.0.0"],
        ["--oom-score-adj", "-999"],
        ["--detect-local-mode=ClusterCIDR"],
        ["--profiling=false"],
        ["--conntrack-tcp-timeout-established=24h0m0s"],
        ["--kube-api-qps=5"],
        ["--logging-format=text"],
    ],
)
def test_ignored_flags_at_upstreams_default_draw_no_warning(argv: list[str]) -> None:
    assert parse(*argv).warnings == ()


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("1m0s", 60.0),
        ("500ms", 0.5),
        ("1h2m3s", 3723.0),
        ("1.5h", 5400.0),
        ("1s500ms", 1.5),
        (".5s", 0.5),
        ("1.s", 1.0),
        ("0", 0.0),
        ("0s", 0.0),
        ("+1s", 1.0),
        ("-2ms", -0.002),
        ("100ns", 1e-7),
        ("3us", 3e-6),
        ("3\u00b5s", 3e-6),
        ("3\u03bcs", 3e-6),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text, "x") == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "is not a duration;"),
        ("-", "is not a duration;"),
        ("30", "missing unit after '30'"),
        ("1d", "unknown unit 'd'"),
        ("1ss", "unknown unit 'ss'"),
        ("s", "expected a number at 's'"),
        (".s", "expected a number at '.s'"),
        ("1 s", "unknown unit ' s'"),
        ("1h-2m", "unknown unit 'h-'"),
        ("3000000h", "out of range"),
    ],
)
def test_bad_go_durations_are_named(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_go_duration(text, "--iptables-sync-period")
    message = str(info.value)
    assert message.startswith(f"--iptables-sync-period: {text!r}")
    assert problem in message


# --------------------------------------------------------------------------- node name


def test_node_name_comes_from_the_flag_first(tmp_path: Path) -> None:
    path = config(tmp_path, HEADER + "hostnameOverride: from-file\n")
    opts = parse(f"--config={path}", "--hostname-override=  Flag-Node ")
    assert opts.node_name == "flag-node"


def test_node_name_then_from_the_file_then_node_name_env(tmp_path: Path) -> None:
    path = config(tmp_path, HEADER + "hostnameOverride: From-File\n")
    assert parse(f"--config={path}", env={"NODE_NAME": "env-node"}).node_name == "from-file"
    assert parse(env={"NODE_NAME": " Env-Node "}).node_name == "env-node"


def test_node_name_falls_back_to_the_lower_cased_host_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "Worker-7.Example")
    assert parse(env={}).node_name == "worker-7.example"
    assert parse(env={"NODE_NAME": "  "}).node_name == "worker-7.example"


def test_empty_hostname_override_flag_means_unset() -> None:
    assert parse("--hostname-override=", env={"NODE_NAME": "n1"}).node_name == "n1"


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["--hostname-override=  "], ENV, "--hostname-override: only spaces"),
        (["--hostname-override=$(NODE_NAME)"], ENV, "holds an unexpanded $(VAR) reference"),
        (
            ["--hostname-override=node_1"],
            ENV,
            "node name 'node_1' from --hostname-override is not a valid Node name",
        ),
        (
            [],
            {"NODE_NAME": "bad name"},
            "node name 'bad name' from $NODE_NAME is not a valid Node name",
        ),
    ],
)
def test_node_name_errors(argv: list[str], env: dict[str, str], expected: str) -> None:
    assert expected in error(*argv, env=env)


def test_empty_host_name_without_override_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "")
    assert "pass --hostname-override=NODE" in error(env={})


def test_expand_env_references_like_the_kubelet() -> None:
    args = ["--hostname-override=$(NODE_NAME)", "$(UNSET)", "$$(NODE_NAME)", "a$$b", "$(", "$x"]
    assert expand_env_references(args, {"NODE_NAME": "n1"}) == [
        "--hostname-override=n1",
        "$(UNSET)",
        "$(NODE_NAME)",
        "a$b",
        "$(",
        "$x",
    ]


# --------------------------------------------------------------------------- config file


def test_kubeadm_config_conf_parses_with_upstream_defaults(tmp_path: Path) -> None:
    path = config(tmp_path, KUBEADM_CONFIG_CONF)
    opts = parse(f"--config={path}", "--hostname-override=Kind-Worker")
    assert opts == AgentOptions(
        node_name="kind-worker",
        mode=ProxyMode.IPTABLES,
        kubeconfig="/var/lib/kube-proxy/kubeconfig.conf",
        master=None,
        cluster_cidrs=(ipaddress.ip_network("10.244.0.0/16"),),
        nodeport_addresses=NodePortAddresses(),
        masquerade_all=False,
        masquerade_bit=14,
        localhost_nodeports=True,
        sync_period=30.0,
        min_sync_period=1.0,
        config_sync_period=900.0,
        healthz_bind_address="0.0.0.0:10256",
        metrics_bind_address="127.0.0.1:10249",
        cleanup=False,
        verbosity=0,
        config_file=path,
        warnings=(
            f"{path}: conntrack.maxPerCore: 0 is not supported by kube-proxy-py and is ignored "
            "(kube-proxy-py never changes conntrack sysctls)",
        ),
    )


def test_tuned_upstream_config_warns_for_each_unsupported_field(tmp_path: Path) -> None:
    body = KUBEADM_CONFIG_CONF.replace("mode: iptables", "mode: nftables")
    for old, new in [
        ("  maxPerCore: 0\n", "  maxPerCore: null\n"),
        ("  tcpEstablishedTimeout: null", "  tcpEstablishedTimeout: 2h"),
        ("oomScoreAdj: null", "oomScoreAdj: -998"),
        ('detectLocalMode: ""', "detectLocalMode: NodeCIDR"),
        ('  scheduler: ""', "  scheduler: rr"),
        ("  qps: 0", "  qps: 50"),
        ("  flushFrequency: 0", "  flushFrequency: 10s"),
        ("  syncPeriod: 0s\nnodePortAddresses", "  syncPeriod: 45s\nnodePortAddresses"),
    ]:
        assert old in body, old
        body = body.replace(old, new)
    body += "featureGates:\n  KubeProxyNFTablesLocalhostNodePorts: true\n"
    path = config(tmp_path, body)
    opts = parse(f"--config={path}")
    assert opts.mode is ProxyMode.NFTABLES
    assert (opts.sync_period, opts.min_sync_period) == (45.0, 1.0)  # minSyncPeriod 0s: default
    prefix = f"{path}: "
    assert [w.removeprefix(prefix) for w in opts.warnings] == [
        "featureGates: {'KubeProxyNFTablesLocalhostNodePorts': True} is not supported by kube-proxy-py and is ignored (no feature gates are implemented)",
        "clientConnection.qps: 50 is not supported by kube-proxy-py and is ignored (the Python Kubernetes client's defaults apply)",
        "logging.flushFrequency: '10s' is not supported by kube-proxy-py and is ignored (kube-proxy-py logs in its own format; only the verbosity is read)",
        "ipvs.scheduler: 'rr' is not supported by kube-proxy-py and is ignored (IPVS mode is not implemented; use nftables)",
        "detectLocalMode: 'NodeCIDR' is not supported by kube-proxy-py and is ignored (only ClusterCIDR local-traffic detection is implemented)",
        "oomScoreAdj: -998 is not supported by kube-proxy-py and is ignored (kube-proxy-py leaves its OOM score to the kubelet (-997 for system-node-critical pods))",
        "conntrack.tcpEstablishedTimeout: '2h' is not supported by kube-proxy-py and is ignored (kube-proxy-py never changes conntrack sysctls)",
    ]


def test_json_config_file(tmp_path: Path) -> None:
    doc = {
        "apiVersion": CONFIG_API_VERSION,
        "kind": CONFIG_KIND,
        "mode": "nftables",
        "clusterCIDR": "10.244.0.0/16",
        "nftables": {"syncPeriod": "1m", "minSyncPeriod": "2s", "masqueradeAll": True},
        "nodePortAddresses": ["primary"],
    }
    opts = parse(f"--config={config(tmp_path, json.dumps(doc), 'config.json')}")
    assert (opts.mode, opts.sync_period, opts.min_sync_period, opts.masquerade_all) == (
        ProxyMode.NFTABLES,
        60.0,
        2.0,
        True,
    )
    assert opts.nodeport_addresses == NodePortAddresses(primary=True)
    assert opts.warnings == ()


def test_the_active_modes_section_is_read(tmp_path: Path) -> None:
    body = (
        "mode: nftables\n"
        "iptables: {syncPeriod: 5s, masqueradeBit: 3, masqueradeAll: true}\n"
        "nftables: {syncPeriod: 20s, minSyncPeriod: 2s, masqueradeBit: 9}\n"
    )
    opts = with_config(tmp_path, body)
    assert (opts.sync_period, opts.min_sync_period, opts.masquerade_bit, opts.masquerade_all) == (
        20.0,
        2.0,
        9,
        False,
    )
    shown = [w.split(": ", 1)[1] for w in opts.warnings]
    assert shown == [
        "iptables.masqueradeAll has no effect in nftables mode (as upstream); nftables.masqueradeAll applies",
        "iptables.masqueradeBit has no effect in nftables mode (as upstream); nftables.masqueradeBit applies",
        "iptables.syncPeriod has no effect in nftables mode (as upstream); nftables.syncPeriod applies",
    ]


def test_nftables_section_in_iptables_mode_warns(tmp_path: Path) -> None:
    opts = with_config(
        tmp_path, "nftables: {syncPeriod: 20s}\niptables: {localhostNodePorts: false}\n"
    )
    assert opts.sync_period == 30.0
    assert opts.localhost_nodeports is False
    assert [w.split(": ", 1)[1] for w in opts.warnings] == [
        "nftables.syncPeriod has no effect in iptables mode (as upstream); iptables.syncPeriod applies"
    ]


def test_pointer_fields_keep_explicit_zero_others_default(tmp_path: Path) -> None:
    body = "iptables: {masqueradeBit: 0, syncPeriod: 0s, minSyncPeriod: 0s}\nconfigSyncPeriod: 0s\n"
    opts = with_config(tmp_path, body)
    assert opts.masquerade_bit == 0
    assert (opts.sync_period, opts.min_sync_period, opts.config_sync_period) == (30.0, 1.0, 900.0)


def test_bind_addresses_from_the_file(tmp_path: Path) -> None:
    opts = with_config(
        tmp_path, 'healthzBindAddress: "10.0.0.5"\nmetricsBindAddress: 0.0.0.0:9100\n'
    )
    assert (opts.healthz_bind_address, opts.metrics_bind_address) == (
        "10.0.0.5:10256",
        "0.0.0.0:9100",
    )


def test_ipv6_bind_address_makes_the_default_server_addresses_ipv6(tmp_path: Path) -> None:
    opts = with_config(tmp_path, 'bindAddress: "::"\n')
    assert (opts.healthz_bind_address, opts.metrics_bind_address) == ("[::]:10256", "[::1]:10249")
    assert opts.warnings == ()


def test_unknown_fields_warn_with_a_suggestion(tmp_path: Path) -> None:
    opts = with_config(
        tmp_path, "iptables:\n  syncPerod: 10s\nclusterCidr: 10.0.0.0/8\nmetadata: {name: x}\n"
    )
    shown = [w.split(": ", 1)[1] for w in opts.warnings]
    assert shown == [
        "unknown field iptables.syncPerod is ignored (did you mean iptables.syncPeriod?)",
        "unknown field clusterCidr is ignored (did you mean clusterCIDR?)",
        "unknown field metadata is ignored",
    ]
    assert opts.cluster_cidrs == ()


def test_duplicate_fields_warn_and_the_last_wins(tmp_path: Path) -> None:
    opts = with_config(tmp_path, "mode: iptables\nmode: nftables\n")
    assert opts.mode is ProxyMode.NFTABLES
    assert opts.warnings[0].endswith("line 4: field 'mode' appears twice; the last value is used")


def test_logging_verbosity_from_the_file_and_v_wins(tmp_path: Path) -> None:
    assert with_config(tmp_path, "logging: {verbosity: 3}\n").verbosity == 3
    assert with_config(tmp_path, "logging: {verbosity: 3}\n", "-v=5").verbosity == 5


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("", "is empty; it must hold a KubeProxyConfiguration"),
        ("mode: [\n", "config.conf:2:1: not valid YAML/JSON"),
        ("- a\n", "must hold a KubeProxyConfiguration mapping, not a list"),
        (
            HEADER + "---\n" + HEADER,
            "holds 2 YAML documents; give exactly one KubeProxyConfiguration",
        ),
        ("kind: KubeProxyConfiguration\n", "apiVersion and kind are required"),
        (
            "apiVersion: kubeproxy.config.k8s.io/v1alpha2\nkind: KubeProxyConfiguration\n",
            "apiVersion 'kubeproxy.config.k8s.io/v1alpha2' is not supported",
        ),
        (
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeletConfiguration\n",
            "kind 'KubeletConfiguration' is not KubeProxyConfiguration",
        ),
        (
            "apiVersion: v1\nkind: ConfigMap\ndata: {config.conf: x}\n",
            "is a ConfigMap; give the file its data['config.conf'] holds",
        ),
        (
            HEADER + "mode: ipvs\n",
            "mode: 'ipvs' is not implemented by kube-proxy-py; only iptables and nftables are",
        ),
        (HEADER + "mode: IPTables\n", "mode: 'IPTables' is not a proxy mode"),
        (
            HEADER + "iptables: {masqueradeBit: x}\n",
            "iptables.masqueradeBit: expected integer, got a string 'x'",
        ),
        (HEADER + "iptables: {masqueradeBit: 32}\n", "iptables.masqueradeBit: 32 is out of range"),
        (
            HEADER + "iptables: {masqueradeAll: 'true'}\n",
            "iptables.masqueradeAll: expected bool, got a string 'true'",
        ),
        (
            HEADER + "iptables: {syncPeriod: 30}\n",
            'iptables.syncPeriod: expected a quoted Go duration such as "30s", got 30',
        ),
        (
            HEADER + "iptables: {syncPeriod: 30x}\n",
            "iptables.syncPeriod: '30x' is not a duration (unknown unit 'x')",
        ),
        (HEADER + "iptables: {syncPeriod: -1s}\n", "iptables.syncPeriod: must be greater than 0"),
        (
            HEADER + "iptables: {minSyncPeriod: 1m}\n",
            "iptables.minSyncPeriod (60s) must not be longer than",
        ),
        (HEADER + "iptables: 5\n", "iptables: expected a mapping of fields, got a int"),
        (
            HEADER + "clusterCIDR: 10.0.0.0/8,10.1.0.0/16\n",
            "clusterCIDR: give at most one CIDR per IP family",
        ),
        (HEADER + "nodePortAddresses: 10.0.0.0/8\n", "nodePortAddresses: expected list of strings"),
        (HEADER + "nodePortAddresses: [bogus]\n", "nodePortAddresses: 'bogus' is not a CIDR"),
        (HEADER + "bindAddress: nodeip\n", "bindAddress: 'nodeip' is not an IP address"),
        (HEADER + "healthzBindAddress: 0.0.0.0/0\n", "healthzBindAddress: '0.0.0.0/0' is a CIDR"),
        (HEADER + "featureGates: {A: yes-please}\n", "featureGates: expected map of booleans"),
        (HEADER + "logging: {verbosity: -1}\n", "logging.verbosity: -1 must be 0 or more"),
        (HEADER + "hostnameOverride: 12\n", "hostnameOverride: expected string, got a int 12"),
    ],
)
def test_config_file_errors_are_specific(tmp_path: Path, body: str, expected: str) -> None:
    assert expected in config_error(tmp_path, body)


def test_config_file_errors_name_the_file(tmp_path: Path) -> None:
    path = config(tmp_path, HEADER + "iptables: {masqueradeBit: 99}\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: iptables.masqueradeBit: 99")):
        parse(f"--config={path}")


def test_missing_or_unreadable_config_file(tmp_path: Path) -> None:
    assert (
        error(f"--config={tmp_path / 'nope.conf'}")
        == f"--config: {tmp_path / 'nope.conf'}: no such file"
    )
    assert "is a directory; give the config.conf file in it" in error(f"--config={tmp_path}")
    (tmp_path / "bin.conf").write_bytes(b"\xff\xfe\x00")
    assert "bin.conf:1: not UTF-8 (byte 0" in error(f"--config={tmp_path / 'bin.conf'}")


# --------------------------------------------------------------------------- precedence


def test_config_file_replaces_every_configuration_flag(tmp_path: Path) -> None:
    path = config(
        tmp_path,
        HEADER
        + "mode: nftables\nclusterCIDR: 10.244.0.0/16\nnftables: {syncPeriod: 20s}\n"
        + "clientConnection: {kubeconfig: /from/file}\n",
    )
    opts = parse(
        f"--config={path}",
        "--proxy-mode=iptables",
        "--cluster-cidr=10.9.0.0/16",
        "--iptables-sync-period=7s",
        "--kubeconfig=/from/flag",
        "--masquerade-all",
    )
    assert (opts.mode, opts.sync_period, opts.kubeconfig, opts.masquerade_all) == (
        ProxyMode.NFTABLES,
        20.0,
        "/from/file",
        False,
    )
    assert opts.cluster_cidrs == (ipaddress.ip_network("10.244.0.0/16"),)
    assert opts.warnings == (
        "--kubeconfig is ignored because --config is given (as upstream kube-proxy does); set clientConnection.kubeconfig in the config file instead",
        "--proxy-mode is ignored because --config is given (as upstream kube-proxy does); set mode in the config file instead",
        "--cluster-cidr is ignored because --config is given (as upstream kube-proxy does); set clusterCIDR in the config file instead",
        "--masquerade-all is ignored because --config is given (as upstream kube-proxy does); set iptables.masqueradeAll / nftables.masqueradeAll in the config file instead",
        "--iptables-sync-period is ignored because --config is given (as upstream kube-proxy does); set iptables.syncPeriod / nftables.syncPeriod in the config file instead",
    )


def test_flags_that_still_apply_beside_config(tmp_path: Path) -> None:
    path = config(tmp_path, HEADER + "hostnameOverride: file-node\nlogging: {verbosity: 1}\n")
    opts = parse(
        f"--config={path}",
        "--hostname-override=Flag-Node",
        "--master=https://10.0.0.1:6443",
        "--cleanup",
        "-v=4",
    )
    assert (opts.node_name, opts.master, opts.cleanup, opts.verbosity, opts.config_file) == (
        "flag-node",
        "https://10.0.0.1:6443",
        True,
        4,
        path,
    )
    assert opts.warnings == ()


def test_empty_config_flag_means_no_config_file() -> None:
    opts = parse("--config=", "--proxy-mode=nftables")
    assert (opts.config_file, opts.mode) == (None, ProxyMode.NFTABLES)


def test_deprecated_port_flags_are_ignored_with_config(tmp_path: Path) -> None:
    opts = with_config(tmp_path, "", "--healthz-port=0")
    assert opts.healthz_bind_address == "0.0.0.0:10256"
    assert opts.warnings[0].startswith("--healthz-port is ignored because --config is given")


# --------------------------------------------------------------------------- tables & parser


def _registered_option_strings() -> set[str]:
    parser = argparse.ArgumentParser(add_help=False)
    add_run_arguments(parser)
    return {s for action in parser._actions for s in action.option_strings}


def test_parser_registers_exactly_the_tables_flags() -> None:
    tables = (*SUPPORTED_FLAGS, *IGNORED_FLAGS, *REJECTED_FLAGS)
    expected = {s for spec in tables for s in spec.option_strings} | {"--version"}
    assert _registered_option_strings() == expected


def test_tables_have_no_duplicates_and_ignored_defaults_parse() -> None:
    flags = [s.name for s in (*SUPPORTED_FLAGS, *IGNORED_FLAGS, *REJECTED_FLAGS)]
    fields = [f.path for f in (*SUPPORTED_FIELDS, *IGNORED_FIELDS)]
    assert len(flags) == len(set(flags))
    assert len(fields) == len(set(fields))
    for spec in IGNORED_FLAGS:
        assert parse(*(f"{spec.name}={d}" for d in spec.defaults)).warnings == (), spec.name


def test_help_lists_the_ignored_flags_group(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse("--help")
    out = capsys.readouterr().out
    assert info.value.code == 0
    assert "--ipvs-scheduler" in out
    assert "accepted for compatibility and ignored with a warning" in out


def test_deploy_doc_tables_match_the_code() -> None:
    doc = (ROOT / "docs" / "deploy.md").read_text()
    begin, end = "<!-- BEGIN reference tables", "<!-- END reference tables -->"
    section = doc.split(begin, 1)[1].split("\n", 1)[1].split(end, 1)[0]
    assert section == reference_tables_markdown(), (
        "docs/deploy.md is out of date: replace the generated section with the output of "
        "`python -m proxy.agent.options.docs`"
    )


@pytest.mark.parametrize(
    "flag", ["--hostname-override", "--kubeconfig", "--cluster-cidr", "--nodeport-addresses"]
)
def test_a_flag_given_dashdash_as_its_value_is_refused_not_dropped(flag: str) -> None:
    # argparse reads `--flag=--` as "no value" (an empty list); taken silently, the agent
    # would run with the default (e.g. the wrong node name)
    with pytest.raises(ConfigError, match=f"{flag}: no value given"):
        parse_run_args([f"{flag}=--"], env={})
    assert parse_run_args([f"{flag}=-x"] if flag == "--kubeconfig" else [], env={})
