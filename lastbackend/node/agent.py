"""The node agent: run the pods assigned to this Docker host, and say what runs.

It is a controller whose work keys are pod ids, elected per node name (``node-<name>``), so two
agents started with the same ``--name`` cannot both act on one host. In each term it:

- registers ``nodes/<name>`` on a lease with the capacity ``docker info`` reports; the services
  controller schedules only onto nodes whose key exists, and reschedules the pods of a node whose
  lease expired;
- watches ``pods/<name>/`` (the desired pods) and Docker's events for containers labelled with
  this node (a container that died is looked at again at once);
- reconciles a pod id: a pod that is wanted and has no running container gets one (pulling the
  image with the registry account of its host); a container whose pod is gone is removed; every
  container's state is written to ``services/<sid>/containers/<id>``.

Containers are named ``lb-<pod id>`` and labelled ``io.lastbackend.*``, so a restarted agent finds
and adopts what it made: at the start of a term every labelled container's pod is reconciled.
Container objects are written in a txn that requires the service's meta, so an agent never
recreates keys under a service that was deleted. Every write (the node key, container reports and
deletes) is fenced by the node's election (``self.store``), so an agent that was paused past its
term cannot overwrite what the agent that took over wrote.

The node key carries the agent's ``address``: API processes fetch a container's logs from the
node that runs it (:meth:`NodeAgent.open_logs`, served at ``/node/containers/<id>/logs``), so
logs work on any number of hosts without shipping them anywhere. The address is checked
(``config.node_address_problem``) before it is published, and the API checks it again before it
sends the node token there; that route accepts the node token only (``api.middlewares``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Coroutine, Mapping, Sequence
from datetime import datetime
from typing import Any

import structlog

from lastbackend import codec
from lastbackend.config import node_address_problem
from lastbackend.controllers.runner import Controller, Watch
from lastbackend.model.common import now
from lastbackend.model.health import STARTUP_INTERVAL
from lastbackend.model.hosts import dial_host, web_port
from lastbackend.model.platform import STOP_TIMEOUT, TERMINATING, Container
from lastbackend.model.pods import Node, Pod
from lastbackend.model.registries import registry_host
from lastbackend.node import health
from lastbackend.node.health import Probe
from lastbackend.runtime.base import (
    ContainerRuntimeError,
    ContainerSpec,
    ContainerState,
    Runtime,
)
from lastbackend.secrets import Secrets
from lastbackend.store import installation, keys
from lastbackend.store.etcd import Cmp, Op, StoreError
from lastbackend.store.registries import registry_auth

log = structlog.get_logger("lastbackend.node")

LABEL = "io.lastbackend"
LABEL_NODE = f"{LABEL}.node"
LABEL_POD = f"{LABEL}.pod"
LABEL_PROJECT = f"{LABEL}.project"
LABEL_SERVICE = f"{LABEL}.service"
LABEL_TEMPLATE = f"{LABEL}.template"
LABEL_STOP_TIMEOUT = f"{LABEL}.stop-timeout"

NODE_TTL = 30
"""Seconds a node key outlives its agent: how long a dead host's pods wait to be rescheduled.

Longer than the node election's TTL (15 s), so an agent restarted after a crash wins its
election and re-registers before its node is taken for dead and its pods moved."""


class UnknownContainer(LookupError):
    """No container by that id on this node: missing, or not labelled as this node's (a 404)."""


def container_name(pod_id: str) -> str:
    return f"lb-{pod_id}"


def volume_name(service_id: str, name: str) -> str:
    """Named volumes belong to the service, so data outlives a rollout's pods."""
    return f"lb-{service_id}-{name}"


class NodeAgent(Controller):
    workers = 4
    resync_period = 30.0

    def __init__(
        self,
        runtime: Runtime,
        secrets: Secrets,
        node: str,
        *,
        address: str = "",
        node_ttl: int = NODE_TTL,
        probe: Probe = health.probe,
    ) -> None:
        super().__init__()
        self.runtime = runtime
        self.secrets = secrets
        self.node = node
        self.node_ttl = node_ttl
        problem = node_address_problem(address) if address else None
        if problem is not None:  # what the API would refuse to call is never published
            raise ValueError(f"node {node}: the address {address!r} {problem}")
        self.address = address
        """This agent's HTTP base URL, published in ``nodes/<name>`` for log requests."""
        self.name = f"node-{node}"
        self.probe = probe
        self._reported: dict[str, bytes] = {}  # container id -> last value written
        self._readiness: dict[str, health.Readiness] = {}  # running container id -> checks
        self._restarts: dict[str, health.Restarts] = {}  # pod id -> crash-loop backoff
        self.installation = ""
        """This installation's id (:mod:`lastbackend.store.installation`), read at each term's
        start; until then only unlabelled containers count as ours."""

    def watches(self) -> Sequence[Watch]:
        return [Watch(keys.node_pods(self.node), to_key=keys.leaf)]

    def background(self) -> list[Coroutine[Any, Any, None]]:
        return [self._register(), self._follow_events(), self._check_health()]

    async def started(self) -> None:
        """Adopt or remove whatever this node already runs: queue every labelled container's pod.

        Only this installation's: another one sharing the engine may run a node of the same
        name, and its pods are not in this tree, so reconciling them would remove them.
        """
        assert self.queue is not None
        self.installation = await installation.ensure(self.store)
        for state in await self.runtime.list({LABEL_NODE: self.node}):
            pod_id = state.labels.get(LABEL_POD)
            if pod_id and self._ours(state.labels):
                self.queue.add(pod_id)

    def _ours(self, labels: Mapping[str, str]) -> bool:
        return installation.ours(labels, self.installation)

    # the node key ------------------------------------------------------------------------------

    async def _register(self) -> None:
        """Keep ``nodes/<name>`` on a live lease; grant a new one whenever it is lost.

        Failures (Docker or etcd away) are retried here rather than ending the term: the
        agent keeps reconciling what it can, and the node key returns when both answer.
        """
        delay = 1.0
        while True:
            try:
                await self._register_once()
                delay = 1.0
            except (StoreError, ContainerRuntimeError) as exc:
                log.warning("node registration failed; retrying", error=str(exc), delay=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _register_once(self) -> None:
        capacity = await self.runtime.info()
        node = Node(
            name=self.node,
            hostname=capacity.hostname or socket.gethostname(),
            memory=capacity.memory_mb,
            cpus=capacity.cpus,
            docker_version=capacity.docker_version,
            updated=now(),
            address=self.address,
        )
        lease = await self.store.grant(self.node_ttl)
        try:
            await self.txn([], [Op.put(keys.node(self.node), codec.dumps(node), lease=lease.id)])
            lease.keep_alive()
            log.info("node registered", node=self.node, memory=node.memory, cpus=node.cpus)
            await lease.lost.wait()
            log.warning("node lease lost; registering again", reason=lease.lost_reason)
        finally:
            # Never revoke: the key outlives this agent by NODE_TTL, so a restarted agent puts it
            # on its own lease before the node's pods are rescheduled.
            with contextlib.suppress(StoreError):
                await lease.stop_keep_alive()

    async def _follow_events(self) -> None:
        assert self.queue is not None
        async for event in self.runtime.events({LABEL_NODE: self.node}):
            pod_id = event.labels.get(LABEL_POD)
            if not pod_id or not self._ours(event.labels):
                continue
            if event.action in {"die", "stop", "destroy", "oom", "start"}:
                self.queue.add(pod_id)

    # logs --------------------------------------------------------------------------------------

    async def open_logs(
        self, container_id: str, follow: bool, tail: int | None
    ) -> AsyncIterator[bytes]:
        """The output of one of *this node's* containers, checked before anything is streamed.

        The engine would serve any container on the host, including another agent's (two nodes
        may share an engine in tests) or one that is not lastbackend's at all, so the container
        must carry this node's label. Raises :class:`UnknownContainer` (a ``LookupError``) when
        it does not, and ``ConnectionError`` when the engine cannot answer; the API layer maps
        those to 404 and 503 without importing this package.
        """
        try:
            state = await self.runtime.inspect(container_id)
        except ContainerRuntimeError as exc:
            raise ConnectionError(f"the container engine did not answer: {exc}") from exc
        if (
            state is None
            or state.labels.get(LABEL_NODE) != self.node
            or not self._ours(state.labels)
        ):
            raise UnknownContainer(f"container {container_id!r} is not on node {self.node}")
        return self._read_logs(state.id, follow, tail)

    async def _read_logs(self, cid: str, follow: bool, tail: int | None) -> AsyncIterator[bytes]:
        """By full id (a name could be reused meanwhile); a container removed mid-stream ends it."""
        chunks = self.runtime.logs(cid, follow=follow, tail=tail)
        try:
            async for chunk in chunks:
                yield chunk
        except ContainerRuntimeError as exc:
            log.info("log stream ended", container=cid[:12], reason=str(exc))
        finally:
            close = getattr(chunks, "aclose", None)  # the seam promises an iterator; ours close
            if close is not None:
                await close()

    # reconcile ---------------------------------------------------------------------------------

    def _pod(self, pod_id: str) -> Pod | None:
        kv = self.informer().get(keys.pod_spec(self.node, pod_id))
        return codec.loads(kv.value, Pod) if kv else None

    async def reconcile(self, key: str) -> float | None:
        pod = self._pod(key)
        states = [s for s in await self.runtime.list({LABEL_POD: key}) if self._ours(s.labels)]
        if pod is None:
            for state in states:
                await self._remove(state)
            for state in states:
                await self._remove_volumes_if_gone(state.labels)
            self._restarts.pop(key, None)
            return None
        now = time.monotonic()
        restarts = self._restarts.setdefault(pod.id, health.Restarts())
        running = [s for s in states if s.running]
        stopped = [s for s in states if not s.running]
        for state in stopped:
            checks = self._readiness.pop(state.id, None)
            ran = now - checks.started if checks is not None else 0.0
            restarts.stopped(state.id, ran, now, _reason(state))
        if not running:
            wait = restarts.wait(now)
            if wait > 0 and stopped:  # crash-loop backoff: say so, and look again then
                newest = max(stopped, key=lambda s: s.created)
                await self._report(pod, newest, reason=CRASH_LOOP)
                return wait
        for state in stopped:  # the name is needed again, and a stopped one serves nobody
            await self._remove(state)
        started: ContainerState | None = None
        if not running:
            await self._pull(pod.spec.image)
            started = await self.runtime.run(self._spec(pod))
            running = [started]
            log.info(
                "container started", pod=pod.id, container=started.id[:12], restarts=restarts.count
            )
        for state in running:
            if state.id not in self._readiness:
                self._readiness[state.id] = (
                    health.Readiness(pod.spec.check, now)
                    if state is started
                    else await self._adopted(pod, state, restarts, now)
                )
            await self._report(pod, state)
        return None

    async def _adopted(
        self, pod: Pod, state: ContainerState, restarts: health.Restarts, now: float
    ) -> health.Readiness:
        """A container that ran before this agent did (the agent restarted): as ready as it was
        last reported, so it stays routed until its own checks say otherwise, and with its
        restart count, so an agent restart drops no request and resets no backoff."""
        checks = health.Readiness(pod.spec.check, now)
        kv = await self.store.get(keys.container(pod.project, pod.service, state.id))
        if kv is None:
            return checks
        try:
            reported = codec.loads(kv.value, Container)
        except codec.Invalid:
            return checks
        restarts.count = max(restarts.count, reported.restarts)
        if reported.ready and reported.ready_since is not None:
            checks.resume(reported.ready_since)
        return checks

    def _spec(self, pod: Pod) -> ContainerSpec:
        return ContainerSpec(
            name=container_name(pod.id),
            image=pod.spec.image,
            command=pod.spec.command,
            env=self.secrets.open_env(pod.spec.env),  # stored encrypted
            memory_mb=pod.spec.memory,
            ports=pod.spec.ports,
            volumes={volume_name(pod.service, v): path for v, path in pod.spec.volumes.items()},
            labels={
                installation.LABEL: self.installation,
                LABEL_NODE: self.node,
                LABEL_POD: pod.id,
                LABEL_PROJECT: pod.project,
                LABEL_SERVICE: pod.service,
                LABEL_TEMPLATE: pod.template,
                LABEL_STOP_TIMEOUT: str(
                    pod.spec.stop_timeout if pod.spec.stop_timeout is not None else STOP_TIMEOUT
                ),
            },
        )

    async def _pull(self, image: str) -> None:
        auth = await registry_auth(self.store, self.secrets, registry_host(image))
        await self.runtime.ensure_image(image, auth)

    async def _report(self, pod: Pod, state: ContainerState, *, reason: str = "") -> None:
        """Write the container object, unless unchanged or the service is gone."""
        checks = self._readiness.get(state.id)
        ready = state.running and checks is not None and checks.ready
        if not reason and not ready:
            reason = _reason(state) if not state.running else "Starting"
        since = checks.ready_since if ready and checks is not None else None
        container = self._container(state, pod.id, ready=ready, reason=reason, ready_since=since)
        fingerprint = codec.dumps(attrs_without_updated(container))
        if self._reported.get(state.id) == fingerprint:
            return
        key = keys.container(pod.project, pod.service, state.id)
        meta = keys.service_part(pod.project, pod.service, "meta")
        await self.txn([Cmp.present(meta)], [Op.put(key, codec.dumps(container))])
        self._reported[state.id] = fingerprint

    def _container(
        self,
        state: ContainerState,
        pod_id: str,
        *,
        ready: bool,
        reason: str,
        ready_since: datetime | None = None,
    ) -> Container:
        """The container object of ``state`` as this agent reports it."""
        restarts = self._restarts.get(pod_id)
        return Container(
            id=state.id,
            status=state.status,
            created=state.created,
            updated=now(),
            ports=dict(state.ports),
            pod=pod_id,
            node=self.node,
            ready=ready,
            restarts=restarts.count if restarts is not None else 0,
            exit_code=state.exit_code,
            reason=reason,
            started=state.started_at,
            finished=state.finished_at,
            ready_since=ready_since,
            host=dial_host(self.address),
        )

    # health checks -----------------------------------------------------------------------------

    async def _check_health(self) -> None:
        """Run every container's due health check; a change of readiness is written at once.

        One pass every :data:`~lastbackend.model.health.STARTUP_INTERVAL` seconds, checks of
        several containers at once: a slow app delays only its own check.
        """
        while True:
            await asyncio.sleep(STARTUP_INTERVAL)
            now = time.monotonic()
            due = [(cid, r) for cid, r in self._readiness.items() if r.due(now)]
            if due:
                await asyncio.gather(*(self._check_one(cid, r, now) for cid, r in due))

    async def _check_one(self, cid: str, checks: health.Readiness, now: float) -> None:
        state = await self.runtime.inspect(cid)
        if state is None or not state.running:
            self._readiness.pop(cid, None)
            return
        pod_id = state.labels.get(LABEL_POD, "")
        port = _container_port(self._pod(pod_id)) if pod_id else 0
        passed = await self.probe(checks.check, state.address, port)
        changed, expired = checks.record(passed, time.monotonic())
        if expired:
            log.warning("health check failed too long; restarting", pod=pod_id, container=cid[:12])
            self._readiness.pop(cid, None)
            restarts = self._restarts.setdefault(pod_id, health.Restarts())
            restarts.stopped(cid, time.monotonic() - checks.started, time.monotonic(), HEALTH)
            with contextlib.suppress(ContainerRuntimeError):  # it serves nobody: a short stop,
                await self.runtime.stop(cid, HEALTH_STOP)  # so the other checks are not held up
        if (changed or expired) and self.queue is not None and pod_id:
            self.queue.add(pod_id)

    async def _remove_volumes_if_gone(self, labels: Mapping[str, str]) -> None:
        """A deleted service's named volumes go with its last container on this node.

        While the service exists they stay: a rollout's or scale-up's next pods mount them.
        """
        project, service = labels.get(LABEL_PROJECT), labels.get(LABEL_SERVICE)
        if not project or not service:
            return
        if await self.store.get(keys.service_part(project, service, "meta")) is not None:
            return
        mine = {LABEL_NODE: self.node, LABEL_SERVICE: service}
        if await self.runtime.list(mine):  # a service id is one installation's: no filter
            return
        for name in await self.runtime.volumes(mine):
            with contextlib.suppress(ContainerRuntimeError):
                await self.runtime.remove_volume(name)
                log.info("volume removed", volume=name, service=service)

    async def _remove(self, state: ContainerState) -> None:
        """Stop and remove a container, and its object in etcd.

        A running one is drained first: its object says ``ready: false`` (the routers take it
        out of their upstreams), then after :data:`DRAIN` seconds it gets SIGTERM and
        :data:`STOP_TIMEOUT` seconds to finish what it serves before SIGKILL.
        """
        project, service = state.labels.get(LABEL_PROJECT), state.labels.get(LABEL_SERVICE)
        self._readiness.pop(state.id, None)
        if state.running and project and service:
            pod_id = state.labels.get(LABEL_POD, "")
            draining = self._container(state, pod_id, ready=False, reason=TERMINATING)
            key = keys.container(project, service, state.id)
            await self.txn([Cmp.present(key)], [Op.put(key, codec.dumps(draining))])
            await asyncio.sleep(DRAIN)
            with contextlib.suppress(ContainerRuntimeError):
                await self.runtime.stop(state.id, _stop_timeout(state))
        await self.runtime.remove(state.id)
        self._reported.pop(state.id, None)
        if project and service:
            await self.txn([], [Op.delete(keys.container(project, service, state.id))])
        log.info("container removed", pod=state.labels.get(LABEL_POD), container=state.id[:12])


CRASH_LOOP = "CrashLoopBackOff"
HEALTH = "HealthCheckFailed"
HEALTH_STOP = 1.0
"""Seconds from SIGTERM to SIGKILL for a container stopped for failing its check."""
DRAIN = 1.0
"""Seconds between a container leaving the routers' upstreams and its SIGTERM: a router loads a
change within a tenth of that (``router.daemon.DEBOUNCE`` and the load itself)."""


def _stop_timeout(state: ContainerState) -> float:
    """The container's own (its pod's ``stop_timeout``, in a label: the pod may be gone)."""
    try:
        return float(state.labels.get(LABEL_STOP_TIMEOUT, STOP_TIMEOUT))
    except ValueError:
        return float(STOP_TIMEOUT)


def _reason(state: ContainerState) -> str:
    """Why a container is not running, in Kubernetes' words."""
    if state.running:
        return ""
    if state.oom_killed:
        return "OOMKilled"
    if state.exit_code == 0:
        return "Completed"
    return "Error" if state.exit_code is not None else ""


def _container_port(pod: Pod | None) -> int:
    """The pod's web port inside the container (what the routers reach through the host port)."""
    port = web_port(pod.spec.ports) if pod is not None else None
    return int(port.split("/", 1)[0]) if port else 0


def attrs_without_updated(container: Container) -> dict[str, Any]:
    """What makes a report different from the last one: all but the time it was made."""
    data = codec.unstructure(container)
    data.pop("updated", None)
    return data
