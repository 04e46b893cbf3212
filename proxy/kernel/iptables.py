"""iptables apply layer: runs ``iptables-save``/``iptables-restore`` transactions.

We drive ``iptables-restore`` (as upstream kube-proxy does) rather than python-iptables:
that library speaks libiptc, sees only the legacy tables, and on an iptables-nft host its
rules would land in tables the rest of the system does not use.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

from proxy.backends.iptables import (
    ExistingIptables,
    IptablesRuleset,
    cleanup_text,
    parse_save,
    restore_pieces,
)
from proxy.kernel.runner import KernelError, Runner
from proxy.model import IPFamily

log = logging.getLogger(__name__)

VARIANT_ENV = "KUBE_PROXY_PY_IPTABLES"
CANARY_TABLE, CANARY_CHAIN = "mangle", "KUBE-PROXY-CANARY"
"""Legacy iptables has no generation counter to tell that someone else changed the
tables. As upstream does, every full sync declares an empty canary chain in the small
mangle table; when it is gone, someone flushed the tables and the next sync is full."""
_CANARY_BLOCK = f"*{CANARY_TABLE}\n:{CANARY_CHAIN} - [0:0]\nCOMMIT\n"
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
        """What the filter and nat tables hold: chain names and the built-in chains'
        rules (all a full sync or a cleanup needs). Both tables are saved side by side."""
        tool = _tool(self.family, self.variant, "save")
        started = [self.runner.start([tool, "-t", table]) for table in ("filter", "nat")]
        dumps = [s.output() for s in started]  # waits for each (and closes its files)
        tables = [parse_save(dump, every_rule=False) for dump in dumps]
        return ExistingIptables(
            chains={t: c for e in tables for t, c in e.chains.items()},
            builtin_rules={k: v for e in tables for k, v in e.builtin_rules.items()},
        )

    def _restore_argv(self, test: bool = False) -> list[str]:
        cmd = [_tool(self.family, self.variant, "restore"), "--noflush"]
        if self.variant == "legacy":
            cmd += ["-w", LOCK_WAIT_SECONDS]
        return [*cmd, "--test"] if test else cmd

    def restore(self, text: str, *, test: bool = False) -> None:
        self.runner.run(self._restore_argv(test), stdin=text)

    def full_sync_pieces(
        self, ruleset: IptablesRuleset, existing: ExistingIptables
    ) -> Iterator[str]:
        """What a full sync writes, given what the tables hold (the canary too)."""
        yield from restore_pieces(ruleset, existing)
        if self.variant == "legacy":
            yield _CANARY_BLOCK

    def sync(self, ruleset: IptablesRuleset, existing: ExistingIptables | None = None) -> None:
        """Full sync: one restore transaction replacing exactly our chains.

        The input is built piece by piece while the tool parses what it has (at 10,000
        Services it is ~50 MB, never held whole). Without ``existing``, the filter and nat
        tables are saved first, side by side."""
        if ruleset.route_localnet:
            self.runner.write_sysctl("net.ipv4.conf.all.route_localnet", "1")
        if existing is None:
            existing = self.save()
        try:
            self.runner.feed(self._restore_argv(), self.full_sync_pieces(ruleset, existing))
        except KernelError as exc:
            # rebuilt (the tables are as before: a refused transaction changes nothing)
            exc.stdin = "".join(self.full_sync_pieces(ruleset, existing))
            log.error(
                "iptables-restore refused the transaction",
                extra={"error": exc.stderr.strip(), "line": exc.failing_line()},
            )
            raise

    def canary_present(self) -> bool:
        """Whether the canary chain a legacy full sync declares still stands (one listing
        of the mangle table, which holds a handful of rules at most)."""
        tool = "iptables" if self.family is IPFamily.V4 else "ip6tables"
        argv = [f"{tool}-{self.variant}", "-w", LOCK_WAIT_SECONDS, "-t", CANARY_TABLE, "-S"]
        listing = self.runner.run([*argv, CANARY_CHAIN], check=False)
        return listing.returncode == 0

    def cleanup(self) -> bool:
        """Remove our chains and jumps (and the canary); True if anything was removed."""
        text = cleanup_text(self.save())
        if self.variant == "legacy" and self.canary_present():
            text += f"*{CANARY_TABLE}\n-X {CANARY_CHAIN}\nCOMMIT\n"
        if not text:
            return False
        self.restore(text)
        return True
