"""nftables apply layer: transactions on our table only. Full syncs run ``nft -f``;
incremental ones go to nf_tables as netlink messages when every statement is covered
(:mod:`proxy.nftables.wire`: nft itself would first load every chain in the
namespace), else through ``nft -f`` too. What the table holds is read over netlink."""

from __future__ import annotations

import errno
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from proxy.kernel import nfnetlink as nl
from proxy.kernel.executor import Executor, KernelError
from proxy.model import IPFamily
from proxy.nftables import wire as nftwire
from proxy.nftables.diff import (
    cleanup_text,
    forget_traffic_text,
    full_sync_lines,
    full_sync_text,
)
from proxy.nftables.exprs import Unsupported
from proxy.nftables.model import BaseHook, ExistingNft, NftRuleset, NftTransaction
from proxy.nftables.names import TABLE, TRAFFIC_SETS
from proxy.traffic import Destination, nft_set_counts

log = logging.getLogger(__name__)


def _log_refused(exc: KernelError) -> None:
    """Log a refused transaction, and by what: ``nft`` or netlink (``nf_tables``)."""
    log.error(
        "the kernel refused the nftables transaction",
        extra={"via": exc.argv[0], "error": exc.stderr.strip()[:2000]},
    )


WIRE_LIMIT = 1 << 17
"""Largest batch sent over netlink directly (bytes): above it the change is large enough
for nft's fixed cost not to matter, and the socket's send buffer is no concern."""

HOOKS = {0: "prerouting", 1: "input", 2: "forward", 3: "output", 4: "postrouting"}
NFT_SET_ANONYMOUS = 0x1
NFT_SET_MAP = 0x8


@dataclass
class NftKernel:
    """Programs one IP family's ``kube-proxy`` table in one network namespace."""

    executor: Executor
    family: IPFamily = IPFamily.V4
    wire: bool = True
    """Send covered incremental transactions as netlink messages (else always nft)."""
    text_fallbacks: int = field(default=0, init=False)
    """Incremental transactions that went through ``nft -f`` because :mod:`wire` does not
    cover one of their statements (the agent counts them in a metric)."""
    _sock: nl.NfTablesSocket | None = field(default=None, init=False, repr=False)

    @property
    def _nfproto(self) -> int:
        return nl.NFPROTO_IPV4 if self.family is IPFamily.V4 else nl.NFPROTO_IPV6

    def _socket(self) -> nl.NfTablesSocket:
        if self._sock is None:
            self._sock = nl.NfTablesSocket(self.executor.netns)
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def table_exists(self) -> bool:
        try:
            self._socket().request(nl.NFT_MSG_GETTABLE, self._nfproto, nl.strz(1, TABLE))
        except nl.NetlinkError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True

    def existing(self) -> ExistingNft:
        """Names of our chains (and base chains' hooks) and sets/maps (and timeouts):
        two netlink dumps, a fraction of what listing them with nft costs."""
        try:
            return self._existing()
        except nl.NetlinkError:
            raise
        except OSError:
            self.close()  # a fresh socket next time
            raise

    def _existing(self) -> ExistingNft:
        if not self.table_exists():
            return ExistingNft()
        sock = self._socket()
        chains: list[str] = []
        base: dict[str, BaseHook] = {}
        for c in sock.dump(nl.NFT_MSG_GETCHAIN, self._nfproto, nl.strz(1, TABLE)):
            if nl.text(c.get(1, b"")) != TABLE:
                continue
            name = nl.text(c[3])
            chains.append(name)
            if 4 in c:  # NFTA_CHAIN_HOOK: NUM 1, PRIORITY 2; NFTA_CHAIN_TYPE 7
                hook = nl.attrs(c[4])
                prio = int.from_bytes(hook[2][:4], "big", signed=True)
                base[name] = BaseHook(nl.text(c[7]), HOOKS[nl.u32(hook[1])], prio)
        sets: dict[str, int | None] = {}
        maps: list[str] = []
        for st in sock.dump(nl.NFT_MSG_GETSET, self._nfproto, nl.strz(1, TABLE)):
            if nl.text(st.get(1, b"")) != TABLE:
                continue
            flags = nl.u32(st[3]) if 3 in st else 0
            if flags & NFT_SET_ANONYMOUS:
                continue
            name = nl.text(st[2])
            if flags & NFT_SET_MAP:
                maps.append(name)
            else:  # NFTA_SET_TIMEOUT, milliseconds
                sets[name] = nl.u64(st[11]) // 1000 if 11 in st else None
        return ExistingNft(True, frozenset(chains), base, sets, frozenset(maps))

    def apply_transaction(self, tx: NftTransaction) -> None:
        """One incremental transaction: over netlink when every statement is covered
        and it is small, else through ``nft -f``."""
        if not tx:
            return
        if self.wire:
            try:
                msgs = nftwire.messages(tx)
            except Unsupported as why:
                self.text_fallbacks += 1
                log.debug("transaction goes through nft", extra={"reason": str(why)})
            else:
                if sum(len(m.payload) for m in msgs) <= WIRE_LIMIT:
                    self._send(msgs, tx)
                    return
        self.apply(tx.text())

    def _send(self, msgs: list[nl.Message], tx: NftTransaction) -> None:
        try:
            self._socket().transact(msgs)
        except nl.NetlinkError as exc:
            err = KernelError(["nf_tables"], exc.errno or 1, str(exc), tx.text())
            _log_refused(err)
            raise err from exc
        except OSError:
            self.close()  # a fresh socket next time
            raise

    def apply(self, script: str, *, check_only: bool = False) -> None:
        cmd = ["nft", "-c", "-f", "-"] if check_only else ["nft", "-f", "-"]
        try:
            self.executor.run(cmd, stdin=script)
        except KernelError as exc:
            _log_refused(exc)
            raise

    def full_sync(self, ruleset: NftRuleset, existing: ExistingNft | None = None) -> None:
        """Full sync in one transaction, its script streamed to ``nft -f -``."""
        have = existing if existing is not None else self.existing()
        try:
            self.executor.run_lines(["nft", "-f", "-"], full_sync_lines(ruleset, have))
        except KernelError as exc:
            exc.stdin = full_sync_text(ruleset, have)  # for failing_line()
            _log_refused(exc)
            raise

    def traffic(self) -> dict[str, dict[Destination, tuple[int, int]]]:
        """The service traffic counters (``--metrics-service-counters``): verdict →
        service destination → (packets, bytes); empty when there are none."""
        fam = "ip" if self.family is IPFamily.V4 else "ip6"
        out: dict[str, dict[Destination, tuple[int, int]]] = {}
        for verdict, name in TRAFFIC_SETS.items():
            done = self.executor.run(["nft", "-j", "list", "set", fam, TABLE, name], check=False)
            if done.returncode != 0:
                continue  # no such set: counters are off, or the table is not there yet
            try:
                out[verdict] = nft_set_counts(json.loads(done.stdout))
            except ValueError:
                log.warning("unreadable traffic counters", extra={"set": name})
        return out

    def forget_traffic(self, stale: Mapping[str, Iterable[Destination]]) -> bool:
        """Delete stale traffic counting elements (verdict → destinations) in one
        transaction; False when nothing was written (none well-formed, or refused)."""
        text = forget_traffic_text(
            self.family, {TRAFFIC_SETS[v]: d for v, d in stale.items() if v in TRAFFIC_SETS}
        )
        if not text:
            return False
        done = self.executor.run(["nft", "-f", "-"], stdin=text, check=False)
        if done.returncode != 0:
            log.warning(
                "cannot delete the counters of deleted Services",
                extra={"error": done.stderr.strip()[:300]},
            )
        return done.returncode == 0

    def cleanup(self) -> bool:
        if not self.table_exists():
            return False
        self.apply(cleanup_text(self.family))
        return True
