"""The gc controller: remove what crashes and lost nodes leave behind in the tree.

The normal paths clean up after themselves (a pod and its helper key go in one txn; a node agent
removes the container object of a container it removes). What they cannot cover:

- a node that died for good never removes its container objects: its containers' keys stay
  under ``services/<sid>/containers/`` after the services controller moved the pods elsewhere;
- a ``helper/pods/<id>`` whose pod spec is gone, or a pod whose service is gone, if a process
  died between steps that a future change splits into several transactions.

Apps, packages and droplets (seed 000) add more of the same kind:

- ``helper/apps/<sid>``, ``helper/packages/<guid>`` and ``helper/droplets/<guid>`` whose object
  is gone. Deletes remove them in the same txn, but a cascade too large for one txn (a project
  with thousands of packages) leaves them to this sweep, as does a crash;
- a package left ``PROCESSING_UPLOAD`` by an upload whose process died: once its ``updated`` is
  older than ``UPLOAD_STALE_AFTER`` (a live upload refreshes it every minute) it becomes
  ``FAILED`` with "upload interrupted, upload again";
- blob files (package bits, staging logs, build logs) whose package, droplet or build no longer
  exists: deleting an app, a service or an image takes its packages, droplets and builds out of
  etcd in one txn, but files cannot join a txn. Only blobs older than :data:`BLOB_GRACE` go, so a
  blob written just after its object was created is never judged by a cache that has not seen
  the object yet; temporary files of uploads cut off by a crash go after :data:`TEMP_MAX_AGE`.
  This part needs the blob directory (``GarbageCollector(BlobStore(...))``), shared by every
  host that runs controllers. Build keys live under ``projects/`` (a service's) and ``images/``
  (an image's), so both are watched.

Everything here is one work key, ``sweep``: any change under the watched prefixes queues it (the
queue de-duplicates, so a burst of changes is one sweep), and it runs again every resync period.
Each deletion is a fenced txn that also compares the key unchanged since the sweep read it, so a
key rewritten in between (a container reported again) survives.

A sweep runs on the event loop without awaiting (when it finds nothing) and costs what it walks,
so two things keep it from taking the process over while the tree changes all the time (a cold
start over 100,000 services writes 200,000 keys, each change queueing a sweep):

- it walks only the keys under ``projects/`` it judges (containers, packages, droplets, builds:
  :class:`Judged`, kept current from the view's changes), not every key of the tree;
- after a sweep that took *d* seconds the next one waits at least ``d * (1 / SWEEP_SHARE - 1)``,
  so sweeps use at most :data:`SWEEP_SHARE` of the loop (a sweep of a small tree takes well under a
  millisecond: no delay anyone notices). Before, each of the services controller's reconciles
  waited for a whole sweep of the tree: its first pass over N services was O(N^2).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Sequence

import attrs
import structlog

from lastbackend import codec
from lastbackend.controllers.runner import Controller, Watch
from lastbackend.model.apps import Package
from lastbackend.model.common import now
from lastbackend.model.platform import Container
from lastbackend.model.pods import Pod
from lastbackend.sources.blobs import BUILD_LOGS, BlobStore
from lastbackend.store import keys
from lastbackend.store.builds import build_of
from lastbackend.store.etcd import KV, Cmp, Op
from lastbackend.store.informer import KeyedView
from lastbackend.store.packages import upload_stale

log = structlog.get_logger("lastbackend.controllers.gc")

SWEEP = "sweep"
INTERRUPTED = "upload interrupted, upload again"
BLOB_GRACE = 60.0
"""Seconds a blob must exist before it can be judged an orphan."""
BLOB_SWEEP_EVERY = 30.0
"""Seconds between two looks at the blob directory (sweeps themselves can be far more often)."""
TEMP_MAX_AGE = 6 * 3600.0
SWEEP_SHARE = 0.1
"""The largest share of the event loop's time sweeps take when changes queue them back to back."""
SWEEP_PAUSE_MAX = 30.0
"""Seconds a pause between sweeps lasts at most (a sweep's time counts its deletes' awaits)."""


def _judged_kind(raw: str) -> str | None:
    """Which of :class:`Judged`'s kinds a key under ``projects/`` is, if any."""
    if keys.container_of(raw) is not None:
        return "containers"
    if keys.owned_of(raw) is not None:
        return "owned"
    if build_of(raw) is not None:
        return "builds"
    return None


class Judged:
    """The keys under ``projects/`` a sweep walks, by kind: ``containers``, ``owned`` (packages
    and droplets) and ``builds`` (blob owners). Built from a view's cache once per term and kept
    current by a handler on it, so a sweep costs what it judges, not the size of the tree."""

    def __init__(self, view: KeyedView) -> None:
        self.view = view
        self.kinds: dict[str, dict[str, KV]] = {"containers": {}, "owned": {}, "builds": {}}
        for raw, kv in view.cache.items():
            self.changed(raw, None, kv)
        view.add_handler(self.changed)

    def changed(self, raw: str, old: KV | None, new: KV | None) -> None:
        kind = _judged_kind(raw)
        if kind is None:
            return
        if new is None:
            self.kinds[kind].pop(raw, None)
        else:
            self.kinds[kind][raw] = new


def _sweep(_: str) -> str:
    return SWEEP


class GarbageCollector(Controller):
    name = "gc"
    workers = 1
    resync_period = 60.0

    def __init__(self, blobs: BlobStore | None = None) -> None:
        super().__init__()
        self.blobs = blobs
        self._blobs_swept = float("-inf")
        self._judged: Judged | None = None
        self._next_sweep = float("-inf")  # monotonic time before which no sweep starts

    async def started(self) -> None:
        self._next_sweep = float("-inf")

    @property
    def judged(self) -> Judged:
        """The index of the current term's ``projects/`` view, built on first use (a new term
        has a new view): no await between building it and adding its handler, so it misses no
        change."""
        view = self.informer(keys.PROJECTS)
        if self._judged is None or self._judged.view is not view:
            self._judged = Judged(view)
        return self._judged

    def watches(self) -> Sequence[Watch]:
        return [
            Watch(keys.PROJECTS, to_key=_sweep),
            Watch(keys.PODS, to_key=_sweep),
            Watch(keys.NODES, to_key=_sweep),
            Watch(keys.HELPER_PODS, to_key=_sweep),
            Watch(keys.HELPER_APPS, to_key=_sweep),
            Watch(keys.HELPER_PACKAGES, to_key=_sweep),
            Watch(keys.HELPER_DROPLETS, to_key=_sweep),
            Watch(keys.HELPER_DOMAINS, to_key=_sweep),
            Watch(keys.IMAGES, to_key=_sweep),
        ]

    async def reconcile(self, key: str) -> float | None:
        wait = self._next_sweep - time.monotonic()
        if wait > 0:
            return wait  # looked at again then; changes meanwhile are in that sweep
        started = time.monotonic()
        try:
            await self._sweep()
        finally:
            took = time.monotonic() - started
            pause = min(took * (1 / SWEEP_SHARE - 1), SWEEP_PAUSE_MAX)
            self._next_sweep = time.monotonic() + pause
        return None

    async def _sweep(self) -> None:
        projects = self.informer(keys.PROJECTS)
        pods_informer = self.informer(keys.PODS)
        pods = {
            pod.id: pod
            for kv in pods_informer.cache.values()
            for pod in [pods_informer.decoded(kv, Pod)]
        }
        nodes = {keys.leaf(raw) for raw in self.informer(keys.NODES).cache}
        garbage: list[tuple[KV, str]] = []
        # Each informer is its own watch and may lag another: judge a key only against a cache
        # that has seen every change up to that key's revision, or a pod created just before
        # its container was reported could look missing. The next sweep gets the rest.
        for kv in self.judged.kinds["containers"].values():
            if pods_informer.revision < kv.mod_revision:
                continue
            container = projects.decoded(kv, Container)
            # a live node's agent drains and removes its own (routers first stop sending)
            if container.pod and container.pod not in pods and container.node not in nodes:
                garbage.append((kv, f"pod {container.pod} is gone with its node"))
        for raw, kv in self.informer(keys.HELPER_PODS).cache.items():
            if keys.leaf(raw) not in pods and pods_informer.revision >= kv.mod_revision:
                garbage.append((kv, "no pod spec"))
        for pod in pods.values():
            kv = pods_informer.get(keys.pod_spec(pod.node, pod.id))
            meta = keys.service_part(pod.project, pod.service, "meta")
            if kv and projects.get(meta) is None and projects.revision >= kv.mod_revision:
                garbage.append((kv, "its service is gone"))
        garbage += self._lost_helpers(projects)
        for kv, why in garbage:
            result = await self.txn([Cmp.unchanged(kv, kv.key)], [Op.delete(kv.key)])
            if result.succeeded:
                log.info("garbage removed", key=kv.key, why=why)
        await self._fail_interrupted_uploads(projects)
        if self.blobs is not None and time.monotonic() - self._blobs_swept >= BLOB_SWEEP_EVERY:
            self._blobs_swept = time.monotonic()
            await self._sweep_blobs(self.blobs)

    def _lost_helpers(self, projects: KeyedView) -> list[tuple[KV, str]]:
        """Helper keys of apps, packages and droplets whose object is not in the tree, and host
        claims no service's ``domains`` lists (a project delete too large for one txn)."""
        garbage: list[tuple[KV, str]] = []
        for raw, kv in self.informer(keys.HELPER_APPS).cache.items():
            meta = keys.service_part(kv.value.decode(), keys.leaf(raw), "meta")
            if projects.get(meta) is None and projects.revision >= kv.mod_revision:
                garbage.append((kv, "its service is gone"))
        for prefix, key_of in (
            (keys.HELPER_PACKAGES, keys.package),
            (keys.HELPER_DROPLETS, keys.droplet),
        ):
            for raw, kv in self.informer(prefix).cache.items():
                owner = keys.parse_owner(kv.value)
                target = key_of(*owner, keys.leaf(raw)) if owner else None
                gone = target is None or projects.get(target) is None
                if gone and projects.revision >= kv.mod_revision:
                    garbage.append((kv, "its object is gone"))
        for raw, kv in self.informer(keys.HELPER_DOMAINS).cache.items():
            owner = keys.parse_owner(kv.value)
            domains = projects.get(keys.service_part(*owner, "domains")) if owner else None
            held = domains is not None and keys.domain_of(raw) in json.loads(domains.value)
            if not held and projects.revision >= kv.mod_revision:
                garbage.append((kv, "no service lists the host"))
        return garbage

    async def _fail_interrupted_uploads(self, projects: KeyedView) -> None:
        at = now()
        for raw, kv in list(self.judged.kinds["owned"].items()):
            if keys.package_of(raw) is None:
                continue
            package: Package = projects.decoded(kv, Package)  # type: ignore[arg-type]
            if not upload_stale(package, at):
                continue
            failed = attrs.evolve(package, state="FAILED", error=INTERRUPTED, updated=at)
            result = await self.txn(
                [Cmp.unchanged(kv, kv.key)], [Op.put(kv.key, codec.dumps(failed))]
            )
            if result.succeeded:
                log.info("interrupted upload failed", key=kv.key, since=str(package.updated))

    async def _sweep_blobs(self, blobs: BlobStore) -> None:
        alive: dict[str, set[str]] = {"packages": set(), "droplets": set(), BUILD_LOGS: set()}
        judged = self.judged.kinds
        owners = itertools.chain(
            judged["owned"], judged["builds"], self.informer(keys.IMAGES).cache
        )
        for raw in owners:
            owned = _blob_of(raw)
            if owned is not None:
                alive[owned[0]].add(owned[1])
        oldest = time.time() - BLOB_GRACE
        for kind, living in alive.items():
            found = await asyncio.to_thread(blobs.entries, kind)
            for guid, mtime in found.items():
                if guid in living or mtime >= oldest:
                    continue
                if await asyncio.to_thread(blobs.delete, kind, guid):
                    log.info("orphaned blob removed", kind=kind, guid=guid)
        for path in await asyncio.to_thread(blobs.sweep_temps, TEMP_MAX_AGE):
            log.info("abandoned temporary blob removed", path=str(path))


def _blob_of(raw: str) -> tuple[str, str] | None:
    """The blob a key owns, as (kind, name): a package's bits, a droplet's log, a build's log."""
    owned = keys.owned_of(raw)
    if owned is not None:
        return owned.collection, owned.guid
    build = build_of(raw)
    if build is not None:
        target, number = build
        return BUILD_LOGS, target.log_name(number)
    return None
