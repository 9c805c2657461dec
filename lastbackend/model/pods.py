"""Pods and nodes: what the services controller assigns and what node agents report.

A pod is one running copy of a service: its spec is frozen at creation (a config change makes
new pods and retires old ones, never edits a pod), so a node agent can name its container after
the pod id and a restarted agent adopts what it finds instead of guessing what changed.
``template`` is a short hash of the spec: pods of the current template are "new", others "old".
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Literal

import attrs

from lastbackend.model.common import MemoryMB, Text
from lastbackend.model.health import HealthCheck, default_check
from lastbackend.model.platform import ServiceConfig


@attrs.frozen
class PodSpec:
    """What a container of the service runs: the service's config and image at one moment."""

    image: str
    command: str = ""
    memory: int = 128
    env: dict[str, str] = attrs.Factory(dict)
    ports: dict[str, int] = attrs.Factory(dict)
    volumes: dict[str, str] = attrs.Factory(dict)
    health_check: HealthCheck | None = None
    stop_timeout: int | None = None

    @classmethod
    def of(cls, config: ServiceConfig, image: str) -> PodSpec:
        return cls(
            image=image,
            command=config.command,
            memory=config.memory,
            env=dict(config.env),
            ports=dict(config.ports),
            volumes=dict(config.volumes),
            health_check=config.health_check,
            stop_timeout=config.stop_timeout,
        )

    def onto(self, config: ServiceConfig) -> ServiceConfig:
        """``config`` with this spec's template fields: the inverse of :meth:`of` (a rollback)."""
        return attrs.evolve(
            config,
            command=Text(self.command),
            memory=MemoryMB(self.memory),
            env=dict(self.env),
            ports=dict(self.ports),
            volumes=dict(self.volumes),
            health_check=self.health_check,
            stop_timeout=self.stop_timeout,
        )

    @property
    def check(self) -> HealthCheck:
        """The health check in force: the configured one, or the default for the ports."""
        return self.health_check or default_check(self.ports)

    @property
    def template(self) -> str:
        """A stable 12-hex-digit hash of the spec: equal specs, equal templates."""
        spec = attrs.asdict(self)
        for added in ("health_check", "stop_timeout"):  # specs from before these fields keep
            if spec[added] is None:  # their hash: an upgrade must not roll every service
                del spec[added]
        raw = json.dumps(spec, sort_keys=True, separators=(",", ":"))
        return hashlib.sha1(raw.encode()).hexdigest()[:12]


@attrs.frozen
class Pod:
    """``pods/<node>/<pod id>``; ``helper/pods/<pod id>`` holds ``<pid>:<sid>`` beside it."""

    id: str
    project: str
    service: str
    node: str
    template: str
    spec: PodSpec
    created: datetime


@attrs.frozen
class Node:
    """``nodes/<name>``, written by the node agent on its lease: gone when the agent is."""

    name: str
    hostname: str
    memory: int  # MB the node offers to pods
    cpus: int
    docker_version: str
    updated: datetime
    address: str = ""
    """The agent's HTTP base URL (``http://10.0.0.5:2967``): API processes fetch the logs of this
    node's containers there, so logs are read where they are, on any number of hosts. Empty from
    an agent that predates it: its containers' logs are unavailable until it re-registers.
    Exactly ``http(s)://host[:port]`` (``config.node_address_problem``, checked by the agent
    that writes it and by the API before it sends the node token there)."""


@attrs.frozen
class Revision:
    """``services/<sid>/revisions/<n>``: a pod template the service was deployed with.

    Written by the services controller whenever the template changes (the last
    :data:`REVISIONS` kept), so ``POST .../rollback`` can bring one back."""

    revision: int
    template: str
    spec: PodSpec
    created: datetime


REVISIONS = 10


@attrs.frozen
class Rollout:
    """Where the service's current revision stands (see ``controllers/rollout.py``)."""

    state: Literal["progressing", "complete", "failed"]
    revision: int
    ready: int
    desired: int
    started: datetime
    reason: str = ""


@attrs.frozen
class ServiceStatus:
    """``services/<sid>/status``: the services controller's report, shown with the service."""

    rollout: Rollout | None = None
