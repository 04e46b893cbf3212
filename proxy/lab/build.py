"""Build (or reuse) the upstream Kubernetes binaries the lab and the e2e tests run.

A throwaway Go module under the cache directory requires ``k8s.io/kubernetes`` at the
pinned release, replaces each staging module (``k8s.io/api`` …) with its published
``v0.Y.Z`` twin, and requires etcd's server module at the version that release uses.
Everything is compiled from the Go module proxy with upstream's flags (``-trimpath``,
stripped, version ldflags; CGO off for the binaries upstream links statically, on for
kubelet, which upstream's ``hack/lib/golang.sh`` leaves out of ``KUBE_STATIC_BINARIES``).
Results are cached per version; a second call only checks the files, and a cache that
lacks some binaries (one made before kubelet was added, say) gets only those built; the
stamp file records when each binary was built.

``KUBE_PROXY_PY_K8S_BIN`` pointing at a directory of official release binaries skips the
build entirely (it must hold kubelet too).

The helpers shared with :mod:`proxy.lab.nodebuild` (``Progress``, ``run_go``, ``go_env``,
``check_go``, ``check_cgo``, ``download_info``, ``origin_commit``) live here.
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
"""Built in one ``go build`` with CGO off (upstream's ``KUBE_STATIC_BINARIES``)."""
K8S_CGO_COMMANDS: tuple[str, ...] = ("kubelet",)
"""Built with CGO on, as upstream's release builds them (not in ``KUBE_STATIC_BINARIES``)."""
BINARIES: tuple[str, ...] = ("etcd", *K8S_COMMANDS, *K8S_CGO_COMMANDS)
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


def read_stamp(path: Path) -> dict[str, object] | None:
    """The stamp's JSON object, or None when it is absent or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json_atomically(path: Path, data: dict[str, object]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def updated_stamp(
    stamp: dict[str, object], built: Sequence[str], when: str, present: Sequence[str]
) -> dict[str, object]:
    """``stamp`` with ``built`` recorded as built at ``when``.

    A stamp written before per-binary times existed only has ``built`` (when every binary
    then present was built): ``present`` binaries without a time of their own get that one.
    """
    new = dict(stamp)
    old = stamp.get("binaries")
    binaries: dict[str, object] = dict(old) if isinstance(old, dict) else {}
    legacy = str(stamp.get("built", "unknown"))
    for name in present:
        binaries.setdefault(name, legacy)
    for name in built:
        binaries[name] = when
    new["binaries"] = dict(sorted(binaries.items()))
    new["updated"] = when
    return new


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


class Progress:
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


_K8S_ALTERNATIVE = (
    f"set {BIN_ENV} to a directory holding official release binaries: " + ", ".join(BINARIES) + "."
)

_CGO_HINTS: tuple[tuple[str, str], ...] = (
    ('exec: "gcc"', "cgo needs a C compiler: apt-get install gcc libc6-dev"),
    ("stdlib.h: No such file", "cgo needs the C library headers: apt-get install libc6-dev"),
    ("seccomp.h: No such file", "runc's seccomp support needs: apt-get install libseccomp-dev"),
    ("libseccomp.pc", "runc's seccomp support needs: apt-get install libseccomp-dev pkg-config"),
    ('exec: "pkg-config"', "cgo needs pkg-config: apt-get install pkg-config"),
)


def run_go(
    cmd: Sequence[str],
    cwd: Path,
    env: dict[str, str],
    what: str,
    progress: Progress | None = None,
    *,
    alternative: str = _K8S_ALTERNATIVE,
) -> str:
    """Run a go command; on failure raise BuildError with its tail of output.

    ``alternative`` completes "either allow access to the module proxy or …" when the
    failure looks like the proxy is unreachable.
    """
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
        hint = "".join(f"\n{text}" for marker, text in _CGO_HINTS if marker in output)
        unreachable = ("proxy.golang.org", "dial tcp", "no such host", "GOPROXY", "lookup disabled")
        if any(marker in output for marker in unreachable):
            hint += (
                "\nThe Go module proxy could not be reached. Either allow access to it "
                f"(GOPROXY={env.get('GOPROXY', 'default')}) or {alternative}"
            )
        raise BuildError(f"{what} failed ({' '.join(cmd[:3])} … exit {rc}):\n{tail}{hint}")
    return output


def go_env(*, cgo: bool = False) -> dict[str, str]:
    """The environment every build runs go with (local toolchain, no VCS stamping)."""
    env = dict(os.environ)
    env.update(
        {"CGO_ENABLED": "1" if cgo else "0", "GOTOOLCHAIN": "local", "GOFLAGS": "-buildvcs=false"}
    )
    env.setdefault("GOPROXY", "https://proxy.golang.org,direct")
    return env


def check_go(
    what: str = f"the Kubernetes {K8S_VERSION} binaries",
    *,
    alternative: str = _K8S_ALTERNATIVE,
) -> str:
    """Path of a Go ≥ 1.26 toolchain, else BuildError naming ``what`` needs it."""
    go = shutil.which("go")
    if go is None:
        raise BuildError(
            f"Go is not installed (no `go` on PATH). Install Go ≥ 1.26 to build {what}, "
            f"or {alternative}"
        )
    out = subprocess.run([go, "version"], capture_output=True, text=True, check=False).stdout
    m = re.search(r"go(\d+)\.(\d+)", out)
    if m is None or (int(m.group(1)), int(m.group(2))) < (1, 26):
        raise BuildError(
            f"{what} need Go ≥ 1.26, found: {out.strip() or 'unknown'}. Upgrade Go or {alternative}"
        )
    return go


def check_cgo(go: str, env: dict[str, str], what: str) -> None:
    """BuildError unless the C compiler cgo would use for ``what`` is installed."""
    cc = subprocess.run(
        [go, "env", "CC"], env=env, capture_output=True, text=True, check=False
    ).stdout.strip()
    compiler = (cc.split() or ["gcc"])[0]
    if shutil.which(compiler) is None:
        raise BuildError(
            f"{what} is built with cgo, which needs the C compiler `{compiler}` (not found): "
            "apt-get install gcc libc6-dev"
        )


def download_info(
    go: str,
    module: str,
    work: Path,
    env: dict[str, str],
    *,
    alternative: str = _K8S_ALTERNATIVE,
) -> dict[str, object]:
    """``go mod download -json module@version``: paths of its go.mod and source, Origin."""
    out = run_go(
        [go, "mod", "download", "-json", module],
        work,
        env,
        f"download {module}",
        alternative=alternative,
    )
    info: dict[str, object] = json.loads(out[out.index("{") :])
    if "Error" in info:
        raise BuildError(f"download {module}: {info['Error']}")
    return info


def origin_commit(info: dict[str, object]) -> str | None:
    """The VCS commit a module version was made from, when the proxy reports its Origin."""
    origin = info.get("Origin")
    if isinstance(origin, dict) and isinstance(origin.get("Hash"), str):
        return str(origin["Hash"])
    return None


def resolve_plan(go: str, work: Path, env: dict[str, str], version: str) -> BuildPlan:
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "go.mod").exists():
        (work / "go.mod").write_text("module kube-proxy-py.local/resolve\n\ngo 1.26.0\n")
    info = download_info(go, f"k8s.io/kubernetes@{version}", work, env)
    gomod = Path(str(info["GoMod"])).read_text()
    staging, versions = parse_go_mod(gomod)
    etcd_version = versions.get("go.etcd.io/etcd/server/v3")
    if etcd_version is None:
        raise BuildError(f"k8s.io/kubernetes {version} go.mod does not require etcd's server")
    etcd_info = download_info(go, f"go.etcd.io/etcd/server/v3@{etcd_version}", work, env)
    return BuildPlan(
        version,
        tuple(staging),
        etcd_version,
        origin_commit(info) or "unknown",
        origin_commit(etcd_info) or "unknown",
    )


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
    out = run_go(
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
    """Return a directory holding every binary in BINARIES, building what it lacks.

    No stamp (or ``force``): everything is built into ``bin.partial`` and swapped in.
    A stamped directory that lacks some binaries gets only those built and added.
    """
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
    stamp = None if force else read_stamp(target / _STAMP)
    if stamp is not None and stamp.get("kubernetes", version) != version:
        stamp = None  # another release's binaries: rebuild them all
    todo = list(BINARIES) if stamp is None else missing_binaries(target)
    if not todo:
        return target

    progress = Progress(out)
    go = check_go()
    env = go_env()
    cgo_todo = [c for c in K8S_CGO_COMMANDS if c in todo]
    if cgo_todo:
        check_cgo(go, go_env(cgo=True), ", ".join(cgo_todo))
    root = target.parent
    work = root / "module"
    if stamp is not None:
        progress.step(f"{target} lacks {', '.join(todo)}; building just what is missing")
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
    go_mod = render_go_mod(plan)
    if force or not (work / "go.mod").exists() or (work / "go.mod").read_text() != go_mod:
        (work / "go.mod").write_text(go_mod)
        (work / "go.sum").unlink(missing_ok=True)
    staging_dir = target.with_name("bin.partial")
    shutil.rmtree(staging_dir, ignore_errors=True)
    staging_dir.mkdir(parents=True)

    common = [go, "build", "-mod=mod", "-v", "-trimpath"]
    static_todo = [c for c in K8S_COMMANDS if c in todo]
    if static_todo:
        progress.step(
            f"building {', '.join(static_todo)} {version} (CGO off, -trimpath); "
            "a cold build takes tens of minutes on 2 cores"
        )
        _build_k8s(common, plan, static_todo, staging_dir, work, env, progress)
    if cgo_todo:
        progress.step(
            f"building {', '.join(cgo_todo)} {version} (CGO on, as upstream releases it; "
            "-trimpath); up to tens of minutes on 2 cores when nothing is cached"
        )
        _build_k8s(common, plan, cgo_todo, staging_dir, work, go_env(cgo=True), progress)
    if "etcd" in todo:
        progress.step(f"building etcd {plan.etcd_version}")
        etcd_flags = f"-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA={plan.etcd_commit[:8]}"
        run_go(
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
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if stamp is None:
        write_json_atomically(
            staging_dir / _STAMP,
            {
                "kubernetes": plan.k8s_version,
                "etcd": plan.etcd_version,
                "kubernetes_commit": plan.k8s_commit,
                "built": when,
                "binaries": dict.fromkeys(sorted(BINARIES), when),
            },
        )
        shutil.rmtree(target, ignore_errors=True)
        staging_dir.rename(target)
    else:
        present = [b for b in BINARIES if b not in todo]
        for name in todo:
            os.replace(staging_dir / name, target / name)
        write_json_atomically(target / _STAMP, updated_stamp(stamp, todo, when, present))
        shutil.rmtree(staging_dir, ignore_errors=True)
    progress.step(f"done: {target}")
    return target


def _build_k8s(
    common: Sequence[str],
    plan: BuildPlan,
    commands: Sequence[str],
    staging_dir: Path,
    work: Path,
    env: dict[str, str],
    progress: Progress,
) -> None:
    pkgs = [f"k8s.io/kubernetes/cmd/{c}" for c in commands]
    run_go(
        [*common, "-ldflags", k8s_ldflags(plan), "-o", f"{staging_dir}/", *pkgs],
        work,
        env,
        f"compiling {', '.join(commands)}",
        progress,
    )
