"""Two ``lastbackend api`` and two ``lastbackend controller`` processes on one etcd: one AMQP
event per change, and a handover when the leading controller is killed.

Everything is real: the console script in subprocesses, the session etcd, proton receivers. Each
controller listens for AMQP on a port of its own, and only the ``events`` leader's port accepts,
so a receiver is kept on *both* ports, reconnecting in the background as a client of a
multi-process install would. The controllers are pointed at a Docker socket that does not exist:
the controller role (staging and builds included) must start and serve events without Docker.

Changes are branch PUTs alternating between the two API processes; each is one etcd revision,
read back from the PUT's ETag (``<revision>-<keys>``), and must arrive as exactly one message
``repos/<r>@<revision>`` at the repo's address. After a SIGKILL of the leader the other process
takes over once the dead one's lease expires (the election TTL, 15 s). The receivers resume: each
attach names the last revision the client has seen on either port (the hub's
``lastbackend:after-revision`` source filter), so every change, those made while nobody led
included, must arrive exactly once and in order across the failover.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest
from cryptography.fernet import Fernet
from proton import Message, ProtonException, Timeout, symbol, ulong
from proton.reactor import Filter
from proton.utils import BlockingConnection

from lastbackend.controllers.amqp import AFTER_REVISION
from lastbackend.store.embedded import EmbeddedEtcd
from tests.support import RawEtcd, eventually, free_port

pytestmark = pytest.mark.etcd

REPO = "two-procs"
ADDRESS = f"repos/{REPO}"
BRANCH = f"/api/{ADDRESS}/branches/main"
CHANGES = 20
"""PUTs before the kill, and again after the handover."""
HANDOVER = 25.0
"""Seconds for the survivor to lead: the dead leader's lease TTL (15 s), plus slack."""


# processes ---------------------------------------------------------------------------------------


def console_script() -> str:
    sibling = Path(sys.executable).parent / "lastbackend"
    if sibling.exists():
        return str(sibling)
    found = shutil.which("lastbackend")
    if found is None:
        pytest.skip("the lastbackend console script is not installed")
    return found


class Proc:
    """One ``lastbackend <command>`` subprocess on its own port, output in a log file."""

    def __init__(self, tmp: Path, name: str, command: str, etcd: str, env: dict[str, str]) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"{name}.log"
        argv = [command, "--etcd", etcd, "--listen", f"127.0.0.1:{self.port}"]
        argv += ["--data-dir", str(tmp / name)]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [console_script(), *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, chars: int = 2500) -> str:
        return (
            f"--- {self.name} (alive={self.alive}) ---\n"
            + self.log.read_text(errors="replace")[-chars:]
        )

    def kill(self) -> None:
        """SIGKILL: no resignation, the lease lives on until etcd expires it."""
        if self.alive:
            self.proc.kill()
        self.proc.wait(10)


# receivers ---------------------------------------------------------------------------------------


@attrs.frozen
class Seen:
    """A received message, copied out of proton on the receiver's thread."""

    message_id: Any
    kind: Any
    revision: Any
    path: Any
    body: Any

    @classmethod
    def of(cls, message: Message) -> Seen:
        props = dict(message.properties or {})
        return cls(
            message.id, props.get("kind"), props.get("revision"), props.get("path"), message.body
        )


@attrs.define
class Position:
    """The last revision a client has seen, shared by its subscribers on every port."""

    last: int = 0


class Subscriber:
    """A receiver at :data:`ADDRESS` on one AMQP port that connects, and reconnects after a
    drop, until closed: it attaches wherever and whenever the port's process leads, resuming
    after ``position.last`` once it has seen anything.

    ``sessions`` holds one list of messages per connection that attached (in arrival order);
    ``refused`` counts connects that failed. Proton is not thread-safe: all of it stays on this
    object's thread; the lists are only appended to there.
    """

    def __init__(self, port: int, position: Position) -> None:
        self.port = port
        self.position = position
        self.sessions: list[list[Seen]] = []
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"subscriber {port}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn = BlockingConnection(f"127.0.0.1:{self.port}", timeout=5)
            except ProtonException:
                self.refused += 1
                self._stop.wait(0.05)
                continue
            try:
                after = self.position.last
                options = Filter({symbol(AFTER_REVISION): ulong(after)}) if after else None
                link = conn.create_receiver(ADDRESS, credit=1000, options=options)
                got: list[Seen] = []
                self.sessions.append(got)
                while not self._stop.is_set():
                    try:
                        message = link.receive(timeout=0.05)
                    except Timeout:
                        continue
                    seen = Seen.of(message)
                    got.append(seen)
                    self.position.last = max(self.position.last, int(seen.revision))
                    link.accept()
            except ProtonException:
                pass  # the server went away: connect again
            finally:
                with contextlib.suppress(Exception):
                    conn.close()

    @property
    def messages(self) -> list[Seen]:
        return [seen for session in self.sessions for seen in session]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


# the test ----------------------------------------------------------------------------------------


@attrs.define
class Cluster:
    apis: list[Proc]
    controllers: dict[int, Proc]
    """By AMQP port."""
    http: aiohttp.ClientSession

    def explain(self) -> str:
        return "\n".join(p.tail() for p in [*self.apis, *self.controllers.values()])

    async def readyz(self, proc: Proc) -> dict[str, Any] | None:
        if not proc.alive:
            raise AssertionError(f"{proc.name} exited with {proc.proc.returncode}\n{proc.tail()}")
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            async with self.http.get(f"{proc.url}/readyz") as resp:
                if resp.status == 200:
                    return dict(await resp.json())
        return None

    async def leaders(self) -> list[int]:
        """The AMQP ports of the live controllers whose ``/readyz`` says they lead ``events``."""
        found = []
        for port, proc in self.controllers.items():
            if proc.proc.returncode is not None:
                continue  # killed by the test
            body = await self.readyz(proc)
            if body is not None and body["controllers"]["events"]["leading"]:
                found.append(port)
        return found

    async def one_leader(self) -> list[int] | None:
        """The one leader's AMQP port, as a list; ``None`` while not exactly one leads."""
        found = await self.leaders()
        return found if len(found) == 1 else None

    async def put(self, n: int, url: str) -> int:
        """Change the branch through API ``n % 2``; the revision the change was written at."""
        api = self.apis[n % 2]
        async with self.http.put(f"{api.url}{BRANCH}", json={"job_url": url}) as resp:
            text = await resp.text()
            assert resp.status == 200, (api.name, resp.status, text, self.explain())
            etag = resp.headers["ETag"]
        return int(etag.strip('"').partition("-")[0])


def expected_body(url: str) -> dict[str, Any]:
    return {"source_url": "", "branches": {"main": {"job_url": url, "tags": {}}}}


@pytest.fixture
async def cluster(
    etcd: RawEtcd, etcd_server: EmbeddedEtcd, tmp_path: Path
) -> AsyncIterator[Cluster]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("LB_")}
    base.update(
        LB_SECRET_KEY=Fernet.generate_key().decode(),
        LB_LOG_LEVEL="info",
        # No Docker here: the controller role must not need it to run the events controller.
        LB_DOCKER_HOST=f"unix://{tmp_path}/no-docker.sock",
    )
    endpoint = etcd_server.endpoint
    procs: list[Proc] = []
    try:
        apis = [Proc(tmp_path, f"api{i}", "api", endpoint, base) for i in (1, 2)]
        procs += apis
        controllers: dict[int, Proc] = {}
        for i in (1, 2):
            amqp = free_port()
            env = {**base, "LB_EVENTS_AMQP_LISTEN": f"127.0.0.1:{amqp}"}
            controllers[amqp] = Proc(tmp_path, f"controller{i}", "controller", endpoint, env)
            procs.append(controllers[amqp])
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            yield Cluster(apis, controllers, http)
    finally:
        for proc in procs:
            proc.kill()


async def test_two_api_and_two_controller_processes_send_one_message_per_change(
    cluster: Cluster,
) -> None:
    started = time.monotonic()
    explain = cluster.explain
    for proc in [*cluster.apis, *cluster.controllers.values()]:
        await eventually(lambda p=proc: cluster.readyz(p), within=30)
    for proc in cluster.controllers.values():  # the whole role runs, Docker or not
        body = await cluster.readyz(proc)
        assert body is not None
        assert {"staging", "builds", "events"} <= set(body["controllers"]), body
    (leader,) = await eventually(lambda: cluster.one_leader(), within=10)
    follower = next(p for p in cluster.controllers if p != leader)
    position = Position()
    subscribers = {port: Subscriber(port, position) for port in cluster.controllers}
    try:
        first, second = subscribers[leader], subscribers[follower]
        await eventually(_true(lambda: len(first.sessions) == 1))
        await eventually(_true(lambda: second.refused >= 3))  # the follower's port refuses

        # Phase 1: every change, once, in order, at the leader; nothing at the follower.
        urls = [f"https://ci.example.com/before/{n}" for n in range(CHANGES)]
        revisions = [await cluster.put(n, url) for n, url in enumerate(urls)]
        assert revisions == sorted(set(revisions))
        await _received(subscribers, CHANGES)
        got = first.messages + second.messages
        assert [g.message_id for g in got] == [f"{ADDRESS}@{r}" for r in revisions], explain()
        assert [g.revision for g in got] == revisions
        assert [g.kind for g in got] == ["created"] + ["updated"] * (CHANGES - 1)
        assert all(g.path == ADDRESS for g in got)
        assert [json.loads(g.body) for g in got] == [expected_body(u) for u in urls]
        assert second.sessions == [], "the follower accepted a receiver"

        # The leader dies without resigning; changes go on through both APIs meanwhile.
        cluster.controllers[leader].kill()
        killed = time.monotonic()
        await eventually(_true(lambda: first.refused > 0))  # its connection dropped
        handover: list[int] = []
        n = 0
        deadline = killed + HANDOVER
        while not second.sessions:
            assert time.monotonic() < deadline, f"no new leader in {HANDOVER}s\n{explain()}"
            handover.append(await cluster.put(n, f"https://ci.example.com/handover/{n}"))
            n += 1
            await asyncio.sleep(0.2)
        took_over = time.monotonic() - killed
        assert await eventually(lambda: cluster.one_leader()) == [follower], explain()

        # Phase 2: every change since the kill, those made while nobody led first, once, in
        # order: the receiver resumed after the last revision it saw.
        urls = [f"https://ci.example.com/after/{n}" for n in range(CHANGES)]
        after = [await cluster.put(n, url) for n, url in enumerate(urls)]
        await _received({follower: second}, len(handover) + len(after))
        (session,) = second.sessions
        expected = [f"{ADDRESS}@{r}" for r in handover + after]
        assert [g.message_id for g in session] == expected, explain()
        assert [json.loads(g.body) for g in session[len(handover) :]] == [
            expected_body(u) for u in urls
        ]
        assert all(g.kind == "updated" for g in session)

        # Across both ports and every connection: nothing twice, nothing unknown.
        everything = [g.message_id for s in subscribers.values() for g in s.messages]
        assert len(everything) == len(set(everything))
        made = {f"{ADDRESS}@{r}" for r in revisions + handover + after}
        assert set(everything) <= made
        assert len(first.sessions) == 1  # the dead leader's port never came back
        assert len(first.messages) == CHANGES
        assert cluster.controllers[follower].alive
        print(
            f"handover after SIGKILL: {took_over:.1f}s; all {len(handover)} changes made during "
            f"it arrived; {time.monotonic() - started:.1f}s in all"
        )
    finally:
        for subscriber in subscribers.values():
            await asyncio.to_thread(subscriber.close)


async def _received(subscribers: dict[int, Subscriber], count: int) -> None:
    """At least ``count`` messages, then a short quiet spell so that an extra one would be seen
    too."""

    def enough() -> bool:
        return sum(len(s.messages) for s in subscribers.values()) >= count

    await eventually(_true(enough))
    await asyncio.sleep(0.3)


def _true(check: Callable[[], bool]) -> Callable[[], Any]:
    async def probe() -> bool:
        return check()

    return probe
