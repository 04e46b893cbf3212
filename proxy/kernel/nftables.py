"""nftables apply layer: runs ``nft -f`` transactions on our table only."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from proxy.backends.nftables import (
    TABLE,
    BaseHook,
    ExistingNft,
    NftRuleset,
    cleanup_text,
    full_sync_lines,
    full_sync_text,
)
from proxy.kernel.runner import KernelError, Runner
from proxy.model import IPFamily

log = logging.getLogger(__name__)


def _nft_family(family: IPFamily) -> str:
    return "ip" if family is IPFamily.V4 else "ip6"


def _log_refused(exc: KernelError) -> None:
    log.error("nft refused the transaction", extra={"error": exc.stderr.strip()[:2000]})


@dataclass
class NftKernel:
    """Programs one IP family's ``kube-proxy`` table in one network namespace."""

    runner: Runner
    family: IPFamily = IPFamily.V4

    def _list(self, what: str) -> list[dict[str, Any]]:
        proc = self.runner.run(["nft", "-t", "-j", "list", what, _nft_family(self.family)])
        data = json.loads(proc.stdout or "{}")
        items: list[dict[str, Any]] = []
        for entry in data.get("nftables", []):
            for kind, obj in entry.items():
                if kind != "metainfo" and obj.get("table") == TABLE:
                    items.append(obj)
        return items

    def table_exists(self) -> bool:
        proc = self.runner.run(["nft", "list", "tables", _nft_family(self.family)])
        return any(line.split()[-1] == TABLE for line in proc.stdout.splitlines() if line)

    def existing(self) -> ExistingNft:
        if not self.table_exists():
            return ExistingNft()
        listed = self._list("chains")
        chains = frozenset(c["name"] for c in listed)
        base = {
            c["name"]: BaseHook(c["type"], c["hook"], int(c["prio"])) for c in listed if "hook" in c
        }
        sets = {s["name"]: s.get("timeout") for s in self._list("sets")}
        maps = frozenset(m["name"] for m in self._list("maps"))
        return ExistingNft(True, chains, base, sets, maps)

    def apply(self, script: str, *, check_only: bool = False) -> None:
        cmd = ["nft", "-c", "-f", "-"] if check_only else ["nft", "-f", "-"]
        try:
            self.runner.run(cmd, stdin=script)
        except KernelError as exc:
            _log_refused(exc)
            raise

    def sync(self, ruleset: NftRuleset, existing: ExistingNft | None = None) -> None:
        """Full sync in one transaction, its script streamed to ``nft -f -``."""
        have = existing if existing is not None else self.existing()
        try:
            self.runner.run_lines(["nft", "-f", "-"], full_sync_lines(ruleset, have))
        except KernelError as exc:
            exc.stdin = full_sync_text(ruleset, have)  # for failing_line()
            _log_refused(exc)
            raise

    def cleanup(self) -> bool:
        if not self.table_exists():
            return False
        self.apply(cleanup_text(self.family))
        return True
