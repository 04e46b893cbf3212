"""Comments in rule text: outside names quoted as data, within the tool's length limit.

Both backends put Service names into double-quoted comments. A comment here is printable
ASCII only: anything else, and a backslash (iptables-restore reads it as an escape), becomes
``?``; ``"`` becomes ``'``; the text is cut to the tool's limit (nft: 128 characters,
iptables' xt_comment: 255), as upstream's fix for kubernetes/kubernetes#139515 does.
Comments are never keys: names that are (chains, sets) keep a hash of the whole name
(:mod:`proxy.naming`).
"""

from __future__ import annotations

import re

_UNSAFE = re.compile(r"[^\x20-\x7e]|\\")


def quotable(text: str, limit: int) -> str:
    """``text`` fit to stand between double quotes in a rule, at most ``limit`` long."""
    if (
        len(text) <= limit
        and text.isascii()
        and text.isprintable()
        and '"' not in text
        and "\\" not in text
    ):
        return text  # the usual case, checked in C (a full sync writes ~100,000 of them)
    return _UNSAFE.sub("?", text.replace('"', "'"))[:limit]
