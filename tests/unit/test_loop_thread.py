"""The loop thread hands a producer's items to another loop in order, and ends it properly.

What the etcd watches rely on: every item once and in order, the producer's error raised after
the items before it, a reader that leaves cancelling the producer (so a closed event stream
closes its etcd watch), a slow reader pausing the producer, and the producer really running on
the other thread, so a blocked reader's loop does not stop it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from lastbackend.store.loop_thread import LoopThread


@pytest.fixture
def thread() -> Iterator[LoopThread]:
    t = LoopThread("test-loop")
    t.start()
    yield t
    t.stop()


async def test_items_arrive_in_order_from_the_other_thread(thread: LoopThread) -> None:
    idents: list[int] = []

    async def produce() -> AsyncIterator[int]:
        idents.append(threading.get_ident())
        for i in range(500):
            if i % 50 == 0:
                await asyncio.sleep(0)
            yield i

    got = [i async for i in thread.iterate(produce, buffer=8)]
    assert got == list(range(500))
    assert len(idents) == 1
    assert idents[0] != threading.get_ident()


async def test_an_error_comes_after_the_items_before_it(thread: LoopThread) -> None:
    async def produce() -> AsyncIterator[int]:
        yield 1
        yield 2
        raise LookupError("compacted")

    got: list[int] = []

    async def read() -> None:
        async for i in thread.iterate(produce):
            got.append(i)

    with pytest.raises(LookupError, match="compacted"):
        await read()
    assert got == [1, 2]


async def test_a_reader_that_leaves_cancels_the_producer(thread: LoopThread) -> None:
    closed = threading.Event()

    async def produce() -> AsyncIterator[int]:
        try:
            i = 0
            while True:
                yield i
                i += 1
                await asyncio.sleep(0.001)
        finally:
            closed.set()  # the watch's call.cancel() runs here, on the thread

    items = thread.iterate(produce)
    async for i in items:
        if i == 3:
            break
    await items.aclose()  # type: ignore[attr-defined]
    assert await asyncio.to_thread(closed.wait, 5), "the producer was never closed"


async def test_a_slow_reader_pauses_the_producer(thread: LoopThread) -> None:
    made = 0

    async def produce() -> AsyncIterator[int]:
        nonlocal made
        while True:
            made += 1
            yield made

    items = thread.iterate(produce, buffer=4)
    assert await anext(items) == 1  # type: ignore[call-overload]
    await asyncio.sleep(0.2)
    assert made <= 6, f"the producer ran {made} items ahead of a reader that took one"
    await items.aclose()  # type: ignore[attr-defined]


async def test_the_producer_runs_while_the_readers_loop_is_blocked(thread: LoopThread) -> None:
    stamps: list[float] = []

    async def produce() -> AsyncIterator[float]:
        for _ in range(5):
            await asyncio.sleep(0.02)
            stamps.append(time.monotonic())
            yield stamps[-1]

    items = thread.iterate(produce, buffer=16)
    first = await anext(items)  # type: ignore[call-overload]
    time.sleep(0.3)  # noqa: ASYNC251  (this loop does nothing for 0.3 s: a blocking handler)
    rest = [s async for s in items]
    assert len(rest) == 4
    assert rest[-1] - first < 0.25, "the producer made its items while this loop was blocked"


def test_stop_ends_the_thread() -> None:
    t = LoopThread("test-stop")
    t.start()
    assert any(th.name == "test-stop" for th in threading.enumerate())
    t.stop()
    assert not any(th.name == "test-stop" for th in threading.enumerate())
    assert not t.running


async def test_a_busy_reader_takes_what_came_meanwhile_without_wake_ups(
    thread: LoopThread,
) -> None:
    """Each wake-up of the reader's loop is a self-pipe write and a GIL hand-over: a watch
    delivering batches to a loop busy with requests must not cost one per batch."""
    loop = asyncio.get_running_loop()
    wakes = 0
    original = loop.call_soon_threadsafe

    def counting(*args: object, **kwargs: object) -> asyncio.Handle:
        nonlocal wakes
        wakes += 1
        return original(*args, **kwargs)  # type: ignore[arg-type]

    async def produce() -> AsyncIterator[int]:
        for i in range(50):
            yield i

    loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
    try:
        items = thread.iterate(produce, buffer=64)
        assert await anext(items) == 0  # type: ignore[call-overload]
        before = wakes
        time.sleep(0.2)  # noqa: ASYNC251  (busy: the other 49 arrive meanwhile)
        rest = [i async for i in items]
    finally:
        loop.call_soon_threadsafe = original  # type: ignore[method-assign]
    assert rest == list(range(1, 50))
    assert wakes - before == 0, f"{wakes - before} wake-ups for items that were already there"
