"""The cached stand-in images do what their labels say, run as a container would run them.

Each image is unpacked and its command run as PID 1 of fresh PID, UTS and mount
namespaces, chroot'ed into the image, inside a throwaway network namespace (only its
loopback, plus a veth to a second throwaway namespace for numbers-web → numbers-api).
Skipped until ``lab build`` has filled the image cache; nothing here builds images.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import pytest

from proxy.host.sockets import NetnsHTTPConnection
from proxy.lab import imagecache, oci
from tests.conftest import throwaway_netns

pytestmark = pytest.mark.netns

STOP_GRACE = 20.0
"""A stand-in must exit on SIGTERM (a PID 1 without a handler ignores it and would wait
out kubelet's grace period); this is only how long we wait for that."""


def _archive(slug: str) -> Path:
    path = imagecache.images_dir() / f"{slug}.tar"
    if not path.is_file():
        pytest.skip(f"{path} is not built yet: run lab build (proxy.lab.images.build_images)")
    return path


def unpack(slug: str, dest: Path) -> dict[str, object]:
    """Lay the image's layers out in ``dest``; return its config's ``config`` part."""
    dest.mkdir(parents=True)
    with oci.OciArchive(_archive(slug)) as archive:
        view = archive.images()[0].view
        config = oci.image_config(archive, view)
        for layer in view.layers:
            with archive.open_blob(layer.digest) as blob:
                proc = subprocess.Popen(
                    ["tar", "-xzf", "-", "-C", str(dest), "--numeric-owner"],
                    stdin=subprocess.PIPE,
                )
                assert proc.stdin is not None
                while chunk := blob.read(1 << 20):
                    proc.stdin.write(chunk)
                proc.stdin.close()
                assert proc.wait() == 0
    inner = config["config"]
    assert isinstance(inner, dict)
    return inner


_LAUNCH = """
root=$1; host=$2; user=$3; shift 3
if [ -d "$root/proc" ]; then mount -t proc proc "$root/proc"; fi
if [ -d "$root/dev" ]; then mount --bind /dev "$root/dev"; fi
hostname "$host"
exec chroot --userspec="$user" "$root" "$@"
"""


class Container:
    """``argv`` as PID 1 chroot'ed into ``root`` inside network namespace ``netns``."""

    def __init__(
        self,
        netns: str,
        root: Path,
        hostname: str,
        argv: Sequence[str],
        env: Sequence[str],
        user: str = "0:0",
    ) -> None:
        environment = dict(item.split("=", 1) for item in env)
        self.proc = subprocess.Popen(
            [
                "ip", "netns", "exec", netns,
                "unshare", "--uts", "--pid", "--fork", "--mount", "--kill-child",
                "sh", "-c", _LAUNCH, "launch", str(root), hostname, user, *argv,
            ],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    def pid1(self) -> int:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
            text = children.read_text().split() if children.exists() else []
            if text:
                return int(text[0])
            time.sleep(0.05)
        raise AssertionError("the container's PID 1 did not start")

    def stop(self) -> bool:
        """SIGTERM to PID 1 (as kubelet does); True when the container exited on it."""
        os.kill(self.pid1(), 15)
        try:
            self.proc.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            self.kill()
            return False
        return True

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


class Start(Protocol):
    def __call__(
        self,
        slug: str,
        argv: Sequence[str] | None = None,
        *,
        ns: str | None = None,
        env: Sequence[str] = (),
    ) -> Container: ...


@pytest.fixture
def run(netns: str, tmp_path: Path) -> Iterator[Start]:
    """Start a cached image's default command (or ``argv`` as its Cmd), as a pod would."""
    started: list[Container] = []

    def start(
        slug: str,
        argv: Sequence[str] | None = None,
        *,
        ns: str | None = None,
        env: Sequence[str] = (),
    ) -> Container:
        root = tmp_path / f"{slug}-{uuid.uuid4().hex[:6]}"
        config = unpack(slug, root)
        entry, cmd = config.get("Entrypoint") or [], config.get("Cmd") or []
        image_env, user = config.get("Env") or [], config.get("User") or "0:0"
        assert isinstance(entry, list) and isinstance(cmd, list) and isinstance(image_env, list)
        command = [str(a) for a in [*entry, *(cmd if argv is None else argv)]]
        container = Container(
            ns or netns,
            root,
            f"{slug}-pod",
            command,
            [*(str(e) for e in image_env), *env],
            str(user),
        )
        started.append(container)
        return container

    yield start
    for container in started:
        container.kill()


def _get(netns: str, host: str, path: str, port: int = 80) -> tuple[int, str]:
    deadline = time.monotonic() + 10
    while True:
        conn = NetnsHTTPConnection(netns, host, port, timeout=5)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read(65536).decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
        finally:
            conn.close()


def test_nginx_answers_its_pod_name_keeps_alive_and_stops_on_sigterm(
    netns: str, run: Start
) -> None:
    container = run("nginx")
    status, body = _get(netns, "127.0.0.1", "/")
    assert status == 200 and body.startswith("nginx-pod 127.0.0.1:"), body
    conn = NetnsHTTPConnection(netns, "127.0.0.1", 80, timeout=5)
    try:
        peers = set()
        for _ in range(3):  # one connection, three requests: HTTP/1.1 keep-alive
            conn.request("GET", "/")
            response = conn.getresponse()
            peers.add(response.read().decode().split()[1])
            assert not response.will_close
        assert len(peers) == 1
    finally:
        conn.close()
    assert container.stop()


def test_numbers_api_answers_random_numbers(netns: str, run: Start) -> None:
    container = run("kiamol-numbers-api")
    numbers = {int(_get(netns, "127.0.0.1", "/rng")[1]) for _ in range(8)}
    assert all(1 <= n <= 100 for n in numbers) and len(numbers) > 1
    assert _get(netns, "127.0.0.1", "/nothing")[0] == 404
    assert container.stop()


@pytest.fixture
def api_netns() -> Iterator[str]:
    """A second throwaway namespace joined to the test's one by a veth (192.0.2.0/24)."""
    with throwaway_netns("api") as name:
        yield name


def test_numbers_web_shows_a_number_from_the_api(netns: str, api_netns: str, run: Start) -> None:
    peer = f"v{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["ip", "-n", netns, "link", "add", "eth0", "type", "veth", "peer", "name", peer,
         "netns", api_netns],
        check=True,
    )  # fmt: skip
    for ns, dev, addr in ((netns, "eth0", "192.0.2.1/24"), (api_netns, peer, "192.0.2.2/24")):
        subprocess.run(["ip", "-n", ns, "addr", "add", addr, "dev", dev], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
    run("kiamol-numbers-api", ns=api_netns)
    web = run("kiamol-numbers-web", env=["RngApi__Url=http://192.0.2.2/rng"])
    assert _get(api_netns, "127.0.0.1", "/rng")[0] == 200

    status, page = _get(netns, "127.0.0.1", "/")

    assert status == 200
    assert "Here it is: <b>" in page, page
    assert "Served by pod: kiamol-numbers-web-pod" in page
    assert web.stop()


def test_sleep_has_its_tools_and_stops_on_sigterm(run: Start) -> None:
    container = run("kiamol-sleep")
    pid = container.pid1()
    time.sleep(0.3)
    root = Path(f"/proc/{pid}/root")
    for tool in ("ping", "nslookup", "wget", "env", "sh"):
        assert (root / "bin" / tool).exists(), tool
    assert container.stop()


def test_pause_runs_as_65535_and_stops_on_sigterm(run: Start) -> None:
    container = run("pause")
    pid = container.pid1()
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}/comm").read_text().strip() != "pause":
        assert time.monotonic() < deadline, "pause did not start"
        time.sleep(0.05)
    uid_line = next(
        line
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("Uid:")
    )
    assert uid_line.split()[1:] == ["65535"] * 4
    assert container.stop()


def _output(container: Container) -> str:
    out, _ = container.proc.communicate(timeout=60)
    return out.decode(errors="replace")


def test_curl_image_runs_curl_or_the_given_command(run: Start) -> None:
    assert _output(run("curlimages-curl", ["--version"])).startswith("curl ")
    assert _output(run("curlimages-curl", ["sh", "-c", "echo in-sh"])) == "in-sh\n"
    text = _output(run("busyboxplus-curl", ["which", "nslookup", "curl"]))
    assert text.split() == ["/bin/nslookup", "/usr/bin/curl"]


def test_python_stand_in_installs_like_the_official_image(run: Start) -> None:
    script = (
        "import json, os, ssl, sys, venv; print(json.dumps({'v': sys.version.split()[0], "
        "'em': os.path.exists('/usr/lib/python3.11/EXTERNALLY-MANAGED'), "
        "'env': os.environ.get('PYTHON_VERSION')}))"
    )
    out = _output(run("python", ["python", "-c", script]))
    facts = json.loads(out)
    assert facts["v"].startswith("3.11.") and facts["v"] == facts["env"]
    assert facts["em"] is False
    assert "pip 2" in _output(run("python", ["pip", "--version"]))


def test_workload_image_serves_http(netns: str, run: Start) -> None:
    container = run("workload", ["--name", "w1", "--http", "80"])
    status, body = _get(netns, "127.0.0.1", "/")
    assert status == 200 and body.startswith("w1 127.0.0.1:")
    assert container.stop()
