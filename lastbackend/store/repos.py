"""Build tags in etcd: one key per object under ``repos/``, every public call one transaction.

The key tree (``store/keys.py``)::

    repos/<r>/meta                                    {"source_url"}
    repos/<r>/branches/<b>/meta                       {"job_url"}
    repos/<r>/branches/<b>/tags/<t>/meta              {"build_id", "build_url", "commit_id"}
    repos/<r>/branches/<b>/tags/<t>/artifacts/<a>     {"type", ...the type's fields}

An object exists when its own key does (``meta``, or the artifact's key). Every key names its
object (:func:`keys.repo_ids`) and holds only that object's fields, so :func:`objects` rebuilds
any object, nested whole, from the keys under it: what a GET does after one range read, and what
a watch on ``repos/`` can do to know what changed and where.

Transactions:

- **PUT** reads the object's subtree and its ancestors' keys at one revision, then writes in one
  txn: every key of the body that is new or different, each missing ancestor with empty fields
  (compared absent, so concurrent PUTs under a new branch create it once), and deletes of stored
  children the body does not have (a whole child subtree is one prefix delete). It is guarded by
  the ancestors being as read (absent or present), the unchanged keys unchanged, and nothing
  created under the object since the read; a lost race re-reads and tries again. A PUT that
  changes nothing writes nothing.
- **DELETE** compares the object's own key present and, in the same txn, reads and deletes its
  subtree (the prefix with its trailing slash): the answer is the object as it was deleted.

Versions (ETags) are ``"<newest mod_revision>-<number of keys>"`` over the keys a response is
built from. The newest ``mod_revision`` alone would not do: deleting an artifact leaves the tag's
remaining keys as they were. With the count it is exact: if two reads of a range give the same
pair, every key of the later read was last written before the earlier one, so the later keys are
a subset of the earlier ones with the same values, and the same count makes them the same set.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, Protocol

import attrs

from lastbackend import codec
from lastbackend.model import repos as model
from lastbackend.store import keys
from lastbackend.store.etcd import KV, MAX_TXN_OPS, Cmp, Op, Store
from lastbackend.store.objects import Contention, NotFound, retries

Ids = tuple[str, ...]
"""``(r,)``, ``(r, b)``, ``(r, b, t)`` or ``(r, b, t, a)``: which object, and so its level."""

_EMPTY: tuple[Any, ...] = (model.RepoMeta(), model.BranchMeta(), model.TagMeta())
"""What an ancestor made by a PUT below it holds."""


class TooLarge(ValueError):
    """The write needs more operations than one etcd transaction may hold."""


@attrs.frozen
class Snapshot:
    """What a call answers: the value, its version (``None`` when a dry run wrote nothing that
    has one) and the store revision it was read or written at."""

    value: Any
    version: str | None
    revision: int
    shown: Any = None
    """The value in the document's shape, when already made (the read cache keeps it)."""
    body: bytes | None = None
    """``shown`` as the JSON body, when already made (the read cache keeps it too)."""

    @property
    def view(self) -> Any:
        """The value in the document's shape (plain maps and lists)."""
        return self.shown if self.shown is not None else codec.unstructure(self.value)


def version(kvs: Iterable[KV]) -> str:
    """``<newest mod_revision>-<count>`` of a set of keys (see the module docstring)."""
    newest, count = 0, 0
    for kv in kvs:
        newest = max(newest, kv.mod_revision)
        count += 1
    return f"{newest}-{count}"


@attrs.frozen
class Built:
    """What a read of some keys gives: every object among them nested whole, their version and
    the revision read at; :meth:`memo` keeps what is made from it (a read from the cache shares
    one per change of its keys between requests, so nothing is rebuilt per request)."""

    objects: dict[Ids, Any]
    version: str
    revision: int
    made: dict[Hashable, Any] = attrs.field(factory=dict, eq=False)

    def memo(self, what: Hashable, make: Callable[[], Any]) -> Any:
        if what not in self.made:
            self.made[what] = make()
        return self.made[what]


def build(kvs: Iterable[KV], revision: int) -> Built:
    kvs = list(kvs)
    return Built(objects(_pairs(kvs)), version(kvs), revision)


class Cached(Protocol):
    """The build tags in the API's read cache (``store.cache.RepoCache``)."""

    async def fresh(self) -> bool:
        """True when the cache may answer a read begun before the call; False: read etcd."""
        ...

    def read(self, ids: Ids) -> Built:
        """What :meth:`Repos._read` of ``ids`` reads, built, at the cache's revision."""
        ...


def describe(ids: Sequence[str]) -> str:
    """``branch repos/<r>/branches/<b>``: how messages name an object."""
    return f"{model.LEVELS[len(ids) - 1]} {model.address(tuple(ids))}"


def decode(ids: Ids, raw: bytes) -> Any:
    """The stored fields of the object ``ids`` names, from its own key's value."""
    return codec.loads(raw, model.STORED[len(ids) - 1])


def objects(pairs: Iterable[tuple[str, bytes]]) -> dict[Ids, Any]:
    """Every object among ``(key, value)`` pairs, nested whole, by its ids.

    Children are attached in id order; a child whose parent's own key is not among the pairs is
    left out of the parent (it cannot be reached), and keys that name no object are ignored.
    """
    found: dict[Ids, Any] = {}
    for key, raw in pairs:
        ids = keys.repo_ids(key)
        if ids is not None:
            found[ids] = decode(ids, raw)
    kids: dict[Ids, dict[str, Any]] = {}
    built: dict[Ids, Any] = {}
    for ids in sorted(found, key=len, reverse=True):
        mine = dict(sorted(kids.pop(ids, {}).items()))
        built[ids] = model.compose(found[ids], mine)
        if len(ids) > 1:
            kids.setdefault(ids[:-1], {})[ids[-1]] = built[ids]
    return built


def entries(ids: Ids, node: Any) -> dict[str, bytes]:
    """The keys and values that store ``node`` at ``ids``: its own key and its children's."""
    out = {keys.repo_key(ids): codec.dumps(model.own(node))}
    for child_id, child in model.children(node).items():
        out.update(entries((*ids, child_id), child))
    return out


def _fits(ops: int, what: str) -> None:
    if ops > MAX_TXN_OPS:
        raise TooLarge(
            f"{what} needs {ops} etcd operations and one transaction holds at most "
            f"{MAX_TXN_OPS}: PUT the children separately (each branch, tag or artifact at its "
            "own URL)"
        )


def _pairs(kvs: Iterable[KV]) -> list[tuple[str, bytes]]:
    return [(kv.key, kv.value) for kv in kvs]


def _read_op(ids: Ids) -> Op:
    """The read of an object's keys: its subtree, or an artifact's one key."""
    return Op.get_prefix(keys.repo_object(ids)) if len(ids) < 4 else Op.get(keys.repo_key(ids))


def _stale(ids: Ids, wanted: dict[str, bytes], current: Iterable[str]) -> list[Op]:
    """Deletes of the stored keys under ``ids`` that a replacement by ``wanted`` drops.

    A child the body does not have goes as one prefix delete of its subtree; keys under the
    object that name no object (put there by hand) go one by one.
    """
    prefixes: set[str] = set()
    singles: set[str] = set()
    for key in current:
        if key in wanted:
            continue
        found = keys.repo_ids(key)
        target = None
        if found is not None and found[: len(ids)] == ids:
            for depth in range(len(ids) + 1, len(found) + 1):
                if keys.repo_key(found[:depth]) not in wanted:
                    target = found[:depth]
                    break
        if target is None or len(target) == 4:
            singles.add(key if target is None else keys.repo_key(target))
        else:
            prefixes.add(keys.repo_object(target))
    singles = {k for k in singles if not any(k.startswith(p) for p in prefixes)}
    return [Op.delete_prefix(p) for p in sorted(prefixes)] + [Op.delete(k) for k in sorted(singles)]


@attrs.frozen
class PlannedPut:
    """A PUT's transaction, planned from one read (see :meth:`Repos.plan_put`)."""

    value: Any
    """The object as the PUT leaves it, nested whole."""
    compare: list[Cmp]
    ops: list[Op]
    """Empty when the stored object is already ``value``: then nothing is to be written."""
    read_version: str
    read_revision: int
    kept: list[KV]
    wrote: bool
    size: int

    def version_at(self, revision: int) -> str:
        """The object's version once the plan's transaction succeeded at ``revision``."""
        newest = max([kv.mod_revision for kv in self.kept] + [revision if self.wrote else 0])
        return f"{newest}-{self.size}"


class Repos:
    """The transactions of the build-tag family; on a leader's fenced store, fenced ones."""

    def __init__(self, etcd: Store, reads: Cached | None = None) -> None:
        self.etcd = etcd
        self.reads = reads

    async def _read(self, ids: Ids) -> tuple[list[KV], int]:
        """The keys of an object (or of everything, for ``()``) at one revision."""
        op = Op.get_prefix(keys.REPOS) if not ids else _read_op(ids)
        result = await self.etcd.txn([], [op])
        return result.reads[0], result.revision

    async def _built(self, ids: Ids) -> Built:
        """:meth:`_read`, built: from the read cache when it has caught up, else from etcd."""
        if self.reads is not None and await self.reads.fresh():
            return self.reads.read(ids)
        kvs, revision = await self._read(ids)
        return build(kvs, revision)

    async def _existing(self, ids: Ids) -> tuple[Any, Built]:
        built = await self._built(ids)
        node = built.objects.get(ids)
        if node is None:
            raise NotFound(f"{describe(ids)} not found")
        return node, built

    async def get(self, ids: Ids) -> Snapshot:
        """One object nested whole; :class:`NotFound` if its own key is absent."""
        node, built = await self._existing(ids)
        shown = built.memo(("view", ids), lambda: codec.unstructure(node))
        body = built.memo(("body", ids), lambda: codec.dumps_plain(shown))
        return Snapshot(node, built.version, built.revision, shown, body)

    async def children(self, ids: Ids) -> Snapshot:
        """The children of a repo, branch or tag by id (every repo for ``()``), nested whole.

        The version is the parent's: a child's change is a change of its parent.
        """
        if not ids:
            built = await self._built(())
            top = built.memo(
                "top", lambda: {ids[0]: n for ids, n in built.objects.items() if len(ids) == 1}
            )
            shown = built.memo("top view", lambda: codec.unstructure(top))
            return Snapshot(top, built.version, built.revision, shown)
        node, built = await self._existing(ids)
        kids = model.children(node)
        shown = built.memo(("children", ids), lambda: codec.unstructure(kids))
        return Snapshot(kids, built.version, built.revision, shown)

    async def repo_tags(self, repo: str) -> Snapshot:
        """Every tag of every branch of a repo, keyed ``<branch>/<tag>``.

        The document lists ``GET /api/repos/<r>/tags`` from before tags moved under branches; a
        tag id alone is not unique in a repo (``untested`` is on every branch), and ids hold no
        ``/``, so ``<branch>/<tag>`` names each tag once and says where it lives.
        """
        node, built = await self._existing((repo,))
        flat = {
            f"{branch_id}/{tag_id}": tag
            for branch_id, branch in node.branches.items()
            for tag_id, tag in branch.tags.items()
        }
        return Snapshot(flat, built.version, built.revision)

    async def data(self) -> Snapshot:
        """Every repo nested whole: ``GET /api/data``."""
        return await self.children(())

    async def plan_put(self, ids: Ids, node: Any) -> PlannedPut:
        """Read what a PUT of ``node`` at ``ids`` depends on and plan its one transaction.

        Nothing is written: :meth:`put` runs the plan, and a caller with writes of its own (a
        build marked ``success`` with its ``untested`` tag) adds the plan's compares and
        operations to its transaction, so both land or neither does.
        """
        wanted = entries(ids, node)
        ancestors = [keys.repo_key(ids[:depth]) for depth in range(1, len(ids))]
        # Compares: the unchanged keys, the ancestors and the created-after guard.
        _fits(len(wanted) + len(ancestors) + 1, f"this {model.LEVELS[len(ids) - 1]}")
        read = await self.etcd.txn([], [_read_op(ids), *map(Op.get, ancestors)])
        current = {kv.key: kv for kv in read.reads[0]}
        compare: list[Cmp] = []
        ops: list[Op] = []
        for depth, (key, found) in enumerate(zip(ancestors, read.reads[1:], strict=True)):
            if found:
                compare.append(Cmp.present(key))
            else:
                compare.append(Cmp.absent(key))
                ops.append(Op.put(key, codec.dumps(_EMPTY[depth])))
        kept: list[KV] = []
        wrote = False
        for key, raw in wanted.items():
            kv = current.get(key)
            if kv is not None and kv.value == raw:
                kept.append(kv)
                compare.append(Cmp.unchanged(kv, key))
            else:
                ops.append(Op.put(key, raw))
                wrote = True
        ops += _stale(ids, wanted, current)
        _fits(len(ops), f"replacing this {model.LEVELS[len(ids) - 1]}")
        if ops and len(ids) < 4:
            compare.append(Cmp.nothing_created_after(keys.repo_object(ids), read.revision))
        return PlannedPut(
            value=objects(wanted.items())[ids],
            compare=compare,
            ops=ops,
            read_version=version(current.values()),
            read_revision=read.revision,
            kept=kept,
            wrote=wrote,
            size=len(wanted),
        )

    async def put(self, ids: Ids, node: Any, *, dry_run: bool = False) -> Snapshot:
        """Create or replace the object at ``ids`` with ``node`` and its children (see the
        module docstring); a dry run reads and plans but does not write."""
        async for _ in retries():
            plan = await self.plan_put(ids, node)
            if not plan.ops:
                return Snapshot(plan.value, plan.read_version, plan.read_revision)
            if dry_run:
                return Snapshot(plan.value, None, plan.read_revision)
            result = await self.etcd.txn(plan.compare, plan.ops)
            if result.succeeded:
                return Snapshot(plan.value, plan.version_at(result.revision), result.revision)
        raise Contention(f"{describe(ids)} is changing too fast; try again")

    async def delete(self, ids: Ids, *, dry_run: bool = False) -> Snapshot:
        """Delete an object and everything under it; the answer is what was deleted."""
        own = keys.repo_key(ids)
        ops = [_read_op(ids)]
        if not dry_run:
            ops.append(Op.delete_prefix(keys.repo_object(ids)) if len(ids) < 4 else Op.delete(own))
        result = await self.etcd.txn([Cmp.present(own)], ops)
        node = objects(_pairs(result.reads[0])).get(ids) if result.succeeded else None
        if node is None:
            raise NotFound(f"{describe(ids)} not found")
        return Snapshot(node, None, result.revision)
