"""Image references, docker-save conversion, the image catalogue, its cache and scripts.

Nothing here runs mmdebstrap or buildah; the real build is checked by
``tests/netns/test_registry_push.py`` once the cache holds it.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from proxy.lab import build, dockersave, imagecache, imageref, images, oci, rootfs
from proxy.lab.regclient import RegistryClient, RegistryError
from tests.unit.test_oci import tar_with

# --------------------------------------------------------------------------- references


@pytest.mark.parametrize(
    ("text", "want", "repo"),
    [
        ("busybox", "docker.io/library/busybox:latest", "library/busybox"),
        ("busybox:1.36", "docker.io/library/busybox:1.36", "library/busybox"),
        ("curlimages/curl", "docker.io/curlimages/curl:latest", "curlimages/curl"),
        ("index.docker.io/library/nginx:1", "docker.io/library/nginx:1", "library/nginx"),
        ("registry.k8s.io/pause:3.10.2", "registry.k8s.io/pause:3.10.2", "pause"),
        ("quay.io/a/b-c_d:v1.0", "quay.io/a/b-c_d:v1.0", "a/b-c_d"),
        ("localhost:5000/x", "localhost:5000/x:latest", "x"),
        ("ghcr.io/o/r@sha256:" + "a" * 64, "ghcr.io/o/r@sha256:" + "a" * 64, "o/r"),
    ],
)
def test_references_normalise_like_docker(text: str, want: str, repo: str) -> None:
    ref = imageref.parse(text)
    assert str(ref) == want
    assert ref.repository == repo


@pytest.mark.parametrize(
    "bad", ["", "Busybox", "a//b", "busybox:", "busybox:-x", "x@sha256:12", "a/b:c:d", "-a"]
)
def test_bad_references_are_refused(bad: str) -> None:
    with pytest.raises(imageref.ReferenceError):
        imageref.parse(bad)


# --------------------------------------------------------------------------- docker save


def _layer_tar(content: bytes) -> bytes:
    buf = io.BytesIO()
    oci.write_tar([oci.file("f", content)], buf)
    return buf.getvalue()


def _docker_save(tmp_path: Path, *, diff_id: str | None = None) -> tuple[Path, bytes, bytes]:
    layer = _layer_tar(b"data")
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [diff_id or oci.sha256_digest(layer)]},
        }
    ).encode()
    config_name = oci.sha256_digest(config)[7:] + ".json"
    manifest = [{"Config": config_name, "RepoTags": ["web:v2", "me/web:v2"], "Layers": ["l/1.tar"]}]
    path = tar_with(
        tmp_path / "save.tar",
        {"manifest.json": json.dumps(manifest).encode(), config_name: config, "l/1.tar": layer},
    )
    return path, layer, config


def test_docker_save_is_converted_to_oci(tmp_path: Path) -> None:
    path, _, config = _docker_save(tmp_path)
    store = oci.BlobStore(tmp_path / "store")

    with oci.OciArchive(path) as archive:
        loaded = dockersave.read_images(archive, store)

    assert len(loaded) == 1
    image = loaded[0]
    assert image.refs == ("docker.io/library/web:v2", "docker.io/me/web:v2")
    assert image.view.descriptor.media_type == oci.MEDIA_MANIFEST
    assert image.view.config.digest == oci.sha256_digest(config)
    assert image.view.layers[0].media_type == oci.MEDIA_LAYER_GZIP
    assert store.read_small(image.view.config.digest, "config") == config
    with (
        store.open_blob(image.view.layers[0].digest) as blob,
        tarfile.open(fileobj=blob, mode="r:gz") as tar,
    ):
        assert [m.name for m in tar.getmembers()] == ["f"]
    # Deterministic: converting again gives the same manifest digest.
    with oci.OciArchive(path) as archive:
        again = dockersave.read_images(archive, oci.BlobStore(tmp_path / "other"))
    assert again[0].view.descriptor.digest == image.view.descriptor.digest


def test_docker_save_with_a_damaged_layer_is_refused(tmp_path: Path) -> None:
    path, _, _ = _docker_save(tmp_path, diff_id="sha256:" + "0" * 64)
    with oci.OciArchive(path) as archive, pytest.raises(oci.OciError, match="damaged"):
        dockersave.read_images(archive, oci.BlobStore(tmp_path / "store"))


def test_oci_layout_with_bare_tags_takes_names_from_manifest_json(tmp_path: Path) -> None:
    """What Docker ≥ 25 saves: an OCI layout whose ref.name is only the tag."""
    store = oci.BlobStore(tmp_path / "store")
    manifest = oci.write_image(
        store, [oci.write_layer(store, [oci.file("a", "1")], "a")], oci.ImageConfig()
    )
    built = tmp_path / "built.tar"
    oci.write_oci_archive(built, store, manifest, ["latest"])
    with oci.OciArchive(built) as archive:
        view = archive.images()[0].view
    members = {
        "oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
        "index.json": oci.canonical_json(
            {
                "schemaVersion": 2,
                "manifests": [
                    {**view.descriptor.to_json(), "annotations": {oci.REF_NAME: "latest"}}
                ],
            }
        ),
        "manifest.json": json.dumps(
            [{"Config": f"blobs/sha256/{view.config.digest[7:]}", "RepoTags": ["app:1"]}]
        ).encode(),
    }
    for blob in (view.descriptor, *view.blobs):
        members[f"blobs/sha256/{blob.digest[7:]}"] = store.path(blob.digest).read_bytes()
    path = tar_with(tmp_path / "docker25.tar", members)

    with oci.OciArchive(path) as archive:
        loaded = dockersave.read_images(archive, oci.BlobStore(tmp_path / "scratch"))

    assert [i.refs for i in loaded] == [("docker.io/library/app:1",)]
    assert loaded[0].view.descriptor.digest == manifest.digest


def test_unnamed_or_unknown_archives_are_refused(tmp_path: Path) -> None:
    store = oci.BlobStore(tmp_path / "store")
    manifest = oci.write_image(store, [], oci.ImageConfig())
    unnamed = tmp_path / "unnamed.tar"
    oci.write_oci_archive(unnamed, store, manifest, ["latest"])
    with oci.OciArchive(unnamed) as archive, pytest.raises(oci.OciError, match="has no name"):
        dockersave.read_images(archive, store)
    other = tar_with(tmp_path / "other.tar", {"hello.txt": b"hi"})
    with oci.OciArchive(other) as archive, pytest.raises(oci.OciError, match="neither"):
        dockersave.read_images(archive, store)


# --------------------------------------------------------------------------- catalogue


def test_available_references_are_normalised_and_unique() -> None:
    refs = [ref for item in images.AVAILABLE for ref in item.refs]
    assert len(refs) == len(set(refs))
    assert all(imageref.normalize(ref) == ref for ref in refs)
    for must in (
        "registry.k8s.io/pause:3.10.2",
        "docker.io/library/busybox:latest",
        "docker.io/library/nginx:latest",
        "docker.io/curlimages/curl:latest",
        "docker.io/radial/busyboxplus:curl",
        "docker.io/kiamol/ch03-sleep:latest",
        "docker.io/kiamol/ch03-numbers-api:latest",
        "docker.io/kiamol/ch03-numbers-web:latest",
        "docker.io/library/python:3.11-slim-bookworm",
        "docker.io/library/kube-proxy-py:0.1.0",
        "docker.io/library/kube-proxy-py-workload:0.1.0",
        "registry.k8s.io/kube-proxy:v1.37.2",
    ):
        assert must in refs
    lines = list(images.describe_available())
    assert len(lines) == len(images.AVAILABLE) and all(" — " in line for line in lines)


def test_pause_tag_is_what_kubeadm_and_containerd_default_to() -> None:
    module = Path.home() / "go/pkg/mod/k8s.io/kubernetes@v1.37.2/cmd/kubeadm/app/constants"
    if not module.is_dir():
        pytest.skip("k8s.io/kubernetes@v1.37.2 is not in the Go module cache")
    text = (module / "constants.go").read_text()
    assert f'PauseVersion = "{images.PAUSE_VERSION}"' in text


def _fake_image(out: Path) -> None:
    store = oci.BlobStore(out.parent / "fake-store")
    manifest = oci.write_image(store, [], oci.ImageConfig())
    oci.write_oci_archive(out, store, manifest, ["docker.io/library/x:1"])


def test_cache_reuses_an_archive_until_its_key_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBE_PROXY_PY_CACHE", str(tmp_path))
    calls: list[Path] = []

    def make(out: Path) -> None:
        calls.append(out)
        _fake_image(out)

    progress = build.Progress(lambda _: None)
    refs = ("docker.io/library/x:1",)
    first = imagecache.cached("x", refs, "k1", make, progress, "x")
    second = imagecache.cached("x", refs, "k1", make, progress, "x")
    third = imagecache.cached("x", refs, "k2", make, progress, "x")

    assert len(calls) == 2
    assert first == second and third.digest == first.digest
    assert first.archive == tmp_path / "images" / "x.tar"
    assert json.loads((tmp_path / "images" / "x.json").read_text())["key"] == "k2"


def test_tree_digest_follows_content_not_bytecode(tmp_path: Path) -> None:
    (tmp_path / "proxy/__pycache__").mkdir(parents=True)
    (tmp_path / "proxy/a.py").write_text("x = 1\n")
    (tmp_path / "Dockerfile").write_text("FROM x\n")
    before = imagecache.tree_digest(tmp_path, ("Dockerfile", "proxy", "missing"))
    (tmp_path / "proxy/__pycache__/a.cpython-311.pyc").write_bytes(b"junk")
    assert imagecache.tree_digest(tmp_path, ("Dockerfile", "proxy", "missing")) == before
    (tmp_path / "proxy/a.py").write_text("x = 2\n")
    assert imagecache.tree_digest(tmp_path, ("Dockerfile", "proxy", "missing")) != before


# --------------------------------------------------------------------------- parts


def test_mmdebstrap_command_makes_a_slim_minbase_without_devices() -> None:
    cmd = rootfs.mmdebstrap_command("bookworm", ("python3", "ca-certificates"), Path("/t"))
    assert cmd[0] == "mmdebstrap" and cmd[-2:] == ["bookworm", "/t"]
    assert "--variant=minbase" in cmd and "--skip=output/dev" in cmd
    assert "--include=python3,ca-certificates" in cmd
    assert "--dpkgopt=path-exclude=/usr/share/doc/*" in cmd


def test_ldd_closure_parses_libraries_and_the_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    sample = (
        "\tlinux-vdso.so.1 (0x00007ffd)\n"
        "\tlibcurl.so.4 => /lib/x86_64-linux-gnu/libcurl.so.4 (0x00007f01)\n"
        "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f02)\n"
        "\t/lib64/ld-linux-x86-64.so.2 (0x00007f03)\n"
    )
    monkeypatch.setattr(rootfs, "run", lambda *a, **k: sample)
    assert rootfs.ldd_closure(Path("/usr/bin/curl")) == [
        Path("/lib/x86_64-linux-gnu/libc.so.6"),
        Path("/lib/x86_64-linux-gnu/libcurl.so.4"),
        Path("/lib64/ld-linux-x86-64.so.2"),
    ]
    monkeypatch.setattr(rootfs, "run", lambda *a, **k: "\tlibx.so => not found\n")
    with pytest.raises(rootfs.ImageBuildError, match="missing"):
        rootfs.ldd_closure(Path("/usr/bin/curl"))


def test_busybox_entries_link_every_applet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binary = tmp_path / "busybox"
    binary.write_bytes(b"\x7fELF")
    monkeypatch.setattr(rootfs, "run", lambda *a, **k: "[\nbusybox\nsh\nwget\nnslookup\n")
    by_path = {e.path: e for e in rootfs.busybox_entries(binary)}
    assert by_path["bin/busybox"].mode == 0o755
    for applet in ("sh", "wget", "nslookup", "["):
        assert by_path[f"bin/{applet}"].target == "busybox"
    assert by_path["tmp"].mode == 0o1777
    assert (by_path["etc/passwd"].data or b"").startswith(b"root:x:0:0:")


# --------------------------------------------------------------------------- scripts


SCRIPTS = (
    "run-until-term.sh",
    "nginx.sh",
    "numbers-api.sh",
    "rng-handler.sh",
    "numbers-web.sh",
    "numbers-web.cgi",
    "curl-entrypoint.sh",
)


@pytest.mark.parametrize("name", SCRIPTS)
def test_stand_in_scripts_are_valid_shell(name: str) -> None:
    text = rootfs.script(name)
    assert text.startswith(b"#!/bin/sh\n")
    proc = subprocess.run(["sh", "-n"], input=text, capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr.decode()


def _handler(request: bytes) -> str:
    # The image runs it with busybox ash; bash has the same `read -t`.
    handler = rootfs.script("rng-handler.sh")
    proc = subprocess.run(
        ["bash", "-c", handler.decode()], input=request, capture_output=True, timeout=20, check=True
    )
    return proc.stdout.decode()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_rng_handler_answers_a_number_and_404s_the_rest() -> None:
    answer = _handler(b"GET /rng HTTP/1.1\r\nHost: numbers-api\r\nAccept: */*\r\n\r\n")
    head, body = answer.split("\r\n\r\n", 1)
    assert head.startswith("HTTP/1.1 200 OK\r\n")
    assert f"Content-Length: {len(body)}" in head
    assert 1 <= int(body) <= 100
    assert _handler(b"GET /nope HTTP/1.1\r\n\r\n").startswith("HTTP/1.1 404 ")


def test_curl_entrypoint_runs_commands_and_passes_options_to_curl() -> None:
    entry = rootfs.script("curl-entrypoint.sh").decode()

    def run(*args: str) -> str:
        proc = subprocess.run(
            ["sh", "-c", entry, "curl-entrypoint", *args],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        return proc.stdout

    assert run("echo", "a shell command") == "a shell command\n"
    if shutil.which("curl"):
        assert run("--version").startswith("curl ")


# --------------------------------------------------------------------------- client


def test_registry_client_refuses_non_http_urls() -> None:
    with pytest.raises(RegistryError, match="plain HTTP"):
        RegistryClient("https://registry.example:5000")
    assert RegistryClient("10.0.0.1:5000").url == "http://10.0.0.1:5000"


def test_upload_locations_keep_only_path_and_query() -> None:
    target = RegistryClient._upload_target("http://elsewhere:1/v2/r/blobs/uploads/u?_state=s")
    assert target == "/v2/r/blobs/uploads/u?_state=s"
    assert RegistryClient._with_query(target, digest="sha256:0") == (
        "/v2/r/blobs/uploads/u?_state=s&digest=sha256%3A0"
    )


def test_available_lookup_accepts_any_spelling() -> None:
    assert images.available("busybox").refs[0] == "docker.io/library/busybox:latest"
    assert images.available("radial/busyboxplus:curl").stands_in_for.startswith("radial/")
    with pytest.raises(KeyError, match="not an image the lab provides"):
        images.available("nosuch/image")
