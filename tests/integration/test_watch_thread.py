"""Watches read on the client's watch thread deliver what the loop's own read delivers.

Real etcd, both settings of ``etcd.watch_thread``: the same events in the same order with their
previous values, a compaction raised as :class:`Compacted`, and a closed client leaves no thread.
"""

from __future__ import annotations

import threading

import pytest
import uvloop

from lastbackend.store.embedded import EmbeddedEtcd
from lastbackend.store.etcd import Compacted, Etcd, StoreUnavailable, WatchBatch
from tests.support import RawEtcd

pytestmark = pytest.mark.etcd

PREFIX = "/lastbackend/test/watch-thread/"


async def _first(client: Etcd, start: int, count: int) -> list[tuple[str, str, str | None]]:
    seen: list[tuple[str, str, str | None]] = []
    batches = client.watch_batches(PREFIX, start_revision=start)
    async for batch in batches:
        assert isinstance(batch, WatchBatch)
        for ev in batch.events:
            prev = ev.prev.value.decode() if ev.prev else None
            seen.append((ev.kind, ev.kv.key, prev))
        if len(seen) >= count:
            break
    await batches.aclose()  # type: ignore[attr-defined]
    return seen


@pytest.mark.parametrize("watch_thread", [True, False], ids=["thread", "loop"])
async def test_both_ways_deliver_the_same_history(etcd: RawEtcd, watch_thread: bool) -> None:
    start = await etcd.put(PREFIX + "a", "1")
    await etcd.put(PREFIX + "a", "2")
    await etcd.put(PREFIX + "b", "3")
    await etcd.delete_prefix(PREFIX + "a")
    async with Etcd(etcd.endpoints, watch_thread=watch_thread) as client:
        seen = await _first(client, start, 4)
    assert seen == [
        ("put", PREFIX + "a", None),
        ("put", PREFIX + "a", "1"),
        ("put", PREFIX + "b", None),
        ("delete", PREFIX + "a", "2"),
    ]


async def test_compaction_reaches_the_reader(etcd: RawEtcd) -> None:
    old = await etcd.put(PREFIX + "c", "1")
    now = await etcd.put(PREFIX + "c", "2")
    await etcd.compact(now)
    async with Etcd(etcd.endpoints) as client:
        with pytest.raises(Compacted):
            await _first(client, old, 1)


async def test_the_watch_thread_lives_as_long_as_the_client(etcd: RawEtcd) -> None:
    def watch_threads() -> int:
        return sum(t.name == "etcd-watch" for t in threading.enumerate())

    before = watch_threads()
    client = Etcd(etcd.endpoints)
    await client.connect()
    assert watch_threads() == before + 1
    await client.close()
    assert watch_threads() == before


@pytest.mark.parametrize("watch_thread", [True, False], ids=["thread", "loop"])
async def test_a_watch_on_a_closed_client_is_store_unavailable(
    etcd_server: EmbeddedEtcd, watch_thread: bool
) -> None:
    """What an informer retries on (an API closing its client before its cache, say), either
    way: not a RuntimeError from a stopped thread, which would end the informer."""
    client = RawEtcd([etcd_server.endpoint], watch_thread=watch_thread)
    await client.connect()
    await client.close()
    with pytest.raises(StoreUnavailable):
        async for _ in client.watch_batches(PREFIX, start_revision=1):
            pass


def test_the_watch_thread_runs_the_same_kind_of_loop_as_its_process(
    etcd_server: EmbeddedEtcd,
) -> None:
    """The daemon runs on uvloop (``daemon.event_loop``) and so must its watch thread: a watch
    event costs the thread ~15% less CPU there (docs/benchmarks.md "API"), and gRPC's asyncio
    client has to work on both loops of the process at once."""

    async def main() -> tuple[type, list[tuple[str, str, str | None]]]:
        async with RawEtcd([etcd_server.endpoint]) as raw:
            await raw.delete_prefix(PREFIX)
            start = await raw.put(PREFIX + "u", "1")
            await raw.put(PREFIX + "u", "2")
            async with Etcd(raw.endpoints) as client:
                assert client._watch_thread is not None
                kind = type(client._watch_thread._running_loop())
                seen = await _first(client, start, 2)
        return kind, seen

    kind, seen = uvloop.run(main())
    assert kind is uvloop.Loop
    assert seen == [("put", PREFIX + "u", None), ("put", PREFIX + "u", "1")]
