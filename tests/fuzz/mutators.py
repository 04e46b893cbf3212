"""Structure-aware mutation: parse an input into its JSON/YAML tree (or argv list, or
agent script lines), change one thing the way real inputs go wrong, write it back.

The changes: long names (63/64/253/254/300/5000 characters), unicode and control
characters, trailing newlines, quotes and backslashes, huge and negative numbers,
non-ASCII digits ("٣", "８０", "²"), 5,000-digit strings and numbers, wrong types
(``"metadata": "oops"``, a list for a mapping), deleted and duplicated keys and items,
subtrees copied from elsewhere, deep nesting, YAML anchors/aliases (up to alias bombs),
YAML tags and merge keys, invalid UTF-8, BOMs, CRLF and NUL bytes.

No proxy import here: the libFuzzer process instruments proxy/ only after this module is
loaded. Parsing is bounded (pure-Python YAML loader, node count and depth limits), so a
mutated input never hangs or crashes the mutator itself.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import yaml

ByteMutator = Callable[[bytes, int], bytes]

MAX_NODES = 4000
"""Nodes visited when picking one to change (an alias bomb shares subtrees)."""

STRINGS: tuple[str, ...] = (
    "",
    " ",
    "oops",
    "None",
    "null",
    "default",
    "kube-system",
    "my-nginx",
    "my-nginx\n",
    "my-nginx\r\n",
    "\nmy-nginx",
    "my-nginx ",
    "My-Nginx",
    "my_nginx",
    "my-nginx.",
    "-my-nginx",
    "a" * 15,
    "a" * 16,
    "a" * 63,
    "a" * 64,
    "a" * 253,
    "a" * 254,
    "a" * 300,
    ".".join(["a" * 63] * 4)[:253],
    "ñame",
    "名前",
    "\u202emy-nginx",
    "\u2028",
    "\x85",
    "\ufeff",
    "\udcff",
    "\x00",
    "\x1b[31m",
    "\x7f",
    '"',
    "\\",
    "'",
    '"; drop',
    "#",
    ";",
    "{",
    "}",
    "$(NODE_NAME)",
    "http",
    "p80",
    "TCP",
    "UDP",
    "SCTP",
    "tcp",
    "ICMP",
    "ClusterIP",
    "NodePort",
    "LoadBalancer",
    "ExternalName",
    "ClientIP",
    "Local",
    "Cluster",
    "VIP",
    "Proxy",
    "IPv4",
    "IPv6",
    "FQDN",
    "10.96.0.1",
    "10.96.0.1\n",
    " 10.96.0.1",
    "010.096.000.001",
    "10.96.0.1/32",
    "0.0.0.0",
    "255.255.255.255",
    "127.0.0.1",
    "::",
    "::1",
    "fd00::1",
    "::ffff:10.96.0.1",
    "fe80::1%eth0",
    "1.2.3.4/33",
    "10.0.0.0/8",
    "0.0.0.0/0",
    "::/0",
    "٣",
    "٨٠",
    "８０",
    "²",
    "80",
    "080",
    "+80",
    "-1",
    "0",
    "65536",
    "1" * 5000,
    "0" * 4999 + "8",
    "1e3",
    "0x50",
    "30s",
    "1h2m3s",
    "-1s",
    "1.5µs",
    "1e400s",
    "9999999999999h",
    "kubernetes.io/service-name",
    "topology.kubernetes.io/zone",
    "service.kubernetes.io/service-proxy-name",
    "zone-a",
    "node-a",
    "node-b",
    "2024-01-01T00:00:00Z",
    "2024-13-45T99:99:99Z",
    "true",
    "yes",
    "on",
)

NUMBERS: tuple[Any, ...] = (
    0,
    1,
    -1,
    80,
    65535,
    65536,
    30000,
    32767,
    86400,
    86401,
    10800,
    2**31 - 1,
    2**31,
    2**63,
    -(2**63),
    10**30,
    0.5,
    80.0,
    1e308,
    -0.0,
    True,
    False,
    None,
)

KEYS: tuple[str, ...] = (
    "apiVersion",
    "kind",
    "metadata",
    "name",
    "namespace",
    "labels",
    "annotations",
    "resourceVersion",
    "deletionTimestamp",
    "spec",
    "status",
    "type",
    "clusterIP",
    "clusterIPs",
    "ports",
    "port",
    "targetPort",
    "nodePort",
    "protocol",
    "externalIPs",
    "loadBalancer",
    "ingress",
    "ip",
    "ipMode",
    "loadBalancerSourceRanges",
    "sessionAffinity",
    "sessionAffinityConfig",
    "clientIP",
    "timeoutSeconds",
    "externalTrafficPolicy",
    "internalTrafficPolicy",
    "healthCheckNodePort",
    "addressType",
    "endpoints",
    "addresses",
    "address",
    "conditions",
    "ready",
    "serving",
    "terminating",
    "nodeName",
    "zone",
    "hints",
    "forZones",
    "forNodes",
    "podCIDR",
    "podCIDRs",
    "items",
    "continue",
    "object",
    "code",
    "reason",
    "message",
    "<<",
    "current-context",
    "contexts",
    "context",
    "clusters",
    "cluster",
    "users",
    "user",
    "server",
    "certificate-authority",
    "certificate-authority-data",
    "insecure-skip-tls-verify",
    "tls-server-name",
    "client-certificate",
    "client-certificate-data",
    "client-key",
    "client-key-data",
    "token",
    "tokenFile",
    "exec",
    "proxy-url",
    "mode",
    "clusterCIDR",
    "hostnameOverride",
    "bindAddress",
    "healthzBindAddress",
    "metricsBindAddress",
    "nodePortAddresses",
    "iptables",
    "nftables",
    "masqueradeAll",
    "masqueradeBit",
    "minSyncPeriod",
    "syncPeriod",
    "localhostNodePorts",
    "configSyncPeriod",
    "clientConnection",
    "kubeconfig",
    "logging",
    "verbosity",
    "conntrack",
    "featureGates",
)

FLAGS: tuple[str, ...] = (
    "--state",
    "--mode",
    "--proxy-mode",
    "--hostname-override",
    "--cluster-cidr",
    "--nodeport-addresses",
    "--masquerade-all",
    "--strict",
    "--config",
    "--kubeconfig",
    "--master",
    "--healthz-bind-address",
    "--healthz-port",
    "--metrics-bind-address",
    "--metrics-port",
    "--iptables-sync-period",
    "--iptables-min-sync-period",
    "--nftables-sync-period",
    "--config-sync-period",
    "--masquerade-bit",
    "--iptables-masquerade-bit",
    "--iptables-localhost-nodeports",
    "--cleanup",
    "--bind-address",
    "--conntrack-max-per-core",
    "--feature-gates",
    "--v",
    "-v",
    "--help",
    "-h",
    "--version",
    "--",
    "-",
    "--mo",
    "--stat",
)

CLI_FLAGS: tuple[str, ...] = (
    "--state",
    "--mode",
    "--proxy-mode",
    "--hostname-override",
    "--cluster-cidr",
    "--nodeport-addresses",
    "--masquerade-all",
    "--strict",
    "--mo",
    "--stat",
    "--help",
    "--",
)

FLAG_VALUES: tuple[str, ...] = (
    "iptables",
    "nftables",
    "ipvs",
    "kernelspace",
    "",
    "-",
    "{state}",
    "{config}",
    "node-a",
    "Node-A",
    "node-a\n-A INPUT -j DROP",
    "node-a\n# x",
    "a" * 254,
    "10.244.0.0/16",
    "10.244.0.0/16,fd00::/64",
    "10.244.0.0/16,10.245.0.0/16",
    "primary",
    "primary,10.0.0.0/8",
    "0.0.0.0/0",
    "10.0.0.0/33",
    "0.0.0.0:10256",
    "[::]:10256",
    "127.0.0.1:0",
    "1s",
    "0s",
    "-1s",
    "1e400s",
    "٣",
    "²",
    "14",
    "32",
    "-1",
    "true",
    "false",
    "maybe",
    "https://10.0.0.1:6443",
    "https://[::1]:99999",
    "http://\x00",
)

_PORTS: tuple[Any, ...] = (
    "http",
    "٣",
    "٨٠",
    "８０",
    "²",
    "1" * 5000,
    "080",
    "80\n",
    " 80",
    "-1",
    "0",
    "65536",
    "a" * 16,
    "HTTP",
    "http-",
    "p--1",
    0,
    -1,
    65536,
    2**63,
    80.0,
    True,
    None,
    [],
    "80",
)
_NAMES: tuple[Any, ...] = (
    "my-nginx\n",
    "my-nginx\r",
    "\x1b[31mred",
    "a" * 63,
    "a" * 64,
    "a" * 253,
    "a" * 254,
    ".".join(["a" * 63] * 4)[:253],
    "My-Nginx",
    "ñ",
    "a_b",
    "-a",
    "a-",
    "a..b",
    "",
    0,
    [],
)
_IPS: tuple[Any, ...] = (
    "10.96.0.1\n",
    " 10.96.0.1",
    "010.096.000.001",
    "::ffff:10.96.0.1",
    "fe80::1%eth0",
    "0.0.0.0",
    "255.255.255.255",
    "127.0.0.1",
    "169.254.169.254",
    "224.0.0.1",
    "::",
    "fd00::1",
    "10.96.0.1/32",
    "None",
    "",
    167772161,
    [],
)
FIELD_VALUES: dict[str, tuple[Any, ...]] = {
    "targetPort": _PORTS,
    "port": _PORTS,
    "nodePort": _PORTS,
    "healthCheckNodePort": _PORTS,
    "name": _NAMES,
    "namespace": _NAMES,
    "nodeName": _NAMES,
    "kubernetes.io/service-name": _NAMES,
    "clusterIP": _IPS,
    "ip": _IPS,
    "address": _IPS,
    "timeoutSeconds": (0, -1, 86400, 86401, 10**20, "10", 1.5, None),
    "protocol": ("tcp", "ICMP", "SCTP", "", 6, None),
    "type": ("ExternalName", "LoadBalancer", "NodePort", "Headless", "", {}, []),
    "addressType": ("IPv6", "FQDN", "ipv4", "", None),
    "server": ("http://\x00", "https://[::1]:99999", "https://a b", "ftp://x", "https://:1"),
}

INVALID_UTF8: tuple[bytes, ...] = (
    b"\xff",
    b"\xc3",
    b"\xc3\x28",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
)


# --------------------------------------------------------------------------- raw values


class Raw:
    """Text written as is into JSON or YAML (huge numbers, deep nesting, alias bombs)."""

    def __init__(self, json_text: str, yaml_text: str | None = None) -> None:
        self.json_text = json_text
        self.yaml_text = json_text if yaml_text is None else yaml_text


def _deep(depth: int, closed: bool) -> Raw:
    inner = "[" * depth + ("]" * depth if closed else "")
    return Raw(inner)


def _alias_bomb(levels: int, width: int) -> Raw:
    parts = ["&a0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        parts.append(f"&a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return Raw("[]", "[" + ", ".join(parts) + "]")


def _dump_json(obj: Any, rng: random.Random) -> str:
    pieces: list[str] = []
    ascii_only = rng.random() < 0.5

    def walk(o: Any, depth: int) -> None:
        if depth > 200:
            pieces.append("null")
        elif isinstance(o, Raw):
            pieces.append(o.json_text)
        elif isinstance(o, dict):
            pieces.append("{")
            for i, (k, v) in enumerate(o.items()):
                if i:
                    pieces.append(",")
                pieces.append(json.dumps(str(k), ensure_ascii=ascii_only))
                pieces.append(":")
                walk(v, depth + 1)
            pieces.append("}")
        elif isinstance(o, list | tuple):
            pieces.append("[")
            for i, v in enumerate(o):
                if i:
                    pieces.append(",")
                walk(v, depth + 1)
            pieces.append("]")
        elif isinstance(o, str):
            pieces.append(json.dumps(o, ensure_ascii=ascii_only))
        elif isinstance(o, bool) or o is None or isinstance(o, int):
            pieces.append(json.dumps(o))
        elif isinstance(o, float):
            pieces.append(repr(o) if o == o and abs(o) != float("inf") else "1e999")
        else:
            pieces.append(json.dumps(str(o)))

    walk(obj, 0)
    return "".join(pieces)


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    pass


def _represent_other(dumper: yaml.SafeDumper, data: Any) -> yaml.Node:
    return dumper.represent_str(str(data))


_Dumper.add_multi_representer(object, _represent_other)

_PLACEHOLDER = "kppfuzzraw{}x"


def _dump_yaml(docs: list[Any], rng: random.Random) -> str:
    raws: list[Raw] = []

    def swap(node: Any) -> Any:
        if isinstance(node, Raw):
            raws.append(node)
            return _PLACEHOLDER.format(len(raws) - 1)
        return node

    for i, doc in enumerate(docs):
        docs[i] = swap(doc)
        for c, k in _nodes(docs[i]):
            c[k] = swap(c[k])
    text = yaml.dump_all(
        docs,
        Dumper=_Dumper,
        default_flow_style=rng.random() < 0.2,
        allow_unicode=rng.random() < 0.5,
        sort_keys=False,
        width=rng.choice((80, 10**6)),
    )
    for i in range(len(raws) - 1, -1, -1):
        text = text.replace(_PLACEHOLDER.format(i), raws[i].yaml_text)
    return text


# --------------------------------------------------------------------------- parsing


def parse_docs(data: bytes) -> tuple[list[Any], str] | None:
    """(documents, "json"|"yaml") or None when the bytes are not a small clean tree."""
    if len(data) > 200_000:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            return [json.loads(text)], "json"
        except (ValueError, RecursionError):
            pass
    # libyaml is 10x faster but its composer recurses in C: only for shallow texts
    shallow = len(data) < 30_000 and data.count(b"[") + data.count(b"{") < 1000
    loader_class = getattr(yaml, "CSafeLoader", yaml.SafeLoader) if shallow else yaml.SafeLoader
    try:
        loader = loader_class(text)
        docs: list[Any] = []
        try:
            while loader.check_data():
                docs.append(loader.get_data())
                if len(docs) > 50:
                    break
        finally:
            loader.dispose()
        return docs, "yaml"
    except (yaml.YAMLError, RecursionError, ValueError, TypeError, OverflowError, AttributeError):
        return None


def _nodes(root: Any) -> list[tuple[Any, Any]]:
    """(container, key) pairs of the tree, breadth first, shared subtrees once."""
    out: list[tuple[Any, Any]] = []
    seen: set[int] = set()
    queue: list[Any] = [root]
    while queue and len(out) < MAX_NODES:
        node = queue.pop(0)
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, dict):
            for k in list(node):
                out.append((node, k))
                queue.append(node[k])
        elif isinstance(node, list):
            for i in range(len(node)):
                out.append((node, i))
                queue.append(node[i])
    return out


# --------------------------------------------------------------------------- tree changes


def _string_variant(value: str, rng: random.Random) -> Any:
    choice = rng.randrange(11)
    if choice == 0:
        return value + rng.choice(("\n", "\r\n", "\r", " ", "\t", "\x00", "\u2028", "."))
    if choice == 1:
        return rng.choice(("\n", " ", "-", ".", "\ufeff")) + value
    if choice == 2 and value:
        return (value * (rng.choice((64, 254, 300, 5000)) // len(value) + 1))[
            : rng.choice((63, 64, 128, 129, 253, 254, 255, 256, 300, 5000))
        ]
    if choice == 3 and value:
        i = rng.randrange(len(value) + 1)
        return value[:i] + rng.choice(STRINGS[24:40]) + value[i:]
    if choice == 4:
        return value.upper()
    if choice == 5:
        return int(value) if value.isdecimal() and len(value) < 100 else rng.choice(NUMBERS)
    if choice == 6:
        return rng.choice(("oops", 0, None, [], {}, [value], {"name": value}))
    return rng.choice(STRINGS)


def _number_variant(value: Any, rng: random.Random) -> Any:
    choice = rng.randrange(7)
    if choice == 0 and isinstance(value, int) and not isinstance(value, bool):
        return value + rng.choice((-1, 1, 65536, -65536))
    if choice == 1:
        return str(value)
    if choice == 2:
        return Raw(rng.choice(("1" * 5000, "9" * 400, "1e999", "-0", "1.0", "0x50", "080")))
    if choice == 3:
        return rng.choice(("٣", "٨٠", "８０", "²", "1" * 5000, "80\n", " 80"))
    return rng.choice(NUMBERS)


def _replace(value: Any, rng: random.Random, pool: list[Any]) -> Any:
    """A new value for a node: a variant of it, a value of the wrong type, or a subtree
    from elsewhere."""
    r = rng.random()
    if r < 0.08:
        depth = rng.choice((50, 101, 200, 1000, 1000, 3000, 3000, 40000))
        return _deep(depth, rng.random() < 0.5)
    if r < 0.12:
        return _alias_bomb(rng.randrange(3, 10), rng.randrange(3, 10))
    if r < 0.22 and pool:
        return _copy_bounded(rng.choice(pool))
    if r < 0.32:
        return rng.choice(("oops", 0, None, True, [], {}, [[]], {"": None}, 1.5))
    if isinstance(value, str):
        return _string_variant(value, rng)
    if isinstance(value, bool) or value is None or isinstance(value, int | float):
        return _number_variant(value, rng)
    if isinstance(value, list):
        if value and rng.random() < 0.5:
            return value + [_copy_bounded(rng.choice(value))] * rng.choice((1, 1, 2, 100))
        return rng.choice(("oops", {}, {"items": value}, value[:1], value[::-1]))
    if isinstance(value, dict):
        return rng.choice(("oops", [], [value], {}, None))
    return rng.choice(STRINGS)


def _copy_bounded(value: Any, budget: int = 500) -> Any:
    count = 0

    def walk(v: Any, depth: int) -> Any:
        nonlocal count
        count += 1
        if count > budget or depth > 50:
            return None
        if isinstance(v, dict):
            return {k: walk(x, depth + 1) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x, depth + 1) for x in v]
        return v

    return walk(value, 0)


def mutate_tree(root: Any, rng: random.Random, pool: list[Any]) -> Any:
    """Change one node of ``root`` (in place when possible); returns the new root."""
    nodes = _nodes(root)
    if not nodes:
        return _replace(root, rng, pool)
    container, key = rng.choice(nodes)
    op = rng.randrange(10)
    if op == 0 and isinstance(container, dict):
        del container[key]
    elif op == 1 and isinstance(container, dict):
        container[rng.choice(KEYS)] = _replace(container[key], rng, pool)
    elif op == 2 and isinstance(container, list):
        container.insert(key, _copy_bounded(container[key]))
    elif op == 3 and isinstance(container, list):
        del container[key]
    elif op == 4 and isinstance(container, dict) and rng.random() < 0.5:
        container[key] = "oops" if key != "metadata" else rng.choice(("oops", [], 1, None))
        for c, k in nodes:
            if isinstance(c, dict) and k == "metadata" and rng.random() < 0.3:
                c[k] = "oops"
                break
    elif op == 5:
        # one object in two places (YAML writes an anchor and an alias); a fresh copy, so
        # the tree stays acyclic
        other_c, other_k = rng.choice(nodes)
        shared = _copy_bounded(other_c[other_k])
        container[key] = shared
        if not (other_c is container and other_k == key):
            other_c[other_k] = shared
    elif isinstance(container, dict) and key in FIELD_VALUES and rng.random() < 0.5:
        container[key] = rng.choice(FIELD_VALUES[key])
    elif isinstance(container, list) and rng.random() < 0.2 and container:
        # a list of names or addresses (clusterIPs, addresses, podCIDRs…)
        container[key] = rng.choice((*_IPS, *_NAMES))
    else:
        container[key] = _replace(container[key], rng, pool)
    return root


def _bytes_tweak(data: bytes, rng: random.Random) -> bytes:
    op = rng.randrange(8)
    if op == 0 and data:
        i = rng.randrange(len(data) + 1)
        return data[:i] + rng.choice(INVALID_UTF8) + data[i:]
    if op == 1:
        return b"\xef\xbb\xbf" + data
    if op == 2:
        return data.replace(b"\n", b"\r\n")
    if op == 3:
        return data + rng.choice((b"\n", b"\n\n", b"\x00", b"\n---\n", b"\n...\n", b"\t"))
    if op == 4 and data:
        return data[: rng.randrange(len(data))]
    if op == 5:
        return data.replace(b"\n", b"\r")
    if op == 6:
        return data.replace(b'"', b"'", 1)
    return data + b"\n---\n" + data[: len(data) // 2]


def _yaml_text_tweak(text: str, rng: random.Random) -> str:
    """YAML-only spellings: tags, merge keys, anchors, explicit keys, documents."""
    lines = text.split("\n")
    i = rng.randrange(len(lines))
    line = lines[i]
    op = rng.randrange(7)
    if ": " in line:
        head, _, tail = line.partition(": ")
        if op == 0:
            tag = rng.choice(("!!str", "!!int", "!!binary", "!!timestamp", "!!float", "!!set"))
            lines[i] = f"{head}: {tag} {tail}"
        elif op == 1:
            lines[i] = f"{head}: &x {tail}"
            indent = head[: len(head) - len(head.lstrip(" -"))]
            lines.insert(i + 1, " " * len(indent) + "dup: *x")
        elif op == 2:
            lines[i] = f"{head}: {rng.choice(('~', 'null', 'yes', 'off', '.nan', '.inf', '0o17'))}"
        elif op == 3:
            lines.insert(i + 1, f"{head}: {tail}")  # duplicate key
        elif op == 4:
            lines[i] = f"{head}: {{<<: {{a: 1}}}}"
        elif op == 5:
            lines[i] = f"? [{tail}]\n: x"
        else:
            lines[i] = f"{head}: *undefined"
    else:
        lines.insert(i, rng.choice(("---", "...", "%YAML 1.1", "%TAG ! tag:x,2000:", "- - - - x")))
    return "\n".join(lines)


# --------------------------------------------------------------------------- per target


def _docs_mutation(data: bytes, rng: random.Random) -> bytes | None:
    parsed = parse_docs(data)
    if parsed is None:
        return None
    docs, fmt = parsed
    pool = [v for d in docs for c, k in _nodes(d)[:400] if isinstance(v := c[k], dict | list)]
    if not docs:
        docs = [{}]
    i = rng.randrange(len(docs))
    docs[i] = mutate_tree(docs[i], rng, pool)
    if rng.random() < 0.2:
        docs[i] = mutate_tree(docs[i], rng, pool)
    if fmt == "json" and len(docs) == 1 and rng.random() < 0.85:
        return _dump_json(docs[0], rng).encode("utf-8", "surrogatepass")
    text = _dump_yaml(docs, rng)
    if rng.random() < 0.15:
        text = _yaml_text_tweak(text, rng)
    return text.encode("utf-8", "surrogatepass")


FLAG_VALUE_FOR: dict[str, tuple[str, ...]] = {
    "--mode": ("iptables", "nftables", "ipvs", "", "IPTABLES"),
    "--proxy-mode": ("iptables", "nftables", "kernelspace", ""),
    "--hostname-override": ("node-a", "node-b", "Node-A", " node-a ", "", "a" * 254, "$(NODE)"),
    "--cluster-cidr": ("10.244.0.0/16", "10.244.0.0/16,fd00::/64", "10.0.0.0/33", "", ","),
    "--nodeport-addresses": ("primary", "10.0.0.0/8", "primary,10.0.0.0/8", "127.0.0.0/8", ""),
    "--state": ("{state}", "-", "", "{state}/x", "."),
    "--config": ("{config}", "", "."),
    "--v": ("0", "4", "-1", "٣", "²", "1" * 30),
}


def _argv_mutation(argv: list[str], rng: random.Random, flags: tuple[str, ...]) -> list[str]:
    """Mostly well-formed changes (a flag's value, a flag added, repeated or spelled
    ``--flag=value``), sometimes garbage: a command line that argparse refuses tests
    little past argparse."""
    op = rng.randrange(12)
    value_at = [i for i in range(1, len(argv)) if argv[i - 1] in FLAG_VALUE_FOR]
    if op < 4 and value_at:
        i = rng.choice(value_at)
        choices = FLAG_VALUE_FOR[argv[i - 1]]
        if rng.random() < 0.7:
            argv[i] = rng.choice(choices)
        else:
            v = _string_variant(argv[i], rng)
            argv[i] = v if isinstance(v, str) else str(v)
    elif op < 6:
        flag = rng.choice(flags)
        values = FLAG_VALUE_FOR.get(flag)
        value = rng.choice(values) if values else rng.choice(FLAG_VALUES)
        if rng.random() < 0.5:
            argv += [flag, value] if values or rng.random() < 0.5 else [flag]
        else:
            argv.append(f"{flag}={value}")
    elif op == 6 and value_at:
        i = rng.choice(value_at)
        argv[i - 1 : i + 1] = [f"{argv[i - 1]}={argv[i]}"]
    elif op == 7 and value_at:
        i = rng.choice(value_at)
        argv += [argv[i - 1], rng.choice(FLAG_VALUE_FOR[argv[i - 1]])]
    elif op == 8 and argv:
        del argv[rng.randrange(len(argv))]
    elif op == 9:
        argv.insert(rng.randrange(len(argv) + 1), rng.choice(STRINGS))
    elif op == 10 and argv:
        j = rng.randrange(len(argv))
        argv[j] = argv[j] + "=" + rng.choice(FLAG_VALUES)
    else:
        argv.insert(rng.randrange(len(argv) + 1), rng.choice(FLAG_VALUES))
    return argv


def _split_marker(data: bytes, marker: bytes) -> tuple[list[str] | None, bytes]:
    if not data.startswith(marker):
        return None, data
    first, _, rest = data.partition(b"\n")
    try:
        argv = json.loads(first[len(marker) :])
    except (ValueError, RecursionError):
        return None, rest
    if not isinstance(argv, list):
        return None, rest
    return [str(a) for a in argv], rest


def _with_marker(marker: bytes, argv: list[str], body: bytes) -> bytes:
    return marker + json.dumps(argv).encode() + b"\n" + body


def mutate_state(data: bytes, rng: random.Random) -> bytes | None:
    return _docs_mutation(data, rng)


def mutate_kubeconfig(data: bytes, rng: random.Random) -> bytes | None:
    head = b""
    if data.startswith(b"#master "):
        first, _, data = data.partition(b"\n")
        head = first + b"\n"
    if rng.random() < 0.1:
        if head:
            return data
        return b"#master " + rng.choice(FLAG_VALUES).encode("utf-8", "surrogatepass") + b"\n" + data
    out = _docs_mutation(data, rng)
    return None if out is None else head + out


def mutate_options(data: bytes, rng: random.Random) -> bytes | None:
    argv, body = _split_marker(data, b"#argv ")
    if argv is None and rng.random() < 0.1:
        return _with_marker(b"#argv ", ["--config", "{config}"], data)
    if argv is not None and rng.random() < 0.3:
        return _with_marker(b"#argv ", _argv_mutation(argv, rng, FLAGS[8:]), body)
    out = _docs_mutation(body, rng)
    if out is None:
        return None
    return out if argv is None else _with_marker(b"#argv ", argv, out)


def mutate_cli(data: bytes, rng: random.Random) -> bytes | None:
    argv, _ = _split_marker(data, b"#argv ")
    if argv is None:
        argv = ["--state", "{state}", "--mode", "iptables", "--hostname-override", "node-a"]
    for _ in range(rng.choice((1, 1, 2, 3))):
        argv = _argv_mutation(argv, rng, CLI_FLAGS)
    return _with_marker(b"#argv ", argv, b"")


AGENT_KINDS = (b"Service", b"EndpointSlice", b"Node")


def mutate_agent(data: bytes, rng: random.Random) -> bytes | None:
    lines = data.split(b"\n")
    i = rng.randrange(len(lines))
    head = lines[i].split(b" ", 2)
    if len(head) == 3 and head[0] in AGENT_KINDS:
        prefix, payload = head[0] + b" " + head[1] + b" ", head[2]
    else:
        prefix, payload = b"", lines[i]
    op = rng.randrange(10)
    if op == 0:
        lines.insert(i, lines[i])
    elif op == 1 and len(lines) > 1:
        del lines[i]
    elif op == 2:
        j = rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    elif op == 3 and prefix:
        kind = rng.choice(AGENT_KINDS)
        verb = rng.choice((b"list", b"watch"))
        lines[i] = kind + b" " + verb + b" " + payload
    elif op == 4 and prefix:
        try:
            obj = json.loads(payload)
        except (ValueError, RecursionError):
            return None
        if isinstance(obj, dict) and isinstance(obj.get("object"), dict):
            obj["type"] = rng.choice(("ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR", "X"))
            lines[i] = prefix + _dump_json(obj, rng).encode("utf-8", "surrogatepass")
        else:
            return None
    elif op == 5:
        cut = rng.randrange(len(payload) + 1)
        lines[i] = prefix + payload[:cut]  # a stream cut mid-event
    else:
        parsed = parse_docs(payload)
        if parsed is None or len(parsed[0]) != 1:
            return None
        root = parsed[0][0]
        pool = [v for c, k in _nodes(root)[:400] if isinstance(v := c[k], dict | list)]
        tree = mutate_tree(root, rng, pool)
        lines[i] = prefix + _dump_json(tree, rng).encode("utf-8", "surrogatepass")
    return b"\n".join(lines)


def dictionary() -> str:
    """A libFuzzer ``-dict`` file: the keys, flags and values above as tokens, so that the
    byte-level mutations splice them in too."""
    tokens = {*KEYS, *FLAGS, *(v for v in STRINGS if 0 < len(v) <= 64), *FLAG_VALUES}
    tokens |= {f'"{k}": ' for k in KEYS} | {f"{k}: " for k in KEYS}
    lines = []
    for t in sorted(tokens):
        raw = t.encode("utf-8", "surrogatepass")
        if not raw or len(raw) > 64:
            continue
        esc = "".join(
            chr(b) if 0x20 <= b < 0x7F and b not in (0x22, 0x5C) else f"\\x{b:02x}" for b in raw
        )
        lines.append(f'"{esc}"')
    return "\n".join(lines) + "\n"


MUTATORS: dict[str, Callable[[bytes, random.Random], bytes | None]] = {
    "state": mutate_state,
    "agent": mutate_agent,
    "kubeconfig": mutate_kubeconfig,
    "options": mutate_options,
    "cli": mutate_cli,
}


def mutate(
    target: str,
    data: bytes,
    max_size: int,
    seed: int,
    byte_mutate: ByteMutator,
    structured: float = 0.5,
) -> bytes:
    """libFuzzer's custom mutator: structure-aware with probability ``structured``, else
    (or when the input does not parse) libFuzzer's own byte mutations."""
    rng = random.Random(seed)
    out: bytes | None = None
    if rng.random() < structured:
        try:
            out = MUTATORS[target](data, rng)
        except Exception:  # a mutator must never end the run (PyYAML has bugs of its own)
            out = None
        if out is not None and rng.random() < 0.1:
            out = _bytes_tweak(out, rng)
    if out is None or len(out) > max_size:
        out = byte_mutate(data, max_size)
    return out
