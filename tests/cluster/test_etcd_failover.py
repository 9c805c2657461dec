"""The etcd client on a 3-member cluster with TLS, while members are killed and frozen.

The client is :class:`~lastbackend.store.etcd.Etcd` itself (through the tests' ``RawEtcd``),
pointed at all three members, as every lastbackend process is.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest

from lastbackend.controllers.leader import LeaderElection
from lastbackend.store import keys
from lastbackend.store.etcd import KV, Cmp, Op, StoreUnavailable
from tests.cluster.apis import Ledger as ApiLedger
from tests.cluster.apis import problems, projects_in_etcd, start_apis, write_steadily
from tests.cluster.etcd_cluster import EtcdCluster
from tests.integration.test_daemon import Daemon
from tests.support import RawEtcd, eventually

pytestmark = [pytest.mark.etcd, pytest.mark.cluster]

PREFIX = "/lastbackend/failover/"
COUNTER = PREFIX + "counter"


@pytest.fixture
async def etcd(etcd_cluster: EtcdCluster) -> AsyncIterator[RawEtcd]:
    async with RawEtcd(etcd_cluster.endpoints, tls=etcd_cluster.tls) as client:
        await client.delete_prefix(PREFIX)
        yield client


async def test_cluster_elects_a_new_leader_after_a_kill_and_takes_its_member_back(
    etcd_cluster: EtcdCluster, etcd: RawEtcd
) -> None:
    await etcd.put(PREFIX + "before", "1")
    leader = etcd_cluster.leader()
    etcd_cluster.kill(leader)
    assert etcd_cluster.leader() is not leader
    etcd_cluster.start(leader)
    assert (await etcd.get(PREFIX + "before")).value == b"1"
    assert etcd_cluster.status(leader) is not None


async def _timed(coro: object) -> float:
    started = time.monotonic()
    await coro  # type: ignore[misc]
    return time.monotonic() - started


async def test_reads_and_writes_move_off_a_frozen_member_within_seconds(
    etcd_cluster: EtcdCluster, etcd: RawEtcd
) -> None:
    await etcd.put(PREFIX + "k", "v")
    frozen = etcd_cluster.member(etcd.member)
    etcd_cluster.freeze(frozen)
    try:
        read = await _timed(etcd.get(PREFIX + "k"))
        write = await _timed(etcd.put(PREFIX + "k", "w"))
        assert etcd.member != frozen.endpoint
    finally:
        etcd_cluster.thaw(frozen)
    print(f"\nfirst read after the freeze: {read:.2f}s, first write: {write:.2f}s")
    assert read < 3.0
    assert write < 3.0
    assert (await etcd.get(PREFIX + "k")).value == b"w"


@attrs.define
class Ledger:
    """What a writer was told: the creates acknowledged, the increments acknowledged, and the
    calls answered 'unknown' (StoreUnavailable), each with its latency."""

    created: dict[str, bytes] = attrs.field(factory=dict)
    increments: int = 0
    unknown: int = 0
    errors: list[str] = attrs.field(factory=list)
    sent: int = 0
    slowest: float = 0.0


async def _writer(etcd: RawEtcd, ledger: Ledger, stop: asyncio.Event) -> None:
    """Creates (compare absent) and read-modify-write increments (compare mod revision), the
    two shapes of API writes, one after the other at ~20 per second."""
    i = 0
    while not stop.is_set():
        i += 1
        key, value = f"{PREFIX}p{i:05d}", uuid.uuid4().hex.encode()
        started = time.monotonic()
        ledger.sent += 1
        try:
            result = await etcd.txn([Cmp.absent(key)], [Op.put(key, value)])
            assert result.succeeded, f"{key} answered as taken: an attempt counted as a conflict"
            ledger.created[key] = value
        except StoreUnavailable as exc:
            ledger.unknown += 1
            ledger.errors.append(f"{time.monotonic() - started:.2f}s: {exc}")
        ledger.sent += 1
        try:
            while True:  # a conflict is retried as a caller would: re-read, write again
                kv = await etcd.get(COUNTER)
                n = int(kv.value) if kv else 0
                done = await etcd.txn([Cmp.unchanged(kv, COUNTER)], [Op.put(COUNTER, str(n + 1))])
                if done.succeeded:
                    ledger.increments += 1
                    break
        except StoreUnavailable as exc:
            ledger.unknown += 1
            ledger.errors.append(f"{time.monotonic() - started:.2f}s: {exc}")
        ledger.slowest = max(ledger.slowest, time.monotonic() - started)
        await asyncio.sleep(0.05)


async def _history(etcd: RawEtcd, key: str) -> list[bytes]:
    """Every value ``key`` has had, oldest first, from etcd's own history (gets at revisions)."""
    values: list[bytes] = []
    kv = await etcd.get(key)
    while kv is not None:
        values.append(kv.value)
        kv = await etcd.get(key, revision=kv.mod_revision - 1)
    return values[::-1]


async def test_writes_through_a_leader_kill_and_a_freeze_apply_once(
    etcd_cluster: EtcdCluster, etcd: RawEtcd
) -> None:
    ledger, stop = Ledger(), asyncio.Event()
    writer = asyncio.create_task(_writer(etcd, ledger, stop))
    try:
        await asyncio.sleep(1)
        leader = etcd_cluster.leader()
        await asyncio.to_thread(etcd_cluster.kill, leader)
        await asyncio.sleep(3)
        await asyncio.to_thread(etcd_cluster.start, leader)
        await asyncio.sleep(1)
        # the leader: the cluster elects another while the client leaves it
        frozen = etcd_cluster.leader()
        etcd_cluster.freeze(frozen)
        await asyncio.sleep(8)
        etcd_cluster.thaw(frozen)
        await asyncio.sleep(2)
    finally:
        stop.set()
        await writer
    print(f"\nsent {ledger.sent}, unknown {ledger.unknown}, slowest {ledger.slowest:.2f}s")
    # every acknowledged create is there, with its value; none half there (one key each)
    range_ = await etcd.range(PREFIX)
    there = {kv.key: kv.value for kv in range_.kvs if kv.key != COUNTER}
    for key, value in ledger.created.items():
        assert there.get(key) == value, key
    assert len(there) - len(ledger.created) <= ledger.unknown
    # the counter went up by one per acknowledged increment, never twice for one
    history = await eventually(lambda: _history(etcd, COUNTER))
    assert [int(v) for v in history] == list(range(1, len(history) + 1))
    assert ledger.increments <= len(history) <= ledger.increments + ledger.unknown
    assert ledger.unknown == 0, ledger.errors


# --- through real API processes -----------------------------------------------------------------


def _stop_apis(apis: list[Daemon]) -> None:
    for api in apis:
        api.cleanup()


async def test_api_creates_through_a_leader_kill_and_a_20s_freeze_are_answered(
    etcd_cluster: EtcdCluster, etcd: RawEtcd, tmp_path: Path
) -> None:
    await etcd.delete_prefix(keys.ROOT)
    apis = await asyncio.to_thread(start_apis, etcd_cluster, tmp_path, 2)
    ledger, stop = ApiLedger(), asyncio.Event()
    writer = asyncio.create_task(write_steadily([a.url for a in apis], ledger, stop))
    try:
        await asyncio.sleep(2)
        # (a) kill -9 of the leader member, then its restart
        leader = etcd_cluster.leader()
        etcd_cluster.kill(leader)
        await asyncio.sleep(5)
        await asyncio.to_thread(etcd_cluster.start, leader)
        await asyncio.sleep(3)
        after_kill = ledger.sent
        # (b) SIGSTOP of a member (the leader: the cluster must elect another) for 20 s
        frozen = await asyncio.to_thread(etcd_cluster.leader)
        etcd_cluster.freeze(frozen)
        await asyncio.sleep(20)
        etcd_cluster.thaw(frozen)
        await asyncio.sleep(3)
    finally:
        stop.set()
        await writer
        await asyncio.to_thread(_stop_apis, apis)
    print(f"\nacross the kill ({after_kill} sent) and the freeze: {ledger.summary()}")
    by_index, metas = await projects_in_etcd(etcd)
    assert list(problems(ledger, by_index, metas)) == []
    assert ledger.answered >= 0.999, (ledger.summary(), ledger.failed)


async def test_a_watch_and_a_lease_move_off_a_frozen_member(
    etcd_cluster: EtcdCluster, etcd: RawEtcd
) -> None:
    async with RawEtcd(etcd_cluster.endpoints, tls=etcd_cluster.tls) as watcher:
        start = await watcher.status()
        lease = await watcher.grant(5)
        lease.keep_alive()
        seen: list[tuple[str, float]] = []

        async def watch() -> None:
            async for batch in watcher.watch(PREFIX, start_revision=start + 1):
                seen.extend((ev.kv.key, time.monotonic()) for ev in batch)

        task = asyncio.create_task(watch())
        await etcd.put(PREFIX + "w-before", "1")
        await eventually(lambda: _has(seen, PREFIX + "w-before"))
        frozen = etcd_cluster.member(watcher.member)
        etcd_cluster.freeze(frozen)
        written: dict[str, float] = {}
        try:
            for i in range(8):  # 8 s frozen: longer than the lease's TTL
                key = f"{PREFIX}w{i}"
                # guarded as the product's writes are (an unguarded one is not resent)
                await etcd.txn([Cmp.absent(key)], [Op.put(key, "1")])
                written[key] = time.monotonic()
                await asyncio.sleep(1)
            assert not lease.lost.is_set(), lease.lost_reason
            assert await watcher.time_to_live(lease.id) > 0
        finally:
            etcd_cluster.thaw(frozen)
        await eventually(lambda: _has(seen, f"{PREFIX}w7"))
        task.cancel()
        await lease.revoke()
    keys_seen = [k for k, _ in seen]
    assert keys_seen == [PREFIX + "w-before", *written], "every change once, in order"
    delays = {k: at - written[k] for k, at in seen if k in written}
    print(f"\nwatch delivery during the freeze: slowest {max(delays.values()):.2f}s")
    assert max(delays.values()) < 3.0


async def _has(seen: list[tuple[str, float]], key: str) -> bool:
    return any(k == key for k, _ in seen)


async def test_a_txn_sent_to_a_member_as_it_freezes_is_applied_once_even_after_the_thaw(
    etcd_cluster: EtcdCluster, etcd: RawEtcd
) -> None:
    """The request sits unread in the frozen member's socket; the client gives up on it, finds
    it not applied, and sends it to another member. On SIGCONT the member reads the first copy
    and hands it to the cluster: its comparison fails, so nothing is applied twice."""
    await etcd.put(COUNTER, "0")
    await etcd.put(PREFIX + "gone", "y")
    kv = await etcd.get(COUNTER)
    frozen = etcd_cluster.member(etcd.member)
    etcd_cluster.freeze(frozen)  # before the prober can notice: the txn goes to it
    try:
        create = etcd.txn([Cmp.absent(PREFIX + "once")], [Op.put(PREFIX + "once", "x")])
        increment = etcd.txn([Cmp.unchanged(kv, COUNTER)], [Op.put(COUNTER, "1")])
        delete = etcd.txn([Cmp.present(PREFIX + "gone")], [Op.delete(PREFIX + "gone")])
        started = time.monotonic()
        created, incremented, deleted = await asyncio.gather(create, increment, delete)
        took = time.monotonic() - started
        assert took > 0.9, f"answered in {took:.2f}s: the frozen member was not asked"
        assert created.succeeded
        assert incremented.succeeded
        assert deleted.succeeded
    finally:
        etcd_cluster.thaw(frozen)
    await asyncio.to_thread(etcd_cluster.wait_healthy, frozen)
    await asyncio.sleep(2)  # time for the thawed member to propose what it had read
    assert await _history(etcd, PREFIX + "once") == [b"x"]
    assert await _history(etcd, COUNTER) == [b"0", b"1"]
    assert await etcd.get(PREFIX + "gone") is None
    revisions = [kv.mod_revision async for kv in _versions(etcd, PREFIX + "gone")]
    assert len(revisions) == 1, "put once, deleted once, never put again"


async def _versions(etcd: RawEtcd, key: str) -> AsyncIterator[KV]:
    """The versions ``key`` had before its current state (newest first)."""
    current = await etcd.range(PREFIX, count_only=True)
    kv = await etcd.get(key, revision=current.revision)
    revision = current.revision
    while kv is None and revision > 1:  # walk back to the last version before the delete
        revision -= 1
        kv = await etcd.get(key, revision=revision)
    while kv is not None:
        yield kv
        kv = await etcd.get(key, revision=kv.mod_revision - 1)


async def test_a_controllers_leadership_outlives_a_freeze_of_its_member_and_a_leader_kill(
    etcd_cluster: EtcdCluster, etcd: RawEtcd
) -> None:
    """An 8 s term (the product's is 15 s) through a 10 s freeze of the member its process uses
    and a kill -9 of the etcd leader: the same candidate leads all along, the other waits.
    (A kill costs the cluster an election, 1-3 s without writes: a term must outlast that plus
    a renewal interval, TTL/3.)"""
    async with (
        RawEtcd(etcd_cluster.endpoints, tls=etcd_cluster.tls) as one,
        RawEtcd(etcd_cluster.endpoints, tls=etcd_cluster.tls) as two,
    ):
        a = LeaderElection(one, "failover", identity="a", ttl=8)
        b = LeaderElection(two, "failover", identity="b", ttl=8)
        await a.campaign()
        other = asyncio.create_task(b.campaign())
        flaps: list[str] = []

        async def watch_leadership() -> None:
            while True:
                if not a.is_leader or b.is_leader:
                    flaps.append(f"{time.monotonic() - t0:.1f}s: a={a.is_leader} b={b.is_leader}"
                                 f" ({a._lost_reason}, {a.lease!r})")  # fmt: skip
                await asyncio.sleep(0.1)

        t0 = time.monotonic()
        checker = asyncio.create_task(watch_leadership())
        try:
            frozen = etcd_cluster.member(one.member)
            etcd_cluster.freeze(frozen)
            await asyncio.sleep(10)
            etcd_cluster.thaw(frozen)
            print(f"\nthawed at {time.monotonic() - t0:.1f}s")
            await asyncio.sleep(2)
            leader = await asyncio.to_thread(etcd_cluster.leader)
            etcd_cluster.kill(leader)
            print(f"killed the leader at {time.monotonic() - t0:.1f}s")
            await asyncio.sleep(4)
            await asyncio.to_thread(etcd_cluster.start, leader)
            result = await a.txn([], [Op.put(PREFIX + "fenced", "a")])
            assert result.succeeded
        finally:
            checker.cancel()
            other.cancel()
            await a.resign()
        assert flaps == [], flaps[:5]
