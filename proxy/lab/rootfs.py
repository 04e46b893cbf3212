"""The parts the stand-in images are made of, each from Debian or upstream source.

* busybox from Debian's ``busybox-static`` package (``apt-get download`` + ``dpkg-deb -x``)
  with a symlink per applet in ``/bin``;
* ``curl`` and its shared-library closure (``ldd``) copied from this Debian host;
* upstream's ``pause`` compiled from ``build/pause/linux/pause.c`` (``gcc -Os -static``);
* a Debian bookworm root file system from ``mmdebstrap --variant=minbase``;
* the stand-in scripts shipped beside this module (``proxy/lab/standins/``).

Each function returns layer entries (:class:`proxy.lab.oci.Entry`) or a directory, and
raises :class:`ImageBuildError` saying what to install or fix.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from proxy.lab import oci

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "daemon:x:1:1:daemon:/usr/sbin:/bin/false\n"
    "www-data:x:33:33:www-data:/var/www:/bin/false\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = "root:x:0:\ndaemon:x:1:\nwww-data:x:33:\nnogroup:x:65534:\n"
MMDEBSTRAP_EXCLUDES = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/lintian/*",
)
"""dpkg filters the rootfs keeps (in /etc/dpkg/dpkg.cfg.d/), as Debian's slim images do."""


_SCRUB = (
    "var/lib/apt/lists/*_*",
    "var/cache/apt/*.bin",
    "var/cache/apt/archives/*.deb",
    "var/cache/debconf/*-old",
    "var/cache/ldconfig/aux-cache",
    "var/log/apt/*",
    "var/log/*.log",
)
"""Files of the build itself (apt lists and caches, logs) removed from a Debian root."""


class ImageBuildError(RuntimeError):
    """An image part could not be made; the message says what to install or fix."""


def run(
    cmd: Sequence[str],
    what: str,
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> str:
    """Run a command (argument list); return stdout; on failure raise with its output tail."""
    try:
        proc = subprocess.run(
            list(cmd),
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as e:
        raise ImageBuildError(f"{what}: {cmd[0]} is not installed ({e})") from e
    except subprocess.TimeoutExpired as e:
        raise ImageBuildError(f"{what}: {cmd[0]} did not finish in {timeout} s") from e
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise ImageBuildError(f"{what} failed ({cmd[0]} exit {proc.returncode}):\n{tail}")
    return proc.stdout


def need_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ImageBuildError(f"`{name}` is not installed; install it: apt-get install {package}")
    return path


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def script(name: str) -> bytes:
    """A stand-in script shipped in ``proxy/lab/standins/``."""
    return (resources.files("proxy.lab") / "standins" / name).read_bytes()


# --------------------------------------------------------------------------- debian pkgs


def apt_download(package: str, cache: Path) -> Path:
    """The package's ``.deb`` in ``cache`` (downloaded with ``apt-get download`` once)."""
    cache.mkdir(parents=True, exist_ok=True)
    found = sorted(cache.glob(f"{package}_*.deb"))
    if found:
        return found[-1]
    need_tool("apt-get", "apt")
    try:
        run(
            ["apt-get", "-o", "APT::Sandbox::User=root", "download", package],
            f"apt-get download {package}",
            cwd=cache,
            timeout=600,
        )
    except ImageBuildError as e:
        raise ImageBuildError(
            f"{e}\nIf apt says it cannot locate the package, run `apt-get update` first."
        ) from e
    found = sorted(cache.glob(f"{package}_*.deb"))
    if not found:
        raise ImageBuildError(f"apt-get download {package} left no .deb in {cache}")
    return found[-1]


def deb_version(deb: Path) -> str:
    return run(["dpkg-deb", "-f", str(deb), "Version"], f"read version of {deb.name}").strip()


def extract_deb(deb: Path, target: Path) -> Path:
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    run(["dpkg-deb", "-x", str(deb), str(target)], f"unpack {deb.name}")
    return target


# --------------------------------------------------------------------------- busybox


def busybox_applets(busybox: Path) -> list[str]:
    out = run([str(busybox), "--list"], "list busybox applets")
    applets = [a for a in out.split() if re.fullmatch(r"[A-Za-z0-9_.+\[\]-]+", a)]
    if "sh" not in applets:
        raise ImageBuildError(f"{busybox} has no sh applet; it is not a usable busybox")
    return applets


def busybox_entries(busybox: Path) -> list[oci.Entry]:
    """A minimal busybox root: /bin/busybox, a symlink per applet, /etc, /tmp, /root."""
    entries = [oci.host_file("bin/busybox", busybox, 0o755)]
    for applet in busybox_applets(busybox):
        if applet != "busybox":
            entries.append(oci.symlink(f"bin/{applet}", "busybox"))
    entries += [
        oci.symlink("usr/bin/env", "/bin/env"),
        oci.directory("usr/sbin"),
        oci.directory("usr/local/bin"),
        oci.directory("sbin"),
        oci.file("etc/passwd", PASSWD),
        oci.file("etc/group", GROUP),
        oci.file("etc/nsswitch.conf", "hosts: files dns\npasswd: files\ngroup: files\n"),
        oci.directory("etc/ssl/certs"),
        oci.directory("tmp", 0o1777),
        oci.directory("root", 0o700),
        oci.directory("home"),
        oci.directory("var/www"),
        oci.directory("var/run"),
        oci.directory("proc"),
        oci.directory("sys"),
        oci.directory("dev"),
    ]
    return entries


# --------------------------------------------------------------------------- curl


def ldd_closure(binary: Path) -> list[Path]:
    """The shared libraries and dynamic loader ``binary`` needs, as ``ldd`` names them."""
    out = run(["ldd", str(binary)], f"ldd {binary}")
    paths: list[Path] = []
    for line in out.splitlines():
        line = line.strip()
        if "=>" in line:
            target = line.split("=>", 1)[1].strip().split(" (", 1)[0].strip()
        else:
            target = line.split(" (", 1)[0].strip()
        if target.startswith("/"):
            paths.append(Path(target))
        elif "not found" in line:
            raise ImageBuildError(f"{binary} needs a library that is missing: {line}")
    return sorted(set(paths))


def binary_with_libs(binary: Path, install_as: str) -> list[oci.Entry]:
    """``binary`` at ``install_as`` plus its library closure at the paths ldd names.

    Library symlinks are resolved: each path holds the real file's bytes.
    """
    if not os.access(binary, os.X_OK):
        raise ImageBuildError(f"{binary} is missing; install it: apt-get install curl")
    entries = [oci.host_file(install_as, binary.resolve(), 0o755)]
    for lib in ldd_closure(binary):
        entries.append(oci.host_file(str(lib), lib.resolve(), 0o755))
    return entries


def closure_digest(binary: Path) -> str:
    """A digest of ``binary`` and every library it loads (the curl layer's cache key)."""
    h = hashlib.sha256()
    for path in [binary, *ldd_closure(binary)]:
        h.update(f"{path}\0{file_digest(path.resolve())}\n".encode())
    return h.hexdigest()


def check_runs_in(root: Path, argv: Sequence[str], what: str) -> str:
    """Run ``argv`` chroot'ed into ``root`` (needs root); return its output."""
    if os.geteuid() != 0:
        return ""
    return run(["chroot", str(root), *argv], f"{what} (chroot {root})", timeout=60)


def materialize(entries: Sequence[oci.Entry], root: Path) -> Path:
    """Lay ``entries`` out as files under ``root`` (to test them with chroot)."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for entry in sorted(entries, key=lambda e: e.path):
        target = root / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        if entry.kind == "dir":
            target.mkdir(exist_ok=True)
            target.chmod(entry.mode)
        elif entry.kind == "symlink":
            target.unlink(missing_ok=True)
            target.symlink_to(entry.target)
        elif entry.kind == "hardlink":
            os.link(root / entry.target, target)
        else:
            if entry.source is not None:
                shutil.copyfile(entry.source, target)
            else:
                target.write_bytes(entry.data or b"")
            target.chmod(entry.mode)
    return root


# --------------------------------------------------------------------------- pause


def pause_source(module_root: Path) -> Path:
    source = module_root / "build" / "pause" / "linux" / "pause.c"
    if not source.is_file():
        raise ImageBuildError(
            f"{source} is missing: the Kubernetes module is not in the Go module cache. "
            "Build the lab's Kubernetes binaries first (it downloads k8s.io/kubernetes)."
        )
    return source


def compile_pause(source: Path, out: Path, version: str) -> Path:
    """Upstream's pause, with upstream's flags (``-Os -Wall -Werror -static``)."""
    gcc = need_tool("gcc", "gcc libc6-dev")
    out.parent.mkdir(parents=True, exist_ok=True)
    run(
        [
            gcc,
            "-Os",
            "-Wall",
            "-Werror",
            "-static",
            f"-DVERSION=v{version}-kube-proxy-py",
            "-o",
            str(out),
            str(source),
        ],
        "compile pause.c",
    )
    run(["strip", str(out)], "strip pause")
    return out


# --------------------------------------------------------------------------- debian root


def mmdebstrap_command(suite: str, packages: Sequence[str], target: Path) -> list[str]:
    cmd = [
        "mmdebstrap",
        "--variant=minbase",
        "--mode=root",
        "--format=directory",
        "--skip=output/dev",
        f"--include={','.join(packages)}",
        '--aptopt=Acquire::Retries "3"',
    ]
    cmd += [f"--dpkgopt={opt}" for opt in MMDEBSTRAP_EXCLUDES]
    return [*cmd, suite, str(target)]


def debian_root(suite: str, packages: Sequence[str], target: Path) -> Path:
    """A Debian root in ``target`` (made anew), host-specific files removed."""
    need_tool("mmdebstrap", "mmdebstrap")
    if os.geteuid() != 0:
        raise ImageBuildError("mmdebstrap --mode=root needs root; run the image build as root")
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    run(mmdebstrap_command(suite, packages, target), f"mmdebstrap {suite}", timeout=3600)
    # mmdebstrap copies the host's resolver and name; the runtime provides both.
    for rel in ("etc/resolv.conf", "etc/hostname", "etc/machine-id"):
        (target / rel).unlink(missing_ok=True)
    (target / "etc/hostname").write_text("")
    for pattern in _SCRUB:
        for path in target.glob(pattern):
            if path.is_file() or path.is_symlink():
                path.unlink()
    return target


def dpkg_version(root: Path, package: str) -> str:
    """The version of ``package`` installed in the Debian root ``root``."""
    status = (root / "var/lib/dpkg/status").read_text(errors="replace")
    for block in status.split("\n\n"):
        if re.search(rf"^Package: {re.escape(package)}$", block, re.M):
            m = re.search(r"^Version: (\S+)$", block, re.M)
            if m:
                return m.group(1)
    raise ImageBuildError(f"{package} is not installed in {root}")
