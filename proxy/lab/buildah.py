"""Build images from a Containerfile/Dockerfile with Debian's ``buildah``, no Docker engine.

Storage lives under the given directory (``--root``/``--runroot``), never in
``/var/lib/containers``; RUN steps use ``--isolation chroot`` and the host network so
apt and pip inside them reach Debian and PyPI. The base images come from OCI archives
this package wrote (``--pull=never``): nothing is fetched from a registry.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from proxy.lab.rootfs import ImageBuildError, need_tool, run

HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
"""Mounted over the build's CA bundle during RUN: this host may reach PyPI only through
a TLS proxy whose CA the Debian bundle inside the image does not know. The mount is not
part of the resulting image."""

_REGISTRIES_CONF = 'unqualified-search-registries = ["docker.io"]\nshort-name-mode = "permissive"\n'
_POLICY = '{"default": [{"type": "insecureAcceptAnything"}]}\n'


def overlay_works(scratch: Path) -> bool:
    """Whether an overlay mount can be made here (root, kernel support, no nesting limit)."""
    if os.geteuid() != 0:
        return False
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        parts = {name: Path(tmp, name) for name in ("lower", "upper", "work", "merged")}
        for path in parts.values():
            path.mkdir()
        options = f"lowerdir={parts['lower']},upperdir={parts['upper']},workdir={parts['work']}"
        proc = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", options, str(parts["merged"])],
            capture_output=True,
            check=False,
        )
        if proc.returncode != 0:
            return False
        subprocess.run(["umount", str(parts["merged"])], capture_output=True, check=False)
        return True


class Buildah:
    """One buildah storage under ``root`` (``root/<driver>/storage`` and ``…/run``)."""

    def __init__(self, root: Path, driver: str | None = None) -> None:
        self.exe = need_tool("buildah", "buildah")
        self.driver = driver or ("overlay" if overlay_works(root / "probe") else "vfs")
        self.root = root / self.driver
        self.root.mkdir(parents=True, exist_ok=True)
        self._conf = self.root / "registries.conf"
        self._conf.write_text(_REGISTRIES_CONF)
        self._policy = self.root / "policy.json"
        self._policy.write_text(_POLICY)

    def _cmd(self, *args: str) -> list[str]:
        return [
            self.exe,
            "--root",
            str(self.root / "storage"),
            "--runroot",
            str(self.root / "run"),
            "--storage-driver",
            self.driver,
            "--registries-conf",
            str(self._conf),
            *args,
        ]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["CONTAINERS_REGISTRIES_CONF"] = str(self._conf)
        env.setdefault("BUILDAH_ISOLATION", "chroot")
        return env

    def import_archive(self, archive: Path, name: str) -> None:
        """Load image ``name`` (its ``ref.name`` in the archive's index) into storage."""
        out = run(
            self._cmd(
                "pull",
                "--quiet",
                "--signature-policy",
                str(self._policy),
                f"oci-archive:{archive}:{name}",
            ),
            f"buildah pull {archive.name}",
            env=self._env(),
            timeout=1800,
        )
        image_id = out.strip().splitlines()[-1] if out.strip() else ""
        if not image_id:
            raise ImageBuildError(f"buildah pull {archive} printed no image id")
        run(self._cmd("tag", image_id, name), f"buildah tag {name}", env=self._env())

    def build(
        self,
        context: Path,
        containerfile: Path,
        tag: str,
        *,
        log: Path,
        progress: Callable[[str], None] | None = None,
        mounts: Sequence[tuple[Path, str]] = (),
        labels: Mapping[str, str] | None = None,
    ) -> None:
        """``buildah bud`` offline (``--pull=never``); output goes to ``log``.

        ``mounts`` are read-only bind mounts for RUN steps only; ``labels`` are set on the
        result (over those inherited from the base).
        """
        args = [
            "bud",
            "--pull=never",
            "--isolation",
            "chroot",
            "--network",
            "host",
            "--format",
            "oci",
            "--signature-policy",
            str(self._policy),
            "-f",
            str(containerfile),
            "-t",
            tag,
        ]
        for host_path, inside in mounts:
            args += ["-v", f"{host_path}:{inside}:ro"]
        for key, value in (labels or {}).items():
            args += ["--label", f"{key}={value}"]
        cmd = self._cmd(*args, str(context))
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as sink:
            proc = subprocess.Popen(
                cmd,
                cwd=context,
                env=self._env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
            )
            assert proc.stdout is not None
            for line in proc.stdout:
                sink.write(line)
                if progress is not None and "STEP " in line[:16]:
                    progress(line.strip())
            rc = proc.wait()
        if rc != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            raise ImageBuildError(
                f"buildah bud {containerfile.name} (tag {tag}) failed, exit {rc}; "
                f"full log: {log}\n{tail}"
            )

    def export(self, name: str, archive: Path) -> None:
        """Write image ``name`` as an ``oci-archive`` (index names it ``name``)."""
        tmp = archive.with_name(archive.name + ".partial")
        tmp.unlink(missing_ok=True)
        run(
            self._cmd(
                "push",
                "--quiet",
                "--signature-policy",
                str(self._policy),
                "--format",
                "oci",
                name,
                f"oci-archive:{tmp}:{name}",
            ),
            f"buildah push {name}",
            env=self._env(),
            timeout=1800,
        )
        tmp.replace(archive)

    def remove_all(self) -> None:
        """Drop every image and container in this storage (frees the disk)."""
        subprocess.run(self._cmd("rm", "--all"), capture_output=True, env=self._env(), check=False)
        subprocess.run(
            self._cmd("rmi", "--all", "--force"), capture_output=True, env=self._env(), check=False
        )

    def wipe(self) -> None:
        """Remove this storage directory altogether."""
        self.remove_all()
        shutil.rmtree(self.root, ignore_errors=True)
