"""``lab shell``: a command in a node's, the client's, the control plane's, the LAN's
or a Pod's network namespace."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from proxy.host import netns as hostns
from proxy.lab.clients import api_get
from proxy.lab.commands.preconditions import require_root, running_state
from proxy.lab.errors import LabError
from proxy.lab.state import LabState
from proxy.lab.topology import CLIENT


def _started(pid: int) -> int:
    """When a process started (clock ticks after boot; a process gone sorts last)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 1 << 62
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    return int(fields[19])  # field 22, starttime


def _pod_namespace(state: LabState, target: str) -> str:
    """The network namespace of a Pod (``name`` or ``namespace/name``) as a path,
    ``/proc/<pid>/ns/net`` of one of its processes (found in the pod's cgroup, which the
    kubelet names ``pod<uid>``)."""
    from proxy.lab import cgroups

    namespace, _, name = target.rpartition("/")
    namespace = namespace or "default"
    try:
        pod = api_get(state, f"/api/v1/namespaces/{namespace}/pods/{name}")
    except LabError as exc:
        raise LabError(
            f"`{target}` is no node, `client`, `control-plane`, `lan` nor a pod ({exc}); "
            f"nodes: {', '.join(n.name for n in state.nodes)}"
        ) from exc
    spec = pod.get("spec") or {}
    if spec.get("hostNetwork"):
        return f"{state.lab_id}-{spec.get('nodeName')}"
    node = spec.get("nodeName")
    uid = pod["metadata"]["uid"]
    if not node or not (pod.get("status") or {}).get("podIP"):
        raise LabError(
            f"pod {namespace}/{name} is not running yet "
            f"(phase {(pod.get('status') or {}).get('phase')})"
        )
    # not ours, nor the node's: a process kubectl exec is starting in the pod's cgroup
    # may not have joined the pod's namespace yet (runc, still in the node's)
    others = {os.stat(f"/proc/{os.getpid()}/ns/net").st_ino}
    with contextlib.suppress(OSError):
        others.add(os.stat(hostns.netns_path(f"{state.lab_id}-{node}")).st_ino)
    # the oldest process first: the pod's sandbox (pause) lives as long as the pod, while
    # an exec'd one may exit before the path is used (and pids wrap: pid_max is often
    # 32768, so the lowest pid is not the oldest process)
    pids = cgroups.pods_pids(cgroups.node_path(state.lab_id, node), uid)
    for pid in sorted(pids, key=_started):
        path = f"/proc/{pid}/ns/net"
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino not in others:
                return path
    raise LabError(f"pod {namespace}/{name} has no running process on {node}")


def shell_target(state: LabState, target: str) -> str:
    """The namespace for a node name, ``client``, ``control-plane``, ``lan`` or a pod."""
    from proxy.lab.cluster import CONTROL_PLANE

    if target in {n.name for n in state.nodes} | {CLIENT, CONTROL_PLANE, "lan"}:
        return f"{state.lab_id}-{target}"
    return _pod_namespace(state, target)


def shell(state_dir: Path, target: str, command: Sequence[str]) -> int:
    require_root("shell")
    state = running_state(state_dir)
    ns = shell_target(state, target)
    cmd = list(command)
    if cmd[:1] == ["--"]:
        cmd = cmd[1:]
    if not cmd:
        cmd = [os.environ.get("SHELL") or shutil.which("bash") or "/bin/sh"]
        print(f"{ns}: a shell in {target}'s network namespace (exit to leave)", file=sys.stderr)
    env = dict(os.environ)
    env["KPP_LAB_NETNS"] = ns
    argv = hostns.exec_argv(ns, cmd)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(argv[0], argv, env)
