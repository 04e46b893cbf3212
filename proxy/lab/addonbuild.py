"""Build (or reuse) the cluster add-ons the lab installs: CoreDNS and MetalLB.

Each from the Go module proxy at a pinned version, CGO off, with the version settings
their release builds use, cached under ``<cache_root>/addons/<coredns>-<metallb>/``
(the same machinery as the node components, :mod:`proxy.lab.nodebuild`):

- CoreDNS ``v1.14.6``: the version kubeadm v1.37.2 installs
  (``cmd/kubeadm/app/constants``: ``CoreDNSVersion``). The binary is the ``coredns``
  main package with every in-tree plugin, as ``make`` builds it.
- MetalLB ``v0.15.2``: ``controller`` and ``speaker``, and the install manifest
  ``config/manifests/metallb-native.yaml`` from the same module (what MetalLB's docs
  tell kind users to ``kubectl apply``). Why not v0.16.2, the newest: it needs
  ``github.com/metallb/frr-k8s v0.0.27``, which the module proxy reachable here does not
  serve, and it does not compile against the newest one it does (v0.0.21). v0.15.2 asks
  for frr-k8s v0.0.20 (not served either); v0.0.21 is pinned in its place, a patch
  release that only adds to v0.0.20's API. The pin is recorded in the stamp. frr-k8s is
  used only by the BGP "frr-k8s" mode, which the lab (L2 mode) never runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from proxy.lab.nodebuild import BinarySet, Component, NodeBinaries, Step
from proxy.lab.nodebuild import build as build_set
from proxy.lab.nodebuild import layout as set_layout
from proxy.lab.nodebuild import missing as set_missing

COREDNS_VERSION = "v1.14.6"
METALLB_VERSION = "v0.15.2"
METALLB_MANIFEST = "config/manifests/metallb-native.yaml"

COREDNS = Component(
    "coredns",
    "github.com/coredns/coredns",
    COREDNS_VERSION,
    # CoreDNS's Makefile: -X github.com/coredns/coredns/coremain.GitCommit=$(GITCOMMIT)
    version_flags=("-X {module}/coremain.GitCommit={revision}",),
)
METALLB = Component(
    "metallb",
    "go.universe.tf/metallb",
    METALLB_VERSION,
    replace=(("github.com/metallb/frr-k8s", "v0.0.21"),),
    keep=(METALLB_MANIFEST,),
    # controller/Dockerfile and speaker/Dockerfile set internal/version.gitCommit (and the
    # release branch, which a module version does not name; the version itself is in
    # internal/version's source)
    version_flags=("-X {module}/internal/version.gitCommit={revision}",),
)
ADDONS = BinarySet(
    "addons",
    "the cluster add-ons (CoreDNS, MetalLB)",
    (COREDNS, METALLB),
    (
        Step(COREDNS, ("",), "bin"),
        Step(METALLB, ("controller", "speaker"), "bin"),
    ),
)


def layout(root: Path | None = None) -> NodeBinaries:
    return set_layout(root, ADDONS)


def missing(paths: NodeBinaries | None = None) -> list[str]:
    return set_missing(paths, ADDONS)


def build(
    *,
    out: Callable[[str], None] | None = None,
    force: bool = False,
    paths: NodeBinaries | None = None,
) -> NodeBinaries:
    """Where coredns, controller and speaker are, built first if missing."""
    return build_set(out=out, force=force, paths=paths, bset=ADDONS)


def metallb_manifest(paths: NodeBinaries | None = None) -> Path:
    """``metallb-native.yaml`` as the built MetalLB module ships it."""
    paths = paths if paths is not None else layout()
    return paths.files_dir / METALLB.name / METALLB_MANIFEST
