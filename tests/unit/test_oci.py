"""The OCI writer/reader: deterministic layers, configs, manifests and archives."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from proxy.lab import oci


def _entries(tmp_path: Path) -> list[oci.Entry]:
    src = tmp_path / "src-binary"
    src.write_bytes(b"\x7fELF-pretend")
    src.chmod(0o755)
    return [
        oci.file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
        oci.host_file("bin/busybox", src),
        oci.symlink("bin/sh", "busybox"),
        oci.directory("tmp", 0o1777),
        oci.file("usr/local/bin/run", b"#!/bin/sh\nexec true\n", 0o755),
    ]


def _layer_members(store: oci.BlobStore, layer: oci.Layer) -> list[tarfile.TarInfo]:
    with tarfile.open(store.path(layer.descriptor.digest), mode="r:gz") as tar:
        return tar.getmembers()


def test_layer_is_deterministic_whatever_the_order_and_mtimes(tmp_path: Path) -> None:
    store = oci.BlobStore(tmp_path / "store")
    entries = _entries(tmp_path)
    first = oci.write_layer(store, entries, "x")
    os.utime(tmp_path / "src-binary", (1, 1))  # a different mtime on disk changes nothing
    second = oci.write_layer(store, list(reversed(entries)), "x")

    assert first == second
    assert first.descriptor.media_type == oci.MEDIA_LAYER_GZIP
    blob = store.path(first.descriptor.digest).read_bytes()
    assert first.descriptor.size == len(blob)
    assert first.descriptor.digest == oci.sha256_digest(blob)
    assert first.diff_id == oci.sha256_digest(gzip.decompress(blob))
    # gzip header: no file name flag, mtime 0
    assert blob[:2] == b"\x1f\x8b" and blob[3] & 0x08 == 0 and blob[4:8] == b"\0\0\0\0"


def test_layer_members_sorted_with_parents_owned_by_root_at_time_zero(tmp_path: Path) -> None:
    store = oci.BlobStore(tmp_path / "store")
    members = _layer_members(store, oci.write_layer(store, _entries(tmp_path), "x"))
    names = [m.name for m in members]

    assert names == sorted(names)
    assert {"bin", "etc", "usr", "usr/local", "usr/local/bin"} <= set(names)
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 for m in members)
    assert all(m.uname == "" and m.gname == "" for m in members)
    by_name = {m.name: m for m in members}
    assert by_name["bin/sh"].issym() and by_name["bin/sh"].linkname == "busybox"
    assert by_name["tmp"].isdir() and by_name["tmp"].mode == 0o1777
    assert by_name["bin/busybox"].mode == 0o755 and by_name["bin/busybox"].size == 12
    assert by_name["etc/passwd"].mode == 0o644


def test_entries_from_tree_keeps_links_and_skips_excluded(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/python3.11").write_bytes(b"py")
    os.link(root / "usr/bin/python3.11", root / "usr/bin/python3.11-hard")
    (root / "usr/bin/python3").symlink_to("python3.11")
    (root / "proc").mkdir()
    (root / "proc/junk").write_text("x")
    os.mkfifo(root / "usr/bin/fifo")

    entries = oci.entries_from_tree(root, exclude=lambda rel: rel.startswith("proc/"))
    by_path = {e.path: e for e in entries}

    assert by_path["usr/bin/python3"].kind == "symlink"
    assert by_path["usr/bin/python3"].target == "python3.11"
    assert by_path["usr/bin/python3.11"].kind == "file"
    assert by_path["usr/bin/python3.11-hard"].kind == "hardlink"
    assert by_path["usr/bin/python3.11-hard"].target == "usr/bin/python3.11"
    assert "proc" in by_path and "proc/junk" not in by_path
    assert "usr/bin/fifo" not in by_path
    store = oci.BlobStore(tmp_path / "store")
    members = {m.name: m for m in _layer_members(store, oci.write_layer(store, entries, "t"))}
    assert members["usr/bin/python3.11-hard"].islnk()


@pytest.mark.parametrize("bad", ["", "/", "a/../b", "..", "./.."])
def test_bad_paths_are_refused(bad: str) -> None:
    with pytest.raises(oci.OciError):
        oci.file(bad, "x")


def test_config_and_manifest(tmp_path: Path) -> None:
    store = oci.BlobStore(tmp_path / "store")
    layer = oci.write_layer(store, [oci.file("a", "1")], "ADD a")
    config = oci.ImageConfig(
        entrypoint=["/pause"],
        cmd=["x"],
        env=["PATH=/bin", "LANG=C.UTF-8"],
        working_dir="/w",
        user="65535:65535",
        labels={"io.kube-proxy-py.stand-in": "yes"},
        exposed_ports=["80/tcp"],
    )
    manifest = oci.write_image(store, [layer], config)
    raw_manifest = store.path(manifest.digest).read_bytes()
    parsed = json.loads(raw_manifest)
    cfg = json.loads(store.path(parsed["config"]["digest"]).read_bytes())

    assert manifest.digest == oci.sha256_digest(raw_manifest)
    assert parsed["mediaType"] == oci.MEDIA_MANIFEST and parsed["schemaVersion"] == 2
    assert parsed["config"]["mediaType"] == oci.MEDIA_CONFIG
    assert parsed["layers"] == [layer.descriptor.to_json()]
    assert cfg["architecture"] == "amd64" and cfg["os"] == "linux"
    assert cfg["rootfs"] == {"type": "layers", "diff_ids": [layer.diff_id]}
    assert cfg["history"] == [{"created": oci.EPOCH, "created_by": "ADD a"}]
    assert cfg["config"] == {
        "Entrypoint": ["/pause"],
        "Cmd": ["x"],
        "Env": ["PATH=/bin", "LANG=C.UTF-8"],
        "WorkingDir": "/w",
        "User": "65535:65535",
        "Labels": {"io.kube-proxy-py.stand-in": "yes"},
        "ExposedPorts": {"80/tcp": {}},
    }
    # Same inputs in a fresh store: same digest.
    again = oci.write_image(oci.BlobStore(tmp_path / "other"), [layer], config)
    assert again.digest == manifest.digest


def test_archive_round_trip(tmp_path: Path) -> None:
    store = oci.BlobStore(tmp_path / "store")
    layer = oci.write_layer(store, [oci.file("hello", "hi\n")], "ADD hello")
    manifest = oci.write_image(store, [layer], oci.ImageConfig(cmd=["cat", "/hello"]))
    refs = ["docker.io/library/busybox:latest", "docker.io/library/busybox:1.36"]
    archive = tmp_path / "img.tar"
    oci.write_oci_archive(archive, store, manifest, refs)

    with tarfile.open(archive) as tar:
        names = tar.getnames()
        layout = json.loads(tar.extractfile("oci-layout").read())  # type: ignore[union-attr]
    assert layout == {"imageLayoutVersion": "1.0.0"}
    assert "index.json" in names
    assert f"blobs/sha256/{layer.descriptor.digest.split(':')[1]}" in names
    with oci.OciArchive(archive) as reader:
        assert reader.is_oci_layout
        tagged = reader.images()
        assert [t.ref for t in tagged] == refs
        view = tagged[0].view
        assert view.descriptor.digest == manifest.digest
        assert view.layers == (layer.descriptor,)
        assert oci.image_config(reader, view)["config"]["Cmd"] == ["cat", "/hello"]
        with reader.open_blob(layer.descriptor.digest) as blob:
            assert hashlib.sha256(blob.read()).hexdigest() == layer.descriptor.digest[7:]
    # Writing the same image again gives the same bytes.
    copy = tmp_path / "again.tar"
    oci.write_oci_archive(copy, store, manifest, refs)
    assert copy.read_bytes() == archive.read_bytes()


def tar_with(path: Path, members: dict[str, bytes]) -> Path:
    """A plain tar at ``path`` holding ``members`` (name -> bytes)."""
    with tarfile.open(path, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_index_picks_linux_amd64_from_a_nested_index(tmp_path: Path) -> None:
    store = oci.BlobStore(tmp_path / "store")
    layer = oci.write_layer(store, [oci.file("x", "1")], "x")
    amd64 = oci.write_image(store, [layer], oci.ImageConfig())
    other = oci.write_image(store, [layer], oci.ImageConfig(cmd=["arm"]))
    index = oci.canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": oci.MEDIA_INDEX,
            "manifests": [
                {**other.to_json(), "platform": {"os": "linux", "architecture": "arm64"}},
                {**amd64.to_json(), "platform": {"os": "linux", "architecture": "amd64"}},
            ],
        }
    )
    index_desc = store.put_bytes(index, oci.MEDIA_INDEX)

    view = oci.resolve_manifest(store, index_desc)

    assert view.descriptor.digest == amd64.digest


def test_limits_refuse_oversized_and_malformed_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = tar_with(
        tmp_path / "big.tar", {"oci-layout": b"{}", "index.json": b'{"manifests": []}' + b" " * 64}
    )
    monkeypatch.setattr(oci, "MAX_JSON", 32)
    with oci.OciArchive(big) as reader, pytest.raises(oci.OciError, match="exceeds"):
        reader.index_entries()
    monkeypatch.setattr(oci, "MAX_MEMBERS", 1)
    with pytest.raises(oci.OciError, match="more than 1 entries"):
        oci.OciArchive(big)
    with pytest.raises(oci.OciError, match="malformed digest"):
        oci.check_digest("sha256:../../etc/passwd")
    with pytest.raises(oci.OciError, match="not a readable tar"):
        oci.OciArchive(tmp_path / "missing.tar")


def test_manifest_digest_mismatch_is_refused(tmp_path: Path) -> None:
    store = oci.BlobStore(tmp_path / "store")
    raw = oci.canonical_json({"schemaVersion": 2, "layers": []})
    desc = store.put_bytes(raw, oci.MEDIA_MANIFEST)
    store.path(desc.digest).write_bytes(raw + b" ")

    with pytest.raises(oci.OciError, match="does not match"):
        oci.resolve_manifest(store, desc)


def test_gzip_layer_of_an_existing_tar(tmp_path: Path) -> None:
    plain = io.BytesIO()
    oci.write_tar([oci.file("a", "1")], plain)
    store = oci.BlobStore(tmp_path / "store")

    layer = oci.gzip_layer(store, io.BytesIO(plain.getvalue()), "docker save")

    assert layer.diff_id == oci.sha256_digest(plain.getvalue())
    assert gzip.decompress(store.path(layer.descriptor.digest).read_bytes()) == plain.getvalue()
