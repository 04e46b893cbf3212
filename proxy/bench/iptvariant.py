"""Which iptables backend a benchmark runs with (``--iptables nft|legacy``).

Both agents must use the same one, and the printed command must say which:

- kube-proxy-py picks it from ``KUBE_PROXY_PY_IPTABLES`` (its detection's override);
- upstream kube-proxy runs plain ``iptables``, ``iptables-save`` and
  ``iptables-restore`` from its PATH (its image's wrapper picks the backend), so a
  directory of links named like that, to the chosen backend's tools, goes first on PATH.

The default is ``legacy``: on this project's bench machine (kernel 6.18, iptables
1.8.9) ``iptables-nft-restore`` of 10,000 Services ran for over 14 minutes, while legacy
loads them in seconds; the nft backend stays measurable with ``--iptables nft``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from proxy.iptables import kernel
from proxy.iptables.kernel import VARIANT_ENV

VARIANTS = tuple(sorted(kernel.VARIANTS))  # ("legacy", "nft")
DEFAULT = "legacy"
_TOOLS = tuple(
    f"{base}{verb}" for base in ("iptables", "ip6tables") for verb in ("", "-save", "-restore")
)


def link_tools(variant: str, directory: Path) -> None:
    """``directory/iptables`` → ``iptables-<variant>``, and so on for every tool."""
    for name in _TOOLS:
        tool = name.replace("tables", f"tables-{variant}", 1)  # e.g. iptables-legacy-save
        target = shutil.which(tool)
        if target is None:
            raise FileNotFoundError(
                f"--iptables {variant}: {tool} is not installed (Debian: apt install iptables)"
            )
        (directory / name).symlink_to(target)


@contextmanager
def using(variant: str) -> Iterator[None]:
    """For this process and every child started meanwhile, the iptables tools and
    kube-proxy-py's backend are ``variant``'s."""
    if variant not in VARIANTS:
        raise ValueError(f"--iptables {variant!r}: use one of {', '.join(VARIANTS)}")
    saved = {k: os.environ.get(k) for k in (VARIANT_ENV, "PATH")}
    with tempfile.TemporaryDirectory(prefix="kpp-iptables-") as tmp:
        link_tools(variant, Path(tmp))
        os.environ[VARIANT_ENV] = variant
        os.environ["PATH"] = os.pathsep.join(filter(None, (tmp, saved["PATH"])))
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def option(mode: str, variant: str) -> str:
    """The words that reproduce ``variant`` on a bench command line (none when only
    nftables runs)."""
    return "" if mode == "nftables" else f" --iptables {variant}"


def recorded(mode: str, variant: str) -> str:
    """What a record of ``mode`` says of the backend: ``variant`` in iptables mode, else
    nothing."""
    return variant if mode == "iptables" else ""


def label(mode: str, variant: str | None) -> str:
    """``iptables-legacy`` / ``iptables-nft`` for an iptables record that says which,
    else the mode."""
    return f"iptables-{variant}" if mode == "iptables" and variant else mode
