"""Leader election on a real etcd: one leader, hand-over on resign, expiry and crash, fencing,
and the controller runner on top of it."""

from __future__ import annotations

import asyncio
import itertools
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from lastbackend.controllers import (
    Controller,
    ControllerRunner,
    LeaderElection,
    Manager,
    NotLeader,
    QueueSettings,
    Watch,
)
from lastbackend.store import keys
from lastbackend.store.embedded import EmbeddedEtcd
from lastbackend.store.etcd import Etcd, Op
from tests.conftest import REPO, new_etcd_server
from tests.support import RawEtcd

pytestmark = pytest.mark.etcd

TTL = 2
P = f"{keys.ROOT}leader-test/"


async def eventually(check: Callable[[], bool], within: float = 10.0, what: str = "") -> float:
    """Wait until ``check()``; the seconds it took."""
    start = time.monotonic()
    while True:
        if check():
            return time.monotonic() - start
        if time.monotonic() - start > within:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.02)


async def stop(*tasks: asyncio.Task[None]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture
async def clients(etcd_server: EmbeddedEtcd, etcd: RawEtcd) -> AsyncIterator[list[Etcd]]:
    """Three more clients on the session server: one per simulated process."""
    made = [RawEtcd([etcd_server.endpoint]) for _ in range(3)]
    for client in made:
        await client.connect()
    yield made
    for client in made:
        await client.close()


class Term:
    """Work for :meth:`LeaderElection.run` that records when it runs and when it is cancelled."""

    def __init__(self) -> None:
        self.started = 0
        self.cancelled = 0

    async def __call__(self) -> None:
        self.started += 1
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


async def test_of_three_candidates_exactly_one_leads(etcd: RawEtcd, clients: list[Etcd]) -> None:
    elections = [LeaderElection(c, "one", identity=f"c{n}", ttl=TTL) for n, c in enumerate(clients)]
    terms = [Term() for _ in elections]
    tasks = [asyncio.create_task(e.run(t)) for e, t in zip(elections, terms, strict=True)]
    try:
        await eventually(lambda: any(e.is_leader for e in elections))
        await eventually(lambda: all(e.leader for e in elections), what="all know the leader")
        await asyncio.sleep(0.3)

        leaders = [e for e in elections if e.is_leader]
        assert len(leaders) == 1
        assert [t.started for t in terms].count(1) == 1
        assert {e.leader for e in elections} == {leaders[0].identity}
        kv = await etcd.get(keys.leader("one"))
        assert kv is not None
        assert kv.value.decode() == leaders[0].identity
        assert kv.create_revision == leaders[0].term
    finally:
        await stop(*tasks)
    assert await etcd.get(keys.leader("one")) is None  # stopping resigned


async def test_when_the_leader_resigns_another_leads_at_once(clients: list[Etcd]) -> None:
    a = LeaderElection(clients[0], "handover", identity="a", ttl=TTL)
    b = LeaderElection(clients[1], "handover", identity="b", ttl=TTL)
    await a.campaign()
    b_term = Term()
    b_task = asyncio.create_task(b.run(b_term))
    try:
        await eventually(lambda: b.leader == "a", what="b sees a lead")
        assert not b.is_leader

        await a.resign()
        took = await eventually(lambda: b.is_leader, what="b leads")

        assert took < 1.0  # a revoked its lease: no waiting for the TTL
        assert b_term.started == 1
        assert not a.is_leader
        assert b.term > a.term
    finally:
        await stop(b_task)


async def test_a_paused_ex_leaders_fenced_write_fails(etcd: RawEtcd, clients: list[Etcd]) -> None:
    a = LeaderElection(clients[0], "fence", identity="a", ttl=TTL)
    b = LeaderElection(clients[1], "fence", identity="b", ttl=TTL)
    await a.campaign()
    fence = a.fence()
    assert (await a.txn([], [Op.put(P + "owner", "a")])).succeeded
    b_task = asyncio.create_task(b.campaign())
    try:
        # a "pauses": its lease is no longer renewed, so etcd expires it after the TTL.
        assert a.lease is not None
        await a.lease.stop_keep_alive()
        took = await eventually(lambda: b_task.done(), within=TTL + 3, what="b leads")
        assert b.is_leader
        assert took <= TTL + 1.5

        # a wakes up and writes as if it still led: etcd refuses.
        stale = await etcd.txn([fence], [Op.put(P + "owner", "a")])
        assert not stale.succeeded
        with pytest.raises(NotLeader):
            await a.txn([], [Op.put(P + "owner", "a")])
        assert await eventually(lambda: not a.is_leader)
        kv = await etcd.get(P + "owner")
        assert kv is not None
        assert kv.value == b"a"  # only the write made while a led
        assert (await b.txn([], [Op.put(P + "owner", "b")])).succeeded
    finally:
        await stop(b_task)
        await b.resign()
        await a.resign()


async def test_fenced_txn_reports_the_callers_own_compare_failures(etcd: RawEtcd) -> None:
    a = LeaderElection(etcd, "compares", identity="a", ttl=TTL)
    with pytest.raises(NotLeader):
        a.fence()
    await a.campaign()
    try:
        await etcd.put(P + "x", "1")
        kv = await etcd.get(P + "x")
        assert kv is not None
        from lastbackend.store.etcd import Cmp

        result = await a.txn(
            [Cmp.absent(P + "x")], [Op.put(P + "x", "2")], [Op.get(P + "x", revision=0)]
        )

        assert not result.succeeded
        assert a.is_leader
        assert [[r.value for r in read] for read in result.reads] == [[b"1"]]
    finally:
        await a.resign()


async def test_deleting_the_election_key_ends_the_term_and_cancels_the_work(
    etcd: RawEtcd, clients: list[Etcd]
) -> None:
    a = LeaderElection(clients[0], "deleted", identity="a", ttl=TTL)
    work = Term()
    task = asyncio.create_task(a.run(work))
    try:
        await eventually(lambda: a.is_leader)
        first = a.fence()

        await etcd.delete_prefix(keys.leader("deleted") + "")  # an admin's etcdctl del
        await eventually(lambda: work.cancelled == 1, what="work cancelled")
        await eventually(lambda: a.is_leader and work.started == 2, what="a leads again")

        assert not (await etcd.txn([first], [Op.put(P + "y", "1")])).succeeded
        assert (await etcd.txn([a.fence()], [Op.put(P + "y", "1")])).succeeded
    finally:
        await stop(task)


async def test_losing_etcd_ends_the_term_before_the_lease_could_expire(tmp_path: Path) -> None:
    server = new_etcd_server(tmp_path)
    server.start()
    try:
        async with RawEtcd([server.endpoint], timeout=1.0) as client:
            a = LeaderElection(client, "outage", identity="a", ttl=TTL)
            work = Term()
            task = asyncio.create_task(a.run(work))
            try:
                await eventually(lambda: a.is_leader)
                server.kill()
                took = await eventually(lambda: work.cancelled == 1, what="step down")
                assert took <= TTL + 0.5
                assert not a.is_leader

                server.start()  # the campaign resumes by itself
                await eventually(lambda: a.is_leader, within=15, what="a leads again")
                assert work.started == 2
            finally:
                await stop(task)
    finally:
        server.stop()


CANDIDATE = textwrap.dedent(
    """
    import asyncio, sys
    from lastbackend import logsetup
    from lastbackend.controllers.leader import LeaderElection
    from lastbackend.store.etcd import Etcd

    async def main():
        logsetup.setup("warning")
        async with Etcd([sys.argv[1]]) as etcd:
            election = LeaderElection(etcd, "crash", identity="child", ttl=int(sys.argv[2]))
            await election.campaign()
            print("leading", flush=True)
            await asyncio.Event().wait()

    asyncio.run(main())
    """
)


async def test_another_process_takes_over_within_the_ttl_when_the_leader_is_killed(
    etcd_server: EmbeddedEtcd, etcd: RawEtcd
) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CANDIDATE,
        etcd_server.endpoint,
        str(TTL),
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), 20)
        assert line.strip() == b"leading"
        me = LeaderElection(etcd, "crash", identity="parent", ttl=TTL)
        waiting = asyncio.create_task(me.campaign())
        await eventually(lambda: me.leader == "child", what="parent sees the child lead")

        child.kill()  # SIGKILL: no resign, the lease must expire
        await child.wait()
        took = await eventually(lambda: waiting.done(), within=TTL + 3, what="parent leads")

        assert me.is_leader
        assert took <= TTL + 1.5
        await me.resign()
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()


# the runner ------------------------------------------------------------------------------------


class Recording(Controller):
    """Records reconciled keys; fails the first ``failures`` reconciles of keys named 'bad'."""

    name = "recording"
    workers = 3
    resync_period = 60.0

    def __init__(self, failures: int = 0) -> None:
        super().__init__()
        self.failures = failures
        self.reconciled: list[str] = []
        self.attempts: dict[str, list[float]] = {}
        self.running: set[str] = set()
        self.overlap = False

    def watches(self) -> list[Watch]:
        # P<obj>/<part> -> <obj>
        return [Watch(P, to_key=lambda key: key[len(P) :].split("/", 1)[0])]

    async def reconcile(self, key: str) -> float | None:
        self.overlap = self.overlap or key in self.running
        self.running.add(key)
        try:
            self.attempts.setdefault(key, []).append(time.monotonic())
            await asyncio.sleep(0.01)
            if key.startswith("bad") and len(self.attempts[key]) <= self.failures:
                raise RuntimeError("not yet")
            parts = self.informer().objects(key)
            if parts:
                await self.txn([], [Op.put(f"{keys.ROOT}leader-status/{key}", str(len(parts)))])
            self.reconciled.append(key)
            return None
        finally:
            self.running.discard(key)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, {"controller": "recording", **labels})
    return value or 0.0


async def test_a_controller_reconciles_what_is_written_and_retries_failures(etcd: RawEtcd) -> None:
    await etcd.put(P + "one/meta", "1")
    await etcd.put(P + "one/config", "1")
    registry = CollectorRegistry()
    controller = Recording(failures=3)
    settings = QueueSettings(base_delay=0.05)
    runner = ControllerRunner(controller, etcd, registry=registry, lease_ttl=TTL, queue=settings)
    assert not runner.ready
    runner.start()
    try:
        await eventually(lambda: runner.ready, what="ready")
        await eventually(lambda: "one" in controller.reconciled, what="listed key reconciled")
        assert sample(registry, "lastbackend_controller_leader") == 1

        await etcd.put(P + "two/meta", "1")
        await etcd.put(P + "bad/meta", "1")
        delayed = "lastbackend_controller_queue_delayed"
        await eventually(lambda: sample(registry, delayed) == 1, what="the backoff in the metrics")
        await eventually(lambda: "two" in controller.reconciled, what="new key reconciled")
        await eventually(lambda: "bad" in controller.reconciled, what="failing key succeeds")

        tries = controller.attempts["bad"]
        assert len(tries) == 4
        gaps = [b - a for a, b in itertools.pairwise(tries)]
        assert gaps[0] >= 0.05  # backoff doubles: 50 ms, 100 ms, 200 ms (+ the reconcile)
        assert gaps[1] >= 0.1
        assert gaps[2] >= 0.2
        assert gaps[2] < 1.0
        assert controller.queue is not None
        assert controller.queue.retries("bad") == 0  # forgotten after the success
        assert sample(registry, "lastbackend_controller_reconcile_errors_total") == 3
        assert sample(registry, "lastbackend_controller_reconcile_duration_seconds_count") >= 6
        assert sample(registry, "lastbackend_controller_queue_depth") == 0
        assert sample(registry, delayed) == 0
        assert not controller.overlap
        status = await etcd.get(f"{keys.ROOT}leader-status/one")
        assert status is not None
        assert status.value == b"2"  # reconcile read both raw keys of "one" from the cache
    finally:
        await runner.stop()

    assert not runner.election.is_leader
    assert await etcd.get(keys.leader("recording")) is None
    assert sample(registry, "lastbackend_controller_leader") == 0


async def test_two_managers_one_leader_and_the_other_takes_over_on_stop(
    etcd: RawEtcd, clients: list[Etcd]
) -> None:
    first, second = Recording(), Recording()
    quick = QueueSettings(base_delay=0.001, max_delay=0.1)
    m1 = Manager(clients[0], [first], identity="m1", lease_ttl=TTL, queue=quick)
    m2 = Manager(clients[1], [second], identity="m2", lease_ttl=TTL, queue=quick)
    async with m1:
        await eventually(lambda: m1.ready, what="m1 ready")
        async with m2:
            await eventually(lambda: m2.ready, what="m2 ready (follower)")
            assert m1.status()["recording"]["leading"]
            assert m2.status()["recording"] == {"ready": True, "leading": False, "leader": "m1"}
            await etcd.put(P + "k/meta", "1")
            await eventually(lambda: "k" in first.reconciled)
            assert second.reconciled == []

            await m1.stop()
            took = await eventually(lambda: "k" in second.reconciled, what="m2 takes over")
            assert took < TTL  # m1 resigned: no waiting for its lease to expire
            assert m2.status()["recording"]["leading"]


class Resyncing(Recording):
    name = "resyncing"
    resync_period = 0.2

    async def reconcile(self, key: str) -> float | None:
        await super().reconcile(key)
        return 0.05 if key == "poll" else None


async def test_resync_and_requeue_after_reconcile_without_events(etcd: RawEtcd) -> None:
    await etcd.put(P + "quiet/meta", "1")
    await etcd.put(P + "poll/meta", "1")
    controller = Resyncing()
    runner = ControllerRunner(controller, etcd, lease_ttl=TTL)
    runner.start()
    try:
        await eventually(lambda: controller.reconciled.count("quiet") >= 3, what="resyncs")
        # "poll" asked to be looked at every 50 ms, "quiet" is only resynced every 200 ms: on a
        # loaded machine both slow down, but poll keeps coming back more often on its own.
        await eventually(lambda: controller.reconciled.count("poll") >= 8, what="requeues")
        assert controller.reconciled.count("poll") > controller.reconciled.count("quiet")
    finally:
        await runner.stop()


async def test_a_lease_is_kept_alive_and_its_loss_is_reported(etcd: RawEtcd) -> None:
    lease = await etcd.grant(TTL)
    async with lease:
        await etcd.put(P + "on-lease", "1", lease=lease.id)
        await asyncio.sleep(TTL + 0.5)
        assert lease.alive
        assert await etcd.get(P + "on-lease") is not None
        assert await etcd.time_to_live(lease.id) > 0

        await etcd.revoke(lease.id)  # gone behind its back: the next renewal finds out
        await asyncio.wait_for(lease.lost.wait(), TTL)

        assert lease.lost_reason == "expired"
        assert not lease.alive
        assert await etcd.get(P + "on-lease") is None
    assert await etcd.time_to_live(lease.id) == -1
    assert not await etcd.revoke(lease.id)


async def test_a_controller_keeps_working_across_an_etcd_restart(tmp_path: Path) -> None:
    server = new_etcd_server(tmp_path)
    server.start()
    try:
        async with RawEtcd([server.endpoint], timeout=2.0) as client:
            controller = Recording()
            runner = ControllerRunner(controller, client, lease_ttl=5)
            runner.start()
            try:
                await eventually(lambda: runner.ready, what="ready")
                server.kill()
                server.start()
                await client.put(P + "after/meta", "1")
                await eventually(lambda: "after" in controller.reconciled, what="reconciled")
                await eventually(lambda: runner.ready, what="ready again")
            finally:
                await runner.stop()
    finally:
        server.stop()


class WithHooks(Recording):
    name = "hooks"

    def __init__(self) -> None:
        super().__init__()
        self.started_with: list[str] = []
        self.background_runs = 0

    async def started(self) -> None:
        self.started_with = sorted(self.informer().work_keys())

    def background(self) -> list[Coroutine[Any, Any, None]]:
        return [self._feed()]

    async def _feed(self) -> None:
        self.background_runs += 1
        assert self.queue is not None
        self.queue.add("from-background")
        if self.background_runs == 1:
            raise RuntimeError("a failing background task restarts the term")
        await asyncio.Event().wait()


async def test_started_and_background_hooks_run_in_each_term(etcd: RawEtcd) -> None:
    await etcd.put(P + "listed/meta", "1")
    controller = WithHooks()
    runner = ControllerRunner(controller, etcd, lease_ttl=TTL)
    runner.start()
    try:
        await eventually(lambda: controller.background_runs == 2, what="restarted term")
        await eventually(lambda: "from-background" in controller.reconciled, what="reconciled")
        await eventually(lambda: runner.ready, what="ready")

        assert controller.started_with == ["listed"]
        assert runner.election.is_leader
    finally:
        await runner.stop()
