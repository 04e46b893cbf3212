"""Pushing images into a registry: the lab's images into the registry cache every lab's
registry starts from, and a user's ``docker save`` or OCI archive into a running lab's."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

from proxy.lab import build, dockersave, imageref, images, oci
from proxy.lab.imagecache import ImageSet, images_dir, one_at_a_time
from proxy.lab.regclient import RegistryClient
from proxy.lab.rootfs import ImageBuildError

PUSHED_STAMP = "kube-proxy-py-pushed.json"


def group_by_repo(refs: Sequence[str]) -> dict[str, list[str]]:
    repos: dict[str, list[str]] = {}
    for text in refs:
        ref = imageref.parse(text)
        if ref.tag:
            repos.setdefault(ref.repository, []).append(ref.tag)
    return repos


def _push(
    client: RegistryClient, source: oci.BlobSource, view: oci.ImageView, refs: Sequence[str]
) -> None:
    for repo, tags in group_by_repo(refs).items():
        client.push_image(source, view, repo, tags)


def push_all(
    registry_url: str, images: ImageSet, out: images.Out | None = None, *, netns: str | None = None
) -> dict[str, str]:
    """Push every image under each of its references; return {reference: digest}.

    ``netns`` names the network namespace the registry address is reached in.
    """
    progress = build.Progress(out)
    client = RegistryClient(registry_url, netns=netns)
    client.ping()
    pushed: dict[str, str] = {}
    for image in images.images:
        progress.step(f"pushing {image.refs[0]} ({image.size / 1e6:.1f} MB)")
        with oci.OciArchive(image.archive) as archive:
            view = oci.resolve_manifest(archive, archive.index_entries()[0])
            _push(client, archive, view, image.refs)
        pushed.update({ref: view.descriptor.digest for ref in image.refs})
    return pushed


def ensure_cached_registry(out: images.Out | None = None, *, force: bool = False) -> ImageSet:
    """Build the images (cached) and make the registry's storage cache hold them all.

    The storage is :func:`proxy.lab.registry.storage_cache`, the read-only lower layer
    of every lab's registry; a registry is run on it in a throwaway namespace only when
    an image changed since the last push (recorded beside it). Call it before any lab
    registry is started on that storage (``lab build`` / ``lab up`` do).
    """
    from proxy.lab import nodebuild
    from proxy.lab import registry as labregistry
    from proxy.lab.regserve import serve_registry

    built = images.build_images(out, force=force)
    storage = labregistry.storage_cache()
    stamp = storage / PUSHED_STAMP
    want = {ref: image.digest for image in built.images for ref in image.refs}
    try:
        have = json.loads(stamp.read_text())
    except (OSError, json.JSONDecodeError):
        have = None
    progress = build.Progress(out)
    if have == want and not force:
        progress.step(f"registry cache {storage} holds all {len(want)} image references")
        return built
    progress.step(f"pushing {len(built.images)} images into the registry cache {storage}")
    storage.mkdir(parents=True, exist_ok=True)
    with (
        one_at_a_time(storage.parent / "registry.lock", progress, "another push to the cache"),
        serve_registry(nodebuild.node_bin_dir() / "registry", storage) as client,
    ):
        if client.netns is None:
            raise ImageBuildError("the throwaway registry has no namespace")
        push_all(client.url, built, out, netns=client.netns)
    stamp.write_text(json.dumps(want, indent=2, sort_keys=True) + "\n")
    return built


def load_image_archive(
    path: Path,
    registry_url: str,
    *,
    netns: str | None = None,
    registries: Sequence[str] | None = None,
) -> list[str]:
    """Push the images of a ``docker save`` or OCI archive; return the references added.

    ``registries``: the registries the lab's nodes resolve through the lab registry; an
    image named under any other is refused before anything is pushed (its Pods could
    never pull it)."""
    if not path.is_file():
        raise ImageBuildError(f"{path} does not exist or is not a file")
    client = RegistryClient(registry_url, netns=netns)
    client.ping()
    directory = images_dir()
    directory.mkdir(parents=True, exist_ok=True)
    added: list[str] = []
    with (
        tempfile.TemporaryDirectory(prefix="load-", dir=directory) as tmp,
        oci.OciArchive(path) as archive,
    ):
        loaded = dockersave.read_images(archive, oci.BlobStore(Path(tmp)))
        if registries is not None:
            elsewhere = [
                ref for image in loaded for ref in image.refs
                if imageref.parse(ref).domain not in registries
            ]  # fmt: skip
            if elsewhere:
                raise ImageBuildError(
                    f"{', '.join(elsewhere)}: the lab's nodes pull only "
                    f"{', '.join(registries)} names (through the lab registry); tag the "
                    "image under one of them, e.g. docker.io/library/NAME:TAG"
                )
        for image in loaded:
            _push(client, image.source, image.view, image.refs)
            added.extend(image.refs)
    return added
