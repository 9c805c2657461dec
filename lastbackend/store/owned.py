"""Objects an app owns and that are found by guid alone: packages and droplets.

Both live in the app's subtree (``services/<sid>/packages/<guid>``) with a helper key beside the
tree (``helper/packages/<guid> -> <pid>:<sid>``), because ``/v3/packages/<guid>`` names no app.
This module is the one reading of that shape: from a guid to its key, from an app to its
objects, and every object at once, each list read at a single revision. Updates are
:meth:`Objects.update <lastbackend.store.objects.Objects.update>` on a one-part layout (the
object is its ``meta`` part, and it has no name), so packages and droplets retry, honour
``If-Match`` and skip a no-op exactly as projects and services do.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any, TypeVar

import attrs

from lastbackend.model.apps import Droplet, Package
from lastbackend.model.common import is_uuid
from lastbackend.store import keys
from lastbackend.store.etcd import KV, MAX_TXN_OPS, Cmp, Etcd, Op
from lastbackend.store.objects import Layout, NameCache, NotFound, Objects, Part, Record

T = TypeVar("T")

CACHE_SIZE = 1024
"""Decoded objects a store keeps by (key, mod revision) for its updates' reads (immutable)."""


class AppNotFound(NotFound):
    pass


def helper_of(key: bytes, _: bytes) -> tuple[str, ...]:
    """A :data:`Linker <lastbackend.store.objects.Linker>` for the cascade of a service or
    project delete: the helper key of a package or droplet key, none for any other key."""
    helper = keys.owner_of_contained(key.decode())
    return (helper,) if helper is not None else ()


async def app_project(etcd: Etcd, app: str) -> str:
    """The project of an app, from ``helper/apps/<app>``; :class:`AppNotFound` if none."""
    kv = await etcd.get(keys.app_owner(app)) if is_uuid(app) else None
    if kv is None:
        raise AppNotFound(f"app {app!r} not found")
    return kv.value.decode()


async def ranges(etcd: Etcd, prefixes: Sequence[str], revision: int) -> list[KV]:
    """Every key under each prefix, all read at ``revision``, in as few round trips as can be."""
    found: list[KV] = []
    for i in range(0, len(prefixes), MAX_TXN_OPS):
        chunk = prefixes[i : i + MAX_TXN_OPS]
        result = await etcd.txn([], [Op.get_prefix(p, revision=revision) for p in chunk])
        for read in result.reads:
            found.extend(read)
    return found


async def app_prefixes(
    etcd: Etcd, apps: Collection[str], prefix_of: Callable[[str, str], str]
) -> tuple[list[str], int]:
    """The subtree prefixes (``prefix_of(pid, sid)``) of the apps that exist, and the revision
    their owners were read at; unknown apps are simply not there."""
    wanted = [a for a in dict.fromkeys(apps) if is_uuid(a)]
    if not wanted:
        return [], (await etcd.range(keys.HELPER_APPS, count_only=True)).revision
    owners: dict[str, str] = {}
    revision = 0
    for i in range(0, len(wanted), MAX_TXN_OPS):
        chunk = wanted[i : i + MAX_TXN_OPS]
        result = await etcd.txn([], [Op.get(keys.app_owner(a), revision=revision) for a in chunk])
        revision = revision or result.revision
        for app, read in zip(chunk, result.reads, strict=True):
            if read:
                owners[app] = read[0].value.decode()
    return [prefix_of(pid, app) for app, pid in owners.items()], revision


@attrs.frozen
class Owned:
    """Where one kind of app-owned object lives (see the module docstring)."""

    kind: str  # "package" | "droplet": in messages
    cls: Any  # the model class (or union) its key holds
    helpers: str  # keys.HELPER_PACKAGES
    owner_key: Callable[[str], str]  # guid -> helper key
    key: Callable[[str, str, str], str]  # (pid, sid, guid) -> object key
    collection: Callable[[str, str], str]  # (pid, sid) -> the app's prefix of them
    parse: Callable[[str], keys.OwnedRef | None]  # object key -> where it is; None: not one

    async def owner(self, etcd: Etcd, guid: str) -> tuple[str, str]:
        kv = await etcd.get(self.owner_key(guid)) if is_uuid(guid) else None
        found = keys.parse_owner(kv.value) if kv is not None else None
        if found is None:
            raise NotFound(f"{self.kind} {guid!r} not found")
        return found

    async def read(self, etcd: Etcd, guid: str) -> KV:
        """The object's key as stored now; :class:`NotFound` if there is none."""
        pid, sid = await self.owner(etcd, guid)
        kv = await etcd.get(self.key(pid, sid, guid))
        if kv is None:  # its app was deleted a moment ago; gc removes the helper key
            raise NotFound(f"{self.kind} {guid!r} not found")
        return kv

    async def read_all(self, etcd: Etcd, apps: Collection[str] | None) -> tuple[list[KV], int]:
        """Every object (of ``apps`` when given), all read at the one revision returned."""
        if apps is not None:
            prefixes, revision = await app_prefixes(etcd, apps, self.collection)
            return await ranges(etcd, prefixes, revision), revision
        revision, pairs = await etcd.pairs(self.helpers)
        wanted = []
        for key, value in pairs:
            owner = keys.parse_owner(value)
            guid = keys.entry_of(self.helpers, key.decode())
            if owner is not None and guid is not None:
                wanted.append(self.key(*owner, guid))
        return list((await etcd.read_many(wanted, revision=revision)).values()), revision

    def locate(self, key: str) -> tuple[str, str, str] | None:
        """``projects/<pid>/services/<sid>/<kind>s/<guid>`` -> ``(pid, sid, guid)``."""
        found = self.parse(key)
        return (found.project, found.service, found.guid) if found is not None else None

    def objects(self, etcd: Etcd, cache: NameCache, pid: str, sid: str) -> Objects:
        """The objects of this kind of one app, as nameless one-part :class:`Objects`."""
        layout = Layout(
            kind=self.kind,
            index=None,
            subtrees=lambda _: (),
            parts=lambda guid: {"meta": self.key(pid, sid, guid)},
            codecs={"meta": Part(self.cls)},
        )
        return Objects(etcd, layout, cache)

    async def update(
        self,
        etcd: Etcd,
        cache: NameCache,
        guid: str,
        change: Callable[[T], Any],
        stored: Callable[[str, str, str, Any, int], T],
        *,
        if_match: int | None = None,
        guard: Sequence[Cmp] = (),
    ) -> T:
        """:meth:`Objects.update` of one object. ``stored(guid, pid, sid, object, revision)``
        is the caller's view of it (``StoredPackage``), which ``change`` gets, returning the new
        model object; ``updated`` is set when that changes anything."""
        pid, sid = await self.owner(etcd, guid)

        def view(record: Record) -> T:
            return stored(guid, pid, sid, record.values["meta"], record.revision)

        record = await self.objects(etcd, cache, pid, sid).update(
            guid, lambda current: {"meta": change(view(current))}, if_match=if_match, guard=guard
        )
        return view(record)


PACKAGES = Owned(
    "package",
    Package,
    keys.HELPER_PACKAGES,
    keys.package_owner,
    keys.package,
    keys.packages,
    keys.package_of,
)
DROPLETS = Owned(
    "droplet",
    Droplet,
    keys.HELPER_DROPLETS,
    keys.droplet_owner,
    keys.droplet,
    keys.droplets,
    keys.droplet_of,
)
