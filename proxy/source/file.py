"""A manifest file as a source: what ``kubectl get -o yaml`` prints.

YAML or JSON, one or many documents, each an object or a ``List`` (``kind: List`` or any
``*List`` with ``items``). Services, EndpointSlices and Nodes are parsed; other kinds are
reported as ignored. Objects that fail validation are reported and skipped.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from proxy import apivalidation as av
from proxy.model import (
    EndpointSlice,
    Node,
    ObjectRef,
    Problem,
    Service,
    parse_endpoint_slice,
    parse_node,
    parse_service,
)
from proxy.plan import Snapshot


class StateFileError(ValueError):
    """The file cannot be read as Kubernetes manifests at all."""


@dataclass(frozen=True)
class LoadedState:
    snapshot: Snapshot
    problems: tuple[Problem, ...]
    ignored: tuple[str, ...]
    """Objects of kinds we do not use (e.g. ``Deployment default/my-nginx``)."""
    nodes: tuple[Node, ...] = ()


MAX_STATE_BYTES = 512 * 1024 * 1024
"""The largest state file read (``kubectl get -o json`` of 30,000 Services with their
slices is well under this)."""
MAX_DEPTH = 100
"""Deepest nesting of mappings and lists accepted in a document (a Service is 6 deep)."""
MAX_LIST_NESTING = 8
"""A ``List`` inside a ``List`` … at most this deep."""
MAX_ALIAS_EXPANSION = 10
"""YAML aliases may make a document at most this many times larger (plus
:data:`ALIAS_ALLOWANCE` nodes) than the events written: anchors for reuse are fine, an
alias bomb (600 bytes that expand to billions of nodes) is refused before it is built."""
ALIAS_ALLOWANCE = 100_000


def _objects(doc: Any, where: str) -> Iterator[Mapping[str, Any]]:
    """The objects of one document: itself, or the items of a ``*List`` (nested Lists too,
    to :data:`MAX_LIST_NESTING` levels), iteratively."""
    pending: list[tuple[Any, str, int]] = [(doc, where, 0)]
    while pending:
        item, at, nesting = pending.pop()
        if item is None:
            continue
        if not isinstance(item, Mapping):
            raise StateFileError(
                f"{at}: expected a Kubernetes object (a mapping with apiVersion/kind), "
                f"got {av.show(item)}"
            )
        kind = item.get("kind")
        items = item.get("items")
        if isinstance(kind, str) and kind.endswith("List") and isinstance(items, list):
            if nesting >= MAX_LIST_NESTING:
                raise StateFileError(f"{at}: Lists nested more than {MAX_LIST_NESTING} deep")
            subs = [(sub, f"{at} items[{i}]", nesting + 1) for i, sub in enumerate(items)]
            pending.extend(reversed(subs))
            continue
        yield item


def _check_depth(root: Any, where: str) -> None:
    """Refuse a document nested deeper than :data:`MAX_DEPTH` (walked without recursion)."""
    stack: list[tuple[Any, int]] = [(root, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth = pop()
        if depth > MAX_DEPTH:
            raise StateFileError(f"{where}: nested more than {MAX_DEPTH} levels deep")
        for value in node.values() if type(node) is dict else node:
            if type(value) is dict or type(value) is list:
                push((value, depth + 1))


def _check_yaml(text: str, source: str) -> None:
    """Walk the YAML events (libyaml, nothing built) and refuse what would be too deep or
    would expand without bound through aliases, before any object is constructed (the C
    loader builds nested nodes recursively: deep enough input would crash the process)."""
    stack: list[list[Any]] = []  # [anchor, expanded size] of each open collection
    sizes: dict[str, int] = {}
    events = total = 0
    for event in yaml.parse(text, Loader=_Loader):
        events += 1
        added = 0
        if isinstance(event, yaml.CollectionStartEvent):
            stack.append([event.anchor, 1])
            if len(stack) > MAX_DEPTH:
                raise StateFileError(
                    f"{source}:{event.start_mark.line + 1}: nested more than {MAX_DEPTH} "
                    "levels deep"
                )
            total += 1
            continue
        if isinstance(event, yaml.CollectionEndEvent):
            anchor, size = stack.pop()
            if anchor:
                sizes[anchor] = size
            if stack:
                stack[-1][1] += size
            continue
        if isinstance(event, yaml.ScalarEvent):
            added = 1
            if event.anchor:
                sizes[event.anchor] = 1
        elif isinstance(event, yaml.AliasEvent):
            added = sizes.get(event.anchor or "", 1)
        else:
            continue
        if stack:
            stack[-1][1] += added
        total += added
        if total > MAX_ALIAS_EXPANSION * events + ALIAS_ALLOWANCE:
            raise StateFileError(
                f"{source}:{event.start_mark.line + 1}: YAML aliases expand the document more "
                f"than {MAX_ALIAS_EXPANSION}-fold; write the objects out (as kubectl does)"
            )


_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _value_error(exc: BaseException) -> str:
    if "integer string conversion" in str(exc):
        return "a number of more than 4,300 digits; ports are 1-65535"
    return av.printable(str(exc), 200)


def read_documents(text: str, source: str) -> list[Mapping[str, Any]]:
    """Every object in a YAML/JSON text; raises StateFileError with the line on bad YAML.

    JSON (what ``kubectl get -o json`` prints) goes through the json module first: it is
    two orders of magnitude faster than a YAML parser on a large cluster's state. Both are
    bounded: :data:`MAX_DEPTH` levels, and YAML aliases by :data:`MAX_ALIAS_EXPANSION`.
    """
    if text.lstrip().startswith(("{", "[")):
        try:
            doc = json.loads(text)
        except RecursionError:
            raise StateFileError(f"{source}: nested more than {MAX_DEPTH} levels deep") from None
        except json.JSONDecodeError:
            pass  # maybe YAML flow style; let the YAML parser report problems
        except ValueError as exc:  # an integer of more than 4,300 digits
            raise StateFileError(f"{source}: not valid JSON ({_value_error(exc)})") from None
        else:
            _check_depth(doc, source)
            return list(_objects(doc, f"{source} document 1"))
    try:
        _check_yaml(text, source)
        docs = list(yaml.load_all(text, Loader=_Loader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise StateFileError(
            f"{where}: not valid YAML/JSON ({problem}); "
            "give the output of `kubectl get svc,endpointslices,nodes -A -o yaml`"
        ) from exc
    except StateFileError:
        raise
    except (ValueError, RecursionError) as exc:  # an integer of more than 4,300 digits
        raise StateFileError(f"{source}: not valid YAML ({_value_error(exc)})") from None
    out: list[Mapping[str, Any]] = []
    for i, doc in enumerate(docs):
        out.extend(_objects(doc, f"{source} document {i + 1}"))
    return out


DEFAULT_NODE_PORT_RANGE = (30000, 32767)
"""kube-apiserver's ``--service-node-port-range`` default."""


def _node_port_problems(svc: Service, low: int, high: int) -> list[Problem]:
    """The API server allocates nodePorts and healthCheckNodePorts from its node port range
    and refuses others (e.g. ``nodePort: 22``); a state file is held to the same range."""
    out: list[Problem] = []
    for i, sp in enumerate(svc.ports):
        if sp.node_port is not None and not low <= sp.node_port <= high:
            out.append(
                Problem(
                    svc.ref,
                    f"spec.ports[{i}].nodePort",
                    f"{sp.node_port} is outside the node port range {low}-{high} "
                    "(--service-node-port-range)",
                )
            )
    hc = svc.health_check_node_port
    if hc is not None and not low <= hc <= high:
        out.append(
            Problem(
                svc.ref,
                "spec.healthCheckNodePort",
                f"{hc} is outside the node port range {low}-{high} (--service-node-port-range)",
            )
        )
    return out


def build_state(
    objects: Iterable[Mapping[str, Any]],
    node_name: str,
    node_port_range: tuple[int, int] = DEFAULT_NODE_PORT_RANGE,
) -> LoadedState:
    services: list[Service] = []
    slices: list[EndpointSlice] = []
    nodes: list[Node] = []
    problems: list[Problem] = []
    ignored: list[str] = []
    for obj in objects:
        kind = obj.get("kind")
        if kind == "Service":
            svc, probs = parse_service(obj)
            if svc is not None:
                probs = _node_port_problems(svc, *node_port_range)
                if not probs:
                    services.append(svc)
            problems += probs
        elif kind == "EndpointSlice":
            sl, probs = parse_endpoint_slice(obj)
            problems += probs
            if sl is not None:
                slices.append(sl)
        elif kind == "Node":
            node, probs = parse_node(obj)
            problems += probs
            if node is not None:
                nodes.append(node)
        else:
            meta = obj.get("metadata")
            name = meta.get("name", "?") if isinstance(meta, Mapping) else "?"
            ns = meta.get("namespace", "") if isinstance(meta, Mapping) else ""
            shown = av.printable(f"{kind or '<no kind>'} {ns + '/' if ns else ''}{name}", 200)
            ignored.append(shown)
    seen: dict[tuple[str, str, str], ObjectRef] = {}
    unique_services: list[Service] = []
    for svc in services:
        key = ("Service", svc.namespace, svc.name)
        if key in seen:
            problems.append(Problem(svc.ref, "metadata.name", "duplicate Service; first one kept"))
            continue
        seen[key] = svc.ref
        unique_services.append(svc)
    unique_slices: list[EndpointSlice] = []
    for sl in slices:
        key = ("EndpointSlice", sl.namespace, sl.name)
        if key in seen:
            problems.append(
                Problem(sl.ref, "metadata.name", "duplicate EndpointSlice; first one kept")
            )
            continue
        seen[key] = sl.ref
        unique_slices.append(sl)
    node = next((n for n in nodes if n.name == node_name), None)
    return LoadedState(
        snapshot=Snapshot(tuple(unique_services), tuple(unique_slices), node),
        problems=tuple(problems),
        ignored=tuple(ignored),
        nodes=tuple(nodes),
    )


def _decode(raw: bytes, source: str) -> str:
    if len(raw) > MAX_STATE_BYTES:
        raise StateFileError(
            f"{source}: larger than {MAX_STATE_BYTES // (1024 * 1024)} MiB; split it"
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise StateFileError(
            f"{source}:{line}: not UTF-8 (byte {exc.start}: {raw[exc.start : exc.start + 1]!r}); "
            "Kubernetes manifests are UTF-8"
        ) from None


def load_state(
    path: str, node_name: str, node_port_range: tuple[int, int] = DEFAULT_NODE_PORT_RANGE
) -> LoadedState:
    """Load a state file (``-`` for stdin), at most :data:`MAX_STATE_BYTES`."""
    if path == "-":
        source = "<stdin>"
        raw = sys.stdin.buffer.read(MAX_STATE_BYTES + 1)
    else:
        source = av.printable(path, 200)
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_STATE_BYTES + 1)
        except FileNotFoundError as exc:
            raise StateFileError(f"{source}: no such file") from exc
        except OSError as exc:
            raise StateFileError(f"{source}: cannot read: {exc.strerror or exc}") from exc
    objects = read_documents(_decode(raw, source), source)
    return build_state(objects, node_name, node_port_range)
