"""The work queue: de-duplication, one key at a time, backoff, rate limit, delays, shutdown."""

from __future__ import annotations

import asyncio
import time

import pytest

from lastbackend.controllers.queue import QueueShutDown, TokenBucket, WorkQueue, resync


async def drain(queue: WorkQueue) -> list[str]:
    """Every key ready now, in order, each marked done."""
    keys = []
    while len(queue):
        key = await queue.get()
        keys.append(key)
        queue.done(key)
    return keys


async def test_a_key_added_while_queued_is_queued_once() -> None:
    queue = WorkQueue()
    for key in ["a", "b", "a", "c", "b", "a"]:
        queue.add(key)

    assert len(queue) == 3
    assert await drain(queue) == ["a", "b", "c"]


async def test_a_key_is_never_handed_out_twice_at_once() -> None:
    queue = WorkQueue()
    queue.add("a")
    key = await queue.get()
    queue.add("a")  # changed while being reconciled

    assert key == "a"
    assert queue.processing("a")
    assert len(queue) == 0
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(queue.get(), 0.05)

    queue.done("a")  # the change made while processing is seen by a second reconcile

    assert len(queue) == 1
    assert await queue.get() == "a"


async def test_a_key_readded_twice_while_processing_runs_once_more() -> None:
    queue = WorkQueue()
    queue.add("a")
    await queue.get()
    queue.add("a")
    queue.add("a")
    queue.done("a")

    assert await drain(queue) == ["a"]


async def test_concurrent_workers_never_hold_the_same_key() -> None:
    queue = WorkQueue()
    holding: set[str] = set()
    overlaps: list[str] = []
    handled: list[str] = []

    async def worker() -> None:
        while True:
            try:
                key = await queue.get()
            except QueueShutDown:
                return
            if key in holding:
                overlaps.append(key)
            holding.add(key)
            await asyncio.sleep(0.002)
            holding.discard(key)
            handled.append(key)
            queue.done(key)

    workers = [asyncio.create_task(worker()) for _ in range(4)]
    for round_ in range(20):
        for key in ("a", "b", "c"):
            queue.add(key)
        await asyncio.sleep(0.001 * (round_ % 3))
    while True:  # until everything added has been handled
        if not len(queue) and not any(queue.processing(k) for k in "abc"):
            break
        await asyncio.sleep(0.005)
    queue.shutdown()
    await asyncio.gather(*workers)

    assert overlaps == []
    assert set(handled) == {"a", "b", "c"}
    assert len(handled) < 60  # adds made while queued were merged


async def test_retry_backoff_doubles_from_5ms_and_is_capped() -> None:
    queue = WorkQueue(rate=1e9, burst=10**9)

    delays = [queue.when("a") for _ in range(20)]

    assert delays[:4] == [0.005, 0.01, 0.02, 0.04]
    assert delays[-1] == 300.0
    assert max(delays) == 300.0
    assert queue.retries("a") == 20
    assert queue.when("b") == 0.005  # per key


async def test_forget_resets_the_backoff() -> None:
    queue = WorkQueue(rate=1e9, burst=10**9)
    for _ in range(5):
        queue.when("a")

    queue.forget("a")

    assert queue.retries("a") == 0
    assert queue.when("a") == 0.005


async def test_backoff_never_exceeds_the_cap_after_many_failures() -> None:
    queue = WorkQueue(max_delay=1.0, rate=1e9, burst=10**9)

    delays = [queue.when("a") for _ in range(200)]

    assert max(delays) == 1.0


async def test_add_rate_limited_requeues_after_the_backoff() -> None:
    queue = WorkQueue(base_delay=0.05)
    loop = asyncio.get_running_loop()
    times = []
    for _ in range(3):
        start = loop.time()
        queue.add_rate_limited("a")
        assert len(queue) == 0
        key = await queue.get()
        queue.done(key)
        times.append(loop.time() - start)

    assert times[0] >= 0.045
    assert times[1] >= 0.095
    assert times[2] >= 0.195
    assert times[2] < 0.4


def test_the_token_bucket_allows_a_burst_then_the_rate() -> None:
    now = [100.0]
    bucket = TokenBucket(rate=10, burst=3, clock=lambda: now[0])

    delays = [bucket.reserve() for _ in range(5)]

    assert delays[:3] == [0.0, 0.0, 0.0]
    assert delays[3] == pytest.approx(0.1)
    assert delays[4] == pytest.approx(0.2)
    now[0] += 10  # refills, but never beyond the burst
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.reserve() == pytest.approx(0.1)


async def test_the_global_rate_limit_spreads_retries_of_many_keys() -> None:
    queue = WorkQueue(rate=100, burst=5)
    start = time.monotonic()
    for n in range(15):
        queue.add_rate_limited(f"k{n}")
    got = set()
    while len(got) < 15:
        key = await queue.get()
        got.add(key)
        queue.done(key)
    elapsed = time.monotonic() - start

    # 5 from the burst at once, the 10 others at 100/s: the last about 0.1 s in.
    assert elapsed >= 0.09
    assert elapsed < 0.4


async def test_add_after_delays_and_the_earliest_time_wins() -> None:
    queue = WorkQueue()
    loop = asyncio.get_running_loop()
    start = loop.time()
    queue.add_after("a", 0.3)
    queue.add_after("a", 0.05)  # sooner: replaces
    queue.add_after("a", 0.2)  # later: ignored

    assert queue.delayed == 1
    assert len(queue) == 0
    assert await queue.get() == "a"
    elapsed = loop.time() - start
    assert 0.045 <= elapsed < 0.15
    queue.done("a")
    await asyncio.sleep(0.25)
    assert len(queue) == 0  # the replaced timers did not fire


async def test_add_after_zero_adds_now() -> None:
    queue = WorkQueue()

    queue.add_after("a", 0)

    assert len(queue) == 1


async def test_shutdown_wakes_waiting_workers_and_refuses_adds() -> None:
    queue = WorkQueue()
    queue.add_after("later", 0.05)
    getters = [asyncio.create_task(queue.get()) for _ in range(3)]
    await asyncio.sleep(0.01)

    queue.shutdown()
    results = await asyncio.gather(*getters, return_exceptions=True)
    queue.add("x")

    assert all(isinstance(r, QueueShutDown) for r in results)
    assert len(queue) == 0
    assert queue.delayed == 0
    with pytest.raises(QueueShutDown):
        await queue.get()


async def test_a_cancelled_getter_does_not_swallow_a_key() -> None:
    queue = WorkQueue()
    first = asyncio.create_task(queue.get())
    second = asyncio.create_task(queue.get())
    await asyncio.sleep(0)

    queue.add("a")
    first.cancel()
    done, _ = await asyncio.wait({first, second}, timeout=0.2)

    assert second in done
    assert second.result() == "a"


async def test_resync_readds_every_key_periodically() -> None:
    queue = WorkQueue()
    keys = ["a", "b"]
    task = asyncio.create_task(resync(queue, lambda: keys, 0.05))
    try:
        assert len(queue) == 0
        await asyncio.sleep(0.07)
        assert await drain(queue) == ["a", "b"]
        keys.append("c")
        await asyncio.sleep(0.05)
        assert await drain(queue) == ["a", "b", "c"]
    finally:
        task.cancel()
    with pytest.raises(ValueError, match="positive"):
        await resync(queue, lambda: keys, 0)
