"""Services of one project: part keys under ``services/<sid>/`` plus a name index.

The parts are seed 001's ``meta``, ``config``, ``source``, ``domains`` and ``image`` (a bare
string, the image that runs), and the ``/v3`` family's ``lifecycle`` and ``app`` (an app is a
service). ``containers/``, ``builds/``, ``packages/`` and ``droplets/`` live in the same subtree
and go with the service when it is deleted. ``helper/apps/<sid> -> <pid>`` is made and removed
with the service, so ``/v3/apps/<guid>`` finds any service, however it was created.
"""

from __future__ import annotations

from collections.abc import Mapping

from lastbackend.model.apps import AppState, Lifecycle
from lastbackend.model.platform import Domains, Meta, ServiceConfig, ServiceSource
from lastbackend.store import keys
from lastbackend.store.etcd import Etcd
from lastbackend.store.objects import Layout, NameCache, Objects, Part
from lastbackend.store.owned import helper_of

CODECS: Mapping[str, Part] = {
    "meta": Part(Meta),
    "config": Part(ServiceConfig),
    "source": Part(ServiceSource),
    "domains": Part(Domains),
    "image": Part(str, bare=True),
    "lifecycle": Part(Lifecycle),
    "app": Part(AppState),
}
PARTS = keys.SERVICE_PARTS + keys.APP_PARTS


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
    )


def services(etcd: Etcd, cache: NameCache, pid: str) -> Objects:
    return Objects(etcd, layout(pid), cache)
