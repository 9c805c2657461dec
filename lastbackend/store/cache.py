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
for a periodic progress notification or fall back to etcd after the bound, and for one bound
after such a fallback reads wait only :data:`BRIEF` before going to etcd.

**Step 1 is shared.** :meth:`Revisions.current` joins the next call: a call already in flight may
have been sent before the caller's write was acknowledged, so a caller arriving meanwhile waits
for the one after it. At most one call is in flight, so N concurrent reads cost one etcd round
trip per round, not N.

What is served: projects and services by id or name and their name-ordered pages
(:class:`LayoutCache`; a service with every part, its rollout ``status`` included), the apps of
``/v3`` over them (``store.apps``), and the build tags, every level and ``/api/data``
(:class:`RepoCache`). A name index is derived from the metas (every create, rename and delete
moves an object's index key and its meta in one transaction, so at every revision they agree)
and kept sorted as they change, so a page is a slice, never a re-read of the index. The other
families (containers, builds, packages, droplets, images, registries...) read etcd.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import structlog

from lastbackend.model.common import is_uuid
from lastbackend.model.platform import Meta
from lastbackend.store import keys
from lastbackend.store import projects as project_store
from lastbackend.store import repos as repo_store
from lastbackend.store import services as service_store
from lastbackend.store.etcd import KV, Etcd, StoreUnavailable
from lastbackend.store.informer import Informer
from lastbackend.store.objects import Page, Part, Record

log = structlog.get_logger("lastbackend.store.cache")

CATCH_UP = 1.0
"""Seconds a read waits for the cache to apply etcd's current revision before reading etcd
instead. A cache that is keeping up applies it within milliseconds (the write's own event); one
that is not (relisting 100,000 keys after a compaction, its watch reconnecting) answers from etcd
meanwhile, one second slower."""


BRIEF = 0.02
"""Seconds a read waits instead, for one :data:`CATCH_UP` after a read found the cache behind:
long enough for an event already on its way, so a lagging cache costs one read a second the
whole bound rather than every read."""


class Revisions:
    """etcd's current revision, one read shared by every caller waiting at that moment."""

    def __init__(self, etcd: Etcd) -> None:
        self.etcd = etcd
        self.calls = 0
        """etcd round trips made (for tests and the benchmark: calls per read)."""
        self._waiting: list[asyncio.Future[int]] = []  # for the next call
        self._task: asyncio.Task[None] | None = None

    async def current(self) -> int:
        """A revision at least that of every write acknowledged before this call; raises
        :class:`StoreUnavailable` when etcd does not answer."""
        # A future per caller, resolved by the round itself: a shared future behind
        # asyncio.shield would cost every read an extra callback and a turn of the loop.
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._rounds(), name="cache-revisions")
        return await waiter

    async def _rounds(self) -> None:
        while self._waiting:
            waiters, self._waiting = self._waiting, []
            self.calls += 1
            try:
                revision = await self.etcd.status()
            except asyncio.CancelledError:
                _fail(waiters, StoreUnavailable("the revision read was cancelled"))
                raise
            except Exception as exc:
                _fail(waiters, exc)
            else:
                for waiter in waiters:
                    if not waiter.done():  # done: its caller was cancelled meanwhile
                        waiter.set_result(revision)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        waiters, self._waiting = self._waiting, []
        _fail(waiters, StoreUnavailable("the read cache is closed"))


def _fail(waiters: list[asyncio.Future[int]], exc: BaseException) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_exception(exc)


PartOf = Callable[[str], tuple[str, str, str] | None]
"""A raw key -> (group, object id, part) for the part keys of one kind; ``None`` for others."""


def _project_part(key: str) -> tuple[str, str, str] | None:
    pid = keys.project_meta_of(key)
    return ("", pid, "meta") if pid is not None else None


def _service_part(key: str) -> tuple[str, str, str] | None:
    found = keys.service_part_of(key)
    if found is None:
        return None
    ref, part = found
    return ref.project, ref.service, part


def served(key: str) -> bool:
    """The keys the cache keeps: what :class:`LayoutCache` and :class:`RepoCache` answer from."""
    return (
        key.startswith(keys.REPOS)
        or keys.project_meta_of(key) is not None
        or keys.service_part_of(key) is not None
    )


def _service_parts(pid: str, sid: str) -> dict[str, str]:
    return {part: keys.service_part(pid, sid, part) for part in service_store.PARTS}


class _Names:
    """One group's name index, kept sorted: a page is a slice."""

    def __init__(self) -> None:
        self.ids: dict[str, str] = {}  # name -> id
        self.order: list[str] = []  # names in index-key order

    def add(self, name: str, oid: str) -> None:
        self.ids[name] = oid
        # An index key is the index prefix + the name, and str order is UTF-8 byte order, so
        # names sort as etcd sorts their index keys.
        bisect.insort(self.order, name)

    def remove(self, name: str, oid: str) -> None:
        # Guarded: within one batch another object may already hold the name (a delete and a
        # create of the same name applied in the other order).
        if self.ids.get(name) == oid:
            del self.ids[name]
        del self.order[bisect.bisect_left(self.order, name)]


class LayoutCache:
    """One kind of object from the cache: by id, by name, and pages in name order, per group.

    A group is what one name index covers: every project (one group, ``""``), or the services
    of one project (a group per project id). Only for kinds whose parts are all kept by
    :func:`served`. A record is made on first read and dropped when any of its parts changes.
    """

    def __init__(
        self,
        cache: ReadCache,
        part_of: PartOf,
        parts: Callable[[str, str], Mapping[str, str]],
        codecs: Mapping[str, Part],
    ) -> None:
        self.cache = cache
        self._part_of = part_of
        self._parts = parts  # (group, id) -> {part: key}
        self._codecs = codecs
        self._groups: dict[str, _Names] = {}
        self._names: dict[str, str] = {}  # id -> name
        self._group_of: dict[str, str] = {}  # id -> group
        self._records: dict[tuple[str, str], Record] = {}  # made on first read
        cache.informer.add_handler(self._changed)

    def __len__(self) -> int:
        return len(self._names)

    def _changed(self, key: str, old: KV | None, new: KV | None) -> None:
        found = self._part_of(key)
        if found is None:
            return
        group, oid, part = found
        self._records.pop((group, oid), None)
        if part != "meta":
            return
        gone = self._names.pop(oid, None)
        self._group_of.pop(oid, None)
        if gone is not None:
            names = self._groups[group]
            names.remove(gone, oid)
            if not names.order:
                del self._groups[group]
        if new is not None:
            name = self.cache.informer.decoded(new, Meta).name
            self._names[oid] = name
            self._group_of[oid] = group
            self._groups.setdefault(group, _Names()).add(name, oid)

    @property
    def revision(self) -> int:
        return self.cache.informer.revision

    async def fresh(self) -> bool:
        return await self.cache.fresh()

    def group_of(self, oid: str) -> str | None:
        """The group of object ``oid`` (a service's project id); ``None``: no such object."""
        return self._group_of.get(oid)

    def everything(self) -> list[tuple[str, str]]:
        """(group, id) of every object, at the cache's revision."""
        return [(group, oid) for oid, group in self._group_of.items()]

    def of(self, group: str) -> CachedGroup:
        """The objects of one group, as ``store.objects.Objects`` reads them."""
        return CachedGroup(self, group)

    def record(self, group: str, oid: str) -> Record | None:
        made = self._records.get((group, oid))
        if made is not None:
            return made
        kvs = {part: self.cache.informer.get(key) for part, key in self._parts(group, oid).items()}
        if kvs.get("meta") is None:
            return None
        values = {part: self._decoded(part, kv) for part, kv in kvs.items() if kv is not None}
        made = self._records[group, oid] = Record(oid, values, kvs)
        return made

    def _decoded(self, part: str, kv: KV) -> Any:
        codec = self._codecs[part]
        return kv.value.decode() if codec.bare else self.cache.informer.decoded(kv, codec.cls)

    def find(self, group: str, ref: str) -> Record | None:
        if is_uuid(ref):
            oid: str | None = ref
        else:
            names = self._groups.get(group)
            oid = names.ids.get(ref) if names is not None else None
        return self.record(group, oid) if oid is not None else None

    def page(self, group: str, *, page: int, per_page: int, descending: bool = False) -> Page:
        names = self._groups.get(group)
        order = names.order if names is not None else []
        total = len(order)
        start = (page - 1) * per_page
        if descending:
            chosen = order[max(0, total - start - per_page) : max(0, total - start)][::-1]
        else:
            chosen = order[start : start + per_page]
        ids = names.ids if names is not None else {}
        records = [r for r in (self.record(group, ids[n]) for n in chosen) if r is not None]
        return Page(records=records, total=total, revision=self.cache.informer.revision)


@attrs.frozen
class CachedGroup:
    """One group of a :class:`LayoutCache`: the ``store.objects.Cached`` that ``Objects`` reads."""

    kind: LayoutCache
    group: str

    def __len__(self) -> int:
        names = self.kind._groups.get(self.group)
        return len(names.order) if names is not None else 0

    async def fresh(self) -> bool:
        return await self.kind.cache.fresh()

    def find(self, ref: str) -> Record | None:
        """By id or name; ``None``: no such object in this group (at the cache's revision)."""
        return self.kind.find(self.group, ref)

    def page(self, *, page: int, per_page: int, descending: bool = False) -> Page:
        return self.kind.page(self.group, page=page, per_page=per_page, descending=descending)


class ReadCache:
    """The API process's cache: one watch over the tree, and what is served from it."""

    def __init__(self, etcd: Etcd, *, catch_up: float = CATCH_UP) -> None:
        self.etcd = etcd
        self.catch_up = catch_up
        self.informer = Informer(etcd, keys.ROOT, keep=served, name="api-cache")
        self.revisions = Revisions(etcd)
        self.projects = LayoutCache(
            self,
            _project_part,
            lambda _, pid: project_store.LAYOUT.parts(pid),
            project_store.LAYOUT.codecs,
        ).of("")
        self.services = LayoutCache(self, _service_part, _service_parts, service_store.CODECS)
        """Services by project: ``services.of(pid)``."""
        self.repos = RepoCache(self)
        self.hits = 0
        self.fallbacks = 0
        """Reads answered from memory, and reads that went to etcd because the cache lagged."""
        self._task: asyncio.Task[None] | None = None
        self._lagging_until = 0.0  # loop time: until then reads wait only BRIEF for the cache

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.informer.run(), name="api-cache")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            (ended,) = await asyncio.gather(task, return_exceptions=True)
            if not isinstance(ended, asyncio.CancelledError | None):
                # Closing must finish whatever stopped the cache; say what it was.
                log.warning("read cache had stopped", error=repr(ended))
        await self.revisions.close()

    async def fresh(self) -> bool:
        """Whether a read that began before this call may be answered from memory now (see the
        module docstring); raises :class:`StoreUnavailable` when etcd cannot say."""
        if not self.informer.synced.is_set():
            self.fallbacks += 1
            return False
        revision = await self.revisions.current()
        loop = asyncio.get_running_loop()
        lagging = loop.time() < self._lagging_until
        if await self.informer.wait_for(revision, BRIEF if lagging else self.catch_up):
            self.hits += 1
            self._lagging_until = 0.0
            return True
        self.fallbacks += 1
        if not lagging:
            # Every read would wait the whole bound while the cache stays behind (an etcd shared
            # with other writers moves the revision on where this watch sees nothing): for the
            # next bound's worth of time, reads wait only briefly before reading etcd.
            self._lagging_until = loop.time() + self.catch_up
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
