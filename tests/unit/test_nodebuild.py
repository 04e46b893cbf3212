"""The node components' builder (proxy.lab.nodebuild) and kubelet's place in proxy.lab.build.

Pure parts only (go.mod text, ldflags, stamps, which binaries are missing), plus builds
with the go runner faked out; no network. The last test runs the real cached binaries'
version commands when `kube-proxy-py lab build` has made them.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from proxy.lab import build, nodebuild
from proxy.lab.nodebuild import CNI_PLUGINS, CONTAINERD, REGISTRY, RUNC

NODE_BINARIES = {"containerd", "ctr", "containerd-shim-runc-v2", "runc", "registry"}
CNI_BINARIES = {"bridge", "host-local", "loopback", "portmap"}


def _exe(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _complete_node_cache(paths: nodebuild.NodeBinaries) -> None:
    records: dict[str, object] = {}
    for step in nodebuild.STEPS:
        for name in step.binaries:
            _exe(paths.directory(step.dest) / name)
            records[name] = nodebuild.stamp_record(step, None, "go1.26.8", "2026-01-01T00:00:00Z")
    paths.stamp.write_text(json.dumps(nodebuild.stamp_document(records)))


# ------------------------------------------------------------------ plan: what and how


def test_steps_cover_every_pinned_binary_in_the_right_directory() -> None:
    by_dest: dict[str, set[str]] = {"bin": set(), "cni": set()}
    for step in nodebuild.STEPS:
        by_dest[step.dest].update(step.binaries)
    assert by_dest == {"bin": NODE_BINARIES, "cni": CNI_BINARIES}
    assert nodebuild.versions() == {
        "containerd": "v2.3.7",
        "runc": "v1.5.3",
        "cni-plugins": "v1.10.0",
        "registry": "v3.1.2",
    }


def test_binary_names_follow_go_build_o_dir() -> None:
    assert nodebuild.binary_name("github.com/opencontainers/runc") == "runc"
    assert nodebuild.binary_name("github.com/containerd/containerd/v2/cmd/ctr") == "ctr"
    assert nodebuild.binary_name("example.com/tool/v3") == "tool"  # major suffix dropped
    assert nodebuild.binary_name("example.com/v3x") == "v3x"


def test_only_runc_uses_cgo_with_seccomp_and_pie() -> None:
    cgo = [s for s in nodebuild.STEPS if s.cgo]
    assert [s.component for s in cgo] == [RUNC]
    assert "seccomp" in cgo[0].tags and cgo[0].pie
    shim = next(s for s in nodebuild.STEPS if "containerd-shim-runc-v2" in s.binaries)
    assert shim.tags == ("urfave_cli_no_docs", "no_grpc")


def test_go_mod_requires_only_the_component_at_its_own_go_version() -> None:
    text = nodebuild.render_go_mod(CONTAINERD, "1.26.8")
    assert text == (
        "module kube-proxy-py.local/node-build/containerd\n\n"
        "go 1.26.8\n\n"
        "require github.com/containerd/containerd/v2 v2.3.7\n"
    )


def test_go_directive_is_read_past_comments_and_toolchain() -> None:
    go_mod = "// c\nmodule x\n\ngo 1.24.0 // min\n\ntoolchain go1.25.1\nrequire (\n\tgo v1\n)\n"
    assert nodebuild.go_directive(go_mod) == "1.24.0"
    assert nodebuild.go_directive("module x\n") is None


def test_containerd_ldflags_set_its_version_variables() -> None:
    m = "github.com/containerd/containerd/v2"
    flags = nodebuild.ldflags(CONTAINERD, "0123abcd")
    assert flags.startswith("-s -w ")
    assert f"-X {m}/version.Version=v2.3.7" in flags
    assert f"-X {m}/version.Revision=0123abcd" in flags
    assert f"-X {m}/version.Package={m}" in flags
    assert "version.Revision" not in nodebuild.ldflags(CONTAINERD, None)


def test_runc_cni_and_registry_ldflags() -> None:
    assert nodebuild.ldflags(RUNC, "feed") == "-s -w -X main.gitCommit=feed"
    assert nodebuild.ldflags(RUNC, None) == "-s -w"  # its version is embedded from VERSION
    assert (
        "-X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=v1.10.0"
        in nodebuild.ldflags(CNI_PLUGINS, None)
    )
    reg = nodebuild.ldflags(REGISTRY, "beef")
    assert "-X github.com/distribution/distribution/v3/version.version=3.1.2" in reg
    assert "-X github.com/distribution/distribution/v3/version.revision=beef" in reg


def test_the_version_variables_exist_in_the_module_sources() -> None:
    mod = Path(os.environ.get("GOMODCACHE", Path.home() / "go/pkg/mod"))
    src = mod / "github.com/containerd/containerd/v2@v2.3.7/version/version.go"
    runc_main = mod / "github.com/opencontainers/runc@v1.5.3/main.go"
    if not (src.exists() and runc_main.exists()):
        pytest.skip(f"containerd v2.3.7 / runc v1.5.3 sources are not in the module cache {mod}")
    text = src.read_text()
    for var in ("Version =", "Revision =", "Package ="):
        assert var in text
    assert "var gitCommit" in runc_main.read_text()


def test_go_build_command_for_runc() -> None:
    step = next(s for s in nodebuild.STEPS if s.component is RUNC)
    cmd = nodebuild.go_build_command("go", step, None, Path("/x/partial"))
    assert cmd[:5] == ["go", "build", "-mod=mod", "-v", "-trimpath"]
    assert "-buildmode=pie" in cmd
    assert cmd[cmd.index("-tags") + 1] == "seccomp,urfave_cli_no_docs"
    assert cmd[cmd.index("-o") + 1] == "/x/partial/"
    assert cmd[-1] == "github.com/opencontainers/runc"
    assert "-p" not in cmd


def test_seccomp_problems_name_the_package_to_install() -> None:
    assert nodebuild.seccomp_problem("/usr/bin/pkg-config", True) is None
    assert "apt-get install pkg-config" in str(nodebuild.seccomp_problem(None, False))
    assert "apt-get install libseccomp-dev" in str(
        nodebuild.seccomp_problem("/usr/bin/pkg-config", False)
    )


# ------------------------------------------------------------------ cache and stamp


def test_cache_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path))
    root = tmp_path / "node" / "v2.3.7-v1.5.3-v1.10.0-v3.1.2"
    assert nodebuild.node_bin_dir() == root / "bin"
    assert nodebuild.cni_bin_dir() == root / "cni"
    assert nodebuild.layout().stamp == root / nodebuild.STAMP


def test_missing_detection(tmp_path: Path) -> None:
    paths = nodebuild.layout(tmp_path)
    assert set(nodebuild.missing(paths)) == NODE_BINARIES | CNI_BINARIES
    _complete_node_cache(paths)
    assert nodebuild.missing(paths) == []

    (paths.cni_dir / "portmap").chmod(0o644)  # not executable
    (paths.bin_dir / "ctr").unlink()
    assert nodebuild.missing(paths) == ["ctr", "portmap"]

    stamp = json.loads(paths.stamp.read_text())
    stamp["binaries"]["runc"]["version"] = "v1.1.5"  # built at another version
    del stamp["binaries"]["registry"]  # a file the stamp does not vouch for
    paths.stamp.write_text(json.dumps(stamp))
    assert nodebuild.missing(paths) == ["ctr", "runc", "portmap", "registry"]

    paths.stamp.unlink()
    assert len(nodebuild.missing(paths)) == len(NODE_BINARIES | CNI_BINARIES)


def test_pending_steps_build_only_missing_packages() -> None:
    steps = nodebuild.pending_steps(["ctr", "portmap"])
    assert [(s.component, s.packages) for s in steps] == [
        (CONTAINERD, ("cmd/ctr",)),
        (CNI_PLUGINS, ("plugins/meta/portmap",)),
    ]
    assert steps[0].tags == ("urfave_cli_no_docs",)
    assert nodebuild.pending_steps([]) == []


def test_stamp_names_every_version_and_keeps_only_valid_records() -> None:
    old: dict[str, object] = {"binaries": {"runc": {"version": "v1.4.4"}, "ctr": {"v": 1}}}
    kept = nodebuild.kept_records(old, ["runc", "registry"])
    assert kept == {"runc": {"version": "v1.4.4"}}
    doc = nodebuild.stamp_document(kept)
    assert doc["versions"] == nodebuild.versions()
    assert nodebuild.kept_records(None, ["runc"]) == {}


def test_cached_node_build_needs_no_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = nodebuild.layout(tmp_path)
    _complete_node_cache(paths)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert nodebuild.build(paths=paths) == paths


def test_missing_go_for_node_components_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(build.BuildError, match="Go is not installed") as err:
        nodebuild.build(paths=nodebuild.layout(tmp_path), out=lambda _: None)
    assert "node components" in str(err.value)


def test_node_build_builds_only_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = nodebuild.layout(tmp_path / "node")
    _complete_node_cache(paths)
    (paths.bin_dir / "runc").unlink()
    before = json.loads(paths.stamp.read_text())["binaries"]["containerd"]
    commands: list[list[str]] = []

    def fake_run_go(
        cmd: Sequence[str], cwd: Path, env: dict[str, str], *a: object, **k: object
    ) -> str:
        commands.append(list(cmd))
        assert env["CGO_ENABLED"] == "1"
        out_dir = Path(cmd[cmd.index("-o") + 1])
        _exe(out_dir / "runc")
        return ""

    monkeypatch.setattr(nodebuild, "check_go", lambda *a, **k: "go")
    monkeypatch.setattr(nodebuild, "check_cgo", lambda *a, **k: None)
    monkeypatch.setattr(nodebuild, "_check_seccomp", lambda env: None)
    monkeypatch.setattr(nodebuild, "_prepare_module", lambda *a: "c0ffee")
    monkeypatch.setattr(nodebuild, "run_go", fake_run_go)
    monkeypatch.setattr(nodebuild, "_go_version", lambda go: "go1.26.8")

    assert nodebuild.build(paths=paths, out=lambda _: None) == paths
    assert len(commands) == 1 and commands[0][-1] == "github.com/opencontainers/runc"
    stamp = json.loads(paths.stamp.read_text())
    assert stamp["binaries"]["runc"]["revision"] == "c0ffee"
    assert stamp["binaries"]["runc"]["go"] == "go1.26.8"
    assert stamp["binaries"]["containerd"] == before
    assert nodebuild.missing(paths) == []
    assert not (paths.root / "partial").exists()


# ------------------------------------------------------------------ kubelet in build.py


def test_kubelet_is_a_kubernetes_binary_built_with_cgo() -> None:
    assert "kubelet" in build.BINARIES
    assert "kubelet" in build.K8S_CGO_COMMANDS and "kubelet" not in build.K8S_COMMANDS


def test_override_directory_must_hold_kubelet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in build.BINARIES:
        if name != "kubelet":
            _exe(tmp_path / name)
    monkeypatch.setenv(build.BIN_ENV, str(tmp_path))
    with pytest.raises(build.BuildError, match="lacks executable kubelet"):
        build.build()


def test_legacy_stamp_gains_per_binary_times() -> None:
    legacy: dict[str, object] = {"kubernetes": "v1.37.2", "built": "2026-01-01T00:00:00Z"}
    new = build.updated_stamp(legacy, ["kubelet"], "2026-02-02T00:00:00Z", ["etcd", "kubectl"])
    assert new["built"] == "2026-01-01T00:00:00Z"  # untouched: when the others were built
    assert new["updated"] == "2026-02-02T00:00:00Z"
    assert new["binaries"] == {
        "etcd": "2026-01-01T00:00:00Z",
        "kubectl": "2026-01-01T00:00:00Z",
        "kubelet": "2026-02-02T00:00:00Z",
    }


def test_cache_lacking_only_kubelet_builds_only_kubelet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(build.BIN_ENV, raising=False)
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path))
    target = build.bin_dir()
    for name in build.BINARIES:
        if name != "kubelet":
            _exe(target / name)
    (target / "etcd").write_text("old etcd\n")
    (target / "etcd").chmod(0o755)
    legacy = {"kubernetes": "v1.37.2", "etcd": "v3.7.0", "built": "2026-01-01T00:00:00Z"}
    (target / "build-stamp.json").write_text(json.dumps(legacy))
    commands: list[tuple[list[str], str]] = []

    def fake_run_go(
        cmd: Sequence[str], cwd: Path, env: dict[str, str], *a: object, **k: object
    ) -> str:
        commands.append((list(cmd), env["CGO_ENABLED"]))
        _exe(Path(cmd[cmd.index("-o") + 1]) / "kubelet")
        return ""

    plan = build.BuildPlan("v1.37.2", ("k8s.io/api",), "v3.7.0", "unknown", "unknown")
    monkeypatch.setattr(build, "check_go", lambda *a, **k: "go")
    monkeypatch.setattr(build, "check_cgo", lambda *a, **k: None)
    monkeypatch.setattr(build, "resolve_plan", lambda *a: plan)
    monkeypatch.setattr(build, "_published_modules", lambda *a: plan.staging_modules)
    monkeypatch.setattr(build, "run_go", fake_run_go)

    assert build.build(out=lambda _: None) == target
    assert len(commands) == 1
    cmd, cgo = commands[0]
    assert cmd[-1] == "k8s.io/kubernetes/cmd/kubelet" and cgo == "1"
    assert "-X k8s.io/component-base/version.gitVersion=v1.37.2" in " ".join(cmd)
    assert (target / "etcd").read_text() == "old etcd\n"  # the others are left alone
    assert build.missing_binaries(target) == []
    stamp = json.loads((target / "build-stamp.json").read_text())
    assert stamp["built"] == "2026-01-01T00:00:00Z"
    assert stamp["binaries"]["etcd"] == "2026-01-01T00:00:00Z"
    assert stamp["binaries"]["kubelet"] == stamp["updated"] != stamp["built"]
    assert not target.with_name("bin.partial").exists()


# ------------------------------------------------------------------ the real binaries

_VERSION_COMMANDS: dict[str, tuple[list[str], str]] = {
    "containerd": (["--version"], "v2.3.7"),
    "ctr": (["--version"], "v2.3.7"),
    "containerd-shim-runc-v2": (["-v"], "v2.3.7"),
    "runc": (["--version"], "runc version 1.5.3"),
    "registry": (["--version"], "3.1.2"),
}


def test_built_binaries_report_their_pinned_versions() -> None:
    k8s_bin = build.bin_dir()
    paths = nodebuild.layout()
    if nodebuild.missing(paths) or "kubelet" in build.missing_binaries(k8s_bin):
        pytest.skip(
            f"node components or kubelet not built ({paths.root}, {k8s_bin}); "
            "run `kube-proxy-py lab build`"
        )
    for name, (args, expected) in _VERSION_COMMANDS.items():
        r = subprocess.run(
            [str(paths.bin_dir / name), *args], capture_output=True, text=True, timeout=30
        )
        assert expected in r.stdout + r.stderr, (name, r.stdout, r.stderr)
    runc = subprocess.run(
        [str(paths.bin_dir / "runc"), "--version"], capture_output=True, text=True, timeout=30
    )
    assert "libseccomp:" in runc.stdout  # built with the seccomp tag
    for name in CNI_BINARIES:
        r = subprocess.run(
            [str(paths.cni_dir / name)],
            capture_output=True,
            text=True,
            timeout=30,
            env={"CNI_COMMAND": "VERSION", "PATH": "/usr/bin:/bin"},
        )
        assert "cniVersion" in r.stdout, (name, r.stdout, r.stderr)
        about = subprocess.run(
            [str(paths.cni_dir / name)], capture_output=True, text=True, timeout=30, env={}
        )
        assert "v1.10.0" in about.stdout + about.stderr, (name, about.stderr)
    kubelet = subprocess.run(
        [str(k8s_bin / "kubelet"), "--version"], capture_output=True, text=True, timeout=30
    )
    assert kubelet.stdout.strip() == "Kubernetes v1.37.2"
