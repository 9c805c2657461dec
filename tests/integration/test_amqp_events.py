"""AMQP 1.0 events of the build-tag family (seed 003) on a real etcd, with real proton peers.

The API writes over HTTP; the ``events`` controller runs under its real election; receivers are
proton ``BlockingConnection`` receivers in threads, attached at the document's addresses; the
forwarding target is a small proton broker listening in the test. Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest
from aiohttp.test_utils import TestClient
from proton import Message, Timeout, symbol, ulong
from proton.handlers import MessagingHandler
from proton.reactor import ApplicationEvent, Container, EventInjector, Filter
from proton.utils import BlockingConnection, LinkDetached

from lastbackend.config import ConfigError, Settings
from lastbackend.controllers.amqp import AFTER_REVISION, AmqpHub, Outgoing
from lastbackend.controllers.build_tag_events import (
    CREATED,
    DELETED,
    UPDATED,
    EventsController,
    RepoTree,
    follow,
    list_tree,
)
from lastbackend.controllers.runner import ControllerRunner, Manager
from lastbackend.store import keys
from tests.support import RawEtcd, eventually, free_port

Client = TestClient[Any, Any]

REPO = "qpid-jms"
R = f"repos/{REPO}"
B = f"{R}/branches/main"
T = f"{B}/tags/untested"
A = f"{T}/artifacts/qpid-jms-client"
ADDRESSES = (R, B, T, A)

MAVEN = {
    "type": "maven",
    "repository_url": "https://repo.example.com/maven2",
    "group_id": "org.apache.qpid",
    "artifact_id": "qpid-jms-client",
    "version": "0.40.0",
}
FILE = {"type": "file", "url": "https://files.example.com/amq-broker-7.1.zip"}
RPM = {
    "type": "rpm",
    "repository_url": "https://rpm.example.com/el7",
    "name": "qpid-proton-cpp-devel",
    "version": "0.26.0",
    "release": "1.el7",
}
TAG = {
    "build_id": "1234",
    "build_url": "https://ci.example.com/job/qpid-jms/1234",
    "commit_id": "5e8f1a7",
    "artifacts": {"qpid-jms-client": MAVEN, "amq-broker.zip": FILE, "qpid-proton-cpp-devel": RPM},
}


# peers -------------------------------------------------------------------------------------------


@attrs.frozen
class Got:
    """A received message's fields, copied out of proton on the receiver's thread."""

    address: str | None
    subject: str | None
    message_id: Any
    content_type: str | None
    properties: dict[str, Any]
    body: Any

    @classmethod
    def of(cls, message: Message) -> Got:
        return cls(
            message.address,
            message.subject,
            message.id,
            message.content_type,
            dict(message.properties or {}),
            message.body,
        )

    @property
    def kind(self) -> str:
        return str(self.properties["kind"])

    @property
    def json(self) -> Any:
        assert isinstance(self.body, str), self.body
        return json.loads(self.body)


class Receiver:
    """One AMQP receiver on one address, in a thread of its own (proton is not thread-safe)."""

    def __init__(
        self, port: int, address: str, *, credit: int = 1000, after: int | None = None
    ) -> None:
        self.address = address
        self.after = after
        """The revision to resume after (the hub's source filter), or None: live only."""
        self.messages: list[Got] = []
        self.error: BaseException | None = None
        self.ended: BaseException | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(port, credit), name=f"receiver {address}", daemon=True
        )
        self._thread.start()
        self._ready.wait(15)
        if self.error is not None:
            raise self.error

    def _run(self, port: int, credit: int) -> None:
        try:
            conn = BlockingConnection(f"127.0.0.1:{port}", timeout=5)
            try:
                options = None
                if self.after is not None:
                    options = Filter({symbol(AFTER_REVISION): ulong(self.after)})
                link = conn.create_receiver(self.address, credit=credit, options=options)
            except BaseException:
                with contextlib.suppress(Exception):
                    conn.close()
                raise
        except BaseException as exc:
            self.error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while not self._stop.is_set():
                try:
                    message = link.receive(timeout=0.05)
                except Timeout:
                    continue
                self.messages.append(Got.of(message))
                link.accept()
        except BaseException as exc:  # the server went away: what a receiver sees
            self.ended = exc
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    @classmethod
    async def attach(cls, port: int, address: str, **kw: Any) -> Receiver:
        return await asyncio.to_thread(cls, port, address, **kw)

    async def wait(self, count: int, within: float = 10.0) -> list[Got]:
        """At least ``count`` messages, then a short quiet spell to catch any extra."""

        async def enough() -> bool:
            return len(self.messages) >= count

        await eventually(enough, within)
        await asyncio.sleep(0.3)
        return list(self.messages)

    async def close(self) -> None:
        self._stop.set()
        await asyncio.to_thread(self._thread.join, 10)


class Broker:
    """A tiny AMQP 1.0 broker: accepts links that send to it and records messages by target."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.got: list[tuple[str, Got]] = []
        self._injector = EventInjector()
        self._listening = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test broker", daemon=True)

    def _run(self) -> None:
        broker = self
        connections: list[Any] = []

        class Handler(MessagingHandler):
            def on_start(self, event: Any) -> None:
                event.container.selectable(broker._injector)
                self.acceptor = event.container.listen(f"127.0.0.1:{broker.port}")
                self.container = event.container
                broker._listening.set()

            def on_link_opening(self, event: Any) -> None:
                if event.link.is_receiver and event.link.remote_target is not None:
                    event.link.target.address = event.link.remote_target.address

            def on_message(self, event: Any) -> None:
                broker.got.append((event.link.target.address, Got.of(event.message)))

            def on_connection_init(self, event: Any) -> None:
                connections.append(event.connection)

            def on_stop(self, event: Any) -> None:
                self.acceptor.close()
                for connection in connections:  # drop them, as a crashed broker would
                    if connection.transport is not None:
                        connection.transport.close_tail()
                        connection.transport.close_head()
                self.container.stop()

        Container(Handler()).run()

    def start(self) -> None:
        self._thread.start()
        assert self._listening.wait(10)

    def stop(self) -> None:
        self._injector.trigger(ApplicationEvent("stop"))
        self._thread.join(10)


def refused(port: int) -> bool:
    """Nothing listens on the port."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


# fixtures ----------------------------------------------------------------------------------------


async def leading(runner: ControllerRunner, *, listening: bool = True) -> EventsController:
    controller = runner.controller
    assert isinstance(controller, EventsController)

    async def up() -> bool:
        hub = controller.hub
        return hub is not None and (hub.listening or not listening)

    await eventually(up)
    return controller


@pytest.fixture
async def events(etcd: RawEtcd) -> AsyncIterator[tuple[ControllerRunner, int]]:
    port = free_port()
    runner = ControllerRunner(EventsController(("127.0.0.1", port)), etcd, lease_ttl=2)
    runner.start()
    await leading(runner)
    yield runner, port
    await runner.stop(grace=1)


async def call(api: Client, method: str, path: str, body: Any = None) -> Any:
    resp = await api.request(method, f"/api/{path}", json=body)
    text = await resp.text()
    assert resp.status == 200, (method, path, resp.status, text)
    return json.loads(text) if text else None


async def get(api: Client, path: str) -> Any:
    resp = await api.get(f"/api/{path}")
    return json.loads(await resp.text()) if resp.status == 200 else None


# what receivers get ------------------------------------------------------------------------------

pytestmark = pytest.mark.etcd


async def published(api: Client, port: int) -> None:
    """Return once the events leader has sent every change acknowledged before the call.

    A write is answered before the leader has read it from its watch, so a receiver attached
    right after it can still get it as a live message. The leader sends in revision order: once
    a marker repo written now has reached its receiver, everything before it has gone out.
    """
    marker = f"repos/published-{os.urandom(4).hex()}"
    probe = await Receiver.attach(port, marker)
    await call(api, "PUT", marker, {})
    assert [g.kind for g in await probe.wait(1)] == [CREATED]
    await probe.close()


async def test_each_address_gets_its_object_and_its_descendants_changes_in_order(
    api: Client, events: tuple[ControllerRunner, int]
) -> None:
    _, port = events
    receivers = {a: await Receiver.attach(port, a) for a in ADDRESSES}
    expected: dict[str, list[tuple[str, Any]]] = {a: [] for a in ADDRESSES}
    state: dict[str, Any] = dict.fromkeys(ADDRESSES)

    async def step(method: str, path: str, body: Any = None) -> None:
        await call(api, method, path, body)
        for address in ADDRESSES:
            old, new = state[address], await get(api, address)
            if old != new:
                kind = CREATED if old is None else DELETED if new is None else UPDATED
                expected[address].append((kind, new if new is not None else old))
            state[address] = new

    await step("PUT", R, {"source_url": "https://github.com/apache/qpid-jms"})
    await step("PUT", B, {"job_url": "https://ci.example.com/job/qpid-jms"})
    await step("PUT", T, TAG)  # one transaction: the tag and its three artifacts
    await step("PUT", A, {**MAVEN, "version": "0.41.0"})
    await step("DELETE", A)
    await step("PUT", A, MAVEN)
    await step("DELETE", B)  # the branch, its tag and artifacts go; the repo is updated
    await step("DELETE", R)

    assert [k for k, _ in expected[R]] == [CREATED, *[UPDATED] * 6, DELETED]
    assert [k for k, _ in expected[A]] == [CREATED, UPDATED, DELETED, CREATED, DELETED]
    for address, receiver in receivers.items():
        got = await receiver.wait(len(expected[address]))
        assert [(g.kind, g.json) for g in got] == expected[address], address
        revisions = [g.properties["revision"] for g in got]
        assert revisions == sorted(set(revisions)), (address, revisions)
        for g in got:
            assert g.content_type == "application/json"
            assert g.address == address
            assert g.properties["path"] == address
            assert g.subject == g.kind
            assert g.message_id == f"{address}@{g.properties['revision']}"
            level = ("repo", "branch", "tag", "artifact")[ADDRESSES.index(address)]
            assert g.properties["level"] == level
        await receiver.close()
    # The tag PUT was one revision: every level saw that same revision, and the tag arrived
    # whole (all three artifacts), never as a partial state.
    tag_created = receivers[T].messages[0]
    assert sorted(tag_created.json["artifacts"]) == sorted(TAG["artifacts"])
    third = {a: receivers[a].messages[{R: 2, B: 1, T: 0, A: 0}[a]] for a in ADDRESSES}
    assert len({g.properties["revision"] for g in third.values()}) == 1


async def test_a_repo_receiver_sees_an_artifact_change_as_the_updated_repo(
    api: Client, events: tuple[ControllerRunner, int]
) -> None:
    _, port = events
    await call(api, "PUT", T, TAG)
    await published(api, port)
    repo = await Receiver.attach(port, R)
    await call(api, "PUT", A, {**MAVEN, "version": "9.9.9"})
    (got,) = await repo.wait(1)
    assert got.kind == UPDATED
    assert got.properties["path"] == R
    artifact = got.json["branches"]["main"]["tags"]["untested"]["artifacts"]["qpid-jms-client"]
    assert artifact["version"] == "9.9.9"
    assert got.json == await get(api, R)
    await repo.close()


async def test_a_delete_says_so_and_carries_the_last_state(
    api: Client, events: tuple[ControllerRunner, int]
) -> None:
    _, port = events
    await call(api, "PUT", T, TAG)
    last = await get(api, T)
    await published(api, port)
    tag, artifact = await Receiver.attach(port, T), await Receiver.attach(port, A)
    await call(api, "DELETE", B)
    ((gone,), (gone_artifact,)) = await tag.wait(1), await artifact.wait(1)
    assert (gone.kind, gone.subject, gone.json) == (DELETED, DELETED, last)
    assert (gone_artifact.kind, gone_artifact.json) == (DELETED, MAVEN)
    await tag.close()
    await artifact.close()


async def test_receivers_get_exactly_their_address_and_nothing_from_before(
    api: Client, events: tuple[ControllerRunner, int]
) -> None:
    _, port = events
    await call(api, "PUT", B, {"job_url": "before"})
    await published(api, port)
    branch = await Receiver.attach(port, B)
    other = await Receiver.attach(port, "repos/other")
    await call(api, "PUT", f"{R}/branches/main2", {"job_url": "a sibling"})  # not main's
    await call(api, "PUT", "repos/qpid-jms2", {})  # a prefix of nothing
    await call(api, "PUT", B, {"job_url": "after"})
    got = await branch.wait(1)
    assert [(g.kind, g.json) for g in got] == [(UPDATED, {"job_url": "after", "tags": {}})]
    assert other.messages == []
    await branch.close()
    await other.close()


async def test_links_that_are_not_event_addresses_are_refused(
    events: tuple[ControllerRunner, int],
) -> None:
    _, port = events
    for address in ("", "queue/x", "repo/x"):
        with pytest.raises(LinkDetached, match="not-found"):
            await Receiver.attach(port, address)

    def send() -> None:
        conn = BlockingConnection(f"127.0.0.1:{port}", timeout=5)
        try:
            conn.create_sender(R)
        finally:
            conn.close()

    with pytest.raises(LinkDetached, match="not-allowed"):
        await asyncio.to_thread(send)


async def test_a_value_written_by_hand_that_does_not_decode_is_skipped(
    api: Client, etcd: RawEtcd, events: tuple[ControllerRunner, int]
) -> None:
    _, port = events
    receiver = await Receiver.attach(port, R)
    await etcd.put(keys.repo_key((REPO,)), b"not json")
    await call(api, "PUT", R, {"source_url": "https://example.com/ok"})
    got = await receiver.wait(1)
    assert [(g.kind, g.json) for g in got] == [
        (CREATED, {"source_url": "https://example.com/ok", "branches": {}})
    ]
    await receiver.close()


async def test_after_a_compaction_the_tree_is_relisted_and_the_difference_sent(
    api: Client, etcd: RawEtcd
) -> None:
    await call(api, "PUT", B, {"job_url": "1"})
    tree = RepoTree()
    tree.load(*reversed(await list_tree(etcd)))
    await call(api, "PUT", B, {"job_url": "2"})
    await call(api, "PUT", "repos/other", {})
    await etcd.compact(await etcd.status())  # the history the watch would resume from is gone
    published: list[Outgoing] = []
    task = asyncio.create_task(follow(etcd, tree, published.extend))
    try:
        await eventually(lambda: _true(bool(published)))
        await call(api, "PUT", "repos/other", {"source_url": "watching again"})
        await eventually(lambda: _true(len(published) >= 4))
    finally:
        task.cancel()
    assert [(o.address, o.properties["kind"], json.loads(o.body)) for o in published] == [
        ("repos/other", CREATED, {"source_url": "", "branches": {}}),  # repos in id order
        (B, UPDATED, {"job_url": "2", "tags": {}}),
        (R, UPDATED, {"source_url": "", "branches": {"main": {"job_url": "2", "tags": {}}}}),
        ("repos/other", UPDATED, {"source_url": "watching again", "branches": {}}),
    ]
    relisted = {o.properties["revision"] for o in published[:3]}
    assert len(relisted) == 1  # one list, one revision


# leadership and lifecycle ------------------------------------------------------------------------


async def test_two_processes_send_one_message_per_change_and_hand_over(
    api: Client, etcd: RawEtcd
) -> None:
    ports = {"a": free_port(), "b": free_port()}
    managers = {
        name: Manager(
            etcd, [EventsController(("127.0.0.1", port))], identity=f"proc-{name}", lease_ttl=2
        )
        for name, port in ports.items()
    }
    for manager in managers.values():
        manager.start()
    try:

        async def one_leads() -> str | None:
            leaders = [n for n, m in managers.items() if m.status()["events"]["leading"]]
            if len(leaders) != 1:
                return None
            controller = managers[leaders[0]].runners[0].controller
            hub = getattr(controller, "hub", None)
            return leaders[0] if hub is not None and hub.listening else None

        first = await eventually(one_leads)
        second = next(n for n in managers if n != first)
        # A receiver tries both processes: only the leader listens.
        assert refused(ports[second])
        receiver = await Receiver.attach(ports[first], R)
        for n in range(5):
            await call(api, "PUT", R, {"source_url": f"https://example.com/{n}"})
        got = await receiver.wait(5)
        assert [g.json["source_url"] for g in got] == [f"https://example.com/{n}" for n in range(5)]

        await managers[first].stop()  # resigns: the other process takes over at once
        await eventually(one_leads)
        assert await one_leads() == second
        assert refused(ports[first])
        await eventually(lambda: _true(receiver.ended is not None))  # its connection dropped
        moved = await Receiver.attach(ports[second], R)
        await call(api, "PUT", R, {"source_url": "https://example.com/after"})
        (after,) = await moved.wait(1)
        assert after.json["source_url"] == "https://example.com/after"
        assert len(receiver.messages) == 5  # nothing more reached the old leader's receiver
        await receiver.close()
        await moved.close()
    finally:
        for manager in managers.values():
            await manager.stop()


async def _true(value: bool) -> bool:
    return value


async def test_stopping_closes_the_listener_and_joins_the_reactor_thread(etcd: RawEtcd) -> None:
    port = free_port()
    runner = ControllerRunner(EventsController(("127.0.0.1", port)), etcd, lease_ttl=2)
    runner.start()
    await leading(runner)
    receiver = await Receiver.attach(port, R)
    started = time.monotonic()
    await runner.stop(grace=1)
    assert time.monotonic() - started < 5
    assert refused(port)
    assert not [t for t in threading.enumerate() if t.name == "amqp-events"]
    await eventually(lambda: _true(receiver.ended is not None))
    await receiver.close()


async def test_a_port_in_use_is_retried_and_does_not_stop_the_controller(
    api: Client, etcd: RawEtcd
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        runner = ControllerRunner(EventsController(("127.0.0.1", port)), etcd, lease_ttl=2)
        runner.start()
        controller = await leading(runner, listening=False)
        assert controller.hub is not None
        assert not controller.hub.listening
        assert runner.ready
    # The port is free now: the retry binds it, and events flow.
    try:

        async def bound() -> bool:
            return controller.hub is not None and controller.hub.listening

        await eventually(bound, within=15)
        receiver = await Receiver.attach(port, R)
        await call(api, "PUT", R, {"source_url": "x"})
        (got,) = await receiver.wait(1)
        assert got.kind == CREATED
        await receiver.close()
    finally:
        await runner.stop(grace=1)


# forwarding --------------------------------------------------------------------------------------


async def test_forwards_every_message_to_a_broker_that_comes_up_later_or_restarts(
    api: Client, etcd: RawEtcd
) -> None:
    broker = Broker(free_port())
    runner = ControllerRunner(
        EventsController(None, f"amqp://127.0.0.1:{broker.port}"), etcd, lease_ttl=2
    )
    runner.start()
    try:
        await leading(runner, listening=False)
        await call(api, "PUT", R, {"source_url": "queued while the broker is down"})
        await asyncio.sleep(0.5)
        broker.start()
        await call(api, "PUT", A, MAVEN)

        async def all_in() -> bool:
            return len(broker.got) >= 5

        await eventually(all_in, within=20)
        await asyncio.sleep(0.3)
        # One link per address: the order holds per address, not across them.
        seen: dict[str, list[tuple[str | None, str, Any]]] = {}
        for target, g in broker.got:
            seen.setdefault(target, []).append((g.address, g.kind, g.json))
        assert seen == {
            R: [
                (R, CREATED, {"source_url": "queued while the broker is down", "branches": {}}),
                (R, UPDATED, await get(api, R)),
            ],
            B: [(B, CREATED, await get(api, B))],
            T: [(T, CREATED, await get(api, T))],
            A: [(A, CREATED, MAVEN)],
        }
        assert all(g.content_type == "application/json" for _, g in broker.got)

        # The broker goes away and comes back on the same port: the forwarder reconnects, and
        # what was published meanwhile still arrives, once. (The repo PUT replaces the repo
        # whole: its branch, tag and artifact are deleted with it.)
        broker.stop()
        await call(api, "PUT", R, {"source_url": "while the broker restarts"})
        await asyncio.sleep(0.3)
        broker = Broker(broker.port)
        broker.start()
        await call(api, "PUT", R, {"source_url": "after the restart"})

        async def all_again() -> bool:
            return len(broker.got) >= 5

        await eventually(all_again, within=20)
        await asyncio.sleep(0.3)
        assert sorted((t, g.kind) for t, g in broker.got) == sorted(
            [(A, DELETED), (T, DELETED), (B, DELETED), (R, UPDATED), (R, UPDATED)]
        )
        assert [g.json["source_url"] for t, g in broker.got if t == R] == [
            "while the broker restarts",
            "after the restart",
        ]
    finally:
        await runner.stop(grace=1)
        broker.stop()


# the AMQP hub alone ------------------------------------------------------------------------------


async def test_a_stalled_receiver_costs_a_bounded_backlog_and_holds_up_no_one() -> None:
    port = free_port()
    hub = AmqpHub(("127.0.0.1", port), backlog=3)
    await hub.start()
    healthy = await Receiver.attach(port, R)

    def attach_stalled() -> tuple[BlockingConnection, Any]:
        conn = BlockingConnection(f"127.0.0.1:{port}", timeout=5)
        return conn, conn.create_receiver(R, credit=1)  # one message, then no credit

    conn, stalled = await asyncio.to_thread(attach_stalled)
    try:
        hub.publish([Outgoing(R, json.dumps(n)) for n in range(10)])
        assert [g.json for g in await healthy.wait(10)] == list(range(10))

        def drain() -> list[Any]:
            out = []
            while True:
                try:
                    message = stalled.receive(timeout=1)  # grants one more credit each time
                except Timeout:
                    return out
                out.append(json.loads(message.body))
                stalled.accept()

        # The first went out on its credit; of the rest only the newest three were kept.
        assert await asyncio.to_thread(drain) == [0, 7, 8, 9]
    finally:
        await asyncio.to_thread(conn.close)
        await healthy.close()
        await hub.stop()


async def test_starting_and_stopping_leaks_no_thread_or_descriptor() -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        port = free_port()
        hub = AmqpHub(("127.0.0.1", port))
        await hub.start()
        assert hub.listening
        assert not refused(port)
        await hub.stop()
        assert refused(port)
    assert not [t for t in threading.enumerate() if t.name.startswith("amqp-")]
    assert len(os.listdir("/proc/self/fd")) <= before


# pieces without servers --------------------------------------------------------------------------


def test_a_relist_sends_the_difference() -> None:
    """After a compaction the tree is relisted: what changed meanwhile is sent as of the list."""
    tree = RepoTree()
    meta = keys.repo_key
    first = tree.load([(meta(("r",)), b"{}"), (meta(("r", "b")), b'{"job_url":"1"}')], 5)
    assert [(c.address, c.kind) for c in first] == [  # the controller does not send these
        ("repos/r/branches/b", CREATED),
        ("repos/r", CREATED),
    ]
    changes = tree.load([(meta(("r",)), b"{}"), (meta(("s",)), b'{"source_url":"s"}')], 9)
    assert [(c.address, c.kind, c.revision) for c in changes] == [
        ("repos/r/branches/b", DELETED, 9),
        ("repos/r", UPDATED, 9),
        ("repos/s", CREATED, 9),
    ]
    out = changes[0].message()
    assert (out.address, json.loads(out.body)) == (
        "repos/r/branches/b",
        {"job_url": "1", "tags": {}},
    )


def test_keys_that_name_no_object_change_nothing() -> None:
    tree = RepoTree()
    tree.load([(keys.repo_key(("r",)), b"{}")], 1)
    assert tree.apply(2, [(f"{keys.REPOS}r/notes", b"hand-written")]) == []
    assert tree.apply(3, [(f"{keys.REPOS}r/meta", b'{"source_url":"x"}')])[0].kind == UPDATED


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"events_amqp_listen": "5673"}, "events.amqp_listen must be host:port"),
        ({"events_forward": "http://broker:5672"}, "events.forward"),
        ({"events_forward": "amqp://"}, "events.forward"),
    ],
)
def test_bad_event_settings_are_refused(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Settings(**overrides).check()  # type: ignore[arg-type]


def test_event_settings() -> None:
    assert Settings().amqp_listen == ("127.0.0.1", 5673)
    assert Settings(events_amqp_listen="off").amqp_listen is None
    assert Settings(events_amqp_listen="").amqp_listen is None
    Settings(events_forward="amqp://user:pw@broker.example.com:5672").check()
    Settings(events_forward="amqps://broker.example.com").check()


# resuming across reconnects and failovers -----------------------------------------------------


def _revisions(got: list[Got]) -> list[int]:
    return [int(g.properties["revision"]) for g in got]


async def _put_repo(api: Client, n: int) -> None:
    await call(api, "PUT", R, {"source_url": f"https://example.com/{n}"})


async def test_a_receiver_resuming_after_a_revision_gets_what_it_missed_once(
    api: Client, events: tuple[ControllerRunner, int]
) -> None:
    _, port = events
    first = await Receiver.attach(port, R)
    for n in range(4):
        await _put_repo(api, n)
    seen = _revisions(await first.wait(4))
    await first.close()  # it read the first two, say, and its connection dropped
    for n in range(4, 6):
        await _put_repo(api, n)  # made while it was away

    resumed = await Receiver.attach(port, R, after=seen[1])
    await _put_repo(api, 6)
    got = await resumed.wait(5)
    assert [g.json["source_url"] for g in got] == [f"https://example.com/{n}" for n in range(2, 7)]
    assert _revisions(got)[:2] == seen[2:]
    assert len(set(_revisions(got))) == 5, "none twice"
    await resumed.close()


async def test_resuming_from_before_what_the_hub_holds_is_refused_with_the_reason(
    api: Client, etcd: RawEtcd
) -> None:
    await _put_repo(api, 0)
    port = free_port()
    runner = ControllerRunner(EventsController(("127.0.0.1", port)), etcd, lease_ttl=2)
    runner.start()
    try:
        hub = (await leading(runner)).hub
        assert hub is not None
        start = hub.complete_after  # the revision its term started publishing from
        assert start >= await etcd.status() - 1
        with pytest.raises(LinkDetached, match="replay-unavailable"):
            await Receiver.attach(port, R, after=start - 1)
        ok = await Receiver.attach(port, R, after=start)
        await _put_repo(api, 1)
        (got,) = await ok.wait(1)
        assert got.json["source_url"] == "https://example.com/1"
        await ok.close()
    finally:
        await runner.stop(grace=1)


async def test_a_new_leader_publishes_what_was_written_while_nobody_led(
    api: Client, etcd: RawEtcd
) -> None:
    ports = {"a": free_port(), "b": free_port()}

    def manager(name: str) -> Manager:
        controller = EventsController(("127.0.0.1", ports[name]))
        return Manager(etcd, [controller], identity=f"proc-{name}", lease_ttl=2)

    a = manager("a")
    a.start()
    b: Manager | None = None
    try:
        await leading(a.runners[0])
        receiver = await Receiver.attach(ports["a"], R)
        for n in range(5):
            await _put_repo(api, n)
        last = max(_revisions(await receiver.wait(5)))
        await a.stop()  # at once: its record of what it published may lag behind the sends
        for n in range(5, 8):
            await _put_repo(api, n)  # nobody leads: before, these were never sent

        b = manager("b")
        b.start()
        await leading(b.runners[0])
        moved = await Receiver.attach(ports["b"], R, after=last)
        await _put_repo(api, 8)
        got = await moved.wait(4)
        assert [g.json["source_url"] for g in got] == [
            f"https://example.com/{n}" for n in range(5, 9)
        ]
        assert min(_revisions(got)) > last

        async def recorded() -> bool:  # one or two periods behind what it sent
            kv = await etcd.get(keys.EVENTS_PUBLISHED)
            return kv is not None and int(kv.value) >= max(_revisions(got))

        await eventually(recorded, 5)
        await receiver.close()
        await moved.close()
    finally:
        await a.stop()
        if b is not None:
            await b.stop()
