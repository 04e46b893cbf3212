"""``lab load-image``: push a ``docker save`` archive's images into the lab registry."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from proxy.lab.commands.preconditions import require_root, running_state
from proxy.lab.errors import EXIT_OK, LabError


def load_image(state_dir: Path, archive: Path, *, out: TextIO = sys.stdout) -> int:
    """``lab load-image FILE.tar``: push its images into the running lab's registry."""
    from proxy.lab.imagepush import load_image_archive
    from proxy.lab.node import MIRRORED_REGISTRIES
    from proxy.lab.oci import OciError
    from proxy.lab.regclient import RegistryError
    from proxy.lab.rootfs import ImageBuildError

    require_root("load-image")
    state = running_state(state_dir)
    if not state.registry:
        raise LabError(f"lab {state.lab_id} has no registry (started by an older version)")
    url = f"http://{state.registry['address']}"
    try:
        added = load_image_archive(
            archive, url, netns=state.registry["namespace"], registries=MIRRORED_REGISTRIES
        )
    except (OSError, ImageBuildError, OciError, RegistryError) as exc:
        raise LabError(f"{archive}: {exc}") from exc
    if not added:
        raise LabError(f"{archive} holds no tagged image (a `docker save NAME:TAG` archive has)")
    for ref in added:
        print(f"loaded {ref} into the lab registry ({state.registry['address']})", file=out)
    return EXIT_OK
