"""Named objects stored as a few keys plus a name index, each public call one etcd transaction.

Projects, services and images share this shape (seed 001): an object is a fixed set of *parts*
under its id (``meta``, ``config``, ...), a subtree that goes with it, and an index key
``helper/.../<name> -> <id>`` that keeps names unique. Packages and droplets are the degenerate
case, one part and no name, so their updates are this module's too. The transactions follow
DESIGN.md section 5 and Kubernetes' ``storage/etcd3``:

- create compares the index key and the meta key absent (and the parent present), then puts all;
- update reads, changes, and writes back comparing every part's ``mod_revision`` and whatever
  else the change rested on (retrying on conflict, skipping a write that changes nothing); a
  rename moves the index key in the same txn;
- delete compares the meta unchanged and removes the subtree prefixes *with their trailing
  slash* and the index key, so ``demo`` never touches ``demo2``.

Lookups by name go through a small cache of name -> id. A cached id is only a hint: the read
that follows checks that the object's meta still carries that name, which (because every rename
moves index and meta in one txn) proves the index says the same at that revision. A miss or a
stale hint falls back to reading the index, so the cache never makes a read wrong, only faster.
"""

from __future__ import annotations

import asyncio
import random
from collections import OrderedDict
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Mapping,
    Sequence,
)
from typing import Any, Protocol

import attrs

from lastbackend import codec
from lastbackend.model.common import is_uuid, new_id, now
from lastbackend.store import keys
from lastbackend.store.etcd import KV, MAX_TXN_OPS, Cmp, Etcd, Op, Store

Linker = Callable[[bytes, bytes], Iterable[str]]
"""(key, value) of a contained object -> the helper keys elsewhere in the tree that point at it."""
Claims = Callable[[str, Mapping[str, Any]], Mapping[str, str]]
"""(id, the object's values) -> {key: value} of helper keys its values hold, which no other
object may hold at once (a service's ``domains`` -> ``helper/domains/<host>``)."""
Holder = Callable[[Store, str, bytes], Awaitable[str]]
"""(etcd, a claimed key, its value) -> who holds it, in words, for a 409."""
Guarded = tuple[Mapping[str, Any], Sequence[Cmp]]
"""What a change decided: the new value of some parts, and more comparisons for the txn (keys the
decision was read from, a controller's fence)."""

MAX_ATTEMPTS = 16  # rounds of a lookup by name that keeps seeing renames
RETRY_DEADLINE = 10.0  # seconds a write keeps retrying lost races before giving up


async def retries() -> AsyncIterator[int]:
    """Attempt numbers for a read-modify-write: immediately, then with jittered exponential
    backoff (1 ms doubling to 100 ms) until :data:`RETRY_DEADLINE`, as GuaranteedUpdate does
    until its context deadline. Contention costs latency, not a spurious 409."""
    deadline = asyncio.get_running_loop().time() + RETRY_DEADLINE
    attempt = 0
    while True:
        yield attempt
        attempt += 1
        if asyncio.get_running_loop().time() >= deadline:
            return
        await asyncio.sleep(random.uniform(0, min(0.001 * 2**attempt, 0.1)))


class NotFound(LookupError):
    pass


class Conflict(Exception):
    """The name is taken, or the write lost too many races in a row."""


class Contention(Conflict):
    """Other writers kept changing the object until the retry deadline ran out."""


class Claimed(Conflict):
    """A value the object would hold (a host) is held by another object."""


class PreconditionFailed(Exception):
    """``If-Match`` named a version that is no longer current."""


def require_version(kind: str, revision: int, if_match: int | None) -> None:
    """Raise :class:`PreconditionFailed` unless ``If-Match`` is absent or names ``revision``."""
    if if_match is not None and revision != if_match:
        raise PreconditionFailed(f"{kind} is at version {revision}, not {if_match}")


@attrs.frozen
class Part:
    """How one part is stored: bare text (the ``image`` key) or compact JSON of ``cls``."""

    cls: Any
    bare: bool = False

    def encode(self, value: Any) -> bytes:
        return value.encode() if self.bare else codec.dumps(value)

    def decode(self, raw: bytes) -> Any:
        return raw.decode() if self.bare else codec.loads(raw, self.cls)


@attrs.frozen
class Layout:
    """Where one kind of object lives in the tree."""

    kind: str  # "project" | "service" | ...: used in messages
    index: str | None  # prefix of the name -> id index; None: the objects have no names
    subtrees: Callable[[str], Sequence[str]]  # id -> prefixes deleted with the object
    parts: Callable[[str], Mapping[str, str]]  # id -> {part name: key}; "meta" first
    codecs: Mapping[str, Part]
    parent: str | None = None  # a key that must exist for the object to be created
    links: Callable[[str], Mapping[str, str]] = lambda _: {}
    """id -> {key: value} of helper keys made with the object and deleted with it (such as
    ``helper/apps/<sid> -> <pid>``, which finds a service from its id alone)."""
    cascade: Callable[[str], Sequence[tuple[str, Linker]]] = lambda _: ()
    """id -> (prefix, linker) pairs for the helper keys of what the object contains: at delete,
    each key under ``prefix`` that ``linker(key, value)`` maps to a helper key (a service's
    ``helper/apps/<sid>``, a package's ``helper/packages/<guid>``) has it deleted in the same txn,
    guarded by nothing new having been created under the prefix since it was read."""
    claims: Claims = lambda _, __: {}
    """Helper keys held by what the object's values say; made, moved and deleted with them in
    the same txn, each compared absent when taken, so of racing writers exactly one gets it."""
    holder: Holder | None = None
    """Names the holder of a claimed key in the 409 (the raw value when not given)."""

    def index_key(self, name: str) -> str:
        if self.index is None:
            raise ValueError(f"a {self.kind} has no name")
        return keys.entry(self.index, name)


@attrs.frozen
class Record:
    """One object as read: decoded parts (absent ones missing) and the KVs behind them."""

    id: str
    values: Mapping[str, Any]
    kvs: Mapping[str, KV | None]

    @property
    def name(self) -> str:
        return str(self.values["meta"].name)

    @property
    def revision(self) -> int:
        """The object's version, used as its ETag: the newest ``mod_revision`` of its parts."""
        return max((kv.mod_revision for kv in self.kvs.values() if kv), default=0)


@attrs.frozen
class Page:
    records: list[Record]
    total: int
    revision: int


_MISSING = object()


class LRU:
    """A bounded least-recently-used mapping."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[Any, Any] = OrderedDict()

    def get(self, key: Any, default: Any = None) -> Any:
        value = self._items.get(key, _MISSING)
        if value is _MISSING:
            return default
        self._items.move_to_end(key)
        return value

    def put(self, key: Any, value: Any) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        if len(self._items) > self._size:
            self._items.popitem(last=False)

    def drop(self, key: Any) -> None:
        self._items.pop(key, None)


class NameCache:
    """Per-process read caches; neither can make a read wrong (see the module docstring).

    ``ids``: (index, name) -> id, a hint checked against the meta it leads to.
    ``values``: (key, mod_revision) -> decoded value, immutable by construction.
    """

    def __init__(self, size: int = 16384) -> None:
        self.ids = LRU(size)
        self.values = LRU(size)

    def get(self, key: str) -> str | None:
        return self.ids.get(key)  # type: ignore[no-any-return]

    def put(self, key: str, oid: str) -> None:
        self.ids.put(key, oid)

    def drop(self, key: str) -> None:
        self.ids.drop(key)


class Cached(Protocol):
    """A layout's objects in the API's read cache (``store.cache.LayoutCache``)."""

    async def fresh(self) -> bool:
        """True when the cache may answer a read begun before the call (it has caught up with
        etcd's current revision); False: read etcd instead."""
        ...

    def find(self, ref: str) -> Record | None: ...

    def page(self, *, page: int, per_page: int, descending: bool = False) -> Page: ...


class Objects:
    """The transactions for one layout (one project's services, or all projects).

    With ``reads``, :meth:`get` and :meth:`list` answer from the API's read cache whenever it
    has caught up (see ``store.cache``); writes always read etcd themselves.
    """

    def __init__(
        self, etcd: Etcd, layout: Layout, cache: NameCache, reads: Cached | None = None
    ) -> None:
        self.etcd = etcd
        self.layout = layout
        self.cache = cache
        self.reads = reads

    # reads --------------------------------------------------------------------------------------

    def _record(self, oid: str, kvs: Mapping[str, KV | None]) -> Record | None:
        if kvs.get("meta") is None:
            return None
        values = {part: self._decode(part, kv) for part, kv in kvs.items() if kv}
        return Record(oid, values, kvs)

    def _decode(self, part: str, kv: KV) -> Any:
        """A key's value at a revision never changes, so its decoded form is reused.

        Cached values are shared between requests: treat them as immutable.
        """
        token = (kv.key, kv.mod_revision)
        value = self.cache.values.get(token, _MISSING)
        if value is _MISSING:
            value = self.layout.codecs[part].decode(kv.value)
            self.cache.values.put(token, value)
        return value

    async def _read(self, oid: str, *, revision: int = 0) -> Record | None:
        part_keys = self.layout.parts(oid)
        if len(part_keys) == 1:
            (part, key), *_ = part_keys.items()
            return self._record(oid, {part: await self.etcd.get(key, revision=revision)})
        found = await self.etcd.read_many(list(part_keys.values()), revision=revision)
        return self._record(oid, {part: found.get(key) for part, key in part_keys.items()})

    async def get(self, ref: str) -> Record:
        """By id or by name; :class:`NotFound` if neither names a live object."""
        if self.reads is not None and await self.reads.fresh():
            found = self.reads.find(ref)
            if found is None:
                raise NotFound(f"{self.layout.kind} {ref!r} not found")
            return found
        return await self._fetch(ref)

    async def _fetch(self, ref: str) -> Record:
        """:meth:`get` from etcd."""
        if is_uuid(ref):
            record = await self._read(ref)
            if record is None:
                raise NotFound(f"{self.layout.kind} {ref!r} not found")
            return record
        index_key = self.layout.index_key(ref)
        hint = self.cache.get(index_key)
        if hint is not None:
            record = await self._read(hint)
            if record is not None and record.name == ref:
                return record
            self.cache.drop(index_key)
        for _ in range(MAX_ATTEMPTS):
            kv = await self.etcd.get(index_key)
            if kv is None:
                raise NotFound(f"{self.layout.kind} {ref!r} not found")
            oid = kv.value.decode()
            record = await self._read(oid)
            if record is not None and record.name == ref:
                self.cache.put(index_key, oid)
                return record
            # Renamed or deleted between the two reads: look again.
        raise Contention(f"{self.layout.kind} {ref!r} keeps changing; try again")

    async def list(self, *, page: int, per_page: int, descending: bool = False) -> Page:
        """One page in name order, every record read at the same revision as the index."""
        if self.reads is not None and await self.reads.fresh():
            return self.reads.page(page=page, per_page=per_page, descending=descending)
        index = self.layout.index
        if index is None:
            raise ValueError(f"{self.layout.kind}s have no name index to list")
        revision, pairs = await self.etcd.pairs(index)
        entries = [v for k, v in pairs if keys.entry_of(index, k.decode())]  # not sub-indexes
        total = len(entries)
        if descending:
            entries.reverse()
        ids = [oid.decode() for oid in entries[(page - 1) * per_page : page * per_page]]
        part_keys = {oid: self.layout.parts(oid) for oid in ids}
        found = await self.etcd.read_many(
            [key for parts in part_keys.values() for key in parts.values()],
            revision=revision,
        )
        records = []
        for oid, parts in part_keys.items():
            record = self._record(oid, {part: found.get(key) for part, key in parts.items()})
            if record is not None:
                records.append(record)
        return Page(records=records, total=total, revision=revision)

    # writes -------------------------------------------------------------------------------------

    async def create(self, name: str, values: Mapping[str, Any]) -> Record:
        """Store a new object under a fresh id; :class:`Conflict` if the name is taken."""
        oid = new_id()
        index_key = self.layout.index_key(name)
        part_keys = self.layout.parts(oid)
        compare = [Cmp.absent(index_key), Cmp.absent(part_keys["meta"])]
        if self.layout.parent:
            compare.append(Cmp.present(self.layout.parent))
        ops = [Op.put(index_key, oid)]
        for key, value in self.layout.links(oid).items():
            compare.append(Cmp.absent(key))
            ops.append(Op.put(key, value))
        claims = self.layout.claims(oid, values)
        for key, value in claims.items():
            compare.append(Cmp.absent(key))
            ops.append(Op.put(key, value))
        encoded = {}
        for part, value in values.items():
            if value is not None:
                encoded[part] = self.layout.codecs[part].encode(value)
                ops.append(Op.put(part_keys[part], encoded[part]))
        reads = [Op.get(index_key), *(Op.get(key) for key in claims)]
        result = await self.etcd.txn(compare, ops, reads)
        if not result.succeeded:
            await self._raise_claimed(claims, result.reads[1:])
            if self.layout.parent and not result.reads[0]:
                raise NotFound(f"the parent of {self.layout.kind} {name!r} was deleted")
            raise Conflict(f"{self.layout.kind} name {name!r} is already taken")
        self.cache.put(index_key, oid)
        rev = result.revision
        kvs = {
            part: KV(part_keys[part], encoded[part], rev, rev, 1) if part in encoded else None
            for part in part_keys
        }
        return Record(oid, {p: v for p, v in values.items() if v is not None}, kvs)

    async def update(
        self,
        ref: str,
        change: Callable[[Record], Mapping[str, Any]],
        *,
        if_match: int | None = None,
        guard: Sequence[Cmp] = (),
    ) -> Record:
        """Read-modify-write with retries (Kubernetes' GuaranteedUpdate).

        ``change`` gets the current record and returns the new value of some parts (``None``
        deletes a part); it may raise to refuse the change. It can run more than once.
        ``guard``: more comparisons for every attempt (a controller's fence).
        """

        async def guarded(current: Record) -> Guarded:
            return change(current), guard

        return await self.update_async(ref, guarded, if_match=if_match)

    async def update_async(
        self,
        ref: str,
        change: Callable[[Record], Awaitable[Guarded]],
        *,
        if_match: int | None = None,
        touch: bool = False,
    ) -> Record:
        """:meth:`update` for a change that reads more of the tree to decide (an app's start
        reads its droplet): it returns the parts and the comparisons that keep what it read
        unchanged until the write, so a decision on stale keys is retried, never written.

        Whenever something changes, ``meta`` (the one given, or the current one) gets
        ``updated`` set to now. ``touch``: write ``meta`` then even if that leaves its bytes as
        they were (``updated`` is to the second), so its etcd version counts every update.
        """
        async for _ in retries():
            current = await self._fetch(ref)
            require_version(self.layout.kind, current.revision, if_match)
            wanted_parts, guards = await change(current)
            wanted = dict(wanted_parts)
            ops = self._diff(current, wanted)
            if not ops:
                return current
            # something changed: the object was updated now
            wanted["meta"] = attrs.evolve(wanted.get("meta", current.values["meta"]), updated=now())
            force = ("meta",) if touch else ()
            ops = self._diff(current, wanted, force)
            part_keys = self.layout.parts(current.id)
            compare = [Cmp.unchanged(current.kvs.get(p), k) for p, k in part_keys.items()]
            compare += guards
            new_name = str(wanted["meta"].name) if self.layout.index is not None else None
            new_index = None  # set: renamed, the index key moves in the same txn
            if new_name is not None and new_name != current.name:
                new_index = self.layout.index_key(new_name)
                compare.append(Cmp.absent(new_index))
                ops += [
                    Op.delete(self.layout.index_key(current.name)),
                    Op.put(new_index, current.id),
                ]
            taking = self._move_claims(current, wanted, compare, ops)
            reads = [Op.get(new_index)] if new_index is not None else []
            result = await self.etcd.txn(compare, ops, [*reads, *map(Op.get, taking)])
            if result.succeeded:
                if new_index is not None:
                    self.cache.drop(self.layout.index_key(current.name))
                    self.cache.put(new_index, current.id)
                return self._written(current, wanted, result.revision, force)
            await self._raise_claimed(taking, result.reads[len(reads) :])
            taken = result.reads[0] if new_index is not None else None
            if taken and taken[0].value.decode() != current.id:
                raise Conflict(f"{self.layout.kind} name {new_name!r} is already taken")
        raise Contention(f"{self.layout.kind} {ref!r} is changing too fast; try again")

    def _move_claims(
        self, current: Record, wanted: Mapping[str, Any], compare: list[Cmp], ops: list[Op]
    ) -> dict[str, str]:
        """Add to an update's txn what its new values take and let go; what it takes."""
        after = {p: v for p, v in {**current.values, **wanted}.items() if v is not None}
        held = self.layout.claims(current.id, current.values)
        wants = self.layout.claims(current.id, after)
        taking = {key: value for key, value in wants.items() if held.get(key) != value}
        for key, value in taking.items():
            compare.append(Cmp.absent(key) if key not in held else Cmp.value_is(key, held[key]))
            ops.append(Op.put(key, value))
        ops += [Op.delete(key) for key in held if key not in wants]
        return taking

    async def _raise_claimed(self, claims: Mapping[str, str], reads: Sequence[list[KV]]) -> None:
        """After a failed txn: :class:`Claimed` if another object holds one of ``claims``
        (read back in ``reads``, in order); a key we hold ourselves is no conflict."""
        for (key, ours), found in zip(claims.items(), reads, strict=True):
            if found and found[0].value != ours.encode():
                value = found[0].value
                holder = (
                    await self.layout.holder(self.etcd, key, value)
                    if self.layout.holder is not None
                    else value.decode(errors="replace")
                )
                raise Claimed(f"{keys.leaf(key)!r} is held by {holder}")

    async def _cascade(self, oid: str) -> tuple[list[Cmp], list[Op]]:
        guards: list[Cmp] = []
        unlinks: list[Op] = []
        for prefix, linker in self.layout.cascade(oid):
            revision, pairs = await self.etcd.pairs(prefix)
            guards.append(Cmp.nothing_created_after(prefix, revision))
            for key, value in pairs:
                unlinks += [Op.delete(link) for link in linker(key, value)]
        return guards, unlinks

    def _diff(
        self, current: Record, wanted: Mapping[str, Any], force: Collection[str] = ()
    ) -> list[Op]:
        """The ops that write ``wanted``: parts that changed, and the ``force`` ones anyway."""
        part_keys = self.layout.parts(current.id)
        ops: list[Op] = []
        for part, value in wanted.items():
            old = current.kvs.get(part)
            if value is None:
                if old is not None:
                    ops.append(Op.delete(part_keys[part]))
            elif part in force or self._changed(part, old, value):
                ops.append(Op.put(part_keys[part], self.layout.codecs[part].encode(value)))
        return ops

    def _changed(self, part: str, old: KV | None, value: Any) -> bool:
        """Whether ``value`` differs from what ``old`` holds: by meaning, not by bytes.

        The same mapping sent in another key order encodes differently but is no change.
        """
        if old is None:
            return True
        part_codec = self.layout.codecs[part]
        return old.value != part_codec.encode(value) and part_codec.decode(old.value) != value

    def _written(
        self,
        current: Record,
        wanted: Mapping[str, Any],
        revision: int,
        force: Collection[str] = (),
    ) -> Record:
        """The record as the successful txn left it (:meth:`_diff`'s ops), without reading it
        back."""
        values = dict(current.values)
        kvs = dict(current.kvs)
        for part, value in wanted.items():
            key = self.layout.parts(current.id)[part]
            if value is None:
                values.pop(part, None)
                kvs[part] = None
                continue
            old = kvs.get(part)
            if part in force or self._changed(part, old, value):
                raw = self.layout.codecs[part].encode(value)
                created = old.create_revision if old else revision
                kvs[part] = KV(key, raw, created, revision, (old.version if old else 0) + 1)
            values[part] = value
        return Record(current.id, values, kvs)

    async def delete(self, ref: str, *, if_match: int | None = None) -> Record:
        """Remove the object, its subtrees and its index key in one transaction."""
        async for _ in retries():
            current = await self._fetch(ref)
            require_version(self.layout.kind, current.revision, if_match)
            # Every part as read: a part can change without meta's bytes changing, and
            # If-Match promised the whole object is at the version the client saw.
            part_keys = self.layout.parts(current.id)
            compare = [Cmp.unchanged(current.kvs.get(p), k) for p, k in part_keys.items()]
            index_key = self.layout.index_key(current.name)
            ops = [Op.delete_prefix(p) for p in self.layout.subtrees(current.id)]
            ops += [Op.delete(key) for key in self.layout.links(current.id)]
            ops += [Op.delete(key) for key in self.layout.claims(current.id, current.values)]
            ops.append(Op.delete(index_key))
            guards, unlinks = await self._cascade(current.id)
            if len(ops) + len(unlinks) <= MAX_TXN_OPS:
                compare += guards
                ops += unlinks
            # else: too many to delete atomically; the gc controller removes helper keys whose
            # object is gone, as it would after a crash.
            result = await self.etcd.txn(compare, ops)
            if result.succeeded:
                self.cache.drop(index_key)
                return current
        raise Contention(f"{self.layout.kind} {ref!r} is changing too fast; try again")
