"""The route table: which hosts reach which containers, computed from the key tree alone.

Pure: it reads the raw keys an informer holds (``projects/`` and ``nodes/``) and no I/O, so every
router computes the same table from the same revision, ``lastbackend routes`` prints what the
routers serve, and the API answers a service's ``urls`` from the same rules.

- **Hosts.** A service that publishes a TCP port is served at
  ``<service>.<project>.<domain>`` and at every host of its ``domains`` whose value is ``true``
  (``false`` holds the host for the service without routing it). A wildcard host
  (``*.example.com``) is matched after every exact host, so the most specific match wins.
- **Port.** The lowest-numbered TCP port of the service's ``config.ports`` is its web port (the
  one a buildpack app's ``$PORT`` names; ``model.hosts.web_port``); other ports are not routed.
- **Upstreams.** Every container object of the service that is ``running`` and ``ready`` and
  reports a host port for the web port, dialled at its node's address (the host of
  ``nodes/<name>.address``, else the ``host`` its container object carries) and that port. A
  node whose key is gone keeps its containers routed while their objects last: its pods wait
  out ``node.eviction_timeout``, and gc removes the objects once the pods moved.
- **Warm-up.** While some of a service's containers have been ready for ``min_ready`` seconds
  (config, default 3), only those are routed: a container that passes its check and then dies
  within ``min_ready`` (a bad deploy that serves for a second) never gets a request while
  there are proven ones to send it to, the same rule by which the services controller counts a
  new pod before retiring an old one. With no proven container (a first deploy, a service
  scaled up from nothing) every ready one is routed at once. The time is the caller's ``now``
  against the node's ``ready_since``, so nodes' and routers' clocks are assumed in step (NTP);
  :func:`compute` also says when the table next changes by the clock alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

import attrs

from lastbackend.codec import parse_time
from lastbackend.model.hosts import WILDCARD, default_host, dial_host, web_port
from lastbackend.model.platform import MIN_READY
from lastbackend.store import keys

LOOPBACK = "127.0.0.1"


@attrs.frozen(order=True)
class Upstream:
    """One container, as the router dials it."""

    address: str
    port: int
    container: str = attrs.field(order=False)
    node: str = attrs.field(order=False)

    @property
    def dial(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


@attrs.frozen
class Route:
    """One host and the service it reaches."""

    host: str
    project: str  # names, for messages and `lastbackend routes`
    service: str
    project_id: str
    service_id: str
    upstreams: tuple[Upstream, ...]

    @property
    def wildcard(self) -> bool:
        return self.host.startswith(WILDCARD)


@attrs.frozen
class _Service:
    pid: str
    sid: str
    name: str = ""
    port: str | None = None  # "8080/TCP"
    domains: Mapping[str, bool] = attrs.Factory(dict)
    containers: tuple[Mapping[str, Any], ...] = ()


def node_address(raw: bytes) -> str:
    """Where a node's published ports are reached: its advertised address's host."""
    try:
        address = str(json.loads(raw).get("address") or "")
    except (ValueError, AttributeError):
        address = ""
    return dial_host(address)


@attrs.frozen
class Table:
    routes: list[Route]
    """Exact hosts first (by host), then wildcards (by host)."""
    wakes_at: datetime | None
    """The first moment after ``at`` when a ready container finishes its warm-up: the routes
    change then by the clock alone."""


def compute(
    projects: Mapping[str, bytes], nodes: Mapping[str, bytes], domain: str, at: datetime
) -> Table:
    """The routes at time ``at``, and when they next change without a key changing.

    ``projects`` and ``nodes`` map raw keys to values, as an informer's caches or a range read
    hold them; keys of other shapes are ignored, values that do not decode leave their service
    (or container) out rather than the whole table.
    """
    addresses = {keys.leaf(key): node_address(raw) for key, raw in nodes.items()}
    routes: list[Route] = []
    wakes: list[datetime] = []
    for service, project, name, port in _services(projects):
        warming = [(c, _warm_at(c, _min_ready(service))) for c in service["containers"]]
        wakes += [w for _, w in warming if w is not None and w > at]
        upstreams = tuple(sorted(_upstreams(warming, port, addresses, at)))
        domains = service.get("domains") if isinstance(service.get("domains"), dict) else {}
        hosts = [default_host(name, project, domain)]
        hosts += [h for h, on in sorted(domains.items()) if on is True]
        routes += [
            Route(h, project, name, service["pid"], service["sid"], upstreams) for h in hosts
        ]
    return Table(sorted(routes, key=lambda r: (r.wildcard, r.host)), min(wakes, default=None))


def build(
    projects: Mapping[str, bytes], nodes: Mapping[str, bytes], domain: str, at: datetime
) -> list[Route]:
    """Every route at time ``at`` (:func:`compute`)."""
    return compute(projects, nodes, domain, at).routes


def warms_at(projects: Mapping[str, bytes], at: datetime) -> datetime | None:
    """The first moment after ``at`` when a ready container finishes its warm-up, if any."""
    return compute(projects, {}, "", at).wakes_at


def _services(projects: Mapping[str, bytes]) -> Iterable[tuple[dict[str, Any], str, str, str]]:
    """Each routable service's parts (``meta``, ``config``, ``domains``, ``containers``), with
    its project's name, its name and its web port."""
    project_names: dict[str, str] = {}
    services: dict[tuple[str, str], dict[str, Any]] = {}
    for key, raw in projects.items():
        ref = keys.service_of(key)
        if ref is None:
            pid = keys.project_meta_of(key)
            if pid is not None and _field(raw, "name"):
                project_names[pid] = _field(raw, "name")
            continue
        entry = services.setdefault(
            (ref.project, ref.service), {"containers": [], "pid": ref.project, "sid": ref.service}
        )
        container = keys.container_of(key)
        if container is not None:
            decoded = _json(raw)
            if isinstance(decoded, dict):
                entry["containers"].append(decoded)
        elif key == keys.service_part(ref.project, ref.service, keys.leaf(key)):
            entry[keys.leaf(key)] = _json(raw)
    for (pid, _), parts in services.items():
        project, meta = project_names.get(pid), parts.get("meta")
        config = parts.get("config")
        if not project or not isinstance(meta, dict) or not isinstance(config, dict):
            continue
        name = str(meta.get("name") or "")
        ports = config.get("ports")
        port = web_port(ports) if isinstance(ports, dict) else None
        if name and port is not None:
            yield parts, project, name, port


def _upstreams(
    containers: Iterable[tuple[Mapping[str, Any], datetime | None]],
    port: str,
    addresses: Mapping[str, str],
    at: datetime,
) -> Iterable[Upstream]:
    """The routed containers (see the module docstring), each with when its warm-up ends."""
    ready: list[tuple[Upstream, bool]] = []
    for container, warm in containers:
        node = str(container.get("node") or "")
        host_port = (container.get("ports") or {}).get(port)
        # a node whose key went (its lease expired) keeps serving from its containers until
        # they are gone: its pods wait out node.eviction_timeout, and its address is known
        # from the container objects
        address = addresses.get(node) or str(container.get("host") or "")
        if container.get("status") != "running" or container.get("ready") is False:
            continue  # ready None: written before health checks, routed as it always was
        if not address or not isinstance(host_port, int) or isinstance(host_port, bool):
            continue
        if host_port > 0:
            upstream = Upstream(address, host_port, str(container.get("id") or ""), node)
            ready.append((upstream, warm is None or warm <= at))
    proven = [upstream for upstream, warm in ready if warm]
    return proven or [upstream for upstream, _ in ready]


def _min_ready(service: Mapping[str, Any]) -> float:
    value = service["config"].get("min_ready")
    return float(value) if isinstance(value, int | float) and value >= 0 else float(MIN_READY)


def _warm_at(container: Mapping[str, Any], min_ready: float) -> datetime | None:
    """When a ready container has been ready ``min_ready`` seconds (``None``: no such time known,
    so it counts as proven, as containers reported before health checks do)."""
    since = container.get("ready_since")
    if container.get("ready") is not True or not isinstance(since, str):
        return None
    try:
        return parse_time(since) + timedelta(seconds=min_ready)
    except ValueError:
        return None


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _field(raw: bytes, name: str) -> str:
    value = _json(raw)
    return str(value.get(name) or "") if isinstance(value, dict) else ""
