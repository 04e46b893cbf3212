"""proxy.lab.cgroups' tree walk over a cgroup tree that changes while it is walked."""

from __future__ import annotations

import shutil
from pathlib import Path

from proxy.lab import cgroups


def test_a_cgroup_removed_during_the_walk_is_skipped(tmp_path: Path) -> None:
    for rel in ("pods/a/ctr", "pods/b/ctr"):
        (tmp_path / rel).mkdir(parents=True)
    walk = cgroups._walk_depth_first(tmp_path / "pods")
    assert next(walk) == tmp_path / "pods/a/ctr"
    shutil.rmtree(tmp_path / "pods/b")  # a pod going away while its sibling is walked
    assert list(walk) == [tmp_path / "pods/a", tmp_path / "pods"]


def test_the_walk_lists_children_before_parents(tmp_path: Path) -> None:
    (tmp_path / "x/y").mkdir(parents=True)
    (tmp_path / "w").mkdir()
    assert list(cgroups._walk_depth_first(tmp_path)) == [
        tmp_path / "w",
        tmp_path / "x/y",
        tmp_path / "x",
        tmp_path,
    ]
    assert list(cgroups._walk_depth_first(tmp_path / "absent")) == []
