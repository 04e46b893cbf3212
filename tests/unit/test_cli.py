from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from proxy import __version__
from proxy import manifests as m

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "my-nginx.yaml"


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
    )


def render(mode: str, state: str = str(EXAMPLE), *extra: str, stdin: str | None = None):  # type: ignore[no-untyped-def]
    return run(
        "render",
        "--state",
        state,
        "--mode",
        mode,
        "--hostname-override",
        "node-a",
        "--cluster-cidr",
        "10.244.0.0/16",
        *extra,
        stdin=stdin,
    )


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_render_example(mode: str) -> None:
    proc = render(mode)
    assert proc.returncode == 0, proc.stderr
    assert "2 service ports, 4 endpoints" in proc.stdout
    if mode == "iptables":
        assert "*nat" in proc.stdout and "-j DNAT --to-destination 10.244.2.11:80" in proc.stdout
    else:
        assert "add table ip kube-proxy" in proc.stdout
        assert "meta l4proto tcp dnat to numgen random mod 2 offset" in proc.stdout
        assert ": 10.244.1.11 . 80" in proc.stdout


def test_invalid_objects_are_reported_and_skipped(tmp_path: Path) -> None:
    bad = m.service("bad", "10.96.0.99", [m.Port(70000)])
    good = m.service("good", "10.96.0.98", [m.Port(80)])
    bad_slice = m.endpoint_slice("good", [m.EP("10.244.1.999")], [("", 80, "TCP")], name="good-x")
    state = tmp_path / "state.json"
    state.write_text(
        json.dumps(m.as_list([m.node("node-a", "192.168.50.11"), bad, good, bad_slice]))
    )
    proc = render("nftables", str(state))
    assert proc.returncode == 0
    assert (
        "skipped Service default/bad: spec.ports[0].port: 70000 is out of range 1-65535"
        in proc.stderr
    )
    assert (
        "skipped EndpointSlice default/good-x: endpoints[0].addresses[0]: '10.244.1.999' must "
        "be a valid IP address" in proc.stderr
    )
    assert "10.96.0.98 . tcp . 80" in proc.stdout and "10.96.0.99" not in proc.stdout
    strict = render("nftables", str(state), "--strict")
    assert strict.returncode == 1 and strict.stdout == proc.stdout


def test_bad_yaml_names_file_and_line(tmp_path: Path) -> None:
    state = tmp_path / "broken.yaml"
    state.write_text("kind: Service\nmetadata:\n  name: [unclosed\n")
    proc = render("iptables", str(state))
    assert proc.returncode == 2
    assert f"{state}:" in proc.stderr and "not valid YAML" in proc.stderr
    assert proc.stdout == ""


def test_missing_file_and_bad_flags() -> None:
    proc = render("iptables", "/nonexistent/state.yaml")
    assert proc.returncode == 2 and "/nonexistent/state.yaml: no such file" in proc.stderr
    proc = run(
        "render",
        "--state",
        str(EXAMPLE),
        "--mode",
        "nftables",
        "--hostname-override",
        "node-a",
        "--cluster-cidr",
        "10.244.0.0/33",
    )
    assert proc.returncode == 2 and "--cluster-cidr: '10.244.0.0/33' is not a CIDR" in proc.stderr
    proc = run(
        "render",
        "--state",
        str(EXAMPLE),
        "--mode",
        "nftables",
        "--hostname-override",
        "node-a",
        "--nodeport-addresses",
        "primary,10.0.0.0/8",
    )
    assert proc.returncode == 2 and "'primary' cannot be combined" in proc.stderr
    proc = run("render", "--state", str(EXAMPLE), "--mode", "ipvs", "--hostname-override", "x")
    assert proc.returncode == 2 and "invalid choice: 'ipvs'" in proc.stderr


def test_stdin_and_unknown_kinds_and_missing_node() -> None:
    text = json.dumps(
        m.as_list(
            [
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": {"name": "my-nginx", "namespace": "default"},
                },
                m.service("s", "10.96.0.5", [m.Port(80)]),
            ]
        )
    )
    proc = render("iptables", "-", stdin=text)
    assert proc.returncode == 0
    assert "ignored Deployment default/my-nginx" in proc.stderr
    assert "no Node named 'node-a'" in proc.stderr
    assert "10.96.0.5/32" in proc.stdout


def test_skipped_services_are_explained_in_the_output(tmp_path: Path) -> None:
    state = tmp_path / "s.json"
    state.write_text(json.dumps(m.as_list([m.service("hl", "None", [m.Port(80)])])))
    proc = render("iptables", str(state))
    assert "# default/hl: skipped: headless" in proc.stdout


def test_help_and_no_command() -> None:
    assert run("--help").returncode == 0
    proc = run()
    assert proc.returncode == 2 and "COMMAND" in proc.stderr


def test_an_option_given_dashdash_as_its_value_is_a_usage_error() -> None:
    r = render("iptables", str(EXAMPLE), "--hostname-override=--")
    assert r.returncode == 2
    assert "--hostname-override: no value given" in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""


def _dual_state(tmp_path: Path) -> str:
    path = tmp_path / "dual.json"
    objs = [
        m.node("node-a", "192.168.50.11", "fd00:192:168:50::11"),
        m.service("web", "10.96.0.20", [m.Port(80)], secondary_cluster_ip="fd00:10:96::20"),
        m.service("v6", "fd00:10:96::30", [m.Port(53, "dns", "UDP")]),
        m.endpoint_slice("web", [m.EP("10.244.1.5", "node-a")], [("", 80, "TCP")]),
        m.endpoint_slice(
            "web", [m.EP("fd00:10:244:1::5", "node-a")], [("", 80, "TCP")],
            name="web-v6", address_type="IPv6",
        ),
    ]  # fmt: skip
    path.write_text(json.dumps(m.as_list(objs)))
    return str(path)


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_render_prints_every_family_of_the_state_or_the_one_asked(
    tmp_path: Path, mode: str
) -> None:
    state = _dual_state(tmp_path)
    both = render(mode, state)
    assert both.returncode == 0, both.stderr
    header = [line for line in both.stdout.splitlines() if line.startswith("#")]
    assert header[:2] == [
        f"# kube-proxy-py {__version__} {mode} rules for node node-a (IPv4): "
        "1 service ports, 1 endpoints",
        f"# kube-proxy-py {__version__} {mode} rules for node node-a (IPv6): "
        "2 service ports, 1 endpoints",
    ]
    v4, _, v6 = both.stdout.partition("# ---- IPv6")
    assert "10.96.0.20" in v4 and "fd00" not in v4.split("# ---- IPv4")[1]
    assert "fd00:10:96::20" in v6 and "fd00:10:96::30" in v6 and "10.96.0.20" not in v6
    only4 = render(mode, state, "--ip-family", "ipv4")
    rules = [line for line in only4.stdout.splitlines() if not line.startswith("#")]
    assert not [line for line in rules if "fd00" in line]
    assert "# default/v6: skipped: IPv6 only (ClusterIP fd00:10:96::30)" in only4.stdout
    assert "# ---- " not in only4.stdout  # one family: no banners, pipe it as it is
    only6 = render(mode, state, "--ip-family", "ipv6").stdout.splitlines()
    assert not [line for line in only6 if "10.96.0.20" in line and not line.startswith("#")]
