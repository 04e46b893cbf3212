"""iptables apply layer: runs ``iptables-save``/``iptables-restore`` transactions.

We drive ``iptables-restore`` (as upstream kube-proxy does) rather than python-iptables:
that library speaks libiptc, sees only the legacy tables, and on an iptables-nft host its
rules would land in tables the rest of the system does not use.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import subprocess
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from proxy.iptables.model import ExistingIptables, IptablesRuleset
from proxy.iptables.names import KUBE_PROXY_CANARY
from proxy.iptables.restore import PartialRestore, cleanup_text, restore_pieces
from proxy.iptables.save import counted_samples, parse_save
from proxy.kernel.executor import Executor, KernelError, Started
from proxy.model import IPFamily
from proxy.traffic import TrafficSample

log = logging.getLogger(__name__)

VARIANT_ENV = "KUBE_PROXY_PY_IPTABLES"
VARIANTS = ("nft", "legacy")
"""iptables' two backends (``iptables-nft``, ``iptables-legacy``), in detection order."""
CANARY_TABLES = ("mangle", "filter", "nat")
CANARY_CHAIN = KUBE_PROXY_CANARY
CANARY_RULE = "-j RETURN"
"""Legacy iptables has no generation counter to tell that someone else changed the
tables. As upstream does, every full sync declares a canary chain in the mangle, filter
and nat tables; ours also holds one rule (nothing jumps to the chain), so that a flush of
a table's rules (``iptables -t nat -F``), which upstream's empty canary survives, is seen
as well as a deleted chain. When one is gone or empty, the next sync is full."""
_CANARY_MANGLE = f"*mangle\n:{CANARY_CHAIN} - [0:0]\n-A {CANARY_CHAIN} {CANARY_RULE}\nCOMMIT\n"
LOCK_WAIT_SECONDS = "5"
ROUTE_LOCALNET = "net.ipv4.conf.all.route_localnet"


class RouteLocalnetError(KernelError):
    """``route_localnet`` (localhost NodePorts) could not be set, typically because a
    non-privileged container sees ``/proc/sys`` read-only; nothing was written."""


Undo = Callable[[tuple[str, ...]], None]
"""Puts the given tables back as they were before a transaction (raises KernelError)."""


def _counting(pieces: Iterable[str], commits: list[tuple[str, int]]) -> Iterator[str]:
    """``pieces`` passed through, recording (table, line number) of each ``COMMIT`` line.
    Pieces are whole lines; only ``*table`` and ``COMMIT`` lines are looked for, with
    ``str.find`` (a regex over the 33 MB of a 10,000-Service sync cost 0.3 s)."""
    line = 0
    table = ""
    for piece in pieces:
        marks: list[tuple[int, str]] = []
        for needle in ("\n*", "\nCOMMIT\n"):
            at = piece.find(needle)
            while at >= 0:
                marks.append((at + 1, needle))
                at = piece.find(needle, at + 1)
        for start in ("*", "COMMIT\n"):
            if piece.startswith(start):
                marks.append((0, "\n" + start))
        for at, needle in sorted(marks):
            if needle == "\n*":
                end = piece.find("\n", at)
                table = piece[at + 1 : end if end >= 0 else len(piece)].strip()
            else:
                commits.append((table, line + piece.count("\n", 0, at) + 1))
        line += piece.count("\n")
        yield piece


_HINT_CHAINS = ("KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY", "KUBE-SERVICES")


def tool_name(family: IPFamily) -> str:
    """``iptables`` or ``ip6tables``."""
    return "iptables" if family is IPFamily.V4 else "ip6tables"


def _tool(family: IPFamily, variant: str, verb: str) -> str:
    return f"{tool_name(family)}-{variant}-{verb}"


def detect_variant(executor: Executor, family: IPFamily = IPFamily.V4) -> str:
    """Which iptables backend this host uses: ``nft`` or ``legacy``.

    Like upstream's iptables-wrapper: a hint chain (left by kubelet or an earlier
    kube-proxy) in one backend wins; otherwise the backend holding more rules; nft when
    both are empty. ``KUBE_PROXY_PY_IPTABLES=nft|legacy`` overrides.
    """
    forced = os.environ.get(VARIANT_ENV)
    if forced in VARIANTS:
        return forced
    counts: dict[str, int] = {}
    hints: dict[str, bool] = {}
    for variant in VARIANTS:
        tool = _tool(family, variant, "save")
        if not Executor.available(tool):
            counts[variant], hints[variant] = -1, False
            continue
        out = executor.run([tool], check=False).stdout
        counts[variant] = sum(1 for line in out.splitlines() if line.startswith("-A "))
        hints[variant] = any(f":{h} " in out for h in _HINT_CHAINS)
    if hints["legacy"] and not hints["nft"]:
        return "legacy"
    if hints["nft"]:
        return "nft"
    return "legacy" if counts["legacy"] > counts["nft"] else "nft"


def lock_timeout(exc: KernelError) -> bool:
    """The tool gave up waiting for the xtables lock (``-w``): it changed nothing."""
    return "xtables lock" in exc.stderr


class PendingSave:
    """A save of the tables, running: calling it waits for it, once, and gives what the
    tables hold (chain names and the built-in chains' rules, all a full sync or a cleanup
    needs), or raises the save's :class:`KernelError` (each time). The dumps are kept, by
    table, to put a table back if a restore commits it and then fails."""

    def __init__(self, started: list[Started], tables: tuple[str, ...] = ("filter", "nat")) -> None:
        self._started = started
        self._tables = tables
        self._result: ExistingIptables | None = None
        self.error: KernelError | None = None
        self.dumps: dict[str, bytes] = {}

    def __call__(self) -> ExistingIptables:
        if self._result is None and self.error is None:
            dumps: list[bytes] = []
            for table, s in zip(self._tables, self._started, strict=True):
                try:  # each is waited for, even after another failed
                    dumps.append(s.output())
                    self.dumps[table] = dumps[-1]
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

    executor: Executor
    family: IPFamily = IPFamily.V4
    variant: str = ""

    def __post_init__(self) -> None:
        if not self.variant:
            self.variant = detect_variant(self.executor, self.family)

    def save(self) -> ExistingIptables:
        """What the filter and nat tables hold: chain names and the built-in chains'
        rules (all a full sync or a cleanup needs)."""
        return self.start_save()()

    def _undo_from(self, saved: PendingSave | None) -> Undo:
        """Put tables back from a save's dumps: each given table whole, as it was saved."""

        def undo(tables: tuple[str, ...]) -> None:
            if saved is None or any(t not in saved.dumps for t in tables):
                raise KernelError(self._restore_argv(), -1, "no saved copy of the table")
            text = "".join(saved.dumps[t].decode() for t in tables)
            self.executor.run(self._restore_argv(flush=True), stdin=text)

        return undo

    def _transaction(self, pieces: Iterable[str], undo: Undo) -> None:
        """One ``iptables-restore`` run, as one transaction.

        iptables-restore commits each table at its ``COMMIT``: when a later table is
        refused, the earlier ones are live already. Those are put back with ``undo`` and
        the error says so (:meth:`KernelError.outcome`): the kernel is left as it was."""
        commits: list[tuple[str, int]] = []
        try:
            self.executor.feed(self._restore_argv(), _counting(pieces, commits))
        except KernelError as exc:
            failed_at = exc.failing_line_number()
            exc.committed = tuple(
                t for t, line in commits if t in ("filter", "nat") and (failed_at or 1 << 62) > line
            )
            if lock_timeout(exc):  # the lock is taken before the first line is read
                exc.committed = ()
            if exc.committed:
                try:
                    undo(exc.committed)
                    exc.rolled_back = True
                except KernelError as undo_exc:
                    exc.rollback_error = str(undo_exc)[:500]
                log.error(
                    "iptables-restore committed part of the transaction before failing",
                    extra={
                        "committed": ",".join(exc.committed),
                        "rolled_back": exc.rolled_back,
                        "rollback_error": exc.rollback_error or "",
                    },
                )
            raise

    def start_save(self) -> PendingSave:
        """Start saving the filter and nat tables, side by side (see :class:`PendingSave`)."""
        tool = _tool(self.family, self.variant, "save")
        return PendingSave(
            [self.executor.start([tool, "-t", table]) for table in ("filter", "nat")]
        )

    def traffic(self) -> list[TrafficSample]:
        """The service traffic counters (``--metrics-service-counters``): the counters of
        the rules in our ``KUBE-CNT-`` chains, from one save of the filter table."""
        tool = _tool(self.family, self.variant, "save")
        argv = [tool, "-c", "-t", "filter"]
        if self.variant == "legacy":
            argv += ["-w", LOCK_WAIT_SECONDS]
        done = self.executor.run(argv, check=False)
        return counted_samples(done.stdout) if done.returncode == 0 else []

    def _restore_argv(self, test: bool = False, flush: bool = False) -> list[str]:
        cmd = [_tool(self.family, self.variant, "restore")]
        if not flush:
            cmd.append("--noflush")
        if self.variant == "legacy":
            cmd += ["-w", LOCK_WAIT_SECONDS]
        return [*cmd, "--test"] if test else cmd

    def restore(self, text: str, *, test: bool = False) -> None:
        """Run ``text`` as it is (no rollback: for tests and benchmarks)."""
        self.executor.run(self._restore_argv(test), stdin=text)

    def apply_partial(self, change: PartialRestore) -> None:
        """A partial sync; a table committed before a failure is put back by the inverse
        change (the old rules of the chains it rewrote)."""

        def undo(tables: tuple[str, ...]) -> None:
            self.executor.run(self._restore_argv(), stdin=change.undo_text(tables))

        try:
            self._transaction([change.text], undo)
        except KernelError as exc:
            exc.stdin = change.text
            raise

    def full_sync_pieces(
        self,
        ruleset: IptablesRuleset,
        existing: ExistingIptables | Callable[[], ExistingIptables],
    ) -> Iterator[str]:
        """What a full sync writes, given what the tables hold (legacy: the canaries too,
        in the filter and nat transactions the sync makes anyway: a separate one would
        copy the whole nat table in and out of the kernel once more)."""
        if self.variant != "legacy":
            yield from restore_pieces(ruleset, existing)
            return
        canary = {CANARY_CHAIN: (CANARY_RULE,)}
        with_canaries = dataclasses.replace(
            ruleset, nat={**ruleset.nat, **canary}, filter={**ruleset.filter, **canary}
        )
        yield from restore_pieces(with_canaries, existing)
        yield _CANARY_MANGLE

    def full_sync(self, ruleset: IptablesRuleset, existing: ExistingIptables | None = None) -> None:
        """Full sync: one restore transaction replacing exactly our chains.

        The input is built piece by piece while the tool parses what it has (at 10,000
        Services it is ~50 MB, never held whole). Without ``existing``, the filter and nat
        tables are saved meanwhile, side by side: only the end of each table's input needs
        what they hold (the save reads the tables as they were: nothing is committed
        before the input's first ``COMMIT``, and the save takes no lock)."""
        localnet_before = None
        if ruleset.route_localnet:
            localnet_before = self.executor.read_sysctl(ROUTE_LOCALNET)
            if localnet_before != "1":
                try:
                    self.executor.write_sysctl(ROUTE_LOCALNET, "1")
                except KernelError as exc:
                    raise RouteLocalnetError(exc.argv, exc.returncode, exc.stderr) from exc
        pending: PendingSave | None = None
        held: ExistingIptables | PendingSave
        if existing is None:
            pending = held = self.start_save()
        else:
            held = existing
        try:
            self._transaction(self.full_sync_pieces(ruleset, held), self._undo_from(pending))
        except KernelError as exc:
            if localnet_before not in (None, "1"):
                with contextlib.suppress(KernelError):
                    self.executor.write_sysctl(ROUTE_LOCALNET, str(localnet_before))
            if pending is not None and exc is pending.error:
                raise  # the save failed: the input stopped before its first COMMIT
            with contextlib.suppress(KernelError):  # rebuilt to name the refused line
                exc.stdin = "".join(self.full_sync_pieces(ruleset, held))
            log.error(
                "iptables-restore refused the transaction",
                extra={
                    "error": exc.stderr.strip(),
                    "line": exc.failing_line(),
                    "outcome": exc.outcome(),
                },
            )
            raise
        finally:
            if pending is not None:
                pending.settle()  # waited for even when the input stopped before its end

    def _list_canary(self, table: str) -> subprocess.CompletedProcess[str]:
        """``iptables -S KUBE-PROXY-CANARY`` in ``table`` (status 0: the chain exists)."""
        tool = "iptables" if self.family is IPFamily.V4 else "ip6tables"
        argv = [f"{tool}-{self.variant}", "-w", LOCK_WAIT_SECONDS, "-t", table, "-S"]
        return self.executor.run([*argv, CANARY_CHAIN], check=False)

    def canary_present(self, table: str = "mangle") -> bool | None:
        """Whether the canary a legacy full sync declares in ``table`` still stands with
        its rule; None when that cannot be told (e.g. another program held the xtables
        lock for the whole wait). Listing one chain of the nat table copies the whole table
        out of the kernel (0.8 s at 10,000 Services): see the proxier for how often."""
        listing = self._list_canary(table)
        if listing.returncode == 0:
            return f"-A {CANARY_CHAIN} {CANARY_RULE}" in listing.stdout
        if "No chain/target/match by that name" in listing.stderr:
            return False
        log.warning(
            "could not list the canary chain; drift unknown until the next check",
            extra={"error": listing.stderr.strip()[:300], "status": listing.returncode},
        )
        return None

    def cleanup(self) -> bool:
        """Remove our chains and jumps (and the canary); True if anything was removed."""
        saved = self.start_save()
        text = cleanup_text(saved())  # the filter and nat canaries are ours like any chain
        if self.variant == "legacy" and self._list_canary("mangle").returncode == 0:
            text += f"*mangle\n:{CANARY_CHAIN} - [0:0]\n-X {CANARY_CHAIN}\nCOMMIT\n"
        if not text:
            return False
        try:
            self._transaction([text], self._undo_from(saved))
        except KernelError as exc:
            exc.stdin = text
            raise
        return True
