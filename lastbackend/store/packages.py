"""Packages: ``services/<sid>/packages/<guid>`` plus ``helper/packages/<guid> -> <pid>:<sid>``.

A package belongs to an app (a service, DESIGN.md section 1) and lives in its subtree, so it goes
with the service; the helper key finds it from its guid alone. Every public call is one etcd
transaction, in the shapes of ``store/objects.py``:

- create compares ``helper/apps/<app>`` still naming the project, the service's meta present and
  the package's key and helper absent, then puts both;
- update reads, changes and writes back comparing the ``mod_revision`` it read (retrying a lost
  race, skipping a write that changes nothing); :meth:`Packages.swap` is the single attempt,
  for a writer that holds the package in a state (an upload in ``PROCESSING_UPLOAD``);
- delete compares the package unchanged and removes it and its helper key together.

Credentials: a docker package's ``password`` and a git package's ``password``/``api_key`` are
Fernet-encrypted here, before anything reaches etcd, and never decrypted for a response (the API
shows ``***``); :meth:`Packages.clear_credentials` decrypts them for the staging controller.

An upload that stays ``PROCESSING_UPLOAD`` longer than :data:`UPLOAD_STALE_AFTER` is taken to
have died with its process: another upload may take the package over and the gc controller
fails it. A live upload refreshes ``updated`` every :data:`UPLOAD_HEARTBEAT`, so however long
it takes to normalize, it never looks dead.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from datetime import datetime, timedelta

import attrs

from lastbackend import codec
from lastbackend.model.apps import (
    BitsPackage,
    BitsPackageCreate,
    DockerCredentials,
    DockerPackage,
    DockerPackageCreate,
    GitCredentials,
    GitPackage,
    Package,
    PackageCreate,
)
from lastbackend.model.common import new_id, now
from lastbackend.secrets import Secrets
from lastbackend.store import keys
from lastbackend.store.etcd import KV, Cmp, Op, Store
from lastbackend.store.objects import Contention, NameCache, require_version, retries
from lastbackend.store.owned import CACHE_SIZE, PACKAGES, AppNotFound, app_project

UPLOAD_STALE_AFTER = timedelta(minutes=5)
UPLOAD_HEARTBEAT = 60.0
"""Seconds between the ``updated`` refreshes of an upload being processed."""

Credentials = DockerCredentials | GitCredentials


@attrs.frozen
class StoredPackage:
    """A package as read or written; ``revision`` is its key's ``mod_revision`` (the ETag)."""

    guid: str
    project: str
    app: str
    package: Package
    revision: int

    @property
    def key(self) -> str:
        return keys.package(self.project, self.app, self.guid)

    def unchanged(self) -> Cmp:
        return Cmp(self.key, "mod", "==", self.revision)


def upload_stale(package: Package, at: datetime) -> bool:
    """Whether a ``PROCESSING_UPLOAD`` has outlived its process (see the module docstring)."""
    return package.state == "PROCESSING_UPLOAD" and at - package.updated > UPLOAD_STALE_AFTER


class Packages:
    """The transactions on packages.

    ``secrets`` is called only when a secret is encrypted or decrypted, so reading packages
    never creates a key file.
    """

    def __init__(self, etcd: Store, secrets: Callable[[], Secrets]) -> None:
        self.etcd = etcd
        self._secrets = secrets
        self._cache = NameCache(CACHE_SIZE)

    # reads --------------------------------------------------------------------------------------

    async def owner(self, guid: str) -> tuple[str, str]:
        return await PACKAGES.owner(self.etcd, guid)

    async def get(self, guid: str) -> StoredPackage:
        stored = decode_at(await PACKAGES.read(self.etcd, guid))
        assert stored is not None
        return stored

    async def list(
        self,
        *,
        apps: Collection[str] | None = None,
        states: Collection[str] | None = None,
        types: Collection[str] | None = None,
    ) -> tuple[list[StoredPackage], int]:
        """Every package that passes the filters, oldest first, all read at one revision."""
        found, revision = await PACKAGES.read_all(self.etcd, apps)
        out = []
        for kv in found:
            stored = decode_at(kv)
            if stored is None:
                continue
            package = stored.package
            if (states is None or package.state in states) and (
                types is None or package.type in types
            ):
                out.append(stored)
        out.sort(key=lambda s: (s.package.created, s.guid))
        return out, revision

    # writes -------------------------------------------------------------------------------------

    async def create(self, app: str, spec: PackageCreate) -> StoredPackage:
        """A new package of ``app``; :class:`AppNotFound` if the app does not exist."""
        pid = await app_project(self.etcd, app)
        guid = new_id()
        package = self._new(spec)
        key = keys.package(pid, app, guid)
        owner = keys.package_owner(guid)
        result = await self.etcd.txn(
            [
                Cmp.value_is(keys.app_owner(app), pid),
                Cmp.present(keys.service_part(pid, app, "meta")),
                Cmp.absent(key),
                Cmp.absent(owner),
            ],
            [Op.put(key, codec.dumps(package)), Op.put(owner, keys.owner_value(pid, app))],
        )
        if not result.succeeded:
            raise AppNotFound(f"app {app!r} not found")
        return StoredPackage(guid, pid, app, package, result.revision)

    def _new(self, spec: PackageCreate) -> Package:
        t = now()
        if isinstance(spec, BitsPackageCreate):
            return BitsPackage(created=t, updated=t)
        if isinstance(spec, DockerPackageCreate):
            return DockerPackage(t, t, spec.image, credentials=self._encrypt(spec.credentials))
        return GitPackage(t, t, spec.url, credentials=self._encrypt(spec.credentials))

    def _encrypt(self, creds: Credentials | None) -> Credentials | None:
        if creds is None:
            return None
        secrets = self._secrets()
        if isinstance(creds, DockerCredentials):
            return attrs.evolve(creds, password=_seal(secrets, creds.password))
        return attrs.evolve(
            creds,
            password=_seal(secrets, creds.password),
            api_key=_seal(secrets, creds.api_key),
        )

    def clear_credentials(self, package: Package) -> Credentials | None:
        """A docker or git package's credentials with the secrets decrypted, for the staging
        controller; never for a response. Raises ``SecretError`` if the key cannot read them."""
        creds = getattr(package, "credentials", None)
        if creds is None:
            return None
        secrets = self._secrets()
        if isinstance(creds, DockerCredentials):
            return attrs.evolve(creds, password=_open(secrets, creds.password))
        assert isinstance(creds, GitCredentials)
        return attrs.evolve(
            creds, password=_open(secrets, creds.password), api_key=_open(secrets, creds.api_key)
        )

    async def update(
        self,
        guid: str,
        change: Callable[[StoredPackage], Package],
        *,
        if_match: int | None = None,
        guard: Sequence[Cmp] = (),
    ) -> StoredPackage:
        """Read-modify-write with retries (:meth:`Objects.update`); ``updated`` is set.

        ``change`` gets the stored package and returns the new one; it may raise to refuse, and
        it can run more than once. ``guard``: more comparisons (a controller's fence).
        """
        return await PACKAGES.update(
            self.etcd, self._cache, guid, change, StoredPackage, if_match=if_match, guard=guard
        )

    async def swap(
        self, current: StoredPackage, package: Package, *, guard: Sequence[Cmp] = ()
    ) -> StoredPackage | None:
        """Write ``package`` (as given) if the stored one is still ``current``; None if not."""
        result = await self.etcd.txn(
            [current.unchanged(), *guard], [Op.put(current.key, codec.dumps(package))]
        )
        if not result.succeeded:
            return None
        return attrs.evolve(current, package=package, revision=result.revision)

    async def delete(self, guid: str, *, if_match: int | None = None) -> StoredPackage:
        """Remove the package and its helper key; its droplets stay (they name it, as CF's do)."""
        async for _ in retries():
            current = await self.get(guid)
            require_version("package", current.revision, if_match)
            result = await self.etcd.txn(
                [current.unchanged()],
                [Op.delete(current.key), Op.delete(keys.package_owner(guid))],
            )
            if result.succeeded:
                return current
        raise Contention(f"package {guid!r} is changing too fast; try again")


def _seal(secrets: Secrets, value: str) -> str:
    """An empty secret stays empty: there is nothing to hide, and ``""`` means none given."""
    return secrets.encrypt(value) if value else ""


def _open(secrets: Secrets, value: str) -> str:
    return secrets.decrypt(value) if value else ""


def _decode(kv: KV, pid: str, sid: str, guid: str) -> StoredPackage:
    package: Package = codec.loads(kv.value, Package)  # type: ignore[arg-type]
    return StoredPackage(guid, pid, sid, package, kv.mod_revision)


def decode_at(kv: KV) -> StoredPackage | None:
    """A package read by key: ``projects/<pid>/services/<sid>/packages/<guid>``."""
    where = PACKAGES.locate(kv.key)
    return _decode(kv, *where) if where is not None else None
