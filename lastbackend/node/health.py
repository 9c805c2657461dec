"""What the node agent keeps per container and per pod: health check state and restart backoff.

Pure state machines over a monotonic clock (given, so unit tests step it), and the real checks.

**Readiness** (:class:`Readiness`): see ``model.health`` for the rules. The agent calls
:meth:`Readiness.due` to know whether a check is owed, runs it, and feeds the result to
:meth:`Readiness.record`, which says whether readiness changed (the container object must be
written again) and whether the container has failed for too long (it must be restarted).

**Crash-loop backoff** (:class:`Restarts`): a pod whose container stopped is started again
after 1 s, doubling to 5 minutes, and the count resets once a container ran 10 minutes
(Kubernetes' numbers). So the etcd writes and Docker calls a crash loop makes are bounded by
the backoff, not by how fast the process dies.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import aiohttp
import attrs

from lastbackend.model.health import STARTUP_INTERVAL, HealthCheck

FAILURE_THRESHOLD = 3
BACKOFF_MIN = 1.0
BACKOFF_MAX = 300.0
BACKOFF_RESET = 600.0
"""Seconds a container must run for its pod's restart count to start over."""

Probe = Callable[[HealthCheck, str, int], Awaitable[bool]]
"""(check, the container's address, its web port inside the container) -> it passed."""


async def probe(check: HealthCheck, address: str, port: int) -> bool:
    """One check against the container itself (its own IP and port, not a published one)."""
    if check.type == "process":
        return True
    if not address or port <= 0:
        return False
    limit = float(check.data.invocation_timeout)
    if check.type == "port":
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(address, port), limit)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True
    url = f"http://{address}:{port}{check.endpoint}"
    try:
        timeout = aiohttp.ClientTimeout(total=limit)
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.get(url, allow_redirects=False) as resp,
        ):
            return 200 <= resp.status < 400
    except (aiohttp.ClientError, OSError, TimeoutError):
        return False


@attrs.define
class Readiness:
    """One running container's health check state."""

    check: HealthCheck
    started: float
    """When the agent first saw it running (monotonic)."""
    ready: bool = False
    passed_once: bool = False
    failing_since: float | None = None
    failures: int = 0
    """Checks failed in a row."""
    last: float | None = None
    ready_since: datetime | None = None
    """Wall-clock time it last became ready: rollouts count it once it has been ready a while."""

    def resume(self, ready_since: datetime) -> None:
        """Ready since then, as a previous agent found it: it stays ready until
        :data:`FAILURE_THRESHOLD` checks in a row fail."""
        self.ready = self.passed_once = True
        self.ready_since = ready_since

    def due(self, now: float) -> bool:
        if self.last is None:
            return True
        interval = float(self.check.data.interval) if self.passed_once else STARTUP_INTERVAL
        return now - self.last >= interval

    def record(self, passed: bool, now: float) -> tuple[bool, bool]:
        """Take a check's result: (readiness changed, failed for longer than the timeout).

        A ready container stays ready until :data:`FAILURE_THRESHOLD` checks in a row fail
        (Kubernetes' default): one check that timed out behind a busy moment must not take the
        only container out of the routers.
        """
        self.last = now
        was = self.ready
        if passed:
            self.ready = True
            self.failures = 0
            if not was:
                self.ready_since = datetime.now(UTC)
            self.passed_once = True
            self.failing_since = None
            return not was, False
        self.failures += 1
        if not self.passed_once or self.failures >= FAILURE_THRESHOLD:
            self.ready = False
        if self.failing_since is None:
            self.failing_since = self.started if not self.passed_once else now
        expired = now - self.failing_since >= float(self.check.data.timeout)
        return was != self.ready, expired


@attrs.define
class Restarts:
    """One pod's crash-loop state (see the module docstring)."""

    count: int = 0
    next_start: float = 0.0
    """Not before this monotonic time may the pod's container start again."""
    counted: str = ""
    """The id of the stopped container last counted, so each stop counts once."""
    reason: str = ""

    def stopped(self, container: str, ran: float, now: float, reason: str) -> None:
        """A container of the pod stopped after running ``ran`` seconds."""
        if container == self.counted:
            return
        self.counted = container
        self.reason = reason
        if ran >= BACKOFF_RESET:
            self.count = 0
        delay = min(BACKOFF_MIN * 2**self.count, BACKOFF_MAX)
        self.count += 1
        self.next_start = now + delay

    def wait(self, now: float) -> float:
        """Seconds until the pod's container may start again (0: now)."""
        return max(0.0, self.next_start - now)
