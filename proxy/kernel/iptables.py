"""iptables apply layer: runs ``iptables-save``/``iptables-restore`` transactions.

We drive ``iptables-restore`` (as upstream kube-proxy does) rather than python-iptables:
that library speaks libiptc, sees only the legacy tables, and on an iptables-nft host its
rules would land in tables the rest of the system does not use.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from proxy.backends.iptables import (
    ExistingIptables,
    IptablesRuleset,
    cleanup_text,
    parse_save,
    restore_pieces,
)
from proxy.kernel.runner import KernelError, Runner, Started
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


class PendingSave:
    """A save of the tables, running: calling it waits for it, once, and gives what the
    tables hold (chain names and the built-in chains' rules, all a full sync or a cleanup
    needs), or raises the save's :class:`KernelError` (each time)."""

    def __init__(self, started: list[Started]) -> None:
        self._started = started
        self._result: ExistingIptables | None = None
        self.error: KernelError | None = None

    def __call__(self) -> ExistingIptables:
        if self._result is None and self.error is None:
            dumps: list[bytes] = []
            for s in self._started:  # each is waited for, even after another failed
                try:
                    dumps.append(s.output())
                except KernelError as exc:
                    self.error = self.error or exc
            if self.error is None:
                tables = [parse_save(dump, every_rule=False) for dump in dumps]
                self._result = ExistingIptables(
                    chains={t: c for e in tables for t, c in e.chains.items()},
                    builtin_rules={k: v for e in tables for k, v in e.builtin_rules.items()},
                )
        if self.error is not None:
            raise self.error
        assert self._result is not None
        return self._result

    def settle(self) -> None:
        """Wait for the save if nobody did (its failure is the caller's to have seen)."""
        with contextlib.suppress(KernelError):
            self()


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
        rules (all a full sync or a cleanup needs)."""
        return self.start_save()()

    def start_save(self) -> PendingSave:
        """Start saving the filter and nat tables, side by side (see :class:`PendingSave`)."""
        tool = _tool(self.family, self.variant, "save")
        return PendingSave([self.runner.start([tool, "-t", table]) for table in ("filter", "nat")])

    def _restore_argv(self, test: bool = False) -> list[str]:
        cmd = [_tool(self.family, self.variant, "restore"), "--noflush"]
        if self.variant == "legacy":
            cmd += ["-w", LOCK_WAIT_SECONDS]
        return [*cmd, "--test"] if test else cmd

    def restore(self, text: str, *, test: bool = False) -> None:
        self.runner.run(self._restore_argv(test), stdin=text)

    def full_sync_pieces(
        self,
        ruleset: IptablesRuleset,
        existing: ExistingIptables | Callable[[], ExistingIptables],
    ) -> Iterator[str]:
        """What a full sync writes, given what the tables hold (the canary too)."""
        yield from restore_pieces(ruleset, existing)
        if self.variant == "legacy":
            yield _CANARY_BLOCK

    def sync(self, ruleset: IptablesRuleset, existing: ExistingIptables | None = None) -> None:
        """Full sync: one restore transaction replacing exactly our chains.

        The input is built piece by piece while the tool parses what it has (at 10,000
        Services it is ~50 MB, never held whole). Without ``existing``, the filter and nat
        tables are saved meanwhile, side by side: only the end of each table's input needs
        what they hold (the save reads the tables as they were: nothing is committed
        before the input's first ``COMMIT``, and the save takes no lock)."""
        if ruleset.route_localnet:
            self.runner.write_sysctl("net.ipv4.conf.all.route_localnet", "1")
        pending: PendingSave | None = None
        held: ExistingIptables | PendingSave
        if existing is None:
            pending = held = self.start_save()
        else:
            held = existing
        try:
            self.runner.feed(self._restore_argv(), self.full_sync_pieces(ruleset, held))
        except KernelError as exc:
            if pending is not None and exc is pending.error:
                raise  # the save failed: the input stopped before its first COMMIT
            # rebuilt (the tables are as before: a refused transaction changes nothing)
            with contextlib.suppress(KernelError):
                exc.stdin = "".join(self.full_sync_pieces(ruleset, held))
            log.error(
                "iptables-restore refused the transaction",
                extra={"error": exc.stderr.strip(), "line": exc.failing_line()},
            )
            raise
        finally:
            if pending is not None:
                pending.settle()  # waited for even when the input stopped before its end

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
