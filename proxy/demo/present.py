"""Presenting a guided tour: numbered steps, the command, its result, the relevant rules and
a one-line explanation; colour on a terminal, plain otherwise; each step checks itself."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO


class StepFailed(AssertionError):
    """A step's outcome was not what the tour expected."""


@dataclass
class Presenter:
    out: TextIO = field(default_factory=lambda: sys.stdout)
    color: bool = False
    pause: bool = False
    steps: int = 0
    failures: list[str] = field(default_factory=list)

    def _c(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.color else text

    def title(self, text: str) -> None:
        print(self._c("1", text), file=self.out)
        print(self._c("1", "=" * len(text)), file=self.out, flush=True)

    def step(self, heading: str) -> None:
        self.steps += 1
        if self.pause and self.steps > 1:
            input(self._c("2", "  [press Enter for the next step] "))
        print(file=self.out)
        print(self._c("1;36", f"Step {self.steps}: {heading}"), file=self.out, flush=True)

    def command(self, text: str, where: str = "") -> None:
        """A command as typed at a prompt: ``$ …``, or ``client$ …`` on another host;
        further lines (a here-document's) indented under it."""
        first, *rest = text.split("\n")
        print(self._c("33", f"  {where}$ {first}"), file=self.out)
        for line in rest:
            print(self._c("33", f"    {line}"), file=self.out)
        self.out.flush()

    def result(self, text: str) -> None:
        for line in text.rstrip("\n").splitlines():
            print(f"    {line}", file=self.out)
        self.out.flush()

    def rules(self, heading: str, text: str) -> None:
        print(self._c("2", f"  {heading}:"), file=self.out)
        for line in text.rstrip("\n").splitlines():
            print(self._c("2", f"    {line}"), file=self.out)
        self.out.flush()

    def explain(self, text: str) -> None:
        print(self._c("32", f"  → {text}"), file=self.out, flush=True)

    def check(self, ok: bool, what: str) -> None:
        mark = self._c("32", "ok") if ok else self._c("1;31", "UNEXPECTED")
        print(f"  [{mark}] {what}", file=self.out, flush=True)
        if not ok:
            self.failures.append(f"step {self.steps}: {what}")

    def run_checked(self, what: str, fn: Callable[[], bool]) -> None:
        try:
            ok = fn()
        except Exception as exc:  # a failing probe is a failed step, not a crash
            self.result(f"error: {exc}")
            ok = False
        self.check(ok, what)
