"""Apps (seed 000) over services: find one by guid alone, list across projects, run a droplet.

An app is a service (DESIGN.md section 1), so this module adds no object of its own: it reads
and writes the service's parts through :mod:`lastbackend.store.services`, and finds the project
of a bare guid through ``helper/apps/<guid> -> <pid>`` (made and removed with every service).
A helper key whose service is gone (a crash between two API processes cannot leave one, but the
gc controller may not have run after a too-large cascade) reads as a missing app.

Starting, stopping and assigning a droplet are each one transaction that compares every part of
the service as read and, when a droplet is involved, the droplet key unchanged: a droplet deleted
or restaged meanwhile cannot be started half-way. They are
:meth:`Objects.update_async <lastbackend.store.objects.Objects.update_async>` (GuaranteedUpdate:
lost races retried, a change that changes nothing skipped) on the services layout named "app".

Running a droplet points the service's ``image`` key at the droplet's image, clears
``config.command`` (the image's own command runs) and publishes its ports with host port 0 (any
free port): ``$PORT``/TCP for a buildpack droplet (``PORT`` from the app's environment when it is
a port number, else 8080, as on Cloud Foundry), each port the image exposes for a docker one.
Environment values are stored encrypted, so reading ``PORT`` takes the secrets key.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from lastbackend import codec
from lastbackend.model.apps import AppCreate, AppState, BuildpackLifecycle, Droplet, Lifecycle
from lastbackend.model.common import HostPort, PortSpec, Replicas, Text, is_uuid, now
from lastbackend.model.platform import Meta, ServiceConfig
from lastbackend.secrets import Secrets, is_token
from lastbackend.store import keys, services
from lastbackend.store.etcd import KV, Cmp, Etcd
from lastbackend.store.objects import Guarded, NameCache, NotFound, Objects, Page, Record

if TYPE_CHECKING:
    from lastbackend.store.cache import LayoutCache

_Row = TypeVar("_Row", bound=tuple[Any, ...])

DEFAULT_PORT = 8080
"""The port a buildpack app listens on when its environment sets no ``PORT``."""
ORDERS = ("created_at", "updated_at", "name")


class Refused(ValueError):
    """A well-formed request the app's state does not allow; the API answers 422."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason


def app_state(record: Record) -> AppState:
    """The ``app`` part; a service made through ``/api`` has none and runs: ``STARTED``."""
    state: AppState | None = record.values.get("app")
    return state if state is not None else AppState(desired_state="STARTED")


def lifecycle(record: Record) -> Lifecycle:
    """The ``lifecycle`` part, or the default: buildpack auto-detection, default stack."""
    value: Lifecycle | None = record.values.get("lifecycle")
    return value if value is not None else BuildpackLifecycle()


def config(record: Record) -> ServiceConfig:
    value: ServiceConfig | None = record.values.get("config")
    return value if value is not None else ServiceConfig()


def app_port(env: Mapping[str, str], secrets: Callable[[], Secrets] | None = None) -> int:
    """``PORT`` from a stored environment (decrypted), else :data:`DEFAULT_PORT`."""
    raw = env.get("PORT", "")
    if is_token(raw):
        if secrets is None:
            raise ValueError("PORT is encrypted: reading it needs the secrets key")
        raw = secrets().decrypt(raw)
    if raw.isascii() and raw.isdigit() and 1 <= int(raw) <= 65535:
        return int(raw)
    return DEFAULT_PORT


def run_parts(
    record: Record, droplet: Droplet, secrets: Callable[[], Secrets] | None = None
) -> dict[str, Any]:
    """The ``image`` and ``config`` that run ``droplet`` (see the module docstring)."""
    if droplet.image is None:
        raise Refused("the droplet has no image; stage it again")
    current = config(record)
    if droplet.lifecycle.type == "docker":
        ports = {PortSpec(p): HostPort(0) for p in droplet.ports}
    else:
        ports = {PortSpec(f"{app_port(current.env, secrets)}/TCP"): HostPort(0)}
    replicas = current.replicas or Replicas(1)
    new = attrs.evolve(current, command=Text(""), ports=ports, replicas=replicas)
    return {"image": droplet.image, "config": new}


Change = Callable[[str, Record], Awaitable[Guarded]]
"""(pid, record) -> (new values of some parts, extra guards for the txn); may raise."""


def _ordered(rows: list[_Row], order: str, descending: bool) -> list[_Row]:
    """Rows of (id, project id, ..., meta) in a list's order: by the field, then by id."""
    field = {"created_at": "created", "updated_at": "updated", "name": "name"}[order]
    return sorted(rows, key=lambda row: (getattr(row[3], field), row[0]), reverse=descending)


class Apps:
    """The app transactions on one etcd client, sharing the services' read caches."""

    def __init__(
        self,
        etcd: Etcd,
        cache: NameCache,
        secrets: Callable[[], Secrets] | None = None,
        reads: LayoutCache | None = None,
    ) -> None:
        self.etcd = etcd
        self.cache = cache
        self.secrets = secrets  # only starting a buildpack droplet needs it: $PORT
        self.reads = reads
        """The API's read cache of services (``store.cache``): gets and lists answer from it
        whenever it has caught up, as ``Objects`` reads do."""

    def services(self, pid: str) -> Objects:
        reads = self.reads.of(pid) if self.reads is not None else None
        return services.services(self.etcd, self.cache, pid, reads)

    # reads --------------------------------------------------------------------------------------

    async def owner(self, guid: str) -> str:
        """The project id of app ``guid``; :class:`NotFound` if there is no such app."""
        kv = await self.etcd.get(keys.app_owner(guid)) if is_uuid(guid) else None
        if kv is None:
            raise NotFound(f"app {guid!r} not found")
        return kv.value.decode()

    async def get(self, guid: str) -> tuple[str, Record]:
        if self.reads is not None and await self.reads.fresh():
            pid = self.reads.group_of(guid) if is_uuid(guid) else None
            record = self.reads.record(pid, guid) if pid is not None else None
            if pid is None or record is None:
                raise NotFound(f"app {guid!r} not found")
            return pid, record
        pid = await self.owner(guid)
        try:
            return pid, await self.services(pid).get(guid)
        except NotFound:
            raise NotFound(f"app {guid!r} not found") from None

    async def droplet(self, pid: str, sid: str, guid: str) -> tuple[Droplet, KV] | None:
        kv = await self.etcd.get(keys.droplet(pid, sid, guid)) if is_uuid(guid) else None
        return (codec.loads(kv.value, Droplet), kv) if kv is not None else None

    async def list(
        self,
        *,
        page: int,
        per_page: int,
        order: str = "created_at",
        descending: bool = False,
        names: Collection[str] | None = None,
        spaces: Collection[str] | None = None,
    ) -> tuple[Page, list[str]]:
        """One page of apps across projects, and the project id of each, read at one revision.

        The app index gives every (guid, project); the metas of those in ``spaces`` are read to
        filter by name and sort, then the other parts of the page's apps only.
        """
        if self.reads is not None and await self.reads.fresh():
            return self._list_cached(self.reads, page, per_page, order, descending, names, spaces)
        revision, pairs = await self.etcd.pairs(keys.HELPER_APPS)
        owners = [(keys.leaf(key.decode()), pid.decode()) for key, pid in pairs]
        if spaces is not None:
            owners = [(sid, pid) for sid, pid in owners if pid in spaces]
        meta_keys = {sid: keys.service_part(pid, sid, "meta") for sid, pid in owners}
        found = await self.etcd.read_many(list(meta_keys.values()), revision=revision)
        rows: list[tuple[str, str, KV, Meta]] = []
        for sid, pid in owners:
            kv = found.get(meta_keys[sid])
            if kv is None:
                continue  # a dangling helper key: not an app
            meta: Meta = self._decode("meta", kv)
            if names is None or meta.name in names:
                rows.append((sid, pid, kv, meta))
        chosen = _ordered(rows, order, descending)[(page - 1) * per_page : page * per_page]
        part_keys = {
            sid: {p: keys.service_part(pid, sid, p) for p in services.PARTS if p != "meta"}
            for sid, pid, _, _ in chosen
        }
        rest = await self.etcd.read_many(
            [key for parts in part_keys.values() for key in parts.values()], revision=revision
        )
        records = []
        for sid, _, meta_kv, _ in chosen:
            kvs: dict[str, KV | None] = {"meta": meta_kv}
            kvs.update({part: rest.get(key) for part, key in part_keys[sid].items()})
            values = {part: self._decode(part, kv) for part, kv in kvs.items() if kv}
            records.append(Record(sid, values, kvs))
        pids = [pid for _, pid, _, _ in chosen]
        return Page(records=records, total=len(rows), revision=revision), pids

    @staticmethod
    def _list_cached(
        reads: LayoutCache,
        page: int,
        per_page: int,
        order: str,
        descending: bool,
        names: Collection[str] | None,
        spaces: Collection[str] | None,
    ) -> tuple[Page, list[str]]:
        """:meth:`list` from the read cache: the same rows, with no ``await`` between them (one
        revision, the cache's)."""
        rows: list[tuple[str, str, Record, Meta]] = []
        for pid, sid in reads.everything():
            if spaces is not None and pid not in spaces:
                continue
            record = reads.record(pid, sid)
            if record is None:
                continue
            meta: Meta = record.values["meta"]
            if names is None or meta.name in names:
                rows.append((sid, pid, record, meta))
        chosen = _ordered(rows, order, descending)[(page - 1) * per_page : page * per_page]
        records = [record for _, _, record, _ in chosen]
        pids = [pid for _, pid, _, _ in chosen]
        return Page(records=records, total=len(rows), revision=reads.revision), pids

    def _decode(self, part: str, kv: KV) -> Any:
        """Decoded once per (key, mod revision), in the cache the services store uses."""
        token = (kv.key, kv.mod_revision)
        value = self.cache.values.get(token)
        if value is None:
            value = services.CODECS[part].decode(kv.value)
            self.cache.values.put(token, value)
        return value

    # writes -------------------------------------------------------------------------------------

    async def create(self, spec: AppCreate) -> tuple[str, Record]:
        """A service with replicas 1, the lifecycle and a ``STOPPED`` app state, in one txn.

        :class:`NotFound` when the space (project) does not exist, :class:`Conflict` when the
        name is taken in it.
        """
        pid = spec.relationships.space.guid
        t = now()
        values = {
            "meta": Meta(spec.name, t, t),
            "config": ServiceConfig(replicas=Replicas(1), env=dict(spec.environment_variables)),
            "lifecycle": spec.lifecycle or BuildpackLifecycle(),
            "app": AppState(desired_state="STOPPED"),
        }
        return pid, await self.services(pid).create(spec.name, values)

    async def start(self, guid: str, *, if_match: int | None = None) -> tuple[str, Record]:
        async def change(pid: str, record: Record) -> Guarded:
            state = app_state(record)
            if state.current_droplet is None:
                raise Refused("app has no current droplet; stage a package and assign it first")
            found = await self.droplet(pid, record.id, state.current_droplet)
            if found is None:
                raise Refused(
                    f"the current droplet {state.current_droplet} no longer exists; "
                    "assign another with PATCH .../relationships/current_droplet"
                )
            droplet, kv = found
            _require_staged(droplet, state.current_droplet)
            wanted = {"app": attrs.evolve(state, desired_state="STARTED")}
            parts = run_parts(record, droplet, self.secrets)
            return {**wanted, **parts}, [Cmp.unchanged(kv, kv.key)]

        return await self._update(guid, change, if_match)

    async def stop(self, guid: str, *, if_match: int | None = None) -> tuple[str, Record]:
        """``STOPPED``: the services controller removes the pods; image and config are kept."""

        async def change(_: str, record: Record) -> Guarded:
            return {"app": attrs.evolve(app_state(record), desired_state="STOPPED")}, []

        return await self._update(guid, change, if_match)

    async def assign(
        self, guid: str, droplet_guid: str, *, if_match: int | None = None
    ) -> tuple[str, Record]:
        """Make ``droplet_guid`` the current droplet; a started app runs it at once (a rolling
        deploy: the services controller replaces the pods surge-first)."""

        async def change(pid: str, record: Record) -> Guarded:
            found = await self.droplet(pid, record.id, droplet_guid)
            if found is None:
                raise Refused(f"droplet {droplet_guid} is not a droplet of app {guid}", "data.guid")
            droplet, kv = found
            _require_staged(droplet, droplet_guid, "data.guid")
            state = attrs.evolve(app_state(record), current_droplet=droplet_guid)
            wanted: dict[str, Any] = {"app": state}
            if state.desired_state == "STARTED":
                wanted.update(run_parts(record, droplet, self.secrets))
            return wanted, [Cmp.unchanged(kv, kv.key)]

        return await self._update(guid, change, if_match)

    async def _update(self, guid: str, change: Change, if_match: int | None) -> tuple[str, Record]:
        """:meth:`Objects.update_async` of the app's service: every part and ``change``'s guards
        compared, a lost race retried, ``meta`` written with ``updated`` set; errors name it an
        app."""
        pid = await self.owner(guid)

        async def guarded(current: Record) -> Guarded:
            return await change(pid, current)

        layout = attrs.evolve(services.layout(pid), kind="app")
        return pid, await Objects(self.etcd, layout, self.cache).update_async(
            guid,
            guarded,
            if_match=if_match,
            touch=True,  # the app view reads meta's version
        )


def _require_staged(droplet: Droplet, guid: str, field: str | None = None) -> None:
    if droplet.state != "STAGED":
        reason = f"droplet {guid} is {droplet.state}, not STAGED; only a staged droplet can run"
        raise Refused(reason, field)
