"""Droplets: ``services/<sid>/droplets/<guid>`` plus ``helper/droplets/<guid> -> <pid>:<sid>``.

A droplet is one staging of one package of an app, stored beside the package in the app's
subtree. The transactions follow ``store/packages.py``; creating one also compares the package
unchanged since it was read (still ``READY``, not deleted) and whatever else the caller's
decision rested on (the app's ``lifecycle`` key), so a droplet is never made from a package or
lifecycle that changed in between. The staging controller moves droplets through ``STAGING`` to
``STAGED`` or ``FAILED`` with :meth:`Droplets.update` or :meth:`Droplets.swap`, passing its
fence as ``guard``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import attrs

from lastbackend import codec
from lastbackend.model.apps import Droplet, Lifecycle
from lastbackend.model.common import new_id
from lastbackend.store import keys
from lastbackend.store.etcd import KV, Cmp, Etcd, Op
from lastbackend.store.objects import Contention, NameCache, require_version, retries
from lastbackend.store.owned import CACHE_SIZE, DROPLETS
from lastbackend.store.packages import StoredPackage


@attrs.frozen
class StoredDroplet:
    """A droplet as read or written; ``revision`` is its key's ``mod_revision`` (the ETag)."""

    guid: str
    project: str
    app: str
    droplet: Droplet
    revision: int

    @property
    def key(self) -> str:
        return keys.droplet(self.project, self.app, self.guid)

    def unchanged(self) -> Cmp:
        return Cmp(self.key, "mod", "==", self.revision)


class Droplets:
    """The transactions on droplets."""

    def __init__(self, etcd: Etcd) -> None:
        self.etcd = etcd
        self._cache = NameCache(CACHE_SIZE)

    # reads --------------------------------------------------------------------------------------

    async def owner(self, guid: str) -> tuple[str, str]:
        return await DROPLETS.owner(self.etcd, guid)

    async def get(self, guid: str) -> StoredDroplet:
        stored = decode_at(await DROPLETS.read(self.etcd, guid))
        assert stored is not None
        return stored

    async def list(
        self,
        *,
        apps: Collection[str] | None = None,
        packages: Collection[str] | None = None,
        states: Collection[str] | None = None,
    ) -> tuple[list[StoredDroplet], int]:
        """Every droplet that passes the filters, oldest first, all read at one revision."""
        found, revision = await DROPLETS.read_all(self.etcd, apps)
        out = []
        for kv in found:
            stored = decode_at(kv)
            if stored is None:
                continue
            droplet = stored.droplet
            if (states is None or droplet.state in states) and (
                packages is None or droplet.package in packages
            ):
                out.append(stored)
        out.sort(key=lambda s: (s.droplet.created, s.guid))
        return out, revision

    async def app_lifecycle(self, pid: str, sid: str) -> tuple[Lifecycle | None, KV | None]:
        """The app's ``lifecycle`` key, decoded, with the KV to guard a create on."""
        kv = await self.etcd.get(keys.service_part(pid, sid, "lifecycle"))
        if kv is None:
            return None, None
        lifecycle: Lifecycle = codec.loads(kv.value, Lifecycle)  # type: ignore[arg-type]
        return lifecycle, kv

    # writes -------------------------------------------------------------------------------------

    async def create(
        self, package: StoredPackage, droplet: Droplet, *, guard: Sequence[Cmp] = ()
    ) -> StoredDroplet | None:
        """A new droplet of ``package``'s app; None if the package (or a ``guard``) changed
        since it was read: the caller reads again and decides again."""
        guid = new_id()
        pid, sid = package.project, package.app
        key = keys.droplet(pid, sid, guid)
        owner = keys.droplet_owner(guid)
        result = await self.etcd.txn(
            [
                package.unchanged(),
                Cmp.present(keys.service_part(pid, sid, "meta")),
                Cmp.absent(key),
                Cmp.absent(owner),
                *guard,
            ],
            [Op.put(key, codec.dumps(droplet)), Op.put(owner, keys.owner_value(pid, sid))],
        )
        if not result.succeeded:
            return None
        return StoredDroplet(guid, pid, sid, droplet, result.revision)

    async def update(
        self,
        guid: str,
        change: Callable[[StoredDroplet], Droplet],
        *,
        if_match: int | None = None,
        guard: Sequence[Cmp] = (),
    ) -> StoredDroplet:
        """Read-modify-write with retries (:meth:`Objects.update`); ``updated`` is set.

        ``change`` gets the stored droplet and returns the new one; it may raise to refuse, and
        it can run more than once. ``guard``: more comparisons (a controller's fence).
        """
        return await DROPLETS.update(
            self.etcd, self._cache, guid, change, StoredDroplet, if_match=if_match, guard=guard
        )

    async def swap(
        self, current: StoredDroplet, droplet: Droplet, *, guard: Sequence[Cmp] = ()
    ) -> StoredDroplet | None:
        """Write ``droplet`` (as given) if the stored one is still ``current``; None if not."""
        result = await self.etcd.txn(
            [current.unchanged(), *guard], [Op.put(current.key, codec.dumps(droplet))]
        )
        if not result.succeeded:
            return None
        return attrs.evolve(current, droplet=droplet, revision=result.revision)

    async def delete(self, guid: str, *, if_match: int | None = None) -> StoredDroplet:
        """Remove the droplet and its helper key; a staging of it stops (the staging
        controller sees the helper key go)."""
        async for _ in retries():
            current = await self.get(guid)
            require_version("droplet", current.revision, if_match)
            result = await self.etcd.txn(
                [current.unchanged()],
                [Op.delete(current.key), Op.delete(keys.droplet_owner(guid))],
            )
            if result.succeeded:
                return current
        raise Contention(f"droplet {guid!r} is changing too fast; try again")


def _decode(kv: KV, pid: str, sid: str, guid: str) -> StoredDroplet:
    return StoredDroplet(guid, pid, sid, codec.loads(kv.value, Droplet), kv.mod_revision)


def decode_at(kv: KV) -> StoredDroplet | None:
    """A droplet read by key: ``projects/<pid>/services/<sid>/droplets/<guid>``."""
    where = DROPLETS.locate(kv.key)
    return _decode(kv, *where) if where is not None else None
