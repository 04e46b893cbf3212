"""Which tables an iptables-restore input commits, at which lines (what the rollback after
a refused later table relies on)."""

from __future__ import annotations

import pytest

from proxy.iptables.kernel import _counting
from proxy.kernel.executor import KernelError

TEXT = "*nat\n:A - [0:0]\n-A A -j RETURN\nCOMMIT\n*filter\n:B - [0:0]\n-X B\nCOMMIT\n"


@pytest.mark.parametrize(
    "pieces",
    [
        [TEXT],
        TEXT.splitlines(keepends=True),
        ["*nat\n:A - [0:0]\n", "-A A -j RETURN\nCOMMIT\n*filter\n", ":B - [0:0]\n-X B\nCOMMIT\n"],
    ],
)
def test_commit_lines_are_counted_however_the_input_is_cut(pieces: list[str]) -> None:
    commits: list[tuple[str, int]] = []
    assert "".join(_counting(pieces, commits)) == TEXT
    assert commits == [("nat", 4), ("filter", 8)]


@pytest.mark.parametrize(
    ("stderr", "line"),
    [
        ("iptables-restore: line 8 failed\n", 8),
        (
            "iptables-nft-restore v1.8.9 (nf_tables): \nline 8: CHAIN_DEL failed (Device or resource busy)",
            8,
        ),
        ("Couldn't load match `x'\n\nError occurred at line: 7\n", 7),
        ("iptables-restore: timed out", None),
    ],
)
def test_the_failing_line_is_read_from_each_variants_message(stderr: str, line: int | None) -> None:
    exc = KernelError(["iptables-restore"], 1, stderr)
    assert exc.failing_line_number() == line
    assert exc.outcome() == "nothing was changed"
    exc.committed, exc.rolled_back = ("nat",), True
    assert "nat table had already been committed and was restored" in exc.outcome()
    exc.rolled_back, exc.rollback_error = False, "boom"
    assert "nat table WAS changed and could not be restored (boom)" in exc.outcome()
