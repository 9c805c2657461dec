"""Which etcd member a request goes to: one gRPC channel per member and a prober that watches them.

gRPC's own round robin over several endpoints sends a request to whichever connection is next,
including one to a member that is frozen (SIGSTOP, a hung VM): its TCP connection stays open, so
nothing fails until the request's deadline. Here every member has its own channel, the client
sticks to one member while it answers, and a prober asks each member for its status every
:data:`PROBE_INTERVAL` with a deadline of :data:`PROBE_TIMEOUT`:

- a member that answers and sees a leader is ``up``; one that answers without a leader (an
  election is running, or it is cut off) is ``leaderless`` and used only when no member is up;
- a member that does not answer is ``down``: requests stop going to it, and the calls still
  waiting on it (unary calls, lease keep-alives, watch streams) are cancelled, so their callers
  move to another member within about ``PROBE_INTERVAL + PROBE_TIMEOUT`` (1.5 s) of a freeze
  instead of the request's whole deadline. A killed member fails its calls at once by itself.

gRPC keepalive is only a backstop (10 s ping, 3 s timeout, pings only during calls): etcd's server
refuses pings more often than ``--grpc-keepalive-min-time`` (5 s by default) and pings on a
connection without streams, closing the connection with ``too_many_pings``, so keepalive alone
cannot notice a frozen member in the 2-3 s we want.

A member learns a new state from probes only; a failed request merely makes the client prefer
another member for the next one (:meth:`Members.failed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs
import grpc
from etcd3aio._protobuf import MaintenanceStub, StatusRequest

_log = logging.getLogger(__name__)

PROBE_INTERVAL = 0.5
PROBE_TIMEOUT = 1.0

# How long a member whose request failed is passed over in favour of the others (seconds).
SUSPECT_FOR = 1.0

UP, LEADERLESS, DOWN = "up", "leaderless", "down"

CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    # gRPC refuses responses over 4 MB by default; a watch catching up over many revisions (etcd
    # batches up to 1000 of them) can exceed that, and would then fail again on every retry.
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 3_000),
    ("grpc.keepalive_permit_without_calls", 0),
]


def channel(endpoint: str, credentials: grpc.ChannelCredentials | None) -> grpc.aio.Channel:
    """A channel to one member (``host:port``), on the running event loop."""
    if credentials is None:
        return grpc.aio.insecure_channel(endpoint, options=CHANNEL_OPTIONS)
    return grpc.aio.secure_channel(endpoint, credentials, options=CHANNEL_OPTIONS)


@attrs.define(eq=False)
class Member:
    endpoint: str
    state: str = UP  # until the first probe says otherwise
    suspect_until: float = 0.0
    # Calls waiting on this member, with the loop each runs on (the watch thread has its own).
    calls: set[tuple[asyncio.AbstractEventLoop, Any]] = attrs.field(factory=set)


class Members:
    """The members of one cluster as one client sees them."""

    def __init__(self, endpoints: Sequence[str]) -> None:
        self.members = [Member(e) for e in endpoints]
        # Processes start on different members, so that many of them spread their load.
        self._preferred = random.randrange(len(self.members))
        self.revision = 0
        """The highest store revision any response has shown: every txn sent later that is
        applied is applied after it (used to look for a txn whose outcome was lost)."""

    def order(self) -> list[Member]:
        """The members to try, best first: the preferred one while it is up and not suspect,
        then the other up ones, then leaderless, suspect and down ones (a last resort: a
        probe may be behind)."""
        n = len(self.members)
        if n == 1:  # nothing to rank (every request asks this)
            return list(self.members)
        now = time.monotonic()
        ring = [self.members[(self._preferred + i) % n] for i in range(n)]

        def rank(m: Member) -> int:
            if m.state == UP:
                return 0 if m.suspect_until <= now else 2
            return 1 if m.state == LEADERLESS else 3

        return sorted(ring, key=rank)  # stable: ring order within a rank

    def succeeded(self, member: Member, revision: int) -> None:
        self.revision = max(self.revision, revision)
        self._preferred = self.members.index(member)

    def failed(self, member: Member) -> None:
        member.suspect_until = time.monotonic() + SUSPECT_FOR

    @contextlib.contextmanager
    def track(self, member: Member, call: Any) -> Iterator[None]:
        """Register ``call`` (a gRPC call on the running loop) to be cancelled if ``member``
        stops answering probes while it waits."""
        entry = (asyncio.get_running_loop(), call)
        member.calls.add(entry)
        try:
            yield
        finally:
            member.calls.discard(entry)

    def _set(self, member: Member, state: str) -> None:
        if state == member.state:
            return
        # An operator must hear of a member that stops answering (stdlib logs show warnings).
        say = _log.warning if state == DOWN else _log.info
        say("etcd member %s is %s (was %s)", member.endpoint, state, member.state)
        member.state = state
        if state == DOWN and len(self.members) > 1:
            for loop, call in list(member.calls):
                with contextlib.suppress(RuntimeError):  # that loop has closed
                    loop.call_soon_threadsafe(call.cancel)

    async def probe_forever(self, channels: Callable[[Member], grpc.aio.Channel]) -> None:
        """Probe every member every :data:`PROBE_INTERVAL` until cancelled."""
        while True:
            started = time.monotonic()
            await asyncio.gather(*(self._probe(m, channels(m)) for m in self.members))
            await asyncio.sleep(max(0.0, PROBE_INTERVAL - (time.monotonic() - started)))

    async def _probe(self, member: Member, chan: grpc.aio.Channel) -> None:
        try:
            resp = await MaintenanceStub(chan).Status(StatusRequest(), timeout=PROBE_TIMEOUT)
        except grpc.aio.AioRpcError:
            self._set(member, DOWN)
            return
        self.revision = max(self.revision, int(resp.header.revision))
        self._set(member, UP if resp.leader else LEADERLESS)


def cancelled_by_member() -> bool:
    """Inside ``except asyncio.CancelledError``: True when the call was cancelled by a probe
    (its member went down), False when our own task is being cancelled."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() == 0
