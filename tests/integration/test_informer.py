"""The informer on a real etcd: list + watch in order, resume across restarts, relist after
compaction, and the store's watch underneath it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import pytest

from lastbackend.store import keys
from lastbackend.store.embedded import EmbeddedEtcd
from lastbackend.store.etcd import KV, Cmp, Compacted, Etcd, Op, Range, Store, list_prefix
from lastbackend.store.informer import Informer
from tests.support import RawEtcd

pytestmark = pytest.mark.etcd

P = f"{keys.ROOT}informer-test/"

# (kind, key, old value, new value)
Seen = tuple[str, str, bytes | None, bytes | None]


class Recorder:
    """A handler that records every call as (kind, key, old value, new value)."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.changed = asyncio.Event()

    def __call__(self, key: str, old: KV | None, new: KV | None) -> None:
        kind = "delete" if new is None else "put"
        self.seen.append((kind, key, old.value if old else None, new.value if new else None))
        self.changed.set()

    async def wait_for(self, count: int, within: float = 10.0) -> list[Seen]:
        async with asyncio.timeout(within):
            while len(self.seen) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.seen


async def eventually(check: Callable[[], bool], within: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + within
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.02)


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def started(
    informer: Informer, recorder: Recorder | None = None
) -> tuple[asyncio.Task[None], Recorder]:
    recorder = recorder or Recorder()
    informer.add_handler(recorder)
    task = asyncio.create_task(informer.run())
    await asyncio.wait_for(informer.synced.wait(), 10)
    return task, recorder


async def test_list_then_watch_delivers_puts_and_deletes_in_order(etcd: RawEtcd) -> None:
    await etcd.put(P + "a", "a1")
    listed_at = await etcd.put(P + "b", "b1")
    await etcd.put(f"{keys.ROOT}informer-testX", "outside the prefix")
    informer = Informer(etcd, P)

    task, rec = await started(informer)
    try:
        assert rec.seen == [("put", P + "a", None, b"a1"), ("put", P + "b", None, b"b1")]
        assert informer.revision >= listed_at
        assert informer.lists == 1

        await etcd.put(P + "a", "a2")
        await etcd.delete_prefix(P + "b")
        await etcd.txn([], [Op.put(P + "c", "c1"), Op.put(P + "d", "d1"), Op.delete(P + "a")])
        last = await etcd.put(P + "c", "c2")
        await rec.wait_for(8)
    finally:
        await stop(task)

    assert rec.seen[2:] == [
        ("put", P + "a", b"a1", b"a2"),
        ("delete", P + "b", b"b1", None),
        ("put", P + "c", None, b"c1"),
        ("put", P + "d", None, b"d1"),
        ("delete", P + "a", b"a2", None),
        ("put", P + "c", b"c1", b"c2"),
    ]
    assert {k: kv.value for k, kv in informer.cache.items()} == {P + "c": b"c2", P + "d": b"d1"}
    assert informer.revision == last


async def test_handlers_see_the_cache_already_changed_and_may_be_async(etcd: RawEtcd) -> None:
    informer = Informer(etcd, P)
    seen_in_cache: list[bytes | None] = []

    async def handler(key: str, old: KV | None, new: KV | None) -> None:
        await asyncio.sleep(0)
        kv = informer.get(key)
        seen_in_cache.append(kv.value if kv else None)

    def broken(key: str, old: KV | None, new: KV | None) -> None:
        raise RuntimeError("a broken handler must not stop the informer")

    informer.add_handler(broken)
    informer.add_handler(handler)
    task, rec = await started(informer)
    try:
        await etcd.put(P + "a", "1")
        await etcd.delete_prefix(P)
        await rec.wait_for(2)
    finally:
        await stop(task)

    assert seen_in_cache == [b"1", None]


async def test_work_keys_group_raw_keys_and_filter_others(etcd: RawEtcd) -> None:
    def to_key(key: str) -> str | None:
        # <P><obj>/<part> -> <obj>; ignore anything but meta and config
        obj, _, part = key[len(P) :].partition("/")
        return obj if part in ("meta", "config") else None

    await etcd.put(P + "x/meta", "xm")
    await etcd.put(P + "x/config", "xc")
    await etcd.put(P + "x/status", "ignored")
    await etcd.put(P + "y/meta", "ym")
    informer = Informer(etcd, P, to_key=to_key)

    task, rec = await started(informer)
    try:
        assert sorted(informer.work_keys()) == ["x", "y"]
        assert set(informer.objects("x")) == {P + "x/meta", P + "x/config"}
        assert P + "x/status" not in informer.cache
        assert informer.work_key(P + "y/config") == "y"

        await etcd.put(P + "x/status", "still ignored")
        await etcd.delete_prefix(P + "y/")
        await rec.wait_for(4)
    finally:
        await stop(task)

    assert rec.seen[-1] == ("delete", P + "y/meta", b"ym", None)
    assert informer.work_keys() == ["x"]
    assert informer.objects("y") == {}


async def test_many_keys_are_listed_in_pages_at_one_revision(
    etcd: RawEtcd, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("lastbackend.store.etcd.PAGE", 7)
    for chunk in range(0, 50, 25):
        await etcd.txn([], [Op.put(f"{P}{n:03}", str(n)) for n in range(chunk, chunk + 25)])
    informer = Informer(etcd, P)

    task, rec = await started(informer)
    await stop(task)

    assert [s[1] for s in rec.seen] == [f"{P}{n:03}" for n in range(50)]


class CountingStore:
    """An etcd client that records the key span of every read: etcd walks every key from a
    range's start to its end to count them, whatever the limit, so that span is its work."""

    def __init__(self, etcd: Etcd) -> None:
        self.etcd = etcd
        self.spans: list[tuple[str | None, str | None]] = []

    async def range(self, prefix: str, **kwargs: Any) -> Range:
        self.spans.append((kwargs.get("start"), kwargs.get("end")))
        return await self.etcd.range(prefix, **kwargs)

    async def marks(self, prefix: str, *, start: str, revision: int, every: int) -> list[str]:
        self.spans.append((start, None))
        return await self.etcd.marks(prefix, start=start, revision=revision, every=every)

    async def walked(self, prefix: str, revision: int) -> int:
        """The keys etcd walked for all the recorded reads."""
        total = 0
        for start, end in self.spans:
            found = await self.etcd.range(
                prefix, start=start, end=end, revision=revision, count_only=True
            )
            total += found.count
        return total


async def test_a_list_walks_each_key_a_bounded_number_of_times(
    etcd: RawEtcd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A list of N keys in pages costs etcd O(N), not a walk of the rest of the prefix per
    page (O(N^2 / PAGE): 74 s for 500,000 keys), and still returns one revision's tree."""
    monkeypatch.setattr("lastbackend.store.etcd.PAGE", 5)
    n = 200
    for chunk in range(0, n, 100):
        await etcd.txn([], [Op.put(f"{P}{i:04}", str(i)) for i in range(chunk, chunk + 100)])
    at = (await etcd.range(P, count_only=True)).revision
    await etcd.put(f"{P}0007", "later")  # after the revision the list is pinned to
    store = CountingStore(etcd)

    revision, kvs = await list_prefix(
        cast(Store, store), P, revision=at, keep=lambda k: not k.endswith("3")
    )

    assert revision == at
    expected = [f"{P}{i:04}" for i in range(n) if i % 10 != 3]
    assert [kv.key for kv in kvs] == expected
    assert next(kv.value for kv in kvs if kv.key == f"{P}0007") == b"7"
    # the first page (counts all), the marks (all but one page), each page once: < 3N
    assert await store.walked(P, at) <= 3 * n
    assert len(store.spans) == 2 + (n - 5) // 5


async def test_a_list_of_one_page_is_one_read(etcd: RawEtcd) -> None:
    await etcd.txn([], [Op.put(f"{P}{i}", str(i)) for i in range(3)])
    store = CountingStore(etcd)

    _, kvs = await list_prefix(cast(Store, store), P)

    assert [kv.value for kv in kvs] == [b"0", b"1", b"2"]
    assert store.spans == [(None, None)]


async def test_resume_across_an_etcd_restart_loses_and_repeats_nothing(
    private: tuple[EmbeddedEtcd, Etcd],
) -> None:
    server, etcd = private
    await etcd.put(P + "a", "1")
    informer = Informer(etcd, P)
    task, rec = await started(informer)
    try:
        await etcd.put(P + "b", "1")
        await rec.wait_for(2)

        server.stop()
        server.start()
        # Written at once, before the informer's stream is back: it must catch up from where
        # it was, not from "now".
        async with RawEtcd([server.endpoint]) as writer:
            await writer.put(P + "c", "1")
            await writer.delete_prefix(P + "a")

        server.kill()  # and a crash, with nothing written meanwhile
        server.start()
        async with RawEtcd([server.endpoint]) as writer:
            last = await writer.put(P + "b", "2")
        await rec.wait_for(5)
        await eventually(lambda: informer.revision == last)
        await asyncio.sleep(0.2)  # room for a duplicate to show up
    finally:
        await stop(task)

    assert rec.seen == [
        ("put", P + "a", None, b"1"),
        ("put", P + "b", None, b"1"),
        ("put", P + "c", None, b"1"),
        ("delete", P + "a", b"1", None),
        ("put", P + "b", b"1", b"2"),
    ]
    assert informer.lists == 1


async def test_compaction_relists_and_emits_the_difference_with_deletes(
    private: tuple[EmbeddedEtcd, Etcd],
) -> None:
    _, etcd = private
    for key in ("a", "b", "c"):
        await etcd.put(P + key, "1")
    informer = Informer(etcd, P)
    task, rec = await started(informer)
    await stop(task)  # the informer falls behind ...
    behind = informer.revision

    await etcd.delete_prefix(P + "b")
    await etcd.put(P + "c", "2")
    await etcd.put(P + "d", "1")
    await etcd.put(P + "e", "1")
    await etcd.delete_prefix(P + "e")  # came and went while it was away: never seen
    now = await etcd.put(f"{keys.ROOT}elsewhere", "x")
    await etcd.compact(now)  # ... and the history it needs is gone

    task = asyncio.create_task(informer.run())
    try:
        await rec.wait_for(6)
        await eventually(lambda: informer.revision >= now)
    finally:
        await stop(task)

    assert informer.lists == 2
    assert behind < now
    assert rec.seen[3:] == [
        ("delete", P + "b", b"1", None),
        ("put", P + "c", b"1", b"2"),
        ("put", P + "d", None, b"1"),
    ]
    assert sorted(informer.cache) == [P + "a", P + "c", P + "d"]


async def test_a_batch_cut_short_by_cancellation_is_not_replayed(etcd: RawEtcd) -> None:
    informer = Informer(etcd, P)
    gate = asyncio.Event()
    entered = asyncio.Event()

    async def slow(key: str, old: KV | None, new: KV | None) -> None:
        if key == P + "2" and not gate.is_set():
            entered.set()
            await gate.wait()

    rec = Recorder()
    informer.add_handler(rec)
    informer.add_handler(slow)
    task = asyncio.create_task(informer.run())
    await informer.synced.wait()
    before = informer.revision
    # One revision, three events, one watch batch; the informer is cancelled in the second.
    await etcd.txn([], [Op.put(P + str(n), str(n)) for n in (1, 2, 3)])
    await asyncio.wait_for(entered.wait(), 10)
    await stop(task)
    assert informer.revision == before  # the batch did not complete
    gate.set()

    task = asyncio.create_task(informer.run())
    try:
        await rec.wait_for(3)
        last = await etcd.put(P + "4", "4")
        await rec.wait_for(4)
        await eventually(lambda: informer.revision == last)
    finally:
        await stop(task)

    assert [s[1] for s in rec.seen] == [P + "1", P + "2", P + "3", P + "4"]


async def test_store_watch_raises_compacted_with_the_compact_revision(
    private: tuple[EmbeddedEtcd, Etcd],
) -> None:
    _, etcd = private
    first = await etcd.put(P + "a", "1")
    now = await etcd.put(P + "a", "2")
    await etcd.compact(now)

    async def consume(stream: AsyncIterator[object]) -> None:
        async for _ in stream:
            pass

    with pytest.raises(Compacted) as raised:
        await asyncio.wait_for(consume(etcd.watch(P, start_revision=first)), 10)
    assert raised.value.compact_revision == now
    assert raised.value.revision == first
    with pytest.raises(Compacted):
        await asyncio.wait_for(
            consume(etcd.watch_batches(P, start_revision=first, progress_notify=True)), 10
        )


async def test_store_watch_of_one_key_ignores_its_neighbours(etcd: RawEtcd) -> None:
    start = await etcd.put(P + "k2", "neighbour") + 1
    got: list[str] = []

    async def watch() -> None:
        async for batch in etcd.watch_batches(P + "k", start_revision=start, prefix=False):
            got.extend(ev.kv.key for ev in batch.events)

    task = asyncio.create_task(watch())
    try:
        await etcd.put(P + "k2", "x")
        await etcd.put(P + "k", "x")
        await eventually(lambda: bool(got))
    finally:
        await stop(task)

    assert got == [P + "k"]


async def test_created_at_compare_names_one_incarnation_of_a_key(etcd: RawEtcd) -> None:
    await etcd.put(P + "k", "1")
    kv = await etcd.get(P + "k")
    assert kv is not None
    fence = Cmp.created_at(P + "k", kv.create_revision)

    assert (await etcd.txn([fence], [Op.put(P + "k", "2")])).succeeded
    await etcd.delete_prefix(P)
    await etcd.put(P + "k", "again")
    assert not (await etcd.txn([fence], [Op.put(P + "k", "3")])).succeeded
    with pytest.raises(ValueError, match="positive"):
        Cmp.created_at(P + "k", 0)
