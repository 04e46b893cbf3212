"""A manifest file as a source: what ``kubectl get -o yaml`` prints.

YAML or JSON, one or many documents, each an object or a ``List`` (``kind: List`` or any
``*List`` with ``items``). Services, EndpointSlices and Nodes are parsed; other kinds are
reported as ignored. Objects that fail validation are reported and skipped.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from proxy import apivalidation as av
from proxy import documents
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
MAX_LIST_NESTING = 8
"""A ``List`` inside a ``List`` … at most this deep."""


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


def read_documents(text: str, source: str) -> list[Mapping[str, Any]]:
    """Every object in a YAML/JSON text, within :mod:`proxy.documents`' bounds; raises
    StateFileError with the line on bad input.

    JSON (what ``kubectl get -o json`` prints) goes through the json module first: it is
    two orders of magnitude faster than a YAML parser on a large cluster's state.
    """
    hint = "; give the output of `kubectl get svc,endpointslices,nodes -A -o yaml`"
    try:
        if text.lstrip().startswith(("{", "[")):
            try:
                return list(_objects(documents.load_json(text, source), f"{source} document 1"))
            except documents.JsonSyntaxError:
                pass  # maybe YAML flow style; let the YAML parser report problems
        docs = documents.load_yaml_all(text, source)
    except documents.DocumentError as exc:
        raise StateFileError(f"{exc}{hint}") from None
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
            meta = meta if isinstance(meta, Mapping) else {}
            name, ns = meta.get("name", "?"), meta.get("namespace", "")
            where = f"{ns}/{name}" if isinstance(ns, str) and ns else str(name)
            kind_text = kind if isinstance(kind, str) and kind else "<no kind>"
            ignored.append(av.printable(f"{kind_text} {where}"[:300], 200))
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


def load_state(
    path: str, node_name: str, node_port_range: tuple[int, int] = DEFAULT_NODE_PORT_RANGE
) -> LoadedState:
    """Load a state file (``-`` for stdin), at most :data:`MAX_STATE_BYTES`."""
    source = "<stdin>" if path == "-" else av.printable(path, 200)
    try:
        if path == "-":
            text = documents.read_limited(sys.stdin.buffer, MAX_STATE_BYTES, source)
        else:
            text = documents.read_file(path, MAX_STATE_BYTES, source)
    except documents.DocumentError as exc:
        raise StateFileError(str(exc)) from None
    except FileNotFoundError as exc:
        raise StateFileError(f"{source}: no such file") from exc
    except OSError as exc:
        raise StateFileError(f"{source}: cannot read: {exc.strerror or exc}") from exc
    return build_state(read_documents(text, source), node_name, node_port_range)
