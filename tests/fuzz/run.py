"""Run the fuzz targets: bounded coverage-guided runs, corpus replay, minimization.

    python -m tests.fuzz.run ci [--seconds 25] [--targets state,agent] [--allow-known]
    python -m tests.fuzz.run fuzz TARGET [--seconds 300] [--keep-going] [--jobs 1]
    python -m tests.fuzz.run replay [TARGET ...] [--files F ...]
    python -m tests.fuzz.run minimize TARGET [--from DIR]
    python -m tests.fuzz.run seed

``ci`` fuzzes each target in turn (atheris/libFuzzer, structure-aware mutation) for
``--seconds`` (env ``KPP_FUZZ_SECONDS``, default 25; five targets take about 2.5 minutes
on two cores) and exits 1 on any finding, after saving the input into
``tests/fuzz/corpus/<target>/finding-<oracle>-<where>-<sha1>``. Every input runs under a
soft time bound (``KPP_FUZZ_INPUT_SECONDS``, 2 s of CPU: the Python traceback of where
it was names the function), a hard one (``KPP_FUZZ_HARD_SECONDS``, 10 s wall: libFuzzer's
``-timeout``, for hangs in C code) and an address-space bound (``KPP_FUZZ_MEMORY_MB``,
768 MiB: a blow-up is a MemoryError). Segfaults and hard timeouts are replayed in a
worker process to name them. ``--allow-known`` does not stop on the signatures listed in
``tests/fuzz/known_findings.txt``.

``replay`` runs corpus files through their target in a worker subprocess (a segfault
or a hang there is a result, not the end of the run); pytest's ``tests/fuzz/test_corpus.py``
does this for every file on every test run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

FUZZ_DIR = Path(__file__).resolve().parent
REPO = FUZZ_DIR.parents[1]
CORPUS = FUZZ_DIR / "corpus"
KNOWN_FILE = FUZZ_DIR / "known_findings.txt"
TARGET_NAMES = ("state", "agent", "kubeconfig", "options", "cli")
MAX_LEN = {"state": 65536, "agent": 32768, "kubeconfig": 16384, "options": 16384, "cli": 4096}
FINDING_EXIT = 3
KEEP_PREFIXES = ("seed-", "regress-", "finding-")
"""Corpus files minimize never removes."""


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


@dataclass(frozen=True)
class Limits:
    input_seconds: float = _env_float("KPP_FUZZ_INPUT_SECONDS", 2.0)
    hard_seconds: float = _env_float("KPP_FUZZ_HARD_SECONDS", 10.0)
    memory_mb: int = int(_env_float("KPP_FUZZ_MEMORY_MB", 768))


@dataclass
class Result:
    """One input's outcome in the replay worker."""

    path: str
    signature: str = ""
    oracle: str = ""
    detail: str = ""
    seconds: float = 0.0
    findings: list[dict[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings


def known_findings(path: Path = KNOWN_FILE) -> dict[str, str]:
    """signature → description, from ``known_findings.txt`` (``SIGNATURE  # what``)."""
    out: dict[str, str] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        sig, _, note = line.partition("#")
        out[sig.strip()] = note.strip()
    return out


# --------------------------------------------------------------------------- worker


def _worker(target: str, limits: Limits) -> int:
    """Read input paths from stdin, one a line; print a JSON result line for each."""
    import faulthandler

    from tests.fuzz import oracle, targets

    faulthandler.enable(sys.stderr)
    fn = targets.TARGETS[target]
    os.chdir(targets.sandbox())
    oracle.limit_memory(limits.memory_mb)
    out = sys.stdout
    own_sandbox = not os.environ.get("KPP_FUZZ_SANDBOX")
    for line in sys.stdin:
        path = line.rstrip("\n")
        if not path:
            continue
        data = Path(path).read_bytes()
        print(json.dumps({"start": path}), file=out, flush=True)
        faulthandler.dump_traceback_later(max(1.0, limits.hard_seconds - 1), exit=False)
        start = time.monotonic()
        found = oracle.run_bounded(target, fn, data, seconds=limits.input_seconds, cpu=False)
        faulthandler.cancel_dump_traceback_later()
        res = {
            "path": path,
            "seconds": time.monotonic() - start,
            "findings": [
                {"signature": f.signature, "oracle": f.oracle, "detail": f.detail} for f in found
            ],
        }
        print(json.dumps(res), file=out, flush=True)
    if own_sandbox:
        os.chdir("/")
        shutil.rmtree(targets.sandbox(), ignore_errors=True)
    return 0


_FRAME = re.compile(r'File "([^"]+)", line \d+ in (\S+)')


def _dump_where(text: str) -> str:
    """The innermost proxy/ frame of a faulthandler dump (frames are listed innermost
    first), else the innermost frame."""
    proxy_dir = str(REPO / "proxy")
    frames = _FRAME.findall(text)
    for filename, func in frames:
        if filename.startswith(proxy_dir) or "/proxy/" in filename:
            rel = filename.split("/proxy/", 1)[1].removesuffix(".py").replace("/", ".")
            return f"{rel}.{func}"
    if frames:
        return f"{Path(frames[0][0]).stem}.{frames[0][1]}"
    return "?"


class _Worker:
    def __init__(self, target: str, limits: Limits, env: dict[str, str]) -> None:
        self.err = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fuzz.run", "worker", target],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.err,
            cwd=REPO,
            env=env,
        )
        assert self.proc.stdout is not None
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.proc.stdout, selectors.EVENT_READ)
        self.buf = b""
        self.stderr = ""

    def send(self, path: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(path.encode() + b"\n")
        self.proc.stdin.flush()

    def read_line(self, timeout: float) -> bytes | None:
        """A line, b"" at end of stream, None on timeout."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sel.select(left):
                return None
            assert self.proc.stdout is not None
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                return b""
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def stderr_text(self) -> str:
        self.err.seek(0)
        return self.err.read().decode("utf-8", "replace")

    def close(self, kill: bool = False) -> int | None:
        if kill and self.proc.poll() is None:
            self.proc.kill()
        if self.proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        try:
            rc = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.sel.close()
        self.stderr = self.stderr_text()
        self.err.close()
        return rc


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env.pop("KUBECONFIG", None)
    return env


def replay(target: str, paths: Sequence[Path], limits: Limits | None = None) -> list[Result]:
    """Each input through ``target`` in a worker process, restarted after a crash or a
    hang (which are results: ``crash:SIGSEGV@…``, ``hang@…``)."""
    limits = limits or Limits()
    env = _env()
    env["KPP_FUZZ_INPUT_SECONDS"] = str(limits.input_seconds)
    env["KPP_FUZZ_HARD_SECONDS"] = str(limits.hard_seconds)
    env["KPP_FUZZ_MEMORY_MB"] = str(limits.memory_mb)
    results: list[Result] = []
    pending = [str(Path(p).resolve()) for p in paths]
    given = dict(zip(pending, (str(p) for p in paths), strict=True))
    worker: _Worker | None = None
    startup = 60.0  # the first input also pays for imports and the sandbox CA
    while pending:
        if worker is None:
            worker = _Worker(target, limits, env)
            startup = 60.0
        path = pending.pop(0)
        worker.send(path)
        line = worker.read_line(startup + limits.hard_seconds)
        result: Result | None = None
        if line:
            line = worker.read_line(limits.hard_seconds + 5)
            if line:
                raw = json.loads(line)
                result = Result(path, seconds=raw["seconds"], findings=raw["findings"])
        startup = 0.0
        if result is None:
            hung = line is None
            rc = worker.close(kill=hung)
            dump = worker.stderr
            where = _dump_where(dump)
            if hung:
                oracle, sig = "hang", f"{target}:hang:{where}"
            else:
                name = signal.Signals(-rc).name if rc is not None and rc < 0 else f"exit-{rc}"
                oracle, sig = "crash", f"{target}:crash:{name}@{where}"
            detail = f"{oracle} (worker status {rc}); last frames:\n" + "\n".join(
                dump.strip().splitlines()[-12:]
            )
            result = Result(path, findings=[{"signature": sig, "oracle": oracle, "detail": detail}])
            worker = None
        result.path = given[path]
        results.append(result)
    if worker is not None:
        worker.close()
    return results


def corpus_files(target: str, corpus: Path = CORPUS) -> list[Path]:
    d = corpus / target
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith("."))


# --------------------------------------------------------------------------- fuzzing


@dataclass
class FuzzRun:
    target: str
    seconds: float = 0.0
    execs: int = 0
    restarts: int = 0
    findings: list[dict[str, str]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.execs / self.seconds if self.seconds else 0.0


_STAT = re.compile(r"stat::number_of_executed_units:\s*(\d+)")
_PROGRESS = re.compile(r"^#(\d+)\s", re.M)


def _save_artifact(
    target: str, art: Path, findings_dir: Path, limits: Limits, ignore: set[str]
) -> list[dict[str, str]]:
    """Name a libFuzzer artifact (segfault, hard timeout, out of memory) by replaying it,
    and keep it in the findings directory."""
    from tests.fuzz.oracle import input_id

    data = art.read_bytes()
    [res] = replay(target, [art], limits)
    kind = art.name.split("-")[0]
    found = res.findings or [
        {
            "signature": f"{target}:{kind}:not-reproduced",
            "oracle": kind,
            "detail": f"the fuzzing process ended ({art.name}); the input does not reproduce "
            "it in the replay worker",
        }
    ]
    out = []
    for f in found:
        if f["signature"] in ignore:
            continue
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", f["signature"].split(":", 1)[1])[:90]
        dest = findings_dir / f"finding-{slug}-{input_id(data)}"
        findings_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(art, dest)
        out.append({**f, "file": str(dest)})
    art.unlink()
    return out


def fuzz(
    target: str,
    seconds: float,
    *,
    work: Path,
    findings_dir: Path,
    keep_going: bool = False,
    limits: Limits | None = None,
    ignore: Iterable[str] = (),
    corpus: Path = CORPUS,
    structured: float = 0.5,
    extra: Sequence[str] = (),
    log: Path | None = None,
) -> FuzzRun:
    """Fuzz ``target`` for ``seconds``; new coverage goes to ``work``, findings to
    ``findings_dir``. Restarts after hard crashes until the time is up (``keep_going``)
    or stops at the first finding."""
    limits = limits or Limits()
    ignore = set(ignore)
    run = FuzzRun(target)
    tdir = work / target
    new_corpus, seeds, artifacts = tdir / "corpus", tdir / "seeds", tdir / "artifacts"
    for d in (new_corpus, artifacts):
        d.mkdir(parents=True, exist_ok=True)
    report = tdir / "findings.jsonl"
    report.unlink(missing_ok=True)
    current = tdir / "current-input"
    skip: set[str] = set()
    """sha1 of inputs that killed the process: kept out of the seeds of a restart."""
    log = log or tdir / "libfuzzer.log"
    from tests.fuzz.mutators import dictionary

    dict_file = tdir / "tokens.dict"
    dict_file.write_text(dictionary())
    end = time.monotonic() + seconds
    started = time.monotonic()
    while True:
        left = end - time.monotonic()
        if left < 2:
            break
        # the repo corpus, minus inputs that kill the process (libFuzzer would die on them
        # again at start-up instead of fuzzing)
        shutil.rmtree(seeds, ignore_errors=True)
        seeds.mkdir(parents=True)
        for p in corpus_files(target, corpus):
            if hashlib.sha1(p.read_bytes()).hexdigest() not in skip:
                shutil.copyfile(p, seeds / p.name)
        env = _env()
        env.update(
            KPP_FUZZ_INPUT_SECONDS=str(limits.input_seconds),
            KPP_FUZZ_MEMORY_MB=str(limits.memory_mb),
            KPP_FUZZ_FINDINGS=str(findings_dir),
            KPP_FUZZ_REPORT=str(report),
            KPP_FUZZ_KEEP_GOING="1" if keep_going else "",
            KPP_FUZZ_IGNORE="\n".join(sorted(ignore)),
            KPP_FUZZ_STRUCTURED=str(structured),
            KPP_FUZZ_CURRENT=str(current),
            KPP_FUZZ_SANDBOX=str(tdir / "sandbox"),
        )
        cmd = [
            sys.executable,
            "-m",
            "tests.fuzz.atheris_main",
            target,
            f"-max_total_time={max(1, int(left))}",
            f"-timeout={int(limits.hard_seconds)}",
            f"-rss_limit_mb={limits.memory_mb + 512}",
            f"-max_len={MAX_LEN[target]}",
            f"-artifact_prefix={artifacts}/",
            "-print_final_stats=1",
            "-reload=0",
            f"-dict={dict_file}",
            *extra,
            str(new_corpus),
            str(seeds),
        ]
        with open(log, "ab") as out:
            rc = subprocess.call(cmd, cwd=REPO, env=env, stdout=out, stderr=out)
        text = log.read_text(errors="replace")
        tail = text[text.rfind("INFO: Seed:") :] if "INFO: Seed:" in text else text
        m = _STAT.findall(tail)
        if m:
            run.execs += int(m[-1])
        else:
            progress = _PROGRESS.findall(tail)
            run.execs += int(progress[-1]) if progress else 0
        stopped = rc == FINDING_EXIT
        if rc not in (0, FINDING_EXIT) and not any(artifacts.iterdir()) and current.exists():
            # died without a libFuzzer artifact (atheris ends a hard timeout with SIGALRM):
            # the input it was running is the one
            shutil.copyfile(current, artifacts / f"died-{rc}")
        named = False
        for art in sorted(artifacts.iterdir()):
            named = True  # a death we could name (perhaps as a finding to go on past)
            skip.add(hashlib.sha1(art.read_bytes()).hexdigest())
            for f in _save_artifact(target, art, findings_dir, limits, ignore):
                run.findings.append(f)
                stopped = True
                if keep_going:
                    ignore.add(f["signature"])
        if rc not in (0, FINDING_EXIT) and not named:
            # died without an input we could replay (e.g. killed): note it and go on
            run.findings.append(
                {
                    "signature": f"{target}:died:exit-{rc}",
                    "oracle": "died",
                    "detail": f"libFuzzer exited {rc}; see {log}",
                    "file": "",
                }
            )
            stopped = True
        if report.exists():
            known = {f["signature"] for f in run.findings}
            for line in report.read_text().splitlines():
                entry = json.loads(line)
                if entry["signature"] not in known:
                    run.findings.append(entry)
                    known.add(entry["signature"])
            if keep_going:
                ignore |= known
        if rc == 0 or (stopped and not keep_going):
            break
        run.restarts += 1
    run.seconds = time.monotonic() - started
    return run


def minimize(
    target: str, sources: Sequence[Path], corpus: Path = CORPUS, max_files: int = 30
) -> int:
    """Replace the ``cov-*`` files of the corpus by a minimal set of inputs (at most
    ``max_files``, each at most 8 KiB) covering what ``sources`` and the corpus cover
    (libFuzzer ``-set_cover_merge``); ``seed-*``, ``regress-*`` and ``finding-*`` stay."""
    from tests.fuzz.oracle import input_id

    dest = corpus / target
    pinned = {p.name for p in dest.iterdir() if p.name.startswith(KEEP_PREFIXES)}
    have = {hashlib.sha1((dest / n).read_bytes()).hexdigest() for n in pinned}
    with tempfile.TemporaryDirectory() as tmp:
        merged, others = Path(tmp) / "merged", Path(tmp) / "others"
        merged.mkdir()
        others.mkdir()
        for p in dest.iterdir():
            # the pinned files start the merged set: only coverage they lack is added
            shutil.copyfile(p, (merged if p.name in pinned else others) / p.name)
        env = _env()
        env.update(
            KPP_FUZZ_KEEP_GOING="1",
            KPP_FUZZ_FINDINGS=str(Path(tmp) / "findings"),
            KPP_FUZZ_SANDBOX=str(Path(tmp) / "sandbox"),
        )
        cmd = [
            sys.executable,
            "-m",
            "tests.fuzz.atheris_main",
            target,
            "-set_cover_merge=1",
            "-max_len=8192",
            f"-timeout={int(Limits().hard_seconds)}",
            str(merged),
            str(others),
            *(str(s) for s in sources),
        ]
        subprocess.call(
            cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        fresh = []
        for p in merged.iterdir():
            if p.name in pinned:
                continue
            data = p.read_bytes()
            if hashlib.sha1(data).hexdigest() not in have and len(data) <= 8192:
                fresh.append(data)
        fresh.sort(key=len)
        for p in dest.iterdir():
            if p.name not in pinned:
                p.unlink()
        for data in fresh[:max_files]:
            (dest / f"cov-{input_id(data)}").write_bytes(data)
        return min(len(fresh), max_files)


# --------------------------------------------------------------------------- commands


def _print_findings(findings: Iterable[dict[str, str]], known: dict[str, str]) -> None:
    for f in findings:
        tag = " (known)" if f["signature"] in known else ""
        print(f"  FINDING{tag} {f['signature']}\n    input: {f.get('file', '')}", file=sys.stderr)
        for line in f.get("detail", "").splitlines()[:8]:
            print(f"    | {line}", file=sys.stderr)


def cmd_ci(args: argparse.Namespace) -> int:
    targets = [t for t in args.targets.split(",") if t]
    known = known_findings()
    ignore = set(known) if args.allow_known else set()
    work = Path(args.work or tempfile.mkdtemp(prefix="kpp-fuzz-ci-"))
    failed = False
    rows = []
    for target in targets:
        run = fuzz(
            target,
            args.seconds,
            work=work,
            findings_dir=CORPUS / target,
            keep_going=False,
            ignore=ignore,
        )
        rows.append(run)
        print(
            f"{target:11} {run.seconds:6.1f} s {run.execs:7d} execs {run.rate:7.1f}/s "
            f"{len(run.findings)} finding(s)",
            file=sys.stderr,
            flush=True,
        )
        _print_findings(run.findings, known)
        failed |= bool(run.findings)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    print("fuzz: " + ("FINDINGS (inputs saved under tests/fuzz/corpus)" if failed else "ok"))
    return 1 if failed else 0


def cmd_fuzz(args: argparse.Namespace) -> int:
    known = known_findings()
    work = Path(args.work)
    findings_dir = Path(args.findings) if args.findings else work / args.target / "findings"
    run = fuzz(
        args.target,
        args.seconds,
        work=work,
        findings_dir=findings_dir,
        keep_going=args.keep_going,
        ignore=set(known) if args.allow_known else set(),
        structured=args.structured,
    )
    print(
        f"{args.target}: {run.seconds:.0f} s, {run.execs} execs ({run.rate:.1f}/s), "
        f"{run.restarts} restarts, {len(run.findings)} distinct finding(s)"
    )
    _print_findings(run.findings, known)
    return 1 if run.findings else 0


def cmd_replay(args: argparse.Namespace) -> int:
    known = known_findings()
    bad = 0
    unknown = set(args.targets) - set(TARGET_NAMES)
    if unknown:
        print(f"unknown target(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    for target in args.targets or TARGET_NAMES:
        paths = [Path(f) for f in args.files] if args.files else corpus_files(target)
        for res in replay(target, paths):
            status = "ok" if res.ok else "FINDING"
            print(f"{status:8} {target:10} {res.seconds:6.2f}s {res.path}")
            for f in res.findings:
                tag = " (known)" if f["signature"] in known else ""
                print(f"         {f['signature']}{tag}")
                if args.verbose:
                    for line in f["detail"].splitlines():
                        print(f"           | {line}")
                bad += f["signature"] not in known or args.strict
    return 1 if bad else 0


def cmd_minimize(args: argparse.Namespace) -> int:
    sources = [Path(s) for s in args.sources]
    added = minimize(args.target, sources, max_files=args.max_files)
    print(f"{args.target}: {added} coverage input(s) kept in {CORPUS / args.target}")
    return 0


def cmd_seed(args: argparse.Namespace) -> int:
    from tests.fuzz.seeds import write_seeds

    for p in write_seeds(overwrite=args.overwrite):
        print(p.relative_to(REPO))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fuzz.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    ci = sub.add_parser("ci", help="bounded run of every target; exit 1 on any finding")
    ci.add_argument("--seconds", type=float, default=_env_float("KPP_FUZZ_SECONDS", 25))
    ci.add_argument("--targets", default=os.environ.get("KPP_FUZZ_TARGETS", ",".join(TARGET_NAMES)))
    ci.add_argument("--allow-known", action="store_true", help="go on past known_findings.txt")
    ci.add_argument("--work", default="", help="keep libFuzzer's corpus and logs here")
    fz = sub.add_parser("fuzz", help="fuzz one target (builds a corpus in --work)")
    fz.add_argument("target", choices=TARGET_NAMES)
    fz.add_argument("--seconds", type=float, default=300)
    fz.add_argument("--keep-going", action="store_true", help="record every distinct finding")
    fz.add_argument("--allow-known", action="store_true")
    fz.add_argument("--work", default=os.environ.get("KPP_FUZZ_WORK", "/tmp/kpp-fuzz-work"))
    fz.add_argument("--findings", default="", help="default: WORK/TARGET/findings")
    fz.add_argument("--structured", type=float, default=0.5, help="share of tree mutations")
    rp = sub.add_parser("replay", help="run corpus files in a worker; print each result")
    rp.add_argument("targets", nargs="*", help=f"any of {', '.join(TARGET_NAMES)} (all)")
    rp.add_argument("--files", nargs="*", default=[])
    rp.add_argument("--strict", action="store_true", help="known findings fail too")
    rp.add_argument("-v", "--verbose", action="store_true")
    mn = sub.add_parser("minimize", help="set-cover merge new inputs into the corpus")
    mn.add_argument("target", choices=TARGET_NAMES)
    mn.add_argument("sources", nargs="*", help="directories of new inputs")
    mn.add_argument("--max-files", type=int, default=30, help="cov-* files to keep at most")
    sd = sub.add_parser("seed", help="write the seed corpus")
    sd.add_argument("--overwrite", action="store_true")
    wk = sub.add_parser("worker")
    wk.add_argument("target", choices=TARGET_NAMES)
    args = parser.parse_args(argv)
    if args.command == "worker":
        return _worker(args.target, Limits())
    handlers = {
        "ci": cmd_ci,
        "fuzz": cmd_fuzz,
        "replay": cmd_replay,
        "minimize": cmd_minimize,
        "seed": cmd_seed,
    }
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
