"""The grammar the rendered rule text must stay inside: the oracle for "no rule text
outside our grammar".

``iptables_violations`` checks an ``iptables-restore`` input, ``nft_violations`` an
``nft -f`` script, ``render_violations`` what ``kube-proxy-py render`` prints (``# ``
header lines, then either). Each returns a list of :class:`Violation` (empty: the text is
inside the grammar); ``check_*`` raise :class:`GrammarError` instead.

iptables-restore, line by line:

- ``*table``, ``:CHAIN - [0:0]``, ``-A|-I|-D CHAIN ARGS``, ``-X CHAIN``, ``COMMIT`` or a
  ``#`` comment line; rule lines only between ``*table`` and ``COMMIT``;
- chain names: 1-28 characters of ``[A-Za-z0-9_.-]`` not starting with ``-`` (iptables'
  limit is 28, XT_EXTENSION_MAXNAMELEN - 1);
- arguments: tokens without ``"`` or ``\\``, except that every ``--comment`` takes one
  double-quoted string without inner ``"`` or ``\\``, at most 255 bytes (xt_comment's
  256 with the NUL);

nft: ``add|flush|delete table|chain|set|map|rule|element`` statements on our table and
``#`` comment lines; chain/set/map names 1-255 bytes of nft's unquoted string syntax
(``[A-Za-z_.][A-Za-z0-9/_.-]*``); quoted strings only as ``comment "..."``, at most 128
bytes (NFTNL_UDATA_COMMENT_MAXLEN) without ``"``, ``\\`` or control characters; outside
quotes no ``#`` (starts a comment), no ``;`` outside braces (ends a statement), balanced
braces and printable ASCII only.

Both: no control character (below 0x20 except the newline ending each line, or 0x7f)
anywhere, header and comment lines included; no empty lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

IPT_COMMENT_MAX = 255
IPT_CHAIN_MAX = 28
NFT_COMMENT_MAX = 128
NFT_NAME_MAX = 255

_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")
_IPT_TABLE = re.compile(r"\*(nat|filter|mangle|raw|security)")
_IPT_CHAIN_NAME = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*")
_IPT_DECLARE = re.compile(r":(\S+) (-|ACCEPT|DROP) \[\d+:\d+\]")
_IPT_RULE = re.compile(r"(-[AID]) (\S+)(?: (.*))?")
_IPT_DELETE_CHAIN = re.compile(r"-X (\S+)")
_IPT_COMMENT_ARG = re.compile(r'(?:^|(?<= ))--comment "([^"\\]*)"(?= |$)')
_IPT_BAD_UNQUOTED = re.compile(r'["\\]|--comment(?= |$)')

_NFT_COMMENT = re.compile(r'(?:^|(?<= ))comment "([^"]*)"(?=[ ;}]|$)')
_NFT_BAD_UNQUOTED = re.compile(r'[^ -~]|["#\\]')
_NFT_STRUCT = re.compile(r"[{};]")
_NFT_NAME = re.compile(r"[A-Za-z_.][A-Za-z0-9/_.-]*")
_NFT_FAMILY = r"(?:ip|ip6|inet)"
_NFT_TABLE_STMT = re.compile(rf"(add|delete|flush) table {_NFT_FAMILY} (\S+)(?: (\{{.*\}}))?")
_NFT_OBJ_STMT = re.compile(
    rf"(add|delete|flush) (chain|set|map) {_NFT_FAMILY} (\S+) (\S+)(?: (\{{.*\}}))?"
)
_NFT_RULE_STMT = re.compile(rf"add rule {_NFT_FAMILY} (\S+) (\S+) (.+)")
_NFT_ELEMENT_STMT = re.compile(rf"(add|delete) element {_NFT_FAMILY} (\S+) (\S+) (\{{.*\}})")


@dataclass(frozen=True)
class Violation:
    rule: str
    """A short stable id (``ipt-comment-too-long``): findings are deduplicated by it."""
    line_no: int
    line: str
    detail: str

    def __str__(self) -> str:
        shown = self.line if len(self.line) <= 300 else self.line[:300] + "..."
        return f"line {self.line_no}: {self.rule}: {self.detail}: {shown!r}"


class GrammarError(AssertionError):
    def __init__(self, violations: list[Violation]) -> None:
        self.violations = violations
        more = f" (+{len(violations) - 1} more)" if len(violations) > 1 else ""
        super().__init__(f"{violations[0]}{more}")


def _lines(text: str) -> list[str]:
    """Lines as the tools read them: split at ``\\n`` only (``\\r``, U+2028 … are
    characters of a line, not line breaks)."""
    if not text:
        return []
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def _common(line_no: int, line: str, out: list[Violation]) -> None:
    m = _CONTROL.search(line)
    if m is not None:
        out.append(Violation("control-char", line_no, line, f"{m.group()!r} at {m.start()}"))
    if line == "":
        out.append(Violation("empty-line", line_no, line, "not in the grammar"))


def _ipt_chain(name: str, line_no: int, line: str, out: list[Violation]) -> None:
    if not _IPT_CHAIN_NAME.fullmatch(name):
        out.append(Violation("ipt-chain-name", line_no, line, f"bad chain name {name!r}"))
    elif len(name) > IPT_CHAIN_MAX:
        out.append(
            Violation(
                "ipt-chain-too-long", line_no, line, f"{len(name)} > {IPT_CHAIN_MAX} characters"
            )
        )


def _ipt_args(args: str, line_no: int, line: str, out: list[Violation]) -> None:
    """Tokens without quotes or backslashes; ``--comment`` followed by one quoted string."""
    parts = _IPT_COMMENT_ARG.split(args)
    # parts: text, comment, text, comment, ..., text
    for k, part in enumerate(parts):
        if k % 2:
            size = len(part.encode("utf-8", "surrogatepass"))
            if size > IPT_COMMENT_MAX:
                out.append(
                    Violation(
                        "ipt-comment-too-long", line_no, line, f"{size} > {IPT_COMMENT_MAX} bytes"
                    )
                )
            continue
        m = _IPT_BAD_UNQUOTED.search(part)
        if m is not None:
            what = "--comment needs one double-quoted string without '\"' or '\\'"
            rule = "ipt-comment-syntax" if "--comment" in part else "ipt-token"
            out.append(Violation(rule, line_no, line, f"{what}; unexpected {m.group()!r}"))
            return


def iptables_violations(text: str) -> list[Violation]:
    """Every way ``text`` leaves the iptables-restore grammar (see the module doc)."""
    out: list[Violation] = []
    table: str | None = None
    for i, line in enumerate(_lines(text), 1):
        _common(i, line, out)
        if line.startswith("#") or line == "":
            continue
        if line.startswith("*"):
            if not _IPT_TABLE.fullmatch(line):
                out.append(Violation("ipt-table", i, line, "bad table line"))
            if table is not None:
                out.append(Violation("ipt-structure", i, line, "table without COMMIT"))
            table = line[1:]
            continue
        if line == "COMMIT":
            if table is None:
                out.append(Violation("ipt-structure", i, line, "COMMIT outside a table"))
            table = None
            continue
        if table is None:
            out.append(Violation("ipt-structure", i, line, "rule line outside a table"))
        if line.startswith(":"):
            m = _IPT_DECLARE.fullmatch(line)
            if m is None:
                out.append(Violation("ipt-declare", i, line, "not ':CHAIN - [0:0]'"))
            else:
                _ipt_chain(m.group(1), i, line, out)
            continue
        m = _IPT_DELETE_CHAIN.fullmatch(line)
        if m is not None:
            _ipt_chain(m.group(1), i, line, out)
            continue
        m = _IPT_RULE.fullmatch(line)
        if m is None:
            out.append(Violation("ipt-line", i, line, "not a table, chain, rule or COMMIT line"))
            continue
        _ipt_chain(m.group(2), i, line, out)
        _ipt_args(m.group(3) or "", i, line, out)
    if table is not None:
        out.append(Violation("ipt-structure", 0, "", f"table {table} without COMMIT at the end"))
    return out


def _nft_name(name: str, line_no: int, line: str, out: list[Violation]) -> None:
    if not _NFT_NAME.fullmatch(name):
        out.append(Violation("nft-name", line_no, line, f"bad name {name!r}"))
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > NFT_NAME_MAX:
        out.append(Violation("nft-name-too-long", line_no, line, f"{size} > {NFT_NAME_MAX} bytes"))


def _nft_body(body: str, line_no: int, line: str, out: list[Violation]) -> None:
    """Quoted strings only as ``comment "..."``; outside them no '#', ';' only inside
    braces, braces balanced, printable ASCII."""
    parts = _NFT_COMMENT.split(body)
    depth = 0
    for k, part in enumerate(parts):
        if k % 2:
            size = len(part.encode("utf-8", "surrogatepass"))
            if size > NFT_COMMENT_MAX:
                out.append(
                    Violation(
                        "nft-comment-too-long", line_no, line, f"{size} > {NFT_COMMENT_MAX} bytes"
                    )
                )
            if "\\" in part:
                out.append(Violation("nft-comment-char", line_no, line, "backslash in a comment"))
            continue
        m = _NFT_BAD_UNQUOTED.search(part)
        if m is not None:
            c = m.group()
            rule = {'"': "nft-quote", "#": "nft-hash", "\\": "nft-backslash"}.get(c, "nft-char")
            out.append(Violation(rule, line_no, line, f"{c!r} outside a comment string"))
            return
        for m in _NFT_STRUCT.finditer(part):
            c = m.group()
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth < 0:
                    out.append(Violation("nft-braces", line_no, line, "unbalanced '}'"))
                    return
            elif depth == 0:
                out.append(Violation("nft-semicolon", line_no, line, "';' ends the statement"))
                return
    if depth != 0:
        out.append(Violation("nft-braces", line_no, line, "unbalanced '{'"))


def nft_violations(text: str) -> list[Violation]:
    """Every way ``text`` leaves the nft script grammar (see the module doc)."""
    out: list[Violation] = []
    for i, line in enumerate(_lines(text), 1):
        _common(i, line, out)
        if line.startswith("#") or line == "":
            continue
        m = _NFT_TABLE_STMT.fullmatch(line)
        if m is not None:
            _nft_name(m.group(2), i, line, out)
            _nft_body(m.group(3) or "", i, line, out)
            continue
        m = _NFT_OBJ_STMT.fullmatch(line)
        if m is not None:
            _nft_name(m.group(3), i, line, out)
            _nft_name(m.group(4), i, line, out)
            _nft_body(m.group(5) or "", i, line, out)
            continue
        m = _NFT_RULE_STMT.fullmatch(line)
        if m is not None:
            _nft_name(m.group(1), i, line, out)
            _nft_name(m.group(2), i, line, out)
            _nft_body(m.group(3), i, line, out)
            continue
        m = _NFT_ELEMENT_STMT.fullmatch(line)
        if m is not None:
            _nft_name(m.group(2), i, line, out)
            _nft_name(m.group(3), i, line, out)
            _nft_body(m.group(4), i, line, out)
            continue
        out.append(Violation("nft-line", i, line, "not an nft statement on our table"))
    return out


def render_violations(text: str, mode: str) -> list[Violation]:
    """What ``render --mode MODE`` printed: ``#`` header lines, then rules. A header line
    split by a newline in a name shows up as a line outside the grammar."""
    if mode == "iptables":
        return iptables_violations(text)
    if mode == "nftables":
        return nft_violations(text)
    raise ValueError(f"unknown mode {mode!r}")


def check_iptables(text: str) -> None:
    v = iptables_violations(text)
    if v:
        raise GrammarError(v)


def check_nft(text: str) -> None:
    v = nft_violations(text)
    if v:
        raise GrammarError(v)


def check_render(text: str, mode: str) -> None:
    v = render_violations(text, mode)
    if v:
        raise GrammarError(v)
