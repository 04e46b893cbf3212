"""The libFuzzer process for one target (started by ``python -m tests.fuzz.run``).

    python -m tests.fuzz.atheris_main TARGET [libFuzzer flags] [corpus dirs]

Settings come from the environment (the runner sets them): ``KPP_FUZZ_INPUT_SECONDS``
(soft CPU-time bound per input), ``KPP_FUZZ_MEMORY_MB`` (RLIMIT_AS), ``KPP_FUZZ_FINDINGS``
(directory for finding inputs), ``KPP_FUZZ_REPORT`` (JSON lines, one per finding),
``KPP_FUZZ_CURRENT`` (a file holding the input being run, for the runner to replay if the
process dies),
``KPP_FUZZ_KEEP_GOING`` (1: record each distinct finding and go on; else exit with status
:data:`FINDING_EXIT` at the first), ``KPP_FUZZ_IGNORE`` (signatures not to stop on, one a
line), ``KPP_FUZZ_STRUCTURED`` (share of structure-aware mutations, default 0.5).

proxy/ is instrumented for coverage; hard failures (a segfault, a hang in C
code past libFuzzer's ``-timeout``, ``-rss_limit_mb``) are left to libFuzzer, which writes
the input to ``-artifact_prefix`` for the runner to classify.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

FINDING_EXIT = 3
SLOW_INPUT = 0.5
"""CPU seconds above which an input is not added to the corpus."""


def _self_command(target: str) -> str:
    """An executable that runs this target again: libFuzzer's merge (and fork) modes run
    ``argv[0]`` with their own flags in a subprocess."""
    from tests.fuzz.targets import sandbox

    repo = Path(__file__).resolve().parents[2]
    wrapper = sandbox() / f"run-{target}"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"cd {shlex.quote(str(repo))} && exec {shlex.quote(sys.executable)} "
        f'-m tests.fuzz.atheris_main {shlex.quote(target)} "$@"\n'
    )
    wrapper.chmod(0o755)
    return str(wrapper)


def main() -> None:
    atheris: Any = importlib.import_module("atheris")
    target = sys.argv[1]
    seconds = float(os.environ.get("KPP_FUZZ_INPUT_SECONDS", "2"))
    memory_mb = int(os.environ.get("KPP_FUZZ_MEMORY_MB", "768"))
    findings = Path(os.environ.get("KPP_FUZZ_FINDINGS", "."))
    report = os.environ.get("KPP_FUZZ_REPORT", "")
    keep_going = os.environ.get("KPP_FUZZ_KEEP_GOING", "") == "1"
    structured = float(os.environ.get("KPP_FUZZ_STRUCTURED", "0.5"))
    ignore = set(filter(None, os.environ.get("KPP_FUZZ_IGNORE", "").split("\n")))

    from tests.fuzz import mutators  # (imports yaml, which stays uninstrumented: fast)

    with atheris.instrument_imports(include=["proxy"]):
        from tests.fuzz import oracle, targets

    fn = targets.TARGETS[target]
    targets.sandbox()
    os.chdir(targets.sandbox())
    oracle.limit_memory(memory_mb)
    seen: set[str] = set(ignore)
    if report and Path(report).exists():
        for line in Path(report).read_text().splitlines():
            try:
                seen.add(json.loads(line)["signature"])
            except (ValueError, KeyError):
                continue

    current = os.environ.get("KPP_FUZZ_CURRENT", "")
    # inputs already in the findings directory (the corpus, in CI) are not written again
    existing = {
        hashlib.sha1(p.read_bytes()).hexdigest(): p
        for p in (findings.iterdir() if findings.is_dir() else ())
        if p.is_file()
    }

    def test_one_input(data: bytes) -> int | None:
        if current:
            # what the runner replays when this process dies (segfault, hard timeout)
            with open(current, "wb") as out:
                out.write(data)
        start = time.process_time()
        found = oracle.run_bounded(target, fn, data, seconds=seconds, cpu=True)
        slow = time.process_time() - start > SLOW_INPUT
        new: dict[str, oracle.Finding] = {}
        for f in found:
            if f.signature not in seen:
                new.setdefault(f.signature, f)
        for f in new.values():
            seen.add(f.signature)
            findings.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha1(data).hexdigest()
            path = existing.get(digest) or findings / oracle.finding_name(f, data)
            if not path.exists():
                path.write_bytes(data)
            entry = {
                "target": target,
                "signature": f.signature,
                "oracle": f.oracle,
                "where": f.where,
                "file": str(path),
                "size": len(data),
                "time": time.time(),
                "detail": f.detail,
            }
            if report:
                with open(report, "a") as log:
                    log.write(json.dumps(entry) + "\n")
            print(f"\nFINDING {f.signature} -> {path}\n{f.detail}\n", file=sys.stderr, flush=True)
        if new and not keep_going:
            sys.stdout.flush()
            os._exit(FINDING_EXIT)
        # keep slow inputs (and the time and memory findings) out of the corpus: mutating
        # them again and again would take the run's time
        if slow or any(f.oracle in ("timeout", "memory") for f in found):
            return -1
        return None

    def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
        out: bytes = mutators.mutate(target, data, max_size, seed, atheris.Mutate, structured)
        return out

    atheris.Setup(
        [_self_command(target), *sys.argv[2:]], test_one_input, custom_mutator=custom_mutator
    )
    atheris.Fuzz()


if __name__ == "__main__":
    main()
