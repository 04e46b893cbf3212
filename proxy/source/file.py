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
from pathlib import Path
from typing import Any

import yaml

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


def _objects(doc: Any, where: str) -> Iterator[Mapping[str, Any]]:
    if doc is None:
        return
    if not isinstance(doc, Mapping):
        raise StateFileError(
            f"{where}: expected a Kubernetes object (a mapping with apiVersion/kind), "
            f"got {type(doc).__name__}"
        )
    kind = doc.get("kind")
    items = doc.get("items")
    if isinstance(kind, str) and kind.endswith("List") and isinstance(items, list):
        for i, item in enumerate(items):
            yield from _objects(item, f"{where} items[{i}]")
        return
    yield doc


_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_documents(text: str, source: str) -> list[Mapping[str, Any]]:
    """Every object in a YAML/JSON text; raises StateFileError with the line on bad YAML.

    JSON (what ``kubectl get -o json`` prints) goes through the json module first: it is
    two orders of magnitude faster than a YAML parser on a large cluster's state.
    """
    if text.lstrip().startswith(("{", "[")):
        try:
            return list(_objects(json.loads(text), f"{source} document 1"))
        except json.JSONDecodeError:
            pass  # maybe YAML flow style; let the YAML parser report problems
    try:
        docs = list(yaml.load_all(text, Loader=_Loader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise StateFileError(
            f"{where}: not valid YAML/JSON ({problem}); "
            "give the output of `kubectl get svc,endpointslices,nodes -A -o yaml`"
        ) from exc
    out: list[Mapping[str, Any]] = []
    for i, doc in enumerate(docs):
        out.extend(_objects(doc, f"{source} document {i + 1}"))
    return out


def build_state(objects: Iterable[Mapping[str, Any]], node_name: str) -> LoadedState:
    services: list[Service] = []
    slices: list[EndpointSlice] = []
    nodes: list[Node] = []
    problems: list[Problem] = []
    ignored: list[str] = []
    for obj in objects:
        kind = obj.get("kind")
        if kind == "Service":
            svc, probs = parse_service(obj)
            problems += probs
            if svc is not None:
                services.append(svc)
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
            ignored.append(f"{kind or '<no kind>'} {ns + '/' if ns else ''}{name}")
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


def load_state(path: str, node_name: str) -> LoadedState:
    """Load a state file (``-`` for stdin)."""
    if path == "-":
        text = sys.stdin.read()
        source = "<stdin>"
    else:
        p = Path(path)
        try:
            text = p.read_text()
        except FileNotFoundError as exc:
            raise StateFileError(f"{path}: no such file") from exc
        except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
            raise StateFileError(f"{path}: cannot read: {exc}") from exc
        source = path
    return build_state(read_documents(text, source), node_name)
