"""Structured logging: ``time level logger msg key=value …`` (logfmt), one line per event.

Call sites pass the object they acted on as ``extra={"object": "ns/name", …}``.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any

_STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


MAX_VALUE_CHARS = 8192
"""A value longer than this is cut (with a note): one log line stays one bounded line."""
_PLAIN = re.compile(r'[^ "=\\\x00-\x1f\x7f-\x9f\u2028\u2029]*')
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    c = match.group()
    return _ESCAPES.get(c) or f"\\u{ord(c):04x}"


def _fmt_value(value: Any, limit: int = MAX_VALUE_CHARS) -> str:
    """logfmt value: bare when it holds no space, quote, '=' or control character; else
    quoted with every such character escaped, so outside text (an object's name, a
    server's message) can never start a line of its own or a fake field."""
    text = str(value)
    if len(text) > limit:
        text = text[:limit] + f"... ({len(text) - limit} more characters)"
    if text and _PLAIN.fullmatch(text):
        return text
    return '"' + _UNSAFE.sub(_escape, text) + '"'


_UNSAFE = re.compile(r'["\\\x00-\x1f\x7f-\x9f\u2028\u2029]')


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [
            f"time={ts}.{int(record.msecs):03d}Z",
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"msg={_fmt_value(record.getMessage())}",
        ]
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                parts.append(f"{key}={_fmt_value(value)}")
        if record.exc_info:
            parts.append(f"exc={_fmt_value(self.formatException(record.exc_info), 65536)}")
        return " ".join(parts)


def setup(verbosity: int = 0, stream: Any = None) -> None:
    """Configure the root logger; ``-v`` levels map like klog's: 0 warning+info, ≥2 debug."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO)
