"""Leader election per controller, on an etcd lease, with fencing.

Several ``lastbackend controller`` processes may run; for each controller name exactly one of them
acts. The election key is ``/lastbackend/system/leader/<controller>`` (``keys.leader``), its value
the leader's identity, attached to the leader's lease.

**Campaign.** Grant a lease, then one transaction: if the key is absent (``create_revision == 0``)
put it on the lease, else read it. The winner's key exists exactly as long as its lease; a loser
revokes its unused lease, records who leads, and watches the key from the transaction's revision
+ 1 until it is deleted (resigned, or expired with the leader's lease), then tries again. No
polling, and the next leader takes over as soon as etcd expires the old lease: within one TTL of
the old leader's last renewal.

**Leading.** The lease is renewed in the background
(:class:`~lastbackend.store.etcd.Lease`). The term ends when the lease is lost (etcd says it
expired, or no renewal got through before the deadline the last one guaranteed, which is never
after the server's own expiry) or when the key is deleted or replaced (an admin's ``etcdctl
del``, a fenced write that failed). :meth:`LeaderElection.run` then cancels the leader's work,
revokes the lease and campaigns again.

**Fencing.** A process can be paused (GC, SIGSTOP, a swapped-out VM) for longer than its TTL and
wake up believing it still leads. The key is created afresh for every term, so its create
revision names the term: :meth:`LeaderElection.fence` is the comparison "the election key is
still the one created at my term's revision". A leader puts it in every transaction it makes
(:meth:`LeaderElection.txn` does so and tells a lost fence apart from the caller's own compares),
so a write by a paused ex-leader fails in etcd instead of overwriting its successor's.
Leaders never hold the raw client: they get a :class:`Fenced` handle, whose only write is
:meth:`Fenced.txn`, so an unfenced write cannot be made by accident (store modules take it
wherever they take an :class:`~lastbackend.store.etcd.Etcd`, through the same reads and ``txn``).

Everything runs on one event loop; the state below is only changed between ``await`` points.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import structlog

from lastbackend.store import keys
from lastbackend.store.etcd import (
    KV,
    Cmp,
    Compacted,
    Etcd,
    Lease,
    Op,
    Range,
    StoreError,
    TxnResult,
    WatchBatch,
)

DEFAULT_TTL = 15
RETRY_MIN = 0.1
RETRY_MAX = 5.0

log = structlog.get_logger("lastbackend.controllers.leader")


class NotLeader(StoreError):
    """This process does not (or no longer) hold the election: its fenced write did not happen."""


def default_identity() -> str:
    """``<host>/<pid>/<random>``: unique per process, readable by an admin with etcdctl."""
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"


class LeaderElection:
    """One candidate in the election of one controller (see the module docstring)."""

    def __init__(
        self,
        etcd: Etcd,
        name: str,
        *,
        identity: str | None = None,
        ttl: int = DEFAULT_TTL,
    ) -> None:
        self.etcd = etcd
        self.name = name
        self.key = keys.leader(name)
        self.identity = identity or default_identity()
        self.ttl = ttl
        self.leader: str | None = None
        """The identity last seen holding the key (ours while leading); None when unknown."""
        self.term = 0
        """The create revision of the key in our current or last term; 0 before the first."""
        self._lease: Lease | None = None
        self._lost = asyncio.Event()
        self._lost.set()  # no term yet
        self._lost_reason: str | None = None
        self._guard: asyncio.Task[None] | None = None
        # Leases we could not revoke (etcd was down): our old key may still hang on one of them,
        # and revoking it when etcd is back frees the key now instead of after the TTL.
        self._stale: set[int] = set()

    def __repr__(self) -> str:
        return f"<LeaderElection {self.name!r} {self.identity!r} leading={self.is_leader}>"

    @property
    def is_leader(self) -> bool:
        """True while our term lasts, as far as this process can know (fencing covers the rest)."""
        return self._lease is not None and not self._lost.is_set() and self._lease.alive

    @property
    def lease(self) -> Lease | None:
        """The lease of the current term: keys put on it vanish with the leadership."""
        return self._lease

    @property
    def lost(self) -> asyncio.Event:
        """Set when the current term ends (and while there is none)."""
        return self._lost

    # campaign ----------------------------------------------------------------------------------

    async def campaign(self) -> None:
        """Return once this candidate leads; waits (without polling) while another one does."""
        if self.is_leader:
            return
        delay = RETRY_MIN
        while True:
            for stale in list(self._stale):
                with contextlib.suppress(StoreError):
                    await self.etcd.revoke(stale)
                    self._stale.discard(stale)
            try:
                lease = await self.etcd.grant(self.ttl)
            except StoreError as exc:
                log.warning("election: lease grant failed", election=self.name, error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            try:
                result = await self.etcd.txn(
                    [Cmp.absent(self.key)],
                    [Op.put(self.key, self.identity, lease=lease.id)],
                    [Op.get(self.key)],
                )
            except StoreError as exc:
                # Written or not, revoking the lease undoes it: the key would hang on the lease.
                await self._revoke_quietly(lease)
                log.warning("election: campaign failed", election=self.name, error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            except asyncio.CancelledError:
                # The txn may have won: leave no key on a lease that nobody renews.
                await self._revoke_quietly(lease)
                raise
            delay = RETRY_MIN
            if result.succeeded:
                self._begin(lease, result.revision)
                return
            await self._revoke_quietly(lease)
            holder = result.reads[0][0] if result.reads and result.reads[0] else None
            if holder is None:
                continue
            if self.leader != holder.value.decode(errors="replace"):
                self.leader = holder.value.decode(errors="replace")
                log.info("election: following", election=self.name, leader=self.leader)
            await self._wait_for_vacancy(holder.create_revision, result.revision)

    async def _wait_for_vacancy(self, holder_created: int, revision: int) -> None:
        """Return when the key created at ``holder_created`` is gone (or may be)."""
        try:
            async for batch in self.etcd.watch_batches(
                self.key, start_revision=revision + 1, prefix=False, prev_kv=False
            ):
                for event in batch.events:
                    if event.kind == "delete" or event.kv.create_revision != holder_created:
                        self.leader = None
                        return
        except Compacted:
            return  # the history is gone: look again
        except StoreError as exc:
            log.warning("election: watch failed", election=self.name, error=str(exc))
            await asyncio.sleep(RETRY_MAX)

    def _begin(self, lease: Lease, revision: int) -> None:
        self._lease = lease
        self.term = revision
        self.leader = self.identity
        self._lost = asyncio.Event()
        self._lost_reason = None
        lease.keep_alive()
        self._guard = asyncio.create_task(
            self._watch_term(lease, revision), name=f"election-guard-{self.name}"
        )
        log.info("election: leading", election=self.name, identity=self.identity, term=revision)

    async def _watch_term(self, lease: Lease, term: int) -> None:
        """Set :attr:`lost` when the lease is lost or the key stops being our term's."""
        lease_lost = asyncio.create_task(lease.lost.wait())
        key_gone = asyncio.create_task(self._key_gone(term))
        try:
            done, _ = await asyncio.wait(
                {lease_lost, key_gone}, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            lease_lost.cancel()
            key_gone.cancel()
        if lease_lost in done:
            self.step_down(f"lease {lease.lost_reason}")
        elif key_gone.exception() is not None:
            log.error("election: guard failed", election=self.name, exc_info=key_gone.exception())
            self.step_down("guard failed")
        else:
            self.step_down("election key deleted or replaced")

    async def _key_gone(self, term: int) -> None:
        revision = term
        while True:
            try:
                async for batch in self.etcd.watch_batches(
                    self.key,
                    start_revision=revision + 1,
                    prefix=False,
                    prev_kv=False,
                    progress_notify=True,
                ):
                    revision = batch.revision
                    for event in batch.events:
                        if event.kind == "delete" or event.kv.create_revision != term:
                            return
            except Compacted:
                pass  # the history is gone: read the key's state now instead
            except StoreError:
                await asyncio.sleep(RETRY_MIN)
            try:
                read = await self.etcd.txn([], [Op.get(self.key)])
            except StoreError:
                continue
            if not read.reads[0] or read.reads[0][0].create_revision != term:
                return
            revision = read.revision

    # leading -----------------------------------------------------------------------------------

    def step_down(self, reason: str) -> None:
        """End the current term now (a fenced write failed, the lease is gone, ...).

        :meth:`run` cancels the leader's work and campaigns again; the lease is revoked there.
        """
        if not self._lost.is_set():
            self._lost_reason = reason
            self._lost.set()
            log.warning("election: stepping down", election=self.name, reason=reason)

    def fence(self) -> Cmp:
        """The compare that makes a write conditional on our term still being current.

        Valid for the term in which it is taken: after that term it always fails, even if this
        process leads again later (a new term has a new create revision).
        """
        if not self.term:
            raise NotLeader(f"{self.identity} never led {self.name!r}")
        return Cmp.created_at(self.key, self.term)

    async def txn(
        self, compare: Sequence[Cmp], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        """A transaction guarded by :meth:`fence`.

        Returns as :meth:`Etcd.txn` does when the caller's compares fail; raises
        :class:`NotLeader` (and steps down) when the fence failed.
        """
        term = self.term
        result = await self.etcd.txn(
            [self.fence(), *compare], success, [*failure, Op.get(self.key)]
        )
        if result.succeeded:
            return result
        holder = result.reads[-1]
        if not holder or holder[0].create_revision != term:
            if term == self.term:
                self.step_down("a fenced write found the term over")
            raise NotLeader(f"{self.identity} no longer leads {self.name!r}")
        return TxnResult(succeeded=False, revision=result.revision, reads=result.reads[:-1])

    async def resign(self) -> None:
        """End our term and revoke its lease, so another candidate takes over at once."""
        lease, self._lease = self._lease, None
        guard, self._guard = self._guard, None
        if guard is not None:
            guard.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await guard
        if not self._lost.is_set():
            self._lost_reason = "resigned"
            self._lost.set()
        if self.leader == self.identity:
            self.leader = None
        if lease is not None:
            await self._revoke_quietly(lease)
            log.info("election: resigned", election=self.name, identity=self.identity)

    async def _revoke_quietly(self, lease: Lease) -> None:
        try:
            await lease.revoke()
        except StoreError as exc:  # it expires on its own; or the next campaign revokes it
            self._stale.add(lease.id)
            log.info("election: lease revoke failed", election=self.name, error=str(exc))

    async def run(self, work: Callable[[], Awaitable[object]]) -> None:
        """Campaign, run ``work()`` while leading, and campaign again when a term ends.

        ``work`` is cancelled when the term ends. Returns when ``work`` returns and re-raises
        what it raises; either way, and on cancellation, the lease is revoked first.
        """
        while True:
            await self.campaign()
            work_task = asyncio.ensure_future(work())
            lost_task = asyncio.ensure_future(self._lost.wait())
            try:
                done, _ = await asyncio.wait(
                    {work_task, lost_task}, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                lost_task.cancel()
                if not work_task.done():
                    work_task.cancel()
                await asyncio.gather(work_task, lost_task, return_exceptions=True)
                await self.resign()
            if work_task in done:
                work_task.result()
                return
            log.info(
                "election: term over, campaigning again",
                election=self.name,
                reason=self._lost_reason,
            )


class Fenced:
    """The store as a leader uses it: etcd's reads, and transactions that carry the fence.

    Duck-types the read side of :class:`~lastbackend.store.etcd.Etcd` and its ``txn``, so
    repositories (``store.repos.Repos``, ``store.registries``...) work on it unchanged and every
    write they make for a leader is fenced. There is no ``put`` or ``delete``: a write is a
    transaction, and a transaction here fails with :class:`NotLeader` once the term is over.
    Leases (a node's key lives on its own) are granted here too, for keys put by a fenced txn.
    """

    def __init__(self, election: LeaderElection) -> None:
        self.election = election
        self._etcd = election.etcd

    def __repr__(self) -> str:
        return f"<Fenced {self.election.name!r} term={self.election.term}>"

    async def txn(
        self, compare: Sequence[Cmp], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        """See :meth:`LeaderElection.txn`."""
        return await self.election.txn(compare, success, failure)

    async def get(self, key: str, *, revision: int = 0) -> KV | None:
        return await self._etcd.get(key, revision=revision)

    async def read_many(self, keys: Sequence[str], *, revision: int = 0) -> dict[str, KV]:
        return await self._etcd.read_many(keys, revision=revision)

    async def range(
        self,
        prefix: str,
        *,
        start: str | None = None,
        revision: int = 0,
        limit: int = 0,
        keys_only: bool = False,
        count_only: bool = False,
        end: str | None = None,
    ) -> Range:
        return await self._etcd.range(
            prefix,
            start=start,
            end=end,
            revision=revision,
            limit=limit,
            keys_only=keys_only,
            count_only=count_only,
        )

    async def marks(self, prefix: str, *, start: str, revision: int, every: int) -> list[str]:
        return await self._etcd.marks(prefix, start=start, revision=revision, every=every)

    async def pairs(self, prefix: str) -> tuple[int, list[tuple[bytes, bytes]]]:
        return await self._etcd.pairs(prefix)

    async def status(self) -> int:
        return await self._etcd.status()

    def watch_batches(
        self,
        key: str,
        *,
        start_revision: int,
        prefix: bool = True,
        prev_kv: bool = True,
        progress_notify: bool = False,
    ) -> AsyncIterator[WatchBatch]:
        return self._etcd.watch_batches(
            key,
            start_revision=start_revision,
            prefix=prefix,
            prev_kv=prev_kv,
            progress_notify=progress_notify,
        )

    async def grant(self, ttl: int) -> Lease:
        return await self._etcd.grant(ttl)
