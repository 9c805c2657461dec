"""What every handler reaches through ``request.app[STATE]``: the store and its caches."""

from __future__ import annotations

import attrs
from aiohttp import web

from lastbackend.config import Settings
from lastbackend.store import projects, services
from lastbackend.store.etcd import Etcd
from lastbackend.store.objects import NameCache, Objects


@attrs.define
class State:
    settings: Settings
    etcd: Etcd
    names: NameCache = attrs.Factory(NameCache)
    ready: bool = False

    @property
    def projects(self) -> Objects:
        return projects.projects(self.etcd, self.names)

    def services(self, pid: str) -> Objects:
        return services.services(self.etcd, self.names, pid)


STATE = web.AppKey("state", State)
