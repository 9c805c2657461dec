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
import collections
import concurrent.futures
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_END = object()
_NOTHING = object()


class LoopThread:
    """One daemon thread running one event loop, started and stopped by its owner."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._loop is not None

    def start(self, loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None) -> None:
        """Start the thread on a loop made by ``loop_factory`` (asyncio's own by default)."""
        if self._loop is not None:
            return
        loop = (loop_factory or asyncio.new_event_loop)()
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
        handover: _Handover = _Handover(asyncio.get_running_loop(), there, buffer)

        async def pump() -> None:
            try:
                async for item in produce():
                    await handover.put(item)
            except asyncio.CancelledError:
                handover.end(None)
                raise
            except BaseException as exc:
                handover.end(exc)
            else:
                handover.end(None)

        pumped: concurrent.futures.Future[None] = asyncio.run_coroutine_threadsafe(pump(), there)
        try:
            while True:
                item = await handover.get()
                if item is _END:
                    if handover.error is not None:
                        raise handover.error
                    return
                yield item
        finally:
            pumped.cancel()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _Handover:
    """Items crossing from the thread's loop to the reader's, waking the other side only when it
    waits.

    ``call_soon_threadsafe`` writes to the woken loop's self-pipe and makes its thread take the
    GIL: once per item each way, that was most of what a watch batch cost the process. Here the
    producer wakes the reader only when the reader found nothing to take, and the reader wakes
    the producer only when it had filled ``buffer`` and paused; a reader busy with requests
    takes everything that came meanwhile without a single wake-up.
    """

    def __init__(
        self, here: asyncio.AbstractEventLoop, there: asyncio.AbstractEventLoop, buffer: int
    ) -> None:
        self._here, self._there, self._buffer = here, there, buffer
        self._lock = threading.Lock()
        self._items: collections.deque[Any] = collections.deque()
        self._reader: asyncio.Future[None] | None = None  # on ``here``: the reader waits
        self._room: asyncio.Future[None] | None = None  # on ``there``: the producer waits
        self.error: BaseException | None = None
        """What the producer raised, for the reader once it reaches the end."""

    def _send(self, loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[None]) -> None:
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits any more
            loop.call_soon_threadsafe(_wake, waiter)

    async def put(self, item: Any) -> None:
        """On the thread's loop: hand ``item`` over, pausing while ``buffer`` items wait."""
        with self._lock:
            self._items.append(item)
            reader, self._reader = self._reader, None
            room = None
            if len(self._items) >= self._buffer:
                room = self._room = self._there.create_future()
        if reader is not None:
            self._send(self._here, reader)
        if room is not None:
            await room

    def end(self, error: BaseException | None) -> None:
        """On the thread's loop: no more items (past ``buffer``: the end never waits)."""
        self.error = error
        with self._lock:
            self._items.append(_END)
            reader, self._reader = self._reader, None
        if reader is not None:
            self._send(self._here, reader)

    async def get(self) -> Any:
        """On the reader's loop: the next item, waiting for one if none has come."""
        while True:
            with self._lock:
                if self._items:
                    item = self._items.popleft()
                    room, self._room = self._room, None
                else:
                    waiter = self._reader = self._here.create_future()
                    item = _NOTHING
            if item is _NOTHING:
                await waiter
                continue
            if room is not None:
                self._send(self._there, room)
            return item
