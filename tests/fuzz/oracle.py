"""What counts as a finding, how findings are named, and the per-input bounds.

A target raises :class:`Finding` when an input breaks the oracle: an exception other than
the documented error types, an exit status or message that is not the contract, rule
text outside :mod:`tests.fuzz.grammar`, a valid object blocked by a bad one, or an input
that runs past its time or memory bound. ``signature`` identifies the bug (target,
oracle, exception type and the innermost product frame, or the grammar rule), so a run
reports each bug once however many inputs hit it.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import resource
import signal
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType, TracebackType

import proxy

PROXY_DIR = str(Path(proxy.__file__).resolve().parent)
REPO = str(Path(PROXY_DIR).parent)

DEFAULT_INPUT_SECONDS = 2.0
"""Soft per-input bound (CPU seconds under libFuzzer, wall seconds in the replay worker)."""
DEFAULT_MEMORY_MB = 768
"""Address-space bound of a fuzz or replay process (RLIMIT_AS)."""


class Finding(Exception):
    """An input broke the oracle."""

    def __init__(self, target: str, oracle: str, where: str, detail: str) -> None:
        self.target = target
        self.oracle = oracle
        self.where = where
        self.detail = detail
        super().__init__(f"[{self.signature}] {detail}")

    @property
    def signature(self) -> str:
        return f"{self.target}:{self.oracle}:{self.where}"

    def slug(self) -> str:
        """A file-name-safe summary (``uncaught-RecursionError-file.read_documents``)."""
        text = f"{self.oracle}-{self.where}".replace("@", "-").replace("/", ".")
        text = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")
        return text[:90]

    @classmethod
    def from_exception(cls, target: str, oracle: str, exc: BaseException) -> Finding:
        frames = _frames(exc.__traceback__)
        where = product_frame(frames)
        first = f"{type(exc).__name__}: {exc}"
        if len(first) > 400:
            first = first[:400] + "..."
        tail = "".join(traceback.format_list(frames[-6:]))
        return cls(target, oracle, f"{type(exc).__name__}@{where}", f"{first}\n{tail}")


def _frames(tb: TracebackType | None) -> traceback.StackSummary:
    """The traceback's frames without source lines but the last few: a RecursionError's
    thousand frames must not eat the input's remaining time."""
    entries: list[tuple[FrameType, int]] = []
    while tb is not None:
        entries.append((tb.tb_frame, tb.tb_lineno))
        tb = tb.tb_next
    head = traceback.StackSummary.extract(iter(entries[:-6]), lookup_lines=False)
    tail = traceback.StackSummary.extract(iter(entries[-6:]), lookup_lines=True)
    return traceback.StackSummary.from_list([*head, *tail])


class Findings(Exception):
    """Several findings of one input."""

    def __init__(self, findings: list[Finding]) -> None:
        self.findings = findings
        super().__init__("; ".join(str(f) for f in findings))


def product_frame(frames: traceback.StackSummary) -> str:
    """``module.function`` of the innermost frame in proxy/ (else the innermost frame
    outside this module)."""
    for fr in reversed(frames):
        if fr.filename.startswith(PROXY_DIR):
            rel = fr.filename[len(PROXY_DIR) + 1 :].removesuffix(".py").replace("/", ".")
            return f"{rel}.{fr.name}"
    for fr in reversed(frames):
        if fr.filename != __file__:
            return f"{Path(fr.filename).stem}.{fr.name}"
    return "?"


def input_id(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()[:10]


def finding_name(f: Finding, data: bytes) -> str:
    return f"finding-{f.slug()}-{input_id(data)}"


# --------------------------------------------------------------------------- bounds


class InputTimeout(BaseException):
    """Raised inside the target when an input runs past its soft time bound."""


class _Deadline:
    def __init__(self, seconds: float, cpu: bool) -> None:
        self.seconds = seconds
        self.which = signal.ITIMER_PROF if cpu else signal.ITIMER_REAL
        self.signum = signal.SIGPROF if cpu else signal.SIGALRM

    def _fire(self, signum: int, frame: FrameType | None) -> None:
        raise InputTimeout(f"input ran past {self.seconds:g} s")


@contextlib.contextmanager
def deadline(seconds: float, *, cpu: bool) -> Iterator[None]:
    """Raise :class:`InputTimeout` in the body after ``seconds`` (CPU time when ``cpu``:
    libFuzzer owns SIGALRM for its own wall-clock ``-timeout``)."""
    if seconds <= 0:
        yield
        return
    d = _Deadline(seconds, cpu)
    old = signal.signal(d.signum, d._fire)
    signal.setitimer(d.which, seconds)
    try:
        yield
    finally:
        signal.setitimer(d.which, 0)
        signal.signal(d.signum, old)


def limit_memory(megabytes: int) -> None:
    """Bound this process's address space; a blow-up then raises MemoryError."""
    if megabytes <= 0:
        return
    limit = megabytes * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def run_bounded(
    target: str,
    fn: Callable[[bytes], None],
    data: bytes,
    *,
    seconds: float,
    cpu: bool,
) -> list[Finding]:
    """Run ``fn(data)`` under the time bound; every failure comes back as a Finding."""
    try:
        with deadline(seconds, cpu=cpu):
            fn(data)
    except Finding as f:
        return [f]
    except Findings as fs:
        return fs.findings
    except InputTimeout as exc:
        return [Finding.from_exception(target, "timeout", exc)]
    except MemoryError as exc:
        return [Finding.from_exception(target, "memory", exc)]
    except RecursionError as exc:
        return [Finding.from_exception(target, "uncaught", exc)]
    except Exception as exc:
        return [Finding.from_exception(target, "harness-error", exc)]
    return []


def format_tb(tb: TracebackType | None, limit: int = 6) -> str:
    return "".join(traceback.format_list(traceback.extract_tb(tb)[-limit:]))
