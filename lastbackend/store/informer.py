"""Informer: an in-memory cache of one etcd prefix, kept current by list + watch.

One task (:meth:`Informer.run`) owns the cache; nothing else writes it, and it changes only
between ``await`` points of that task, so readers on the same loop (reconcilers, handlers) always
see a state etcd actually had, with no locks.

The protocol (DESIGN.md section 5):

1. **List** the prefix at one revision (``store.etcd.list_prefix``: pages pinned to the first
   page's revision, so the snapshot is one moment of the tree however large it is) and emit the
   difference against the cache. The first list emits a put per key and then sets :attr:`synced`.
2. **Watch** from the list's revision + 1, without ``prev_kv``: the value before a change is
   the cache's own (what a handler gets as ``old``), so etcd need not send it again and the
   watch thread need not decode it (half the bytes of every update). The store's watch resumes
   a broken stream by itself (an etcd restart costs nothing but a pause); if anything else ends
   it, the informer reopens it from :attr:`revision` + 1.
3. On :class:`~lastbackend.store.etcd.Compacted` (the history it needs is gone), go back to 1:
   the relist emits puts for new or changed keys and **deletes for keys that vanished**, so a
   handler never keeps an object etcd no longer has.

Exactly once, in order: the store's watch never repeats or skips an event across reconnects.
The one replay left is the informer's own: cancelled inside an async handler, half-way through
a batch. So :attr:`revision` only moves when a whole batch has been applied, the events applied
past it are counted, and a reopened watch (from :attr:`revision` + 1, so it delivers those same
events first, in the same order) skips that many. A revision that a batch only half applied is
not skipped, and nothing is emitted twice.

Handlers are called as ``handler(key, old, new)`` with the raw etcd key and the cached
:class:`~lastbackend.store.etcd.KV` before and after (``None`` for "absent"), after the cache has
changed. They may be plain functions or coroutines; they run inline, in order, so they should be
quick (enqueue a key and return). A handler that raises is logged and does not stop the others.

``to_key`` maps a raw key to a *work key*, or ``None`` to ignore the key entirely. Many raw keys
may share a work key (``projects/<pid>/services/<sid>/{meta,config,image}`` -> ``<pid>/<sid>``);
:meth:`Informer.objects` returns one work key's raw keys from an index kept alongside the cache,
and :meth:`Informer.work_keys` lists them for a resync.

**Sharing.** Several controllers in one process watch the same prefixes (``projects/``: the
services, builds and gc controllers). :class:`Informers` is a per-process registry that runs one
unfiltered :class:`Informer` per prefix (one list, one watch, one cache) and hands out a
:class:`KeyedView` per (prefix, key map): the view keeps its own work-key index and handlers over
the shared cache, so two controllers with the same prefix and key map get the same view, and two
with different key maps still share the watch. The informer runs while anyone holds a view of it
and is stopped (its cache dropped) when the last one is released.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

import structlog

from lastbackend import codec
from lastbackend.store.etcd import KV, Compacted, Etcd, StoreError, WatchBatch, list_prefix

T = TypeVar("T")

RETRY_MIN = 0.1
YIELD_EVERY = 2000
"""Keys of the first list applied between two yields to the loop."""
RETRY_MAX = 5.0

Handler = Callable[[str, KV | None, KV | None], Awaitable[None] | None]
KeyMap = Callable[[str], str | None]

log = structlog.get_logger("lastbackend.store.informer")


def _identity(key: str) -> str | None:
    return key


class Informer:
    """List + watch one prefix into a cache and tell handlers what changed."""

    def __init__(
        self,
        etcd: Etcd,
        prefix: str,
        *,
        to_key: KeyMap | None = None,
        keep: Callable[[str], bool] | None = None,
        name: str = "",
        progress_notify: bool = True,
    ) -> None:
        self.etcd = etcd
        self.prefix = prefix
        self.name = name or prefix
        self.progress_notify = progress_notify
        self._to_key: KeyMap = to_key or _identity
        if keep is not None:
            if to_key is not None:
                raise ValueError("give a key map or a keep filter, not both")
            self._to_key = lambda key: key if keep(key) else None
        # Without a key map every raw key is its own work key: no index is kept (it would cost a
        # dict per key), and :meth:`objects` answers from the cache.
        self._grouped = to_key is not None
        self._handlers: list[Handler] = []
        self._cache: dict[str, KV] = {}
        self._work: dict[str, str] = {}  # raw key -> work key
        self._groups: dict[str, dict[str, KV]] = {}  # work key -> raw key -> KV
        self._decoded: dict[str, tuple[int, Any, Any]] = {}  # raw key -> (mod revision, cls, value)
        self._needs_list = True
        self._applied = 0  # events past self.revision already applied (a batch cut short)
        self._skip = 0  # events still to skip on a reopened watch
        self.revision = 0
        """Every change under the prefix up to this revision is in the cache."""
        self.synced = asyncio.Event()
        """Set once the first list has been delivered to the handlers; stays set."""
        self.lists = 0
        """How many lists were made (1 + relists after compaction): for tests and metrics."""
        self.watches = 0
        """How many watch streams were opened (1 + reopens): for tests and metrics."""
        self.applying = False
        """True while a list or a batch is half applied: the cache is then no state etcd had."""
        self._waiters: dict[int, asyncio.Future[None]] = {}  # revision -> set when reached

    def __repr__(self) -> str:
        return f"<Informer {self.name!r} keys={len(self._cache)} revision={self.revision}>"

    # reading the cache -------------------------------------------------------------------------

    @property
    def cache(self) -> Mapping[str, KV]:
        """A read-only live view of raw key -> KV."""
        return MappingProxyType(self._cache)

    def get(self, key: str) -> KV | None:
        return self._cache.get(key)

    def decoded(self, kv: KV, cls: type[T]) -> T:
        """``kv``'s value as ``cls``, decoded once per (key, mod revision): reconciles read the
        same unchanged values over and over, and decoding them again each time is most of the
        cost of a reconcile over many pods. Treat the result as immutable."""
        hit = self._decoded.get(kv.key)
        if hit is not None and hit[0] == kv.mod_revision and hit[1] is cls:
            return hit[2]  # type: ignore[no-any-return]
        value = codec.loads(kv.value, cls)
        self._decoded[kv.key] = (kv.mod_revision, cls, value)
        return value

    def work_key(self, key: str) -> str | None:
        """The work key of a raw key (``None``: the informer ignores it)."""
        return self._to_key(key)

    def work_keys(self) -> list[str]:
        """Every work key with at least one cached raw key (what a resync re-adds)."""
        return list(self._groups) if self._grouped else list(self._cache)

    def objects(self, work_key: str) -> dict[str, KV]:
        """The cached raw keys of one work key (a copy: safe to hold across ``await``)."""
        if not self._grouped:
            kv = self._cache.get(work_key)
            return {work_key: kv} if kv is not None else {}
        return dict(self._groups.get(work_key, {}))

    async def wait_for(self, revision: int, within: float) -> bool:
        """Wait until the cache holds etcd's state at ``revision`` or later, with no batch half
        applied; False after ``within`` seconds. On True the caller reads the cache before its
        next ``await``: what it reads is then the tree at :attr:`revision`, exactly."""
        if self.revision >= revision and not self.applying:
            return True
        waiter = self._waiters.get(revision)
        if waiter is None:
            waiter = self._waiters[revision] = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(within):
                await asyncio.shield(waiter)
        except TimeoutError:
            return False
        # Woken when a batch ended; another may have begun since only if we were not run at once.
        return self.revision >= revision and not self.applying

    def _wake(self) -> None:
        for revision in [r for r in self._waiters if r <= self.revision]:
            waiter = self._waiters.pop(revision)
            if not waiter.done():
                waiter.set_result(None)

    # handlers ----------------------------------------------------------------------------------

    def add_handler(self, handler: Handler) -> None:
        """Call ``handler(key, old, new)`` for every change from now on (and the first list)."""
        self._handlers.append(handler)

    def remove_handler(self, handler: Handler) -> None:
        """Stop calling ``handler`` (a no-op if it is not registered)."""
        if handler in self._handlers:
            self._handlers.remove(handler)

    # running -----------------------------------------------------------------------------------

    async def run(self) -> None:
        """List, then watch, forever; cancel the task to stop.

        The state survives cancellation: running again resumes from :attr:`revision`.
        """
        delay = RETRY_MIN
        while True:
            try:
                if self._needs_list:
                    await self._relist()
                self._skip = self._applied
                self.watches += 1
                async for batch in self.etcd.watch_batches(
                    self.prefix,
                    start_revision=self.revision + 1,
                    prev_kv=False,
                    progress_notify=self.progress_notify,
                ):
                    await self._apply(batch)
                    delay = RETRY_MIN
            except Compacted as exc:
                log.info(
                    "informer history compacted, relisting",
                    informer=self.name,
                    revision=self.revision,
                    compact_revision=exc.compact_revision,
                )
                self._needs_list = True
            except StoreError as exc:
                log.warning("informer stream failed", informer=self.name, error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    async def _list(self) -> tuple[int, dict[str, KV]]:
        revision, kvs = await list_prefix(
            self.etcd, self.prefix, keep=lambda key: self._to_key(key) is not None
        )
        return revision, {kv.key: kv for kv in kvs}

    async def _relist(self) -> None:
        revision, snapshot = await self._list()
        self.lists += 1
        self.applying = True
        for key in [k for k in self._cache if k not in snapshot]:
            old = self._remove(key)
            await self._emit(key, old, None)
        first = not self.synced.is_set()
        for n, (key, kv) in enumerate(snapshot.items(), 1):
            old = self._cache.get(key)
            if old is None or old.mod_revision != kv.mod_revision:
                self._store(kv)
                await self._emit(key, old, kv)
            if first and n % YIELD_EVERY == 0:
                # Nobody reads a cache before it synced, so the first list of a large prefix
                # can let the loop run (lease renewals, /readyz) between chunks; a relist may
                # not: readers would see a half-applied tree.
                await asyncio.sleep(0)
        self.revision = revision
        self.applying = False
        self._applied = 0
        self._needs_list = False
        self._wake()
        if not self.synced.is_set():
            log.info(
                "informer synced", informer=self.name, keys=len(self._cache), revision=revision
            )
            self.synced.set()

    async def _apply(self, batch: WatchBatch) -> None:
        self.applying = bool(batch.events)
        for event in batch.events:
            if self._skip:
                self._skip -= 1  # applied before this watch was reopened
                continue
            self._applied += 1
            key = event.kv.key
            if self._to_key(key) is None:
                continue
            old = self._cache.get(key)
            if event.kind == "delete":
                if old is None:
                    continue  # a key this informer never had
                self._remove(key)
                await self._emit(key, old, None)
            else:
                self._store(event.kv)
                await self._emit(key, old, event.kv)
        self.revision = max(self.revision, batch.revision)
        self.applying = False
        # Whatever is still to skip lies past the batch: it is what stays applied past revision.
        self._applied = self._skip
        self._wake()

    def _store(self, kv: KV) -> None:
        self._cache[kv.key] = kv
        if not self._grouped:
            return
        work = self._work.get(kv.key)
        if work is None:
            work = self._to_key(kv.key)
            assert work is not None
            self._work[kv.key] = work
        self._groups.setdefault(work, {})[kv.key] = kv

    def _remove(self, key: str) -> KV:
        old = self._cache.pop(key)
        self._decoded.pop(key, None)
        if not self._grouped:
            return old
        work = self._work.pop(key)
        group = self._groups[work]
        del group[key]
        if not group:
            del self._groups[work]
        return old

    async def _emit(self, key: str, old: KV | None, new: KV | None) -> None:
        await self._call(self._handlers, key, old, new)

    async def _call(
        self, handlers: list[Handler], key: str, old: KV | None, new: KV | None
    ) -> None:
        for handler in list(handlers):
            try:
                result = handler(key, old, new)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("informer handler failed", informer=self.name, key=key)


class KeyedView:
    """One key map's view of a shared :class:`Informer` (see "Sharing" in the module docstring).

    It reads like an informer (``cache``, ``get``, ``objects``, ``work_keys``, ``revision``,
    ``synced``) but holds only the raw keys its map keeps, grouped by its work keys, and calls
    its own handlers. Created on an informer that has already synced, it indexes the cache as it
    stands (no ``await`` in between, so no change is missed); its handlers then hear only later
    changes, so a consumer joining late reads :meth:`work_keys` once after :attr:`synced`.
    """

    def __init__(self, informer: Informer, to_key: KeyMap | None, name: str = "") -> None:
        self.informer = informer
        self.prefix = informer.prefix
        self.name = name or informer.name
        self._to_key: KeyMap = to_key or _identity
        # Without a key map the view is the informer's whole cache: nothing to index.
        self._all = to_key is None
        self._handlers: list[Handler] = []
        self._cache: dict[str, KV] = {}
        self._work: dict[str, str] = {}
        self._groups: dict[str, dict[str, KV]] = {}
        if not self._all:
            for key, kv in informer.cache.items():
                self._index(key, kv)
        informer.add_handler(self._changed)

    def __repr__(self) -> str:
        return f"<KeyedView {self.name!r} keys={len(self._cache)} revision={self.revision}>"

    @property
    def revision(self) -> int:
        return self.informer.revision

    @property
    def synced(self) -> asyncio.Event:
        return self.informer.synced

    @property
    def cache(self) -> Mapping[str, KV]:
        return self.informer.cache if self._all else MappingProxyType(self._cache)

    def get(self, key: str) -> KV | None:
        return self.informer.get(key) if self._all else self._cache.get(key)

    def decoded(self, kv: KV, cls: type[T]) -> T:
        return self.informer.decoded(kv, cls)

    def work_key(self, key: str) -> str | None:
        return self._to_key(key)

    def work_keys(self) -> list[str]:
        return self.informer.work_keys() if self._all else list(self._groups)

    def objects(self, work_key: str) -> dict[str, KV]:
        if self._all:
            return self.informer.objects(work_key)
        return dict(self._groups.get(work_key, {}))

    def add_handler(self, handler: Handler) -> None:
        self._handlers.append(handler)

    def remove_handler(self, handler: Handler) -> None:
        if handler in self._handlers:
            self._handlers.remove(handler)

    def detach(self) -> None:
        """Stop following the informer (the registry calls this on the view's last release)."""
        self.informer.remove_handler(self._changed)
        self._handlers.clear()

    def _index(self, key: str, kv: KV) -> bool:
        work = self._work.get(key) or self._to_key(key)
        if work is None:
            return False
        self._work[key] = work
        self._cache[key] = kv
        self._groups.setdefault(work, {})[key] = kv
        return True

    async def _changed(self, key: str, old: KV | None, new: KV | None) -> None:
        if self._all:
            pass
        elif new is not None:
            if not self._index(key, new):
                return
        else:
            work = self._work.pop(key, None)
            if work is None:
                return
            del self._cache[key]
            group = self._groups[work]
            del group[key]
            if not group:
                del self._groups[work]
        await self.informer._call(self._handlers, key, old, new)


class Informers:
    """One shared informer per prefix for a process, and a :class:`KeyedView` per key map.

    :meth:`acquire` starts the prefix's informer on first use; :meth:`release` stops it when no
    view is held any more, so a consumer that comes back later starts from a fresh list, as it
    did when each one had an informer of its own.
    """

    def __init__(self, etcd: Etcd, *, progress_notify: bool = True) -> None:
        self.etcd = etcd
        self.progress_notify = progress_notify
        self._informers: dict[str, Informer] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._views: dict[tuple[str, KeyMap | None], KeyedView] = {}
        self._holds: dict[tuple[str, KeyMap | None], int] = {}

    def __repr__(self) -> str:
        return f"<Informers prefixes={sorted(self._informers)}>"

    def informer(self, prefix: str) -> Informer | None:
        """The running informer of ``prefix``, if anyone holds a view of it."""
        return self._informers.get(prefix)

    def task(self, prefix: str) -> asyncio.Task[None]:
        """The task running ``prefix``'s informer: await it (shielded) to notice it failing."""
        return self._tasks[prefix]

    def acquire(self, prefix: str, *, to_key: KeyMap | None = None, name: str = "") -> KeyedView:
        """The view of ``prefix`` under ``to_key`` (the same object for the same pair), with the
        prefix's informer started if it was not running; pair with :meth:`release`."""
        informer = self._informers.get(prefix)
        if informer is None:
            informer = Informer(self.etcd, prefix, progress_notify=self.progress_notify)
            self._informers[prefix] = informer
            self._tasks[prefix] = asyncio.create_task(
                informer.run(), name=f"informer-{informer.name}"
            )
        handle = (prefix, to_key)
        view = self._views.get(handle)
        if view is None:
            view = self._views[handle] = KeyedView(informer, to_key, name=name or prefix)
        self._holds[handle] = self._holds.get(handle, 0) + 1
        return view

    async def release(self, view: KeyedView) -> None:
        """Give back one hold of ``view``; the last hold of a prefix stops its informer."""
        handle = next((h for h, v in self._views.items() if v is view), None)
        if handle is None:
            return  # closed meanwhile
        self._holds[handle] -= 1
        if self._holds[handle] > 0:
            return
        del self._holds[handle], self._views[handle]
        view.detach()
        prefix = handle[0]
        if any(h[0] == prefix for h in self._views):
            return
        del self._informers[prefix]
        task = self._tasks.pop(prefix)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def close(self) -> None:
        """Stop every informer (views still held stop hearing changes)."""
        for view in list(self._views.values()):
            view.detach()
        self._views.clear()
        self._holds.clear()
        self._informers.clear()
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
