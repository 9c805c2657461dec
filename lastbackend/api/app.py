"""The aiohttp application factory: one app serves every family on one etcd client."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry

from lastbackend.api import middlewares, projects, registries, services, system
from lastbackend.api.state import STATE, State
from lastbackend.config import Settings
from lastbackend.store.etcd import Etcd


def make_app(settings: Settings, etcd: Etcd) -> web.Application:
    registry = CollectorRegistry()
    inflight = middlewares.InFlight()
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[
            middlewares.observe(middlewares.Metrics(registry), inflight),
            middlewares.errors,
            middlewares.auth(settings),
        ],
    )
    app[STATE] = State(settings=settings, etcd=etcd)
    app[system.REGISTRY] = registry
    app[middlewares.INFLIGHT] = inflight
    for family in (system, projects, services, registries):
        app.router.add_routes(family.routes)
    return app
