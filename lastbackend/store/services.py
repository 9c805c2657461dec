"""Services of one project: five part keys under ``services/<sid>/`` plus a name index.

The parts are seed 001's ``meta``, ``config``, ``source``, ``domains`` and ``image`` (a bare
string, the image that runs). ``containers/`` and ``builds/`` live in the same subtree, written by
controllers, and go with the service when it is deleted.
"""

from __future__ import annotations

from collections.abc import Mapping

from lastbackend.model.platform import Domains, Meta, ServiceConfig, ServiceSource
from lastbackend.store import keys
from lastbackend.store.etcd import Etcd
from lastbackend.store.objects import Layout, NameCache, Objects, Part

CODECS: Mapping[str, Part] = {
    "meta": Part(Meta),
    "config": Part(ServiceConfig),
    "source": Part(ServiceSource),
    "domains": Part(Domains),
    "image": Part(str, bare=True),
}


def layout(pid: str) -> Layout:
    return Layout(
        kind="service",
        index=keys.service_names(pid),
        subtrees=lambda sid: (keys.service(pid, sid),),
        parts=lambda sid: {part: keys.service_part(pid, sid, part) for part in keys.SERVICE_PARTS},
        codecs=CODECS,
        parent=keys.project_meta(pid),
    )


def services(etcd: Etcd, cache: NameCache, pid: str) -> Objects:
    return Objects(etcd, layout(pid), cache)
