"""Every image the lab's cluster runs, built here without Docker and pushed to its registry.

The lab has no internet registry, so each node's containerd mirrors docker.io,
registry.k8s.io, quay.io and ghcr.io to one local registry, and this module fills it:

* stand-ins for the public images the notes and tests use (busybox, nginx, curl, the
  kiamol samples, python, pause), each made from Debian packages or upstream source
  and labelled ``io.kube-proxy-py.stand-in`` with what it stands in for;
* ``kube-proxy-py:0.1.0`` from the repository's ``Dockerfile``, unchanged, and
  ``registry.k8s.io/kube-proxy`` from the upstream binary the lab built, both with
  buildah on the python stand-in;
* the cluster add-ons, CoreDNS and MetalLB's controller and speaker, from the binaries
  :mod:`proxy.lab.addonbuild` built, laid out as their upstream Dockerfiles lay them out
  (a static binary on a distroless-like base).

Archives are cached under ``cache_root()/images/`` (:mod:`proxy.lab.imagecache`) and
rebuilt only when an input changes (see :func:`build_images`); :mod:`proxy.lab.imagepush`
pushes them into the registry cache, and ``kube-proxy-py lab load-image FILE.tar`` a
user's own ``docker save`` or OCI archive into a running lab's registry.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from proxy.lab import addonbuild, build, imageref, oci, rootfs
from proxy.lab.buildah import HOST_CA_BUNDLE, Buildah
from proxy.lab.imagecache import (
    BuiltImage,
    ImageSet,
    cache_key,
    cached,
    images_dir,
    one_at_a_time,
    tree_digest,
)

RECIPE = "2"
"""Bump to rebuild every cached archive (the recipes below changed)."""
STAND_IN_LABEL = "io.kube-proxy-py.stand-in"
DESCRIPTION_LABEL = "org.opencontainers.image.description"
ON_STAND_IN = (
    "not a stand-in itself: built from {what}, unchanged, on the python:3.11-slim-bookworm "
    "stand-in (Debian bookworm's python3 via mmdebstrap)"
)
"""The stand-in label of kube-proxy-py's own images: only their base is a stand-in."""
PAUSE_VERSION = "3.10.2"
"""The sandbox image kubeadm v1.37.2 (``constants.PauseVersion``) and containerd 2.3
(``DefaultSandboxImage``) both default to."""
PAUSE_IMAGE = f"registry.k8s.io/pause:{PAUSE_VERSION}"
"""The sandbox image the lab's containerd and kubelet are configured with."""
PAUSE_REFS = (PAUSE_IMAGE, "registry.k8s.io/pause:3.10.1", "registry.k8s.io/pause:3.10")
PYTHON_SUITE = "bookworm"
PYTHON_PACKAGES = ("python3", "python3-pip", "python3-venv", "ca-certificates")
PYTHON_REF = "docker.io/library/python:3.11-slim-bookworm"
KUBE_PROXY_PY_REF = "docker.io/library/kube-proxy-py:0.1.0"
WORKLOAD_REF = "docker.io/library/kube-proxy-py-workload:0.1.0"
KUBE_PROXY_REF = f"registry.k8s.io/kube-proxy:{build.K8S_VERSION}"
UPSTREAM_KUBE_PROXY_IMAGE = KUBE_PROXY_REF
"""What the lab's upstream kube-proxy DaemonSet (``--compare``) runs."""
COREDNS_REF = f"registry.k8s.io/coredns/coredns:{addonbuild.COREDNS_VERSION}"
METALLB_CONTROLLER_REF = f"quay.io/metallb/controller:{addonbuild.METALLB_VERSION}"
METALLB_SPEAKER_REF = f"quay.io/metallb/speaker:{addonbuild.METALLB_VERSION}"
CAP_NET_BIND_SERVICE = 10
NONROOT = 65532
"""distroless's ``nonroot`` user and group, which CoreDNS's image runs as."""
KUBE_PROXY_PACKAGES = ("iptables", "nftables", "conntrack", "iproute2", "ipset", "kmod")
SLEEP_FOREVER = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait; done"
"""Sleeps until SIGTERM and then exits at once (as PID 1 a bare sleep ignores it)."""
REPO_ROOT = Path(__file__).resolve().parents[2]
DISTROLESS_PASSWD = (
    "root:x:0:0:root:/root:/sbin/nologin\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
    f"nonroot:x:{NONROOT}:{NONROOT}:nonroot:/home/nonroot:/sbin/nologin\n"
)
DISTROLESS_GROUP = f"root:x:0:\nnobody:x:65534:\ntty:x:5:\nstaff:x:50:\nnonroot:x:{NONROOT}:\n"

Out = Callable[[str], None]


@dataclass(frozen=True)
class Available:
    """One image the lab provides: its references and what it is."""

    refs: tuple[str, ...]
    stands_in_for: str
    made_of: str


def _refs(*names: str) -> tuple[str, ...]:
    return tuple(imageref.normalize(n) for n in names)


AVAILABLE: tuple[Available, ...] = (
    Available(
        PAUSE_REFS,
        "the pod sandbox image (registry.k8s.io/pause)",
        "upstream's pause.c from k8s.io/kubernetes, gcc -Os -static",
    ),
    Available(
        _refs("busybox:latest", "busybox:1.36", "busybox:1.35", "busybox:1.28", "busybox:stable"),
        "busybox",
        "Debian's busybox-static with a symlink per applet",
    ),
    Available(
        _refs("nginx:latest", "nginx:stable", "nginx:alpine"),
        "nginx (HTTP/1.1 on :80 with keep-alive; GET answers the pod's name and the "
        "client address it saw)",
        "kube-proxy-py's workload server on the python stand-in",
    ),
    Available(
        _refs("curlimages/curl:latest"),
        "curlimages/curl (curl, or the command given, as its entrypoint script does)",
        "busybox + Debian's curl and its libraries",
    ),
    Available(
        _refs("radial/busyboxplus:curl"),
        "radial/busyboxplus:curl (a shell with curl and nslookup)",
        "busybox + Debian's curl and its libraries",
    ),
    Available(
        _refs("kiamol/ch03-sleep:latest"),
        "kiamol/ch03-sleep (sleeps; has ping, nslookup, wget, env)",
        "busybox",
    ),
    Available(
        _refs("kiamol/ch03-numbers-api:latest"),
        "kiamol/ch03-numbers-api (GET /rng on :80 answers a random number)",
        "busybox nc + a shell HTTP handler",
    ),
    Available(
        _refs("kiamol/ch03-numbers-web:latest"),
        "kiamol/ch03-numbers-web (GET / on :80 shows a number from http://numbers-api/rng)",
        "busybox httpd + a CGI using wget",
    ),
    Available(
        (PYTHON_REF, imageref.normalize("python:3.11-slim")),
        "the official python:3.11-slim-bookworm",
        "Debian bookworm's python3, pip and venv (mmdebstrap minbase)",
    ),
    Available(
        (WORKLOAD_REF,),
        "(the lab's test workload: python3 /workload.py --name … --tcp/--udp/--http PORT)",
        "the python stand-in + proxy/harness/workload.py",
    ),
    Available(
        (KUBE_PROXY_PY_REF,),
        "(kube-proxy-py itself, from the repository's Dockerfile)",
        "buildah bud of the Dockerfile on the python stand-in",
    ),
    Available(
        (KUBE_PROXY_REF,),
        f"upstream kube-proxy {build.K8S_VERSION}",
        "the lab's kube-proxy build on the python stand-in + iptables, nftables, conntrack",
    ),
    Available(
        (COREDNS_REF,),
        f"CoreDNS {addonbuild.COREDNS_VERSION} (what kubeadm {build.K8S_VERSION} installs)",
        "the lab's CoreDNS build with cap_net_bind_service, user nonroot, as its Dockerfile",
    ),
    Available(
        (METALLB_CONTROLLER_REF,),
        f"MetalLB {addonbuild.METALLB_VERSION} controller",
        "the lab's MetalLB build, /controller as its Dockerfile",
    ),
    Available(
        (METALLB_SPEAKER_REF,),
        f"MetalLB {addonbuild.METALLB_VERSION} speaker (L2 mode)",
        "the lab's MetalLB build, /speaker as its Dockerfile",
    ),
)


def available(ref: str) -> Available:
    """The AVAILABLE entry naming ``ref`` (any spelling: ``busybox`` works)."""
    want = imageref.normalize(ref)
    for item in AVAILABLE:
        if want in item.refs:
            return item
    raise KeyError(f"{ref} is not an image the lab provides")


def _labels(stands_in_for: str, made_of: str) -> dict[str, str]:
    text = f"kube-proxy-py stand-in for {stands_in_for}; made of {made_of}"
    return {STAND_IN_LABEL: text, DESCRIPTION_LABEL: text}


# --------------------------------------------------------------------------- recipes


class _Builder:
    """Builds the stand-ins, sharing layers (busybox, curl) within one run."""

    def __init__(self, work: Path, progress: build.Progress, force: bool) -> None:
        self.work = work
        self.store = oci.BlobStore(work / "store")
        self.progress = progress
        self.force = force
        self.downloads = images_dir() / "downloads"

    def cached(
        self, slug: str, refs: Sequence[str], key: str, make: Callable[[Path], None], what: str
    ) -> BuiltImage:
        return cached(slug, refs, key, make, self.progress, what, force=self.force)

    def archive(
        self, out: Path, layers: Sequence[oci.Layer], config: oci.ImageConfig, refs: Sequence[str]
    ) -> None:
        manifest = oci.write_image(self.store, layers, config)
        oci.write_oci_archive(out, self.store, manifest, refs)

    # -- shared parts ---------------------------------------------------------

    @cache  # noqa: B019 (one builder per build run)
    def busybox_deb(self) -> Path:
        return rootfs.apt_download("busybox-static", self.downloads)

    @cache  # noqa: B019
    def busybox_binary(self) -> Path:
        root = rootfs.extract_deb(self.busybox_deb(), self.work / "busybox-static")
        return root / "bin" / "busybox"

    @cache  # noqa: B019
    def busybox_version(self) -> str:
        return rootfs.deb_version(self.busybox_deb())

    @cache  # noqa: B019
    def busybox_layer(self) -> oci.Layer:
        return oci.write_layer(
            self.store,
            rootfs.busybox_entries(self.busybox_binary()),
            f"busybox-static {self.busybox_version()} from Debian, applet symlinks in /bin",
        )

    def busybox_key(self) -> str:
        return cache_key(RECIPE, rootfs.file_digest(self.busybox_deb()))

    def scripts_layer(self, what: str, entries: Sequence[oci.Entry]) -> oci.Layer:
        return oci.write_layer(self.store, entries, f"kube-proxy-py stand-in scripts: {what}")

    @cache  # noqa: B019
    def curl_layer(self) -> oci.Layer:
        curl = Path("/usr/bin/curl")
        entries = rootfs.binary_with_libs(curl, "usr/bin/curl")
        test_root = rootfs.materialize(
            [*rootfs.busybox_entries(self.busybox_binary()), *entries], self.work / "curl-root"
        )
        rootfs.check_runs_in(test_root, ["/usr/bin/curl", "--version"], "run curl in its rootfs")
        shutil.rmtree(test_root, ignore_errors=True)
        return oci.write_layer(self.store, entries, "curl and its libraries from Debian")

    def curl_key(self) -> str:
        return cache_key(self.busybox_key(), rootfs.closure_digest(Path("/usr/bin/curl")))

    # -- images ---------------------------------------------------------------

    def pause(self) -> BuiltImage:
        module = Path.home() / "go" / "pkg" / "mod" / "k8s.io" / f"kubernetes@{build.K8S_VERSION}"
        source = rootfs.pause_source(module)
        gcc = rootfs.run(["gcc", "--version"], "gcc --version").splitlines()[0]
        key = cache_key(RECIPE, source.read_bytes(), gcc, PAUSE_VERSION)

        def make(out: Path) -> None:
            binary = rootfs.compile_pause(source, self.work / "pause", PAUSE_VERSION)
            layer = oci.write_layer(
                self.store,
                [oci.host_file("pause", binary, 0o755)],
                f"pause {PAUSE_VERSION}: build/pause/linux/pause.c, gcc -Os -static",
            )
            config = oci.ImageConfig(
                entrypoint=["/pause"],
                user="65535:65535",
                labels=_labels(
                    f"registry.k8s.io/pause:{PAUSE_VERSION}",
                    f"pause.c of k8s.io/kubernetes {build.K8S_VERSION} compiled with {gcc}",
                ),
            )
            self.archive(out, [layer], config, PAUSE_REFS)

        return self.cached("pause", PAUSE_REFS, key, make, "registry.k8s.io/pause")

    def addon(
        self,
        ref: str,
        binary: Path,
        *,
        user: str | None = None,
        xattrs: tuple[tuple[str, bytes], ...] = (),
        exposed_ports: Sequence[str] = (),
    ) -> BuiltImage:
        """An add-on's image as its Dockerfile makes it: ``/<binary>`` as the entrypoint on
        a distroless-like base (``/etc/passwd`` with root, nobody and nonroot; ``/tmp``)."""
        item = available(ref)
        name = binary.name
        key = cache_key(RECIPE, rootfs.file_digest(binary), ref, user or "", repr(xattrs))

        def make(out: Path) -> None:
            base = oci.write_layer(
                self.store,
                [
                    oci.file("etc/passwd", DISTROLESS_PASSWD),
                    oci.file("etc/group", DISTROLESS_GROUP),
                    oci.directory("tmp", 0o1777),
                    oci.directory("home/nonroot", 0o700),
                ],
                "a distroless/static-like base: passwd, group and /tmp",
            )
            entry = oci.host_file(name, binary, 0o755)
            layer = oci.write_layer(
                self.store,
                [dataclasses.replace(entry, xattrs=xattrs)],
                f"COPY {name} /{name}" + (" (setcap cap_net_bind_service=+ep)" if xattrs else ""),
            )
            config = oci.ImageConfig(
                entrypoint=[f"/{name}"],
                user=user or "",
                exposed_ports=list(exposed_ports),
                labels={
                    DESCRIPTION_LABEL: f"{item.stands_in_for}: {item.made_of}",
                },
            )
            self.archive(out, [base, layer], config, item.refs)

        return self.cached(ref.rsplit("/", 1)[-1].replace(":", "-"), item.refs, key, make, ref)

    def busybox(self) -> BuiltImage:
        item = available("docker.io/library/busybox:latest")

        def make(out: Path) -> None:
            config = oci.ImageConfig(
                cmd=["sh"],
                labels=_labels(
                    "busybox", f"Debian busybox-static {self.busybox_version()}, applets in /bin"
                ),
            )
            self.archive(out, [self.busybox_layer()], config, item.refs)

        return self.cached("busybox", item.refs, self.busybox_key(), make, "busybox")

    def curl(self, ref: str, slug: str) -> BuiltImage:
        item = available(ref)
        shell = slug == "busyboxplus-curl"

        entrypoint = oci.file(
            "usr/local/bin/curl-entrypoint", rootfs.script("curl-entrypoint.sh"), 0o755
        )
        key = cache_key(self.curl_key(), slug, entrypoint.data or b"")

        def make(out: Path) -> None:
            layers = [self.busybox_layer(), self.curl_layer()]
            if not shell:
                layers.append(self.scripts_layer("curl entrypoint", [entrypoint]))
            config = oci.ImageConfig(
                entrypoint=None if shell else ["/usr/local/bin/curl-entrypoint"],
                cmd=["/bin/sh"] if shell else ["curl"],
                labels=_labels(
                    item.stands_in_for,
                    f"Debian busybox-static {self.busybox_version()} and this host's Debian "
                    "curl with its shared libraries",
                ),
            )
            self.archive(out, layers, config, item.refs)

        return self.cached(slug, item.refs, key, make, item.refs[0])

    def kiamol_sleep(self) -> BuiltImage:
        item = available("docker.io/kiamol/ch03-sleep:latest")

        def make(out: Path) -> None:
            config = oci.ImageConfig(
                cmd=["/bin/sh", "-c", SLEEP_FOREVER],
                labels=_labels(
                    item.stands_in_for, f"Debian busybox-static {self.busybox_version()}"
                ),
            )
            self.archive(out, [self.busybox_layer()], config, item.refs)

        return self.cached("kiamol-sleep", item.refs, self.busybox_key(), make, item.refs[0])

    def _busybox_scripts(
        self, ref: str, slug: str, scripts: dict[str, str], command: str, made_of: str
    ) -> BuiltImage:
        """A busybox stand-in serving HTTP on :80 from ``scripts`` (path -> script file),
        run-until-term included (PID 1 must act on SIGTERM)."""
        item = available(ref)
        entries = [
            oci.file("usr/local/bin/run-until-term", rootfs.script("run-until-term.sh"), 0o755),
            *(oci.file(path, rootfs.script(name), 0o755) for path, name in scripts.items()),
        ]
        key = cache_key(self.busybox_key(), *(e.data or b"" for e in entries))

        def make(out: Path) -> None:
            config = oci.ImageConfig(
                cmd=[command],
                exposed_ports=["80/tcp"],
                labels=_labels(
                    item.stands_in_for,
                    f"{made_of} (Debian busybox-static {self.busybox_version()})",
                ),
            )
            layers = [self.busybox_layer(), self.scripts_layer(slug, entries)]
            self.archive(out, layers, config, item.refs)

        return self.cached(f"kiamol-{slug}", item.refs, key, make, item.refs[0])

    def numbers_api(self) -> BuiltImage:
        return self._busybox_scripts(
            "docker.io/kiamol/ch03-numbers-api:latest",
            "numbers-api",
            {
                "usr/local/bin/numbers-api": "numbers-api.sh",
                "usr/local/bin/rng-handler": "rng-handler.sh",
            },
            "/usr/local/bin/numbers-api",
            "busybox nc and a shell handler",
        )

    def numbers_web(self) -> BuiltImage:
        return self._busybox_scripts(
            "docker.io/kiamol/ch03-numbers-web:latest",
            "numbers-web",
            {
                "usr/local/bin/numbers-web": "numbers-web.sh",
                "var/www/cgi-bin/index.cgi": "numbers-web.cgi",
            },
            "/usr/local/bin/numbers-web",
            "busybox httpd and a CGI script",
        )

    def python(self) -> BuiltImage:
        item = available(PYTHON_REF)
        key = cache_key(
            RECIPE,
            PYTHON_SUITE,
            *PYTHON_PACKAGES,
            *rootfs.MMDEBSTRAP_EXCLUDES,
        )

        def make(out: Path) -> None:
            root = self.work / "python-root"
            self.progress.step(
                f"mmdebstrap {PYTHON_SUITE} minbase + {', '.join(PYTHON_PACKAGES)} "
                "(a minute or two)"
            )
            rootfs.debian_root(PYTHON_SUITE, PYTHON_PACKAGES, root)
            version = rootfs.dpkg_version(root, "python3.11").split("-", 1)[0]
            (root / "usr/lib/python3.11/EXTERNALLY-MANAGED").unlink(missing_ok=True)
            local_bin = root / "usr/local/bin"
            local_bin.mkdir(parents=True, exist_ok=True)
            for name, target in (
                ("python", "/usr/bin/python3"),
                ("python3", "/usr/bin/python3"),
                ("pip", "/usr/bin/pip3"),
                ("pip3", "/usr/bin/pip3"),
            ):
                (local_bin / name).unlink(missing_ok=True)
                (local_bin / name).symlink_to(target)
            rootfs.check_runs_in(
                root, ["/usr/local/bin/python", "-c", "import venv, ssl"], "run python"
            )
            self.progress.step(f"packing the python {version} root file system into a layer")
            layer = oci.write_layer(
                self.store,
                oci.entries_from_tree(root),
                f"mmdebstrap --variant=minbase --include={','.join(PYTHON_PACKAGES)} "
                f"{PYTHON_SUITE}",
            )
            shutil.rmtree(root, ignore_errors=True)
            config = oci.ImageConfig(
                cmd=["python3"],
                env=[oci.DEFAULT_PATH, "LANG=C.UTF-8", f"PYTHON_VERSION={version}"],
                labels=_labels(
                    "python:3.11-slim-bookworm",
                    f"Debian {PYTHON_SUITE} packages (python3.11 {version}, pip, venv) via "
                    "mmdebstrap minbase; pip installs system-wide as in the official image",
                ),
            )
            self.archive(out, [layer], config, item.refs)

        return self.cached("python", item.refs, key, make, PYTHON_REF)

    def _python_layers(self, python: BuiltImage) -> tuple[list[oci.Layer], list[str]]:
        """The python stand-in's layers (copied into our store) and its Env."""
        with oci.OciArchive(python.archive) as base:
            tagged = base.images()[0]
            base_config = oci.image_config(base, tagged.view)
            for blob in tagged.view.layers:
                if not self.store.has(blob.digest):
                    with base.open_blob(blob.digest) as src, self.store.writer() as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
        diff_ids = [str(d) for d in base_config["rootfs"]["diff_ids"]]
        layers = [
            oci.Layer(desc, diff_id, "python stand-in")
            for desc, diff_id in zip(tagged.view.layers, diff_ids, strict=True)
        ]
        return layers, [str(e) for e in base_config["config"].get("Env", [])]

    def workload(self, python: BuiltImage) -> BuiltImage:
        item = available(WORKLOAD_REF)
        source = _workload_source()
        key = cache_key(RECIPE, python.digest, source.read_bytes())

        def make(out: Path) -> None:
            base_layers, env = self._python_layers(python)
            layer = oci.write_layer(
                self.store,
                [oci.file("workload.py", source.read_bytes(), 0o644)],
                "COPY proxy/harness/workload.py /workload.py",
            )
            config = oci.ImageConfig(
                entrypoint=["python3", "/workload.py"],
                env=[*env, "PYTHONUNBUFFERED=1"],
                labels={
                    STAND_IN_LABEL: ON_STAND_IN.format(what="proxy/harness/workload.py"),
                    DESCRIPTION_LABEL: "kube-proxy-py's test workload (proxy/harness/workload.py) "
                    "on the python stand-in: python3 /workload.py --name N --tcp/--udp/--http P",
                },
            )
            self.archive(out, [*base_layers, layer], config, item.refs)

        return self.cached("workload", item.refs, key, make, WORKLOAD_REF)

    def nginx(self, python: BuiltImage) -> BuiltImage:
        """nginx: an HTTP/1.1 server on :80 with keep-alive, as nginx has (the learners'
        notes show a browser's keep-alive connection sticking to one pod): each answer is
        the pod's name and the client address it saw."""
        item = available("docker.io/library/nginx:latest")
        source = _workload_source()
        start = oci.file("usr/sbin/nginx", rootfs.script("nginx.sh"), 0o755)
        key = cache_key(RECIPE, python.digest, source.read_bytes(), start.data or b"")

        def make(out: Path) -> None:
            base_layers, env = self._python_layers(python)
            layer = oci.write_layer(
                self.store,
                [
                    oci.file("usr/local/lib/nginx-stand-in/server.py", source.read_bytes()),
                    start,
                ],
                "the nginx stand-in: proxy/harness/workload.py serving HTTP on :80",
            )
            config = oci.ImageConfig(
                cmd=["nginx", "-g", "daemon off;"],
                env=[*env, "PYTHONUNBUFFERED=1"],
                exposed_ports=["80/tcp"],
                stop_signal="SIGTERM",
                labels=_labels(
                    "nginx: HTTP/1.1 on :80 with keep-alive; every GET answers "
                    "'<pod name> <client ip>:<port>'",
                    "proxy/harness/workload.py on the python stand-in",
                ),
            )
            self.archive(out, [*base_layers, layer], config, item.refs)

        return self.cached("nginx", item.refs, key, make, "nginx")


def _workload_source() -> Path:
    source = REPO_ROOT / "proxy" / "harness" / "workload.py"
    if not source.is_file():
        source = Path(__file__).resolve().parents[1] / "harness" / "workload.py"
    return source


# --------------------------------------------------------------------------- buildah


def _repo_inputs_digest() -> str:
    return tree_digest(
        REPO_ROOT, ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "proxy")
    )


KUBE_PROXY_CONTAINERFILE = f"""\
FROM {PYTHON_REF}
LABEL {STAND_IN_LABEL}="kube-proxy-py stand-in for {KUBE_PROXY_REF}: the lab's upstream kube-proxy \
build on the python stand-in with Debian's iptables, nftables, conntrack and iproute2" \\
      {DESCRIPTION_LABEL}="upstream kube-proxy {build.K8S_VERSION} (built from k8s.io/kubernetes) \
on Debian bookworm"
RUN apt-get update \\
 && apt-get install -y --no-install-recommends {" ".join(KUBE_PROXY_PACKAGES)} \\
 && rm -rf /var/lib/apt/lists/*
COPY kube-proxy /usr/local/bin/kube-proxy
ENTRYPOINT ["/usr/local/bin/kube-proxy"]
"""


@dataclass
class _BuildahJobs:
    """The buildah-made images: one storage, the python stand-in imported once."""

    work: Path
    progress: build.Progress
    python: BuiltImage
    _buildah: Buildah | None = None

    def buildah(self) -> Buildah:
        if self._buildah is None:
            self._buildah = Buildah(images_dir() / "buildah")
            self.progress.step(
                f"importing the python stand-in into buildah ({self._buildah.driver} storage)"
            )
            self._buildah.import_archive(self.python.archive, PYTHON_REF)
        return self._buildah

    def close(self) -> None:
        if self._buildah is not None:
            self._buildah.remove_all()

    def _mounts(self) -> list[tuple[Path, str]]:
        if HOST_CA_BUNDLE.is_file():
            return [(HOST_CA_BUNDLE, str(HOST_CA_BUNDLE))]
        return []

    def kube_proxy_py(self, out: Path) -> None:
        b = self.buildah()
        b.build(
            REPO_ROOT,
            REPO_ROOT / "Dockerfile",
            KUBE_PROXY_PY_REF,
            log=images_dir() / "logs" / "kube-proxy-py.log",
            progress=lambda line: self.progress.step(f"  {line[:110]}"),
            mounts=self._mounts(),
            labels={STAND_IN_LABEL: ON_STAND_IN.format(what="the repository's Dockerfile")},
        )
        self.progress.step("exporting kube-proxy-py from buildah")
        b.export(KUBE_PROXY_PY_REF, out)

    def kube_proxy(self, binary: Path, out: Path) -> None:
        b = self.buildah()
        with tempfile.TemporaryDirectory(dir=self.work) as tmp:
            context = Path(tmp)
            shutil.copy2(binary, context / "kube-proxy")
            (context / "Containerfile").write_text(KUBE_PROXY_CONTAINERFILE)
            b.build(
                context,
                context / "Containerfile",
                KUBE_PROXY_REF,
                log=images_dir() / "logs" / "kube-proxy.log",
                progress=lambda line: self.progress.step(f"  {line[:110]}"),
                mounts=self._mounts(),
            )
        self.progress.step("exporting kube-proxy from buildah")
        b.export(KUBE_PROXY_REF, out)


# --------------------------------------------------------------------------- entry points


def build_images(
    out: Out | None = None, *, force: bool = False, with_buildah: bool = True
) -> ImageSet:
    """Build (or reuse from ``cache_root()/images``) every image the lab provides.

    A cached archive is reused while its inputs are unchanged: the Debian package files
    and this host's curl for the busybox family, pause.c and gcc for pause, the recipe
    for the python stand-in (``force`` rebuilds it with today's Debian packages), and for
    kube-proxy-py the Dockerfile, pyproject.toml, README.md and ``proxy/``.
    ``with_buildah=False`` leaves out the two buildah-made images.
    """
    progress = build.Progress(out)
    directory = images_dir()
    directory.mkdir(parents=True, exist_ok=True)
    with one_at_a_time(directory / ".build.lock", progress, "another image build"):
        return _build_images(directory, progress, force, with_buildah)


def _build_images(
    directory: Path, progress: build.Progress, force: bool, with_buildah: bool
) -> ImageSet:
    work = Path(tempfile.mkdtemp(prefix="work-", dir=directory))
    skipped: list[tuple[str, str]] = []
    try:
        b = _Builder(work, progress, force)
        built = [
            b.pause(),
            b.busybox(),
            b.curl("docker.io/curlimages/curl:latest", "curlimages-curl"),
            b.curl("docker.io/radial/busyboxplus:curl", "busyboxplus-curl"),
            b.kiamol_sleep(),
            b.numbers_api(),
            b.numbers_web(),
        ]
        python = b.python()
        built += [python, b.workload(python), b.nginx(python)]
        built += _addon_images(b, skipped)
        if with_buildah:
            built += _buildah_images(work, progress, python, force, skipped)
        else:
            skipped += [(KUBE_PROXY_PY_REF, "buildah images not requested")]
            skipped += [(KUBE_PROXY_REF, "buildah images not requested")]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ImageSet(tuple(built), tuple(skipped))


def _addon_images(b: _Builder, skipped: list[tuple[str, str]]) -> list[BuiltImage]:
    paths = addonbuild.layout()
    refs = (COREDNS_REF, METALLB_CONTROLLER_REF, METALLB_SPEAKER_REF)
    if addonbuild.missing(paths):
        skipped.extend((ref, "the add-ons are not built yet (the lab builds them first)")
                       for ref in refs)  # fmt: skip
        return []
    return [
        b.addon(
            COREDNS_REF,
            paths.bin_dir / "coredns",
            user="nonroot:nonroot",
            xattrs=(oci.file_capabilities(CAP_NET_BIND_SERVICE),),
            exposed_ports=("53/tcp", "53/udp"),
        ),
        b.addon(METALLB_CONTROLLER_REF, paths.bin_dir / "controller"),
        b.addon(METALLB_SPEAKER_REF, paths.bin_dir / "speaker"),
    ]


def _buildah_images(
    work: Path,
    progress: build.Progress,
    python: BuiltImage,
    force: bool,
    skipped: list[tuple[str, str]],
) -> list[BuiltImage]:
    jobs = _BuildahJobs(work, progress, python)
    out: list[BuiltImage] = []
    try:
        if (REPO_ROOT / "Dockerfile").is_file():
            key = cache_key(RECIPE, python.digest, _repo_inputs_digest())
            out.append(
                cached(
                    "kube-proxy-py",
                    (KUBE_PROXY_PY_REF,),
                    key,
                    jobs.kube_proxy_py,
                    progress,
                    "kube-proxy-py:0.1.0 (buildah bud of the Dockerfile)",
                    force=force,
                )
            )
        else:
            skipped.append((KUBE_PROXY_PY_REF, f"no Dockerfile in {REPO_ROOT} (not a checkout)"))
        binary = build.bin_dir() / "kube-proxy"
        if binary.is_file():
            key = cache_key(
                RECIPE, python.digest, rootfs.file_digest(binary), KUBE_PROXY_CONTAINERFILE
            )
            out.append(
                cached(
                    "kube-proxy",
                    (KUBE_PROXY_REF,),
                    key,
                    lambda path: jobs.kube_proxy(binary, path),
                    progress,
                    f"kube-proxy {build.K8S_VERSION} (buildah)",
                    force=force,
                )
            )
        else:
            skipped.append((KUBE_PROXY_REF, f"{binary} is not built yet (the lab builds it first)"))
    finally:
        jobs.close()
    return out


def describe_available() -> Iterator[str]:
    """One line per image: its references and what it stands in for (for the README)."""
    for item in AVAILABLE:
        yield f"{', '.join(item.refs)} — {item.stands_in_for}; {item.made_of}"
