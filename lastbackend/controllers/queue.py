"""The work queue between informers and reconcile workers (client-go's ``workqueue``, on asyncio).

Informers hand it *keys*, never objects: a reconcile reads the current state when it runs, so
ten changes to one service while it waits make one reconcile, not ten (level-triggered).

Guarantees, for any number of producers and worker tasks on one event loop:

- **De-duplication.** A key added while it waits is not queued twice (the ``dirty`` set).
- **No concurrent reconciles of one key.** :meth:`WorkQueue.get` marks a key *processing* until
  :meth:`WorkQueue.done`. A key added meanwhile is only marked dirty and is queued again by
  ``done()``, so the change that arrived during the reconcile is still seen by a later one.
- **Per-key exponential backoff** for failures: :meth:`WorkQueue.add_rate_limited` delays the
  n-th consecutive retry of a key by ``base_delay * 2**n`` (5 ms doubling, capped at 5 min);
  :meth:`WorkQueue.forget` resets the count after a success.
- **A global token bucket** (``rate`` per second, ``burst``) on those retries, so a bad deploy
  that fails every key cannot turn into a storm of reconciles against etcd and Docker. As in
  client-go, plain :meth:`WorkQueue.add` (events, resyncs) is not rate limited: it is already
  bounded by the rate of changes, and delaying it would only delay convergence.
- :meth:`WorkQueue.add_after` schedules an add with ``loop.call_at``; the earliest pending time
  of a key wins, so no timer task and no extra wake-ups are needed.

Everything runs on the event loop thread and no method but :meth:`WorkQueue.get` awaits, so the
bookkeeping needs no locks: each method is atomic with respect to the other tasks.
:meth:`WorkQueue.shutdown` drops what is queued (the next leader relists anyway) and makes every
``get()`` raise :class:`QueueShutDown`.

:func:`resync` re-adds every key of an informer's cache periodically, so that a lost event or a
change outside etcd (a container that died) cannot leave the world wrong forever.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable

DEFAULT_BASE_DELAY = 0.005
DEFAULT_MAX_DELAY = 300.0
DEFAULT_RATE = 50.0
DEFAULT_BURST = 300


class QueueShutDown(Exception):
    """The queue is shut down: workers should return."""


class TokenBucket:
    """A token bucket that *reserves* rather than refuses, like Go's ``rate.Limiter.Reserve``.

    :meth:`reserve` always takes a token and returns how long to wait until that token exists;
    tokens may go negative, which is what makes a burst of reservations queue up at ``rate``.
    """

    def __init__(
        self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def reserve(self) -> float:
        """Take one token; the delay in seconds before it may be used (0 when one is available)."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= 1
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


class WorkQueue:
    """A de-duplicating, rate-limited queue of keys (see the module docstring)."""

    def __init__(
        self,
        *,
        base_delay: float = DEFAULT_BASE_DELAY,
        max_delay: float = DEFAULT_MAX_DELAY,
        rate: float = DEFAULT_RATE,
        burst: int = DEFAULT_BURST,
        name: str = "",
    ) -> None:
        if base_delay <= 0 or max_delay < base_delay:
            raise ValueError("need 0 < base_delay <= max_delay")
        self.name = name
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.bucket = TokenBucket(rate, burst)
        self._queue: deque[str] = deque()  # ready keys, in order
        self._dirty: set[str] = set()  # keys that need a reconcile (queued, or re-added)
        self._processing: set[str] = set()  # keys handed out and not done yet
        self._failures: dict[str, int] = {}
        self._waiting: dict[str, tuple[float, asyncio.TimerHandle]] = {}
        self._getters: list[asyncio.Future[None]] = []
        self._shutting_down = False

    def __len__(self) -> int:
        """Keys ready to be handed out: the queue depth (delayed and processing keys excluded)."""
        return len(self._queue)

    def __repr__(self) -> str:
        return (
            f"<WorkQueue {self.name!r} ready={len(self._queue)} "
            f"processing={len(self._processing)} delayed={len(self._waiting)}>"
        )

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    @property
    def delayed(self) -> int:
        """Keys waiting for an :meth:`add_after` or a backoff to elapse."""
        return len(self._waiting)

    def processing(self, key: str) -> bool:
        """True while ``key`` is handed out and not yet :meth:`done`."""
        return key in self._processing

    def add(self, key: str) -> None:
        """Queue ``key`` now, unless it is already queued (or being processed: then after it)."""
        if self._shutting_down or key in self._dirty:
            return
        self._dirty.add(key)
        if key in self._processing:
            return  # done() queues it again
        self._queue.append(key)
        self._wake()

    def add_after(self, key: str, delay: float) -> None:
        """Queue ``key`` after ``delay`` seconds; an earlier pending time for the key wins."""
        if self._shutting_down:
            return
        if delay <= 0:
            self.add(key)
            return
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        pending = self._waiting.get(key)
        if pending is not None:
            if pending[0] <= when:
                return
            pending[1].cancel()
        self._waiting[key] = (when, loop.call_at(when, self._fire, key))

    def add_rate_limited(self, key: str) -> None:
        """Queue ``key`` again after its backoff (and the global bucket) allow: for failures."""
        self.add_after(key, self.when(key))

    def when(self, key: str) -> float:
        """The delay before the next retry of ``key``, counting this one as a failure."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        backoff = self.max_delay if failures >= 64 else self.base_delay * 2.0**failures
        return max(min(backoff, self.max_delay), self.bucket.reserve())

    def forget(self, key: str) -> None:
        """Reset the backoff of ``key``: its last reconcile succeeded."""
        self._failures.pop(key, None)

    def retries(self, key: str) -> int:
        """Consecutive failures counted for ``key`` since it was last forgotten."""
        return self._failures.get(key, 0)

    async def get(self) -> str:
        """The next key to reconcile; waits for one. Raises :class:`QueueShutDown` when shut down.

        The caller owns the key until it calls :meth:`done`, whatever the reconcile's outcome.
        """
        while True:
            if self._shutting_down:
                raise QueueShutDown(self.name)
            if self._queue:
                key = self._queue.popleft()
                self._processing.add(key)
                self._dirty.discard(key)
                return key
            waiter = asyncio.get_running_loop().create_future()
            self._getters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._getters:
                    self._getters.remove(waiter)

    def done(self, key: str) -> None:
        """Release ``key``; if it was added while processing, queue it again now."""
        self._processing.discard(key)
        if key in self._dirty and not self._shutting_down:
            self._queue.append(key)
            self._wake()

    def shutdown(self) -> None:
        """Stop: drop queued and delayed keys, wake every waiting :meth:`get` to raise."""
        self._shutting_down = True
        for _, handle in self._waiting.values():
            handle.cancel()
        self._waiting.clear()
        self._queue.clear()
        self._dirty.clear()
        self._wake()

    def _fire(self, key: str) -> None:
        self._waiting.pop(key, None)
        self.add(key)

    def _wake(self) -> None:
        # Wake every waiting getter: each re-checks the queue, so a getter cancelled between
        # being woken and running cannot swallow a key (the workers are few).
        getters, self._getters = self._getters, []
        for waiter in getters:
            if not waiter.done():
                waiter.set_result(None)


async def resync(queue: WorkQueue, keys: Callable[[], Iterable[str]], every: float) -> None:
    """Every ``every`` seconds, :meth:`WorkQueue.add` each key ``keys()`` returns; runs until
    cancelled or the queue shuts down.

    Pass an informer's :meth:`~lastbackend.store.informer.Informer.work_keys`: every
    object it caches is reconciled at least once per period even if no event arrives.
    """
    if every <= 0:
        raise ValueError("a resync period is positive")
    while not queue.shutting_down:
        await asyncio.sleep(every)
        for key in list(keys()):
            queue.add(key)
