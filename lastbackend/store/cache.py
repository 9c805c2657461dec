"""The API's read cache: gets and lists from memory, still linearizable.

A read that starts after a write was acknowledged (by any API process) must see it. The cache is
an :class:`~lastbackend.store.informer.Informer`, so it lags etcd by however long a watch event
takes to arrive; a read from it is made safe the way Kubernetes' consistent reads from its watch
cache are:

1. read etcd's current revision ``R`` (:class:`Revisions`: one cheap call shared by every read
   waiting at that moment). Any write acknowledged before the read began has a revision <= ``R``;
2. wait until the cache has applied ``R`` (:meth:`Informer.wait_for`), then answer from memory
   without an ``await`` in between: the answer is the tree at the cache's revision, which is
   >= ``R`` and <= etcd's revision now, so it lies between the read's start and its end;
3. if the cache has not caught up within :data:`CATCH_UP` seconds (not synced yet, relisting
   after a compaction, its watch broken), read etcd instead. If etcd does not answer step 1 the
   read fails (503): the cache never answers without a fresh revision, so never stale.

**One watch over the whole tree.** The cache watches ``/lastbackend/``, keeping only the keys it
serves (:func:`served`) and skipping the rest, so its revision follows every write to the tree
and reaches ``R`` as soon as the event at ``R`` arrives. A watch of ``projects/`` alone would
stop at its own last event while writes elsewhere move ``R`` on, and could only learn it is
caught up from a progress notification: etcd sends those every 10 minutes by default, and one
asked for (``WatchProgressRequest``) may overtake events still queued on the stream before etcd
3.4.31 / 3.5.13 (etcd-io/etcd#15220; this machine runs 3.4.23), so it proves nothing. Writes
outside ``/lastbackend/`` (an etcd shared with something else) also move ``R``; those reads wait
for a periodic progress notification or fall back to etcd after the bound.

**Step 1 is shared.** :meth:`Revisions.current` joins the next call: a call already in flight may
have been sent before the caller's write was acknowledged, so a caller arriving meanwhile waits
for the one after it. At most one call is in flight, so N concurrent reads cost one etcd round
trip per round, not N.

What is served (:class:`LayoutCache`): projects by id or name and their name-ordered pages. The
name index is derived from the metas (every create, rename and delete moves a project's index key
and its meta in one transaction, so at every revision they agree) and kept sorted as they change,
so a page is a slice, never a re-read of the index.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections.abc import Callable

import attrs
import structlog

from lastbackend.model.common import is_uuid
from lastbackend.model.platform import Meta
from lastbackend.store import keys
from lastbackend.store import projects as project_store
from lastbackend.store import repos as repo_store
from lastbackend.store.etcd import KV, Etcd, StoreUnavailable
from lastbackend.store.informer import Informer
from lastbackend.store.objects import Layout, Page, Record

log = structlog.get_logger("lastbackend.store.cache")

CATCH_UP = 1.0
"""Seconds a read waits for the cache to apply etcd's current revision before reading etcd
instead. A cache that is keeping up applies it within milliseconds (the write's own event); one
that is not (relisting 100,000 keys after a compaction, its watch reconnecting) answers from etcd
meanwhile, one second slower."""


def served(key: str) -> bool:
    """The keys the cache keeps: what :class:`LayoutCache` and :class:`RepoCache` answer from."""
    return key.startswith(keys.REPOS) or keys.project_meta_of(key) is not None


class Revisions:
    """etcd's current revision, one read shared by every caller waiting at that moment."""

    def __init__(self, etcd: Etcd) -> None:
        self.etcd = etcd
        self.calls = 0
        """etcd round trips made (for tests and the benchmark: calls per read)."""
        self._next: asyncio.Future[int] | None = None
        self._task: asyncio.Task[None] | None = None

    async def current(self) -> int:
        """A revision at least that of every write acknowledged before this call; raises
        :class:`StoreUnavailable` when etcd does not answer."""
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
            self._next.add_done_callback(_retrieved)
        waiter = self._next
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._rounds(), name="cache-revisions")
        return await asyncio.shield(waiter)

    async def _rounds(self) -> None:
        while self._next is not None:
            waiter, self._next = self._next, None
            self.calls += 1
            try:
                revision = await self.etcd.status()
            except asyncio.CancelledError:
                waiter.set_exception(StoreUnavailable("the revision read was cancelled"))
                raise
            except Exception as exc:
                waiter.set_exception(exc)
            else:
                waiter.set_result(revision)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _retrieved(future: asyncio.Future[int]) -> None:
    # Every waiter's caller reads it, unless cancelled meanwhile: then nobody would, and asyncio
    # would log the exception as never retrieved.
    if not future.cancelled():
        future.exception()


class LayoutCache:
    """One layout's objects from the cache: by id, by name, and pages in name order.

    Only for layouts whose parts are all kept by :func:`served` (projects: one ``meta``).
    """

    def __init__(
        self, cache: ReadCache, layout: Layout, meta_of: Callable[[str], str | None]
    ) -> None:
        self.cache = cache
        self.layout = layout
        self._meta_of = meta_of
        self._ids: dict[str, str] = {}  # name -> id
        self._names: dict[str, str] = {}  # id -> name
        self._order: list[str] = []  # names in index-key order
        self._records: dict[str, Record] = {}  # id -> the record, made on first read
        cache.informer.add_handler(self._changed)

    def __len__(self) -> int:
        return len(self._order)

    async def fresh(self) -> bool:
        return await self.cache.fresh()

    def _changed(self, key: str, old: KV | None, new: KV | None) -> None:
        oid = self._meta_of(key)
        if oid is None:
            return
        self._records.pop(oid, None)
        gone = self._names.pop(oid, None)
        if gone is not None:
            # Guarded: within one batch another object may already hold the name (a delete
            # and a create of the same name applied in the other order).
            if self._ids.get(gone) == oid:
                del self._ids[gone]
            del self._order[bisect.bisect_left(self._order, gone)]
        if new is not None:
            name = self.cache.informer.decoded(new, Meta).name
            self._names[oid] = name
            self._ids[name] = oid
            # An index key is the index prefix + the name, and str order is UTF-8 byte order, so
            # names sort as etcd sorts their index keys.
            bisect.insort(self._order, name)

    def record(self, oid: str) -> Record | None:
        made = self._records.get(oid)
        if made is not None:
            return made
        kvs = {part: self.cache.informer.get(key) for part, key in self.layout.parts(oid).items()}
        meta = kvs.get("meta")
        if meta is None:
            return None
        values = {
            part: self.cache.informer.decoded(kv, self.layout.codecs[part].cls)
            for part, kv in kvs.items()
            if kv is not None
        }
        made = self._records[oid] = Record(oid, values, kvs)
        return made

    def find(self, ref: str) -> Record | None:
        """By id or name; ``None``: no such object (at the cache's revision)."""
        oid = ref if is_uuid(ref) else self._ids.get(ref)
        return self.record(oid) if oid is not None else None

    def page(self, *, page: int, per_page: int, descending: bool = False) -> Page:
        total = len(self._order)
        start = (page - 1) * per_page
        if descending:
            names = self._order[max(0, total - start - per_page) : max(0, total - start)][::-1]
        else:
            names = self._order[start : start + per_page]
        records = [r for r in (self.record(self._ids[n]) for n in names) if r is not None]
        return Page(records=records, total=total, revision=self.cache.informer.revision)


class ReadCache:
    """The API process's cache: one watch over the tree, and what is served from it."""

    def __init__(self, etcd: Etcd, *, catch_up: float = CATCH_UP) -> None:
        self.etcd = etcd
        self.catch_up = catch_up
        self.informer = Informer(etcd, keys.ROOT, keep=served, name="api-cache")
        self.revisions = Revisions(etcd)
        self.projects = LayoutCache(self, project_store.LAYOUT, keys.project_meta_of)
        self.repos = RepoCache(self)
        self.hits = 0
        self.fallbacks = 0
        """Reads answered from memory, and reads that went to etcd because the cache lagged."""
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.informer.run(), name="api-cache")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.revisions.close()

    async def fresh(self) -> bool:
        """Whether a read that began before this call may be answered from memory now (see the
        module docstring); raises :class:`StoreUnavailable` when etcd cannot say."""
        if not self.informer.synced.is_set():
            self.fallbacks += 1
            return False
        revision = await self.revisions.current()
        if await self.informer.wait_for(revision, self.catch_up):
            self.hits += 1
            return True
        self.fallbacks += 1
        log.info(
            "read cache behind, reading etcd",
            revision=revision,
            cache_revision=self.informer.revision,
        )
        return False


def _containing(key: str) -> list[str]:
    """The subtrees a ``repos/`` key lies in, widest first: all repos, its repo, branch, tag."""
    parts = key[len(keys.REPOS) :].split("/")
    found = [keys.REPOS]
    if len(parts) >= 2:
        found.append(f"{found[-1]}{parts[0]}/")
        if len(parts) >= 4 and parts[1] == "branches":
            found.append(f"{found[-1]}branches/{parts[2]}/")
            if len(parts) >= 6 and parts[3] == "tags":
                found.append(f"{found[-1]}tags/{parts[4]}/")
    return found


class RepoCache:
    """Build tags (``store.repos``) from the cache: every subtree's keys kept as they change, and
    each subtree's nested object and its document view built once per change, on first read.

    ``GET /api/data`` over 300 tags then costs a dict lookup and the JSON encoding, not a range
    read of every key and a rebuild of every object.
    """

    def __init__(self, cache: ReadCache) -> None:
        self.cache = cache
        self._under: dict[str, dict[str, KV]] = {}  # subtree prefix -> its keys
        self._built: dict[str, repo_store.Built] = {}  # subtree prefix -> what it reads as
        cache.informer.add_handler(self._changed)

    async def fresh(self) -> bool:
        return await self.cache.fresh()

    def _changed(self, key: str, old: KV | None, new: KV | None) -> None:
        if not key.startswith(keys.REPOS):
            return
        for prefix in _containing(key):
            self._built.pop(prefix, None)
            if new is not None:
                self._under.setdefault(prefix, {})[key] = new
            else:
                under = self._under.get(prefix)
                if under is not None:
                    under.pop(key, None)
                    if not under:
                        del self._under[prefix]

    def read(self, ids: repo_store.Ids) -> repo_store.Built:
        """The keys :meth:`Repos.get` would read for ``ids`` (``()``: every repo), built."""
        if len(ids) == 4:
            kv = self.cache.informer.get(keys.repo_key(ids))
            return repo_store.build([kv] if kv is not None else [], self.cache.informer.revision)
        prefix = keys.repo_object(ids) if ids else keys.REPOS
        built = self._built.get(prefix)
        if built is None:
            kvs = self._under.get(prefix, {}).values()
            built = self._built[prefix] = repo_store.build(kvs, self.cache.informer.revision)
        return attrs.evolve(built, revision=self.cache.informer.revision)
