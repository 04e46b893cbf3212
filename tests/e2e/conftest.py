"""Fixtures for the e2e tier: the upstream Kubernetes binaries (built if needed).

Set ``KUBE_PROXY_PY_E2E=skip`` to skip e2e tests when the binaries are not already
built; otherwise a missing build is started (a cold build takes tens of minutes).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from proxy.lab import build as k8s_build
from proxy.lab.controlplane.controlplane import ControlPlane

if TYPE_CHECKING:
    from tests.e2e.test_lab import Lab

SKIP_ENV = "KUBE_PROXY_PY_E2E"


def _prebuilt() -> Path | None:
    """The binaries directory if it is usable without building anything."""
    override = os.environ.get(k8s_build.BIN_ENV)
    directory = Path(override) if override else k8s_build.bin_dir()
    if k8s_build.missing_binaries(directory):
        return None
    if not override and not (directory / "build-stamp.json").exists():
        return None
    return directory


@pytest.fixture(scope="session")
def k8s_bin() -> Path:
    """Directory with etcd, kube-apiserver, kube-controller-manager, … (K8S_VERSION)."""
    if os.environ.get(SKIP_ENV) == "skip":
        directory = _prebuilt()
        if directory is None:
            pytest.skip(
                f"{SKIP_ENV}=skip and the Kubernetes {k8s_build.K8S_VERSION} binaries are not "
                f"built (looked in {os.environ.get(k8s_build.BIN_ENV) or k8s_build.bin_dir()}); "
                f"unset {SKIP_ENV} to build them, or set {k8s_build.BIN_ENV}"
            )
    logging.getLogger("proxy").setLevel(logging.INFO)
    return k8s_build.build()


@pytest.fixture(scope="session")
def default_lab(k8s_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """One ``lab up --nodes 2`` (nftables, with the add-ons), as a user starts it, shared
    by test_demo.py (the demo and the walkthroughs run on it first) and test_lab.py (whose
    last test takes it down and checks that nothing is left): one lab start less."""
    from tests.e2e.test_lab import start_lab

    lab = start_lab(k8s_bin, tmp_path_factory.mktemp("default-lab") / "state", "--nodes", "2")
    try:
        yield lab
    finally:
        lab.cli("down")  # idempotent: a no-op after test_lab's test_down_leaves_nothing


@pytest.fixture(scope="package")
def bare_control_plane(k8s_bin: Path) -> Iterator[ControlPlane]:
    """etcd and kube-apiserver only (no controllers, no scheduler), shared by
    test_manifest.py (dry runs; the manifest's RBAC objects, deleted again),
    test_reflector.py (namespaces ``r-*``) and test_validation_matches_api.py (it
    creates and at once deletes in ``default`` and a namespace of its own): two API
    server starts less. Stopped after the package's last test."""
    with ControlPlane(k8s_bin) as plane:
        yield plane
