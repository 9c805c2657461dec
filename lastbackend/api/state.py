"""What every handler reaches through ``request.app[STATE]``: the store and its caches."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import aiohttp
import attrs
from aiohttp import web

from lastbackend.api.limits import Slots
from lastbackend.config import Settings
from lastbackend.secrets import Secrets
from lastbackend.sources.blobs import BlobStore
from lastbackend.store import images as image_store
from lastbackend.store import projects, services
from lastbackend.store.apps import Apps
from lastbackend.store.builds import Builds
from lastbackend.store.cache import ReadCache
from lastbackend.store.droplets import Droplets
from lastbackend.store.etcd import Etcd
from lastbackend.store.objects import LRU, NameCache, Objects
from lastbackend.store.packages import Packages
from lastbackend.store.registries import Registries
from lastbackend.store.vendors import Vendors

LogSource = Callable[[str, bool, int | None], Awaitable[AsyncIterator[bytes]]]
"""``(container id, follow, tail) -> chunks``: this process's node agent reading one container.

Awaiting it runs the checks, so a refusal is an HTTP status before any byte is streamed: it
raises ``LookupError`` for a container that is not this node's (404) and ``ConnectionError`` when
the engine cannot answer (503). A callable, not the agent: ``api`` imports nothing from ``node``.
"""

VIEWS = 20_000
"""Views kept by :attr:`State.views` (about 1 KB each)."""

CONNECT_TIMEOUT = 5.0
"""Seconds to connect to a node; reads have no limit, since a followed log may idle for hours."""


@attrs.define
class State:
    settings: Settings
    etcd: Etcd
    names: NameCache = attrs.Factory(NameCache)
    cache: ReadCache | None = None
    """The read cache (``store.cache``), where this process serves the API families; started
    and closed with the app. Without it every read goes to etcd."""
    views: LRU = attrs.Factory(lambda: LRU(VIEWS))
    """(kind, id, version) -> an object's encoded JSON view: a version never changes, so one made
    once serves every later read of it (a page of 50 from the cache is then 50 lookups)."""
    controllers: Callable[[], Mapping[str, Mapping[str, object]]] | None = None
    """Per in-process controller: {"ready": bool, ...}; ``/readyz`` is 503 until all are ready.
    A callable, not the manager: ``api`` imports nothing from ``controllers``."""
    router: Callable[[], Mapping[str, object]] | None = None
    """The in-process router's status for ``/readyz`` (a callable, as for controllers)."""
    logs: LogSource | None = None
    """Set where a node agent runs: ``/node/containers/{id}/logs`` answers 503 without it."""
    lifecycle: Callable[[], Mapping[str, object]] | None = None
    """The lifecycle descriptor's view for ``GET /api/lifecycle`` (503 without it). A callable,
    not the descriptor: ``api`` imports nothing from ``lifecycle``."""
    buildpacks: Callable[[], Mapping[str, object]] | None = None
    """The buildpack catalog's view for ``GET /api/buildpacks`` (503 without it); it reads the
    buildpack directories, so the route calls it in a thread."""
    closing: asyncio.Event = attrs.Factory(asyncio.Event)
    """Set when the app shuts down, so log streams that would never end by themselves do."""
    streams: Slots = attrs.field(
        default=attrs.Factory(
            lambda self: Slots("event streams", "api.max_streams", self.settings.max_streams),
            takes_self=True,
        )
    )
    """``/api/events`` streams, each holding an etcd watch: at most ``api.max_streams``."""
    log_follows: Slots = attrs.field(
        default=attrs.Factory(
            lambda self: Slots(
                "followed logs", "api.max_log_follows", self.settings.max_log_follows
            ),
            takes_self=True,
        )
    )
    """Logs followed (``?follow=true``) through this process: at most ``api.max_log_follows``."""
    _secrets: Secrets | None = None
    _http: aiohttp.ClientSession | None = None

    @property
    def event_streams(self) -> int:
        """``/api/events`` streams open now (for tests and metrics)."""
        return self.streams.held

    @property
    def secrets(self) -> Secrets:
        """Loaded on first use, so a process that never touches a secret creates no key file."""
        if self._secrets is None:
            self._secrets = Secrets.from_settings(self.settings)
        return self._secrets

    @property
    def http(self) -> aiohttp.ClientSession:
        """One client for the requests this process makes to nodes, made on first use (it needs
        a running loop) and closed with the app. It carries no credential of its own: each
        request to a node adds the node token itself (``container_logs``), and nothing else."""
        if self._http is None:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),  # each followed log holds a connection
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=CONNECT_TIMEOUT, sock_connect=CONNECT_TIMEOUT
                ),
            )
        return self._http

    async def close(self) -> None:
        if self.cache is not None:
            await self.cache.close()
        if self._http is not None:
            await self._http.close()
            self._http = None

    @property
    def registries(self) -> Registries:
        return Registries(self.etcd, self.secrets)

    @property
    def vendors(self) -> Vendors:
        return Vendors(self.etcd, self.secrets)

    @property
    def images(self) -> Objects:
        return image_store.images(self.etcd, self.names)

    @property
    def projects(self) -> Objects:
        return projects.projects(
            self.etcd, self.names, self.cache.projects if self.cache is not None else None
        )

    def services(self, pid: str) -> Objects:
        reads = self.cache.services.of(pid) if self.cache is not None else None
        return services.services(self.etcd, self.names, pid, reads)

    @property
    def apps(self) -> Apps:
        reads = self.cache.services if self.cache is not None else None
        return Apps(self.etcd, self.names, lambda: self.secrets, reads)  # starting reads $PORT

    @property
    def blobs(self) -> BlobStore:
        """Package bits and staging logs: files under ``settings.blob_dir``, never etcd."""
        return BlobStore(self.settings.blob_dir)

    @property
    def packages(self) -> Packages:
        return Packages(self.etcd, lambda: self.secrets)

    @property
    def droplets(self) -> Droplets:
        return Droplets(self.etcd)

    @property
    def builds(self) -> Builds:
        """Builds of services and images: numbering, reads, cancel."""
        return Builds(self.etcd)


STATE = web.AppKey("state", State)
