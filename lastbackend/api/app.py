"""The aiohttp application factory: one app serves every family on one etcd client."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge

from lastbackend.api import (
    apps,
    cluster,
    dashboard,
    middlewares,
    projects,
    registries,
    repos,
    services,
    system,
)
from lastbackend.api import builds as builds_family
from lastbackend.api import certificates as certificates_family
from lastbackend.api import container_logs as logs_family
from lastbackend.api import discovery as discovery_family
from lastbackend.api import droplets as droplets_family
from lastbackend.api import event_stream as events_family
from lastbackend.api import hooks as hooks_family
from lastbackend.api import images as images_family
from lastbackend.api import lifecycle as lifecycle_family
from lastbackend.api import packages as packages_family
from lastbackend.api import vendors as vendors_family
from lastbackend.api.state import STATE, LogSource, State
from lastbackend.config import Settings
from lastbackend.store.cache import ReadCache
from lastbackend.store.etcd import Etcd


def make_app(
    settings: Settings,
    etcd: Etcd,
    *,
    registry: CollectorRegistry | None = None,
    controllers: Callable[[], Mapping[str, Mapping[str, object]]] | None = None,
    router: Callable[[], Mapping[str, object]] | None = None,
    families: bool = True,
    logs: LogSource | None = None,
    lifecycle: Callable[[], Mapping[str, object]] | None = None,
    buildpacks: Callable[[], Mapping[str, object]] | None = None,
) -> web.Application:
    """The API; with ``families=False`` only the system routes (for controller/node processes).

    ``registry`` is shared with in-process controllers so ``/metrics`` shows theirs too.
    ``logs`` reads this process's node agent's containers: given where a node agent runs, it
    serves ``/node/containers/{id}/logs``, which API processes proxy (503 without it).
    ``lifecycle`` gives the loaded descriptor's view for ``/api/lifecycle`` (503 without it),
    ``buildpacks`` the buildpack catalog's for ``/api/buildpacks``.
    """
    registry = registry or CollectorRegistry()
    inflight = middlewares.InFlight()
    browsers = middlewares.Browsers.of(settings)
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[
            middlewares.pipeline(middlewares.Metrics(registry), inflight, browsers, settings)
        ],
    )
    app.on_response_prepare.append(browsers.on_prepare)
    app[STATE] = State(
        settings=settings,
        etcd=etcd,
        controllers=controllers,
        router=router,
        logs=logs,
        lifecycle=lifecycle,
        buildpacks=buildpacks,
    )
    app[system.REGISTRY] = registry
    app[middlewares.INFLIGHT] = inflight
    app.on_shutdown.append(_closing)
    app.on_cleanup.append(_cleanup)
    app.router.add_routes(system.routes)
    app.router.add_routes(logs_family.node_routes)
    if families:
        app[STATE].cache = ReadCache(etcd)
        _cache_metrics(registry, app[STATE].cache)
        app.on_startup.append(_start_cache)
        for family in (
            projects,
            services,
            registries,
            logs_family,
            lifecycle_family,
            apps,
            repos,
            packages_family,
            droplets_family,
            events_family,
            vendors_family,
            images_family,
            hooks_family,
            builds_family,
            certificates_family,
            discovery_family,
            cluster,
        ):
            app.router.add_routes(family.routes)
        dashboard.install(app)
    return app


def _cache_metrics(registry: CollectorRegistry, cache: ReadCache) -> None:
    """The read cache on ``/metrics``: how reads were answered, and how far it has got."""
    reads = Gauge(
        "lastbackend_api_cache_reads",
        "Reads of cached families since start, by what answered them: memory (the cache had "
        "caught up) or etcd (it had not, within the bound).",
        ["answer"],
        registry=registry,
    )
    reads.labels("memory").set_function(lambda: cache.hits)
    reads.labels("etcd").set_function(lambda: cache.fallbacks)
    Gauge(
        "lastbackend_api_cache_revision_reads",
        "etcd calls made for the current revision (one serves every read waiting at the time).",
        registry=registry,
    ).set_function(lambda: cache.revisions.calls)
    Gauge(
        "lastbackend_api_cache_revision",
        "The revision the read cache has applied.",
        registry=registry,
    ).set_function(lambda: cache.informer.revision)
    Gauge(
        "lastbackend_api_cache_keys", "Keys held in the read cache.", registry=registry
    ).set_function(lambda: len(cache.informer.cache))


async def _start_cache(app: web.Application) -> None:
    """Start filling the read cache; reads go to etcd until it has synced."""
    cache = app[STATE].cache
    if cache is not None:
        cache.start()


async def _closing(app: web.Application) -> None:
    """Shutdown's first step: end log streams, which would otherwise hold it up for its timeout."""
    app[STATE].closing.set()


async def _cleanup(app: web.Application) -> None:
    await app[STATE].close()
