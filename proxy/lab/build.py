"""Build (or reuse) the upstream Kubernetes binaries the lab and the e2e tests run.

A throwaway Go module under the cache directory requires ``k8s.io/kubernetes`` at the
pinned release, replaces each staging module (``k8s.io/api`` …) with its published
``v0.Y.Z`` twin, and requires etcd's server module at the version that release uses.
Everything is compiled from the Go module proxy with upstream's flags (CGO off,
``-trimpath``, stripped, version ldflags). Results are cached per version; a second call
only checks the files.

``KUBE_PROXY_PY_K8S_BIN`` pointing at a directory of official release binaries skips the
build entirely.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

K8S_VERSION = "v1.37.2"
"""Newest Kubernetes release that builds with Go 1.26 (its go.mod says ``go 1.26.0``)."""

K8S_COMMANDS: tuple[str, ...] = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kube-proxy",
    "kubectl",
)
BINARIES: tuple[str, ...] = ("etcd", *K8S_COMMANDS)
BIN_ENV = "KUBE_PROXY_PY_K8S_BIN"
CACHE_ENV = "KUBE_PROXY_PY_CACHE"
_STAMP = "build-stamp.json"


class BuildError(RuntimeError):
    """The binaries could not be built or found; the message says what to do."""


@dataclass(frozen=True)
class BuildPlan:
    """What to build: the Kubernetes release, its staging modules and etcd's version."""

    k8s_version: str
    staging_modules: tuple[str, ...]
    etcd_version: str
    k8s_commit: str
    etcd_commit: str

    @property
    def staging_version(self) -> str:
        major_minor_patch = self.k8s_version.removeprefix("v").split(".", 1)[1]
        return f"v0.{major_minor_patch}"


def cache_root() -> Path:
    """Root of everything kube-proxy-py caches (outside the repository)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    return Path.home() / ".cache" / "kube-proxy-py"


def bin_dir(version: str = K8S_VERSION) -> Path:
    return cache_root() / "k8s" / version / "bin"


def missing_binaries(directory: Path) -> list[str]:
    return [b for b in BINARIES if not os.access(directory / b, os.X_OK)]


def parse_go_mod(text: str) -> tuple[list[str], dict[str, str]]:
    """Return (staging modules, required versions) from a go.mod text.

    Staging modules are the ones replaced with a ``./staging/`` path.
    """
    staging: list[str] = []
    versions: dict[str, str] = {}
    in_block: str | None = None
    for raw in text.splitlines():
        line = raw.split("//", 1)[0].strip()
        if not line:
            continue
        if line.endswith("(") and line.split()[0] in ("require", "replace"):
            in_block = line.split()[0]
            continue
        if line == ")":
            in_block = None
            continue
        words = line.split()
        kind = in_block
        if kind is None and words[0] in ("require", "replace"):
            kind, words = words[0], words[1:]
        if kind == "require" and len(words) >= 2:
            versions[words[0]] = words[1]
        elif kind == "replace" and "=>" in words:
            arrow = words.index("=>")
            if words[arrow + 1].startswith("./staging/"):
                staging.append(words[0])
    return staging, versions


class _Progress:
    """One line per step; a package counter while compiling (rewritten in place on a tty)."""

    def __init__(self, out: Callable[[str], None] | None = None) -> None:
        self._tty = sys.stderr.isatty()
        self._out = out
        self._started = time.monotonic()

    def _emit(self, text: str, *, inline: bool = False) -> None:
        if self._out is not None:
            if not inline:
                self._out(text)
            return
        if inline and self._tty:
            sys.stderr.write("\r\033[K" + text)
        else:
            if self._tty:
                sys.stderr.write("\r\033[K")
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def step(self, text: str) -> None:
        elapsed = time.monotonic() - self._started
        self._emit(f"[{elapsed:6.0f}s] {text}")

    def tick(self, text: str, count: int) -> None:
        if self._tty:
            self._emit(f"         {text}: {count} packages", inline=True)
        elif count % 250 == 0:
            self.step(f"{text}: {count} packages compiled")


def _run(
    cmd: Sequence[str],
    cwd: Path,
    env: dict[str, str],
    what: str,
    progress: _Progress | None = None,
) -> str:
    """Run a go command; on failure raise BuildError with its tail of output."""
    proc = subprocess.Popen(
        list(cmd), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    lines: list[str] = []
    count = 0
    for line in proc.stdout:
        lines.append(line)
        if progress is not None and not line.startswith(("go: ", "#")):
            count += 1
            progress.tick(what, count)
    rc = proc.wait()
    output = "".join(lines)
    if rc != 0:
        tail = "".join(lines[-30:])
        hint = ""
        unreachable = ("proxy.golang.org", "dial tcp", "no such host", "GOPROXY", "lookup disabled")
        if any(marker in output for marker in unreachable):
            hint = (
                "\nThe Go module proxy could not be reached. Either allow access to it "
                f"(GOPROXY={env.get('GOPROXY', 'default')}) or set {BIN_ENV} to a directory "
                "holding official release binaries: " + ", ".join(BINARIES) + "."
            )
        raise BuildError(f"{what} failed ({' '.join(cmd[:3])} … exit {rc}):\n{tail}{hint}")
    return output


def _go_env(gopath_cache: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GOFLAGS": "-buildvcs=false"})
    env.setdefault("GOPROXY", "https://proxy.golang.org,direct")
    return env


def _check_go() -> str:
    go = shutil.which("go")
    if go is None:
        raise BuildError(
            "Go is not installed (no `go` on PATH). Install Go ≥ 1.26 to build the Kubernetes "
            f"binaries, or set {BIN_ENV} to a directory holding official release binaries: "
            + ", ".join(BINARIES)
            + "."
        )
    out = subprocess.run([go, "version"], capture_output=True, text=True, check=False).stdout
    m = re.search(r"go(\d+)\.(\d+)", out)
    if m is None or (int(m.group(1)), int(m.group(2))) < (1, 26):
        raise BuildError(
            f"{K8S_VERSION} needs Go ≥ 1.26, found: {out.strip() or 'unknown'}. "
            f"Upgrade Go or set {BIN_ENV} to a directory of release binaries."
        )
    return go


def _download_info(go: str, module: str, work: Path, env: dict[str, str]) -> dict[str, object]:
    out = _run([go, "mod", "download", "-json", module], work, env, f"download {module}")
    info: dict[str, object] = json.loads(out[out.index("{") :])
    if "Error" in info:
        raise BuildError(f"download {module}: {info['Error']}")
    return info


def resolve_plan(go: str, work: Path, env: dict[str, str], version: str) -> BuildPlan:
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "go.mod").exists():
        (work / "go.mod").write_text("module kube-proxy-py.local/resolve\n\ngo 1.26.0\n")
    info = _download_info(go, f"k8s.io/kubernetes@{version}", work, env)
    gomod = Path(str(info["GoMod"])).read_text()
    staging, versions = parse_go_mod(gomod)
    etcd_version = versions.get("go.etcd.io/etcd/server/v3")
    if etcd_version is None:
        raise BuildError(f"k8s.io/kubernetes {version} go.mod does not require etcd's server")
    etcd_info = _download_info(go, f"go.etcd.io/etcd/server/v3@{etcd_version}", work, env)

    def commit(i: dict[str, object]) -> str:
        origin = i.get("Origin")
        if isinstance(origin, dict) and isinstance(origin.get("Hash"), str):
            return str(origin["Hash"])
        return "unknown"

    return BuildPlan(version, tuple(staging), etcd_version, commit(info), commit(etcd_info))


def render_go_mod(plan: BuildPlan) -> str:
    """The throwaway module's go.mod: kubernetes + staging twins + etcd server."""
    sv = plan.staging_version
    lines = ["module kube-proxy-py.local/k8s-build", "", "go 1.26.0", "", "require ("]
    lines.append(f"\tk8s.io/kubernetes {plan.k8s_version}")
    lines.append(f"\tgo.etcd.io/etcd/server/v3 {plan.etcd_version}")
    lines.extend(f"\t{m} {sv}" for m in plan.staging_modules)
    lines += [")", "", "replace ("]
    lines.extend(f"\t{m} => {m} {sv}" for m in plan.staging_modules)
    lines += [")", ""]
    return "\n".join(lines)


def k8s_ldflags(plan: BuildPlan) -> str:
    major, minor = plan.k8s_version.removeprefix("v").split(".")[:2]
    date = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={plan.k8s_version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitCommit={plan.k8s_commit}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate={date}",
        ]
    return " ".join(flags)


def _published_modules(
    go: str, work: Path, env: dict[str, str], plan: BuildPlan
) -> tuple[str, ...]:
    """Staging modules that exist on the proxy (sample-* ones are never published)."""
    out = _run(
        [
            go,
            "list",
            "-m",
            "-e",
            "-json",
            *(f"{m}@{plan.staging_version}" for m in plan.staging_modules),
        ],
        work,
        env,
        "list staging modules",
    )
    published: list[str] = []
    decoder = json.JSONDecoder()
    pos = 0
    while True:
        start = out.find("{", pos)
        if start < 0:
            break
        obj, pos = decoder.raw_decode(out, start)
        if "Error" not in obj:
            published.append(obj["Path"])
    return tuple(published)


def build(
    version: str = K8S_VERSION,
    *,
    out: Callable[[str], None] | None = None,
    force: bool = False,
) -> Path:
    """Return a directory holding every binary in BINARIES, building it if needed."""
    override = os.environ.get(BIN_ENV)
    if override:
        directory = Path(override)
        missing = missing_binaries(directory)
        if missing:
            raise BuildError(
                f"{BIN_ENV}={override} lacks executable "
                + ", ".join(missing)
                + "; put official release binaries there or unset it to build from source."
            )
        return directory

    target = bin_dir(version)
    stamp = target / _STAMP
    if not force and stamp.exists() and not missing_binaries(target):
        return target

    progress = _Progress(out)
    go = _check_go()
    env = _go_env()
    root = target.parent
    work = root / "module"
    progress.step(f"resolving k8s.io/kubernetes {version} and its staging modules")
    plan = resolve_plan(go, root / "resolve", env, version)
    plan = BuildPlan(
        plan.k8s_version,
        _published_modules(go, root / "resolve", env, plan),
        plan.etcd_version,
        plan.k8s_commit,
        plan.etcd_commit,
    )
    work.mkdir(parents=True, exist_ok=True)
    (work / "go.mod").write_text(render_go_mod(plan))
    (work / "go.sum").unlink(missing_ok=True)
    staging_dir = target.with_name("bin.partial")
    shutil.rmtree(staging_dir, ignore_errors=True)
    staging_dir.mkdir(parents=True)

    progress.step(
        f"building {', '.join(K8S_COMMANDS)} {version} (CGO off, -trimpath); "
        "a cold build takes tens of minutes on 2 cores"
    )
    pkgs = [f"k8s.io/kubernetes/cmd/{c}" for c in K8S_COMMANDS]
    common = [go, "build", "-mod=mod", "-v", "-trimpath"]
    _run(
        [*common, "-ldflags", k8s_ldflags(plan), "-o", f"{staging_dir}/", *pkgs],
        work,
        env,
        "compiling Kubernetes",
        progress,
    )
    progress.step(f"building etcd {plan.etcd_version}")
    etcd_flags = f"-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA={plan.etcd_commit[:8]}"
    _run(
        [
            *common,
            "-ldflags",
            etcd_flags,
            "-o",
            str(staging_dir / "etcd"),
            "go.etcd.io/etcd/server/v3",
        ],
        work,
        env,
        "compiling etcd",
        progress,
    )
    (staging_dir / _STAMP).write_text(
        json.dumps(
            {
                "kubernetes": plan.k8s_version,
                "etcd": plan.etcd_version,
                "kubernetes_commit": plan.k8s_commit,
                "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
            indent=2,
        )
        + "\n"
    )
    shutil.rmtree(target, ignore_errors=True)
    staging_dir.rename(target)
    progress.step(f"done: {target}")
    return target
