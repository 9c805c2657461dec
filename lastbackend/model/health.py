"""Health checks: when a container counts as ready, in Cloud Foundry's v3 process shape.

``config.health_check`` (an extension of seed 001's config object, and of an app's process):
``{"type": "port" | "http" | "process", "data": {"endpoint", "timeout", "invocation_timeout",
"interval"}}``. The node agent runs it against the container's own address, never through a
published port (Docker's proxy answers a TCP connect there whether the app listens or not):

- ``port``: a TCP connection to the service's web port succeeds;
- ``http``: ``GET <endpoint>`` on the web port answers 200-399 within ``invocation_timeout``;
- ``process``: the container runs.

A new container is checked every :data:`STARTUP_INTERVAL` seconds until it first passes, then
every ``interval``. One that has not passed ``timeout`` seconds after it started is stopped as
``HealthCheckFailed`` and started again (with the crash-loop backoff); a ready one that fails
three checks in a row is taken out of the routers' upstreams, and stopped the same way if it
keeps failing for ``timeout`` seconds. Without a health check a service gets ``port`` when it
publishes a port (the routers would dial it), else ``process``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Literal, NewType

import attrs

from lastbackend.model.common import anchored, keywords

CheckSeconds = NewType("CheckSeconds", int)
"""Whole seconds, 1 to 3600."""
HttpPath = NewType("HttpPath", str)
"""An absolute request path, like ``/healthz``."""

STARTUP_INTERVAL = 0.25
"""Seconds between checks of a container that has not passed one yet: readiness is seen fast."""


CheckType = Literal["port", "http", "process"]


@attrs.frozen
class HealthCheckData:
    endpoint: HttpPath | None = None
    """Only for ``http``; ``/`` when not given."""
    timeout: CheckSeconds = CheckSeconds(60)
    """Seconds a container may take to pass its first check (and may keep failing later)."""
    invocation_timeout: CheckSeconds = CheckSeconds(1)
    """Seconds one check may take."""
    interval: CheckSeconds = CheckSeconds(2)
    """Seconds between checks once it passed."""


@attrs.frozen
class HealthCheck:
    type: CheckType
    data: HealthCheckData = attrs.Factory(HealthCheckData)

    def __attrs_post_init__(self) -> None:
        if self.data.endpoint is not None and self.type != "http":
            raise ValueError(f"data.endpoint: only an http check has an endpoint, not {self.type}")

    @property
    def endpoint(self) -> str:
        return self.data.endpoint or "/"


def default_check(ports: Mapping[str, int]) -> HealthCheck:
    """``port`` for a service that publishes a TCP port, else ``process``."""
    tcp = any(p.upper().endswith("/TCP") for p in ports)
    return HealthCheck("port" if tcp else "process")


@keywords(minimum=1, maximum=3600)
def _seconds(value: int) -> int:
    if not 1 <= value <= 3600:
        raise ValueError(f"must be between 1 and 3600 seconds, got {value}")
    return value


_PATH = re.compile(r"/[^ \r\n\t#]{0,1023}")


@keywords(pattern=anchored(_PATH), maxLength=1024)
def _path(value: str) -> str:
    if not _PATH.fullmatch(value):
        raise ValueError(f"{value!r} is not an absolute request path like '/healthz'")
    return value


CHECKS: dict[Any, tuple[type, Callable[[Any], Any]]] = {
    CheckSeconds: (int, _seconds),
    HttpPath: (str, _path),
}
"""The shape of ``model.common.CHECKS``, registered with the converter."""
