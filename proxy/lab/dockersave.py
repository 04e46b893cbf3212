"""Read images out of an archive a user hands the lab: an ``oci-archive`` or a ``docker save``.

A ``docker save`` tar (``manifest.json`` with ``Config``, ``RepoTags`` and ``Layers``)
is converted to OCI: each uncompressed layer tar is gzip'd into a blob store (its
digest checked against the config's ``rootfs.diff_ids``), the config is kept byte for
byte, and a new OCI manifest is written. Archives that are OCI layouts (including what
Docker ≥ 25 saves) are used as they are; their names come from the index annotations,
or from ``manifest.json``'s ``RepoTags`` when the index only gives a bare tag.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from proxy.lab import imageref, oci

MAX_IMAGES = 100


@dataclass(frozen=True)
class LoadedImage:
    """Names (normalised references) of one image, where its blobs are and its manifest."""

    refs: tuple[str, ...]
    source: oci.BlobSource
    view: oci.ImageView


def _normalise(names: Sequence[str], where: str) -> tuple[str, ...]:
    out: list[str] = []
    for name in names:
        try:
            ref = imageref.normalize(name)
        except imageref.ReferenceError as e:
            raise oci.OciError(f"{where}: {e}") from e
        if ref not in out:
            out.append(ref)
    return tuple(out)


def _docker_manifest(archive: oci.OciArchive) -> list[dict[str, Any]]:
    obj = oci.load_json(archive.read_member("manifest.json", "manifest.json"), "manifest.json")
    if not isinstance(obj, list) or not all(isinstance(e, dict) for e in obj):
        raise oci.OciError(f"{archive.path}: manifest.json is not a list of objects")
    if len(obj) > MAX_IMAGES:
        raise oci.OciError(f"{archive.path}: more than {MAX_IMAGES} images in manifest.json")
    return obj


def _repo_tags(entry: dict[str, Any]) -> list[str]:
    tags = entry.get("RepoTags") or []
    return [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []


def _config_digest(entry: dict[str, Any]) -> str:
    name = str(entry.get("Config", ""))
    stem = name.rsplit("/", 1)[-1].removesuffix(".json")
    return f"sha256:{stem}"


def _from_oci_layout(archive: oci.OciArchive) -> list[LoadedImage]:
    docker_tags: dict[str, list[str]] = {}
    if archive.has("manifest.json"):
        for entry in _docker_manifest(archive):
            docker_tags.setdefault(_config_digest(entry), []).extend(_repo_tags(entry))
    by_digest: dict[str, tuple[list[str], oci.ImageView]] = {}
    for tagged in archive.images():
        names = by_digest.setdefault(tagged.view.descriptor.digest, ([], tagged.view))[0]
        ref = tagged.ref
        if "/" in ref or ":" in ref:  # a bare "latest" is only a tag, not a name
            names.append(ref)
        names.extend(docker_tags.get(tagged.view.config.digest, []))
    out: list[LoadedImage] = []
    for digest, (names, view) in by_digest.items():
        if not names:
            raise oci.OciError(
                f"{archive.path}: image {digest} has no name (no io.containerd.image.name or "
                "full org.opencontainers.image.ref.name annotation). Save it with a name "
                "(docker save NAME:TAG, buildah push … oci-archive:FILE:NAME:TAG)."
            )
        out.append(LoadedImage(_normalise(names, str(archive.path)), archive, view))
    return out


def _from_docker_save(archive: oci.OciArchive, store: oci.BlobStore) -> list[LoadedImage]:
    out: list[LoadedImage] = []
    converted: dict[str, oci.Layer] = {}
    for entry in _docker_manifest(archive):
        tags = _repo_tags(entry)
        config_name = str(entry.get("Config", ""))
        layers = entry.get("Layers")
        if not tags or not config_name or not isinstance(layers, list):
            raise oci.OciError(
                f"{archive.path}: a manifest.json entry lacks RepoTags, Config or Layers; "
                "save images by name (docker save NAME:TAG > FILE.tar)"
            )
        raw_config = archive.read_member(config_name, f"config {config_name}")
        config = oci.load_json(raw_config, f"config {config_name}")
        rootfs = config.get("rootfs") if isinstance(config, dict) else None
        diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
        if not isinstance(diff_ids, list) or len(diff_ids) != len(layers):
            raise oci.OciError(
                f"{archive.path}: config {config_name} lists {len(diff_ids or [])} diff_ids "
                f"for {len(layers)} layers"
            )
        built: list[oci.Layer] = []
        for member, want in zip(layers, diff_ids, strict=True):
            name = str(member)
            if name not in converted:
                with archive.open_member(name) as stream:
                    converted[name] = oci.gzip_layer(store, stream, f"docker save: {name}")
            layer = converted[name]
            if layer.diff_id != want:
                raise oci.OciError(
                    f"{archive.path}: layer {name} hashes to {layer.diff_id}, but the config "
                    f"says {want}; the archive is damaged"
                )
            built.append(layer)
        config_desc = store.put_bytes(raw_config, oci.MEDIA_CONFIG)
        raw_manifest = oci.manifest_blob(config_desc, [layer.descriptor for layer in built])
        manifest = store.put_bytes(raw_manifest, oci.MEDIA_MANIFEST)
        view = oci.parse_manifest(raw_manifest, manifest)
        out.append(LoadedImage(_normalise(tags, str(archive.path)), store, view))
    return out


def read_images(archive: oci.OciArchive, scratch: oci.BlobStore) -> list[LoadedImage]:
    """Every named image in ``archive``; ``scratch`` holds blobs made while converting."""
    if archive.is_oci_layout:
        return _from_oci_layout(archive)
    if archive.has("manifest.json"):
        return _from_docker_save(archive, scratch)
    raise oci.OciError(
        f"{archive.path} is neither an OCI image layout (oci-layout + index.json) nor a "
        "docker save archive (manifest.json); make one with `docker save NAME:TAG > FILE.tar` "
        "or `buildah push NAME oci-archive:FILE.tar:NAME`"
    )
