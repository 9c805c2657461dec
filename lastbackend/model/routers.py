"""A router as the key tree knows it: alive, and how far its loaded config has caught up."""

from __future__ import annotations

from datetime import datetime

import attrs


@attrs.frozen
class Router:
    """``system/routers/<name>``, written by the router on its lease: gone when the router is.

    ``revision`` is the etcd revision of ``projects/`` that the config Caddy serves reflects:
    every change under ``projects/`` up to it (a container ready, a domain added, an old container
    retired) is routed. A push is routed once every live router has passed the revision of its
    app's newest change. 0 until the first config loads."""

    name: str
    http: str
    https: str
    revision: int
    routes: int
    applied_at: datetime | None = None
    error: str | None = None
    """Why the newest config is not served (Caddy refused it), else ``None``."""
