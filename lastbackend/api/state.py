"""What every handler reaches through ``request.app[STATE]``: the store and its caches."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import attrs
from aiohttp import web

from lastbackend.config import Settings
from lastbackend.secrets import Secrets
from lastbackend.store import projects, services
from lastbackend.store.etcd import Etcd
from lastbackend.store.objects import NameCache, Objects
from lastbackend.store.registries import Registries


@attrs.define
class State:
    settings: Settings
    etcd: Etcd
    names: NameCache = attrs.Factory(NameCache)
    controllers: Callable[[], Mapping[str, Mapping[str, object]]] | None = None
    """Per in-process controller: {"ready": bool, ...}; ``/readyz`` is 503 until all are ready.
    A callable, not the manager: ``api`` imports nothing from ``controllers``."""
    _secrets: Secrets | None = None

    @property
    def secrets(self) -> Secrets:
        """Loaded on first use, so a process that never touches a secret creates no key file."""
        if self._secrets is None:
            self._secrets = Secrets.from_settings(self.settings)
        return self._secrets

    @property
    def registries(self) -> Registries:
        return Registries(self.etcd, self.secrets)

    @property
    def projects(self) -> Objects:
        return projects.projects(self.etcd, self.names)

    def services(self, pid: str) -> Objects:
        return services.services(self.etcd, self.names, pid)


STATE = web.AppKey("state", State)
