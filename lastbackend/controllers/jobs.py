"""Long jobs of a controller (a staging, a build), run as tasks bound to its leadership term.

Why tasks: a reconcile must end soon, since a controller has few workers and the work queue holds
a key while its reconcile runs, but staging a droplet or building an image takes minutes. So the
reconcile starts the work as a task under the work key and returns; the task queues the key
again when it ends, and the next reconcile looks at what it left. :class:`Jobs` holds the tasks:

- **Bound to the term.** A task belongs to the term that started it. :meth:`Jobs.supervise` runs
  as one of the controller's :meth:`~lastbackend.controllers.runner.Controller.background`
  coroutines, which the runner cancels when the term ends; it then cancels every task and waits
  for them. A process that lost its leadership stops working; the next leader starts from the
  tree, not from anything this process held.
- **Writes are fenced all the same.** Cancelling is how work stops soon, not what makes stopping
  safe: a task may be anywhere between two awaits when the term ends. Every write a task makes
  goes through :meth:`~lastbackend.controllers.runner.Controller.txn`, compared with the election
  key, so a task of an ended term cannot overwrite what the next leader wrote.
- **At most ``concurrency`` at once.** Tasks take one of :attr:`Jobs.slots` before they begin;
  later ones wait in order (asyncio's semaphore is FIFO), their objects still saying they wait.
- **What a cut-off job means is the controller's decision.** A job found half-done with no task
  of this process (the previous leader died, or this process restarted) is not this module's
  concern: staging runs it again (a re-run is idempotent), builds fail it (a re-run could build
  another commit than the one the build recorded).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Generic, TypeVar

import attrs
import structlog

log = structlog.get_logger("lastbackend.controllers.jobs")

V = TypeVar("V")


@attrs.define
class Running(Generic[V]):
    """A job's task and what its controller keeps with it (a build: its number)."""

    task: asyncio.Task[None]
    info: V


class Jobs(Generic[V]):
    """The running jobs of one controller, one per work key."""

    def __init__(self, controller: str, concurrency: int) -> None:
        self.controller = controller
        self.slots = asyncio.Semaphore(concurrency)
        """Taken by a job for as long as it works: ``async with jobs.slots``."""
        self._running: dict[str, Running[V]] = {}

    def start(self, key: str, job: Coroutine[Any, Any, None], info: V, *, name: str) -> Running[V]:
        """Run ``job`` as the key's task (``name`` names it, for debugging)."""
        running = Running(asyncio.create_task(job, name=name), info)
        self._running[key] = running
        return running

    def running(self, key: str) -> Running[V] | None:
        """The key's job while its task runs. A task that has ended is forgotten here (logged if
        it failed), so the caller may start the next one."""
        running = self._running.get(key)
        if running is None or not running.task.done():
            return running
        del self._running[key]
        self._ended(key, running.task)
        return None

    async def cancel(self, key: str) -> None:
        """Stop the key's job, if any, and wait until its task has ended (its cleanup with it)."""
        running = self._running.pop(key, None)
        if running is None:
            return
        running.task.cancel()
        await asyncio.wait({running.task})
        self._ended(key, running.task)

    async def supervise(self) -> None:
        """Hold the term's jobs: run it as a background coroutine of the controller. When the
        term ends, the runner cancels it, and every job is cancelled and waited for."""
        try:
            await asyncio.Event().wait()
        finally:
            tasks = [running.task for running in self._running.values()]
            self._running.clear()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _ended(self, key: str, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            log.warning("job failed", controller=self.controller, key=key, error=str(error))
