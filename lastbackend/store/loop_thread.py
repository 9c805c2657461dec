"""An event loop on a thread of its own, whose async iterators another loop reads.

The etcd client reads its watches here (:class:`~lastbackend.store.etcd.Etcd`), so that a
process's request handlers and the watch streams feeding its informers and event streams do not
wait on each other: gRPC's reads, the decoding of every event and the reconnect loops run on this
thread, and the process's own loop only takes finished batches off a queue.

Items cross in order, one queue per iterator, and at most ``buffer`` of them wait at a time (the
producer pauses until the reader takes one), so a slow reader holds back its own stream only. An
exception raised by the producer is raised to the reader after the items before it; a reader
that stops reading (its generator closed or cancelled) cancels the producer on this thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_END = object()


class LoopThread:
    """One daemon thread running one event loop, started and stopped by its owner."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._loop is not None

    def start(self) -> None:
        if self._loop is not None:
            return
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def main() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            try:
                loop.run_forever()
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

        self._thread = threading.Thread(target=main, name=self.name, daemon=True)
        self._thread.start()
        ready.wait()
        self._loop = loop

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel what still runs there, close the loop and join the thread."""
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError(f"{self.name}: the loop thread is not running")
        return self._loop

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the thread's loop and wait for its result on the caller's."""
        future = asyncio.run_coroutine_threadsafe(coro, self._running_loop())
        return await asyncio.wrap_future(future)

    async def iterate(
        self, produce: Callable[[], AsyncIterator[T]], *, buffer: int = 64
    ) -> AsyncIterator[T]:
        """The items of ``produce()``, an async iterator made and run on the thread's loop."""
        there = self._running_loop()
        here = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[Any, BaseException | None]] = asyncio.Queue()
        room: list[asyncio.Semaphore] = []  # made on the thread's loop, by the pump

        def deliver(item: Any, error: BaseException | None = None) -> None:
            # never blocks: the semaphore bounds the items, and the end comes once
            with contextlib.suppress(RuntimeError):  # the reader's loop is closed: nobody reads
                here.call_soon_threadsafe(queue.put_nowait, (item, error))

        async def pump() -> None:
            slots = asyncio.Semaphore(buffer)
            room.append(slots)
            try:
                async for item in produce():
                    await slots.acquire()
                    deliver(item)
            except asyncio.CancelledError:
                deliver(_END)
                raise
            except BaseException as exc:
                deliver(_END, exc)
            else:
                deliver(_END)

        pumped: concurrent.futures.Future[None] = asyncio.run_coroutine_threadsafe(pump(), there)
        try:
            while True:
                item, error = await queue.get()
                if item is _END:
                    if error is not None:
                        raise error
                    return
                with contextlib.suppress(RuntimeError):  # stopped: the end is on its way
                    there.call_soon_threadsafe(room[0].release)
                yield item
        finally:
            pumped.cancel()
