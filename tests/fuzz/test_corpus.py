"""Replay the fuzz corpus (tests/fuzz/corpus/<target>/*) through its target on every test
run, and optionally fuzz for a bounded time.

Each target's files run in one worker process (tests.fuzz.run.replay): a segfault or a
hang is reported for its file and the worker restarts for the rest. Inputs whose finding
is listed in known_findings.txt (bugs being fixed) are expected failures; set
KPP_FUZZ_STRICT=1 to fail on them too. test_bounded_fuzzing fuzzes each target for
CI_SECONDS with atheris (installed with the dev extras), as ``run ci`` does;
KPP_FUZZ_SECONDS=N changes that, 0 turns it off.
"""

from __future__ import annotations

import importlib.util
import os
from functools import cache
from pathlib import Path

import pytest

from tests.fuzz import run

STRICT = os.environ.get("KPP_FUZZ_STRICT", "") == "1"
CASES = [(t, p) for t in run.TARGET_NAMES for p in run.corpus_files(t)]


@cache
def _results(target: str) -> dict[str, run.Result]:
    return {r.path: r for r in run.replay(target, run.corpus_files(target))}


def test_every_target_has_a_corpus() -> None:
    for target in run.TARGET_NAMES:
        assert run.corpus_files(target), f"tests/fuzz/corpus/{target} is empty"


def test_corpus_stays_small() -> None:
    files = [p for _, p in CASES]
    assert len(files) <= 250, f"{len(files)} corpus files; minimize (run minimize TARGET)"
    big = [p.name for p in files if p.stat().st_size > 64 * 1024]
    assert not big, f"corpus files over 64 KiB: {big}"


@pytest.mark.parametrize(("target", "path"), CASES, ids=[f"{t}/{p.name}" for t, p in CASES])
def test_corpus_input(target: str, path: Path) -> None:
    result = _results(target)[str(path)]
    if result.ok:
        return
    known = run.known_findings()
    new = [f for f in result.findings if f["signature"] not in known]
    text = "\n\n".join(f"{f['signature']}\n{f['detail']}" for f in result.findings)
    if new or STRICT:
        pytest.fail(f"{path.name}:\n{text}", pytrace=False)
    pytest.xfail("known finding: " + "; ".join(known[f["signature"]] for f in result.findings))


CI_SECONDS = 15.0
"""Seconds of coverage-guided fuzzing per target on every test run (KPP_FUZZ_SECONDS
overrides it; 0 turns it off)."""


@pytest.mark.skipif(
    float(os.environ.get("KPP_FUZZ_SECONDS", CI_SECONDS)) <= 0, reason="KPP_FUZZ_SECONDS=0"
)
@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris not installed")
@pytest.mark.parametrize("target", run.TARGET_NAMES)
def test_bounded_fuzzing(target: str, tmp_path: Path) -> None:
    seconds = float(os.environ.get("KPP_FUZZ_SECONDS", CI_SECONDS))
    result = run.fuzz(
        target,
        seconds,
        work=tmp_path,
        findings_dir=run.CORPUS / target,
        ignore=() if STRICT else run.known_findings(),
    )
    assert result.execs > 0, f"{target}: nothing ran; see {tmp_path / target / 'libfuzzer.log'}"
    details = "\n\n".join(
        f"{f['signature']}\n  input: {f.get('file')}\n{f['detail']}" for f in result.findings
    )
    assert not result.findings, f"{target}: {len(result.findings)} finding(s)\n{details}"
