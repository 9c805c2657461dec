"""The gc controller: remove what crashes and lost nodes leave behind in the tree.

The normal paths clean up after themselves (a pod and its helper key go in one txn; a node agent
removes the container object of a container it removes). What they cannot cover:

- a node that died for good never removes its container objects: its containers' keys stay
  under ``services/<sid>/containers/`` after the services controller moved the pods elsewhere;
- a ``helper/pods/<id>`` whose pod spec is gone, or a pod whose service is gone, if a process
  died between steps that a future change splits into several transactions.

Everything here is one work key, ``sweep``: any change under the watched prefixes queues it (the
queue de-duplicates, so a burst of changes is one sweep), and it runs again every resync period.
Each deletion is a fenced txn that also compares the key unchanged since the sweep read it, so a
key rewritten in between (a container reported again) survives.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from lastbackend.controllers.runner import Controller, Watch
from lastbackend.model.platform import Container
from lastbackend.model.pods import Pod
from lastbackend.store import keys
from lastbackend.store.etcd import KV, Cmp, Op

log = structlog.get_logger("lastbackend.controllers.gc")

SWEEP = "sweep"


def _sweep(_: str) -> str:
    return SWEEP


class GarbageCollector(Controller):
    name = "gc"
    workers = 1
    resync_period = 60.0

    def watches(self) -> Sequence[Watch]:
        return [
            Watch(keys.PROJECTS, to_key=_sweep),
            Watch(keys.PODS, to_key=_sweep),
            Watch(keys.HELPER_PODS, to_key=_sweep),
        ]

    async def reconcile(self, key: str) -> float | None:
        projects = self.informer(keys.PROJECTS)
        pods_informer = self.informer(keys.PODS)
        pods = {
            pod.id: pod
            for kv in pods_informer.cache.values()
            for pod in [pods_informer.decoded(kv, Pod)]
        }
        garbage: list[tuple[KV, str]] = []
        # Each informer is its own watch and may lag another: judge a key only against a cache
        # that has seen every change up to that key's revision, or a pod created just before
        # its container was reported could look missing. The next sweep gets the rest.
        for raw, kv in projects.cache.items():
            if "/containers/" not in raw or pods_informer.revision < kv.mod_revision:
                continue
            container = projects.decoded(kv, Container)
            if container.pod and container.pod not in pods:
                garbage.append((kv, f"pod {container.pod} is gone"))
        for raw, kv in self.informer(keys.HELPER_PODS).cache.items():
            if keys.leaf(raw) not in pods and pods_informer.revision >= kv.mod_revision:
                garbage.append((kv, "no pod spec"))
        for pod in pods.values():
            kv = pods_informer.get(keys.pod_spec(pod.node, pod.id))
            meta = keys.service_part(pod.project, pod.service, "meta")
            if kv and projects.get(meta) is None and projects.revision >= kv.mod_revision:
                garbage.append((kv, "its service is gone"))
        for kv, why in garbage:
            result = await self.txn([Cmp.unchanged(kv, kv.key)], [Op.delete(kv.key)])
            if result.succeeded:
                log.info("garbage removed", key=kv.key, why=why)
        return None
