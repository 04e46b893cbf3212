"""Bounded reading of YAML and JSON from outside: state files, kubeconfigs, config files.

Every reader of outside documents goes through here, so each has the same bounds:

* size: the caller's byte limit, read with one bounded ``read`` (never the whole of an
  endless stream);
* encoding: UTF-8, with the line and byte of the first invalid sequence;
* depth: :data:`MAX_DEPTH` levels of mappings and lists (a Service is 6 deep);
* YAML aliases: a document may expand to at most :data:`MAX_ALIAS_EXPANSION` times the
  nodes it writes (plus :data:`ALIAS_ALLOWANCE`): anchors for reuse are fine, a 600-byte
  alias bomb that expands to billions of nodes is refused before anything is built;
* numbers: an integer of more than 4,300 digits (Python's int/str limit) is an error, not
  a crash.

YAML is checked event by event (libyaml, nothing built) before any object is constructed:
the C loader builds nested nodes recursively, and deep enough input would crash the
process, not raise. Problems come back as :class:`DocumentError`, a ``ValueError`` whose
message names the source and, where known, the line.
"""

from __future__ import annotations

import json
from typing import IO, Any

import yaml

from proxy import apivalidation as av

MAX_DEPTH = 100
"""Deepest nesting of mappings and lists accepted in a document."""
MAX_ALIAS_EXPANSION = 10
ALIAS_ALLOWANCE = 100_000

Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class DocumentError(ValueError):
    """The document cannot be read within the bounds; the message says where and why."""


class JsonSyntaxError(DocumentError):
    """Not JSON at all (the text may still be YAML)."""


READ_CHUNK = 1 << 20


def read_limited(stream: IO[bytes], limit: int, source: str) -> str:
    """At most ``limit`` bytes of ``stream`` as UTF-8 text, read a chunk at a time (a
    single ``read(limit)`` would reserve the whole limit up front)."""
    chunks: list[bytes] = []
    size = 0
    while chunk := stream.read(min(READ_CHUNK, limit + 1 - size)):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise DocumentError(f"{source}: larger than {_size(limit)}")
    return decode(b"".join(chunks), source)


def read_file(path: str, limit: int, source: str) -> str:
    """The file at ``path`` (at most ``limit`` bytes, UTF-8); OSError propagates."""
    with open(path, "rb") as f:
        return read_limited(f, limit, source)


def decode(raw: bytes, source: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        bad = raw[exc.start : exc.start + 1]
        raise DocumentError(
            f"{source}:{line}: not UTF-8 (byte {exc.start}: {bad!r}); the file must be UTF-8 text"
        ) from None


def _size(limit: int) -> str:
    return f"{limit // (1024 * 1024)} MiB" if limit >= 1024 * 1024 else f"{limit} bytes"


def check_depth(root: Any, source: str) -> None:
    """Refuse data nested deeper than :data:`MAX_DEPTH` (walked without recursion)."""
    stack: list[tuple[Any, int]] = [(root, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth = pop()
        if depth > MAX_DEPTH:
            raise DocumentError(f"{source}: nested more than {MAX_DEPTH} levels deep")
        if type(node) is dict or type(node) is list:
            for value in node.values() if type(node) is dict else node:
                if type(value) is dict or type(value) is list:
                    push((value, depth + 1))


def check_yaml(text: str, source: str) -> None:
    """Walk the YAML events and refuse excessive depth or alias expansion (see module)."""
    stack: list[list[Any]] = []  # [anchor, expanded size] of each open collection
    sizes: dict[str, int] = {}
    events = total = 0
    try:
        for event in yaml.parse(text, Loader=Loader):
            events += 1
            if isinstance(event, yaml.CollectionStartEvent):
                stack.append([event.anchor, 1])
                if len(stack) > MAX_DEPTH:
                    raise DocumentError(
                        f"{source}:{_line(event)}: nested more than {MAX_DEPTH} levels deep"
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
                raise DocumentError(
                    f"{source}:{_line(event)}: YAML aliases expand the document "
                    f"more than {MAX_ALIAS_EXPANSION}-fold; write the values out"
                )
    except yaml.YAMLError as exc:
        raise DocumentError(yaml_problem(exc, source)) from None


def _line(event: yaml.Event) -> int:
    mark = event.start_mark
    return mark.line + 1 if mark is not None else 0


def yaml_problem(exc: yaml.YAMLError, source: str) -> str:
    """``source:line:column: problem`` for a YAML parse error."""
    mark = getattr(exc, "problem_mark", None)
    where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
    problem = getattr(exc, "problem", None) or str(exc)
    return f"{where}: not valid YAML/JSON ({av.printable(str(problem), 200)})"


def value_problem(exc: BaseException) -> str:
    """An error raised while building values (e.g. ``!!timestamp x``), in words."""
    if "integer string conversion" in str(exc):
        return "a number of more than 4,300 digits"
    if isinstance(exc, RecursionError):
        return f"nested more than {MAX_DEPTH} levels deep"
    text = str(exc)
    if not isinstance(exc, ValueError):
        text = f"a value its tag cannot hold ({type(exc).__name__}: {text})"
    return av.printable(text, 200)


def load_json(text: str, source: str) -> Any:
    """``json.loads`` within the bounds; DocumentError otherwise (JSONDecodeError too)."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"{source}:{exc.lineno}:{exc.colno}"
        raise JsonSyntaxError(f"{where}: not valid JSON ({exc.msg})") from None
    except (ValueError, RecursionError) as exc:
        raise DocumentError(f"{source}: not valid JSON ({value_problem(exc)})") from None
    check_depth(doc, source)
    return doc


def load_yaml_all(text: str, source: str, loader: Any = Loader) -> list[Any]:
    """Every document of a YAML stream, checked first (see module), built with ``loader``."""
    check_yaml(text, source)
    try:
        return list(yaml.load_all(text, Loader=loader))
    except yaml.YAMLError as exc:
        raise DocumentError(yaml_problem(exc, source)) from None
    except Exception as exc:  # PyYAML's constructors raise anything on a bad tagged value
        raise DocumentError(f"{source}: not valid YAML ({value_problem(exc)})") from None
