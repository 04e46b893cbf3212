"""Build (or reuse) the upstream node components a kind-like lab node runs.

kubelet comes from :mod:`proxy.lab.build` (the same k8s.io/kubernetes release as the
control plane). This module builds what sits under it, each from the Go module proxy at a
pinned version, in a throwaway Go module of its own (one per upstream module, so no
component's dependencies are raised to another's by minimal version selection):

- containerd (``containerd``, ``containerd-shim-runc-v2``, ``ctr``), CGO off, with the
  tags and version ldflags of containerd's Makefile;
- runc, with cgo and the ``seccomp`` tag (needs ``libseccomp-dev``), PIE as its Makefile
  builds it, linked against the system's libseccomp;
- the CNI reference plugins ``bridge``, ``host-local``, ``loopback`` and ``portmap``, into
  a separate ``cni`` directory;
- the CNCF distribution registry.

Why containerd 2.3 rather than Debian bookworm's containerd 1.6.20: kubelet v1.37 asks
the runtime for its cgroup driver with the CRI ``RuntimeConfig`` call and, when the
runtime lacks it, still falls back to the ``cgroupDriver`` of its own configuration
(logging that CRI implementations should be updated and counting it towards "1.38.0");
that fallback goes away in 1.38 (KEP-4033). containerd 1.x lacks ``RuntimeConfig``.
1.6.20 is also far below the 1.6.39+ that containerd's RELEASES.md recommends even for
Kubernetes 1.34, and the 1.6 branch reached end of life on 2025-08-23. The RELEASES.md of
v2.3.7 recommends 2.3.0+ or 2.2.0+ for Kubernetes 1.36, and containerd 2.x keeps cgroup
v1 support (deprecated since 2.2, removal not before May 2029), which matters on this
project's hosts (cgroup v1, hybrid hierarchy). runc is built from source too: bookworm
ships runc 1.1.5, while containerd v2.3.7's docs/RUNC.md recommends a runc at least as new
as the one its CI tests (``script/setup/runc-version``: v1.5.2); the pin is v1.5.3, that
line's newest patch, which keeps cgroup v1 (deprecated since runc 1.4, not removed).

Results are cached under ``<cache_root>/node/<containerd>-<runc>-<cni>-<registry>/`` in
``bin/`` and ``cni/`` with a stamp naming every version; a second call only checks the
files, and only binaries that are absent (or not recorded in the stamp) are built.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from proxy.lab.build import (
    BuildError,
    Progress,
    cache_root,
    check_cgo,
    check_go,
    download_info,
    go_env,
    origin_commit,
    read_stamp,
    run_go,
    write_json_atomically,
)

CONTAINERD_VERSION = "v2.3.7"
RUNC_VERSION = "v1.5.3"
CNI_PLUGINS_VERSION = "v1.10.0"
REGISTRY_VERSION = "v3.1.2"

STAMP = "node-stamp.json"
_FALLBACK_GO = "1.26.0"


@dataclass(frozen=True)
class Component:
    """One upstream Go module at a pinned version; ``name`` names its throwaway module.

    ``replace``: (module, version) pins the throwaway go.mod sets where a version
    upstream's go.mod asks for is not served by the module proxy here (each one is
    recorded in the stamp). ``keep``: files of the module copied beside the binaries
    (``files/<name>/…``), e.g. the manifests an add-on is installed with.
    ``version_flags``: ``-X`` settings, ``{module}``, ``{version}`` and ``{revision}``
    filled in (a setting naming ``{revision}`` is left out when the revision is unknown).
    """

    name: str
    module: str
    version: str
    replace: tuple[tuple[str, str], ...] = ()
    keep: tuple[str, ...] = ()
    version_flags: tuple[str, ...] = ()


CONTAINERD = Component("containerd", "github.com/containerd/containerd/v2", CONTAINERD_VERSION)
RUNC = Component("runc", "github.com/opencontainers/runc", RUNC_VERSION)
CNI_PLUGINS = Component(
    "cni-plugins", "github.com/containernetworking/plugins", CNI_PLUGINS_VERSION
)
REGISTRY = Component("registry", "github.com/distribution/distribution/v3", REGISTRY_VERSION)
COMPONENTS: tuple[Component, ...] = (CONTAINERD, RUNC, CNI_PLUGINS, REGISTRY)


@dataclass(frozen=True)
class Step:
    """One ``go build``: packages of a component (paths inside its module) and their flags."""

    component: Component
    packages: tuple[str, ...]
    dest: str  # "bin" or "cni"
    cgo: bool = False
    tags: tuple[str, ...] = ()
    pie: bool = False

    def import_paths(self) -> tuple[str, ...]:
        m = self.component.module
        return tuple(f"{m}/{p}" if p else m for p in self.packages)

    @property
    def binaries(self) -> tuple[str, ...]:
        return tuple(binary_name(p) for p in self.import_paths())


STEPS: tuple[Step, ...] = (
    # containerd's Makefile: GO_BUILDTAGS gets urfave_cli_no_docs; the shim also no_grpc.
    Step(CONTAINERD, ("cmd/containerd", "cmd/ctr"), "bin", tags=("urfave_cli_no_docs",)),
    Step(
        CONTAINERD,
        ("cmd/containerd-shim-runc-v2",),
        "bin",
        tags=("urfave_cli_no_docs", "no_grpc"),
    ),
    # runc's Makefile: BUILDTAGS := seccomp urfave_cli_no_docs, CGO_ENABLED=1, -buildmode=pie.
    Step(RUNC, ("",), "bin", cgo=True, tags=("seccomp", "urfave_cli_no_docs"), pie=True),
    Step(
        CNI_PLUGINS,
        (
            "plugins/main/bridge",
            "plugins/ipam/host-local",
            "plugins/main/loopback",
            "plugins/meta/portmap",
        ),
        "cni",
    ),
    Step(REGISTRY, ("cmd/registry",), "bin"),
)


@dataclass(frozen=True)
class BinarySet:
    """Components built and cached together under ``<cache_root>/<kind>/<versions>/``."""

    kind: str
    what: str
    components: tuple[Component, ...]
    steps: tuple[Step, ...]


NODE = BinarySet(
    "node", "the node components (containerd, runc, CNI plugins, registry)", COMPONENTS, STEPS
)


@dataclass(frozen=True)
class NodeBinaries:
    """Where a binary set lives: ``bin_dir`` (containerd, runc, …), ``cni_dir``, and
    ``files_dir`` (the files a component keeps from its module)."""

    root: Path
    bin_dir: Path
    cni_dir: Path

    @property
    def stamp(self) -> Path:
        return self.root / STAMP

    @property
    def files_dir(self) -> Path:
        return self.root / "files"

    def directory(self, dest: str) -> Path:
        return self.cni_dir if dest == "cni" else self.bin_dir


def binary_name(import_path: str) -> str:
    """The file ``go build -o dir/`` writes for a main package (major-version suffix dropped)."""
    parts = import_path.split("/")
    last = parts[-1]
    if len(parts) > 1 and last[:1] == "v" and last[1:].isdigit():
        return parts[-2]
    return last


def versions(bset: BinarySet = NODE) -> dict[str, str]:
    return {c.name: c.version for c in bset.components}


def cache_key(components: Iterable[Component] = COMPONENTS) -> str:
    """``<containerd>-<runc>-<cni>-<registry>`` versions: the cache directory's name."""
    return "-".join(c.version for c in components)


def layout(root: Path | None = None, bset: BinarySet = NODE) -> NodeBinaries:
    root = root if root is not None else cache_root() / bset.kind / cache_key(bset.components)
    return NodeBinaries(root, root / "bin", root / "cni")


def node_bin_dir() -> Path:
    """containerd, containerd-shim-runc-v2, ctr, runc and registry (built or not)."""
    return layout().bin_dir


def cni_bin_dir() -> Path:
    """bridge, host-local, loopback and portmap (built or not)."""
    return layout().cni_dir


def all_binaries(bset: BinarySet = NODE) -> tuple[str, ...]:
    return tuple(b for s in bset.steps for b in s.binaries)


def missing_from(
    paths: NodeBinaries, stamp: Mapping[str, object] | None, bset: BinarySet = NODE
) -> list[str]:
    """Binaries absent, not executable, or not recorded in ``stamp`` at their pinned version.

    A file the stamp does not vouch for (an interrupted build, another version) counts as
    missing: it is rebuilt rather than trusted; so do a component's binaries while a file
    it keeps from its module is absent.
    """
    recorded = stamp.get("binaries") if stamp is not None else None
    records: Mapping[str, object] = recorded if isinstance(recorded, dict) else {}
    out: list[str] = []
    for step in bset.steps:
        directory = paths.directory(step.dest)
        kept = paths.files_dir / step.component.name
        files_ok = all((kept / rel).is_file() for rel in step.component.keep)
        for name in step.binaries:
            record = records.get(name)
            ok = isinstance(record, dict) and record.get("version") == step.component.version
            if not ok or not files_ok or not os.access(directory / name, os.X_OK):
                out.append(name)
    return out


def missing(paths: NodeBinaries | None = None, bset: BinarySet = NODE) -> list[str]:
    """Binaries of ``bset`` that a ``build()`` would (re)build now."""
    paths = paths if paths is not None else layout(bset=bset)
    return missing_from(paths, read_stamp(paths.stamp), bset)


def pending_steps(missing_names: Iterable[str], bset: BinarySet = NODE) -> list[Step]:
    """The build steps narrowed to the packages whose binaries are missing."""
    wanted = set(missing_names)
    steps: list[Step] = []
    for step in bset.steps:
        keep = tuple(p for p, b in zip(step.packages, step.binaries, strict=True) if b in wanted)
        if keep:
            steps.append(replace(step, packages=keep))
    return steps


def go_directive(go_mod: str) -> str | None:
    """The ``go`` line's version of a go.mod text."""
    for raw in go_mod.splitlines():
        words = raw.split("//", 1)[0].split()
        if len(words) == 2 and words[0] == "go":
            return words[1]
    return None


def render_go_mod(component: Component, go_version: str) -> str:
    """The throwaway module: requires only ``component``, at the go version it declares.

    Taking the component's own ``go`` line keeps the language version and GODEBUG
    defaults the ones upstream builds with.
    """
    text = (
        f"module kube-proxy-py.local/node-build/{component.name}\n\n"
        f"go {go_version}\n\n"
        f"require {component.module} {component.version}\n"
    )
    for module, version in component.replace:
        text += f"\nreplace {module} => {module} {version}\n"
    return text


def ldflags(component: Component, revision: str | None) -> str:
    """``-s -w`` plus the version variables upstream's release builds set."""
    m, v = component.module, component.version
    flags = ["-s", "-w"]
    if m == CONTAINERD.module:  # Makefile: version.Version, .Revision, .Package
        flags += [f"-X {m}/version.Version={v}", f"-X {m}/version.Package={m}"]
        if revision:
            flags.append(f"-X {m}/version.Revision={revision}")
    elif m == RUNC.module:  # the version is embedded from VERSION; Makefile sets the commit
        if revision:
            flags.append(f"-X main.gitCommit={revision}")
    elif m == CNI_PLUGINS.module:  # release workflow: BuildVersion=<tag>
        flags.append(f"-X {m}/pkg/utils/buildversion.BuildVersion={v}")
    elif m == REGISTRY.module:  # release Dockerfile: version=${VERSION#v}, revision, mainpkg
        flags += [f"-X {m}/version.version={v.removeprefix('v')}", f"-X {m}/version.mainpkg={m}"]
        if revision:
            flags.append(f"-X {m}/version.revision={revision}")
    for template in component.version_flags:
        if revision or "{revision}" not in template:
            flags.append(template.format(module=m, version=v, revision=revision))
    return " ".join(flags)


def go_build_command(go: str, step: Step, revision: str | None, out_dir: Path) -> list[str]:
    cmd = [go, "build", "-mod=mod", "-v", "-trimpath"]
    if step.pie:
        cmd.append("-buildmode=pie")
    if step.tags:
        cmd += ["-tags", ",".join(step.tags)]
    cmd += ["-ldflags", ldflags(step.component, revision), "-o", f"{out_dir}/"]
    return [*cmd, *step.import_paths()]


def seccomp_problem(pkg_config: str | None, has_libseccomp: bool) -> str | None:
    """What keeps runc's seccomp support from building, with the fix; None if nothing."""
    if pkg_config is None:
        return "runc's seccomp support needs pkg-config (not found): apt-get install pkg-config"
    if not has_libseccomp:
        return (
            "runc's seccomp support needs libseccomp's headers (pkg-config finds no "
            "libseccomp): apt-get install libseccomp-dev"
        )
    return None


def _check_seccomp(env: Mapping[str, str]) -> None:
    pkg_config = shutil.which("pkg-config")
    found = pkg_config is not None and (
        subprocess.run(
            [pkg_config, "--exists", "libseccomp"], env=dict(env), check=False
        ).returncode
        == 0
    )
    problem = seccomp_problem(pkg_config, found)
    if problem is not None:
        raise BuildError(problem)


def stamp_record(step: Step, revision: str | None, go_version: str, when: str) -> dict[str, object]:
    record: dict[str, object] = {
        "component": step.component.name,
        "module": step.component.module,
        "version": step.component.version,
        "revision": revision,
        "cgo": step.cgo,
        "tags": list(step.tags),
        "go": go_version,
        "built": when,
    }
    if step.component.replace:
        record["replace"] = {m: v for m, v in step.component.replace}
    return record


def kept_records(old: Mapping[str, object] | None, still_valid: Iterable[str]) -> dict[str, object]:
    """The per-binary records of ``old`` for the binaries that are not rebuilt."""
    old_records = old.get("binaries") if old is not None else None
    if not isinstance(old_records, dict):
        return {}
    return {n: old_records[n] for n in still_valid if n in old_records}


def stamp_document(records: Mapping[str, object], bset: BinarySet = NODE) -> dict[str, object]:
    """The stamp: every pinned version, and one record per binary built at them."""
    return {"versions": versions(bset), "binaries": dict(sorted(records.items()))}


def _alternative(paths: NodeBinaries) -> str:
    return f"build on a machine that reaches it and copy {paths.root} to the same path here."


def _prepare_module(
    go: str,
    component: Component,
    work: Path,
    env: dict[str, str],
    alternative: str,
    files_dir: Path | None = None,
) -> str | None:
    """Write the throwaway go.mod for ``component`` (and copy the files it keeps into
    ``files_dir/<name>``); return its commit if the proxy says."""
    work.mkdir(parents=True, exist_ok=True)
    go_mod = work / "go.mod"
    if not go_mod.exists():
        go_mod.write_text(f"module kube-proxy-py.local/node-resolve\n\ngo {_FALLBACK_GO}\n")
    info = download_info(
        go, f"{component.module}@{component.version}", work, env, alternative=alternative
    )
    go_version = go_directive(Path(str(info["GoMod"])).read_text()) or _FALLBACK_GO
    if component.keep and files_dir is not None:
        _keep_files(component, Path(str(info["Dir"])), files_dir / component.name)
    text = render_go_mod(component, go_version)
    if go_mod.read_text() != text:
        go_mod.write_text(text)
        (work / "go.sum").unlink(missing_ok=True)
    return origin_commit(info)


def _keep_files(component: Component, module_dir: Path, dest: Path) -> None:
    for rel in component.keep:
        source = module_dir / rel
        if not source.is_file():
            raise BuildError(f"{component.module}@{component.version} has no {rel}")
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


def _go_version(go: str) -> str:
    return subprocess.run(
        [go, "env", "GOVERSION"], env=go_env(), capture_output=True, text=True, check=False
    ).stdout.strip()


def _describe(step: Step) -> str:
    bits = ["CGO on" if step.cgo else "CGO off", "-trimpath"]
    if step.pie:
        bits.append("PIE")
    if step.tags:
        bits.append("tags " + ",".join(step.tags))
    return "; ".join(bits)


def build(
    *,
    out: Callable[[str], None] | None = None,
    force: bool = False,
    paths: NodeBinaries | None = None,
    bset: BinarySet = NODE,
) -> NodeBinaries:
    """Return where ``bset``'s binaries are, building the missing ones (all if ``force``)."""
    paths = paths if paths is not None else layout(bset=bset)
    stamp = None if force else read_stamp(paths.stamp)
    todo = all_binaries(bset) if force else tuple(missing_from(paths, stamp, bset))
    if not todo:
        return paths

    progress = Progress(out)
    alternative = _alternative(paths)
    go = check_go(bset.what, alternative=alternative)
    steps = pending_steps(todo, bset)
    if any(s.cgo for s in steps):
        cgo_env = go_env(cgo=True)
        check_cgo(go, cgo_env, "runc")
        _check_seccomp(cgo_env)
    go_version = _go_version(go)

    progress.step(f"{bset.kind} binaries to build: {', '.join(todo)}")
    for directory in (paths.bin_dir, paths.cni_dir):
        directory.mkdir(parents=True, exist_ok=True)
    # Drop the records of what is rebuilt first: the stamp never vouches for a binary that
    # is being replaced, even if this build is interrupted.
    records = kept_records(stamp, [b for b in all_binaries(bset) if b not in todo])
    write_json_atomically(paths.stamp, stamp_document(records, bset))
    partial = paths.root / "partial"
    revisions: dict[str, str | None] = {}
    for step in steps:
        component = step.component
        work = paths.root / "module" / component.name
        if component.name not in revisions:
            progress.step(f"resolving {component.module}@{component.version}")
            revisions[component.name] = _prepare_module(
                go, component, work, go_env(), alternative, paths.files_dir
            )
        revision = revisions[component.name]
        progress.step(
            f"building {', '.join(step.binaries)} ({component.name} {component.version}; "
            f"{_describe(step)})"
        )
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        run_go(
            go_build_command(go, step, revision, partial),
            work,
            go_env(cgo=step.cgo),
            f"compiling {', '.join(step.binaries)}",
            progress,
            alternative=alternative,
        )
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        for name in step.binaries:
            os.replace(partial / name, paths.directory(step.dest) / name)
            records[name] = stamp_record(step, revision, go_version, when)
        # after every step, so an interrupted build keeps (and vouches for) what finished
        write_json_atomically(paths.stamp, stamp_document(records, bset))
    shutil.rmtree(partial, ignore_errors=True)
    dirs = [paths.bin_dir, *([paths.cni_dir] if any(s.dest == "cni" for s in bset.steps) else [])]
    progress.step(f"done: {' and '.join(str(d) for d in dirs)}")
    return paths
