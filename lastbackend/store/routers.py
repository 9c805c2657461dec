"""What routers read and what they announce: the routed keys, and ``system/routers/<name>``.

A router's config is built from ``projects/`` (kept to :func:`routed_key`), ``nodes/`` and
``certificates/``. Each live router keeps ``system/routers/<name>`` on its lease with the
revision of ``projects/`` its loaded config reflects (:class:`~lastbackend.model.routers.Router`),
so whoever changed an app can tell when every router serves the change: :func:`routing` compares
that revision with the newest change to the app's keys that the table reads. ``projects/`` is
the right measure: a router's informer follows every event under it, so its revision is how far
it has read the app's keys, and a routed change makes it load and announce at once.
"""

from __future__ import annotations

import attrs

from lastbackend import codec
from lastbackend.model.routers import Router
from lastbackend.store import keys
from lastbackend.store.etcd import Etcd, Op

_SERVICE_PARTS = frozenset({"meta", "config", "domains"})


def routed_key(key: str) -> str | None:
    """The informer filter: the keys the table is built from (the key itself), else ``None``."""
    if keys.project_meta_of(key) is not None or keys.container_of(key) is not None:
        return key
    ref = keys.service_of(key)
    if ref is not None and keys.leaf(key) in _SERVICE_PARTS:
        return key if key == keys.service_part(ref.project, ref.service, keys.leaf(key)) else None
    return None


@attrs.frozen
class Routing:
    """How far the live routers have got with one service, at one etcd revision."""

    revision: int
    """The newest change to the service's routed keys (:func:`routed_key`) or its project's
    ``meta``: not its ``status`` or builds, which change no route and which a router only
    announces having passed every :data:`~lastbackend.router.daemon.ANNOUNCE_EVERY`."""
    routers: list[Router]

    def behind(self) -> list[Router]:
        """The routers whose loaded config predates that change."""
        return [r for r in self.routers if r.revision < self.revision]


async def routers(etcd: Etcd) -> tuple[int, list[Router]]:
    """The live routers, by name, and the revision they were read at."""
    found = await etcd.range(keys.ROUTERS)
    return found.revision, sorted(
        (codec.loads(kv.value, Router) for kv in found.kvs), key=lambda r: r.name
    )


async def routing(etcd: Etcd, pid: str, sid: str) -> Routing:
    """The service's newest change and the live routers, read in one snapshot."""
    read = await etcd.txn(
        [],
        [
            Op.get_prefix(keys.service(pid, sid), keys_only=True),
            Op.get(keys.project_meta(pid)),
            Op.get_prefix(keys.ROUTERS),
        ],
    )
    subtree, meta, announced = read.reads
    routed = [kv for kv in subtree if routed_key(kv.key) is not None]
    newest = max((kv.mod_revision for kv in (*routed, *meta)), default=0)
    found = sorted((codec.loads(kv.value, Router) for kv in announced), key=lambda r: r.name)
    return Routing(revision=newest, routers=found)
