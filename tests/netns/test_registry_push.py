"""Push images to a real CNCF distribution registry and read them back.

The registry binary runs in a throwaway network namespace on its loopback
(:func:`proxy.lab.regserve.serve_registry`); the client reaches it from here through a
socket made inside that namespace. Nothing is linked to the root namespace. The binary comes from the lab's node build
(:func:`proxy.lab.nodebuild.node_bin_dir`), or ``KUBE_PROXY_PY_REGISTRY_BIN``.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.lab import imagepush, images, oci
from proxy.lab.imagecache import BuiltImage, ImageSet, images_dir
from proxy.lab.regclient import RegistryClient
from proxy.lab.regserve import serve_registry

pytestmark = pytest.mark.netns


def registry_binary() -> Path | None:
    override = os.environ.get("KUBE_PROXY_PY_REGISTRY_BIN")
    if override:
        return Path(override)
    try:
        from proxy.lab import nodebuild
    except ImportError:
        return None
    return nodebuild.node_bin_dir() / "registry"


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RegistryClient]:
    """A registry in a throwaway namespace (``kpp-reg-<random>``), killed afterwards."""
    binary = registry_binary()
    if binary is None or not os.access(binary, os.X_OK):
        pytest.skip(
            f"no registry binary at {binary}: run the lab's node build (proxy.lab.nodebuild) "
            "or set KUBE_PROXY_PY_REGISTRY_BIN"
        )
    with serve_registry(binary, tmp_path / "storage") as client:
        yield client
    assert client.netns is not None
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert client.netns not in namespaces


def _small_image(tmp_path: Path, refs: tuple[str, ...]) -> BuiltImage:
    store = oci.BlobStore(tmp_path / "store")
    layer = oci.write_layer(
        store,
        [
            oci.file("bin/hello", "#!/bin/sh\necho hello\n", 0o755),
            oci.symlink("bin/sh", "busybox"),
            oci.directory("tmp", 0o1777),
        ],
        "test layer",
    )
    manifest = oci.write_image(
        store, [layer], oci.ImageConfig(cmd=["/bin/hello"], labels={"test": "yes"})
    )
    archive = tmp_path / "small.tar"
    oci.write_oci_archive(archive, store, manifest, refs)
    return BuiltImage("small", refs, archive, manifest.digest, archive.stat().st_size)


def test_push_small_image_and_read_back(registry: RegistryClient, tmp_path: Path) -> None:
    refs = ("docker.io/library/busybox:latest", "docker.io/library/busybox:1.36")
    image = _small_image(tmp_path, refs)
    pushed = imagepush.push_all(
        registry.url, ImageSet((image,)), lambda _: None, netns=registry.netns
    )

    assert pushed == {ref: image.digest for ref in refs}
    assert "library/busybox" in registry.catalog()
    assert sorted(registry.tags("library/busybox")) == ["1.36", "latest"]
    assert registry.manifest_digest("library/busybox", "latest") == image.digest
    media, raw = registry.get_manifest("library/busybox", "1.36")
    assert media == oci.MEDIA_MANIFEST
    assert oci.sha256_digest(raw) == image.digest
    # A second push sends no blob again and keeps the digest.
    again = imagepush.push_all(
        registry.url, ImageSet((image,)), lambda _: None, netns=registry.netns
    )
    assert again == pushed


def test_chunked_upload_of_a_big_blob(
    registry: RegistryClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from proxy.lab import regclient

    monkeypatch.setattr(regclient, "MONOLITHIC_LIMIT", 1000)
    monkeypatch.setattr(regclient, "CHUNK_SIZE", 4096)
    store = oci.BlobStore(tmp_path / "store")
    blob = store.put_bytes(os.urandom(10_000), oci.MEDIA_LAYER_GZIP)

    assert registry.push_blob("test/chunked", store, blob.digest) is True
    assert registry.has_blob("test/chunked", blob.digest)
    assert registry.push_blob("test/chunked", store, blob.digest) is False


def test_blob_is_mounted_across_repositories(registry: RegistryClient, tmp_path: Path) -> None:
    image = _small_image(tmp_path, ("docker.io/library/nginx:latest",))
    with oci.OciArchive(image.archive) as archive:
        view = archive.images()[0].view
        registry.push_image(archive, view, "library/nginx", ["latest"])
        layer = view.layers[0].digest
        assert registry.push_blob("kiamol/ch03-sleep", archive, layer) is False
    assert registry.has_blob("kiamol/ch03-sleep", layer)


def test_load_image_archive_from_docker_save(registry: RegistryClient, tmp_path: Path) -> None:
    layer_tar = io.BytesIO()
    with tarfile.open(fileobj=layer_tar, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 6
        tar.addfile(info, io.BytesIO(b"hello\n"))
    layer_bytes = layer_tar.getvalue()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["cat", "/hello.txt"]},
            "rootfs": {"type": "layers", "diff_ids": [oci.sha256_digest(layer_bytes)]},
        }
    ).encode()
    config_name = oci.sha256_digest(config).split(":")[1] + ".json"
    manifest = json.dumps(
        [{"Config": config_name, "RepoTags": ["myapp:dev"], "Layers": ["abc/layer.tar"]}]
    ).encode()
    saved = tmp_path / "saved.tar"
    with tarfile.open(saved, mode="w") as tar:
        for name, data in (
            ("manifest.json", manifest),
            (config_name, config),
            ("abc/layer.tar", layer_bytes),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

    added = imagepush.load_image_archive(saved, registry.url, netns=registry.netns)

    assert added == ["docker.io/library/myapp:dev"]
    assert registry.tags("library/myapp") == ["dev"]
    _, raw = registry.get_manifest("library/myapp", "dev")
    pushed = json.loads(raw)
    assert pushed["config"]["digest"] == oci.sha256_digest(config)
    assert pushed["layers"][0]["mediaType"] == oci.MEDIA_LAYER_GZIP
    assert registry.has_blob("library/myapp", pushed["layers"][0]["digest"])


def test_every_cached_image_pushes(registry: RegistryClient, tmp_path: Path) -> None:
    """The full set from ``lab build`` (skipped until the cache holds every archive)."""
    directory = images_dir()
    built: list[BuiltImage] = []
    for stamp in sorted(directory.glob("*.json")):
        archive = stamp.with_suffix(".tar")
        record = json.loads(stamp.read_text())
        if archive.is_file():
            refs = tuple(record["refs"])
            built.append(
                BuiltImage(stamp.stem, refs, archive, record["digest"], archive.stat().st_size)
            )
    wanted = {ref for item in images.AVAILABLE for ref in item.refs}
    have = {ref for b in built for ref in b.refs}
    if not wanted <= have:
        pytest.skip(f"the image cache {directory} lacks {len(wanted - have)} images: run lab build")

    pushed = imagepush.push_all(
        registry.url, ImageSet(tuple(built)), lambda _: None, netns=registry.netns
    )

    catalog = registry.catalog()
    for image in built:
        for ref in image.refs:
            repo, tag = ref.split("/", 1)[1].rsplit(":", 1)
            assert repo in catalog
            assert registry.manifest_digest(repo, tag) == image.digest == pushed[ref]


def test_ensure_cached_registry_pushes_only_when_images_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = registry_binary()
    if binary is None or not os.access(binary, os.X_OK):
        pytest.skip(f"no registry binary at {binary}")
    from proxy.lab import nodebuild

    monkeypatch.setenv("KUBE_PROXY_PY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(nodebuild, "node_bin_dir", lambda: binary.parent)
    small = _small_image(tmp_path, ("registry.k8s.io/pause:3.10.2",))
    monkeypatch.setattr(images, "build_images", lambda out, force=False: ImageSet((small,)))
    lines: list[str] = []

    imagepush.ensure_cached_registry(lines.append)
    imagepush.ensure_cached_registry(lines.append)

    assert any("pushing 1 images" in line for line in lines)
    assert "holds all 1 image references" in lines[-1]
    storage = tmp_path / "cache" / "registry"
    with serve_registry(binary, storage) as client:
        assert client.tags("pause") == ["3.10.2"]
        assert client.manifest_digest("pause", "3.10.2") == small.digest
