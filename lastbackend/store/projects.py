"""Projects: ``projects/<pid>/meta`` plus ``helper/projects/<name> -> <pid>`` (seed 001).

Project names are unique in the installation: seed 001 asks for uniqueness per owner, and its
key tree indexes names globally, so one installation is one owner.
"""

from __future__ import annotations

from lastbackend.model.platform import Meta
from lastbackend.store import keys
from lastbackend.store.etcd import Etcd
from lastbackend.store.objects import Cached, Layout, NameCache, Objects, Part
from lastbackend.store.services import contained_helpers


def _app_owner(_: bytes, sid: bytes) -> tuple[str]:
    return (keys.app_owner(sid.decode()),)


LAYOUT = Layout(
    kind="project",
    index=keys.HELPER_PROJECTS,
    subtrees=lambda pid: (keys.project(pid), keys.project_helpers(pid)),
    parts=lambda pid: {"meta": keys.project_meta(pid)},
    codecs={"meta": Part(Meta)},
    cascade=lambda pid: (
        (keys.service_names(pid), _app_owner),
        (keys.services(pid), contained_helpers),
    ),
)


def projects(etcd: Etcd, cache: NameCache, reads: Cached | None = None) -> Objects:
    return Objects(etcd, LAYOUT, cache, reads)
