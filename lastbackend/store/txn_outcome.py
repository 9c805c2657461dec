"""What to do with a writing txn whose answer was lost: find out whether it was applied.

A txn sent to a member that is then killed or frozen, or whose deadline passes, may or may not
have been applied: a killed leader may have replicated it first, and a frozen member may still
hand it to the cluster when it is thawed. Sending it again blindly could apply it twice; giving up
turns every member loss into failed requests. :class:`~lastbackend.store.etcd.Etcd` does neither:

1. **Look** (:func:`applied`), on a member that answers, with a linearizable read. Before the
   first attempt the client knew a store revision ``floor``; if the txn was applied it was at a
   revision above it. The history of the txn's first put key is walked back from now to
   ``floor`` (a get at each previous version's revision) for a version holding exactly the
   value the txn puts; at that revision R every key the txn puts must hold its value with
   mod revision R (one txn wrote them all) and every key it deletes must be gone. Then the txn
   is taken as applied at R and answered as succeeded. Our values make this sure in practice:
   a create puts a fresh uuid, an update a new encoding with its timestamp. A txn that only
   deletes is taken as applied when its keys existed at ``floor`` and are gone now: whoever
   deleted them, what the caller asked for is true.
2. **Retry** only when a late first attempt could not also apply (:func:`retry_is_safe`): some
   comparison of the txn is made false by the txn's own writes, e.g. a create compares its key
   absent and puts it, an update compares a mod revision and writes that key, a delete compares
   a key present and deletes it. Of the first attempt and its retry at most one then applies.
   A txn without such a guard (an unconditional put, a fenced write guarded only by its term)
   is answered :class:`~lastbackend.store.etcd.StoreUnavailable` (503 in the API), as before.

A txn whose success branch also reads, or whose failure branch writes, is not looked for (its
answer could not be rebuilt): it is answered as unknown.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lastbackend.store.etcd import KV, Cmp, Etcd, Op, TxnResult

MAX_ROUNDS = 3
"""Attempts of one txn whose outcome was unknown (each followed by a look) before giving up."""


def retry_is_safe(compare: Sequence[Cmp], success: Sequence[Op], failure: Sequence[Op]) -> bool:
    """True when applying ``success`` falsifies one of ``compare``: a second copy of the txn
    arriving after the first was applied fails its comparison and changes nothing."""
    if any(o.kind != "get" for o in failure):
        return False
    puts = {o.key: o.value for o in success if o.kind == "put"}
    deleted = {o.key for o in success if o.kind == "delete" and not o.range_end}
    ranges = [(o.key.encode(), o.range_end) for o in success if o.kind == "delete" and o.range_end]

    def gone(key: str) -> bool:
        k = key.encode()
        return key in deleted or any(start <= k < end for start, end in ranges)

    for c in compare:
        if c.range_end or (c.op != "==" and not (c.op == ">" and c.target == "create")):
            continue
        if c.target == "create" and c.op == "==" and c.revision == 0 and c.key in puts:
            return True  # absent, then put
        if c.target == "mod" and (c.key in puts or gone(c.key)):
            return True  # at this mod revision, then written
        if c.target == "create" and c.revision > 0 and gone(c.key):
            return True  # present (or this incarnation), then deleted
        if c.target == "create" and c.op == ">" and c.revision == 0 and gone(c.key):
            return True
        if c.target == "value" and (gone(c.key) or puts.get(c.key, c.value) != c.value):
            return True  # this value, then another
    return False


async def applied(
    etcd: Etcd, compare: Sequence[Cmp], success: Sequence[Op], failure: Sequence[Op], floor: int
) -> TxnResult | None:
    """The txn's result if it was applied after revision ``floor``; None if it was not (yet).

    Raises :class:`~lastbackend.store.etcd.StoreUnavailable` when that cannot be told.
    """
    from lastbackend.store.etcd import StoreUnavailable, TxnResult

    if any(o.kind == "get" for o in success) or any(o.kind != "get" for o in failure):
        raise StoreUnavailable("etcd did not answer a write; its outcome is unknown")
    puts = [o for o in success if o.kind == "put"]
    deletes = [o for o in success if o.kind == "delete"]
    if not puts:
        return await _deleted(etcd, deletes, floor)
    first = puts[0]
    kv: KV | None = await etcd.get(first.key)
    revision = 0
    while kv is not None and kv.mod_revision > floor:
        if kv.value == first.value:
            revision = kv.mod_revision
            break
        kv = await etcd.get(first.key, revision=kv.mod_revision - 1)
    if not revision:
        return None
    at = await etcd.read_many([o.key for o in puts] + _single(deletes), revision=revision)
    for o in puts:
        found = at.get(o.key)
        if found is None or found.mod_revision != revision or found.value != o.value:
            return None
    if any(o.key in at for o in deletes if not o.range_end):
        return None
    for o in deletes:
        if o.range_end and (await etcd.range(o.key, revision=revision, count_only=True)).count:
            return None
    return TxnResult(succeeded=True, revision=revision, reads=[])


def _single(deletes: Sequence[Op]) -> list[str]:
    return [o.key for o in deletes if not o.range_end]


async def _deleted(etcd: Etcd, deletes: Sequence[Op], floor: int) -> TxnResult | None:
    from lastbackend.store.etcd import TxnResult

    keys = _single(deletes)
    then = await etcd.read_many(keys, revision=floor) if floor else {}
    if floor == 0 or len(then) < len(keys):
        return None  # not there before: not ours to claim
    revision = await etcd.status()
    if await etcd.read_many(keys):
        return None
    for o in deletes:
        if o.range_end and (await etcd.range(o.key, count_only=True)).count:
            return None
    return TxnResult(succeeded=True, revision=revision, reads=[])
