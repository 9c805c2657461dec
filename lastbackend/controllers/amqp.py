"""AMQP 1.0 for the events controller: a listener receivers attach to, and an optional forwarder.

The only module that imports proton (python-qpid-proton), as ``runtime/docker.py`` is the
only one that imports docker.

**Threads.** Proton's reactor is not thread-safe and runs its own I/O loop, so :class:`AmqpHub`
runs it in a thread of its own, and only that thread creates or touches proton endpoints. The
asyncio side hands it plain :class:`Outgoing` values through an
:class:`~proton.reactor.EventInjector` (a queue plus a pipe the reactor selects on): the
``publish`` and ``shutdown`` application events are dispatched on the reactor thread to
:meth:`_Hub.on_publish` and :meth:`_Hub.on_shutdown`. One injected event carries a whole
revision's messages, in order; the injector keeps the order of events.

**Receivers** attach a receiving link (our sending link) whose source address is an object's
address; they get the messages published to exactly that address from then on, no wildcards.
A link with no source address, a dynamic one, or one that does not start with
:data:`ADDRESS_PREFIX` is refused (``amqp:not-found``), and so is a link that tries to send to us
(``amqp:not-allowed``): the tree is written through the API only. There is no authentication
(SASL ANONYMOUS): anyone who can connect reads every build tag, so the listener belongs on
loopback or a private network.

**Resuming.** A receiver that names, in its link's source filter, the last revision it has seen
(:data:`AFTER_REVISION` -> an integer, plain or described) first gets the messages of its address
with a greater ``revision`` property that this hub still holds, in order, then the later ones: a
receiver that reconnects, to this process or to the next leader, loses and repeats nothing. The
hub keeps the last :data:`REPLAY` messages it published, and knows from which revision on it holds
every one (``complete_after``: where the events controller started publishing, moved up as old
messages are dropped); a receiver asking for an older revision cannot be served exactly and is
refused with ``lastbackend:replay-unavailable``, saying from which revision on it can be (read
the objects through the API, then attach from a revision after that). The filter is echoed in
the attach, as AMQP says a sender does with the filters it applies. A receiver without the filter
gets live messages only: not those a new leader sends first to catch up on revisions made
before its term (``live_after``).

**Flow control.** A message goes out when the link has credit; up to :data:`BACKLOG` wait per
link and older ones are dropped beyond that (logged), so a stalled receiver costs bounded memory
and never holds up the others.

**Settlement** is as the receiver asks: a link attached with sender-settle-mode *settled*
(at-most-once) gets pre-settled deliveries; otherwise deliveries are unsettled and settled when
the receiver settles them. Nothing is ever sent again, so events are at most once either way.

**Forwarding.** With a broker URL, one connection (reconnecting with proton's backoff, 0 s then
0.1 s doubling to 10 s; a broker silent for :data:`FORWARD_IDLE` seconds is dropped and
reconnected) and one sending link per address, created on first use and closed least
recently used beyond :data:`FORWARD_LINKS`. Deliveries are unsettled so that a broker's refusal
is logged; they queue like a receiver's while the broker gives no credit or is unreachable, and
what is in flight when the connection drops is lost.

**Listening** binds ``host:port`` (IPv4 or a host name; proton's acceptor is IPv4 only). A port
in use is logged as an error and retried every :data:`LISTEN_RETRY` seconds while forwarding
goes on: a second process on the same host must not stop the first one's events.

**Shutdown** (:meth:`AmqpHub.stop`): stop listening, close every connection, and once their
transports are closed stop the reactor; a peer that does not answer within :data:`CLOSE_GRACE`
seconds has its socket closed. The thread is joined, so the port is free when ``stop`` returns,
and nothing is left open (proton does not close the injector's pipe: :class:`AmqpHub` does).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import structlog
from proton import (
    Condition,
    Connection,
    Delivery,
    Described,
    Endpoint,
    Link,
    Message,
    Sender,
    Url,
    symbol,
    ulong,
)
from proton.handlers import MessagingHandler
from proton.reactor import ApplicationEvent, Container, EventInjector

log = structlog.get_logger("lastbackend.controllers.amqp")

ADDRESS_PREFIX = "repos/"
"""The addresses a receiver may attach to (seed 003's AMQP events)."""
AFTER_REVISION = "lastbackend:after-revision"
"""The source filter a resuming receiver names its last seen revision with (see Resuming)."""
REPLAY = 10_000
"""Messages published kept for resuming receivers; the oldest are dropped beyond this."""
BACKLOG = 1000
"""Messages kept per link while it has no credit; the oldest are dropped beyond this."""
FORWARD_LINKS = 256
"""Sending links kept open to the forward broker (one per address, least recently used closed)."""
FORWARD_IDLE = 30.0
"""Seconds the forward broker may stay silent (AMQP idle timeout; it is asked for a frame at
least every half of it): a broker that accepts and never answers, or a dead link, is dropped
and reconnected instead of holding the events forever."""
LISTEN_RETRY = 5.0
CLOSE_GRACE = 1.0
SETTLE = 0.05
JOIN_TIMEOUT = 10.0
START_TIMEOUT = 10.0


@attrs.frozen
class Outgoing:
    """One message, as plain values: built into a proton message on the reactor thread."""

    address: str
    body: str
    subject: str = ""
    message_id: str = ""
    properties: Mapping[str, str | int] = attrs.field(factory=dict)
    content_type: str = "application/json"


class AmqpHub:
    """The reactor thread: listen for receivers, forward to a broker, publish what it is given.

    ``start`` and ``stop`` are coroutines of the asyncio side; ``publish`` may be called from any
    thread and never blocks.
    """

    def __init__(
        self,
        listen: tuple[str, int] | None,
        forward: str | None = None,
        *,
        backlog: int = BACKLOG,
        name: str = "events",
        complete_after: int = 0,
        live_after: int = 0,
        replay: int = REPLAY,
    ) -> None:
        self.listen = listen
        self.forward = forward or None
        self._injector = EventInjector()
        # A full pipe must not block the event loop: the queued event is dispatched anyway,
        # since the reactor is woken by the bytes already in the pipe.
        os.set_blocking(self._injector.pipe[1], False)
        self._started = threading.Event()
        self._lock = threading.Lock()  # orders triggers before the injector's pipe is closed
        self._pipe_closed = False
        self._handler = _Hub(self, backlog, replay, complete_after, live_after)
        self._thread = threading.Thread(target=self._run, name=f"amqp-{name}", daemon=True)
        self._done: asyncio.Future[None] | None = None
        self._stopping = False
        self.error: BaseException | None = None
        self.listening = False
        """True while the listener is bound (set on the reactor thread)."""

    def __repr__(self) -> str:
        forward = _hidden_userinfo(self.forward) if self.forward else None
        return f"<AmqpHub listen={self.listen} forward={forward} listening={self.listening}>"

    @property
    def complete_after(self) -> int:
        """The revision after which this hub holds every message it published (see Resuming)."""
        return self._handler.complete_after

    async def start(self) -> None:
        """Start the reactor thread; returns once it has tried to listen (see :attr:`listening`)."""
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        self._thread.start()
        await asyncio.wait_for(asyncio.to_thread(self._started.wait), START_TIMEOUT)
        if not self._thread.is_alive():
            raise RuntimeError(f"the AMQP reactor did not start: {self.error!r}")

    async def closed(self) -> None:
        """Wait until the reactor thread ends; raise if it ended by itself (a proton failure)."""
        if self._done is None:
            raise RuntimeError("the AMQP hub is not started")
        await asyncio.shield(self._done)
        if not self._stopping:
            raise RuntimeError(f"the AMQP reactor thread ended: {self.error!r}")

    def publish(self, messages: Sequence[Outgoing]) -> None:
        """Hand messages to the reactor thread, in order (thread-safe, never blocks)."""
        if messages and not self._stopping:
            self._trigger(ApplicationEvent("publish", subject=tuple(messages)))

    async def stop(self) -> None:
        """Close listener and connections, end the reactor and join its thread."""
        if self._stopping:
            return
        self._stopping = True
        if self._done is None:  # never started: only the injector's pipe to close
            self._close_pipe()
            return
        if self._thread.is_alive():
            self._trigger(ApplicationEvent("shutdown"))
            await asyncio.to_thread(self._thread.join, JOIN_TIMEOUT)
            if self._thread.is_alive():
                log.error("AMQP reactor thread did not stop", timeout=JOIN_TIMEOUT)

    def _trigger(self, event: ApplicationEvent) -> None:
        with self._lock:
            if self._pipe_closed:
                return
            # A full pipe holds wake-ups already: the queued event will be seen.
            with contextlib.suppress(BlockingIOError):
                self._injector.trigger(event)

    def _close_pipe(self) -> None:
        with self._lock:  # proton never closes the injector's pipe
            if self._pipe_closed:
                return
            self._pipe_closed = True
            for fd in self._injector.pipe:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _run(self) -> None:
        loop = self._done.get_loop() if self._done is not None else None
        try:
            Container(self._handler).run()
        except BaseException as exc:
            self.error = exc
            log.exception("AMQP reactor failed")
        finally:
            self.listening = False
            self._close_pipe()
            self._started.set()
            if loop is not None:
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    loop.call_soon_threadsafe(_resolve, self._done)


def _resolve(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


def _after_revision(source: Any) -> int | None:
    """The revision a receiver's source filter resumes after, if it names one."""
    data = source.filter if source is not None else None
    if data is None:
        return None
    data.rewind()
    if not data.next():
        return None
    try:
        filters = data.get_object()
    except Exception:
        return None
    if not isinstance(filters, dict):
        return None
    value = filters.get(symbol(AFTER_REVISION), filters.get(AFTER_REVISION))
    if isinstance(value, Described):
        value = value.value
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return int(value)


def _open(endpoint: Endpoint) -> bool:
    return not endpoint.state & (Endpoint.LOCAL_CLOSED | Endpoint.REMOTE_CLOSED)


class _Hub(MessagingHandler):
    """The reactor's handler. Every method runs on the reactor thread."""

    def __init__(
        self, hub: AmqpHub, backlog: int, replay: int, complete_after: int, live_after: int
    ) -> None:
        super().__init__(prefetch=0, auto_accept=False, auto_settle=True)
        self.hub = hub
        self.backlog = backlog
        self.replay = replay
        self.recent: collections.deque[tuple[int, Message]] = collections.deque()
        self.complete_after = complete_after
        """Every message of a revision after this one is in :attr:`recent`."""
        self.live_after = live_after
        """Messages of revisions up to this one catch up on what happened before the term: they
        go to resuming receivers (and the broker), not to those that asked for live ones only."""
        self.floors: dict[Sender, int] = {}
        """Per receiver, the revision after which it gets messages: the one it resumed after,
        else :attr:`live_after`."""
        self.container: Container | None = None
        self.acceptor: Any = None
        self.listen_task: Any = None
        self.listen_failures = 0
        self.subscribers: dict[str, set[Sender]] = {}
        self.queues: dict[Sender, collections.deque[Message]] = {}
        self.dropped: dict[Sender, int] = {}
        self.connections: set[Connection] = set()
        self.forward: Connection | None = None
        self.forward_links: collections.OrderedDict[str, Sender] = collections.OrderedDict()
        self.forward_down = False
        self.shutting_down = False
        self.settling = False
        self.hard_stop_task: Any = None

    # starting ----------------------------------------------------------------------------------

    def on_start(self, event: Any) -> None:
        self.container = event.container
        self.container.selectable(self.hub._injector)
        if self.hub.forward:
            self.forward = self.container.connect(self.hub.forward, heartbeat=FORWARD_IDLE)
            log.info("forwarding AMQP events", broker=_safe_url(self.hub.forward))
        if self.hub.listen is not None:
            self._listen()
        self.hub._started.set()

    def _listen(self) -> None:
        assert self.container is not None
        assert self.hub.listen is not None
        host, port = self.hub.listen
        try:
            self.acceptor = self.container.listen(f"{host}:{port}")
        except OSError as exc:
            self.listen_failures += 1
            # Once as an error, then quietly: a port held for hours must not flood the log.
            report = log.error if self.listen_failures == 1 else log.debug
            report(
                "AMQP listen failed; retrying",
                listen=f"{host}:{port}",
                error=str(exc),
                retry=LISTEN_RETRY,
            )
            self.listen_task = self.container.schedule(LISTEN_RETRY, _Retry(self))
            return
        self.hub.listening = True
        log.info("AMQP events listening", listen=f"{host}:{port}", failed=self.listen_failures)

    # connections and links ---------------------------------------------------------------------

    def on_connection_init(self, event: Any) -> None:
        self.connections.add(event.connection)
        if self.shutting_down:
            _drop(event.connection)  # accepted just before the acceptor closed

    def on_link_opened(self, event: Any) -> None:
        link = event.link
        if link.connection == self.forward:
            return
        if link.is_receiver:
            self._refuse(link, "amqp:not-allowed", "events are read-only: write through the API")
            return
        source = link.remote_source
        address = source.address if source is not None else None
        if (
            source is None
            or source.dynamic
            or not address
            or not address.startswith(ADDRESS_PREFIX)
        ):
            self._refuse(
                link, "amqp:not-found", f"attach to an address {ADDRESS_PREFIX}<repo>[/...]"
            )
            return
        after = _after_revision(source)
        if after is not None and after < self.complete_after:
            self._refuse(
                link,
                "lastbackend:replay-unavailable",
                f"messages after revision {after} are not all kept here; they are from revision "
                f"{self.complete_after}: read {address} through the API and attach from there",
            )
            return
        self.subscribers.setdefault(address, set()).add(link)
        self.queues[link] = collections.deque()
        self.floors[link] = self.live_after if after is None else after
        if after is not None:
            for revision, message in self.recent:
                if revision > after and message.address == address:
                    self._offer(link, message)
        log.debug("AMQP receiver attached", address=address, after_revision=after)

    def on_link_opening(self, event: Any) -> None:
        link = event.link
        if link.is_sender and link.remote_source is not None:
            # Echo what the receiver asked for: its address and its settlement mode.
            link.source.address = link.remote_source.address
            link.snd_settle_mode = link.remote_snd_settle_mode
            after = _after_revision(link.remote_source)
            if after is not None:
                link.source.filter.put_dict({symbol(AFTER_REVISION): ulong(after)})
        elif link.is_receiver and link.remote_target is not None:
            link.target.address = link.remote_target.address

    def _refuse(self, link: Link, name: str, description: str) -> None:
        link.condition = Condition(name, description)
        link.close()

    def on_link_closing(self, event: Any) -> None:
        self._forget(event.link)

    def on_link_closed(self, event: Any) -> None:
        self._forget(event.link)

    def on_transport_closed(self, event: Any) -> None:
        connection = event.connection
        if connection is None:
            return
        if connection == self.forward and not self.shutting_down:
            return  # proton reconnects it; its links are attached again
        for link in [lk for lk in self.queues if lk.connection == connection]:
            self._forget(link)
        self.connections.discard(connection)
        self._maybe_done()

    def on_connection_final(self, event: Any) -> None:
        self.connections.discard(event.connection)

    def _forget(self, link: Link) -> None:
        self.floors.pop(link, None)
        self.queues.pop(link, None)
        self.dropped.pop(link, None)
        address = link.source.address if link.source is not None else None
        subscribers = self.subscribers.get(address or "")
        if subscribers is not None:
            subscribers.discard(link)
            if not subscribers:
                del self.subscribers[address or ""]
        for target, sender in list(self.forward_links.items()):
            if sender == link:
                del self.forward_links[target]

    # sending -----------------------------------------------------------------------------------

    def on_publish(self, event: Any) -> None:
        for out in event.subject:
            message = Message(
                address=out.address,
                body=out.body,
                subject=out.subject or None,
                id=out.message_id or None,
                content_type=out.content_type,
                creation_time=time.time(),
                properties=dict(out.properties),
            )
            revision = out.properties.get("revision")
            if isinstance(revision, int):
                self.recent.append((revision, message))
                while len(self.recent) > self.replay:
                    dropped, _ = self.recent.popleft()
                    self.complete_after = max(self.complete_after, dropped)
            for link in list(self.subscribers.get(out.address, ())):
                if isinstance(revision, int) and revision <= self.floors.get(link, 0):
                    continue  # sent from the replay, or catching up for a live-only receiver
                self._offer(link, message)
            if self.forward is not None:
                self._offer(self._forward_link(out.address), message)

    def _forward_link(self, address: str) -> Sender:
        assert self.container is not None
        assert self.forward is not None
        link = self.forward_links.get(address)
        if link is not None and _open(link):
            self.forward_links.move_to_end(address)
            return link
        link = self.container.create_sender(self.forward, target=address)
        self.forward_links[address] = link
        self.queues[link] = collections.deque()
        while len(self.forward_links) > FORWARD_LINKS:
            _, oldest = self.forward_links.popitem(last=False)
            self.queues.pop(oldest, None)
            oldest.close()
        return link

    def _offer(self, link: Sender, message: Message) -> None:
        queue = self.queues.get(link)
        if queue is None or not _open(link):
            return
        if len(queue) >= self.backlog:
            queue.popleft()
            dropped = self.dropped.get(link, 0) + 1
            self.dropped[link] = dropped
            if dropped == 1:
                log.warning(
                    "AMQP link has no credit: dropping its oldest messages",
                    address=message.address,
                    backlog=self.backlog,
                )
        queue.append(message)
        self._drain(link)

    def on_sendable(self, event: Any) -> None:
        self._drain(event.link)

    def _drain(self, link: Sender) -> None:
        queue = self.queues.get(link)
        if not queue:
            return
        while queue and link.credit > 0:
            delivery = link.send(queue.popleft())
            if link.snd_settle_mode == Link.SND_SETTLED:
                delivery.settle()
        if not queue and self.dropped.pop(link, 0):
            log.info("AMQP link caught up", address=link.source.address or link.target.address)

    def on_rejected(self, event: Any) -> None:
        self._refused(event.delivery, "rejected")

    def on_released(self, event: Any) -> None:
        self._refused(event.delivery, "released")

    def _refused(self, delivery: Delivery, how: str) -> None:
        link = delivery.link
        if link.connection == self.forward:
            condition = delivery.remote.condition
            log.warning(
                f"forward broker {how} an event",
                address=link.target.address,
                condition=str(condition) if condition else None,
            )

    def on_transport_error(self, event: Any) -> None:
        if self.forward is None or event.connection != self.forward or self.forward_down:
            return  # a receiver's problem; or the broker's, already told
        self.forward_down = True
        condition = event.transport.condition if event.transport is not None else None
        log.warning(
            "forward broker unreachable; reconnecting with backoff, events queue meanwhile",
            broker=_safe_url(self.hub.forward or ""),
            condition=str(condition) if condition else None,
        )

    def on_connection_opened(self, event: Any) -> None:
        if event.connection == self.forward:
            self.forward_down = False
            log.info("forward broker connected", broker=_safe_url(self.hub.forward or ""))

    # stopping ----------------------------------------------------------------------------------

    def on_shutdown(self, event: Any) -> None:
        assert self.container is not None
        self.shutting_down = True
        if self.listen_task is not None:
            self.listen_task.cancel()
        if self.acceptor is not None:
            self.acceptor.close()
            self.hub.listening = False
        for connection in list(self.connections):
            if connection.transport is None:
                self.connections.discard(connection)  # the broker, between reconnects
            elif connection.state & Endpoint.LOCAL_ACTIVE:
                connection.close()
        self.hub._injector.close()
        self.hard_stop_task = self.container.schedule(CLOSE_GRACE, _HardStop(self))
        self._maybe_done()

    def hard_stop(self) -> None:
        """Close the sockets of peers that did not answer our close; stop soon after anyway."""
        for connection in list(self.connections):
            _drop(connection)
        assert self.container is not None
        self.container.schedule(CLOSE_GRACE, _Stop(self.container))

    def _maybe_done(self) -> None:
        """Once every connection is closed, stop after :data:`SETTLE` seconds.

        Not at once: events already queued (an accept the acceptor read just before it closed,
        the final close of a socket) are handled meanwhile, so no socket is left open. Stopping
        rather than waiting for the reactor to run dry also ends a reconnect backoff to the
        forward broker.
        """
        if not self.shutting_down or self.connections or self.settling:
            return
        assert self.container is not None
        self.settling = True
        if self.hard_stop_task is not None:
            self.hard_stop_task.cancel()
        self.container.schedule(SETTLE, _Stop(self.container))


def _drop(connection: Connection) -> None:
    """Close a connection's socket without waiting for the peer."""
    transport = connection.transport
    if transport is not None:
        transport.close_tail()
        transport.close_head()


class _Retry:
    def __init__(self, hub: _Hub) -> None:
        self.hub = hub

    def on_timer_task(self, event: Any) -> None:
        self.hub.listen_task = None
        if not self.hub.shutting_down:
            self.hub._listen()


class _HardStop:
    def __init__(self, hub: _Hub) -> None:
        self.hub = hub

    def on_timer_task(self, event: Any) -> None:
        self.hub.hard_stop()


class _Stop:
    def __init__(self, container: Container) -> None:
        self.container = container

    def on_timer_task(self, event: Any) -> None:
        self.container.stop()


def _hidden_userinfo(url: str) -> str:
    """A broker URL for reprs: the whole user part and any query as ``***`` (a lone user name
    is often a token), parsed by hand so that no URL, however odd, comes out whole."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    if "@" in rest:  # up to the last @, whatever it holds (a password may hold a / or an @)
        rest = "***@" + rest.rpartition("@")[2]
    if "?" in rest:
        rest = rest.partition("?")[0] + "?***"
    return f"{scheme}{sep}{rest}"


def _safe_url(url: str) -> str:
    """A broker URL for logs: without its password."""
    try:
        parsed = Url(url)
    except Exception:
        return "<unparsable>"
    if parsed.password:
        parsed.password = "***"
    return str(parsed)
