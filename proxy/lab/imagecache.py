"""The image archive cache under ``cache_root()/images``: each image an OCI archive with a
stamp holding the key of its inputs, rebuilt only when that key changes; and the lock
that lets one process at a time build images or push to the registry cache."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from proxy.lab import build, imageref, oci, rootfs


@dataclass(frozen=True)
class BuiltImage:
    """An image archive in the cache and the references it is pushed as."""

    slug: str
    refs: tuple[str, ...]
    archive: Path
    digest: str
    size: int


@dataclass(frozen=True)
class ImageSet:
    images: tuple[BuiltImage, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    """(image, why it was not built) — e.g. upstream kube-proxy before the k8s build."""

    def find(self, ref: str) -> BuiltImage | None:
        want = imageref.normalize(ref)
        return next((i for i in self.images if want in i.refs), None)


def images_dir() -> Path:
    return build.cache_root() / "images"


def cache_key(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()


def tree_digest(root: Path, names: Sequence[str]) -> str:
    """A digest of the named files and of every file under the named directories."""
    h = hashlib.sha256()
    for name in names:
        path = root / name
        files = (
            sorted(p for p in path.rglob("*") if p.is_file())
            if path.is_dir()
            else [path]
            if path.is_file()
            else []
        )
        for f in files:
            if "__pycache__" in f.parts or f.suffix == ".pyc":
                continue
            h.update(f"{f.relative_to(root).as_posix()}\0{rootfs.file_digest(f)}\n".encode())
    return h.hexdigest()


def archive_digest(archive: Path) -> str:
    with oci.OciArchive(archive) as a:
        return a.index_entries()[0].digest


def cached(
    slug: str,
    refs: Sequence[str],
    key: str,
    make: Callable[[Path], None],
    progress: build.Progress,
    what: str,
    *,
    force: bool = False,
) -> BuiltImage:
    """The cached archive ``<slug>.tar`` if its stamp has ``key``; else ``make`` it."""
    directory = images_dir()
    directory.mkdir(parents=True, exist_ok=True)
    archive, stamp = directory / f"{slug}.tar", directory / f"{slug}.json"
    if not force and archive.is_file() and stamp.is_file():
        try:
            recorded = json.loads(stamp.read_text())
        except json.JSONDecodeError:
            recorded = {}
        if recorded.get("key") == key and recorded.get("refs") == list(refs):
            return BuiltImage(
                slug, tuple(refs), archive, str(recorded["digest"]), archive.stat().st_size
            )
    started = time.monotonic()
    progress.step(f"building {what}")
    make(archive)
    digest = archive_digest(archive)
    size = archive.stat().st_size
    stamp.write_text(
        json.dumps(
            {
                "key": key,
                "refs": list(refs),
                "digest": digest,
                "size": size,
                "seconds": round(time.monotonic() - started, 1),
                "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
            indent=2,
        )
        + "\n"
    )
    progress.step(f"built {what}: {size / 1e6:.1f} MB in {time.monotonic() - started:.0f} s")
    return BuiltImage(slug, tuple(refs), archive, digest, size)


def cached_seconds(image: BuiltImage) -> float | None:
    """How long the cached archive took to build (from its stamp), if known."""
    try:
        value = json.loads(image.archive.with_suffix(".json").read_text()).get("seconds")
    except (OSError, json.JSONDecodeError):
        return None
    return float(value) if isinstance(value, int | float) else None


@contextlib.contextmanager
def one_at_a_time(path: Path, progress: build.Progress, what: str) -> Iterator[None]:
    """One process at a time (two buildah builds on one storage corrupt each other)."""
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress.step(f"waiting for {what} to finish ({path})")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
