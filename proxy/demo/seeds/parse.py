"""Pure helpers: typed command lines, and the outputs of nslookup, ping, curl, kubectl."""

from __future__ import annotations

import ipaddress
import re
import shlex
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from proxy.demo.seeds.notes import SEEDS, SeedsError
from proxy.lab import metallb


def seed_numbers(given: Sequence[int] | None) -> list[int]:
    """The seeds to run, in order, once each (all of them when none are given)."""
    if not given:
        return [s.number for s in SEEDS]
    known = {s.number for s in SEEDS}
    unknown = sorted(set(given) - known)
    if unknown:
        raise SeedsError(
            f"no seed {', '.join(map(str, unknown))}: the notes are numbered "
            f"{min(known)} to {max(known)}"
        )
    return sorted(set(given))


def split_pipeline(line: str) -> list[str]:
    """A shell line split at the ``|`` that are outside quotes."""
    parts: list[str] = []
    quote = ""
    start = 0
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "|":
            parts.append(line[start:i].strip())
            start = i + 1
    parts.append(line[start:].strip())
    return parts


def find_substitution(line: str) -> tuple[int, int] | None:
    """The span of the first ``$( ... )`` outside single quotes, ``$(`` to ``)``."""
    quote = ""
    i = 0
    while i < len(line):
        ch = line[i]
        if quote == "'":
            quote = "" if ch == "'" else quote
        elif ch == "'":
            quote = "'"
        elif line.startswith("$(", i):
            depth = 0
            inner_quote = ""
            for j in range(i + 1, len(line)):
                c = line[j]
                if inner_quote:
                    inner_quote = "" if c == inner_quote else inner_quote
                elif c in "'\"":
                    inner_quote = c
                elif c == "(":
                    depth += 1
                elif c == ")":
                    depth -= 1
                    if depth == 0:
                        return i, j + 1
            raise ValueError(f"unbalanced $( in {line!r}")
        i += 1
    return None


def expand_substitutions(line: str, run: Callable[[str], str]) -> str:
    """``line`` with each ``$(command)`` replaced by ``run(command)``, stripped."""
    while (span := find_substitution(line)) is not None:
        start, end = span
        line = line[:start] + run(line[start + 2 : end - 1]).strip() + line[end:]
    return line


@dataclass(frozen=True)
class Typed:
    """A command line as a note types it: what runs, where, and an optional ``| grep``."""

    program: str
    """``kubectl``, or ``shell`` for ``kube-proxy-py lab shell TARGET -- COMMAND``."""
    args: tuple[str, ...]
    target: str = ""
    grep: str | None = None


def parse_typed(line: str) -> Typed:
    """``kubectl ...`` (or the notes' alias ``k``), ``kube-proxy-py lab kubectl -- ...``
    and ``kube-proxy-py lab shell TARGET -- ...``, each optionally ``| grep WORD``."""
    stages = split_pipeline(line)
    if len(stages) > 2:
        raise ValueError(f"one pipe at most: {line!r}")
    grep: str | None = None
    if len(stages) == 2:
        filt = shlex.split(stages[1])
        if len(filt) != 2 or filt[0] != "grep":
            raise ValueError(f"only `| grep WORD` can follow a command: {line!r}")
        grep = filt[1]
    words = shlex.split(stages[0])
    if words[:1] in (["kubectl"], ["k"]):
        return Typed("kubectl", tuple(words[1:]), grep=grep)
    if words[:3] == ["kube-proxy-py", "lab", "kubectl"]:
        rest = words[3:]
        return Typed("kubectl", tuple(rest[1:] if rest[:1] == ["--"] else rest), grep=grep)
    if words[:3] == ["kube-proxy-py", "lab", "shell"] and len(words) > 5 and words[4] == "--":
        return Typed("shell", tuple(words[5:]), target=words[3], grep=grep)
    raise ValueError(f"not a command a walkthrough runs: {line!r}")


def grep_lines(text: str, word: str) -> str:
    """The lines of ``text`` that contain ``word`` (``grep WORD``, fixed string)."""
    return "".join(ln for ln in text.splitlines(keepends=True) if word in ln)


def namespace_kubeconfig(admin: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    """A kubeconfig holding one context: the admin's cluster and user, ``namespace`` as
    the default namespace, made current. Listed before the admin kubeconfig in
    ``KUBECONFIG`` (kubectl merges the files; the first current-context wins), it gives
    kubectl a default namespace without copying any credential."""
    current = admin["current-context"]
    context = next(c["context"] for c in admin["contexts"] if c["name"] == current)
    name = f"{current}/{namespace}"
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "contexts": [
            {
                "name": name,
                "context": {
                    "cluster": context["cluster"],
                    "user": context["user"],
                    "namespace": namespace,
                },
            }
        ],
        "current-context": name,
    }


def without_kubeconfig_flag(argv: Sequence[str]) -> list[str]:
    """``argv`` without its ``--kubeconfig=...`` (which would override ``KUBECONFIG``)."""
    return [a for a in argv if not a.startswith("--kubeconfig=")]


API_PREFIX: Mapping[str, str] = {
    "namespaces": "/api/v1",
    "pods": "/api/v1",
    "services": "/api/v1",
    "endpointslices": "/apis/discovery.k8s.io/v1",
}


def api_path(
    resource: str, namespace: str | None = None, name: str | None = None, selector: str = ""
) -> str:
    """The API path of one object, or of a list filtered by a label selector."""
    path = API_PREFIX[resource]
    if namespace is not None:
        path += f"/namespaces/{urllib.parse.quote(namespace, safe='')}"
    path += f"/{resource}"
    if name is not None:
        path += f"/{urllib.parse.quote(name, safe='')}"
    if selector:
        path += "?" + urllib.parse.urlencode({"labelSelector": selector})
    return path


_NAME = re.compile(r"^Name:\s+(\S+?)\.?$")
_ADDRESS = re.compile(r"^Address(?: \d+)?:\s+([0-9a-fA-F.:]+)(?:\s|$)")
_CNAME = re.compile(r"^(\S+?)\.?\s+canonical name = (\S+?)\.?$")
_NOT_FOUND = re.compile(r"can't find (\S+?):? (NXDOMAIN|No answer|SERVFAIL)")


def nslookup_answers(output: str) -> dict[str, list[str]]:
    """Name -> addresses from busybox ``nslookup`` output (1.35's format, or the older
    ``Address 1: IP NAME``); the ``Server:`` block is not an answer."""
    answers: dict[str, list[str]] = {}
    name: str | None = None
    for raw in output.splitlines():
        line = raw.strip()
        if not line or line.startswith("Server:"):
            name = None
            continue
        if m := _NAME.match(line):
            name = m.group(1)
            answers.setdefault(name, [])
        elif name is not None and (m := _ADDRESS.match(line)) and m.group(1) not in answers[name]:
            answers[name].append(m.group(1))
    return answers


def nslookup_cnames(output: str) -> dict[str, str]:
    """Alias -> canonical name from ``nslookup`` output."""
    return {m.group(1): m.group(2) for ln in output.splitlines() if (m := _CNAME.match(ln))}


def nslookup_not_found(output: str) -> set[str]:
    """The names ``nslookup`` reports it could not find."""
    return {m.group(1) for m in _NOT_FOUND.finditer(output)}


@dataclass(frozen=True)
class PingSummary:
    name: str
    address: str
    transmitted: int
    received: int


def ping_summary(output: str) -> PingSummary | None:
    """What ``ping`` (busybox or iputils) says it pinged and how many replies came."""
    head = re.search(r"^PING (\S+) \(([0-9.]+)\)", output, re.M)
    stats = re.search(r"(\d+) packets transmitted, (\d+) (?:packets )?received", output)
    if not head or not stats:
        return None
    return PingSummary(head.group(1), head.group(2), int(stats.group(1)), int(stats.group(2)))


@dataclass(frozen=True)
class Answer:
    """One answer of the lab's nginx stand-in: ``<pod name> <client ip>:<port>``."""

    pod: str
    client: str
    port: int


_ANSWER = re.compile(r"^(\S+) ([0-9.]+):(\d+)\s*$")


def stand_in_answers(output: str) -> list[Answer]:
    return [
        Answer(m.group(1), m.group(2), int(m.group(3)))
        for ln in output.splitlines()
        if (m := _ANSWER.match(ln.strip()))
    ]


def env_vars(output: str) -> dict[str, str]:
    """``NAME=value`` lines (``env``'s output) as a dict."""
    pairs = (ln.split("=", 1) for ln in output.splitlines() if "=" in ln)
    return {k: v for k, v in pairs if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)}


def proxy_mode(config_conf: str) -> str:
    """The proxy mode a KubeProxyConfiguration (the ConfigMap's ``config.conf``) selects;
    empty means iptables, as for upstream kube-proxy on Linux."""
    config = yaml.safe_load(config_conf) or {}
    return str(config.get("mode") or "iptables")


def random_number(page: str) -> int | None:
    """The number the numbers-web page shows, if it got one."""
    m = re.search(r"Here it is: <b>(\d+)</b>", page)
    return int(m.group(1)) if m else None


def in_pool(address: str, pool: str = metallb.POOL_RANGE) -> bool:
    """Whether ``address`` is in a MetalLB range ``first-last``."""
    first, last = (ipaddress.IPv4Address(a) for a in pool.split("-"))
    try:
        return first <= ipaddress.IPv4Address(address) <= last
    except ValueError:
        return False


def table_rows(output: str) -> list[dict[str, str]]:
    """kubectl's default table output as rows keyed by column heading (columns are
    separated by two or more spaces; no cell is empty in the tables read here)."""
    lines = [ln for ln in output.splitlines() if ln.strip() and not ln.startswith("Warning:")]
    if not lines:
        return []
    header = re.split(r"\s{2,}", lines[0].strip())
    return [dict(zip(header, re.split(r"\s{2,}", ln.strip()), strict=False)) for ln in lines[1:]]


# --------------------------------------------------------------------------- presenting
