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
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from lastbackend.model.hosts import WILDCARD, default_host, dial_host, web_port
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


def build(projects: Mapping[str, bytes], nodes: Mapping[str, bytes], domain: str) -> list[Route]:
    """Every route, exact hosts first (by host), then wildcards (by host).

    ``projects`` and ``nodes`` map raw keys to values, as an informer's caches or a range read
    hold them; keys of other shapes are ignored, values that do not decode leave their service
    (or container) out rather than the whole table.
    """
    project_names: dict[str, str] = {}
    services: dict[tuple[str, str], dict[str, Any]] = {}
    for key, raw in projects.items():
        ref = keys.service_of(key)
        if ref is None:
            pid = keys.project_meta_of(key)
            if pid is not None and _field(raw, "name"):
                project_names[pid] = _field(raw, "name")
            continue
        entry = services.setdefault((ref.project, ref.service), {"containers": []})
        container = keys.container_of(key)
        if container is not None:
            decoded = _json(raw)
            if isinstance(decoded, dict):
                entry["containers"].append(decoded)
        elif key == keys.service_part(ref.project, ref.service, keys.leaf(key)):
            entry[keys.leaf(key)] = _json(raw)
    addresses = {keys.leaf(key): node_address(raw) for key, raw in nodes.items()}
    routes: list[Route] = []
    for (pid, sid), parts in services.items():
        project, meta = project_names.get(pid), parts.get("meta")
        config = parts.get("config")
        if not project or not isinstance(meta, dict) or not isinstance(config, dict):
            continue
        name = str(meta.get("name") or "")
        ports = config.get("ports")
        port = web_port(ports) if isinstance(ports, dict) else None
        if not name or port is None:
            continue
        upstreams = tuple(sorted(_upstreams(parts["containers"], port, addresses)))
        domains = parts.get("domains") if isinstance(parts.get("domains"), dict) else {}
        hosts = [default_host(name, project, domain)]
        hosts += [h for h, on in sorted(domains.items()) if on is True]
        routes += [Route(h, project, name, pid, sid, upstreams) for h in hosts]
    return sorted(routes, key=lambda r: (r.wildcard, r.host))


def _upstreams(
    containers: Iterable[Mapping[str, Any]], port: str, addresses: Mapping[str, str]
) -> Iterable[Upstream]:
    for container in containers:
        node = str(container.get("node") or "")
        host_port = (container.get("ports") or {}).get(port)
        ready = container.get("ready") is not False  # None: written before health checks
        # a node whose key went (its lease expired) keeps serving from its containers until
        # they are gone: its pods wait out node.eviction_timeout, and its address is known
        # from the container objects
        address = addresses.get(node) or str(container.get("host") or "")
        if container.get("status") != "running" or not ready or not address:
            continue
        if isinstance(host_port, int) and not isinstance(host_port, bool) and host_port > 0:
            yield Upstream(address, host_port, str(container.get("id") or ""), node)


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _field(raw: bytes, name: str) -> str:
    value = _json(raw)
    return str(value.get(name) or "") if isinstance(value, dict) else ""
