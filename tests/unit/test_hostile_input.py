"""Hostile and unlucky input (issue 14): each case was reproduced on main before the fix.

Valid-but-long names, names with a trailing newline, outside text in render's header,
targetPort strings, special addresses, node ports outside the API server's range, health
check ports another Service holds, IPv6 and dual-stack Services, and documents built to
exhaust the parser (depth, alias bombs, huge numbers, invalid UTF-8).
"""

from __future__ import annotations

import json
import re
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from proxy import manifests as m
from proxy.config import ProxyConfig, ProxyMode
from proxy.iptables import render as ipt_render
from proxy.iptables import restore as ipt_restore
from proxy.model import IPFamily, parse_endpoint_slice, parse_service
from proxy.nftables import diff as nft_diff
from proxy.nftables import render as nft_render
from proxy.nftables import statements as nft_statements
from proxy.plan import plan, unserved_family_notes
from proxy.source.file import build_state

NODE = "node-a"
NS63 = "n" * 61 + "-x"
NAME63 = "s" * 61 + "-y"
PORT63 = "p" * 61 + "-z"
_COMMENT = re.compile(r'comment "([^"]*)"')


def _state(*objs: dict[str, Any]) -> Any:
    return build_state([m.node(NODE, "192.168.50.11"), *objs], NODE)


def _render(mode: ProxyMode, *objs: dict[str, Any]) -> str:
    state = _state(*objs)
    p = plan(state.snapshot, ProxyConfig(NODE, mode=mode), problems=state.problems)
    if mode is ProxyMode.NFTABLES:
        return nft_diff.full_sync_text(nft_render.render(p))
    return ipt_restore.restore_text(ipt_render.render(p))


def long_named(endpoints: bool = True) -> list[dict[str, Any]]:
    """A Service with 63-character namespace, name and port name (the API accepts them)."""
    svc = m.service(
        NAME63,
        "10.96.0.50",
        [m.Port(80, PORT63, target_port=8080, node_port=30050)],
        namespace=NS63,
        type="NodePort",
    )
    objs = [svc]
    if endpoints:
        objs.append(
            m.endpoint_slice(
                NAME63,
                [m.EP("10.244.1.5", NODE)],
                [(PORT63, 8080, "TCP")],
                namespace=NS63,
                name="slice-1",
            )
        )
    return objs


@pytest.mark.parametrize("endpoints", [True, False])
def test_long_valid_names_fit_nft_comments(endpoints: bool) -> None:
    objs = long_named(endpoints)
    assert _state(*objs).problems == ()
    text = _render(ProxyMode.NFTABLES, *objs)
    comments = _COMMENT.findall(text)
    assert comments, "the Service's elements carry comments"
    assert max(len(c) for c in comments) <= nft_statements.NFT_COMMENT_MAX
    # the truncated comment still starts with the Service's name: it stays readable
    assert any(c.startswith(f"{NS63}/{NAME63}") for c in comments)


def test_long_valid_names_fit_iptables_comments() -> None:
    text = _render(ProxyMode.IPTABLES, *long_named())
    comments = re.findall(r'--comment "([^"]*)"', text)
    assert comments and max(len(c) for c in comments) <= ipt_render.IPT_COMMENT_MAX
    assert any(f"{NS63}/{NAME63}:{PORT63}" in c for c in comments)


def test_comment_quoting_keeps_rule_syntax() -> None:
    assert nft_statements.safe_comment('a"b\\c\nd\x00é') == "a'b?c?d??"
    assert len(nft_statements.safe_comment("x" * 500)) == 128
    assert ipt_render._q('say "hi"\\\n') == "\"say 'hi'??\""


@pytest.mark.parametrize(
    "name", ["bad\n", "bad\r", "b\nad", " bad", "Bad", "bad.", "a" * 64, "1bad\n"]
)
def test_names_outside_the_api_rules_are_skipped(name: str) -> None:
    svc = m.service(name, "10.96.0.10", [m.Port(80, "http")])
    parsed, problems = parse_service(svc)
    assert parsed is None
    assert [p.field for p in problems] == ["metadata.name"]
    # the reported name can never start a line of its own
    assert "\n" not in str(problems[0]) and "\r" not in str(problems[0])


def test_service_names_are_rfc1123_labels_since_v1_37() -> None:
    svc, problems = parse_service(m.service("1st-service", "10.96.0.10", [m.Port(80)]))
    assert problems == [] and svc is not None


@pytest.mark.parametrize(
    ("target", "fragment"),
    [
        ("٣", "must contain only alpha-numeric"),
        ("9" * 5000, "must be no more than 15 characters"),
        ("8080", "a quoted number is a port name"),
        ("web--x", "consecutive hyphens"),
        (-1, "out of range"),
        (1 << 70, "out of range"),
        (3.5, "not an integer"),
    ],
)
def test_target_port_strings_and_numbers(target: object, fragment: str) -> None:
    svc = m.service("web", "10.96.0.10", [m.Port(80, "http")])
    svc["spec"]["ports"][0]["targetPort"] = target
    parsed, problems = parse_service(svc)
    assert parsed is None
    assert any(p.field == "spec.ports[0].targetPort" and fragment in p.message for p in problems)
    assert all(len(str(p)) < 300 for p in problems), "outside values are shown bounded"


def test_target_port_zero_means_port() -> None:
    svc = m.service("web", "10.96.0.10", [m.Port(80, "http", target_port=0)])
    parsed, _ = parse_service(svc)
    assert parsed is not None and parsed.ports[0].target_port == 80


@pytest.mark.parametrize("ip", ["127.0.0.1", "0.0.0.0", "169.254.1.1", "224.0.0.5", "::1"])
def test_endpoint_addresses_the_api_refuses(ip: str) -> None:
    family = "IPv6" if ":" in ip else "IPv4"
    sl = m.endpoint_slice("web", [m.EP(ip)], [("", 80, "TCP")], address_type=family)
    parsed, problems = parse_endpoint_slice(sl)
    assert parsed is None and problems[0].field == "endpoints[0].addresses[0]"


@pytest.mark.parametrize("ip", ["127.0.0.1", "0.0.0.0", "239.1.1.1", "255.255.255.255"])
def test_cluster_ips_no_service_range_hands_out(ip: str) -> None:
    parsed, problems = parse_service(m.service("web", ip, [m.Port(80)]))
    assert parsed is None and problems[0].field == "spec.clusterIPs[0]"


def test_external_ips_follow_the_endpoint_rule() -> None:
    svc = m.service("web", "10.96.0.10", [m.Port(80)], external_ips=["127.0.0.1"])
    parsed, problems = parse_service(svc)
    assert parsed is None and problems[0].field == "spec.externalIPs[0]"


def test_non_string_labels_are_reported_not_stringified() -> None:
    svc = m.service("web", "10.96.0.10", [m.Port(80)])
    svc["metadata"]["labels"] = {"a": [[[["deep"]]]]}
    parsed, problems = parse_service(svc)
    assert parsed is None and "is not a string" in problems[0].message
    assert "deep" not in problems[0].message


def test_node_ports_outside_the_api_servers_range_are_refused() -> None:
    svc = m.service("ssh", "10.96.0.22", [m.Port(80, node_port=22)], type="NodePort")
    state = build_state([svc], NODE)
    assert state.snapshot.services == ()
    assert [(p.field, p.message) for p in state.problems] == [
        (
            "spec.ports[0].nodePort",
            "22 is outside the node port range 30000-32767 (--service-node-port-range)",
        )
    ]
    assert build_state([svc], NODE, (1, 65535)).problems == ()


def test_health_check_port_held_by_another_services_node_port() -> None:
    a = m.service("a", "10.96.0.1", [m.Port(80, node_port=30100)], type="NodePort")
    b = m.service(
        "b",
        "10.96.0.2",
        [m.Port(80, node_port=30101)],
        type="LoadBalancer",
        external_policy="Local",
        health_check_node_port=30100,
    )
    state = _state(a, b)
    p = plan(state.snapshot, ProxyConfig(NODE, mode=ProxyMode.NFTABLES))
    assert [(pr.ref.name, pr.field) for pr in p.problems] == [("b", "spec.healthCheckNodePort")]
    assert "30100/TCP is already used by default/a" in p.problems[0].message
    assert p.service_port("default", "b").health_check_node_port is None
    assert p.service_port("default", "a").node_port == 30100  # the first keeps it


def test_each_family_plans_its_half_and_an_unserved_family_is_said_per_object() -> None:
    v6 = m.service("v6", "fd00::10", [m.Port(80)])
    dual = m.service("dual", "10.96.0.11", [m.Port(80)], secondary_cluster_ip="fd00::11")
    state = _state(v6, dual)
    assert state.problems == ()
    cfg = ProxyConfig(NODE, mode=ProxyMode.NFTABLES)
    p4, p6 = plan(state.snapshot, cfg, IPFamily.V4), plan(state.snapshot, cfg, IPFamily.V6)
    assert p4.skipped == p6.skipped == ()
    assert [(sp.name, str(sp.cluster_ip)) for sp in p4.service_ports] == [("dual", "10.96.0.11")]
    assert [(sp.name, str(sp.cluster_ip)) for sp in p6.service_ports] == [
        ("dual", "fd00::11"),
        ("v6", "fd00::10"),
    ]
    # a node that cannot program IPv6 says what it leaves out, per object
    services = state.snapshot.services
    notes = {s.ref.name: s for s in unserved_family_notes(services, (IPFamily.V4,), "no ip6")}
    assert notes["v6"].code == "ipv6-only" and not notes["v6"].partial
    assert notes["dual"].code == "dual-stack" and notes["dual"].partial
    assert "fd00::11 is not" in notes["dual"].reason and "(no ip6)" in notes["dual"].reason
    # and an IPv6-only node the IPv4 ones
    notes = {s.ref.name: s for s in unserved_family_notes(services, (IPFamily.V6,), "no ip")}
    assert set(notes) == {"dual"} and "10.96.0.11 is not" in notes["dual"].reason


# -- render output --------------------------------------------------------------------


def render(*args: str, stdin: bytes | None = None, memory: int = 1 << 30) -> Any:
    """``kube-proxy-py render`` in a subprocess limited to ``memory`` bytes."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    return subprocess.run(
        [sys.executable, "-m", "proxy", "render", *args],
        input=stdin,
        capture_output=True,
        timeout=120,
        preexec_fn=limit,
    )


RULE_LINE = re.compile(
    r"^(#.*|\*\w+|:[A-Z][-A-Z0-9]* - \[0:0\]|-[AIDX] \S.*|COMMIT|add .*|flush .*|delete .*|)$"
)


def test_render_header_quotes_outside_text(tmp_path: Path) -> None:
    other = m.service("other", "10.96.0.12", [m.Port(80)], labels={})
    other["metadata"]["labels"]["service.kubernetes.io/service-proxy-name"] = "x\n-A INPUT -j DROP"
    bad_name = m.service("evil\n-A INPUT -j DROP", "10.96.0.13", [m.Port(80)])
    good = m.service("good", "10.96.0.14", [m.Port(80)])
    state = tmp_path / "state.json"
    state.write_text(json.dumps(m.as_list([m.node(NODE, "192.168.50.11"), other, bad_name, good])))
    for mode in ("iptables", "nftables"):
        proc = render("--state", str(state), "--mode", mode, "--hostname-override", NODE)
        assert proc.returncode == 0, proc.stderr
        out = proc.stdout.decode()
        assert "-A INPUT -j DROP" not in [line.strip() for line in out.splitlines()]
        assert all(RULE_LINE.match(line) for line in out.splitlines()), out
        assert "10.96.0.14" in out  # the valid Service is rendered


def test_hostname_override_is_a_node_name() -> None:
    proc = render("--state", "-", "--mode", "nftables", "--hostname-override", "a\nb", stdin=b"")
    assert proc.returncode == 2
    assert b"--hostname-override: 'a\\nb' is not a valid Node name" in proc.stderr


BOMB = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(8)
)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (BOMB.encode(), b"YAML aliases expand the document more than 10-fold"),
        (b"a: " + b"[" * 100_000 + b"]" * 100_000, b"nested more than 100 levels deep"),
        (b"- " * 50_000 + b"x\n", b"nested more than 100 levels deep"),
        (b"[" * 100_000 + b"]" * 100_000, b"nested more than 100 levels deep"),
        (b'{"kind":"List","items":[{"spec":{"port":' + b"1" * 5000 + b"}}]}", b"4,300 digits"),
        (b"kind: Service\nspec:\n  port: " + b"1" * 5000 + b"\n", b"4,300 digits"),
        (b"kind: Service\nmetadata:\n  name: \xff\xfe\n", b"<stdin>:3: not UTF-8"),
        (b"- !!python/object/apply:os.system ['echo pwned']\n", b"not valid YAML"),
    ],
)
def test_documents_built_to_exhaust_the_parser_exit_2(body: bytes, fragment: bytes) -> None:
    proc = render(
        "--state", "-", "--mode", "nftables", "--hostname-override", NODE, stdin=body,
        memory=512 << 20,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-500:]
    assert fragment in proc.stderr
    assert b"Traceback" not in proc.stderr and b"pwned" not in proc.stdout
