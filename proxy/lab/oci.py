"""A small OCI image writer and reader: layers, configs, manifests, image-layout archives.

Layers are deterministic: entries sorted by path, mtime 0, no user or group names, a
gzip header without a file name or time. The same inputs always give the same digests,
so registries and containerd share layers between images built from the same parts.

Blobs live in a :class:`BlobStore` (an OCI ``blobs/sha256`` directory); an image is
written as an ``oci-archive`` tar (``oci-layout``, ``index.json``, ``blobs/sha256/…``)
naming each reference in ``org.opencontainers.image.ref.name`` (and containerd's
``io.containerd.image.name``). :class:`OciArchive` reads such a tar back without
extracting it; everything parsed from it is size-capped.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import re
import stat
import struct
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, Protocol, cast

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MANIFEST_TYPES = (MEDIA_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (MEDIA_INDEX, DOCKER_MANIFEST_LIST)

REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
EPOCH = "1970-01-01T00:00:00Z"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

MAX_JSON = 4 << 20
"""Largest manifest, index or config accepted from an archive or a registry."""
MAX_MEMBERS = 200_000
"""Most entries an archive may hold before it is refused."""
MAX_NESTING = 4
_CHUNK = 1 << 20
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class OciError(RuntimeError):
    """An image could not be written or an archive could not be read; says why."""


def check_digest(digest: str) -> str:
    """Return digest if it is ``sha256:<64 hex>``; raise OciError otherwise."""
    if not _DIGEST.fullmatch(digest):
        raise OciError(f"unsupported or malformed digest {digest[:80]!r} (want sha256:<64 hex>)")
    return digest


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(obj: object) -> bytes:
    """Stable JSON bytes: sorted keys, no spaces (digests depend only on content)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def load_json(data: bytes, what: str) -> Any:
    if len(data) > MAX_JSON:
        raise OciError(f"{what} is {len(data)} bytes; the limit is {MAX_JSON}")
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise OciError(f"{what} is not valid JSON: {e}") from e


def read_capped(stream: IO[bytes], what: str, cap: int | None = None) -> bytes:
    """At most ``cap`` bytes (default MAX_JSON) of ``stream``; more is an error."""
    cap = MAX_JSON if cap is None else cap
    data = stream.read(cap + 1)
    if len(data) > cap:
        raise OciError(f"{what} exceeds {cap} bytes; refusing to read it")
    return data


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    platform: Mapping[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform:
            out["platform"] = dict(self.platform)
        return out

    @classmethod
    def from_json(cls, obj: object, what: str) -> Descriptor:
        if not isinstance(obj, dict):
            raise OciError(f"{what}: descriptor is not an object")
        media, digest, size = obj.get("mediaType"), obj.get("digest"), obj.get("size")
        if not isinstance(digest, str) or not isinstance(size, int) or size < 0:
            raise OciError(f"{what}: descriptor lacks a digest or a size")
        notes = obj.get("annotations") or {}
        platform = obj.get("platform")
        return cls(
            media_type=media if isinstance(media, str) else "",
            digest=check_digest(digest),
            size=size,
            annotations={str(k): str(v) for k, v in notes.items()}
            if isinstance(notes, dict)
            else {},
            platform={str(k): str(v) for k, v in platform.items()}
            if isinstance(platform, dict)
            else None,
        )


# --------------------------------------------------------------------------- entries


@dataclass(frozen=True)
class Entry:
    """One tar member of a layer. ``path`` is relative (no leading ``/``)."""

    path: str
    kind: Literal["file", "dir", "symlink", "hardlink"]
    mode: int = 0o644
    data: bytes | None = None
    source: Path | None = None
    target: str = ""
    uid: int = 0
    gid: int = 0
    xattrs: tuple[tuple[str, bytes], ...] = ()
    """Extended attributes, written as PAX ``SCHILY.xattr.<name>`` records (what
    containerd's unpacker restores), e.g. ``security.capability``."""


def _clean(path: str) -> str:
    parts = [p for p in path.strip("/").split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise OciError(f"bad path in layer: {path!r}")
    return "/".join(parts)


def file(path: str, data: bytes | str, mode: int = 0o644) -> Entry:
    raw = data.encode() if isinstance(data, str) else data
    return Entry(_clean(path), "file", mode, data=raw)


def host_file(path: str, source: Path, mode: int | None = None) -> Entry:
    """A file whose bytes are read (streamed) from ``source`` when the layer is written."""
    st = source.stat()
    return Entry(
        _clean(path), "file", stat.S_IMODE(st.st_mode) if mode is None else mode, source=source
    )


def file_capabilities(*caps: int) -> tuple[str, bytes]:
    """The ``security.capability`` xattr of ``setcap <caps>=+ep`` (VFS_CAP_REVISION_2)."""
    permitted = 0
    for cap in caps:
        permitted |= 1 << cap
    magic = 0x02000000 | 0x000001  # VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE
    low, high = permitted & 0xFFFFFFFF, permitted >> 32
    return "security.capability", struct.pack("<IIIII", magic, low, 0, high, 0)


def directory(path: str, mode: int = 0o755) -> Entry:
    return Entry(_clean(path), "dir", mode)


def symlink(path: str, target: str) -> Entry:
    return Entry(_clean(path), "symlink", 0o777, target=target)


def entries_from_tree(
    root: Path,
    *,
    prefix: str = "",
    keep_owner: bool = True,
    exclude: Callable[[str], bool] | None = None,
) -> list[Entry]:
    """Entries for every directory, file and symlink under ``root`` (not ``root`` itself).

    Hard links become tar hard links to the first path (in sorted order). Device nodes,
    FIFOs and sockets are skipped: the container runtime provides ``/dev``. ``exclude``
    gets each relative path and drops it (and, for a directory, all below it).
    """
    found: list[tuple[str, Path, os.stat_result]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        rel_base = base.relative_to(root).as_posix()
        keep_dirs = []
        for name in sorted(dirnames):
            rel = name if rel_base == "." else f"{rel_base}/{name}"
            if exclude is not None and exclude(rel):
                continue
            keep_dirs.append(name)
            found.append((rel, base / name, (base / name).lstat()))
        dirnames[:] = keep_dirs
        for name in filenames:
            rel = name if rel_base == "." else f"{rel_base}/{name}"
            if exclude is not None and exclude(rel):
                continue
            found.append((rel, base / name, (base / name).lstat()))
    found.sort(key=lambda item: item[0])
    pre = _clean(prefix) + "/" if prefix.strip("/") else ""
    seen_inodes: dict[tuple[int, int], str] = {}
    out: list[Entry] = []
    for rel, full, st in found:
        path = pre + rel
        uid, gid = (st.st_uid, st.st_gid) if keep_owner else (0, 0)
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            out.append(Entry(path, "dir", mode, uid=uid, gid=gid))
        elif stat.S_ISLNK(st.st_mode):
            out.append(Entry(path, "symlink", 0o777, target=os.readlink(full), uid=uid, gid=gid))
        elif stat.S_ISREG(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in seen_inodes:
                out.append(Entry(path, "hardlink", mode, target=seen_inodes[key], uid=uid, gid=gid))
                continue
            if st.st_nlink > 1:
                seen_inodes[key] = path
            out.append(Entry(path, "file", mode, source=full, uid=uid, gid=gid))
    return out


def _with_parents(entries: Iterable[Entry]) -> list[Entry]:
    """Sorted, one entry per path (the last given wins), every parent directory present."""
    by_path: dict[str, Entry] = {}
    for entry in entries:
        by_path[entry.path] = entry
    for path in list(by_path):
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            if parent not in by_path:
                by_path[parent] = Entry(parent, "dir", 0o755)
    return [by_path[p] for p in sorted(by_path)]


# --------------------------------------------------------------------------- blobs


class _Sink(Protocol):
    def write(self, b: memoryview, /) -> int: ...


class _HashingWriter(io.RawIOBase):
    """Write-through to ``sink`` while counting and hashing the bytes."""

    def __init__(self, sink: _Sink | None) -> None:
        super().__init__()
        self._sink = sink
        self.hash = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        view = memoryview(b)
        self.hash.update(view)
        self.size += len(view)
        if self._sink is not None:
            self._sink.write(view)
        return len(view)

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


class BlobSource(Protocol):
    """Anything a blob can be streamed from (a store directory, an archive)."""

    def open_blob(self, digest: str) -> contextlib.AbstractContextManager[IO[bytes]]: ...

    def blob_size(self, digest: str) -> int: ...

    def read_small(self, digest: str, what: str) -> bytes: ...


class BlobStore:
    """A content-addressed directory: ``<root>/blobs/sha256/<hex>``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.blobs.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.blobs / check_digest(digest).split(":", 1)[1]

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def put_bytes(self, data: bytes, media_type: str) -> Descriptor:
        digest = sha256_digest(data)
        target = self.path(digest)
        if not target.exists():
            tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
            tmp.write_bytes(data)
            tmp.replace(target)
        return Descriptor(media_type, digest, len(data))

    @contextlib.contextmanager
    def writer(self) -> Iterator[_HashingWriter]:
        """Stream a new blob in; it is filed under its digest when the block ends."""
        fd, name = tempfile.mkstemp(dir=self.blobs, prefix=".incoming-")
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as sink:
                hw = _HashingWriter(sink)
                yield hw
            tmp.replace(self.path(hw.digest))
        finally:
            tmp.unlink(missing_ok=True)

    @contextlib.contextmanager
    def open_blob(self, digest: str) -> Iterator[IO[bytes]]:
        try:
            with self.path(digest).open("rb") as f:
                yield f
        except FileNotFoundError:
            raise OciError(f"blob {digest} is not in {self.root}") from None

    def blob_size(self, digest: str) -> int:
        return self.path(digest).stat().st_size

    def read_small(self, digest: str, what: str) -> bytes:
        with self.open_blob(digest) as f:
            return read_capped(f, what)


# --------------------------------------------------------------------------- layers


@dataclass(frozen=True)
class Layer:
    descriptor: Descriptor
    diff_id: str
    created_by: str


def _tarinfo(entry: Entry) -> tarfile.TarInfo:
    info = tarfile.TarInfo(entry.path + ("/" if entry.kind == "dir" else ""))
    info.mtime = 0
    info.mode = entry.mode
    info.uid, info.gid = entry.uid, entry.gid
    info.uname = info.gname = ""
    if entry.xattrs:
        # tarfile writes a value that is not UTF-8 back as its raw bytes (hdrcharset=BINARY)
        info.pax_headers = {
            f"SCHILY.xattr.{name}": value.decode("utf-8", "surrogateescape")
            for name, value in entry.xattrs
        }
    if entry.kind == "dir":
        info.type = tarfile.DIRTYPE
    elif entry.kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, entry.target
    elif entry.kind == "hardlink":
        info.type, info.linkname = tarfile.LNKTYPE, entry.target
    else:
        info.type = tarfile.REGTYPE
    return info


def write_tar(entries: Iterable[Entry], sink: IO[bytes]) -> None:
    """Write ``entries`` (plus missing parent directories, sorted) as a tar stream."""
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for entry in _with_parents(entries):
            info = _tarinfo(entry)
            if entry.kind != "file":
                tar.addfile(info)
            elif entry.source is not None:
                with entry.source.open("rb") as src:
                    info.size = os.fstat(src.fileno()).st_size
                    tar.addfile(info, src)
            else:
                data = entry.data or b""
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _gzip_stream(store: BlobStore, fill: Callable[[IO[bytes]], None]) -> tuple[Descriptor, str]:
    """Gzip what ``fill`` writes into a new blob; return (blob descriptor, diff_id)."""
    with store.writer() as compressed:
        with gzip.GzipFile(
            filename="", mode="wb", fileobj=compressed, mtime=0, compresslevel=6
        ) as gz:
            plain = _HashingWriter(gz)
            fill(cast(IO[bytes], plain))
        digest, size = compressed.digest, compressed.size
    return Descriptor(MEDIA_LAYER_GZIP, digest, size), plain.digest


def write_layer(store: BlobStore, entries: Iterable[Entry], created_by: str) -> Layer:
    """A gzip'd tar layer of ``entries`` in ``store``; deterministic for equal inputs."""
    listed = list(entries)
    descriptor, diff_id = _gzip_stream(store, lambda sink: write_tar(listed, sink))
    return Layer(descriptor, diff_id, created_by)


def gzip_layer(store: BlobStore, plain: IO[bytes], created_by: str) -> Layer:
    """Compress an existing uncompressed layer tar (as read from a ``docker save``)."""

    def copy(sink: IO[bytes]) -> None:
        while chunk := plain.read(_CHUNK):
            sink.write(chunk)

    descriptor, diff_id = _gzip_stream(store, copy)
    return Layer(descriptor, diff_id, created_by)


# --------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class ImageConfig:
    """The runtime part of an image config (what ``docker inspect`` shows as Config)."""

    entrypoint: Sequence[str] | None = None
    cmd: Sequence[str] | None = None
    env: Sequence[str] = (DEFAULT_PATH,)
    working_dir: str = ""
    user: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    exposed_ports: Sequence[str] = ()
    stop_signal: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"Env": list(self.env)}
        if self.entrypoint is not None:
            out["Entrypoint"] = list(self.entrypoint)
        if self.cmd is not None:
            out["Cmd"] = list(self.cmd)
        if self.working_dir:
            out["WorkingDir"] = self.working_dir
        if self.user:
            out["User"] = self.user
        if self.labels:
            out["Labels"] = dict(self.labels)
        if self.exposed_ports:
            out["ExposedPorts"] = {p: {} for p in self.exposed_ports}
        if self.stop_signal:
            out["StopSignal"] = self.stop_signal
        return out


def config_blob(config: ImageConfig, layers: Sequence[Layer], created: str = EPOCH) -> bytes:
    """The OCI image config JSON (amd64/linux) for ``layers`` in order."""
    return canonical_json(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": created,
            "config": config.to_json(),
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
            "history": [{"created": created, "created_by": layer.created_by} for layer in layers],
        }
    )


def manifest_blob(config: Descriptor, layers: Sequence[Descriptor]) -> bytes:
    return canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": config.to_json(),
            "layers": [layer.to_json() for layer in layers],
        }
    )


def write_image(store: BlobStore, layers: Sequence[Layer], config: ImageConfig) -> Descriptor:
    """Store the config and manifest for ``layers``; return the manifest's descriptor."""
    cfg = store.put_bytes(config_blob(config, layers), MEDIA_CONFIG)
    return store.put_bytes(
        manifest_blob(cfg, [layer.descriptor for layer in layers]), MEDIA_MANIFEST
    )


# --------------------------------------------------------------------------- image views


@dataclass(frozen=True)
class ImageView:
    """A manifest read back: its descriptor, raw bytes and parsed parts."""

    descriptor: Descriptor
    raw: bytes
    config: Descriptor
    layers: tuple[Descriptor, ...]

    @property
    def blobs(self) -> tuple[Descriptor, ...]:
        return (self.config, *self.layers)


def parse_manifest(raw: bytes, descriptor: Descriptor) -> ImageView:
    obj = load_json(raw, f"manifest {descriptor.digest}")
    if not isinstance(obj, dict):
        raise OciError(f"manifest {descriptor.digest} is not a JSON object")
    layers = obj.get("layers")
    if not isinstance(layers, list) or len(layers) > 1000:
        raise OciError(f"manifest {descriptor.digest} has no usable layers list")
    media = obj.get("mediaType") or descriptor.media_type or MEDIA_MANIFEST
    desc = Descriptor(str(media), descriptor.digest, len(raw), descriptor.annotations)
    return ImageView(
        desc,
        raw,
        Descriptor.from_json(obj.get("config"), f"manifest {descriptor.digest} config"),
        tuple(
            Descriptor.from_json(layer, f"manifest {descriptor.digest} layer") for layer in layers
        ),
    )


def image_config(source: BlobSource, view: ImageView) -> dict[str, Any]:
    """The image's config JSON (capped)."""
    obj = load_json(source.read_small(view.config.digest, "image config"), "image config")
    if not isinstance(obj, dict):
        raise OciError(f"config {view.config.digest} is not a JSON object")
    return obj


def resolve_manifest(source: BlobSource, descriptor: Descriptor, depth: int = 0) -> ImageView:
    """Follow an index (picking linux/amd64) down to one image manifest."""
    if depth > MAX_NESTING:
        raise OciError("image index nesting is too deep")
    raw = source.read_small(descriptor.digest, f"manifest {descriptor.digest}")
    if sha256_digest(raw) != descriptor.digest:
        raise OciError(f"manifest {descriptor.digest} does not match its digest")
    obj = load_json(raw, f"manifest {descriptor.digest}")
    media = obj.get("mediaType") if isinstance(obj, dict) else None
    if isinstance(obj, dict) and (media in INDEX_TYPES or "manifests" in obj):
        entries = obj.get("manifests")
        if not isinstance(entries, list):
            raise OciError(f"index {descriptor.digest} has no manifests list")
        for item in entries[:1000]:
            child = Descriptor.from_json(item, f"index {descriptor.digest}")
            plat = child.platform or {}
            if plat.get("os", "linux") == "linux" and plat.get("architecture", "amd64") in (
                "amd64",
                "",
            ):
                merged = {**descriptor.annotations, **child.annotations}
                return resolve_manifest(
                    source,
                    Descriptor(child.media_type, child.digest, child.size, merged),
                    depth + 1,
                )
        raise OciError(f"index {descriptor.digest} has no linux/amd64 image")
    return parse_manifest(raw, descriptor)


# --------------------------------------------------------------------------- archives


@dataclass(frozen=True)
class TaggedImage:
    """One reference an archive names and the image it points at."""

    ref: str
    view: ImageView


def write_oci_archive(
    path: Path, source: BlobSource, manifest: Descriptor, refs: Sequence[str]
) -> None:
    """Write an ``oci-archive`` tar holding ``manifest``'s blobs, named once per ref."""
    view = resolve_manifest(source, manifest)
    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [
            Descriptor(
                MEDIA_MANIFEST,
                view.descriptor.digest,
                view.descriptor.size,
                {REF_NAME: ref, CONTAINERD_NAME: ref},
            ).to_json()
            for ref in refs
        ],
    }
    tmp = path.with_name(path.name + ".partial")
    digests = sorted({d.digest for d in (view.descriptor, *view.blobs)})
    with tmp.open("wb") as out:
        entries: list[Entry] = [
            file("oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"})),
            file("index.json", canonical_json(index)),
        ]
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for entry in _with_parents([*entries, directory("blobs/sha256")]):
                info = _tarinfo(entry)
                data = entry.data or b""
                info.size = len(data) if entry.kind == "file" else 0
                tar.addfile(info, io.BytesIO(data) if entry.kind == "file" else None)
            for digest in digests:
                info = _tarinfo(file("blobs/sha256/" + digest.split(":", 1)[1], b""))
                info.size = source.blob_size(digest)
                with source.open_blob(digest) as blob:
                    tar.addfile(info, blob)
    tmp.replace(path)


class OciArchive:
    """Read an ``oci-archive`` (or a ``docker save`` tar, see :mod:`proxy.lab.dockersave`).

    Only members are read, never extracted; JSON members are size-capped.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._tar = tarfile.open(path, mode="r:*")  # noqa: SIM115 (closed by close())
        except (OSError, tarfile.TarError) as e:
            raise OciError(f"{path} is not a readable tar archive: {e}") from e
        self._members: dict[str, tarfile.TarInfo] = {}
        for count, member in enumerate(self._tar, 1):
            if count > MAX_MEMBERS:
                self.close()
                raise OciError(f"{path} has more than {MAX_MEMBERS} entries; refusing it")
            self._members[member.name.removeprefix("./").rstrip("/")] = member

    def close(self) -> None:
        self._tar.close()

    def __enter__(self) -> OciArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def has(self, name: str) -> bool:
        return name in self._members

    @contextlib.contextmanager
    def open_member(self, name: str) -> Iterator[IO[bytes]]:
        member = self._members.get(name)
        if member is None or not member.isfile():
            raise OciError(f"{self.path} has no file {name!r}")
        stream = self._tar.extractfile(member)
        if stream is None:
            raise OciError(f"{self.path}: {name!r} cannot be read")
        with stream:
            yield stream

    def member_size(self, name: str) -> int:
        member = self._members.get(name)
        if member is None:
            raise OciError(f"{self.path} has no file {name!r}")
        return member.size

    def read_member(self, name: str, what: str) -> bytes:
        with self.open_member(name) as f:
            return read_capped(f, what)

    @staticmethod
    def _blob_name(digest: str) -> str:
        return "blobs/sha256/" + check_digest(digest).split(":", 1)[1]

    def open_blob(self, digest: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        return self.open_member(self._blob_name(digest))

    def blob_size(self, digest: str) -> int:
        return self.member_size(self._blob_name(digest))

    def read_small(self, digest: str, what: str) -> bytes:
        return self.read_member(self._blob_name(digest), what)

    @property
    def is_oci_layout(self) -> bool:
        return self.has("oci-layout") and self.has("index.json")

    def index_entries(self) -> list[Descriptor]:
        obj = load_json(self.read_member("index.json", "index.json"), "index.json")
        manifests = obj.get("manifests") if isinstance(obj, dict) else None
        if not isinstance(manifests, list):
            raise OciError(f"{self.path}: index.json has no manifests list")
        return [Descriptor.from_json(m, "index.json") for m in manifests[:1000]]

    def images(self) -> list[TaggedImage]:
        """Every (reference, image) the index names; unnamed entries get ``ref`` ''."""
        out: list[TaggedImage] = []
        for desc in self.index_entries():
            view = resolve_manifest(self, desc)
            notes = view.descriptor.annotations
            ref = notes.get(CONTAINERD_NAME) or notes.get(REF_NAME) or ""
            out.append(TaggedImage(ref, view))
        return out
