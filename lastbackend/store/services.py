"""Services of one project: part keys under ``services/<sid>/`` plus a name index.

The parts are seed 001's ``meta``, ``config``, ``source``, ``domains`` and ``image`` (a bare
string, the image that runs), and the ``/v3`` family's ``lifecycle`` and ``app`` (an app is a
service). ``containers/``, ``builds/``, ``packages/`` and ``droplets/`` live in the same subtree
and go with the service when it is deleted. ``helper/apps/<sid> -> <pid>`` is made and removed
with the service, so ``/v3/apps/<guid>`` finds any service, however it was created.

Every host in ``domains`` (routed or held) is claimed by ``helper/domains/<host> -> <pid>:<sid>``
in the same transaction that writes the domains, compared absent when taken: a host belongs to
one service, and of writers racing for it exactly one gets it (the others a 409 naming it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lastbackend import codec
from lastbackend.model.apps import AppState, Lifecycle
from lastbackend.model.platform import Domains, Meta, ServiceConfig, ServiceSource
from lastbackend.model.pods import ServiceStatus
from lastbackend.store import keys
from lastbackend.store.etcd import Etcd, Store
from lastbackend.store.objects import Cached, Layout, NameCache, Objects, Part
from lastbackend.store.owned import helper_of

CODECS: Mapping[str, Part] = {
    "meta": Part(Meta),
    "config": Part(ServiceConfig),
    "source": Part(ServiceSource),
    "domains": Part(Domains),
    "image": Part(str, bare=True),
    "lifecycle": Part(Lifecycle),
    "app": Part(AppState),
    "status": Part(ServiceStatus),
}
PARTS = keys.SERVICE_PARTS + keys.APP_PARTS + keys.STATUS_PARTS


def _claims(pid: str, sid: str, values: Mapping[str, Any]) -> dict[str, str]:
    owner = keys.owner_value(pid, sid)
    return {keys.domain(host): owner for host in values.get("domains") or {}}


async def holder(etcd: Store, key: str, value: bytes) -> str:
    """``service 'web' of project 'demo'``: who holds a claimed host, for the 409."""
    ref = keys.parse_owner(value)
    if ref is None:
        return value.decode(errors="replace")
    found = await etcd.read_many(
        [keys.project_meta(ref.project), keys.service_part(ref.project, ref.service, "meta")]
    )
    project = found.get(keys.project_meta(ref.project))
    service = found.get(keys.service_part(ref.project, ref.service, "meta"))
    if project is None or service is None:
        return f"service {ref.service} of project {ref.project}"
    return (
        f"service {codec.loads(service.value, Meta).name!r} of project "
        f"{codec.loads(project.value, Meta).name!r}"
    )


def contained_helpers(key: bytes, value: bytes) -> tuple[str, ...]:
    """The cascade of a project delete, for each key under its services: the helper keys of
    packages and droplets, and the hosts a service's ``domains`` claim."""
    text = key.decode()
    if keys.service_of(text) is not None and keys.leaf(text) == "domains":
        try:
            domains = codec.loads(value, Domains)
        except Exception:  # not ours to judge here: gc reports what does not decode
            return ()
        return tuple(keys.domain(host) for host in domains)
    return helper_of(key, value)


def layout(pid: str) -> Layout:
    return Layout(
        kind="service",
        index=keys.service_names(pid),
        subtrees=lambda sid: (keys.service(pid, sid),),
        parts=lambda sid: {part: keys.service_part(pid, sid, part) for part in PARTS},
        codecs=CODECS,
        parent=keys.project_meta(pid),
        links=lambda sid: {keys.app_owner(sid): pid},
        cascade=lambda sid: (
            (keys.packages(pid, sid), helper_of),
            (keys.droplets(pid, sid), helper_of),
        ),
        claims=lambda sid, values: _claims(pid, sid, values),
        holder=holder,
    )


def services(etcd: Etcd, cache: NameCache, pid: str, reads: Cached | None = None) -> Objects:
    return Objects(etcd, layout(pid), cache, reads)
