"""The seed corpus: real inputs of each target (``python -m tests.fuzz.run seed``).

State files from ``examples/my-nginx.yaml`` and objects built with ``proxy.manifests``;
agent list pages and watch events made of the same objects; kubeconfigs and
KubeProxyConfiguration files as ``tests/unit/test_api_config.py`` and
``tests/unit/test_options.py`` write them; ``render`` flag lines. Files are named
``seed-*`` and written to ``tests/fuzz/corpus/<target>/``; an existing file is left alone.
"""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import yaml

from proxy import manifests as m
from tests.unit.test_api_config import kubeconfig

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).resolve().parent / "corpus"

JSON = dict[str, Any]


def _dump_yaml(objs: list[JSON]) -> bytes:
    return yaml.safe_dump_all(objs, sort_keys=False).encode()


def _dump_list_json(objs: list[JSON]) -> bytes:
    return json.dumps(m.as_list(objs), indent=2).encode() + b"\n"


def state_objects() -> dict[str, list[JSON]]:
    """Named groups of objects, each a small cluster state."""
    node_a = m.node("node-a", "192.168.50.11", zone="zone-a", pod_cidr="10.244.1.0/24")
    node_v6 = m.node("node-a", "192.168.50.11", zone="zone-a", pod_cidr="10.244.1.0/24")
    node_v6["status"]["addresses"].append({"type": "InternalIP", "address": "fd00:50::11"})
    node_v6["spec"]["podCIDRs"].append("fd00:10:244:1::/64")
    eps = [m.EP("10.244.1.11", node="node-a", zone="zone-a"), m.EP("10.244.2.11", node="node-b")]
    out: dict[str, list[JSON]] = {}
    out["clusterip-named-port"] = [
        node_a,
        m.service("web", "10.96.0.10", [m.Port(80, "http", target_port="web")]),
        m.endpoint_slice("web", eps, [("http", 8080, "TCP")]),
    ]
    out["nodeport-udp-sctp"] = [
        node_a,
        m.service(
            "dns",
            "10.96.0.53",
            [
                m.Port(53, "dns", "UDP", 53, node_port=30053),
                m.Port(53, "dns-tcp", "TCP", 53, node_port=30054),
                m.Port(9000, "sctp", "SCTP", 9000),
            ],
            type="NodePort",
            namespace="kube-system",
        ),
        m.endpoint_slice(
            "dns",
            eps,
            [("dns", 53, "UDP"), ("dns-tcp", 53, "TCP"), ("sctp", 9000, "SCTP")],
            namespace="kube-system",
        ),
    ]
    out["loadbalancer-source-ranges"] = [
        node_a,
        m.service(
            "lb",
            "10.96.0.20",
            [m.Port(443, "https", target_port=8443, node_port=30443)],
            type="LoadBalancer",
            lb_ips=["203.0.113.10"],
            source_ranges=["198.51.100.0/24", "192.168.50.0/24"],
            external_ips=["203.0.113.20"],
        ),
        m.service(
            "lb-proxy",
            "10.96.0.21",
            [m.Port(80, "http", node_port=30081)],
            type="LoadBalancer",
            lb_ips=["203.0.113.11"],
            lb_ip_mode="Proxy",
        ),
        m.endpoint_slice("lb", eps, [("https", 8443, "TCP")]),
    ]
    out["affinity-local-policies"] = [
        node_a,
        m.service(
            "sticky",
            "10.96.0.30",
            [m.Port(80, "http", node_port=30080)],
            type="NodePort",
            affinity_seconds=600,
            external_policy="Local",
            health_check_node_port=32000,
        ),
        m.service(
            "internal",
            "10.96.0.31",
            [m.Port(80, "http")],
            internal_policy="Local",
        ),
        m.endpoint_slice("sticky", eps, [("http", 80, "TCP")]),
        m.endpoint_slice("internal", eps[1:], [("http", 80, "TCP")]),
    ]
    out["topology-terminating"] = [
        node_a,
        m.service("zoned", "10.96.0.40", [m.Port(80)]),
        m.endpoint_slice(
            "zoned",
            [
                m.EP("10.244.1.20", node="node-a", zone="zone-a", zone_hints=("zone-a",)),
                m.EP("10.244.2.20", node="node-b", zone="zone-b", zone_hints=("zone-b",)),
                m.EP("10.244.2.21", node="node-b", ready=False, serving=True, terminating=True),
            ],
            [("", 80, "TCP")],
        ),
        m.service("draining", "10.96.0.41", [m.Port(80)]),
        m.endpoint_slice(
            "draining",
            [m.EP("10.244.1.30", node="node-a", ready=False, serving=True, terminating=True)],
            [("", 80, "TCP")],
        ),
    ]
    dual = m.service("dual", "10.96.0.50", [m.Port(80, "http")])
    dual["spec"]["clusterIPs"] = ["10.96.0.50", "fd00:96::50"]
    dual["spec"]["ipFamilies"] = ["IPv4", "IPv6"]
    dual["spec"]["ipFamilyPolicy"] = "PreferDualStack"
    out["dual-stack"] = [
        node_v6,
        dual,
        m.endpoint_slice("dual", eps, [("http", 80, "TCP")], name="dual-v4"),
        m.endpoint_slice(
            "dual",
            [m.EP("fd00:10:244:1::11", node="node-a")],
            [("http", 80, "TCP")],
            name="dual-v6",
            address_type="IPv6",
        ),
    ]
    headless = m.service("headless", "None", [m.Port(80)])
    external = m.service("ext", "", [m.Port(80)], type="ExternalName")
    external["spec"]["externalName"] = "example.com"
    other = m.service(
        "other-proxy",
        "10.96.0.60",
        [m.Port(80)],
        labels={"service.kubernetes.io/service-proxy-name": "other"},
    )
    out["skipped-services"] = [
        node_a,
        headless,
        external,
        other,
        m.service("empty", "10.96.0.61", [m.Port(80)]),
        m.endpoint_slice("ext", [], [], address_type="FQDN"),
    ]
    out["conflicts"] = [
        node_a,
        m.service("a", "10.96.0.70", [m.Port(80, node_port=30070)], type="NodePort"),
        m.service("b", "10.96.0.70", [m.Port(80, node_port=30070)], type="NodePort"),
        m.service("c", "10.96.0.71", [m.Port(80)], external_ips=["10.96.0.70"]),
        m.endpoint_slice("a", eps, [("", 80, "TCP")]),
    ]
    return out


def state_seeds() -> dict[str, bytes]:
    seeds = {"seed-my-nginx.yaml": (ROOT / "examples" / "my-nginx.yaml").read_bytes()}
    example = yaml.safe_load(seeds["seed-my-nginx.yaml"])
    seeds["seed-my-nginx.json"] = json.dumps(example, indent=2).encode() + b"\n"
    for i, (name, objs) in enumerate(state_objects().items()):
        if i % 2:
            seeds[f"seed-{name}.json"] = _dump_list_json(objs)
        else:
            seeds[f"seed-{name}.yaml"] = _dump_yaml(objs)
    return seeds


# --------------------------------------------------------------------------- agent


def _list_page(kind: str, objs: list[JSON], rv: str, cont: str = "") -> JSON:
    items = []
    for o in objs:
        item = copy.deepcopy(o)
        item.pop("kind", None)  # list responses omit kind/apiVersion on items
        item.pop("apiVersion", None)
        item["metadata"]["resourceVersion"] = rv
        items.append(item)
    meta: JSON = {"resourceVersion": rv}
    if cont:
        meta["continue"] = cont
    return {"kind": f"{kind}List", "apiVersion": "v1", "metadata": meta, "items": items}


def _event(kind: str, obj: JSON, rv: str) -> JSON:
    o = copy.deepcopy(obj)
    o["metadata"]["resourceVersion"] = rv
    return {"type": kind, "object": o}


def _line(kind: str, op: str, doc: JSON) -> str:
    return f"{kind} {op} {json.dumps(doc, separators=(',', ':'))}"


def agent_seeds() -> dict[str, bytes]:
    example = yaml.safe_load((ROOT / "examples" / "my-nginx.yaml").read_bytes())["items"]
    by_kind: dict[str, list[JSON]] = {}
    for o in example:
        by_kind.setdefault(o["kind"], []).append(o)
    svcs, slices, nodes = by_kind["Service"], by_kind["EndpointSlice"], by_kind["Node"]
    seeds: dict[str, bytes] = {}

    def write(name: str, lines: list[str]) -> None:
        seeds[name] = ("\n".join(lines) + "\n").encode()

    base = [
        _line("Node", "list", _list_page("Node", nodes, "10")),
        _line("Service", "list", _list_page("Service", svcs, "11")),
        _line("EndpointSlice", "list", _list_page("EndpointSlice", slices, "12")),
    ]
    moved = copy.deepcopy(slices[0])
    moved["endpoints"][0]["conditions"] = {"ready": False, "serving": True, "terminating": True}
    write(
        "seed-list-then-watch.jsonl",
        [
            *base,
            _line("EndpointSlice", "watch", _event("MODIFIED", moved, "13")),
            _line("Service", "watch", _event("DELETED", svcs[1], "14")),
            _line(
                "Service",
                "watch",
                {
                    "type": "BOOKMARK",
                    "object": {"kind": "Service", "metadata": {"resourceVersion": "15"}},
                },
            ),
            _line("Service", "watch", _event("ADDED", svcs[1], "16")),
        ],
    )
    write(
        "seed-paged-list.jsonl",
        [
            _line("Service", "list", _list_page("Service", svcs[:1], "20", cont="tok1")),
            _line("Service", "list", _list_page("Service", svcs[1:], "20")),
            _line("EndpointSlice", "list", _list_page("EndpointSlice", slices, "21")),
        ],
    )
    write(
        "seed-relist-deletes.jsonl",
        [
            *base,
            _line("Service", "list", _list_page("Service", svcs[:1], "30")),
            _line("EndpointSlice", "list", _list_page("EndpointSlice", [], "31")),
        ],
    )
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": "too old resource version: 1 (100)",
        "reason": "Expired",
        "code": 410,
    }
    write(
        "seed-watch-error.jsonl",
        [
            *base,
            _line("Service", "watch", _event("ADDED", svcs[0], "40")),
            _line("Service", "watch", {"type": "ERROR", "object": status}),
            _line("Node", "watch", _event("MODIFIED", nodes[0], "41")),
        ],
    )
    more = state_objects()
    lines = []
    for group in ("loadbalancer-source-ranges", "affinity-local-policies", "dual-stack"):
        for o in more[group]:
            kind = o["kind"]
            lines.append(_line(kind, "watch", _event("ADDED", o, "50")))
    write("seed-watch-only.jsonl", lines)
    return seeds


# --------------------------------------------------------------------------- kubeconfig


def kubeconfig_seeds() -> dict[str, bytes]:
    from proxy.lab.pki import CertificateAuthority

    ca = CertificateAuthority.create("kpp-fuzz-seed-ca")
    pair = ca.issue("kube-proxy-py", organizations=["system:node-proxier"], client=True)

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    seeds = {
        "seed-embedded-certs.json": json.dumps(
            kubeconfig(
                {
                    "server": "https://127.0.0.1:6443/",
                    "certificate-authority-data": b64(ca.cert_pem),
                },
                {
                    "client-certificate-data": b64(pair.cert_pem),
                    "client-key-data": b64(pair.key_pem),
                },
            )
        ).encode(),
        "seed-files-and-token-file.yaml": yaml.safe_dump(
            kubeconfig(
                {"server": "https://10.0.0.1:443", "certificate-authority": "ca.crt"},
                {
                    "client-certificate": "client.crt",
                    "client-key": "client.key",
                    "token": "inline",
                    "tokenFile": "token",
                },
            )
        ).encode(),
        "seed-insecure-token.yaml": yaml.safe_dump(
            kubeconfig(
                {
                    "server": "https://[fd00::1]:6443/prefix",
                    "insecure-skip-tls-verify": True,
                    "tls-server-name": "kubernetes",
                },
                {"token": "abc.def"},
            )
        ).encode(),
        "seed-http-no-user.yaml": yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:8080"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c"}}],
                "current-context": "x",
            }
        ).encode(),
        "seed-master-override.yaml": b"#master 10.0.0.2:6443\n"
        + yaml.safe_dump(
            kubeconfig({"certificate-authority": "ca.crt"}, {"tokenFile": "token"})
        ).encode(),
        "seed-exec-refused.yaml": yaml.safe_dump(
            kubeconfig(
                {"server": "https://127.0.0.1:6443"},
                {"exec": {"command": "aws", "apiVersion": "client.authentication.k8s.io/v1"}},
            )
        ).encode(),
    }
    return seeds


# --------------------------------------------------------------------------- options


def options_seeds() -> dict[str, bytes]:
    from tests.unit.test_options import HEADER, KUBEADM_CONFIG_CONF

    def argv(args: list[str], body: str) -> bytes:
        return b"#argv " + json.dumps(args).encode() + b"\n" + body.encode()

    json_doc = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "nftables",
        "clusterCIDR": "10.244.0.0/16",
        "nftables": {"syncPeriod": "1m", "minSyncPeriod": "2s", "masqueradeAll": True},
        "nodePortAddresses": ["primary"],
    }
    return {
        "seed-kubeadm-config.conf": KUBEADM_CONFIG_CONF.encode(),
        "seed-json-config.json": json.dumps(json_doc).encode(),
        "seed-active-mode-sections.conf": (
            HEADER
            + "mode: nftables\n"
            + "iptables: {syncPeriod: 5s, masqueradeBit: 3, masqueradeAll: true}\n"
            + "nftables: {syncPeriod: 20s, minSyncPeriod: 2s, masqueradeBit: 9}\n"
            + "healthzBindAddress: '[::]:10256'\nmetricsBindAddress: 127.0.0.1:10249\n"
            + "hostnameOverride: node-b\nclusterCIDR: 10.244.0.0/16,fd00:10:244::/56\n"
            + "nodePortAddresses: [10.0.0.0/8, primary]\nlogging: {verbosity: 2}\n"
        ).encode(),
        "seed-flags-beside-config.conf": argv(
            ["--config", "{config}", "--hostname-override=Node-B", "--v=4", "--cleanup"],
            HEADER + "mode: iptables\niptables: {localhostNodePorts: false}\n",
        ),
        "seed-flags-only.txt": argv(
            [
                "--proxy-mode=nftables",
                "--cluster-cidr=10.244.0.0/16",
                "--nodeport-addresses",
                "10.0.0.0/8",
                "--masquerade-all",
                "--iptables-min-sync-period=2s",
                "--healthz-bind-address=0.0.0.0:10256",
                "--metrics-port=0",
                "--conntrack-max-per-core=0",
            ],
            "",
        ),
        "seed-unknown-and-duplicate-fields.conf": (
            HEADER
            + "mode: iptables\nmode: nftables\nclusterCidr: 10.0.0.0/8\nconntrack: {maxPerCore: 0}\n"
        ).encode(),
    }


# --------------------------------------------------------------------------- cli


def cli_seeds() -> dict[str, bytes]:
    lines = {
        "seed-iptables.txt": [
            "--state",
            "{state}",
            "--mode",
            "iptables",
            "--hostname-override",
            "node-a",
        ],
        "seed-nftables-stdin.txt": [
            "--state=-",
            "--proxy-mode=nftables",
            "--hostname-override=node-a",
        ],
        "seed-cidrs-strict.txt": [
            "--state",
            "{state}",
            "--mode",
            "nftables",
            "--hostname-override",
            "node-a",
            "--cluster-cidr",
            "10.244.0.0/16,fd00:10:244::/56",
            "--nodeport-addresses",
            "primary",
            "--masquerade-all",
            "--strict",
        ],
        "seed-nodeport-cidrs.txt": [
            "--state",
            "{state}",
            "--mode",
            "iptables",
            "--hostname-override",
            "node-b",
            "--nodeport-addresses=192.168.0.0/16,10.0.0.0/8",
        ],
        "seed-explain-clusterip.txt": [
            "explain", "--state", "{state}", "--hostname-override", "node-a",
            "--src", "10.244.1.5", "--dst", "10.96.0.80", "--dport", "80", "--proto", "tcp",
        ],
        "seed-explain-nodeport-json.txt": [
            "explain", "--state", "{state}", "--hostname-override", "node-a",
            "--mode", "iptables", "--cluster-cidr", "10.244.0.0/16", "--src", "203.0.113.9",
            "--dst", "192.168.50.11", "--dport", "30080", "--entry", "external", "-o", "json",
        ],
        "seed-explain-ping-node.txt": [
            "explain", "--state", "{state}", "--hostname-override", "node-a",
            "--entry", "node", "--dst", "10.96.0.81", "--proto", "icmp",
        ],
    }  # fmt: skip
    return {name: b"#argv " + json.dumps(argv).encode() + b"\n" for name, argv in lines.items()}


SEEDS = {
    "state": state_seeds,
    "agent": agent_seeds,
    "kubeconfig": kubeconfig_seeds,
    "options": options_seeds,
    "cli": cli_seeds,
}


def write_seeds(corpus: Path = CORPUS, overwrite: bool = False) -> list[Path]:
    written = write_regressions(corpus, overwrite)
    for target, make in SEEDS.items():
        directory = corpus / target
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in make().items():
            path = directory / name
            if path.exists() and not overwrite:
                continue
            path.write_bytes(data)
            written.append(path)
    return written


# --------------------------------------------------------------------------- regressions


def _svc_doc(svc_name: str = "my-nginx", namespace: str = "default", **port: Any) -> JSON:
    p = {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080, **port}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": svc_name, "namespace": namespace},
        "spec": {"clusterIP": "10.96.0.80", "clusterIPs": ["10.96.0.80"], "ports": [p]},
    }


def _with_slice(svc: JSON) -> list[JSON]:
    meta, port = svc["metadata"], svc["spec"]["ports"][0]
    return [
        svc,
        m.endpoint_slice(
            meta["name"],
            [m.EP("10.244.1.11", node="node-a")],
            [(port["name"], 8080, "TCP")],
            name=f"{meta['name'][:200]}-abc12",
            namespace=meta["namespace"],
        ),
    ]


def regression_seeds() -> dict[str, dict[str, bytes]]:
    """Hand-written inputs for the bugs issue 14 names (all found on f83d597): each must
    end in exit 2 or a Problem, with everything else rendered."""
    example = (ROOT / "examples" / "my-nginx.yaml").read_bytes()
    bomb = ["a: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        bomb.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    # anchors come before their use: the bombs first
    alias_bomb = (
        "bombs:\n"
        + "".join(f"  {line}\n" for line in bomb)
        + (
            "apiVersion: v1\nkind: Service\nmetadata: {name: bomb, namespace: default}\n"
            "spec:\n  clusterIP: *a8\n  ports: [{port: 80}]\n"
        )
    )
    long_ns, long_name = "n" * 63, ".".join(["a" * 63] * 4)[:253]
    state = {
        "regress-trailing-newline-name.yaml": _dump_yaml(_with_slice(_svc_doc("my-nginx\n"))),
        "regress-non-ascii-digit-target-port.yaml": _dump_yaml(
            _with_slice(_svc_doc(targetPort="²"))
        ),
        "regress-5000-digit-target-port.json": _dump_list_json(
            _with_slice(_svc_doc(targetPort="1" * 5000))
        ),
        "regress-4400-digit-number.json": b'{"kind": "Service", "metadata": {"name": "a"}, '
        b'"spec": {"ports": [{"port": ' + b"1" * 4400 + b"}]}}\n",
        "regress-deep-json.json": b"[" * 5000 + b"]" * 5000 + b"\n",
        "regress-deep-yaml.yaml": b"items: " + b"[" * 35000 + b"\n",
        "regress-alias-bomb.yaml": alias_bomb.encode(),
        "regress-long-names-comments.yaml": _dump_yaml(
            _with_slice(_svc_doc(long_name, long_ns, name="a" * 15))
        ),
        "regress-header-raw-names.yaml": _dump_yaml(
            [
                _svc_doc("bad\r\x1b[2Kname\n-A INPUT -j DROP"),
                *_with_slice(_svc_doc("good")),
            ]
        ),
        "regress-invalid-utf8.yaml": example.replace(b"my-nginx-7xk2p", b"my-nginx-\xff\xfe"),
        "regress-metadata-oops.json": _dump_list_json(
            [{**_svc_doc("oops"), "metadata": "oops"}, *_with_slice(_svc_doc("fine"))]
        ),
    }
    items = yaml.safe_load(example)["items"]
    svcs = [copy.deepcopy(o) for o in items if o["kind"] == "Service"]
    for o in svcs:
        del o["kind"], o["apiVersion"]
    oops = {"metadata": "oops", "spec": {"clusterIP": "10.96.0.99", "ports": [{"port": 1}]}}
    page = {"kind": "ServiceList", "apiVersion": "v1", "metadata": {"resourceVersion": "7"}}
    agent = {
        "regress-list-item-metadata-oops.jsonl": (
            _line("Service", "list", {**page, "items": [oops, *svcs]}) + "\n"
        ).encode(),
        "regress-watch-metadata-oops.jsonl": (
            _line("Service", "watch", {"type": "ADDED", "object": {"kind": "Service", **oops}})
            + "\n"
            + _line("Service", "watch", {"type": "ADDED", "object": svcs[0]})
            + "\n"
        ).encode(),
        "regress-deep-watch-event.jsonl": b"Service watch " + b"[" * 5000 + b"]" * 5000 + b"\n",
    }
    return {"state": state, "agent": agent}


def write_regressions(corpus: Path = CORPUS, overwrite: bool = False) -> list[Path]:
    written: list[Path] = []
    for target, files in regression_seeds().items():
        for name, data in files.items():
            path = corpus / target / name
            if path.exists() and not overwrite:
                continue
            path.write_bytes(data)
            written.append(path)
    return written
