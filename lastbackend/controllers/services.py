"""The services controller: keep each service's pods at its config, on live nodes.

Work keys: ``svc:<pid>/<sid>`` for anything under a service (meta, config, image, containers),
``pod:<node>/<pod id>`` for a pod (which resolves to its service's key) and ``nodes`` for any node
change (which looks at every service again). The decision of what to do is
:func:`lastbackend.controllers.plan.plan`; this module reads the caches, calls it, and carries out
its plan as fenced transactions:

- a pod is created by putting ``helper/pods/<id> -> <pid>:<sid>`` and ``pods/<node>/<id>`` in one
  txn that also requires the service's meta, so a pod is never made for a deleted service;
- a pod is deleted by removing both keys; the node agent then removes its container.

A reconcile acts on the informers' caches, which trail etcd: a service looked at again before
the pods cache has seen the pods just written would make them twice. So after writing at
revision R the controller *expects* R (as Kubernetes' ReplicaSet controller keeps
"expectations"): the service is not planned again until the pods cache has reached R.

An app (a service with an ``app`` key, seed 000) whose ``desired_state`` is ``STOPPED`` has no
pods, whatever its ``config.replicas`` (kept, so a start brings back as many); a service without
that key runs.

Deleting a service or project (one API txn) leaves its pods to this controller: their service's
meta is gone, so the plan deletes them all. Pods that outlive the controller's knowledge of their
service (it was down when the service went) are found through their ``pod:`` key at the next list.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import structlog

from lastbackend import codec
from lastbackend.controllers.plan import Observed, choose_nodes, plan
from lastbackend.controllers.rollout import counts, state
from lastbackend.controllers.runner import Controller, Watch
from lastbackend.model.apps import AppState
from lastbackend.model.common import new_id, now
from lastbackend.model.platform import (
    MIN_READY,
    PROGRESS_DEADLINE,
    TERMINATING,
    Container,
    ServiceConfig,
)
from lastbackend.model.pods import REVISIONS, Node, Pod, PodSpec, Revision, Rollout, ServiceStatus
from lastbackend.store import keys
from lastbackend.store.etcd import KV, Cmp, Op

log = structlog.get_logger("lastbackend.controllers.services")

EXPECTATION_RETRY = 0.02
"""Seconds before a service waiting for the pods cache to catch up is looked at again."""
EVICTION_TIMEOUT = 300.0
"""Seconds a lost node keeps its pods (Kubernetes' default): ``node.eviction_timeout``."""
UNSCHEDULABLE_RETRY = 5.0
"""Seconds before pods that fit on no node are tried again (a node join also triggers it)."""


def service_key(raw: str) -> str | None:
    """``projects/<pid>/services/<sid>/...`` -> ``svc:<pid>/<sid>``; other keys are ignored."""
    found = keys.service_of(raw)
    return f"svc:{found.project}/{found.service}" if found is not None else None


def pod_key(raw: str) -> str | None:
    """``pods/<node>/<pod id>`` -> ``pod:<node>/<pod id>``; other keys are ignored."""
    found = keys.pod_spec_of(raw)
    return f"pod:{found.node}/{found.pod}" if found is not None else None


class ServicesController(Controller):
    name = "services"
    workers = 4
    resync_period = 60.0

    def __init__(self, *, eviction_timeout: float = EVICTION_TIMEOUT) -> None:
        super().__init__()
        self.eviction_timeout = eviction_timeout
        self._expected: dict[str, int] = {}  # service work key -> revision the cache must reach
        self._lost: dict[str, float] = {}  # node -> when its key was first seen gone (monotonic)

    async def started(self) -> None:
        self._expected.clear()  # a new term starts from a fresh list
        self._lost.clear()  # and gives lost nodes their whole grace again

    def _with_grace(self, pods: Sequence[Pod], nodes: Sequence[Node]) -> tuple[set[str], float]:
        """The nodes whose pods stay where they are: those with a key, and those whose key went
        less than ``eviction_timeout`` seconds ago (an agent back in time keeps its containers
        untouched); and the seconds until the next of those runs out (0: none)."""
        alive = {n.name for n in nodes}
        for name in alive:
            self._lost.pop(name, None)
        clock = time.monotonic()
        kept: set[str] = set(alive)
        soonest = 0.0
        for pod in pods:
            if pod.node in alive:
                continue
            since = self._lost.setdefault(pod.node, clock)
            left = self.eviction_timeout - (clock - since)
            if left > 0:
                kept.add(pod.node)
                soonest = left if not soonest else min(soonest, left)
        return kept, soonest

    def watches(self) -> Sequence[Watch]:
        return [
            Watch(keys.PROJECTS, to_key=service_key),
            Watch(keys.PODS, to_key=pod_key),
            Watch(keys.NODES, to_key=lambda _: "nodes"),
        ]

    # views of the caches -----------------------------------------------------------------------

    def _pods(self) -> list[Pod]:
        return [pod for pod, _ in self._pods_with_order()]

    def _pods_with_order(self) -> list[tuple[Pod, int]]:
        """Every pod with its key's create revision (the order pods were made in)."""
        pods = self.informer(keys.PODS)
        return [(pods.decoded(kv, Pod), kv.create_revision) for kv in pods.cache.values()]

    def _nodes(self) -> list[Node]:
        nodes = self.informer(keys.NODES)
        return [nodes.decoded(kv, Node) for kv in nodes.cache.values()]

    # reconcile ---------------------------------------------------------------------------------

    async def reconcile(self, key: str) -> float | None:
        assert self.queue is not None
        kind, _, rest = key.partition(":")
        if key == "nodes":
            for work_key in self.informer(keys.PROJECTS).work_keys():
                self.queue.add(work_key)
            for pod in self._pods():
                self.queue.add(f"svc:{pod.project}/{pod.service}")
            return None
        if kind == "pod":
            node, _, pod_id = rest.partition("/")
            kv = self.informer(keys.PODS).get(keys.pod_spec(node, pod_id))
            if kv is not None:
                pod = self.informer(keys.PODS).decoded(kv, Pod)
                self.queue.add(f"svc:{pod.project}/{pod.service}")
            return None
        pid, _, sid = rest.partition("/")
        return await self._service(pid, sid)

    async def _service(self, pid: str, sid: str) -> float | None:
        key = f"svc:{pid}/{sid}"
        expected = self._expected.get(key)
        if expected is not None:
            if self.informer(keys.PODS).revision < expected:
                return EXPECTATION_RETRY
            del self._expected[key]
        objects = self.informer(keys.PROJECTS).objects(f"svc:{pid}/{sid}")
        meta = objects.get(keys.service_part(pid, sid, "meta"))
        config_kv = objects.get(keys.service_part(pid, sid, "config"))
        image_kv = objects.get(keys.service_part(pid, sid, "image"))
        config = codec.loads(config_kv.value, ServiceConfig) if config_kv else ServiceConfig()
        image = image_kv.value.decode() if image_kv else None
        spec = PodSpec.of(config, image) if meta and image else None
        app_kv = objects.get(keys.service_part(pid, sid, "app"))
        stopped = (
            app_kv is not None
            and self.informer(keys.PROJECTS).decoded(app_kv, AppState).desired_state == "STOPPED"
        )

        containers = [
            codec.loads(kv.value, Container)
            for raw, kv in objects.items()
            if keys.container_of(raw) is not None
        ]
        at = datetime.now(UTC)  # to the microsecond: min_ready is measured against an Instant
        current = await self._revision(pid, sid, spec, objects) if meta and spec else None
        min_ready = float(config.min_ready if config.min_ready is not None else MIN_READY)
        deadline = float(
            config.progress_deadline if config.progress_deadline is not None else PROGRESS_DEADLINE
        )
        by_pod = {c.pod: c for c in sorted(containers, key=lambda c: c.created)}
        ordered = self._pods_with_order()
        all_pods = [pod for pod, _ in ordered]
        mine = [(p, order) for p, order in ordered if p.project == pid and p.service == sid]
        nodes = self._nodes()
        # Containers the node agent is draining or stopping (their pod deleted, the cache of
        # pods perhaps not there yet): they hold a surge slot, and their pods are not judged.
        live_pods = {p.id for p, _ in mine}
        draining = {
            c.pod
            for c in containers
            if c.status == "running" and (c.pod not in live_pods or c.reason == TERMINATING)
        }
        mine = [(p, order) for p, order in mine if p.id not in draining]
        running: set[str] = set()  # pods that serve, for the plan
        waits: list[float] = []
        for p, _ in mine:
            container = by_pod.get(p.id)
            new = spec is not None and p.template == spec.template
            wait = counts(container, new=new, min_ready=min_ready, at=at) if container else 0.0
            if wait is None:
                running.add(p.id)
            elif wait > 0:
                waits.append(wait)
        previous = self._status(objects, pid, sid)
        failed = (
            current is not None
            and previous is not None
            and previous.revision == current.revision
            and previous.state == "failed"
        )
        kept, grace = self._with_grace([p for p, _ in mine], nodes)
        if grace:
            waits.append(grace)
        step = plan(
            config.replicas if meta and not stopped else 0,
            spec.template if spec else None,
            [Observed(p, p.id in running, order) for p, order in mine],
            kept,
            len(draining),
        )
        for pod in step.delete:
            result = await self.txn(
                [], [Op.delete(keys.pod_spec(pod.node, pod.id)), Op.delete(keys.pod(pod.id))]
            )
            self._expected[key] = result.revision
            log.info("pod deleted", service=sid, pod=pod.id, node=pod.node)
        again: list[float] = waits
        if current is not None and spec is not None:
            left = [p for p, _ in mine if p not in step.delete]
            rollout = state(
                revision=current.revision,
                started=current.created,
                desired=config.replicas if not stopped else 0,
                serving_new=sum(1 for p in left if p.template == spec.template and p.id in running),
                old_left=sum(1 for p in left if p.template != spec.template),
                new_containers=[
                    by_pod[p.id] for p in left if p.template == spec.template and p.id in by_pod
                ],
                deadline=deadline,
                at=at,
                previous=previous,
            )
            await self._write_status(pid, sid, rollout, previous)
            if rollout.state == "progressing":  # look again when the deadline passes
                again.append(max(deadline - (at - rollout.started).total_seconds(), 0.5))
        if not step.create or spec is None or failed:
            return min(again) if again else None
        remaining = [p for p in all_pods if p not in step.delete]
        targets = choose_nodes(nodes, remaining, spec.memory, step.create)
        for node in targets:
            pod = Pod(new_id(), pid, sid, node, spec.template, spec, now())
            result = await self.txn(
                [Cmp.present(keys.service_part(pid, sid, "meta"))],
                [
                    Op.put(keys.pod(pod.id), keys.owner_value(pid, sid)),
                    Op.put(keys.pod_spec(node, pod.id), codec.dumps(pod)),
                ],
            )
            if not result.succeeded:
                return None  # the service was deleted meanwhile
            self._expected[key] = result.revision
            log.info("pod scheduled", service=sid, pod=pod.id, node=node)
        if len(targets) < step.create:
            log.warning(
                "pods fit on no node", service=sid, missing=step.create - len(targets),
                memory=spec.memory,
            )  # fmt: skip
            return UNSCHEDULABLE_RETRY
        return min(again) if again else None

    async def _revision(
        self, pid: str, sid: str, spec: PodSpec, objects: Mapping[str, KV]
    ) -> Revision:
        """The revision of ``spec``: the latest one when the template is the same, else a new
        one numbered after it (the oldest beyond :data:`REVISIONS` pruned in the same txn)."""
        stored = sorted(
            (found[1], kv) for raw, kv in objects.items() if (found := keys.revision_of(raw))
        )
        if stored:
            latest = codec.loads(stored[-1][1].value, Revision)
            if latest.template == spec.template:
                return latest
        number = stored[-1][0] + 1 if stored else 1
        revision = Revision(number, spec.template, spec, now())
        key = keys.revision(pid, sid, number)
        prune = [Op.delete(kv.key) for n, kv in stored if n <= number - REVISIONS]
        await self.txn(
            [Cmp.present(keys.service_part(pid, sid, "meta")), Cmp.absent(key)],
            [Op.put(key, codec.dumps(revision)), *prune],
        )
        log.info("revision", service=sid, revision=number, template=spec.template)
        return revision

    def _status(self, objects: Mapping[str, KV], pid: str, sid: str) -> Rollout | None:
        kv = objects.get(keys.service_part(pid, sid, "status"))
        if kv is None:
            return None
        try:
            return codec.loads(kv.value, ServiceStatus).rollout
        except codec.Invalid:
            return None

    async def _write_status(
        self, pid: str, sid: str, rollout: Rollout, previous: Rollout | None
    ) -> None:
        if rollout == previous:
            return
        if previous is None or (rollout.state, rollout.revision) != (
            previous.state,
            previous.revision,
        ):
            log.info(
                "rollout", service=sid, revision=rollout.revision, state=rollout.state,
                reason=rollout.reason or None,
            )  # fmt: skip
        await self.txn(
            [Cmp.present(keys.service_part(pid, sid, "meta"))],
            [Op.put(keys.service_part(pid, sid, "status"), codec.dumps(ServiceStatus(rollout)))],
        )
