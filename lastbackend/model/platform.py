"""Projects, services and their parts: the objects of seed 001, as stored and as sent.

Stored classes hold exactly the document's fields (plus ``description`` and the service
``command``, extensions the README names); ids live in the key, never in the value. ``*Create``
classes are what a client may send: ``codec`` refuses unknown fields, so ``created`` cannot be
forged and a typo is an error rather than a silently ignored field.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NewType

import attrs

from lastbackend.model import hosts
from lastbackend.model.common import (
    ContainerPath,
    EnvName,
    GitRef,
    Hostname,
    HostPort,
    ImageRef,
    Instant,
    MemoryMB,
    Name,
    PortSpec,
    Replicas,
    RepoSegment,
    Text,
    VolumeName,
    keywords,
)
from lastbackend.model.health import HealthCheck


@attrs.frozen
class Meta:
    """``projects/<pid>/meta`` and ``services/<sid>/meta``: the project or service info object."""

    name: Name
    created: datetime
    updated: datetime
    description: Text = Text("")


@attrs.frozen
class ServiceConfig:
    """``services/<sid>/config``. ``command`` extends seed 001: a container needs something to run.

    ``image`` is what the user asked for; the service's ``image`` key holds what actually runs
    (the same reference, or a later build's or droplet's image).
    """

    image: ImageRef | None = None
    name: str = ""
    replicas: Replicas = Replicas(1)
    memory: MemoryMB = MemoryMB(128)
    command: Text = Text("")
    ports: dict[PortSpec, HostPort] = attrs.Factory(dict)
    env: dict[EnvName, str] = attrs.Factory(dict)
    volumes: dict[VolumeName, ContainerPath] = attrs.Factory(dict)
    health_check: HealthCheck | None = None
    """When a container counts as ready (``model.health``); ``None``: the default for its ports."""
    min_ready: MinReady | None = None
    """Seconds a new container must have been ready before a rollout counts it and retires an
    old one; ``None``: :data:`MIN_READY`."""
    stop_timeout: StopTimeout | None = None
    """Seconds from SIGTERM to SIGKILL when a container is stopped; ``None``: 10."""
    progress_deadline: ProgressDeadline | None = None
    """Seconds a rollout may go without completing before it is marked failed (the old pods
    keep serving); ``None``: :data:`PROGRESS_DEADLINE`."""


@attrs.frozen
class ServiceSource:
    """``services/<sid>/source``: where builds clone from."""

    hub: Hostname
    owner: RepoSegment
    repo: RepoSegment
    branch: GitRef = GitRef("master")


Domains = hosts.Domains


MinReady = NewType("MinReady", int)
ProgressDeadline = NewType("ProgressDeadline", int)
StopTimeout = NewType("StopTimeout", int)
STOP_TIMEOUT = 10
MIN_READY = 3
PROGRESS_DEADLINE = 300

TERMINATING = "Terminating"
"""A container's ``reason`` while the node agent drains and stops it (its pod was deleted)."""


@attrs.frozen
class Container:
    """``services/<sid>/containers/<id>``, written by the node agent.

    ``pod`` and ``node`` extend seed 001's object: they tie a container to the pod it runs, which
    the services controller needs to tell when a rollout's new pods are serving.
    """

    id: str
    status: str
    created: datetime
    updated: datetime
    ports: dict[str, int] = attrs.Factory(dict)
    pod: str = ""
    node: str = ""
    ready: bool | None = None
    """Whether its health check passes: the routers send traffic to ready containers only.
    ``None`` in objects written before health checks (treated as ready while running)."""
    restarts: int = 0
    """Times the pod's container was started again after it stopped (crash-loop backoff)."""
    exit_code: int | None = None
    reason: str = ""
    """Why it is not ready or not running: ``CrashLoopBackOff``, ``HealthCheckFailed``,
    ``OOMKilled``, ``Error``, ``Completed``, ``Starting``; empty while ready."""
    started: Instant | None = None
    finished: Instant | None = None
    """When it last stopped, while it is stopped: with ``started``, how long it ran."""
    ready_since: Instant | None = None
    """When it last became ready: a rollout counts a new container after ``min_ready`` seconds."""
    host: str = ""
    """Where its published ports are reached (its node's address): routers keep dialling it
    while its node is lost but within ``node.eviction_timeout``."""


@attrs.frozen
class Build:
    """``services/<sid>/builds/<n>`` and ``images/<iid>/builds/<n>``: the build object."""

    status: str
    created: datetime
    updated: datetime
    commit: str = ""
    commit_message: str = ""
    committer: str = ""
    message: str = ""


@attrs.frozen
class RollbackBody:
    """``POST .../rollback``: the revision to go back to; none: the one before the current."""

    revision: int | None = None


@attrs.frozen
class ProjectCreate:
    name: Name
    description: Text = Text("")


@attrs.frozen
class ServiceCreate:
    name: Name
    description: Text = Text("")
    config: ServiceConfig = attrs.Factory(ServiceConfig)
    source: ServiceSource | None = None
    domains: Domains = attrs.Factory(dict)
    image: ImageRef | None = None


@attrs.frozen
class ImageBody:
    """The body of ``PUT .../image``; the key itself holds the bare string."""

    image: ImageRef


def _within(low: int, high: int, what: str) -> Any:
    @keywords(minimum=low, maximum=high)
    def check(value: int) -> int:
        if not low <= value <= high:
            raise ValueError(f"{what} must be between {low} and {high} seconds, got {value}")
        return value

    return check


CHECKS: dict[Any, tuple[type, Any]] = {
    MinReady: (int, _within(0, 3600, "min_ready")),
    ProgressDeadline: (int, _within(5, 86400, "progress_deadline")),
    StopTimeout: (int, _within(0, 3600, "stop_timeout")),
}
"""The shape of ``model.common.CHECKS``, registered with the converter."""
