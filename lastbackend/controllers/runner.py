"""The controller base class and what runs it: election, informers, queue, workers, metrics.

A controller says *what* it watches (:meth:`Controller.watches`) and *how* to make one key right
(:meth:`Controller.reconcile`); :class:`ControllerRunner` does the rest, in this order:

1. campaign for the controller's election (:mod:`lastbackend.controllers.leader`); a process that
   does not lead runs nothing but a watch on the election key;
2. once leading, take a view per watch from the process's shared
   :class:`~lastbackend.store.informer.Informers` (one list + watch per prefix, however many
   controllers watch it), their handlers adding *work keys* to a fresh
   :class:`~lastbackend.controllers.queue.WorkQueue`;
3. wait until every informer has delivered its first list, so the first reconciles see a whole
   cache, not a partial one that would make existing objects look deleted, then queue every
   cached work key (a view of an informer that was already running heard no first list);
4. run ``workers`` tasks that take keys from the queue and reconcile them: an exception is
   counted and the key retried with per-key backoff, success forgets the backoff, a number
   returned by ``reconcile`` asks for another look after that many seconds;
5. re-add every cached key every ``resync_period`` seconds, and run the controller's
   :meth:`Controller.background` coroutines (a node agent's lease, a Docker event stream).

When the term ends (lease lost, key deleted, a fenced write refused) everything of steps 2-5 is
cancelled inside one :class:`asyncio.TaskGroup` and the runner campaigns again; a reconcile cut
off mid-way is safe because reconciles are idempotent. A new term never reuses a cache that
stopped watching (it could be arbitrarily stale): it gets an informer that has been watching
without a break since its list, another controller's, or a fresh one.

``reconcile`` runs on the event loop; it may ``await`` I/O freely (workers run concurrently, but
never two on the same key). A controller holds no etcd client of its own: it reads and writes
through :attr:`Elected.store`, the election's :class:`~lastbackend.controllers.leader.Fenced`
handle, whose writes fail once the term is over.

Leader-only work that lists and watches nothing through informers (the AMQP publisher, which
keeps its own per-revision watch) is a :class:`LeaderTask`: the runner elects it the same way
and runs its one coroutine for the term, without a queue or workers to pretend with.

:class:`Manager` runs several controllers under one etcd client and one metrics registry, and
stops them cleanly: first it shuts the queues (workers finish the reconcile in hand, within a
grace period), then it cancels the rest and resigns every election, so a standby takes over at
once instead of after a TTL.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import time
import weakref
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any

import attrs
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from lastbackend.controllers.leader import DEFAULT_TTL, Fenced, LeaderElection, NotLeader
from lastbackend.controllers.queue import (
    DEFAULT_BASE_DELAY,
    DEFAULT_BURST,
    DEFAULT_MAX_DELAY,
    DEFAULT_RATE,
    QueueShutDown,
    WorkQueue,
    resync,
)
from lastbackend.store.etcd import Cmp, Etcd, Op, TxnResult
from lastbackend.store.informer import Informers, KeyedView, KeyMap

log = structlog.get_logger("lastbackend.controllers")

RESTART_MIN = 0.5
RESTART_MAX = 30.0


@attrs.frozen
class Watch:
    """One prefix a controller watches, and how its raw keys map to work keys."""

    prefix: str
    to_key: KeyMap | None = None
    """Raw key -> work key, or None to ignore the key; the raw key itself when not given."""


@attrs.frozen
class QueueSettings:
    """Work queue tuning shared by the controllers of a :class:`Manager`."""

    base_delay: float = DEFAULT_BASE_DELAY
    max_delay: float = DEFAULT_MAX_DELAY
    rate: float = DEFAULT_RATE
    burst: int = DEFAULT_BURST


class Elected:
    """What a runner runs under a leader election: a :class:`Controller` or a :class:`LeaderTask`.

    While the runner has it, :attr:`store` is the election's :class:`Fenced` handle: every
    write goes through it, so a paused ex-leader's writes fail instead of landing.
    """

    name: str = ""
    """Its election key's last segment, log field and metrics label."""

    def __init__(self) -> None:
        self.election: LeaderElection | None = None
        self._store: Fenced | None = None

    @property
    def store(self) -> Fenced:
        """Reads of etcd and fenced transactions, for the current term (see ``leader.Fenced``)."""
        if self.election is None:
            raise NotLeader(f"{self.name!r} is not running")
        if self._store is None or self._store.election is not self.election:
            self._store = Fenced(self.election)
        return self._store

    async def txn(
        self, compare: Sequence[Cmp], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        """A fenced transaction: see :meth:`LeaderElection.txn`."""
        return await self.store.txn(compare, success, failure)


class Controller(Elected):
    """Subclass, set :attr:`name`, and implement :meth:`watches` and :meth:`reconcile`."""

    workers: int = 2
    """Concurrent reconciles (never two of one key)."""
    resync_period: float = 300.0
    """Seconds between re-adds of every cached key."""

    def __init__(self) -> None:
        super().__init__()
        # Set by the runner for the duration of each leadership term.
        self.informers: dict[str, KeyedView] = {}
        self.queue: WorkQueue | None = None

    @abc.abstractmethod
    def watches(self) -> Sequence[Watch]:
        """The prefixes to list and watch; each gets an informer."""

    @abc.abstractmethod
    async def reconcile(self, key: str) -> float | None:
        """Make the world match the desired state of ``key``; must be idempotent.

        Read desired state from the informers' caches, observe, act, write. Raise to be retried
        with backoff; return a number of seconds to be looked at again after that long (waiting
        for something outside etcd), or None.
        """

    async def started(self) -> None:
        """Called in each term after the informers synced and before the workers start."""
        return None

    def background(self) -> Sequence[Coroutine[Any, Any, None]]:
        """Coroutines to run beside the workers for the term (after :meth:`started`).

        They are cancelled with the term; one that raises ends the term, and the runner starts
        over after a backoff (a supervised task, not a silent one).
        """
        return []

    def informer(self, prefix: str | None = None) -> KeyedView:
        """The informer of ``prefix`` (the only or first one when not given)."""
        if not self.informers:
            raise RuntimeError(f"controller {self.name!r} is not running")
        if prefix is None:
            return next(iter(self.informers.values()))
        return self.informers[prefix]


class LeaderTask(Elected):
    """Leader-only work that watches no prefix through an informer: a publisher, a sweeper.

    One coroutine per term, with no queue or workers to pretend with: :meth:`run` starts when
    the term does and is cancelled when it ends. Raising ends the term and the runner starts
    over after a backoff; returning resigns for good.
    """

    @abc.abstractmethod
    async def run(self) -> None:
        """The term's work, until cancelled; write only through :attr:`store`."""


class ControllerMetrics:
    """The controllers' Prometheus metrics, labelled by controller; one set per registry."""

    _by_registry: weakref.WeakKeyDictionary[CollectorRegistry, ControllerMetrics] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, registry: CollectorRegistry) -> None:
        self.queue_depth = Gauge(
            "lastbackend_controller_queue_depth",
            "Keys waiting in the controller's work queue (not counting delayed retries).",
            ["controller"],
            registry=registry,
        )
        self.queue_delayed = Gauge(
            "lastbackend_controller_queue_delayed",
            "Keys waiting out a retry backoff or a requested delay: a growing number is a key "
            "that keeps failing.",
            ["controller"],
            registry=registry,
        )
        self.reconcile_duration = Histogram(
            "lastbackend_controller_reconcile_duration_seconds",
            "Time one reconcile took, failed ones included.",
            ["controller"],
            registry=registry,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.reconcile_errors = Counter(
            "lastbackend_controller_reconcile_errors",
            "Reconciles that raised (each is retried with backoff).",
            ["controller"],
            registry=registry,
        )
        self.leader = Gauge(
            "lastbackend_controller_leader",
            "1 while this process leads the controller.",
            ["controller"],
            registry=registry,
        )

    @classmethod
    def for_registry(cls, registry: CollectorRegistry) -> ControllerMetrics:
        """The metrics in ``registry``, registered on first use (a name registers only once)."""
        metrics = cls._by_registry.get(registry)
        if metrics is None:
            metrics = cls._by_registry[registry] = cls(registry)
        return metrics


class ControllerRunner:
    """Runs one controller under its leader election (see the module docstring)."""

    def __init__(
        self,
        controller: Elected,
        etcd: Etcd,
        *,
        registry: CollectorRegistry | None = None,
        identity: str | None = None,
        lease_ttl: int = DEFAULT_TTL,
        queue: QueueSettings | None = None,
        informers: Informers | None = None,
    ) -> None:
        if not controller.name:
            raise ValueError(f"{type(controller).__name__} has no name")
        self.controller = controller
        self.etcd = etcd
        self.name = controller.name
        self.queue_settings = queue or QueueSettings()
        self.election = LeaderElection(etcd, controller.name, identity=identity, ttl=lease_ttl)
        self.metrics = ControllerMetrics.for_registry(registry or CollectorRegistry())
        self.queue: WorkQueue | None = None
        self.shared = informers or Informers(etcd)
        """The informers this runner's views come from (a :class:`Manager` shares one)."""
        self._informers: list[KeyedView] = []
        self._workers: list[asyncio.Task[None]] = []
        self._synced = False
        self._task: asyncio.Task[None] | None = None
        self._log = log.bind(controller=self.name)
        self._errors = self.metrics.reconcile_errors.labels(self.name)
        self._duration = self.metrics.reconcile_duration.labels(self.name)
        self.metrics.queue_depth.labels(self.name).set_function(
            lambda: len(self.queue) if self.queue is not None else 0
        )
        self.metrics.queue_delayed.labels(self.name).set_function(
            lambda: self.queue.delayed if self.queue is not None else 0
        )
        self.metrics.leader.labels(self.name).set_function(lambda: int(self.election.is_leader))

    def __repr__(self) -> str:
        return f"<ControllerRunner {self.name!r} leading={self.election.is_leader}>"

    @property
    def synced(self) -> bool:
        """True while leading with every informer's first list delivered."""
        return self._synced

    @property
    def ready(self) -> bool:
        """Synced leader, or a follower that knows another process leads."""
        if self.election.is_leader:
            return self.synced
        return self.election.leader is not None and self.election.leader != self.election.identity

    # lifecycle ---------------------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        """Run in a background task (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name=f"controller-{self.name}")
        return self._task

    async def stop(self, grace: float = 5.0) -> None:
        """Let in-flight reconciles finish (up to ``grace`` s), then cancel and resign."""
        task, self._task = self._task, None
        if task is None:
            return
        if self.queue is not None:
            self.queue.shutdown()
        workers = [w for w in self._workers if not w.done()]
        if workers and grace > 0:
            await asyncio.wait(workers, timeout=grace)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def run(self) -> None:
        """Campaign and lead until cancelled; an unexpected failure restarts it with backoff."""
        delay = RESTART_MIN
        while True:
            started = time.monotonic()
            try:
                await self.election.run(self._lead)
                return
            except Exception:
                self._log.exception("controller failed; restarting", delay=delay)
            if time.monotonic() - started > RESTART_MAX:
                delay = RESTART_MIN
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_MAX)

    async def _lead(self) -> None:
        """One leadership term: cancelled by the election when it ends."""
        self.controller.election = self.election
        self._log.info("controller leading", term=self.election.term)
        if isinstance(self.controller, LeaderTask):
            self._synced = True  # nothing to list: ready as soon as it leads
            try:
                await self.controller.run()
            finally:
                self._synced = False
            return
        assert isinstance(self.controller, Controller)
        await self._lead_controller(self.controller)

    async def _lead_controller(self, controller: Controller) -> None:
        queue = WorkQueue(name=self.name, **attrs.asdict(self.queue_settings))
        informers: dict[str, KeyedView] = {}
        try:
            for w in controller.watches():
                informers[w.prefix] = self.shared.acquire(
                    w.prefix, to_key=w.to_key, name=f"{self.name}:{w.prefix}"
                )
            for informer in informers.values():
                informer.add_handler(self._enqueuer(informer, queue))
            self.queue = queue
            self._informers = list(informers.values())
            controller.informers, controller.queue = informers, queue
            async with asyncio.TaskGroup() as group:
                for prefix in informers:
                    # A shared informer that fails ends this term (shielded: cancelling the
                    # term must not stop an informer other controllers still read).
                    group.create_task(self._supervise(self.shared.task(prefix)))
                for informer in informers.values():
                    await informer.synced.wait()
                for informer in informers.values():
                    for work_key in informer.work_keys():
                        queue.add(work_key)
                self._log.info("controller synced", keys=sum(len(i.cache) for i in self._informers))
                await controller.started()
                self._synced = True
                self._workers = [
                    group.create_task(
                        self._worker(controller, queue), name=f"worker-{self.name}-{n}"
                    )
                    for n in range(max(1, controller.workers))
                ]
                group.create_task(
                    resync(
                        queue,
                        lambda: self._work_keys(informers.values()),
                        self._resync(controller),
                    )
                )
                for coro in controller.background():
                    group.create_task(coro)
        finally:
            queue.shutdown()
            self._synced = False
            self._workers = []
            self._informers = []
            self.queue = None
            controller.informers, controller.queue = {}, None
            for informer in informers.values():
                await self.shared.release(informer)

    @staticmethod
    async def _supervise(task: asyncio.Task[None]) -> None:
        await asyncio.shield(task)

    @staticmethod
    def _resync(controller: Controller) -> float:
        return controller.resync_period if controller.resync_period > 0 else 300.0

    @staticmethod
    def _work_keys(informers: Iterable[KeyedView]) -> list[str]:
        seen: dict[str, None] = {}
        for informer in informers:
            seen.update(dict.fromkeys(informer.work_keys()))
        return list(seen)

    @staticmethod
    def _enqueuer(informer: KeyedView, queue: WorkQueue) -> Callable[..., None]:
        def enqueue(key: str, old: object, new: object) -> None:
            work = informer.work_key(key)
            if work is not None:
                queue.add(work)

        return enqueue

    async def _worker(self, controller: Controller, queue: WorkQueue) -> None:
        while True:
            try:
                key = await queue.get()
            except QueueShutDown:
                return
            started = time.perf_counter()
            self._log.debug("reconcile", key=key)
            try:
                again = await controller.reconcile(key)
            except NotLeader as exc:
                self._errors.inc()
                self._log.warning("reconcile fenced off", key=key, error=str(exc))
                queue.add_rate_limited(key)
            except Exception:
                self._errors.inc()
                self._log.exception("reconcile failed", key=key, retries=queue.retries(key))
                queue.add_rate_limited(key)
            else:
                queue.forget(key)
                if again is not None and again > 0:
                    queue.add_after(key, again)
            finally:
                self._duration.observe(time.perf_counter() - started)
                queue.done(key)
            # A reconcile with nothing to do never awaits, and get() does not either while keys
            # wait: without this, one worker drains 10k keys in one go and starves the loop
            # (readyz, watches, lease renewals) for over a second.
            await asyncio.sleep(0)


class Manager:
    """Several controllers on one etcd client and one metrics registry, started and stopped
    together; ``async with Manager(...)`` runs them for the block."""

    def __init__(
        self,
        etcd: Etcd,
        controllers: Iterable[Elected],
        *,
        registry: CollectorRegistry | None = None,
        identity: str | None = None,
        lease_ttl: int = DEFAULT_TTL,
        queue: QueueSettings | None = None,
    ) -> None:
        self.etcd = etcd
        self.registry = registry or CollectorRegistry()
        self.informers = Informers(etcd)
        """Shared by every controller here: one list + watch per prefix for the process."""
        self.runners = [
            ControllerRunner(
                c,
                etcd,
                registry=self.registry,
                identity=identity,
                lease_ttl=lease_ttl,
                queue=queue,
                informers=self.informers,
            )
            for c in controllers
        ]
        names = [r.name for r in self.runners]
        if len(set(names)) != len(names):
            raise ValueError(f"controller names must be unique: {names}")

    @property
    def ready(self) -> bool:
        """Every controller is :attr:`ControllerRunner.ready` (for ``/readyz``)."""
        return all(r.ready for r in self.runners)

    def status(self) -> dict[str, dict[str, object]]:
        """Per controller: ready, leading, leader identity (for ``/readyz`` bodies and logs)."""
        return {
            r.name: {
                "ready": r.ready,
                "leading": r.election.is_leader,
                "leader": r.election.leader,
            }
            for r in self.runners
        }

    def start(self) -> None:
        for runner in self.runners:
            runner.start()

    async def stop(self, grace: float = 5.0) -> None:
        """Stop every controller (concurrently) and resign their elections."""
        await asyncio.gather(*(r.stop(grace) for r in self.runners))
        await self.informers.close()

    async def run(self) -> None:
        """Run until cancelled, then stop cleanly."""
        self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.shield(self.stop())

    async def __aenter__(self) -> Manager:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
