"""The aiohttp application factory: one app serves every family on one etcd client."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from aiohttp import web
from prometheus_client import CollectorRegistry

from lastbackend.api import middlewares, projects, registries, services, system
from lastbackend.api.state import STATE, State
from lastbackend.config import Settings
from lastbackend.store.etcd import Etcd


def make_app(
    settings: Settings,
    etcd: Etcd,
    *,
    registry: CollectorRegistry | None = None,
    controllers: Callable[[], Mapping[str, Mapping[str, object]]] | None = None,
    families: bool = True,
) -> web.Application:
    """The API; with ``families=False`` only the system routes (for controller/node processes).

    ``registry`` is shared with in-process controllers so ``/metrics`` shows theirs too.
    """
    registry = registry or CollectorRegistry()
    inflight = middlewares.InFlight()
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[
            middlewares.observe(middlewares.Metrics(registry), inflight),
            middlewares.errors,
            middlewares.auth(settings),
        ],
    )
    app[STATE] = State(settings=settings, etcd=etcd, controllers=controllers)
    app[system.REGISTRY] = registry
    app[middlewares.INFLIGHT] = inflight
    app.router.add_routes(system.routes)
    if families:
        for family in (projects, services, registries):
            app.router.add_routes(family.routes)
    return app
