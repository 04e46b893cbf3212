"""Private mounts for a lab node: a mount namespace of its own, binds, tmpfs, overlay.

A lab node (:mod:`proxy.lab.node`) and the lab registry (:mod:`proxy.lab.registry`) see
the host's files except where they mount their own, and nothing they mount ever reaches
the host:

1. :func:`private_mount_namespace`: ``unshare(CLONE_NEWNS)``, then ``/`` becomes
   recursively *slave* before anything is mounted: the host's mount events still reach
   us, ours never reach the host;
2. :func:`setup_mounts`: every :class:`Mount` is a recursive bind of SRC on DST,
   remounted read-only when asked. Mount points must exist and the host's directories
   must not be touched, so a missing DST is created inside a *shadow*: the deepest
   existing directory above it (after resolving symlinks: ``/var/run`` is ``/run``) gets
   a small tmpfs mounted over it, every entry it had is bind-mounted back at its own name
   (symlinks are re-created), and the missing directories (or the file, when SRC is a
   file) are created in the tmpfs. The process sees the directory as before plus the
   new mount point; the host sees nothing;
3. :func:`mount_tmpfs`, :func:`mount_overlay`: a fresh tmpfs (a node's ``/run``) and an
   overlay (the registry's storage: the cache below, the lab's writes above).

Everything disappears with the last process of the namespace. Needs root
(CAP_SYS_ADMIN).
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CLONE_NEWNS = 0x00020000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SLAVE = 0x80000
SHADOW_TMPFS_SIZE = "16m"
EXIT_LAUNCHER = 126
EXIT_NOT_FOUND = 127


class ContainerError(RuntimeError):
    """The launcher could not set up the process's view; the message says what failed."""


@dataclass(frozen=True)
class Mount:
    """A bind mount of ``source`` (a host path that exists) on ``target`` (absolute)."""

    source: str
    target: str
    read_only: bool = False

    @classmethod
    def parse(cls, text: str) -> Mount:
        """``SRC:DST`` or ``SRC:DST:ro`` (or ``:rw``)."""
        parts = text.split(":")
        mode = "rw"
        if len(parts) == 3:
            mode = parts.pop()
        if len(parts) != 2 or mode not in ("ro", "rw") or not all(parts):
            raise ValueError(f"--mount {text!r}: expected SRC:DST or SRC:DST:ro")
        source, target = parts
        if not target.startswith("/"):
            raise ValueError(f"--mount {text!r}: the mount point {target!r} must be absolute")
        return cls(source, target, mode == "ro")

    def as_arg(self) -> str:
        return f"{self.source}:{self.target}" + (":ro" if self.read_only else "")


# --------------------------------------------------------------------------- syscalls

_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mount.argtypes = [
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_ulong,
            ctypes.c_char_p,
        ]
        libc.mount.restype = ctypes.c_int
        libc.unshare.argtypes = [ctypes.c_int]
        libc.unshare.restype = ctypes.c_int
        _libc = libc
    return _libc


def _mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None
) -> None:
    def enc(value: str | None) -> bytes | None:
        return None if value is None else os.fsencode(value)

    if _lib().mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
        err = ctypes.get_errno()
        raise ContainerError(
            f"mount({source!r}, {target!r}, {fstype!r}, {flags:#x}): {os.strerror(err)}"
        )


def mount_tmpfs(target: str, options: str) -> None:
    """A fresh tmpfs on ``target`` (in the caller's mount namespace: call it after
    :func:`private_mount_namespace`)."""
    _mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, options)


def mount_overlay(target: Path, *, lower: Path, upper: Path, work: Path) -> None:
    """An overlay of ``upper`` (written) on ``lower`` (read only) at ``target``."""
    for path in (target, lower, upper, work):
        if "," in str(path) or ":" in str(path):
            raise ContainerError(f"overlay path {path} holds ',' or ':' (mount option syntax)")
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    _mount("overlay", str(target), "overlay", MS_NOSUID | MS_NODEV, options)


def _mnt_ns() -> int:
    return os.stat("/proc/self/ns/mnt").st_ino


def private_mount_namespace() -> None:
    """A new mount namespace whose mounts never propagate back (``/`` rslave)."""
    before = _mnt_ns()
    if _lib().unshare(CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        hint = " (needs root: CAP_SYS_ADMIN)" if err == errno.EPERM else ""
        raise ContainerError(f"unshare(CLONE_NEWNS): {os.strerror(err)}{hint}")
    if _mnt_ns() == before:  # never mount anything in the host's namespace
        raise ContainerError("unshare(CLONE_NEWNS) left us in the same mount namespace")
    _mount(None, "/", None, MS_REC | MS_SLAVE)


# --------------------------------------------------------------------------- mounts


def _deepest_existing(path: Path) -> tuple[Path, list[str]]:
    """(deepest existing ancestor-or-self, the missing names below it, top first)."""
    missing: list[str] = []
    while not os.path.lexists(path):
        missing.insert(0, path.name)
        path = path.parent
    return path, missing


class _Mounter:
    def __init__(self) -> None:
        self.private: set[Path] = set()
        """Directories that live in one of our shadow tmpfs (creating entries there
        touches nothing on the host); re-bound host entries are *not* in it."""

    def shadow(self, directory: Path) -> None:
        """tmpfs over ``directory`` with every original entry bound back in place."""
        if directory == Path("/"):
            raise ContainerError(
                "cannot create a mount point directly under / without a host change"
            )
        st = os.stat(directory)
        entries = sorted(os.listdir(directory))
        fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            mode = stat.S_IMODE(st.st_mode)
            _mount(
                "tmpfs",
                str(directory),
                "tmpfs",
                MS_NOSUID | MS_NODEV,
                f"mode={mode:o},uid={st.st_uid},gid={st.st_gid},size={SHADOW_TMPFS_SIZE}",
            )
            for name in entries:
                original = f"/proc/self/fd/{fd}/{name}"
                placeholder = directory / name
                info = os.lstat(original)
                if stat.S_ISLNK(info.st_mode):
                    os.symlink(os.readlink(original), placeholder)
                    continue
                if stat.S_ISDIR(info.st_mode):
                    placeholder.mkdir()
                else:
                    placeholder.touch()
                _mount(original, str(placeholder), None, MS_BIND | MS_REC)
        finally:
            os.close(fd)
        self.private.add(directory)

    def make_target(self, target: Path, is_dir: bool) -> Path:
        """The mount point for ``target`` (resolved), created without touching the host."""
        real = Path(os.path.realpath(target))
        existing, missing = _deepest_existing(real)
        if not missing:
            return real
        if existing not in self.private:
            self.shadow(existing)
        current = existing
        for index, name in enumerate(missing):
            current = current / name
            if index < len(missing) - 1 or is_dir:
                current.mkdir()
                self.private.add(current)
            else:
                current.touch()
        return current

    def bind(self, mount: Mount) -> None:
        source = Path(mount.source)
        if not source.exists():
            raise ContainerError(f"volume source {source} does not exist")
        target = self.make_target(Path(mount.target), source.is_dir())
        if source.is_dir() != target.is_dir():
            kinds = ("directory", "file")
            raise ContainerError(
                f"cannot mount {source} ({kinds[not source.is_dir()]}) on {target} "
                f"({kinds[not target.is_dir()]})"
            )
        _mount(str(source), str(target), None, MS_BIND | MS_REC)
        if mount.read_only:
            # Keep the flags the bind inherited (nosuid, nodev, noexec) and add ro.
            inherited = os.statvfs(target).f_flag & (MS_NOSUID | MS_NODEV | MS_NOEXEC)
            _mount(None, str(target), None, MS_BIND | MS_REMOUNT | MS_RDONLY | inherited)


def setup_mounts(mounts: Sequence[Mount]) -> None:
    """Bind every mount (parents before children), creating mount points privately."""
    mounter = _Mounter()
    ordered = sorted(mounts, key=lambda m: len(Path(os.path.realpath(m.target)).parts))
    for mount in ordered:
        mounter.bind(mount)
