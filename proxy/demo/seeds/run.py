"""Running walkthroughs: one after another or in parallel, the summary, ``main``."""

from __future__ import annotations

import io
import logging
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

from proxy.demo import seedmanifests as manifests
from proxy.demo.seeds.notes import SEEDS
from proxy.demo.seeds.parse import (
    seed_numbers,
)
from proxy.demo.seeds.seed0 import Seed0
from proxy.demo.seeds.seed1 import Seed1
from proxy.demo.seeds.seed2 import Seed2
from proxy.demo.seeds.seed3 import Seed3
from proxy.demo.seeds.seed4 import Seed4
from proxy.demo.seeds.walkthrough import (
    LabView,
    SeedPresenter,
    SeedResult,
    Walkthrough,
)
from proxy.lab.commands.up import running_or_started

WALKTHROUGHS: Mapping[int, type[Walkthrough]] = {
    0: Seed0,
    1: Seed1,
    2: Seed2,
    3: Seed3,
    4: Seed4,
}


def run_seed(lab: LabView, number: int, color: bool, out: TextIO) -> SeedResult:
    note = SEEDS[number]
    presenter = SeedPresenter(out=out, color=color)
    presenter.title(f"Seed {note.number}: {note.file} — {note.topic}")
    start = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix=f"kpp-seed-{note.number}-"))
    try:
        walkthrough = WALKTHROUGHS[number](lab, presenter, workdir)
        walkthrough.run()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(file=out, flush=True)
    return SeedResult(
        note,
        presenter.passed,
        list(presenter.failures),
        list(presenter.deviations),
        time.monotonic() - start,
    )


def run_parallel(
    lab: LabView, numbers: Sequence[int], color: bool, out: TextIO
) -> list[SeedResult]:
    """Every walkthrough at once (each in its own namespace), printed in order."""
    results: dict[int, SeedResult] = {}
    buffers = {n: io.StringIO() for n in numbers}

    def one(n: int) -> None:
        try:
            results[n] = run_seed(lab, n, color, buffers[n])
        except Exception as exc:
            results[n] = SeedResult(SEEDS[n], 0, [f"walkthrough crashed: {exc}"], [], 0.0)

    threads = [threading.Thread(target=one, args=(n,), daemon=True) for n in numbers]
    for t in threads:
        t.start()
    for n, t in zip(numbers, threads, strict=True):
        t.join()
        out.write(buffers[n].getvalue())
        out.flush()
    return [results[n] for n in numbers]


def summarize(results: Sequence[SeedResult], lab: LabView, out: TextIO) -> None:
    heading = f"Summary ({lab.mode} mode, lab {lab.state.lab_id})"
    print(heading, file=out)
    print("=" * len(heading), file=out)
    for r in results:
        print(
            f"seed {r.note.number} ({r.note.file}): {r.passed} checks passed, "
            f"{len(r.failed)} failed ({r.seconds:.0f} s)",
            file=out,
        )
        for failure in r.failed:
            print(f"    FAILED {failure}", file=out)
    print(file=out)
    print("Where the notes and the lab differ", file=out)
    print("----------------------------------", file=out)
    for r in results:
        if not r.deviations:
            continue
        print(f"seed {r.note.number} ({r.note.file}):", file=out)
        for kind, label in (("command", "commands"), ("claim", "statements")):
            items = [d for d in r.deviations if d.kind == kind]
            if items:
                print(f"  {label}:", file=out)
            for d in items:
                print(f"    - {d.what}: {d.why}", file=out)
    out.flush()


def write_manifests(directory: Path, numbers: Sequence[int]) -> list[Path]:
    """The files of the chosen walkthroughs, under ``directory/seed-N/`` with the names
    the notes use (``kube-proxy-py lab seeds --manifests DIR``: to follow a note by hand).
    Existing files are overwritten."""
    written: list[Path] = []
    for number in numbers:
        for rel, text in manifests.FILES[number].items():
            path = directory / f"seed-{number}" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            written.append(path)
    return written


def main(
    state_dir: Path,
    numbers: Sequence[int] | None = None,
    *,
    color: bool | None = None,
    parallel: bool = False,
    out: TextIO = sys.stdout,
) -> int:
    logging.getLogger().setLevel(logging.WARNING)
    chosen = seed_numbers(numbers)
    state = running_or_started(state_dir, out=out)
    if state is None:
        return 1
    lab = LabView.of(state)
    use_color = out.isatty() if color is None else color
    print(
        f"kube-proxy-py lab seeds: the learners' notes on lab {state.lab_id} "
        f"({lab.mode} mode, nodes {', '.join(lab.nodes)})\n",
        file=out,
        flush=True,
    )
    if parallel:
        results = run_parallel(lab, chosen, use_color, out)
    else:
        results = [run_seed(lab, n, use_color, out) for n in chosen]
    summarize(results, lab, out)
    failed = sum(len(r.failed) for r in results)
    passed = sum(r.passed for r in results)
    print(file=out)
    if failed:
        print(f"lab seeds: {failed} of {passed + failed} checks failed", file=out)
        return 1
    print(f"lab seeds: all {passed} checks passed in {len(results)} walkthrough(s)", file=out)
    return 0
