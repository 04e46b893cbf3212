"""Go value syntax: the kinds of values upstream's flags and fields take, and their text.

Durations as Go's ``time.ParseDuration`` reads them, booleans as ``strconv.ParseBool``
(pflag's bool flags), integers with Go's base prefixes.
"""

from __future__ import annotations

import re
from enum import StrEnum

from proxy.config import ConfigError


class Kind(StrEnum):
    """The type of a flag's or a config field's value."""

    STRING = "string"
    BOOL = "bool"
    INT = "integer"
    NUMBER = "number"
    DURATION = "duration"
    STRING_LIST = "list of strings"
    BOOL_MAP = "map of booleans"
    LIST = "list"
    FLUSH = "duration or nanoseconds"
    QUANTITY = "quantity"


_DURATION_UNITS: dict[str, float] = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # U+00B5 micro sign, as Go accepts
    "μs": 1e-6,  # U+03BC Greek mu
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_NUMBER = re.compile(r"[0-9]*(?:\.[0-9]*)?")
_DURATION_UNIT = re.compile(r"[^0-9.]*")
_MAX_DURATION_SECONDS = (2**63 - 1) / 1e9
_DURATION_HINT = "use a number with a unit, e.g. 30s, 1m0s, 500ms or 1h2m3s (units ns us ms s m h)"
_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def parse_go_duration(text: str, what: str) -> float:
    """A Go ``time.Duration`` string ("30s", "1m0s", "1.5h", "-2ms", "0") in seconds."""
    sign = -1.0 if text.startswith("-") else 1.0
    body = text[1:] if text[:1] in ("+", "-") else text
    if body == "0":
        return 0.0
    if not body:
        raise ConfigError(f"{what}: {text!r} is not a duration; {_DURATION_HINT}")
    total = 0.0
    pos = 0
    while pos < len(body):
        number = _match(_DURATION_NUMBER, body, pos)
        if number in ("", "."):
            raise ConfigError(
                f"{what}: {text!r} is not a duration (expected a number at "
                f"{body[pos:]!r}); {_DURATION_HINT}"
            )
        pos += len(number)
        unit = _match(_DURATION_UNIT, body, pos)
        if unit not in _DURATION_UNITS:
            problem = f"unknown unit {unit!r}" if unit else f"missing unit after {number!r}"
            raise ConfigError(f"{what}: {text!r} is not a duration ({problem}); {_DURATION_HINT}")
        pos += len(unit)
        total += float(number) * _DURATION_UNITS[unit]
    if total > _MAX_DURATION_SECONDS:
        raise ConfigError(f"{what}: {text!r} is out of range (Go durations stop at ~292 years)")
    return sign * total


def _match(pattern: re.Pattern[str], text: str, pos: int) -> str:
    found = pattern.match(text, pos)
    return found.group() if found is not None else ""


def parse_go_bool(text: str, what: str) -> bool:
    if text in _GO_TRUE:
        return True
    if text in _GO_FALSE:
        return False
    raise ConfigError(f"{what}: {text!r} is not a boolean; use true or false")


def parse_go_int(text: str, what: str) -> int:
    try:
        return int(text.strip(), 0)
    except ValueError:
        raise ConfigError(f"{what}: {text!r} is not an integer") from None


def parse_text(kind: Kind, text: str, what: str) -> object:
    """A flag's (or a default's) text as the value its kind compares by."""
    if kind is Kind.BOOL:
        return parse_go_bool(text, what)
    if kind in (Kind.DURATION, Kind.FLUSH):
        return parse_go_duration(text, what)
    if kind in (Kind.INT, Kind.NUMBER):
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{what}: {text!r} is not a number") from None
    return text
