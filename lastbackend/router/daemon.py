"""``lastbackend router``: keep a supervised Caddy serving the route table of the key tree.

One per ingress host, no leader: every router watches the same keys and loads the same table,
so any number of them serve the same routes (DNS or a load balancer spreads clients over them).

- **Watching.** Informers (the controllers' own, list + watch, resumed across etcd restarts) over
  ``projects/`` (kept to project and service parts and containers), ``nodes/`` and
  ``certificates/``. Every change marks the table dirty; the next load happens
  :data:`DEBOUNCE` seconds later, so a rollout's burst of container reports is one load. The
  table also changes by the clock alone, when a container finishes its warm-up
  (``Table.wakes_at``, computed with the routes): the loop wakes then too.
- **Loading.** The whole config is built from the caches (:func:`~.table.build`,
  :func:`~.caddy.config`) and pushed in one ``POST /load``; a config equal to the one loaded is
  not sent again. A refused config leaves Caddy serving the previous one; the reason is logged,
  counted and shown in ``/readyz`` until a later config loads.
- **Certificates.** The routers' internal CA (``router/ca``: made by whichever process needs it
  first, then shared) is written to the data dir for Caddy's ``pki`` app, and users'
  certificates (``certificates/``) are decrypted into the config, never onto disk.
- **Announcing.** ``system/routers/<name>`` (``<node>-<http port>``) lives on the router's lease
  with the revision of ``projects/`` the loaded config reflects (``store/routers.py``): the
  revision the table was built at, or the projects informer's own once nothing routed has
  changed since, so it follows the tree while the config stays as it is. ``lastbackend push``
  waits for every live router to pass its app's newest change. Written when it changes, at most
  every :data:`ANNOUNCE_EVERY` seconds; the lease is revoked on the way out, and a killed
  router's key goes with its lease (:data:`ROUTER_TTL`).
- **Faults.** Caddy exiting is noticed at once and it is started again (backoff 0.1 s doubling
  to 5 s) and given the current config. etcd going away leaves the caches, and so Caddy, as they
  were: the router keeps serving its last table and ``/readyz`` says so (503) until etcd is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from lastbackend import codec
from lastbackend.codec import format_time
from lastbackend.config import Settings
from lastbackend.model.common import now
from lastbackend.model.routers import Router as Announced
from lastbackend.router import caddy, table
from lastbackend.secrets import SecretError, Secrets
from lastbackend.store import keys
from lastbackend.store.certificates import certificates_for_router, ensure_ca
from lastbackend.store.etcd import Etcd, Op, StoreError, list_prefix
from lastbackend.store.informer import Informer
from lastbackend.store.routers import routed_key

log = structlog.get_logger("lastbackend.router")

DEBOUNCE = 0.05
RESTART_MIN, RESTART_MAX = 0.1, 5.0
ROUTER_TTL = 10
"""Seconds a killed router's announcement outlives it (a push waits for it meanwhile)."""
ANNOUNCE_EVERY = 0.2
"""Seconds between looks at the projects informer's revision, which a busy tree moves
constantly; a load is announced at once (a push is waiting for it)."""


class Router:
    """One router: informers, a Caddy, and the loop between them (see the module docstring)."""

    def __init__(
        self,
        etcd: Etcd,
        secrets: Secrets,
        settings: Settings,
        *,
        data_dir: Path | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.etcd = etcd
        self.secrets = secrets
        self.settings = settings
        self.paths = caddy.Paths(data_dir or settings.data_dir / "router")
        self.caddy = caddy.Caddy(settings.router_caddy, self.paths)
        self.name = f"{settings.node}-{settings.router_http_address[1]}"
        self.informers = {
            keys.PROJECTS: Informer(etcd, keys.PROJECTS, to_key=routed_key, name="router:projects"),
            keys.NODES: Informer(etcd, keys.NODES, name="router:nodes"),
            keys.CERTIFICATES: Informer(etcd, keys.CERTIFICATES, name="router:certificates"),
        }
        for informer in self.informers.values():
            informer.add_handler(self._changed)
        self._dirty = asyncio.Event()
        self._certificates_dirty = True
        self._certificates: list[caddy.Certificate] = []
        self._loaded: dict[str, Any] | None = None
        self.routes: list[table.Route] = []
        self._wakes_at: datetime | None = None  # when the routes change by the clock alone
        self.applied_at: str | None = None
        self._loading = False  # a config built, not yet loaded
        self._serving = False  # the running Caddy has been given a config
        self._applied_revision = 0  # of projects/, in the config Caddy serves
        self._loaded_now = asyncio.Event()  # wakes the announcement after a load
        self.error: str | None = None
        self.etcd_error: str | None = None
        registry = registry or CollectorRegistry()
        self._loads = Counter(
            "lastbackend_router_config_loads",
            "Configs loaded into Caddy, by result.",
            ["result"],
            registry=registry,
        )
        self._load_seconds = Histogram(
            "lastbackend_router_config_load_seconds",
            "Time to build and load one config.",
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        Gauge(
            "lastbackend_router_routes", "Hosts routed by the loaded config.", registry=registry
        ).set_function(lambda: len(self.routes))
        Gauge(
            "lastbackend_router_caddy_restarts", "Times Caddy was started again.", registry=registry
        ).set_function(lambda: self.caddy.restarts)

    # state -------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.caddy.started.is_set() and self.applied_at is not None

    def status(self) -> dict[str, object]:
        """For ``/readyz``: Caddy, the config it serves, and what went wrong last."""
        return {
            "ready": self.ready,
            "caddy": "running" if self.caddy.started.is_set() else "down",
            "caddy_restarts": self.caddy.restarts,
            "routes": len(self.routes),
            "applied_at": self.applied_at,
            "error": self.error,
            "serving": "the last config loaded" if self.applied_at else "nothing yet",
        }

    @property
    def revision(self) -> int:
        """The revision of ``projects/`` the loaded config reflects (0: none served).

        With nothing routed changed since the last load, a table built now would be the one
        loaded, so the informer's own revision holds; otherwise the one the table was built at."""
        if not self._serving:
            return 0  # Caddy away, or restarted and not given its config back yet
        if self._dirty.is_set() or self._loading or self.error is not None:
            return self._applied_revision
        return max(self._applied_revision, self.informers[keys.PROJECTS].revision)

    def announced(self) -> Announced:
        return Announced(
            name=self.name,
            http=self.settings.router_http,
            https=self.settings.router_https,
            revision=self.revision,
            routes=len(self.routes),
            applied_at=codec.parse_time(self.applied_at) if self.applied_at else None,
            error=self.error,
        )

    def _changed(self, key: str, old: object, new: object) -> None:
        if key.startswith(keys.CERTIFICATES):
            self._certificates_dirty = True
        self._dirty.set()

    # running -----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Until cancelled; Caddy is stopped on the way out."""
        try:
            async with asyncio.TaskGroup() as group:
                for informer in self.informers.values():
                    group.create_task(informer.run(), name=f"informer-{informer.name}")
                await self._write_ca()
                group.create_task(self._supervise(), name="router-caddy")
                for informer in self.informers.values():
                    await informer.synced.wait()
                group.create_task(self._apply_loop(), name="router-apply")
                group.create_task(self._announce(), name="router-announce")
        finally:
            await self.caddy.stop()

    async def _write_ca(self) -> None:
        """The shared CA's root and key, where Caddy's ``pki`` app reads them (mode 0600)."""
        delay = RESTART_MIN
        while True:
            try:
                ca = await ensure_ca(self.etcd, self.secrets)
                break
            except StoreError as exc:
                log.warning("router: cannot read the CA yet", error=str(exc), retry=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESTART_MAX)
        self.paths.ca_certificate.parent.mkdir(parents=True, exist_ok=True)
        self.paths.ca_certificate.parent.chmod(0o700)
        files = (
            (self.paths.ca_certificate, ca.certificate_pem),
            (self.paths.ca_key, ca.private_key_pem),
        )
        for path, text in files:
            path.touch(mode=0o600, exist_ok=True)
            path.chmod(0o600)
            path.write_text(text)

    async def _supervise(self) -> None:
        delay = RESTART_MIN
        while True:
            started = time.monotonic()
            try:
                await self.caddy.start()
            except caddy.CaddyError as exc:
                log.error("router: caddy did not start", error=str(exc), retry=delay)
            else:
                if self._loaded is not None:  # a restarted Caddy gets the config back at once
                    await self._load(self._loaded, force=True)
                code = await self.caddy.wait()
                self._serving = False
                log.error("router: caddy exited; starting it again", code=code, retry=delay)
            await self.caddy.stop()
            self.caddy.restarts += 1
            if time.monotonic() - started > 30:
                delay = RESTART_MIN
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_MAX)

    async def _apply_loop(self) -> None:
        self._dirty.set()  # the first table, as soon as the caches are synced
        while True:
            at = datetime.now(UTC)  # to the microsecond: warm-ups end mid-second
            wait = None if self._wakes_at is None else (self._wakes_at - at).total_seconds()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), wait)
            await asyncio.sleep(DEBOUNCE)
            self._loading = True  # before the flag is cleared: the change is not served yet
            self._dirty.clear()
            started = time.perf_counter()
            try:
                await self.caddy.started.wait()
                revision, document = await self._document()
                loaded = await self._load(document)
                if loaded:
                    self._applied_revision = revision
                    self._loaded_now.set()
            finally:
                self._loading = False
            self._load_seconds.observe(time.perf_counter() - started)
            if not loaded and self._dirty.is_set():
                await asyncio.sleep(RESTART_MIN)  # Caddy away: try again, not in a tight loop

    async def _announce(self) -> None:
        """Keep ``system/routers/<name>`` on a live lease, rewritten whenever what it says
        changes: at once after a load, else looked at every :data:`ANNOUNCE_EVERY` seconds."""
        key = keys.router(self.name)
        delay = RESTART_MIN
        while True:
            try:
                async with await self.etcd.grant(ROUTER_TTL) as lease:
                    said: Announced | None = None
                    while not lease.lost.is_set():
                        self._loaded_now.clear()  # before reading: a later load wakes us
                        says = self.announced()
                        if says != said:
                            put = Op.put(key, codec.dumps(says), lease=lease.id)
                            await self.etcd.txn([], [put])
                            said = says
                            delay = RESTART_MIN
                        await _first_of(lease.lost, self._loaded_now, within=ANNOUNCE_EVERY)
                    log.warning("router: lease lost; announcing again", reason=lease.lost_reason)
            except StoreError as exc:
                log.warning("router: cannot announce itself yet", error=str(exc), retry=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESTART_MAX)

    async def _document(self) -> tuple[int, dict[str, Any]]:
        """The config of the table now, and the revision of ``projects/`` it was built at."""
        if self._certificates_dirty:
            try:
                found = await certificates_for_router(self.etcd, self.secrets)
            except (StoreError, SecretError) as exc:
                log.warning("router: certificates not read; keeping the last", error=str(exc))
                self._dirty.set()
            else:
                self._certificates = [caddy.Certificate(*c) for c in found]
                self._certificates_dirty = False
        informer = self.informers[keys.PROJECTS]
        revision = informer.revision  # no await from here: the table is of that revision or later
        projects = {k: kv.value for k, kv in informer.cache.items()}
        nodes = {k: kv.value for k, kv in self.informers[keys.NODES].cache.items()}
        found = table.compute(projects, nodes, self.settings.router_domain, datetime.now(UTC))
        self.routes, self._wakes_at = found.routes, found.wakes_at
        return revision, caddy.config(
            self.routes,
            http=self.settings.router_http,
            https=self.settings.router_https,
            paths=self.paths,
            certificates=self._certificates,
            acme_email=self.settings.router_acme_email,
        )

    async def _load(self, document: dict[str, Any], *, force: bool = False) -> bool:
        """Whether Caddy now serves ``document``."""
        if document == self._loaded and self._serving and not force and self.error is None:
            return True
        try:
            await self.caddy.load(document)
        except caddy.Refused as exc:
            self.error = f"caddy refused the config: {exc}"
            self._loads.labels("refused").inc()
            log.error("router: config refused; serving the previous one", error=str(exc))
            return False
        except caddy.CaddyError as exc:
            self._loads.labels("failed").inc()
            log.warning("router: config not loaded; caddy is away", error=str(exc))
            if not force:
                self._dirty.set()  # built again and loaded once Caddy is back
            return False
        self._loaded = document
        self._serving = True
        self.error = None
        self.applied_at = format_time(now())
        self._loads.labels("loaded").inc()
        log.info("router: config loaded", routes=len(self.routes))
        return True


async def _first_of(*events: asyncio.Event, within: float) -> None:
    """Until one of ``events`` is set, or ``within`` seconds."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()


async def route_table(etcd: Etcd, domain: str) -> list[table.Route]:
    """The table as every router computes it now: ``lastbackend routes``."""
    _, projects = await list_prefix(etcd, keys.PROJECTS, keep=lambda k: routed_key(k) is not None)
    _, nodes = await list_prefix(etcd, keys.NODES)
    return table.build(
        {kv.key: kv.value for kv in projects},
        {kv.key: kv.value for kv in nodes},
        domain,
        datetime.now(UTC),
    )


def describe(routes: list[table.Route]) -> list[dict[str, Any]]:
    """The table as ``lastbackend routes --json`` prints it."""
    return [
        {
            "host": r.host,
            "project": r.project,
            "service": r.service,
            "upstreams": [u.dial for u in r.upstreams],
        }
        for r in routes
    ]
