"""``$(VAR)`` references in container arguments, expanded the way the kubelet does."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def expand_env_references(args: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """Expand ``$(VAR)`` in container arguments the way the kubelet does.

    ``$(VAR)`` becomes the variable's value when it is in env and stays as written when
    not; ``$$`` is a literal ``$`` (so ``$$(VAR)`` gives ``$(VAR)``).
    """
    return [_expand_one(arg, env) for arg in args]


def _expand_one(arg: str, env: Mapping[str, str]) -> str:
    out: list[str] = []
    i = 0
    while i < len(arg):
        if arg.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        end = arg.find(")", i + 2) if arg.startswith("$(", i) else -1
        if end != -1 and arg[i + 2 : end] in env:
            out.append(env[arg[i + 2 : end]])
            i = end + 1
            continue
        out.append(arg[i])
        i += 1
    return "".join(out)
