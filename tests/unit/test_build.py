"""The Kubernetes builder's pure parts and its failure messages (no build is started)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from proxy.lab import build

GO_MOD = """module k8s.io/kubernetes

go 1.26.0

require (
	go.etcd.io/etcd/server/v3 v3.7.0 // indirect
	k8s.io/api v0.0.0
	k8s.io/client-go v0.0.0
)

require github.com/x/y v1.2.3

replace (
	k8s.io/api => ./staging/src/k8s.io/api
	k8s.io/client-go => ./staging/src/k8s.io/client-go
	github.com/x/y => github.com/x/y v1.2.4
)
"""


def test_parse_go_mod_finds_staging_modules_and_versions() -> None:
    staging, versions = build.parse_go_mod(GO_MOD)
    assert staging == ["k8s.io/api", "k8s.io/client-go"]
    assert versions["go.etcd.io/etcd/server/v3"] == "v3.7.0"
    assert versions["github.com/x/y"] == "v1.2.3"


def test_render_go_mod_replaces_staging_with_published_twins() -> None:
    plan = build.BuildPlan("v1.37.2", ("k8s.io/api", "k8s.io/client-go"), "v3.7.0", "abc", "def")
    text = build.render_go_mod(plan)
    assert "\tk8s.io/kubernetes v1.37.2\n" in text
    assert "\tgo.etcd.io/etcd/server/v3 v3.7.0\n" in text
    assert "\tk8s.io/api => k8s.io/api v0.37.2\n" in text
    assert "\tk8s.io/client-go v0.37.2\n" in text
    assert plan.staging_version == "v0.37.2"


def test_ldflags_carry_the_version() -> None:
    plan = build.BuildPlan("v1.37.2", (), "v3.7.0", "abc", "def")
    flags = build.k8s_ldflags(plan)
    assert "-X k8s.io/component-base/version.gitVersion=v1.37.2" in flags
    assert "-X k8s.io/component-base/version.gitMinor=37" in flags
    assert flags.startswith("-s -w")


def _fake_bins(directory: Path, names: tuple[str, ...]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        f = directory / name
        f.write_text("#!/bin/sh\n")
        f.chmod(f.stat().st_mode | stat.S_IXUSR)


def test_override_directory_is_used_and_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_bins(tmp_path, build.BINARIES)
    monkeypatch.setenv(build.BIN_ENV, str(tmp_path))
    assert build.build() == tmp_path
    (tmp_path / "etcd").unlink()
    with pytest.raises(build.BuildError, match="lacks executable etcd"):
        build.build()


def test_cached_build_returns_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(build.BIN_ENV, raising=False)
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path))
    target = build.bin_dir()
    _fake_bins(target, build.BINARIES)
    (target / "build-stamp.json").write_text("{}")
    monkeypatch.setenv("PATH", "/nonexistent")  # no go needed when cached
    assert build.build() == target


def test_missing_go_names_the_alternative(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(build.BIN_ENV, raising=False)
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(build.BuildError, match="Go is not installed") as err:
        build.build()
    assert build.BIN_ENV in str(err.value)


@pytest.mark.skipif(
    not any(os.access(Path(p) / "go", os.X_OK) for p in os.environ["PATH"].split(":")),
    reason="needs the go command",
)
def test_unreachable_module_proxy_names_the_alternative(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(build.BIN_ENV, raising=False)
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("GOMODCACHE", str(tmp_path / "modcache"))  # nothing cached to fall back on
    monkeypatch.setenv("GOPROXY", "off")
    with pytest.raises(build.BuildError) as err:
        build.build(out=lambda _: None)
    text = str(err.value)
    assert "module proxy could not be reached" in text and build.BIN_ENV in text
