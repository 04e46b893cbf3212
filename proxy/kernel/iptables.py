"""iptables apply layer: runs ``iptables-save``/``iptables-restore`` transactions.

We drive ``iptables-restore`` (as upstream kube-proxy does) rather than python-iptables:
that library speaks libiptc, sees only the legacy tables, and on an iptables-nft host its
rules would land in tables the rest of the system does not use.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from proxy.backends.iptables import (
    ExistingIptables,
    IptablesRuleset,
    cleanup_text,
    parse_save,
    restore_text,
)
from proxy.kernel.runner import KernelError, Runner
from proxy.model import IPFamily

log = logging.getLogger(__name__)

VARIANT_ENV = "KUBE_PROXY_PY_IPTABLES"
LOCK_WAIT_SECONDS = "5"
_HINT_CHAINS = ("KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY", "KUBE-SERVICES")


def _tool(family: IPFamily, variant: str, verb: str) -> str:
    base = "iptables" if family is IPFamily.V4 else "ip6tables"
    return f"{base}-{variant}-{verb}"


def detect_variant(runner: Runner, family: IPFamily = IPFamily.V4) -> str:
    """Which iptables backend this host uses: ``nft`` or ``legacy``.

    Like upstream's iptables-wrapper: a hint chain (left by kubelet or an earlier
    kube-proxy) in one backend wins; otherwise the backend holding more rules; nft when
    both are empty. ``KUBE_PROXY_PY_IPTABLES=nft|legacy`` overrides.
    """
    forced = os.environ.get(VARIANT_ENV)
    if forced in ("nft", "legacy"):
        return forced
    counts: dict[str, int] = {}
    hints: dict[str, bool] = {}
    for variant in ("nft", "legacy"):
        tool = _tool(family, variant, "save")
        if not Runner.available(tool):
            counts[variant], hints[variant] = -1, False
            continue
        out = runner.run([tool], check=False).stdout
        counts[variant] = sum(1 for line in out.splitlines() if line.startswith("-A "))
        hints[variant] = any(f":{h} " in out for h in _HINT_CHAINS)
    if hints["legacy"] and not hints["nft"]:
        return "legacy"
    if hints["nft"]:
        return "nft"
    return "legacy" if counts["legacy"] > counts["nft"] else "nft"


@dataclass
class IptablesKernel:
    """Programs one IP family's iptables rules in one network namespace."""

    runner: Runner
    family: IPFamily = IPFamily.V4
    variant: str = ""

    def __post_init__(self) -> None:
        if not self.variant:
            self.variant = detect_variant(self.runner, self.family)

    def save(self) -> ExistingIptables:
        text = ""
        for table in ("filter", "nat"):
            proc = self.runner.run([_tool(self.family, self.variant, "save"), "-t", table])
            text += proc.stdout
        return parse_save(text)

    def restore(self, text: str, *, test: bool = False) -> None:
        cmd = [_tool(self.family, self.variant, "restore"), "--noflush"]
        if self.variant == "legacy":
            cmd += ["-w", LOCK_WAIT_SECONDS]
        if test:
            cmd.append("--test")
        self.runner.run(cmd, stdin=text)

    def sync(self, ruleset: IptablesRuleset, existing: ExistingIptables | None = None) -> str:
        """Full sync: one restore transaction replacing exactly our chains. Returns it."""
        if ruleset.route_localnet:
            self.runner.write_sysctl("net.ipv4.conf.all.route_localnet", "1")
        text = restore_text(ruleset, existing if existing is not None else self.save())
        try:
            self.restore(text)
        except KernelError as exc:
            line = exc.failing_line()
            log.error(
                "iptables-restore refused the transaction",
                extra={"error": exc.stderr.strip(), "line": line},
            )
            raise
        return text

    def cleanup(self) -> bool:
        """Remove our chains and jumps; True if anything was removed."""
        text = cleanup_text(self.save())
        if not text:
            return False
        self.restore(text)
        return True
