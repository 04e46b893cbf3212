"""Every learners'-note walkthrough (``kube-proxy-py lab seeds``) passes in both modes.

One lab serves both modes: the walkthroughs run in nftables mode, then kube-proxy-py's
ConfigMap is switched to iptables and its DaemonSet's pods replaced, as an operator would
do it, and they run again. ``--parallel`` runs the five at once (each works in its own
namespace), which keeps this module to a few minutes.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from proxy.lab import lab as labmod
from proxy.lab.cluster import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.netns]

CHECKS = {0: 9, 1: 11, 2: 9, 3: 15, 4: 5}
"""How many checks each walkthrough makes."""
PING = {
    "nftables": "[ok] ping is refused in nftables mode",
    "iptables": "[ok] ping is silent in iptables mode",
}
PROXY_PODS = ("-n", "kube-system", "-l", "k8s-app=kube-proxy-py")
DIFFERENCES = (
    # seed 000
    "- kubectl exec deploy/sleep-1 - ping -c 1 sleep-2: kubectl refuses it",
    "the ping fails because DNS may not work: DNS works",
    # seed 001
    "- kubectl run curl --image=radial/busyboxplus:curl -ti --rm: `-t` asks for a terminal",
    # seed 002
    "is redirected to db.example.com: nothing is redirected",
    # seed 003
    "- kubectl apply -f sleep/sleep1.yaml -f sleep/sleep2. yaml: the space",
    "- numbers/api-service.yaml: tab indentation:",
    "- numbers/api-service.yaml: `type: ClusterIp`:",
    "- minikube service numbers-web --url / minikube tunnel: not run",
    "- kubectl apply -f numbers-services/api-service-headless.yaml: this is the headless",
    "this Service is not headless: it has a ClusterIP",
)


def kpp(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def kubectl(state_dir: Path, *args: str) -> str:
    state = labmod.load_state(state_dir)
    assert state is not None
    done = subprocess.run(
        labmod.kubectl_argv(state, list(args)),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def lab_dir(k8s_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    state_dir = tmp_path_factory.mktemp("seeds-lab") / "state"
    up = kpp("lab", "up", "--nodes", "2", "--mode", "nftables", "--state-dir", str(state_dir))
    try:
        assert up.returncode == 0, up.stdout[-4000:] + up.stderr[-4000:]
        yield state_dir
    finally:
        down = kpp("lab", "down", "--state-dir", str(state_dir))
        assert down.returncode == 0, down.stdout + down.stderr


def proxy_pods(state_dir: Path) -> dict[str, bool]:
    """kube-proxy-py's pods: name -> Ready."""
    out = json.loads(kubectl(state_dir, "get", "pods", *PROXY_PODS, "-o", "json"))
    return {
        p["metadata"]["name"]: any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in p["status"].get("conditions", [])
        )
        for p in out["items"]
        if not p["metadata"].get("deletionTimestamp")
    }


def use_mode(state_dir: Path, mode: str) -> None:
    """kube-proxy-py's ConfigMap set to ``mode`` and its pods replaced (both at once:
    quicker than a rolling restart, one node at a time)."""
    cm = json.loads(
        kubectl(state_dir, "get", "configmap", "kube-proxy-py", "-n", "kube-system", "-o", "json")
    )
    config = yaml.safe_load(cm["data"]["config.conf"])
    if config.get("mode") == mode:
        return
    config["mode"] = mode
    patch = {"data": {"config.conf": yaml.safe_dump(config, sort_keys=False)}}
    kubectl(
        state_dir,
        "patch",
        "configmap",
        "kube-proxy-py",
        "-n",
        "kube-system",
        "--type=merge",
        "-p",
        json.dumps(patch),
    )
    old = set(proxy_pods(state_dir))
    kubectl(state_dir, "delete", "pods", *PROXY_PODS, "--wait=false")
    wait_for(
        lambda: (
            len(new := proxy_pods(state_dir)) == len(old)
            and not set(new) & old
            and all(new.values())
        ),
        180,
        interval=0.5,
        what=f"kube-proxy-py's pods in {mode} mode",
    )


def leftovers(state_dir: Path) -> list[str]:
    """What the walkthroughs made and did not delete: their namespaces, and the one
    Service the seed-002 note puts into namespace default."""
    names = kubectl(state_dir, "get", "namespaces", "-o", "name").split()
    left = [n for n in names if n.startswith("namespace/seed-") or n == "namespace/lab06"]
    return (
        left
        + kubectl(
            state_dir,
            "get",
            "services",
            "external-db",
            "-n",
            "default",
            "--ignore-not-found",
            "-o",
            "name",
        ).split()
    )


@pytest.mark.parametrize("mode", ["nftables", "iptables"])
def test_every_walkthrough_passes(lab_dir: Path, mode: str) -> None:
    use_mode(lab_dir, mode)
    proc = kpp("lab", "seeds", "--parallel", "--no-color", "--state-dir", str(lab_dir))
    out = proc.stdout
    assert proc.returncode == 0, out[-8000:] + proc.stderr[-2000:]
    assert f"({mode} mode, nodes node-1, node-2)" in out
    assert "UNEXPECTED" not in out and "\033[" not in out
    for number, checks in CHECKS.items():
        assert re.search(rf"^seed {number} \(\S+\): {checks} checks passed, 0 failed", out, re.M), (
            out[-8000:]
        )
    assert f"lab seeds: all {sum(CHECKS.values())} checks passed in 5 walkthrough(s)" in out
    assert PING[mode] in out
    differences = out.split("Where the notes and the lab differ", 1)[1]
    missing = [d for d in DIFFERENCES if d not in differences]
    assert missing == [], differences


def test_nothing_is_left_behind(lab_dir: Path) -> None:
    """Each walkthrough starts its namespace's deletion; once the namespace controller is
    through, nothing of theirs is left (checked once, after both modes' runs)."""
    wait_for(lambda: not leftovers(lab_dir), 120, interval=1.0, what="the cleanup")
    assert leftovers(lab_dir) == []
